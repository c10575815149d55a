import Glibc
import Poller
import PollerNet
import Testing

/// Starts a read on `pair.client` with a read deadline `deadline` from now, then 20 ms later
/// (the read blocked) moves that deadline with `change`; `waitingMs` later, past the first
/// deadline, the server writes `byte`, and the read must return it: the changed deadline let
/// the blocked read outlive the first one.
private func expectBlockedReadOutlivesDeadline(
    _ pair: TCPPair, deadline: Duration, waitingMs: Int, byte: UInt8,
    sourceLocation: SourceLocation = #_sourceLocation,
    change: (Connection) throws(NetError) -> Void
) async throws {
    let client = pair.client
    try client.setReadDeadline(in: deadline)
    let reader = Task { () async throws(NetError) -> [UInt8] in try await client.read(maxBytes: 10) }
    await sleep(ms: 20)
    try change(client)
    await sleep(ms: waitingMs)  // past the first deadline
    try await pair.server.write([byte])
    #expect(try await reader.value == [byte], sourceLocation: sourceLocation)
}

extension PollerNetTests {
    /// Ported in spirit from Go's net/timeout_test.go.
    @Suite("Deadlines")
    struct Deadlines {
        @Test(
            "a read deadline in the past times out at once, even with data waiting; clearing it reads the data",
            arguments: BackendKind.allCases)
        func pastReadDeadline(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await pair.server.write(Array("READ TIMEOUT TEST".utf8))
                await sleep(ms: 20)
                try pair.client.setReadDeadline(.now - .seconds(5))
                for _ in 0..<2 {
                    let error = await netError { () async throws(NetError) in try await pair.client.read(maxBytes: 1) }
                    #expect(error == .timeout)
                    #expect(error?.isTimeout == true)
                    #expect(error?.description == "i/o timeout")
                }
                // An expired read deadline does not affect writes.
                try await pair.client.write([1])
                try pair.client.setReadDeadline(nil)
                #expect(try await pair.client.read(maxBytes: 100) == Array("READ TIMEOUT TEST".utf8))
            }
        }

