import CPoller
import Glibc
import Poller
import Synchronization
import Testing

@testable import PollerNet

/// Runs `body` with `lookup` standing in for `getaddrinfo` (on the lookup thread), then waits
/// (up to 5 s) until the lookup pool has no thread left, so a lookup left running in the
/// background cannot outlive the hook or the test.
private func withLookup(
    _ lookup: @escaping @Sendable (String, UInt16) -> Result<[SocketAddress], NetError>,
    _ body: () async throws -> Void
) async throws {
    var hooks = NetTestHooks.Hooks()
    hooks.lookup = lookup
    try await NetTestHooks.with(hooks) {
        try await body()
        let limit = ContinuousClock.now + .seconds(5)
        while LookupPool.shared.threadCount > 0 && ContinuousClock.now < limit { await sleep(ms: 10) }
        #expect(LookupPool.shared.threadCount == 0, "a lookup thread is still running")
    }
}

/// A lookup that sleeps `ms` milliseconds on its thread, then answers `addresses`.
private func slowLookup(ms: Int, _ addresses: [SocketAddress]) -> @Sendable (String, UInt16) -> Result<[SocketAddress], NetError> {
    { _, _ in
        usleep(UInt32(ms * 1000))
        return .success(addresses)
    }
}

/// A port on `host` where nobody listens (a listener's, closed again).
private func closedPort(_ host: String, _ poller: Poller) async throws -> UInt16 {
    let listener = try TCPListener.listen(host: host, port: 0, poller: poller)
    let port = listener.localAddress.port!
    try await listener.close()
    return port
}

extension TCPPair {
    /// `dial`'s connection to `listener`, and the accepted side.
    static func dialled(_ listener: TCPListener, by dial: () async throws -> Connection) async throws -> TCPPair {
        async let accepted = listener.accept()
        let client = try await dial()
        return TCPPair(listener: listener, client: client, server: try await accepted)
    }

    /// Closes the two connections, leaving the listener open.
    func closeConnections() async throws {
        try await client.close()
        try await server.close()
    }
}

extension PollerNetTests {
    @Suite("Dialer")
    struct DialerTests {
        @Test("dialling a host name from /etc/hosts resolves it and connects", arguments: BackendKind.allCases)
        func dialByName(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let port = listener.localAddress.port!
                let resolved = try await Dialer().resolve(host: "localhost", port: port)
                #expect(resolved.contains(.ipv4(host: "127.0.0.1", port: port)), "\(resolved)")
                // An empty host is "localhost", as in Go; names are case-insensitive.
                for address in ["localhost:\(port)", "LocalHost:\(port)", ":\(port)"] {
                    let pair = try await TCPPair.connect(listener, address: address, poller: poller)
                    #expect(pair.client.remoteAddress == .ipv4(host: "127.0.0.1", port: port))
                    try await pair.closeConnections()
                }
                try await TCPPair.dialled(listener) {
                    try await Dialer(timeout: .seconds(5), poller: poller).dial(host: "localhost", port: port)
                }.closeAll()
            }
        }

