import Glibc
import Poller
import PollerNet
import Testing

extension PollerNetTests {
    @Suite("Dial and listen")
    struct DialListen {
        @Test("dialling a closed port fails with ECONNREFUSED from connect", arguments: BackendKind.allCases)
        func refused(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let port = listener.localAddress.port!
                try await listener.close()
                let error = await netError { () async throws(NetError) in
                    try await Connection.dial(host: "127.0.0.1", port: port, poller: poller)
                }
                // On io_uring this also pins that closing the listener released its socket
                // (an armed poll would keep it listening).
                #expect(error == .system(call: "connect", errno: ECONNREFUSED))
            }
        }

        @Test("dialling a listener whose backlog is full times out and closes the socket", arguments: BackendKind.allCases)
        func dialTimeout(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                // The accept queue fills after a couple of connections; later SYNs are dropped
                // and the connect stays in progress until our timeout.
                let blackHole = try await BlackHole.make(host: "127.0.0.1", poller: poller)
                let start = ContinuousClock.now
                await expectNetError(.timeout) { () async throws(NetError) in
                    try await Connection.dial(host: "127.0.0.1", port: blackHole.port, timeout: .milliseconds(100), poller: poller)
                }
                #expect(ContinuousClock.now - start >= .milliseconds(100))
                try await blackHole.close()
            }
        }

        @Test("tiny and non-positive dial timeouts either connect or time out, never leak", arguments: BackendKind.allCases)
        func tinyTimeouts(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let port = listener.localAddress.port!
                let server = Task {
                    while let c = try? await listener.accept() { try? await c.close() }
                }
                for timeout: Duration in [.nanoseconds(1), .nanoseconds(500), .microseconds(50), .zero, .seconds(-5)] {
                    do throws(NetError) {
                        let c = try await Connection.dial(host: "127.0.0.1", port: port, timeout: timeout, poller: poller)
                        #expect(timeout >= .zero)  // zero is no timeout, as in Go
                        try await c.close()
                    } catch {
                        #expect(error == .timeout)
                        #expect(timeout != .zero)
                    }
                }
                try await listener.close()
                await server.value
            }
        }

        @Test("addresses parse numerically and print as Go does")
        func addresses() throws {
            #expect(try SocketAddress(host: "127.0.0.1", port: 8080).description == "127.0.0.1:8080")
            #expect(try SocketAddress(host: "::1", port: 8080).description == "[::1]:8080")
            #expect(try SocketAddress(host: "[::1]", port: 1) == .ipv6(host: "::1", port: 1))
            #expect(try SocketAddress(host: "localhost", port: 2) == .ipv4(host: "127.0.0.1", port: 2))
            #expect(throws: NetError.self) { try SocketAddress(host: "example.com", port: 80) }
            #expect(SocketAddress.unix(path: "/tmp/x.sock").description == "/tmp/x.sock")
            #expect(NetError.system(call: "connect", errno: ECONNREFUSED).description.hasPrefix("connect: ECONNREFUSED"))
        }

        @Test("listening on a port in use fails with EADDRINUSE and leaks nothing", arguments: BackendKind.allCases)
        func addressInUse(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let error = await netError { () async throws(NetError) in
                    try TCPListener.listen(host: "127.0.0.1", port: listener.localAddress.port!, poller: poller)
                }
                #expect(error == .system(call: "bind", errno: EADDRINUSE))
                let path = temporarySocketPath("inuse")
                let unix = try UnixListener.listen(path: path, poller: poller)
                let unixError = await netError { () async throws(NetError) in try UnixListener.listen(path: path, poller: poller) }
                #expect(unixError == .system(call: "bind", errno: EADDRINUSE))
                try await unix.close()
                try await listener.close()
            }
        }

        @Test("wildcard listeners on 0.0.0.0 and :: accept loopback dials", arguments: BackendKind.allCases)
        func wildcard(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                for (host, dialHost) in [("0.0.0.0", "127.0.0.1"), ("::", "::1")] {
                    let listener = try TCPListener.listen(host: host, port: 0, poller: poller)
                    try await TCPPair.connect(listener, from: dialHost, poller: poller).closeAll()
                }
            }
        }
    }
}