        @Test("a read deadline in the future times out no earlier than the deadline, and again after", arguments: BackendKind.allCases)
        func futureReadDeadline(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let start = ContinuousClock.now
                try pair.client.setReadDeadline(in: .milliseconds(50))
                await expectNetError(.timeout) { () async throws(NetError) in try await pair.client.read(maxBytes: 1) }
                #expect(ContinuousClock.now - start >= .milliseconds(50))
                #expect(ContinuousClock.now - start < .seconds(2))
                // Still expired: the next read times out at once.
                await expectNetError(.timeout) { () async throws(NetError) in try await pair.client.read(maxBytes: 1) }
                // Re-armed after expiry: a new future deadline times out again, later.
                let rearm = ContinuousClock.now
                try pair.client.setReadDeadline(in: .milliseconds(30))
                await expectNetError(.timeout) { () async throws(NetError) in try await pair.client.read(maxBytes: 1) }
                #expect(ContinuousClock.now - rearm >= .milliseconds(30))
            }
        }

        @Test("a deadline extended while a read is blocked keeps it waiting until data arrives", arguments: BackendKind.allCases)
        func extendWhileBlocked(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await expectBlockedReadOutlivesDeadline(
                    pair, deadline: .milliseconds(100), waitingMs: 200, byte: 42
                ) { client throws(NetError) in try client.setReadDeadline(in: .seconds(10)) }
            }
        }

        @Test(
            "a deadline cleared while a read is blocked keeps it waiting; one moved to the past wakes it", arguments: BackendKind.allCases)
        func clearWhileBlocked(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                try await expectBlockedReadOutlivesDeadline(
                    pair, deadline: .milliseconds(80), waitingMs: 150, byte: 9
                ) { client throws(NetError) in try client.setReadDeadline(nil) }
                // Go's TestReadTimeoutUnblocksRead: a past deadline set from elsewhere wakes a
                // blocked read with a timeout.
                let second = Task { () async throws(NetError) -> [UInt8] in try await client.read(maxBytes: 10) }
                await sleep(ms: 50)
                try client.setReadDeadline(.now - .seconds(1))
                await #expect(throws: NetError.timeout) { try await second.value }
            }
        }

        @Test("deadlines set concurrently from many tasks neither crash nor hang", arguments: BackendKind.allCases)
        func concurrentSetDeadline(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let port = listener.localAddress.port!
                var pairs: [(Connection, Connection)] = []
                for _ in 0..<10 {
                    async let accepted = listener.accept()
                    let c = try await Connection.dial(host: "127.0.0.1", port: port, poller: poller)
                    pairs.append((c, try await accepted))
                }
                let clients = pairs.map(\.0)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for i in 1...8 {
                        group.addTask {
                            for j in stride(from: 100, through: 1, by: -1) {
                                for (k, c) in clients.enumerated() {
                                    let s = Int64(i * j * (k + 1))
                                    try c.setReadDeadline(.now + .seconds(7200 + s))
                                    try c.setWriteDeadline(.now + .seconds(3600 + s))
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                // Go's TestReadWriteDeadlineRace: tiny deadlines racing reads and writes.
                let c = clients[0]
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for _ in 0..<200 {
                            try c.setReadDeadline(in: .microseconds(2))
                            try c.setWriteDeadline(in: .microseconds(2))
                            await Task.yield()
                        }
                    }
                    group.addTask { for _ in 0..<200 { _ = try? await c.read(maxBytes: 1) } }
                    group.addTask { for _ in 0..<200 { _ = try? await c.write([1]) } }
                    try await group.waitForAll()
                }
                // Everything still works with the deadlines cleared.
                for (c, s) in pairs {
                    try c.setDeadline(nil)
                    try await s.write([5])
                    #expect(try await c.read(maxBytes: 1) == [5])
                    try await c.close()
                    try await s.close()
                }
                try await listener.close()
            }
        }

        @Test("a write to a peer that never reads times out with the bytes written so far", arguments: BackendKind.allCases)
        func writeTimeout(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                // A raw buffer, so the timed write does not start with a 64 MiB copy (slow
                // under AddressSanitizer: the deadline could pass before the first send).
                let big = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 20, alignment: 16)
                defer { big.deallocate() }
                big.initializeMemory(as: UInt8.self, repeating: 0x55)
                // The clock is read before the deadline is set: read after, a busy machine that
                // delays this task between the two makes the wait look shorter than it was.
                let start = ContinuousClock.now
                try pair.client.setWriteDeadline(in: .milliseconds(100))
                let result = await pair.client.writeReportingProgress(UnsafeRawBufferPointer(big))
                #expect(result.error == .timeout)
                #expect(result.bytesWritten > 0)
                #expect(result.bytesWritten < big.count)
                #expect(ContinuousClock.now - start >= .milliseconds(100))
                // Expired: further writes time out at once with nothing written.
                let again = await pair.client.writeReportingProgress([1, 2, 3])
                #expect(again == WriteResult(bytesWritten: 0, error: .timeout))
                // A past write deadline fails even a write that would fit (Go's TestWriteTimeout).
                try pair.server.setWriteDeadline(.now - .seconds(5))
                await expectNetError(.timeout) { () async throws(NetError) in try await pair.server.write([1]) }
            }
        }

        @Test("an expired accept deadline beats a pending connection; clearing it accepts it", arguments: BackendKind.allCases)
        func acceptDeadline(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let client = try await Connection.dial(host: "127.0.0.1", port: listener.localAddress.port!, poller: poller)
                try listener.setDeadline(.now - .seconds(5))
                await expectNetError(.timeout) { () async throws(NetError) in try await listener.accept() }
                try listener.setDeadline(nil)
                let server = try await listener.accept()
                #expect(server.remoteAddress == client.localAddress)
                // A future deadline with nothing pending times out after it.
                let start = ContinuousClock.now
                try listener.setDeadline(in: .milliseconds(30))
                await expectNetError(.timeout) { () async throws(NetError) in try await listener.accept() }
                #expect(ContinuousClock.now - start >= .milliseconds(30))
                try await client.close()
                try await server.close()
                try await listener.close()
            }
        }
    }
}