        @Test("a name that does not exist fails quickly with a resolution error", arguments: BackendKind.allCases)
        func unknownName(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                for host in ["no-such-host.invalid", "poller-no-such-host.test", "not-an-ip"] {
                    let start = ContinuousClock.now
                    let error = await netError { () async throws(NetError) in
                        try await Dialer(timeout: .seconds(10), poller: poller).dial(host: host, port: 80)
                    }
                    guard case .resolution(let name, let code, let message) = error else {
                        Issue.record("\(host): \(String(describing: error)), not a resolution error")
                        continue
                    }
                    #expect(name == host && code != 0 && !message.isEmpty)
                    #expect(error!.description.hasPrefix("lookup \"\(host)\": "), "\(error!)")
                    #expect(ContinuousClock.now - start < .seconds(5), "\(host) took \(ContinuousClock.now - start)")
                }
                // RFC 6761: ".invalid" is answered without a lookup.
                let start = ContinuousClock.now
                let error = await netError { () async throws(NetError) in
                    try await Connection.dial(address: "x.INVALID:80", poller: poller)
                }
                #expect(error?.isHostNotFound == true, "\(String(describing: error))")
                #expect(ContinuousClock.now - start < .milliseconds(100))
            }
        }

        @Test(
            "Happy Eyeballs: when the first family's address never answers, the other family's connects after the fallback delay and the loser is closed",
            arguments: BackendKind.allCases)
        func fallbackAfterDelay(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let blackHole = try await BlackHole.make(host: "::1", poller: poller)
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let good = SocketAddress.ipv4(host: "127.0.0.1", port: listener.localAddress.port!)
                try await withLookup(slowLookup(ms: 0, [.ipv6(host: "::1", port: blackHole.port), good])) {
                    let before = openFDCount()
                    let start = ContinuousClock.now
                    let dialer = Dialer(timeout: .seconds(10), fallbackDelay: .milliseconds(200), poller: poller)
                    let pair = try await TCPPair.dialled(listener) { try await dialer.dial(host: "dual.test", port: 1) }
                    let elapsed = ContinuousClock.now - start
                    #expect(pair.client.remoteAddress == good)
                    #expect(elapsed >= .milliseconds(200) && elapsed < .seconds(3), "\(elapsed)")
                    // The client and the accepted connection, nothing else: the losing socket is closed.
                    #expect(openFDCount() == before + 2)
                    try await pair.closeConnections()
                }
                try await listener.close()
                try await blackHole.close()
            }
        }

        @Test("Happy Eyeballs: when the first attempt is refused, the next starts at once", arguments: BackendKind.allCases)
        func fallbackOnRefusal(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let refused = try await closedPort("::1", poller)
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let good = SocketAddress.ipv4(host: "127.0.0.1", port: listener.localAddress.port!)
                try await withLookup(slowLookup(ms: 0, [.ipv6(host: "::1", port: refused), good])) {
                    let start = ContinuousClock.now
                    let pair = try await TCPPair.dialled(listener) {
                        try await Dialer(fallbackDelay: .seconds(5), poller: poller).dial(host: "dual.test", port: 1)
                    }
                    #expect(ContinuousClock.now - start < .seconds(2))
                    #expect(pair.client.remoteAddress == good)
                    try await pair.closeAll()
                }
            }
        }

        @Test("Happy Eyeballs: the families are interleaved, the first address's first; one family or no racing keeps the order")
        func attemptOrder() {
            let v6 = (1...3).map { SocketAddress.ipv6(host: "::\($0)", port: 1) }
            let v4 = (1...2).map { SocketAddress.ipv4(host: "10.0.0.\($0)", port: 1) }
            let mixed = [v6[0], v6[1], v4[0], v6[2], v4[1]]
            let raced = Dialer(fallbackDelay: .milliseconds(50)).attemptOrder(mixed)
            #expect(raced.0 == [v6[0], v4[0], v6[1], v4[1], v6[2]] && raced.1 == .milliseconds(50))
            let v4First = Dialer().attemptOrder([v4[0], v6[0], v6[1], v4[1]])
            #expect(v4First.0 == [v4[0], v6[0], v4[1], v6[1]] && v4First.1 == Dialer.defaultFallbackDelay)
            #expect(Dialer(fallbackDelay: .zero).attemptOrder(mixed).1 == Dialer.defaultFallbackDelay)
            let serial = Dialer(fallbackDelay: .seconds(-1)).attemptOrder(mixed)
            #expect(serial.0 == mixed && serial.1 == nil)
            let oneFamily = Dialer().attemptOrder(v6)
            #expect(oneFamily.0 == v6 && oneFamily.1 == nil)
        }

        @Test("when every address fails, the dial reports the first attempt's error", arguments: BackendKind.allCases)
        func firstErrorWins(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let refused = try await closedPort("::1", poller)
                let blackHole = try await BlackHole.make(host: "127.0.0.1", poller: poller)
                let addresses: [SocketAddress] = [.ipv6(host: "::1", port: refused), .ipv4(host: "127.0.0.1", port: blackHole.port)]
                try await withLookup(slowLookup(ms: 0, addresses)) {
                    // Raced (the second attempt times out) and one after the other.
                    for fallbackDelay: Duration in [.milliseconds(50), .seconds(-1)] {
                        let dialer = Dialer(timeout: .milliseconds(300), fallbackDelay: fallbackDelay, poller: poller)
                        await expectNetError(.system(call: "connect", errno: ECONNREFUSED)) { () async throws(NetError) in
                            try await dialer.dial(host: "dual.test", port: 1)
                        }
                    }
                }
                try await blackHole.close()
            }
        }

        @Test(
            "a lookup slower than the dial timeout throws timeout at once and its late answer is dropped",
            arguments: BackendKind.allCases)
        func lookupTimeout(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let port = try await closedPort("127.0.0.1", poller)
                try await withLookup(slowLookup(ms: 1000, [.ipv4(host: "127.0.0.1", port: port)])) {
                    let start = ContinuousClock.now
                    await expectNetError(.timeout) { () async throws(NetError) in
                        try await Connection.dial(host: "slow.test", port: port, timeout: .milliseconds(100), poller: poller)
                    }
                    let elapsed = ContinuousClock.now - start
                    #expect(elapsed >= .milliseconds(100) && elapsed < .milliseconds(600), "\(elapsed)")
                }
            }
        }

        @Test("cancelling a dial during its lookup throws cancelled at once", arguments: BackendKind.allCases)
        func lookupCancelled(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let port = try await closedPort("127.0.0.1", poller)
                try await withLookup(slowLookup(ms: 1000, [.ipv4(host: "127.0.0.1", port: port)])) {
                    let dial = Task {
                        await netError { () async throws(NetError) in
                            try await Connection.dial(host: "slow.test", port: port, poller: poller)
                        }
                    }
                    await sleep(ms: 50)
                    let start = ContinuousClock.now
                    dial.cancel()
                    #expect(await dial.value == .cancelled)
                    #expect(ContinuousClock.now - start < .milliseconds(500))
                }
            }
        }

        // The digest's timeout tests 14 and 15 (net/timeout_test.go), with a Dialer.
        @Test(
            "TestDialTimeout: a zero timeout means none and a negative one fails at once",
            arguments: BackendKind.allCases)
        func dialTimeouts(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let good = SocketAddress.ipv4(host: "127.0.0.1", port: listener.localAddress.port!)
                let calls = Atomic<Int>(0)
                try await withLookup({ _, _ in
                    calls.add(1, ordering: .relaxed)
                    usleep(200_000)
                    return .success([good])
                }) {
                    // Zero: no timeout, even with a lookup taking 200 ms.
                    try await TCPPair.dialled(listener) {
                        try await Dialer(timeout: .zero, poller: poller).dial(host: "slow.test", port: 1)
                    }.closeConnections()
                    // Negative: fails before any lookup or socket.
                    for timeout: Duration in [.seconds(-5), .nanoseconds(-1), Duration(secondsComponent: .min, attosecondsComponent: 0)] {
                        await expectNetError(.timeout) { () async throws(NetError) in
                            try await Connection.dial(host: "slow.test", port: 1, timeout: timeout, poller: poller)
                        }
                    }
                    #expect(calls.load(ordering: .relaxed) == 1)
                }
                try await listener.close()
                // A short timeout against a listener that never answers: DialListen's "dialling a
                // listener whose backlog is full times out".
            }
        }

        // The digest's bug 23 (Go #16523): a cancelled dial whose connect had already
        // succeeded returned a connection whose deadlines the cancellation had set in the
        // past, so its first write timed out. Here cancellation never touches deadlines: a dial
        // cancelled at any point either throws .cancelled (its socket closed: the leak check)
        // or returns a connection that works.
        @Test(
            "a dial cancelled as its connect completes throws cancelled or returns a working connection, never a poisoned one (Go #16523)",
            arguments: BackendKind.allCases)
        func dialCancelRacingConnect(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let address = listener.localAddress
                var outcomes = (cancelled: 0, connected: 0)
                for round in 0..<100 {
                    let dial = Task { () async -> Result<Connection, NetError> in
                        do throws(NetError) {
                            return .success(try await Connection.dial(address, timeout: .seconds(5), poller: poller))
                        } catch {
                            return .failure(error)
                        }
                    }
                    for _ in 0..<(round % 4) { await Task.yield() }  // cancel at varying points
                    dial.cancel()
                    switch await dial.value {
                    case .failure(let error):
                        #expect(error == .cancelled, "round \(round): \(error)")
                        outcomes.cancelled += 1
                    case .success(let client):
                        outcomes.connected += 1
                        // The listen queue may hold connections of cancelled dials before it.
                        var server = try await listener.accept()
                        while server.remoteAddress != client.localAddress {
                            try await server.close()
                            server = try await listener.accept()
                        }
                        try await client.write([UInt8(round)])  // no deadline was left behind
                        #expect(try await server.read(maxBytes: 1) == [UInt8(round)])
                        try await client.close()
                        try await server.close()
                    }
                }
                try await listener.close()  // resets what the cancelled dials left queued
                #expect(outcomes.cancelled + outcomes.connected == 100)
            }
        }

        @Test("TestDialTimeoutMaxDuration: a dial with the longest timeouts succeeds", arguments: BackendKind.allCases)
        func maxTimeout(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let port = pair.listener.localAddress.port!
                for timeout: Duration in [.nanoseconds(Int64.max), .seconds(Int64.max)] {
                    try await TCPPair.dialled(pair.listener) {
                        try await Connection.dial(host: "localhost", port: port, timeout: timeout, poller: poller)
                    }.closeConnections()
                }
            }
        }

        @Test("hostile host names fail with invalidAddress saying why, before any lookup", arguments: BackendKind.allCases)
        func hostileNames(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let label63 = String(repeating: "a", count: 63)
                let name253 = [label63, label63, label63, String(repeating: "b", count: 61)].joined(separator: ".")
                let cases: [(String, String)] = [
                    ("bad\0host:80", "control character NUL"),
                    ("[::1:80", "missing ']'"),
                    ("host:65536", "out of range"),
                    (name253 + "x:80", "longer than the 253"),
                    (String(repeating: "a", count: 64) + ".com:80", "label of 64 bytes"),
                    ("a..b:80", "empty label"),
                    (".a:80", "empty label"),
                    ("-a.com:80", "starting or ending with '-'"),
                    ("a-.com:80", "starting or ending with '-'"),
                    ("exa mple.com:80", "not a valid host name character"),
                    ("ex%ample.com:80", "not a valid host name character"),
                    ("h\u{e9}llo.com:80", "non-ASCII"),
                    ("999.1.1.1:80", "not a valid IPv4 address"),
                    ("1.2.3:80", "not a valid IPv4 address"),
                    ("[::g]:80", "not a valid IPv6 address"),
                    ("[127.0.0.1%lo]:80", "not a valid host name character"),
                ]
                let calls = Atomic<Int>(0)
                try await withLookup({ host, _ in
                    calls.add(1, ordering: .relaxed)
                    return .failure(.resolution(host: host, code: EAI_NONAME, message: "seam"))
                }) {
                    for (input, reason) in cases {
                        let error = await netError { () async throws(NetError) in try await Connection.dial(address: input, poller: poller)
                        }
                        guard case .invalidAddress(let text) = error else {
                            Issue.record("\(input.prefix(40).debugDescription): \(String(describing: error))")
                            continue
                        }
                        #expect(text.contains(reason), "\(input.prefix(40).debugDescription): \(text)")
                        #expect(text.utf8.count < 300)
                    }
                    #expect(calls.load(ordering: .relaxed) == 0)
                    // The longest name and a trailing dot pass the checks whole and reach the lookup.
                    for host in [name253, name253 + ".", "under_score.test"] {
                        let error = await netError { () async throws(NetError) in
                            try await Connection.dial(host: host, port: 80, poller: poller)
                        }
                        #expect(error == .resolution(host: host, code: EAI_NONAME, message: "seam"))
                    }
                    #expect(calls.load(ordering: .relaxed) == 3)
                }
            }
        }

        @Test("lookups run on at most four plain threads, never on a poller thread", arguments: BackendKind.allCases)
        func lookupThreads(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let running = Atomic<Int>(0)
                let most = Atomic<Int>(0)
                let onPoller = Atomic<Int>(0)
                try await withLookup({ host, _ in
                    let now = running.add(1, ordering: .relaxed).newValue
                    most.max(now, ordering: .relaxed)
                    if cpoller_current_poller() != nil { onPoller.add(1, ordering: .relaxed) }
                    usleep(100_000)
                    running.subtract(1, ordering: .relaxed)
                    return .failure(.resolution(host: host, code: EAI_AGAIN, message: "seam"))
                }) {
                    await withTaskGroup(of: NetError?.self) { group in
                        for i in 0..<10 {
                            group.addTask {
                                await netError { () async throws(NetError) in
                                    try await Connection.dial(host: "h\(i).test", port: 80, poller: poller)
                                }
                            }
                        }
                        for await error in group {
                            guard case .resolution(_, EAI_AGAIN, _) = error else {
                                Issue.record("\(String(describing: error))")
                                continue
                            }
                        }
                    }
                }
                #expect(most.load(ordering: .relaxed) <= LookupPool.shared.maximumThreads)
                #expect(most.load(ordering: .relaxed) >= 2)
                #expect(onPoller.load(ordering: .relaxed) == 0)
            }
        }

        @Test("a dialer binds its local address and applies its keep-alive settings", arguments: BackendKind.allCases)
        func localAddressAndKeepAlive(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let port = listener.localAddress.port!
                let dialer = Dialer(
                    keepAlive: KeepAliveConfig(idle: .seconds(60), interval: .seconds(7), count: 3),
                    localAddress: .ipv4(host: "127.0.0.1", port: 0), poller: poller)
                let pair = try await TCPPair.dialled(listener) { try await dialer.dial(host: "localhost", port: port) }
                let (client, server) = (pair.client, pair.server)
                guard case .ipv4("127.0.0.1", let localPort) = client.localAddress else {
                    Issue.record("bound \(client.localAddress)")
                    return
                }
                #expect(server.remoteAddress == .ipv4(host: "127.0.0.1", port: localPort))
                #expect(try client.getOption(level: Int32(IPPROTO_TCP), name: TCP_KEEPIDLE) == 60)
                #expect(try client.getOption(level: Int32(IPPROTO_TCP), name: TCP_KEEPINTVL) == 7)
                #expect(try client.getOption(level: Int32(IPPROTO_TCP), name: TCP_KEEPCNT) == 3)
                try await client.close()
                try await server.close()
                // A local address of the other family leaves nothing to dial.
                let mismatched = await netError { () async throws(NetError) in
                    try await Dialer(localAddress: .ipv6(host: "::1", port: 0), poller: poller).dial(host: "127.0.0.1", port: port)
                }
                guard case .invalidAddress = mismatched else {
                    Issue.record("\(String(describing: mismatched))")
                    return
                }
                try await listener.close()
            }
        }
    }
}

/// A listener whose accept queue is full, so the kernel drops further SYNs and a connect to
/// it stays in progress until its timeout: an address that never answers, on loopback.
struct BlackHole {
    let listener: TCPListener
    let queued: [Connection]
    var port: UInt16 { listener.localAddress.port! }

    /// Fills a backlog-1 listener on `host` with connections until one dial times out (100 ms).
    static func make(host: String, poller: Poller, sourceLocation: SourceLocation = #_sourceLocation) async throws -> BlackHole {
        let listener = try TCPListener.listen(host: host, port: 0, backlog: 1, poller: poller)
        var queued: [Connection] = []
        for _ in 0..<16 {
            do throws(NetError) {
                queued.append(
                    try await Connection.dial(host: host, port: listener.localAddress.port!, timeout: .milliseconds(100), poller: poller))
            } catch {
                #expect(error == .timeout, sourceLocation: sourceLocation)
                return BlackHole(listener: listener, queued: queued)
            }
        }
        Issue.record("no dial timed out against a full backlog", sourceLocation: sourceLocation)
        return BlackHole(listener: listener, queued: queued)
    }

    func close() async throws {
        for connection in queued { try await connection.close() }
        try await listener.close()
    }
}
