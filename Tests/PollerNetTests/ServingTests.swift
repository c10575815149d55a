import Glibc
import PollerNet
import Synchronization
import Testing

@testable import Poller

/// `listener.serve` in a task of its own; the task ends when serve returns.
func startServing(
    _ listener: any Listener, gracePeriod: Duration = .seconds(30), shutdown: ServingHandle? = nil,
    handler: @escaping @Sendable (Connection) async -> Void
) -> Task<Void, Never> {
    Task { await listener.serve(gracePeriod: gracePeriod, shutdown: shutdown, handler: handler) }
}

/// Reads one byte, writes it back, and returns: the handler of most serving tests.
@Sendable func echoOneByte(_ connection: Connection) async {
    guard let byte = try? await connection.read(maxBytes: 1) else { return }
    try? await connection.write(byte)
}

/// Dials `listener` (TCP or Unix) from `poller`.
func dial(_ listener: any Listener, poller: Poller) async throws(NetError) -> Connection {
    try await Connection.dial(listener.localAddress, timeout: .seconds(5), poller: poller)
}

/// Sends `byte` on `connection` and expects it back.
func expectEchoed(_ byte: UInt8, on connection: Connection, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    try await connection.write([byte])
    #expect(try await connection.read(maxBytes: 1) == [byte], sourceLocation: sourceLocation)
}

