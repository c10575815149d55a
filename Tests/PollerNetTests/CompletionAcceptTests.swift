import Glibc
import PollerNet
import Testing

@testable import Poller

// io_uring multishot accept (RingAccept.swift): a listener's connections arrive as accept
// completions and wait in its slot, at most AcceptQueue.bound of them. Every test here runs on
// each accept path: epoll, io_uring with multishot accept turned off (the forced-off probe),
// and io_uring with it on.

/// How a test's poller accepts its listeners' connections.
enum AcceptPath: String, CaseIterable, CustomStringConvertible, Sendable {
    case epoll
    case uringReadiness = "io_uring, multishot accept off"
    case uringAccept = "io_uring, multishot accept"

    var description: String { rawValue }

    var options: Poller.Options {
        var options = Poller.Options()
        if self == .uringReadiness { options.accept.enabled = false }
        return options
    }

    var expectsCompletions: Bool { self == .uringAccept }
}

extension AcceptPath {
    /// The read path whose poller this one starts from (completion receive as by default).
    var readPath: ReadPath { self == .epoll ? .epoll : .uringReadiness }

    /// Skips the test where multishot accept is wanted and the kernel has none (io_uring
    /// itself unavailable is `withReadPath`'s to say).
    func skipIfUnavailable() throws {
        if expectsCompletions, ioUringUnavailableReason == nil, URingBackend.acceptProbe != 0 {
            try Test.cancel("multishot accept unavailable: \(ErrnoName.describe(URingBackend.acceptProbe))")
        }
    }
}

/// A fresh poller accepting the `path` way, checked afterwards as `withReadPath` checks (no
/// waiter parked, no descriptor registered, no descriptor leaked). Skips where io_uring (or,
/// for the multishot path, multishot accept) cannot run here.
func withAcceptPath(
    _ path: AcceptPath, sourceLocation: SourceLocation = #_sourceLocation, _ body: (Poller) async throws -> Void
) async throws {
    try path.skipIfUnavailable()
    try await withReadPath(path.readPath, options: path.options, sourceLocation: sourceLocation) { poller in
        #expect(poller.acceptsThroughCompletions == path.expectsCompletions, sourceLocation: sourceLocation)
        try await body(poller)
    }
}

/// Dials `count` clients to `listener` (their handshakes complete into its backlog).
func dialClients(_ count: Int, to listener: TCPListener, poller: Poller) async throws -> [Connection] {
    var clients: [Connection] = []
    for _ in 0..<count { clients.append(try await Connection.dial(host: "127.0.0.1", port: listener.localAddress.port!, poller: poller)) }
    return clients
}

/// Waits (at most a second) until the process has at least `count` descriptors open; returns
/// the count then.
func waitForFDCount(atLeast count: Int) async -> Int {
    let limit = ContinuousClock.now + .seconds(1)
    var now = openFDCount()
    while now < count && ContinuousClock.now < limit {
        await sleep(ms: 5)
        now = openFDCount()
    }
    return now
}

/// `withAcceptPath` with a listener on 127.0.0.1 that has accepted one connection already (so
/// that, on the multishot path, its accept is armed); the listener is closed afterwards if
/// `body` left it open.
func withArmedListener(
    _ path: AcceptPath, sourceLocation: SourceLocation = #_sourceLocation, _ body: (Poller, TCPListener) async throws -> Void
) async throws {
    try path.skipIfUnavailable()
    try await withReadPathPair(path.readPath, options: path.options, sourceLocation: sourceLocation) { poller, pair in
        #expect(poller.acceptsThroughCompletions == path.expectsCompletions, sourceLocation: sourceLocation)
        try await pair.client.close()
        try await pair.server.close()
        try await body(poller, pair.listener)
    }
}

/// Writes one byte on each connection in `connections`, closes it, and empties the list;
/// returns how many there were.
func serveAndClose(_ connections: inout [Connection]) async throws(NetError) -> Int {
    for connection in connections {
        try await connection.write([7])
        try await connection.close()
    }
    defer { connections.removeAll() }
    return connections.count
}

