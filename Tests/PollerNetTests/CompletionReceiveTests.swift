import Glibc
import PollerNet
import Testing

@testable import Poller

// io_uring completion receive (RingReceive.swift, ReceiveBufferRing.swift): a connection's
// bytes arrive as multishot recv completions into provided buffers and wait in its slot. Every
// test here runs on each read path: epoll, io_uring with completion receive turned off (the
// forced-off probe), io_uring with it on, and io_uring with a ring of four 256-byte buffers,
// so that the recv keeps running out (-ENOBUFS) and reads fall back to recv(2).

/// How a test's poller reads its connections.
enum ReadPath: String, CaseIterable, CustomStringConvertible, Sendable {
    case epoll
    case uringReadiness = "io_uring, completion receive off"
    case uringCompletion = "io_uring, completion receive"
    case uringStarved = "io_uring, completion receive from a 4-buffer ring"

    var description: String { rawValue }

    var options: Poller.Options {
        var options = Poller.Options()
        switch self {
        case .epoll, .uringCompletion: break
        case .uringReadiness: options.receive.enabled = false
        case .uringStarved:
            options.receive.bufferCount = 4
            options.receive.bufferSize = 256
        }
        return options
    }

    var expectsCompletions: Bool { self == .uringCompletion || self == .uringStarved }
}

/// A fresh poller reading the `path` way, checked afterwards as `withNetPoller` checks: no
/// waiter parked, no descriptor registered, every receive buffer back in the ring, no
/// descriptor leaked. Skips the io_uring paths where io_uring (or, for the completion paths,
/// multishot recv) cannot run here.
func withReadPath(
    _ path: ReadPath, options: Poller.Options? = nil, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller) async throws -> Void
) async throws {
    if path.expectsCompletions, ioUringUnavailableReason == nil, URingBackend.receiveProbe != 0 {
        try Test.cancel("multishot recv unavailable: \(ErrnoName.describe(URingBackend.receiveProbe))")
    }
    try await withFreshPollers(
        path == .epoll ? .epoll : .ioUring, threads: 1, options: options ?? path.options, sourceLocation: sourceLocation
    ) { pollers, _ in try await body(pollers[0]) }
}

/// `withReadPath` with a connected pair on that poller, closed afterwards.
func withReadPathPair(
    _ path: ReadPath, options: Poller.Options? = nil, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, TCPPair) async throws -> Void
) async throws {
    try await withReadPath(path, options: options, sourceLocation: sourceLocation) { poller in
        let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
        let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: poller)
        try await using(pair, closedBy: { await $0.close() }) { try await body(poller, $0) }
    }
}

/// Reads from `connection` into `into` until it holds `count` bytes.
func readExactly(_ connection: Connection, _ count: Int, chunk: Int = 7000, into bytes: inout [UInt8]) async throws {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 1)
    defer { buffer.deallocate() }
    while bytes.count < count {
        let n = try await connection.read(into: buffer)
        bytes.append(contentsOf: buffer[0..<n])
    }
}

/// Connects `connections` pairs on `poller`, starts every server side reading first (so the
/// bytes race for the receive buffers), sends `bytes` from every client at once, expects every
/// server side to receive them intact, and closes everything.
func expectEveryConnectionReceives(
    _ poller: Poller, connections: Int, bytes: Int, chunk: Int, sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
    var pairs: [TCPPair] = []
    for _ in 0..<connections { pairs.append(try await TCPPair.connect(listener, from: "127.0.0.1", poller: poller)) }
    let message = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
    let results = await withTaskGroup(of: Bool.self) { group in
        for pair in pairs {
            group.addTask {
                var received: [UInt8] = []
                do {
                    try await readExactly(pair.server, message.count, chunk: chunk, into: &received)
                } catch {
                    return false
                }
                return received == message
            }
        }
        for pair in pairs { try? await pair.client.write(message) }
        var all: [Bool] = []
        for await ok in group { all.append(ok) }
        return all
    }
    #expect(results.count == pairs.count && results.allSatisfy { $0 }, sourceLocation: sourceLocation)
    for pair in pairs {
        try await pair.client.close()
        try await pair.server.close()
    }
    try await listener.close()
}

