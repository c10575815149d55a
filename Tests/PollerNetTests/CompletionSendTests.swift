import Glibc
import PollerNet
import Synchronization
import Testing

@testable import Poller

// io_uring completion send (RingSend.swift): a write from the poller thread is a send on the
// ring, and the writer parks until its completion. Every test here writes from a task on the
// poller thread (the only thread that may submit) and runs on each write path: epoll,
// io_uring with completion send turned off (the forced-off switch), and io_uring with it on;
// the last checks that its writes did go through the ring.

/// How a test's poller writes its connections.
enum WritePath: String, CaseIterable, CustomStringConvertible, Sendable {
    case epoll
    case uringSendOff = "io_uring, completion send off"
    case uringSend = "io_uring, completion send"

    var description: String { rawValue }

    var readPath: ReadPath { self == .epoll ? .epoll : .uringCompletion }

    var options: Poller.Options {
        var options = readPath.options
        if self == .uringSendOff { options.send.enabled = false }
        // Every write from the poller thread on the ring, however quiet the poller.
        if self == .uringSend { options.send.minimumBatch = 0 }
        return options
    }
}

/// Sends queued on `poller`'s ring so far (0 on epoll).
func ringSendCount(_ poller: Poller) -> Int {
    (poller.backend as? URingBackend)?.ringSends.load(ordering: .relaxed) ?? 0
}

/// `withReadPath` for a write path, with a connected pair whose buffers are small (so that a
/// write of a few hundred KiB blocks while the peer does not read), closed afterwards. Checks
/// at the end that the io_uring path's writes went through the ring (unless
/// `expectsRingSends` is false: a test whose writes may all fail first) and the others' did not.
func withWritePathPair(
    _ path: WritePath, expectsRingSends: Bool = true, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, TCPPair) async throws -> Void
) async throws {
    try await withReadPath(path.readPath, options: path.options, sourceLocation: sourceLocation) { poller in
        let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
        let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: poller)
        try pair.client.setWriteBuffer(16384)
        try pair.server.setReadBuffer(16384)
        try await using(pair, closedBy: { await $0.close() }) { try await body(poller, $0) }
        let sends = ringSendCount(poller)
        if path != .uringSend {
            #expect(sends == 0, "\(sends) sends on the ring", sourceLocation: sourceLocation)
        } else if expectsRingSends {
            #expect(sends > 0, "no send on the ring", sourceLocation: sourceLocation)
        }
    }
}

/// Cancels asked of sends on `poller`'s ring so far (0 on epoll).
func ringSendCancelCount(_ poller: Poller) -> Int {
    (poller.backend as? URingBackend)?.ringSendCancels.load(ordering: .relaxed) ?? 0
}

/// Expects that on the completion-send path a send was cancelled (the test stopped a send
/// the kernel held, rather than a write that had fallen back to readiness).
func expectSendCancelled(_ path: WritePath, _ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation) {
    let cancels = ringSendCancelCount(poller)
    #expect(path == .uringSend ? cancels > 0 : cancels == 0, "\(cancels) cancels", sourceLocation: sourceLocation)
}

/// Writes `bytes` from a task on `poller`'s thread.
func writeOnPoller(_ connection: Connection, _ bytes: [UInt8], _ poller: Poller) async -> WriteResult {
    await withTaskExecutorPreference(poller.executor) { await connection.writeReportingProgress(bytes) }
}

/// Starts writing `bytes` from a task on `poller`'s thread and returns once the write has
/// parked (the peer reads nothing, so it cannot finish).
func startBlockedWrite(_ connection: Connection, _ bytes: [UInt8], _ poller: Poller) async -> Task<WriteResult, Never> {
    let writer = Task(executorPreference: poller.executor) { await connection.writeReportingProgress(bytes) }
    await sleep(ms: 50)
    return writer
}

/// Reads from `connection` until end of file.
func readToEnd(_ connection: Connection) async throws -> [UInt8] {
    var received: [UInt8] = []
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
    defer { buffer.deallocate() }
    while true {
        let n: Int
        do {
            n = try await connection.read(into: buffer)
        } catch {
            if error == .endOfFile { return received }
            throw error
        }
        received.append(contentsOf: buffer[0..<n])
    }
}

/// Runs `body` with a copy of `bytes` in memory that stays put across suspensions.
func withCopy(of bytes: [UInt8], _ body: (UnsafeRawBufferPointer) async throws -> Void) async throws {
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
    defer { copy.deallocate() }
    copy.copyBytes(from: bytes)
    try await body(UnsafeRawBufferPointer(copy))
}

/// A large message whose every prefix is recognisable.
func patterned(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 11) } }

