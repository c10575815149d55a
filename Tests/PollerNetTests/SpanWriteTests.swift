import Glibc
import Testing

@testable import Poller
@testable import PollerNet

extension PollerNetTests {
    /// `write(_: RawSpan)` and `write(_: Span<UInt8>)`: written from the caller's storage with
    /// no copy on a `Connection`, through the protocol's copying default elsewhere.
    @Suite("SpanWrites")
    struct SpanWrites {
        @Test(
            "A Span write of 1 MiB to a slow reader waits for buffer space and arrives intact",
            arguments: BackendKind.allCases)
        func bigSpanToSlowReader(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try pair.client.setWriteBuffer(16 << 10)
                try pair.server.setReadBuffer(16 << 10)
                let payload = patternBytes(count: 1 << 20)
                let client = pair.client
                let (hooks, calls) = countingWriteCalls(on: client)
                let writer = Task {
                    await NetTestHooks.with(hooks) {
                        await netError { () async throws(NetError) in try await client.write(payload.span) }
                    }
                }
                try await waitUntilParked(poller)  // the span write is suspended, waiting for space
                let received = try await readSlowly(pair.server, count: payload.count)
                #expect(await writer.value == nil && calls.value > 1, "the write resumed after waiting: \(calls.value) sends")
                #expect(received.count == payload.count && received == payload)  // not in #expect's operands: 1 MiB
            }
        }

        @Test(
            "A RawSpan over part of an array writes exactly that part, and an empty span writes nothing",
            arguments: BackendKind.allCases)
        func partialRawSpan(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let bytes = Array(UInt8(0)..<100)
                try await pair.client.write(bytes.span.bytes.extracting(10..<20))
                try await pair.client.write(bytes.span.extracting(90..<92))
                try await pair.client.write(bytes.span.extracting(0..<0))
                #expect(await pair.client.writeReportingProgress(RawSpan()) == WriteResult(bytesWritten: 0, error: nil))
                try await pair.client.write([255])
                #expect(try await readBytes(pair.server, count: 13) == Array(10..<20) + [90, 91, 255])
            }
        }

        @Test(
            "A Span write blocked on a full buffer fails with timeout at the write deadline, reporting what went out",
            arguments: BackendKind.allCases)
        func spanWriteDeadline(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let payload = [UInt8](repeating: 7, count: 64 << 20)  // more than any socket buffer holds
                try pair.client.setWriteDeadline(in: .milliseconds(100))
                let start = ContinuousClock.now
                let result = await pair.client.writeReportingProgress(payload.span.bytes)
                #expect(result.error == .timeout)
                #expect(result.bytesWritten > 0 && result.bytesWritten < payload.count)
                #expect(ContinuousClock.now - start >= .milliseconds(90))
                // The deadline also fails a Span write at once, before any byte, while it stands.
                await expectNetError(.timeout) { () async throws(NetError) in try await pair.client.write(payload.span) }
            }
        }

        @Test(
            "A Span write on a pipe end, watched (waiting for space) or unwatched, arrives intact, also through any NetConnection",
            arguments: BackendKind.allCases)
        func spanToPipe(kind: BackendKind) async throws {
            try await withPipe(kind) { _, pipe in
                let payload = patternBytes(count: 200_000)  // more than a pipe holds: the write waits
                let end: any NetConnection = pipe.writeEnd  // RawConnection's own span write, not the default
                let writer = Task { await netError { () async throws(NetError) in try await end.write(payload.span) } }
                let received = try await readRaw(pipe.readEnd, count: payload.count)
                #expect(await writer.value == nil)
                #expect(received == payload)
            }
            try await withNetPoller(kind) { poller in
                let (r, w) = rawPipe()
                defer { Glibc.close(r) }
                let writer = try RawConnection(adopting: w, poller: poller, usePoller: false)
                let bytes = Array(UInt8(0)..<200)
                try await writer.write(bytes.span.bytes.extracting(100..<200))  // a blocking write(2)
                var read = [UInt8](repeating: 0, count: 100)
                #expect(Glibc.read(r, &read, 100) == 100 && read == Array(100..<200))
                try await writer.close()
            }
        }

        @Test(
            "A Span write through a NetConnection wrapper takes the protocol's copying default and reaches the wrapper's write",
            arguments: BackendKind.allCases)
        func spanThroughWrapper(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let (sending, receiving) = (LengthPrefixedConnection(pair.client), LengthPrefixedConnection(pair.server))
                let message = Array("one frame".utf8)
                try await sending.write(message.span)  // one frame: the default made one write(UnsafeRawBufferPointer)
                #expect(try await receiving.readMessage() == message)
            }
        }
    }
}

/// Reads exactly `count` bytes from `connection` 4 KiB at a time, pausing a millisecond
/// every 64 KiB: a reader slower than the writer.
private func readSlowly(_ connection: Connection, count: Int) async throws -> [UInt8] {
    var received: [UInt8] = []
    while received.count < count {
        received += try await connection.read(maxBytes: min(4096, count - received.count))
        if received.count % (64 << 10) == 0 { await sleep(ms: 1) }
    }
    return received
}
