import Glibc
import Poller
import PollerNet
import Testing

/// The error `body` throws when it is ``NetError/invalidAddress(_:)``; records an issue and
/// returns nil otherwise.
private func invalidAddressText<R>(
    _ input: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws(NetError) -> R
) -> String? {
    do {
        _ = try body()
        Issue.record("\(input.debugDescription) was accepted", sourceLocation: sourceLocation)
    } catch .invalidAddress(let text) {
        return text
    } catch {
        Issue.record("\(input.debugDescription): \(error), not invalidAddress", sourceLocation: sourceLocation)
    }
    return nil
}

/// The name of an interface with an IPv6 link-local address and that address (from
/// /proc/net/if_inet6), or nil when there is none.
private func linkLocalAddress() -> (interface: String, address: String)? {
    guard let file = fopen("/proc/net/if_inet6", "r") else { return nil }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, Int32(line.count), file) != nil {
        let fields = String(decoding: line.prefix { $0 != 0 }.map(UInt8.init(bitPattern:)), as: UTF8.self)
            .split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard fields.count >= 6, fields[0].hasPrefix("fe80") else { continue }
        let hex = Array(fields[0])
        let groups = stride(from: 0, to: 32, by: 4).map { String(hex[$0..<$0 + 4]) }
        return (String(fields[5]), groups.joined(separator: ":"))
    }
    return nil
}

/// Hostile or malformed `"host:port"` strings and a word of the reason each must give.
private let hostileAddresses: [(String, String)] = [
    ("", "missing port"),
    ("127.0.0.1\0:80", "control character NUL"),
    ("127.0.0.1:80\0", "control character NUL"),
    ("127.0.0.1:8\0" + "0", "control character NUL"),
    ("[::1\0]:80", "control character NUL"),
    ("[::1:80", "missing ']'"),
    ("[::1", "missing ']'"),
    ("::1:80", "too many colons"),
    ("[::1]]:80", "missing port"),
    ("[::1]:80]", "unexpected ']'"),
    ("[[::1]:80", "unexpected '['"),
    ("127.0.0.1:65536", "out of range"),
    ("127.0.0.1:99999999999999999999999999", "out of range"),
    ("127.0.0.1:-1", "not a decimal number"),
    ("127.0.0.1:+80", "not a decimal number"),
    ("127.0.0.1:http", "not a decimal number"),
    (String(repeating: "a", count: 256) + ":80", "longer than 255"),
    (String(repeating: "1", count: 100_000) + ":80", "longer than 255"),
    ("example.com:80", "not a numeric"),
    ("[fe80::1%]:80", "no network interface"),
    ("[fe80::1%nosuchif0]:80", "no network interface"),
    ("[127.0.0.1%lo]:80", "not a numeric"),
    ("1.2.3.256:80", "not a numeric"),
]

extension PollerNetTests {
    @Suite("Address parsing")
    struct AddressParsingTests {
        // Go's net/ip_test.go TestSplitHostPort (not one of the digest's ports).
        @Test("TestSplitHostPort: splitHostPort splits host and port by Go's rules and fails with Go's words")
        func splitHostPort() throws {
            let good: [(String, String, String)] = [
                ("localhost:http", "localhost", "http"), ("localhost:80", "localhost", "80"),
                ("localhost%lo0:80", "localhost%lo0", "80"), ("[localhost%lo0]:80", "localhost%lo0", "80"),
                ("127.0.0.1:80", "127.0.0.1", "80"), ("[::1]:http", "::1", "http"), ("[::1]:80", "::1", "80"),
                ("[::1%lo0]:80", "::1%lo0", "80"), (":80", "", "80"), ("golang.org:", "golang.org", ""),
                ("127.0.0.1:", "127.0.0.1", ""), ("[::1]:", "::1", ""), ("golang.org:https%foo", "golang.org", "https%foo"),
            ]
            for (input, host, port) in good {
                let split = try SocketAddress.splitHostPort(input)
                #expect(split.host == host && split.port == port, "\(input)")
            }
            let bad: [(String, String)] = [
                ("golang.org", "missing port in address"), ("127.0.0.1", "missing port in address"),
                ("[::1]", "missing port in address"), ("[fe80::1%lo0]", "missing port in address"),
                ("localhost%lo0", "missing port in address"), ("::1", "too many colons in address"),
                ("fe80::1%lo0", "too many colons in address"), ("fe80::1%lo0:80", "too many colons in address"),
                ("[foo:bar]", "missing port in address"), ("[foo:bar]baz", "missing port in address"),
                ("[foo]bar:baz", "missing port in address"), ("[foo]:[bar]:baz", "too many colons in address"),
                ("[foo]:[bar]baz", "unexpected '[' in address"), ("foo[bar]:baz", "unexpected '[' in address"),
                ("foo]bar:baz", "unexpected ']' in address"),
            ]
            for (input, why) in bad {
                let text = invalidAddressText(input) { () throws(NetError) in try SocketAddress.splitHostPort(input) }
                #expect(text == "\(input.debugDescription): \(why)")
            }
        }