extension PollerNetTests {
    @Suite("Completion send: io_uring writes from the poller thread through sends on the ring")
    struct CompletionSendTests {
        @Test("The poller says which write path runs in its backend reason", arguments: WritePath.allCases)
        func backendReasonNamesTheWritePath(path: WritePath) async throws {
            try await withReadPath(path.readPath, options: path.options) { poller in
                #expect(poller.sendsThroughCompletions == (path == .uringSend))
                let expected =
                    switch path {
                    case .epoll: "writes by send(2)"
                    case .uringSendOff: "completion send turned off"
                    case .uringSend: "writes from the poller thread through the ring"
                    }
                #expect(poller.backendReason.contains(expected), "\(poller.backendReason)")
            }
        }

        @Test("Two MiB written in one go from the poller thread arrive intact and in order", arguments: WritePath.allCases)
        func bulkWriteArrivesIntact(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                let sent = patterned(2 << 20)
                async let result = writeOnPoller(pair.client, sent, poller)
                var received: [UInt8] = []
                try await readExactly(pair.server, sent.count, into: &received)
                #expect(await result == WriteResult(bytesWritten: sent.count, error: nil))
                #expect(received == sent)
            }
        }

        @Test(
            "A gathered write of 300 buffers from the poller thread arrives intact, resumed across buffer boundaries",
            arguments: WritePath.allCases)
        func gatheredWriteArrivesIntact(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                let sent = patterned(300 * 3001)
                try await withCopy(of: sent) { bytes in
                    let buffers = (0..<300).map { UnsafeRawBufferPointer(rebasing: bytes[($0 * 3001)..<(($0 + 1) * 3001)]) }
                    let reader = Task { try await readToEnd(pair.server) }
                    let result = await withTaskExecutorPreference(poller.executor) {
                        await pair.client.writeReportingProgress(buffers: buffers)
                    }
                    #expect(result == WriteResult(bytesWritten: sent.count, error: nil))
                    try await pair.client.close()
                    #expect(try await reader.value == sent)
                }
            }
        }

        @Test(
            "A write deadline that expires during a gathered write: timeout, and the peer gets exactly the bytes counted",
            arguments: WritePath.allCases)
        func deadlineCancelsTheGatheredSend(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                let sent = patterned(1 << 20)
                try pair.client.setWriteDeadline(in: .milliseconds(100))
                try await withCopy(of: sent) { bytes in
                    let buffers = (0..<16).map { UnsafeRawBufferPointer(rebasing: bytes[($0 << 16)..<(($0 + 1) << 16)]) }
                    let result = await withTaskExecutorPreference(poller.executor) {
                        await pair.client.writeReportingProgress(buffers: buffers)
                    }
                    #expect(result.error == .timeout)
                    expectSendCancelled(path, poller)
                    try await pair.client.close()
                    let received = try await readToEnd(pair.server)
                    #expect(received.count == result.bytesWritten && received == Array(sent[0..<received.count]))
                }
            }
        }

        @Test("Small writes from the poller thread echo back in order", arguments: WritePath.allCases)
        func pingPongFromThePollerThread(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                let echo = Task(executorPreference: poller.executor) { () async throws -> Void in
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 1)
                    defer { buffer.deallocate() }
                    while true {
                        let n = try await pair.server.read(into: buffer)
                        try await pair.server.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    }
                }
                for i in 0..<500 {
                    let message = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 1 + i % 300)
                    #expect(await writeOnPoller(pair.client, message, poller).error == nil)
                    var back: [UInt8] = []
                    try await readExactly(pair.client, message.count, into: &back)
                    #expect(back == message, "round trip \(i)")
                }
                echo.cancel()
                _ = await echo.result
            }
        }

        @Test("With the default threshold, a quiet poller (one ping-pong connection) writes by send(2), not on the ring")
        func quietPollerWritesBySend() async throws {
            try await withReadPath(.uringCompletion) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: poller)
                let echo = Task(executorPreference: poller.executor) { () async throws -> Void in
                    while true { try await pair.server.write(try await pair.server.read(maxBytes: 64)) }
                }
                // One message in flight: each poll finds one completion, the echo's read.
                for i in 0..<200 {
                    try await pair.client.write([UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 64))
                    var back: [UInt8] = []
                    try await readExactly(pair.client, 64, into: &back)
                }
                echo.cancel()
                _ = await echo.result
                // Allow a few: a poll may now and then find a second event (say, write space).
                #expect(ringSendCount(poller) <= 20, "\(ringSendCount(poller)) of 200 echoes went on the ring")
                await pair.close()
            }
        }

        @Test(
            "A write deadline that expires while the send waits for buffer space: timeout, and the peer gets exactly the bytes counted",
            arguments: WritePath.allCases)
        func deadlineCancelsTheSend(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                let sent = patterned(1 << 20)
                try pair.client.setWriteDeadline(in: .milliseconds(100))
                let result = await writeOnPoller(pair.client, sent, poller)
                #expect(result.error == .timeout)
                #expect(result.bytesWritten > 0 && result.bytesWritten < sent.count)
                expectSendCancelled(path, poller)
                try await pair.client.close()
                let received = try await readToEnd(pair.server)
                #expect(received.count == result.bytesWritten, "no byte lost or sent twice")
                #expect(received == Array(sent[0..<received.count]))
            }
        }

        @Test(
            "Write deadlines racing send completions: each write's count is exactly what the peer receives (300 iterations)",
            arguments: WritePath.allCases)
        func deadlineRacingCompletionLosesNothing(path: WritePath) async throws {
            // Under a sanitizer every deadline may pass before its send is queued: the race is
            // what is pinned here, not that it reached the ring (the other tests pin that).
            try await withWritePathPair(path, expectsRingSends: false) { poller, pair in
                let reader = Task { try await readToEnd(pair.server) }
                var expected: [UInt8] = []
                for i in 0..<300 {
                    let message = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 2000 + (i * 97) % 30000)
                    try pair.client.setWriteDeadline(in: .microseconds(i % 40))
                    let result = await writeOnPoller(pair.client, message, poller)
                    #expect(result.error == nil || result.error == .timeout, "\(result)")
                    expected += message[0..<result.bytesWritten]
                }
                try pair.client.setWriteDeadline(nil)
                try await pair.client.close()
                let received = try await reader.value
                #expect(received.count == expected.count && received == expected)
            }
        }

        @Test(
            "Closing a connection while its send waits for buffer space ends the write with closed and its count",
            arguments: WritePath.allCases)
        func closeCancelsTheSend(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                let writer = await startBlockedWrite(pair.client, patterned(1 << 20), poller)
                try await pair.client.close()
                let result = await writer.value
                #expect(result.error == .closed)
                expectSendCancelled(path, poller)
                let received = try await readToEnd(pair.server)
                #expect(received.count == result.bytesWritten)
            }
        }

        @Test(
            "Cancelling a writer's task while its send waits ends the write with cancelled; the connection still writes",
            arguments: WritePath.allCases)
        func taskCancellationCancelsTheSend(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                let first = patterned(1 << 20)
                let writer = await startBlockedWrite(pair.client, first, poller)
                writer.cancel()
                let result = await writer.value
                #expect(result.error == .cancelled)
                expectSendCancelled(path, poller)
                let tail: [UInt8] = [9, 8, 7]
                let reader = Task { try await readToEnd(pair.server) }
                #expect(await writeOnPoller(pair.client, tail, poller).error == nil)
                try await pair.client.close()
                let received = try await reader.value
                #expect(received == Array(first[0..<result.bytesWritten]) + tail)
            }
        }

        // Regression: a wait that does not observe cancellation still returned `.cancelled`
        // when its task was cancelled before it parked, so a write's second wait (epoll, and
        // io_uring with completion send off) ended the write with `.cancelled` part-way.
        @Test(
            "Regression: with task cancellation not observed, cancelling a writer's task does not stop its write: every byte goes out",
            arguments: WritePath.allCases)
        func cancellationNotObservedWhileSending(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                pair.client.observesTaskCancellation = false
                let bytes = patterned(1 << 20)
                let writer = await startBlockedWrite(pair.client, bytes, poller)
                writer.cancel()
                await sleep(ms: 20)
                var received: [UInt8] = []
                try await readExactly(pair.server, bytes.count, into: &received)
                let result = await writer.value
                #expect(result.error == nil && result.bytesWritten == bytes.count)
                #expect(received == bytes)
                #expect(ringSendCancelCount(poller) == 0, "a send was cancelled")
            }
        }

        @Test(
            "A peer that resets while a send waits: the write ends with an error, not a hang",
            arguments: WritePath.allCases)
        func peerResetDuringSend(path: WritePath) async throws {
            try await withWritePathPair(path) { poller, pair in
                let writer = await startBlockedWrite(pair.client, patterned(1 << 20), poller)
                setLingerZero(try pair.server.deadlineDescriptor().fd)
                try await pair.server.close()
                let result = await writer.value
                let error = try #require(result.error)
                #expect(error == .connectionReset || error == .system(call: "send", errno: EPIPE), "\(error)")
            }
        }

        @Test(
            "Shutting the poller down while a send waits resumes the writer", arguments: WritePath.allCases)
        func shutdownResumesTheWriter(path: WritePath) async throws {
            if path != .epoll, let reason = ioUringUnavailableReason { try Test.cancel("io_uring unavailable: \(reason)") }
            let poller = try Poller(backend: path == .epoll ? .epoll : .ioUring, options: path.options)
            let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
            let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: poller)
            try pair.client.setWriteBuffer(16384)
            try pair.server.setReadBuffer(16384)
            let writer = await startBlockedWrite(pair.client, patterned(1 << 20), poller)
            poller.shutdown()
            let result = await writer.value
            #expect(result.error == .closed)
            await pair.close()
        }
    }
}