/// Poll completions on `poller` that reported input so far; nil on epoll (no poll requests).
func inputEventCount(_ poller: Poller) -> Int? {
    (poller.backend as? URingBackend)?.inputEvents.load(ordering: .relaxed)
}

extension PollerNetTests {
    @Suite("Completion accept: io_uring listeners accept through multishot accept")
    struct CompletionAcceptTests {
        @Test(
            "An accepting listener's poll reports no input: its connections come as accept completions alone",
            arguments: AcceptPath.allCases)
        func listenerPollReportsNoInput(path: AcceptPath) async throws {
            try await withArmedListener(path) { poller, listener in
                // The first pair's closes are input (end of file) for their peers: let them pass.
                await sleep(ms: 20)
                let before = inputEventCount(poller)
                var clients = try await dialClients(20, to: listener, poller: poller)
                var servers: [Connection] = []
                for _ in 0..<20 { servers.append(try await listener.accept()) }
                // Nothing has been written or closed yet: only the listener had input.
                let inputs = inputEventCount(poller).flatMap { now in before.map { now - $0 } }
                switch path {
                case .epoll: #expect(inputs == nil)
                case .uringReadiness: #expect((inputs ?? 0) > 0, "the listener's poll reported no input: the control failed")
                case .uringAccept: #expect(inputs == 0, "the listener's poll reported input \(inputs ?? -1) times")
                }
                _ = try await serveAndClose(&servers)
                for client in clients { try await client.close() }
                clients.removeAll()
            }
        }

        @Test(
            "The poller says whether listeners accept through multishot accept, and why, in its backend reason",
            arguments: AcceptPath.allCases)
        func backendReasonNamesTheAcceptPath(path: AcceptPath) async throws {
            try await withAcceptPath(path) { poller in
                let expected =
                    switch path {
                    case .epoll: "accepts by accept4(2) on readiness"
                    case .uringReadiness: "multishot accept turned off: POLLER_URING_ACCEPT"
                    case .uringAccept: "accepts through multishot accept"
                    }
                #expect(poller.backendReason.contains(expected), "\(poller.backendReason)")
            }
        }

        @Test("Two hundred connections are accepted, and each echoes its client's message", arguments: AcceptPath.allCases)
        func manyConnectionsAccepted(path: AcceptPath) async throws {
            try await withAcceptPath(path) { poller in try await expectEveryConnectionEchoes(poller, count: 200) }
        }