extension PollerNetTests {
    @Suite("Structured serving")
    struct Serving {
        @Test("serve runs a handler for each of many concurrent clients", arguments: BackendKind.allCases)
        func concurrentClients(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller, group: NetTestGroup.current)
                let shutdown = ServingHandle()
                let serving = startServing(listener, shutdown: shutdown, handler: echoOneByte)
                var clients: [Connection] = []
                for _ in 0..<16 { clients.append(try await dial(listener, poller: poller)) }
                // All sixteen connected before any is answered: their handlers run side by side.
                for (i, client) in clients.enumerated() { try await client.write([UInt8(i)]) }
                for (i, client) in clients.enumerated() {
                    #expect(try await client.read(maxBytes: 1) == [UInt8(i)])
                    try await client.close()
                }
                shutdown.shutdown()
                await serving.value
            }
        }

        @Test(
            "serve runs each handler on its connection's poller thread, over every poller of a group",
            arguments: BackendKind.allCases)
        func handlersOnTheirPoller(kind: BackendKind) async throws {
            try await withNetGroup(kind) { group in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, group: group)
                let placed = Mutex<[(onOwnPoller: Bool, poller: ObjectIdentifier)]>([])
                let serving = startServing(listener) { connection in
                    placed.withLockAnnotated { $0.append((Poller.current === connection.poller, ObjectIdentifier(connection.poller))) }
                    await echoOneByte(connection)
                }
                for i in 0..<4 {
                    let client = try await dial(listener, poller: group.pollers[0])
                    try await expectEchoed(UInt8(i), on: client)
                    try await client.close()
                }
                try await listener.close()  // closing the listener ends serve too
                await serving.value
                let results = placed.withLockAnnotated { $0 }
                #expect(results.count == 4)
                #expect(results.allSatisfy { $0.onOwnPoller }, "a handler ran off its connection's poller thread")
                #expect(Set(results.map(\.poller)).count == 2, "the connections did not spread over the group")
            }
        }

        @Test("serve works on a Unix listener", arguments: BackendKind.allCases)
        func unixListener(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try UnixListener.listen(path: temporarySocketPath("serve"), poller: poller)
                let serving = startServing(listener, handler: echoOneByte)
                let client = try await dial(listener, poller: poller)
                try await expectEchoed(42, on: client)
                try await client.close()
                try await listener.close()
                await serving.value
            }
        }

        @Test(
            "graceful shutdown stops accepting and lets an in-flight handler finish within the grace period",
            arguments: BackendKind.allCases)
        func gracefulShutdownLetsHandlersFinish(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let port = listener.localAddress.port!
                let shutdown = ServingHandle()
                let finished = Atomic<Bool>(false)
                let serving = startServing(listener, gracePeriod: .seconds(20), shutdown: shutdown) { connection in
                    // Says it is running, then serves one request that arrives after the shutdown.
                    try? await connection.write([1])
                    await echoOneByte(connection)
                    finished.store(true, ordering: .sequentiallyConsistent)
                }
                let client = try await dial(listener, poller: poller)
                #expect(try await client.read(maxBytes: 1) == [1])
                let start = ContinuousClock.now
                shutdown.shutdown()
                #expect(shutdown.isShutDown)
                // No new connection is accepted: the listener is closed.
                try await waitUntilRefused(port: port, poller: poller)
                try await expectEchoed(9, on: client)
                await serving.value
                let handlerFinished = finished.load(ordering: .sequentiallyConsistent)
                #expect(handlerFinished, "serve returned before its handler did")
                #expect(ContinuousClock.now - start < .seconds(10), "serve waited for the grace period")
                try await client.close()
            }
        }

        @Test(
            "after the grace period a handler's blocked read fails with the closing error and serve returns",
            arguments: BackendKind.allCases)
        func gracePeriodUnblocksHandlers(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller, group: NetTestGroup.current)
                let shutdown = ServingHandle()
                let blocked = BlockedReader()
                let serving = startServing(listener, gracePeriod: .milliseconds(200), shutdown: shutdown, handler: blocked.handle)
                let client = try await blocked.dialRunning(listener, poller: poller)
                let start = ContinuousClock.now
                shutdown.shutdown()
                await serving.value
                let elapsed = ContinuousClock.now - start
                #expect(blocked.readError == .closed)
                #expect(elapsed >= .milliseconds(200) && elapsed < .seconds(5), "serve returned after \(elapsed)")
                // The client sees the server's close.
                try await expectPeerClosed(client, kind: kind)
                try await client.close()
            }
        }

        @Test(
            "cancelling the serving task stops accepting and cancels the handlers' blocked reads",
            arguments: BackendKind.allCases)
        func cancellationStopsServing(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let port = listener.localAddress.port!
                let blocked = BlockedReader()
                let serving = startServing(listener, handler: blocked.handle)
                let client = try await blocked.dialRunning(listener, poller: poller)
                let start = ContinuousClock.now
                serving.cancel()
                await serving.value
                #expect(ContinuousClock.now - start < .seconds(5), "serve waited for the grace period")
                #expect(blocked.readError == .cancelled)
                try await waitUntilRefused(port: port, poller: poller)
                try await client.close()
            }
        }

        @Test(
            "a persistent accept error backs off, doubling, is reported, and a shutdown ends the back-off at once",
            arguments: BackendKind.allCases)
        func acceptErrorsBackOff(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                // A listening socket shut down for reading is readable (hung up) and accept4
                // fails on it with EINVAL for good: neither EMFILE nor transient.
                #expect(Glibc.shutdown(listener.netFD.fd, Int32(SHUT_RD)) == 0)
                let delays = Mutex<[Duration]>([])
                let shutdown = ServingHandle()
                let serving = Task {
                    await listener.serve(
                        shutdown: shutdown,
                        onAcceptError: { error, delay in
                            if error != .system(call: "accept4", errno: EINVAL) { Issue.record("accept error \(error)") }
                            delays.withLockAnnotated { $0.append(delay) }
                        }
                    ) { _ in Issue.record("a connection was served") }
                }
                // 5 + 10 + ... + 320 ms, then a back-off of 640 ms that the shutdown cuts short.
                let limit = ContinuousClock.now + .seconds(5)
                while delays.withLockAnnotated({ $0.count }) < 8 && ContinuousClock.now < limit { await sleep(ms: 5) }
                let start = ContinuousClock.now
                shutdown.shutdown()
                await serving.value
                #expect(ContinuousClock.now - start < .milliseconds(400), "the shutdown waited for the back-off")
                #expect(Array(delays.withLockAnnotated { $0 }.prefix(8)) == [5, 10, 20, 40, 80, 160, 320, 640].map { .milliseconds($0) })
            }
        }

        @Test(
            "serve started with no descriptor free accepts once one is free (it used to fail at once with pipe2: EMFILE)",
            arguments: BackendKind.allCases)
        func serveStartedOutOfDescriptors(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                // Connected (into the listen queue) before the limit drops: its accept is the
                // one that fails with EMFILE.
                let client = try Client(port: try #require(listener.localAddress.port))
                defer { client.close() }
                client.setTimeouts(milliseconds: 5000)
                let errors = Mutex<[NetError]>([])
                let shutdown = ServingHandle()
                var limit = rlimit()
                getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
                let saved = limit
                limit.rlim_cur = 0
                try #require(setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0)
                let serving = Task {
                    await listener.serve(
                        shutdown: shutdown,
                        onAcceptError: { error, _ in
                            errors.withLockAnnotated { $0.append(error) }
                        }, handler: echoOneByte)
                }
                // Blocking waits only while no descriptor is free: Task.sleep's timers may need one.
                let limitTime = ContinuousClock.now + .seconds(5)
                while errors.withLockAnnotated({ $0.isEmpty }) && ContinuousClock.now < limitTime { usleep(1000) }
                var restore = saved
                _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &restore)
                let reported = errors.withLockAnnotated { $0 }
                #expect(reported.first == .tooManyOpenFiles(errno: EMFILE), "accept errors: \(reported)")
                // The back-off after one error is 5 ms: the queued client is served next.
                #expect(client.sendAllowingClose([42]))
                var byte: UInt8 = 0
                #expect(recv(client.fd, &byte, 1, 0) == 1 && byte == 42, "the client was not served: errno \(errno)")
                shutdown.shutdown()
                await serving.value
            }
        }

        @Test(
            "a handle shut down before serve starts makes serve close its listener and return at once",
            arguments: BackendKind.allCases)
        func shutDownBeforeServing(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let shutdown = ServingHandle()
                shutdown.shutdown()
                await listener.serve(shutdown: shutdown) { _ in Issue.record("a connection was served") }
                await expectNetError(.closed) { () async throws(NetError) in try await listener.close() }
            }
        }

        @Test(
            "listener.connections yields accepted connections and ends when the listener is closed",
            arguments: BackendKind.allCases)
        func connectionsSequence(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let loop = Task { () async throws -> Int in
                    var served = 0
                    for try await connection in listener.connections {
                        await echoOneByte(connection)
                        try? await connection.close()
                        served += 1
                    }
                    return served
                }
                for i in 0..<3 {
                    let client = try await dial(listener, poller: poller)
                    try await expectEchoed(UInt8(i), on: client)
                    try await client.close()
                }
                try await waitUntilParked(poller)  // the loop waits in accept
                try await listener.close()
                #expect(try await loop.value == 3)
            }
        }

        @Test("listener.connections throws the listener's timeout and then ends", arguments: BackendKind.allCases)
        func connectionsTimeout(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                try listener.setDeadline(in: .milliseconds(20))
                var iterator = listener.connections.makeAsyncIterator()
                await expectNetError(.timeout) { () async throws(NetError) in try await iterator.next() }
                #expect(try await iterator.next() == nil)
                try await listener.close()
            }
        }

        @Test("the accept back-off doubles from 5 ms to 1 s, resets, and skips connections whose set-up failed")
        func acceptBackoff() {
            var backoff = AcceptBackoff()
            #expect(backoff.delay(after: .tooManyOpenFiles(errno: EMFILE)) == .milliseconds(5))
            #expect(backoff.delay(after: .system(call: "accept4", errno: ENOBUFS)) == .milliseconds(10))
            #expect(backoff.delay(after: .connectionReset) == .zero)
            for _ in 0..<20 { _ = backoff.delay(after: .system(call: "accept4", errno: EPROTO)) }
            #expect(backoff.delay == .seconds(1))
            backoff.reset()
            #expect(backoff.delay(after: .tooManyOpenFiles(errno: ENFILE)) == .milliseconds(5))
        }
    }
}