        @Test("host:port strings parse to the address Go would use: empty host, wildcards, IPv6 in brackets, zones, empty port")
        func addressForms() throws {
            let expected: [(String, SocketAddress)] = [
                (":8080", .ipv4(host: "0.0.0.0", port: 8080)),
                ("0.0.0.0:0", .ipv4(host: "0.0.0.0", port: 0)),
                ("127.0.0.1:80", .ipv4(host: "127.0.0.1", port: 80)),
                ("127.0.0.1:00080", .ipv4(host: "127.0.0.1", port: 80)),
                ("localhost:", .ipv4(host: "127.0.0.1", port: 0)),
                ("[::]:8080", .ipv6(host: "::", port: 8080)),
                ("[0:0::1]:65535", .ipv6(host: "::1", port: 65535)),
                ("[::ffff:1.2.3.4]:1", .ipv6(host: "::ffff:1.2.3.4", port: 1)),
                ("[fe80::1%lo]:80", .ipv6(host: "fe80::1%lo", port: 80)),
                ("[FE80::1%1]:80", .ipv6(host: "fe80::1%1", port: 80)),
            ]
            for (input, address) in expected {
                #expect(try SocketAddress(hostPort: input) == address, "\(input)")
            }
            #expect(try SocketAddress(hostPort: "[fe80::1%lo]:80").description == "[fe80::1%lo]:80")
            #expect(try SocketAddress(host: "fe80::1%lo", port: 1) == .ipv6(host: "fe80::1%lo", port: 1))
        }

        @Test("hostile host:port strings fail with invalidAddress saying why, never truncated or crashing")
        func hostileStrings() {
            for (input, reason) in hostileAddresses {
                let text = invalidAddressText(input) { () throws(NetError) in try SocketAddress(hostPort: input) }
                #expect(text?.contains(reason) == true, "\(input.prefix(40).debugDescription): \(text ?? "nil")")
                // The message stays short whatever the input's length.
                #expect((text?.utf8.count ?? 0) < 300)
            }
            // Hosts given alone: a NUL would end the C string early.
            for host in ["127.0.0.1\0evil", "::1\0", "\0", String(repeating: "1", count: 256), ""] {
                _ = invalidAddressText(host) { () throws(NetError) in try SocketAddress(host: host, port: 80) }
            }
        }

