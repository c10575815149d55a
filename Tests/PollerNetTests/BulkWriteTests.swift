import Glibc
import Testing

@testable import Poller
@testable import PollerNet

extension PollerNetTests {
    /// `Connection.write(buffers:)` (writev) and `Connection.sendFile` (sendfile) beyond the Go
    /// tests in GoPortedTests: bad input, the fallbacks, deadlines, a peer that has gone.
    @Suite("BulkWrites")
    struct BulkWrites {
        // MARK: write(buffers:)

        @Test(
            "Writing no buffers, or only empty ones, writes nothing and succeeds",
            arguments: BackendKind.allCases)
        func emptyBuffers(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                #expect(await pair.client.writeReportingProgress(buffers: []) == WriteResult(bytesWritten: 0, error: nil))
                let empty = UnsafeRawBufferPointer(start: nil, count: 0)
                #expect(await pair.client.writeReportingProgress(buffers: [empty, empty]) == WriteResult(bytesWritten: 0, error: nil))
                try await pair.client.write(buffers: [[UInt8](), [9]])
                #expect(try await pair.server.read(maxBytes: 4) == [9])
            }
        }

        @Test(
            "Arrays of byte arrays are written in order through the copying convenience, on a connection and on a pipe",
            arguments: BackendKind.allCases)
        func byteArrayBuffers(kind: BackendKind) async throws {
            try await withPipe(kind) { _, pipe in
                try await pipe.writeEnd.write(buffers: [[1, 2], [], [3], Array(4...9)])
                #expect(try await readRaw(pipe.readEnd, count: 9) == Array(1...9))
                // The protocol's default for the pointer form: one write per buffer.
                try await withPatternBuffers(sizes: [3, 0, 5]) { buffers, expected in
                    try await pipe.writeEnd.write(buffers: buffers)
                    #expect(try await readRaw(pipe.readEnd, count: 8) == expected)
                }
            }
            try await withTCPPair(kind) { _, pair in
                try await pair.client.write(buffers: [[1, 2], [], [3], Array(4...9)])
                #expect(try await readBytes(pair.server, count: 9) == Array(1...9))
            }
        }

        @Test(
            "A gathered write whose system call claims more bytes than it was given stops with EIO, counting only the bytes before",
            arguments: BackendKind.allCases)
        func gatheredWriteOvercount(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let calls = Counter()
                var hooks = NetTestHooks.Hooks()
                let fd = pair.client.netFD.fd
                hooks.writeCall = { target, count in
                    guard target == fd else { return nil }
                    return calls.increment() == 1 ? 3 : count + 1
                }
                try await withPatternBuffers(sizes: [2, 2, 2]) { buffers, _ in
                    let result = await NetTestHooks.with(hooks) { await pair.client.writeReportingProgress(buffers: buffers) }
                    #expect(result == WriteResult(bytesWritten: 3, error: .system(call: "sendmsg", errno: EIO)))
                }
                #expect(calls.value == 2)
            }
        }

        // MARK: sendFile

        @Test(
            "sendFile sends a whole file, larger than one sendfile call, intact",
            arguments: BackendKind.allCases)
        func sendWholeFile(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let contents = patternBytes(count: (4 << 20) + 123)
                try await withTemporaryFile(contents) { (file: Int32) async throws in
                    let reader = Task { try await readBytes(pair.server, count: contents.count) }
                    #expect(try await pair.client.sendFile(file) == contents.count)
                    let received = try await reader.value
                    // Compared outside #expect, which would describe 5 MiB operands.
                    #expect(received.count == contents.count && received == contents)
                    // The file's position moved to its end: nothing more to send.
                    #expect(try await pair.client.sendFile(file) == 0)
                }
            }
        }

        @Test(
            "sendFile with an offset and a count sends that range and leaves the file position alone; past the end it stops early",
            arguments: BackendKind.allCases)
        func sendRange(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let contents = patternBytes(count: 10_000)
                try await withTemporaryFile(contents) { (file: Int32) async throws in
                    #expect(try await pair.client.sendFile(file, offset: 100, count: 50) == 50)
                    #expect(try await readBytes(pair.server, count: 50) == Array(contents[100..<150]))
                    #expect(lseek(file, 0, SEEK_CUR) == 0)
                    #expect(try await pair.client.sendFile(file, offset: 9_990, count: 1000) == 10)
                    #expect(try await readBytes(pair.server, count: 10) == Array(contents[9_990...]))
                    #expect(try await pair.client.sendFile(file, offset: 20_000) == 0)
                    #expect(try await pair.client.sendFile(file, count: 0) == 0)
                }
            }
        }

        @Test(
            "sendFile falls back to reading and writing when the source cannot be sent with sendfile (a pipe)",
            arguments: BackendKind.allCases)
        func sendFileFallback(kind: BackendKind) async throws {
            try await withTCPPair(kind) { (_: Poller, pair: TCPPair) async throws in
                var fds: [Int32] = [-1, -1]
                #expect(pipe(&fds) == 0)
                defer { Glibc.close(fds[0]) }
                let contents = patternBytes(count: 3000)
                #expect(contents.withUnsafeBytes { Glibc.write(fds[1], $0.baseAddress, $0.count) } == 3000)
                Glibc.close(fds[1])
                // sendfile(2) from a pipe says EINVAL: the fallback reads until end of file.
                #expect(try await pair.client.sendFile(fds[0], count: 1 << 20) == 3000)
                #expect(try await readBytes(pair.server, count: 3000) == contents)
            }
        }

        @Test(
            "sendFile refuses a negative offset or count with EINVAL, and a descriptor that is not open for reading with EBADF, sending nothing",
            arguments: BackendKind.allCases)
        func sendFileBadInput(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try await withTemporaryFile([1, 2, 3]) { (file: Int32) async throws in
                    let invalid = NetError.system(call: "sendfile", errno: EINVAL)
                    await expectNetError(invalid) { () async throws(NetError) in try await pair.client.sendFile(file, count: -1) }
                    await expectNetError(invalid) { () async throws(NetError) in try await pair.client.sendFile(file, offset: -1) }
                }
                let writeOnly = open("/dev/null", O_WRONLY | O_CLOEXEC)
                defer { Glibc.close(writeOnly) }
                let badFile = NetError.system(call: "sendfile", errno: EBADF)
                await expectNetError(badFile) { () async throws(NetError) in try await pair.client.sendFile(writeOnly) }
                await expectNetError(badFile) { () async throws(NetError) in try await pair.client.sendFile(-1) }
                // Nothing was sent: the next bytes the server reads are these.
                try await pair.client.write([42])
                #expect(try await pair.server.read(maxBytes: 4) == [42])
                try await pair.client.close()
                await expectNetError(.closed) { () async throws(NetError) in try await pair.client.sendFile(0) }
            }
        }

        @Test(
            "A write deadline passing during sendFile stops it with timeout and reports the bytes sent",
            arguments: BackendKind.allCases)
        func sendFileDeadline(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try await withTemporaryFile([], size: 64 << 20) { (file: Int32) async throws in
                    try pair.client.setWriteDeadline(in: .milliseconds(100))
                    let result = await pair.client.sendFileReportingProgress(file, offset: 0)
                    #expect(result.error == .timeout)
                    #expect(result.bytesWritten > 0 && result.bytesWritten < 64 << 20, "\(result.bytesWritten) bytes")
                }
            }
        }

        @Test(
            "sendFile to a peer that has gone fails with EPIPE or a reset, never SIGPIPE",
            arguments: BackendKind.allCases)
        func sendFileBrokenPipe(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                setLingerZero(pair.server.netFD.fd)
                try await pair.server.close()
                await sleep(ms: 10)
                try await withTemporaryFile([], size: 1 << 20) { (file: Int32) async throws in
                    var error: NetError?
                    for _ in 0..<10 where error == nil {
                        error = await pair.client.sendFileReportingProgress(file, offset: 0).error
                    }
                    #expect(
                        error == .system(call: "sendfile", errno: EPIPE) || error == .connectionReset,
                        "\(String(describing: error))")
                    #expect(!sigpipePending())
                }
            }
        }
    }
}