extension PollerNetTests {
    @Suite("Completion receive: io_uring reads through multishot recv and provided buffers")
    struct CompletionReceiveTests {
        @Test("The poller says which read path runs, and why, in its backend reason", arguments: ReadPath.allCases)
        func backendReasonNamesTheReadPath(path: ReadPath) async throws {
            try await withReadPath(path) { poller in
                #expect(poller.receivesThroughCompletions == path.expectsCompletions)
                let expected =
                    switch path {
                    case .epoll: "reads by recv(2) on readiness"
                    case .uringReadiness: "completion receive turned off"
                    case .uringCompletion, .uringStarved: "reads through multishot recv"
                    }
                #expect(poller.backendReason.contains(expected), "\(poller.backendReason)")
            }
        }

        @Test("Four MiB sent in one go arrive intact and in order", arguments: ReadPath.allCases)
        func bulkArrivesIntact(path: ReadPath) async throws {
            try await withReadPathPair(path) { _, pair in
                let sent = (0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 13) }
                let writer = Task { try await pair.client.write(sent) }
                var received: [UInt8] = []
                try await readExactly(pair.server, sent.count, into: &received)
                try await writer.value
                #expect(received.count == sent.count && checksum(received) == checksum(sent))
            }
        }

        @Test("End of file after the last byte, and again on every later read", arguments: ReadPath.allCases)
        func endOfFileIsSticky(path: ReadPath) async throws {
            try await withReadPathPair(path) { _, pair in
                let sent = [UInt8](repeating: 7, count: 3000)
                try await pair.client.write(sent)
                try await pair.client.close()
                var received: [UInt8] = []
                try await readExactly(pair.server, sent.count, chunk: 1000, into: &received)
                #expect(received == sent)
                for _ in 0..<3 {
                    await expectNetError(.endOfFile) { () async throws(NetError) in try await pair.server.read(maxBytes: 10) }
                }
            }
        }

        @Test(
            "A read deadline firing as the bytes arrive loses none and duplicates none (1000 iterations)",
            arguments: ReadPath.allCases)
        func deadlineRacingArrivalLosesNothing(path: ReadPath) async throws {
            try await withReadPathPair(path) { _, pair in
                let count = 1000
                var received: [UInt8] = []
                var timeouts = 0
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
                defer { buffer.deallocate() }
                for i in 0..<count {
                    try await pair.client.write([UInt8(truncatingIfNeeded: i)])
                    try pair.server.setReadDeadline(in: .microseconds(Int64.random(in: 0...60)))
                    do throws(NetError) {
                        let n = try await pair.server.read(into: buffer)
                        received.append(contentsOf: buffer[0..<n])
                    } catch .timeout {
                        timeouts += 1
                    }
                }
                try pair.server.setReadDeadline(nil)
                try await readExactly(pair.server, count, into: &received)
                #expect(received == (0..<count).map { UInt8(truncatingIfNeeded: $0) })
                #expect(timeouts > 0, "no deadline fired: the race was not exercised")
            }
        }

        @Test("A cancelled read leaves the bytes that arrive after it to the next read", arguments: ReadPath.allCases)
        func cancelledReadLosesNothing(path: ReadPath) async throws {
            try await withReadPathPair(path) { poller, pair in
                let reader = try await startBlockedRead(pair.server, poller)
                reader.cancel()
                #expect(await reader.value == .cancelled)
                try await pair.client.write([1, 2, 3])
                var received: [UInt8] = []
                try await readExactly(pair.server, 3, into: &received)
                #expect(received == [1, 2, 3])
            }
        }

        @Test("A peer that resets with bytes in flight: the read ends with connectionReset", arguments: ReadPath.allCases)
        func resetWithBytesInFlight(path: ReadPath) async throws {
            try await withReadPathPair(path) { poller, pair in
                let reader = try await startBlockedRead(pair.server, poller)
                setLingerZero(try pair.client.deadlineDescriptor().fd)
                try await pair.client.write([UInt8](repeating: 1, count: 100))
                try await pair.client.close()
                // The blocked read may take the bytes that came before the reset.
                var error = await reader.value
                let limit = ContinuousClock.now + .seconds(2)
                while error == nil && ContinuousClock.now < limit {
                    error = await netError { () async throws(NetError) in try await pair.server.read(maxBytes: 1000) }
                }
                #expect(error == .connectionReset)
            }
        }