/// A handler that says it runs (one byte to the client), then blocks reading, and records the
/// error its read ends with.
final class BlockedReader: Sendable {
    private let error = Mutex<NetError?>(nil)

    /// The error the handler's read ended with, once it has.
    var readError: NetError? { error.withLockAnnotated { $0 } }

    @Sendable func handle(_ connection: Connection) async {
        try? await connection.write([1])
        let readError = await netError { () async throws(NetError) in try await connection.read(maxBytes: 1) }
        error.withLockAnnotated { $0 = readError }
    }

    /// Dials `listener` and waits until its handler runs.
    func dialRunning(_ listener: any Listener, poller: Poller) async throws -> Connection {
        let client = try await dial(listener, poller: poller)
        #expect(try await client.read(maxBytes: 1) == [1])
        return client
    }
}

/// Waits (up to 5 s) until dialling `port` is refused: the listener is closed.
func waitUntilRefused(port: UInt16, poller: Poller, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let limit = ContinuousClock.now + .seconds(5)
    while ContinuousClock.now < limit {
        do throws(NetError) {
            let connection = try await Connection.dial(host: "127.0.0.1", port: port, timeout: .seconds(1), poller: poller)
            try await connection.close()
            await sleep(ms: 5)
        } catch .connectionReset {
            await sleep(ms: 5)  // queued in the backlog of the listener as it closed
        } catch {
            #expect(error == .system(call: "connect", errno: ECONNREFUSED), sourceLocation: sourceLocation)
            return
        }
    }
    Issue.record("the port still accepted connections after 5 s", sourceLocation: sourceLocation)
}
