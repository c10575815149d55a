import CPoller
import Glibc
import PollerNet
import Testing

@testable import Poller

/// The bytes of `text` (ASCII).
func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// `slice` as text, for readable expectations.
func text(_ slice: UnsafeRawBufferPointer) -> String { String(decoding: slice, as: UTF8.self) }

let newline = UInt8(ascii: "\n")

extension PollerNetTests {
    @Suite("Buffered reads")
    struct BufferedReads {
        @Test(
            "readSlice returns a line whose delimiter arrives in a later read, and keeps the rest for the next line",
            arguments: BackendKind.allCases)
        func delimiterSplitAcrossReads(kind: BackendKind) async throws {
            try await withReader(kind, capacity: 64) { poller, pair, reader in
                // "hel" first; the rest once the reader has read it and waits for more.
                let writer = writeInTwoParts(pair.client, bytes("hel"), bytes("lo\nwor"), poller: poller)
                #expect(text(try await reader.readSlice(through: newline, maxLength: 64)) == "hello\n")
                try await writer.value
                #expect(text(reader.buffered) == "wor")
                try await pair.client.write(bytes("ld\n"))
                #expect(text(try await reader.readSlice(through: newline, maxLength: 64)) == "world\n")
                #expect(reader.buffered.isEmpty)
            }
        }

        @Test(
            "readSlice throws delimiterNotFound when maxLength bytes hold no delimiter, and consumes nothing",
            arguments: BackendKind.allCases)
        func maxLengthExceeded(kind: BackendKind) async throws {
            try await withReader(kind, capacity: 32) { _, pair, reader in
                try await pair.client.write(bytes("0123456789abcdefXYZ\n"))
                await expectNetError(.delimiterNotFound(limit: 16)) { () async throws(NetError) in
                    try await reader.readSlice(through: newline, maxLength: 16)
                }
                #expect(reader.buffered.count >= 16)
                #expect(text(try await reader.peek(4)) == "0123")
                // A longer limit finds the line, from the first byte.
                #expect(text(try await reader.readSlice(through: newline, maxLength: 32)) == "0123456789abcdefXYZ\n")
            }
        }

        @Test(
            "readSlice at end of file mid-line throws endOfFile and leaves the partial line buffered",
            arguments: BackendKind.allCases)
        func endOfFileMidLine(kind: BackendKind) async throws {
            try await withReader(kind) { _, pair, reader in
                try await pair.client.write(bytes("one\ntw"))
                try pair.client.closeWrite()
                #expect(text(try await reader.readSlice(through: newline, maxLength: 100)) == "one\n")
                await expectNetError(.endOfFile) { () async throws(NetError) in
                    try await reader.readSlice(through: newline, maxLength: 100)
                }
                #expect(text(reader.buffered) == "tw")
            }
        }

        @Test(
            "buffered bytes are returned after the read deadline passed; a read that needs more times out and keeps them",
            arguments: BackendKind.allCases)
        func deadlinesWhileBuffered(kind: BackendKind) async throws {
            try await withReader(kind) { _, pair, reader in
                try await pair.client.write(bytes("ab\ncd"))
                try await waitUntilBuffered(reader, "ab\ncd")
                try pair.server.setReadDeadline(in: .zero)  // expired
                #expect(text(try await reader.readSlice(through: newline, maxLength: 100)) == "ab\n")
                await expectNetError(.timeout) { () async throws(NetError) in
                    try await reader.readSlice(through: newline, maxLength: 100)
                }
                #expect(text(try await reader.peek(2)) == "cd", "the buffered bytes were lost with the timeout")
                try pair.server.setReadDeadline(nil)
                try await pair.client.write(bytes("e\n"))
                #expect(text(try await reader.readSlice(through: newline, maxLength: 100)) == "cde\n")
            }
        }

        @Test(
            "peek and read(exactly:) wait for frames split across reads; reads into a caller's buffer drain the buffer first",
            arguments: BackendKind.allCases)
        func framesAndCallerBuffers(kind: BackendKind) async throws {
            try await withReader(kind, capacity: 16) { poller, pair, reader in
                let writer = writeInTwoParts(pair.client, bytes("AB"), bytes("CDEFgh"), poller: poller)
                #expect(text(try await reader.peek(2)) == "AB")
                #expect(text(try await reader.read(exactly: 6)) == "ABCDEF")
                try await writer.value
                // "gh" is buffered: a read into a caller's buffer gets it without a system call.
                try pair.server.setReadDeadline(in: .zero)
                let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 40, alignment: 1)
                defer { out.deallocate() }
                let n = try await reader.read(into: UnsafeMutableRawBufferPointer(rebasing: out[0..<8]))
                #expect(Array(out[0..<n]) == bytes("gh"))
                try pair.server.setReadDeadline(nil)
                // A caller's buffer larger than the reader's, filled across reads.
                let large = [UInt8](repeating: 7, count: 40)
                try await pair.client.write(large)
                try await reader.read(exactly: out)
                #expect(Array(out) == large)
            }
        }