        @Test("listen(address:) binds the forms Go accepts, and dial(address:) reaches them", arguments: BackendKind.allCases)
        func listenAndDialForms(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                // (listen address, expected bound host, addresses to dial with the bound port)
                let cases: [(String, String, [String])] = [
                    (":0", "::", ["127.0.0.1", "[::1]", ""]),  // dual stack
                    ("[::]:0", "::", ["127.0.0.1", "[::1]"]),
                    ("0.0.0.0:0", "0.0.0.0", ["127.0.0.1", ""]),
                    ("127.0.0.1:0", "127.0.0.1", ["localhost"]),
                    ("[::1]:0", "::1", ["[::1]", "[::1%lo]"]),
                    ("localhost:", "127.0.0.1", ["127.0.0.1"]),
                ]
                for (address, boundHost, dials) in cases {
                    let listener = try TCPListener.listen(address: address, poller: poller)
                    let port = listener.localAddress.port!
                    #expect(port != 0)
                    switch listener.localAddress {
                    case .ipv4(let host, _), .ipv6(let host, _): #expect(host == boundHost, "\(address)")
                    case .unix: Issue.record("\(address) bound a Unix socket")
                    }
                    for host in dials {
                        let pair = try await TCPPair.connect(listener, address: "\(host):\(port)", poller: poller)
                        try await pair.client.write([42])
                        #expect(try await pair.server.read(maxBytes: 1) == [42])
                        try await pair.client.close()
                        try await pair.server.close()
                    }
                    try await listener.close()
                }
            }
        }

        @Test("a link-local address with its zone binds and dials on that interface", arguments: BackendKind.allCases)
        func linkLocalZone(kind: BackendKind) async throws {
            guard let (interface, address) = linkLocalAddress() else { return }  // no IPv6 link-local here
            try await withNetPoller(kind) { poller in
                let listener: TCPListener
                switch Result(catching: { () throws(NetError) in
                    try TCPListener.listen(address: "[\(address)%\(interface)]:0", poller: poller)
                }) {
                case .success(let made): listener = made
                case .failure(.system("bind", EADDRNOTAVAIL)): return  // still in duplicate address detection
                case .failure(let error): throw error
                }
                guard case .ipv6(let host, let port) = listener.localAddress else {
                    Issue.record("bound \(listener.localAddress)")
                    try await listener.close()
                    return
                }
                #expect(host.hasSuffix("%\(interface)"), "\(host)")
                let pair = try await TCPPair.connect(listener, address: "[\(host)]:\(port)", poller: poller)
                #expect(pair.client.remoteAddress == listener.localAddress)
                try await pair.closeAll()
            }
        }

        @Test(
            "hostile addresses given to listen and dial fail with invalidAddress and leave nothing open",
            arguments: BackendKind.allCases)
        func hostileListenAndDial(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                for (input, _) in hostileAddresses {
                    _ = invalidAddressText(input) { () throws(NetError) in try TCPListener.listen(address: input, poller: poller) }
                    if input.hasPrefix("example.com") { continue }  // a name: dial looks it up (DialerTests)
                    let error = await netError { () async throws(NetError) in try await Connection.dial(address: input, poller: poller) }
                    guard case .invalidAddress = error else {
                        Issue.record("dial \(input.prefix(40).debugDescription): \(String(describing: error))")
                        continue
                    }
                }
                // ":" is a real address: every interface, a port the kernel picks; dialling
                // port 0 is refused by the kernel, not by the parser.
                let listener = try TCPListener.listen(address: ":", poller: poller)
                #expect(listener.localAddress.port != 0)
                try await listener.close()
                let error = await netError { () async throws(NetError) in try await Connection.dial(address: ":", poller: poller) }
                #expect(error == .system(call: "connect", errno: ECONNREFUSED))
                _ = invalidAddressText("127.0.0.1\0") { () throws(NetError) in
                    try TCPListener.listen(host: "127.0.0.1\0", port: 0, poller: poller)
                }
                // A case made directly with a NUL is refused when used, not truncated.
                let direct = await netError { () async throws(NetError) in
                    try await Connection.dial(.ipv4(host: "127.0.0.1\0x", port: 1), poller: poller)
                }
                #expect(direct == .invalidAddress("host \"127.0.0.1\\0x\" contains control character NUL"))
            }
        }
    }
}

extension TCPPair {
    /// A connection to `listener` dialled to `address` (a `"host:port"` string), and the
    /// accepted side.
    static func connect(_ listener: TCPListener, address: String, poller: Poller) async throws -> TCPPair {
        async let accepted = listener.accept()
        let client = try await Connection.dial(address: address, poller: poller)
        let server = try await accepted
        return TCPPair(listener: listener, client: client, server: server)
    }
}