        @Test("Closing a connection with unread bytes queued gives their buffers back", arguments: ReadPath.allCases)
        func closeWithUnreadBytes(path: ReadPath) async throws {
            try await withReadPath(path) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                for _ in 0..<50 {
                    let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: poller)
                    try await pair.client.write([UInt8](repeating: 2, count: 5000))
                    _ = try await pair.server.read(maxBytes: 10)  // starts the recv; the rest stays queued
                    try await pair.server.close()
                    try await pair.client.close()
                }
                try await listener.close()
            }
        }

        @Test(
            "Many connections sending at once through a ring too small for them: every byte arrives",
            arguments: ReadPath.allCases)
        func manyConnectionsExhaustTheRing(path: ReadPath) async throws {
            try await withReadPath(path) { poller in
                try await expectEveryConnectionReceives(poller, connections: 200, bytes: 3000, chunk: 512)
            }
        }

        // Issue 16's fault list: "a ring whose CQ overflows". With 16 completion slots for 100
        // connections sending at once the completion queue overflows; the kernel keeps what
        // overflowed (NODROP) but ends the multishot recvs it could not post to, and the
        // backend re-arms each one that ended with data.
        @Test(
            "Ten thousand connections sending at once: every byte echoed, through a ring that runs dry (the C load generator as client)",
            arguments: ReadPath.allCases)
        func tenThousandConnectionsExhaustTheRing(path: ReadPath) async throws {
            // The clients live in another process (poller-loadgen, built with the tests), so
            // this one holds only the 10,000 accepted descriptors.
            let loadgen = try ServerProcess.binary(named: "poller-loadgen")
            try await withReadPath(path) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let server = Task(executorPreference: poller.executor) {
                    await withDiscardingTaskGroup { group in
                        while let connection = try? await listener.accept() {
                            group.addTask(executorPreference: poller.executor) {
                                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 1)
                                defer { buffer.deallocate() }
                                while let n = try? await connection.read(into: buffer),
                                    (try? await connection.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))) != nil
                                {}
                                try? await connection.close()
                            }
                        }
                    }
                }
                let (pid, outPath, errPath) = try ServerProcess.spawn(
                    named: "poller-loadgen",
                    [
                        "--port", "\(listener.localAddress.port!)", "--connections", "10000", "--size", "64", "--duration", "3",
                        "--warmup", "0",
                    ])
                defer {
                    unlink(outPath)
                    unlink(errPath)
                }
                var status = ServerProcess.reap(pid, waitingMs: 0)
                while status == .running {
                    await sleep(ms: 50)
                    status = ServerProcess.reap(pid, waitingMs: 0)
                }
                let report = readFile(outPath)
                #expect(status == .exited(0), "\(loadgen): \(status); \(readFile(errPath))")
                #expect(report.contains("bad_bytes=0"), "\(report)")
                let roundTrips = report.firstRange(of: "roundtrips=").map { Int(report[$0.upperBound...].prefix { $0.isNumber }) ?? 0 } ?? 0
                #expect(roundTrips >= 10_000, "\(report)")
                if path == .uringStarved {
                    let starved = (poller.backend as? URingBackend)?.receiveStarvations.load(ordering: .relaxed) ?? 0
                    #expect(starved > 0, "the ring never ran dry")
                }
                try await listener.close()
                await server.value
            }
        }

        // Regression: the poll update that takes input out of a receiving connection's poll
        // passed a new user_data without IORING_POLL_UPDATE_USER_DATA, which the kernel
        // refuses (EINVAL), silently. This drives the update both ways, twenty times, with
        // bytes after each. io_uring only: epoll has no poll to update.
        @Test("Regression: an io_uring poll mask update is not refused by the kernel")
        func maskUpdateIsNotRefused() async throws {
            try await withReadPathPair(.uringCompletion) { poller, pair in
                let backend = try #require(poller.backend as? URingBackend)
                let pd = try pair.server.deadlineDescriptor().pollDescriptor
                let token = PollToken(slot: pd.slot.index, generation: pd.generation)
                for i in 0..<20 {
                    await Task(executorPreference: poller.executor) {
                        backend.updateMaskForTests(token, i % 2 == 0 ? KernelReadiness.output : KernelReadiness.interest)
                    }.value
                    try await pair.client.write([UInt8(i)])
                    #expect(try await pair.server.read(maxBytes: 10) == [UInt8(i)])
                }
                await sleep(ms: 20)
                #expect(backend.maskUpdatesRefused.load(ordering: .relaxed) == 0)
            }
        }

        @Test("A receiving connection's poll reports no input: each arrival is the recv's completion alone", arguments: ReadPath.allCases)
        func receivingPollReportsNoInput(path: ReadPath) async throws {
            try await withReadPathPair(path) { poller, pair in
                // The first reads start the recv and take input out of the poll.
                for i in 0..<5 {
                    try await pair.client.write([UInt8(i)])
                    #expect(try await pair.server.read(maxBytes: 10) == [UInt8(i)])
                }
                await sleep(ms: 20)
                let before = inputEventCount(poller)
                // Each byte comes to a reader already parked, so something must wake it: on
                // the readiness path only the poll's input event can (the control).
                for i in 0..<20 {
                    let reader = Task { try await pair.server.read(maxBytes: 10) }
                    try await waitUntilParked(poller)
                    try await pair.client.write([UInt8(i)])
                    #expect(try await reader.value == [UInt8(i)])
                }
                let inputs = inputEventCount(poller).flatMap { now in before.map { now - $0 } }
                switch path {
                case .epoll: #expect(inputs == nil)
                case .uringReadiness: #expect((inputs ?? 0) >= 20, "\(inputs ?? -1) input events woke 20 readers: the control failed")
                case .uringCompletion, .uringStarved: #expect(inputs == 0, "the poll reported input \(inputs ?? -1) times")
                }
            }
        }

        @Test("A completion queue that overflows loses no byte: the recvs it ended are armed again")
        func completionQueueOverflow() async throws {
            var options = Poller.Options()
            options.uringEntries = (submission: 8, completion: 16)
            // Enough buffers that the recvs end for the overflow, not for want of buffers.
            options.receive.bufferCount = 512
            try await withReadPath(.uringCompletion, options: options) { poller in
                // An overflow ends a recv only when a recv's completion is among those that
                // did not fit (it may be a poll's): rounds go on, bounded, until one did. Every
                // round checks every byte. (Under AddressSanitizer one round saw overflows and
                // no recv ended.)
                var (overflows, rearms): (UInt64, Int) = (0, 0)
                for _ in 0..<8 where overflows == 0 || rearms == 0 {
                    try await expectEveryConnectionReceives(poller, connections: 100, bytes: 20_000, chunk: 1500)
                    // The counters are the ring owner's: read them on its thread.
                    (overflows, rearms) = await Task(executorPreference: poller.executor) { () -> (UInt64, Int) in
                        let backend = poller.backend as? URingBackend
                        return (backend?.overflowCount ?? 0, backend?.receiveRearmCount ?? 0)
                    }.value
                }
                #expect(overflows > 0 && rearms > 0, "overflows \(overflows), recvs re-armed \(rearms): the path was not exercised")
            }
        }

        @Test(
            "Detach loses no byte: refused while received bytes wait unread, then the descriptor carries the rest",
            arguments: ReadPath.allCases)
        func detachLosesNoByte(path: ReadPath) async throws {
            try await withReadPathPair(path) { _, pair in
                try await pair.client.write([9, 10, 11])
                #expect(try await pair.server.read(maxBytes: 1) == [9])
                if path.expectsCompletions {
                    // The two other bytes came with the same completion and wait in the queue.
                    await expectNetError(.system(call: "detach", errno: EBUSY)) { () async throws(NetError) in
                        try await pair.server.detach()
                    }
                    #expect(try await pair.server.read(maxBytes: 2) == [10, 11])
                } else {
                    #expect(try await pair.server.read(maxBytes: 2) == [10, 11])
                }
                // Nothing queued now: the detach goes through, and the recv it stopped takes
                // nothing the peer sends later; the descriptor gets it all.
                let fd = try await pair.server.detach()
                defer { Glibc.close(fd) }
                try await pair.client.write([12, 13])
                var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                #expect(poll(&ready, 1, 2000) == 1)
                var bytes = [UInt8](repeating: 0, count: 8)
                let n = recv(fd, &bytes, bytes.count, 0)
                #expect(n == 2 && bytes[0..<2] == [12, 13])
            }
        }
    }
}