        @Test("bad lengths throw EINVAL and leave the reader usable", arguments: BackendKind.allCases)
        func badArguments(kind: BackendKind) async throws {
            try await withReader(kind, capacity: 4) { _, pair, reader in
                #expect(reader.capacity == 16)
                let einval = { (call: String) in NetError.system(call: call, errno: EINVAL) }
                await expectNetError(einval("BufferedReader.readSlice")) { () async throws(NetError) in
                    try await reader.readSlice(through: newline, maxLength: 0)
                }
                await expectNetError(einval("BufferedReader.readSlice")) { () async throws(NetError) in
                    try await reader.readSlice(through: newline, maxLength: 17)
                }
                await expectNetError(einval("BufferedReader.peek")) { () async throws(NetError) in try await reader.peek(-1) }
                await expectNetError(einval("BufferedReader.read")) { () async throws(NetError) in
                    try await reader.read(exactly: 17)
                }
                try await pair.client.write(bytes("ok\n"))
                #expect(text(try await reader.readSlice(through: newline, maxLength: 16)) == "ok\n")
            }
        }

        @Test("buffered line reads do not grow the heap (glibc mallinfo2)", arguments: BackendKind.allCases)
        func noHeapGrowthPerRead(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let lines = 10_000
                let lineLength = 16
                let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: lines * lineLength, alignment: 1)
                defer { payload.deallocate() }
                payload.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "x"))
                for i in 1...lines { payload[i * lineLength - 1] = newline }
                let client = pair.client
                nonisolated(unsafe) let source = UnsafeRawBufferPointer(payload)
                // On the client's poller: no Dispatch worker thread starts (and allocates) meanwhile.
                let writer = Task(executorPreference: client.executor) { try await client.write(source) }
                let reader = BufferedReader(pair.server, capacity: 4096)
                for _ in 0..<100 { _ = try await reader.readSlice(through: newline, maxLength: 64) }  // warm up
                let before = cpoller_heap_bytes_in_use()
                for _ in 100..<lines {
                    let line = try await reader.readSlice(through: newline, maxLength: 64)
                    if line.count != lineLength { Issue.record("a line of \(line.count) bytes") }
                }
                let growth = cpoller_heap_bytes_in_use() - before
                try await writer.value
                // Measured: 0 bytes. A retained allocation per read would be 16 bytes or more
                // each (160 KB); the margin is for what other threads of the process allocate.
                #expect(growth < 64 << 10, "heap grew by \(growth) bytes over \(lines - 100) reads")
            }
        }
    }
}

/// ``withTCPPair(_:sourceLocation:_:)`` with a ``BufferedReader`` over the accepted side.
func withReader(
    _ kind: BackendKind, capacity: Int = 4096, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, TCPPair, BufferedReader) async throws -> Void
) async throws {
    try await withTCPPair(kind, sourceLocation: sourceLocation) { poller, pair in
        try await body(poller, pair, BufferedReader(pair.server, capacity: capacity))
    }
}

/// Writes `first` on `connection`, waits until a reader is parked, then writes `second`: a
/// message that reaches the reader in two reads.
func writeInTwoParts(_ connection: Connection, _ first: [UInt8], _ second: [UInt8], poller: Poller) -> Task<Void, any Error> {
    Task {
        try await connection.write(first)
        try await waitUntilParked(poller)
        try await connection.write(second)
    }
}

/// Waits (up to 5 s) until `reader` has buffered `expected`, peeking one byte at a time.
func waitUntilBuffered(_ reader: BufferedReader, _ expected: String) async throws {
    let limit = ContinuousClock.now + .seconds(5)
    while text(reader.buffered) != expected && ContinuousClock.now < limit {
        _ = try await reader.peek(reader.buffered.count + 1)
    }
    #expect(text(reader.buffered) == expected)
}