        @Test(
            "A listener nobody accepts on holds at most the queue's bound of accepted descriptors; then every connection is accepted",
            arguments: AcceptPath.allCases)
        func acceptQueueBoundHolds(path: AcceptPath) async throws {
            try await withArmedListener(path) { poller, listener in
                let before = openFDCount()
                let count = 100
                let clients = try await dialClients(count, to: listener, poller: poller)
                let bound = AcceptQueue.bound
                // On the ring the kernel accepts up to the bound into the queue, then stops.
                let grown = await waitForFDCount(atLeast: before + count + (path.expectsCompletions ? bound : 0)) - before
                await sleep(ms: 50)
                let settled = openFDCount() - before
                #expect(grown >= count && settled <= count + bound + 4, "grew by \(settled) for \(count) clients")
                if path.expectsCompletions { #expect(settled >= count + bound, "the multishot accept did not fill its queue") }
                for client in clients {
                    let server = try await listener.accept()
                    try await server.write([9])
                    #expect(try await client.read(maxBytes: 1) == [9])
                    try await server.close()
                    try await client.close()
                }
            }
        }

        @Test("Closing a listener closes the connections accepted into its queue, and leaks none", arguments: AcceptPath.allCases)
        func closeWithQueuedConnections(path: AcceptPath) async throws {
            try await withArmedListener(path) { poller, listener in
                let before = openFDCount()
                let clients = try await dialClients(10, to: listener, poller: poller)
                if path.expectsCompletions {
                    #expect(await waitForFDCount(atLeast: before + 20) >= before + 20, "the ring queued no connection")
                }
                // More arrive while it closes: their completions find the listener gone.
                let late = Task { try await dialClients(5, to: listener, poller: poller) }
                try await listener.close()
                let lateClients = (try? await late.value) ?? []
                for client in clients + lateClients {
                    try client.setReadDeadline(in: .seconds(5))
                    let error = await netError { () async throws(NetError) in try await client.read(maxBytes: 1) }
                    #expect(error == .endOfFile || error == .connectionReset, "\(String(describing: error))")
                    try await client.close()
                }
            }
        }

        @Test(
            "A poller shut down while connections arrive for an armed accept leaks no descriptor, and its listener still closes",
            arguments: AcceptPath.allCases)
        func shutdownWithArrivals(path: AcceptPath) async throws {
            try await withArmedListener(path) { poller, listener in
                let clients = try await dialClients(8, to: listener, poller: poller)
                // More arrive as it stops: their completions may be left in the ring.
                let late = Task { try? await dialClients(8, to: listener, poller: poller) }
                poller.shutdown()
                let lateClients = await late.value ?? []
                try await listener.close()
                for client in clients + lateClients { try? await client.close() }
            }
        }

        @Test("An accept deadline ends the wait of an armed accept; a connection after it is accepted next", arguments: AcceptPath.allCases)
        func acceptDeadlineWhileArmed(path: AcceptPath) async throws {
            try await withArmedListener(path) { poller, listener in
                try listener.setDeadline(in: .milliseconds(50))
                let error = await netError { () async throws(NetError) in try await listener.accept() }
                #expect(error == .timeout)
                let clients = try await dialClients(1, to: listener, poller: poller)
                try listener.setDeadline(nil)
                let server = try await listener.accept()
                try await server.close()
                try await clients[0].close()
            }
        }

        @Test(
            "Cancelling the task of an accept parked on an armed accept ends it; the listener stays usable", arguments: AcceptPath.allCases)
        func acceptCancellationWhileArmed(path: AcceptPath) async throws {
            try await withArmedListener(path) { poller, listener in
                let acceptor = Task { await netError { () async throws(NetError) in try await listener.accept().close() } }
                try await waitUntilParked(poller)
                acceptor.cancel()
                #expect(await acceptor.value == .cancelled)
                let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: poller)
                try await pair.closeAll()
            }
        }

        @Test(
            "Out of descriptors, accept reports tooManyOpenFiles; once descriptors are freed, accepting resumes and no connection is lost",
            arguments: AcceptPath.allCases)
        func tooManyOpenFilesThenResumes(path: AcceptPath) async throws {
            try await withAcceptPath(path) { poller in
                // No headroom: the bare EMFILE path (the headroom's shedding is pinned in
                // DescriptorExhaustionRegressions, which runs on the ring too).
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller, descriptorHeadroom: 0)
                let clients = try await dialClients(4, to: listener, poller: poller)
                var saved = rlimit()
                #expect(getrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved) == 0)
                // Room for two descriptors: the lowest two free numbers, and nothing above.
                let free = lowestFreeDescriptors(2, below: Int(saved.rlim_cur))
                try #require(free.count == 2)
                var lowered = saved
                lowered.rlim_cur = rlim_t(free[1] + 1)
                try #require(setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered) == 0)
                var restore = saved
                defer { _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &restore) }

                var accepted: [Connection] = []
                var sawEMFILE = false
                var served = 0
                var rounds = 0
                while served < clients.count && rounds < 20 {
                    rounds += 1
                    do throws(NetError) {
                        accepted.append(try await listener.accept())
                        if served + accepted.count == clients.count { served += try await serveAndClose(&accepted) }
                    } catch {
                        #expect(error == .tooManyOpenFiles(errno: EMFILE))
                        sawEMFILE = true
                        // Free the descriptors: serve and close what is in hand.
                        served += try await serveAndClose(&accepted)
                    }
                }
                _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &restore)
                #expect(sawEMFILE, "accept never reported EMFILE")
                #expect(served == clients.count, "served \(served) of \(clients.count)")
                for client in clients {
                    try client.setReadDeadline(in: .seconds(5))
                    #expect(try await client.read(maxBytes: 1) == [7])
                    try await client.close()
                }
                try await listener.close()
            }
        }
    }
}