// MARK: Helpers (also used by GoPortedTests)

/// `count` bytes of a pattern that differs at every position for a long while.
func patternBytes(count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8 &+ $0 >> 16) }
}

/// Runs `body` with buffers of the given sizes cut from one allocation of pattern bytes, and
/// the bytes they hold end to end.
func withPatternBuffers(
    sizes: [Int], _ body: ([UnsafeRawBufferPointer], [UInt8]) async throws -> Void
) async throws {
    let expected = patternBytes(count: sizes.reduce(0, +))
    let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(expected.count, 1), alignment: 1)
    defer { storage.deallocate() }
    storage.copyBytes(from: expected)
    var buffers: [UnsafeRawBufferPointer] = []
    var start = 0
    for size in sizes {
        buffers.append(UnsafeRawBufferPointer(rebasing: storage[start..<(start + size)]))
        start += size
    }
    try await body(buffers, expected)
}

/// Hooks that count the write system calls (`send`, `sendmsg`, `write`, `writev`) on
/// `connection`'s descriptor and let each one through, and the counter.
func countingWriteCalls(on connection: Connection) -> (NetTestHooks.Hooks, Counter) {
    let calls = Counter()
    var hooks = NetTestHooks.Hooks()
    let fd = connection.netFD.fd
    hooks.writeCall = { target, _ in
        if target == fd { _ = calls.increment() }
        return nil
    }
    return (hooks, calls)
}

/// Reads exactly `count` bytes from `connection`.
func readBytes(_ connection: some NetConnection, count: Int) async throws -> [UInt8] {
    var bytes: [UInt8] = []
    while bytes.count < count {
        bytes += try await connection.read(maxBytes: min(1 << 16, count - bytes.count))
    }
    return bytes
}

/// ``readBytes(_:count:)`` for a pipe end.
func readRaw(_ end: RawConnection, count: Int) async throws -> [UInt8] {
    try await readBytes(end, count: count)
}

/// Runs `body` with a descriptor of an unlinked temporary file holding `contents` (or, with
/// `size`, a sparse file of that many zero bytes), positioned at its start; closed after.
func withTemporaryFile(_ contents: [UInt8], size: Int? = nil, _ body: (Int32) async throws -> Void) async throws {
    var template = Array("/tmp/pollernet-sendfile-XXXXXX".utf8CString)
    let fd = mkstemp(&template)
    try #require(fd >= 0)
    unlink(template)
    defer { Glibc.close(fd) }
    if let size {
        try #require(ftruncate(fd, off_t(size)) == 0)
    } else {
        try #require(contents.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == contents.count)
        try #require(lseek(fd, 0, SEEK_SET) == 0)
    }
    try await body(fd)
}
