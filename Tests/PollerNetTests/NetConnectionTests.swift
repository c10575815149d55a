import Glibc
import Poller
import PollerNet
import Synchronization
import Testing

/// An example framing layer over any ``NetConnection``: each `write` sends one frame (a
/// 4-byte big-endian length, then the bytes), and `read(into:)` returns the payload bytes of
/// the frames in order, so it is again a stream; ``readMessage()`` returns one whole frame.
/// Deadlines, half-close, close and the addresses pass through to the base.
///
/// Its witnesses of `read(into:)` and `write(_:)` are plain `async` functions, as in the
/// DocC article's copy: they need not repeat the requirements' `nonisolated(nonsending)`.
///
/// (An example, not a protocol to ship: a read that times out in the middle of a header
/// loses the header bytes read so far.)
final class LengthPrefixedConnection<Base: NetConnection>: NetConnection {
    let base: Base
    /// Payload bytes of the current frame not yet returned by `read(into:)`.
    private let remaining = Mutex<Int>(0)

    init(_ base: Base) { self.base = base }

    /// Reads the next frame's header and returns its length.
    nonisolated(nonsending) private func readHeader() async throws(NetError) -> Int {
        let header = try await readBytes(4)
        return header.reduce(0) { $0 << 8 | Int($1) }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> Int {
        guard buffer.count > 0 else { return try await base.read(into: buffer) }
        var left = remaining.withLockAnnotated { $0 }
        while left == 0 { left = try await readHeader() }
        let n = try await base.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.prefix(left)))
        remaining.withLockAnnotated { $0 = left - n }
        return n
    }

    func write(_ buffer: UnsafeRawBufferPointer) async throws(NetError) {
        guard buffer.count > 0 else { return }
        var frame = withUnsafeBytes(of: UInt32(buffer.count).bigEndian) { [UInt8]($0) }
        frame += buffer
        try await base.write(frame)
    }

    /// One whole frame.
    nonisolated(nonsending) func readMessage() async throws(NetError) -> [UInt8] {
        precondition(remaining.withLockAnnotated { $0 } == 0, "readMessage in the middle of a frame")
        return try await readBytes(readHeader())
    }

    /// Exactly `count` bytes of the base.
    nonisolated(nonsending) private func readBytes(_ count: Int) async throws(NetError) -> [UInt8] {
        try await base.readBytes(count)
    }

    func setReadDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) { try base.setReadDeadline(deadline) }
    func setWriteDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) { try base.setWriteDeadline(deadline) }
    func closeWrite() async throws(NetError) { try await base.closeWrite() }
    func close() async throws(NetError) { try await base.close() }
    var localEndpoint: SocketAddress? { base.localEndpoint }
    var remoteEndpoint: SocketAddress? { base.remoteEndpoint }
}

extension NetConnection {
    /// Exactly `count` bytes, through ``NetConnection/read(exactly:)``.
    nonisolated(nonsending) func readBytes(_ count: Int) async throws(NetError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
        defer { buffer.deallocate() }
        try await read(exactly: buffer)
        return [UInt8](buffer)
    }
}

/// Sends two messages from `writer` to `reader` (wrapped) and reads them back, as whole
/// frames and as a stream.
private func exchangeFrames(from writer: some NetConnection, to reader: some NetConnection) async throws {
    let sending = LengthPrefixedConnection(writer)
    let receiving = LengthPrefixedConnection(reader)
    try await sending.write(Array("hello".utf8))
    try await sending.write(Array("framed world".utf8))
    #expect(try await receiving.readMessage() == Array("hello".utf8))
    // The second frame as a stream, in pieces no longer than 5 bytes.
    var streamed: [UInt8] = []
    while streamed.count < 12 { streamed += try await receiving.read(maxBytes: 5) }
    #expect(streamed == Array("framed world".utf8))
}

/// Deadlines set on a wrapper of `reader` and `writer` expire their base's reads and writes,
/// and clearing them makes the bases work again.
private func expectDeadlinesPassThrough(writer: some NetConnection, reader: some NetConnection) async throws {
    let sending = LengthPrefixedConnection(writer)
    let receiving = LengthPrefixedConnection(reader)
    try receiving.setReadDeadline(in: .milliseconds(30))
    await expectNetError(.timeout) { () async throws(NetError) in try await receiving.readMessage() }
    await expectNetError(.timeout) { () async throws(NetError) in try await reader.read(maxBytes: 1) }
    try sending.setDeadline(.now - .seconds(1))
    await expectNetError(.timeout) { () async throws(NetError) in try await sending.write([1]) }
    await expectNetError(.timeout) { () async throws(NetError) in try await writer.write([1]) }
    try receiving.setReadDeadline(nil)
    try sending.setDeadline(in: .seconds(10))
    try await sending.write([7, 8, 9])
    #expect(try await receiving.readMessage() == [7, 8, 9])
}

/// Writes `bytes` to `fd` and reads them back from `peer`.
private func expectPlainWriteArrives(_ fd: Int32, at peer: Connection, _ bytes: [UInt8]) async throws {
    let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    #expect(written == bytes.count)
    try peer.setReadDeadline(in: .seconds(5))
    #expect(try await peer.readBytes(bytes.count) == bytes)
}

/// Reads `count` bytes from `fd` with a blocking `read(2)`.
private func plainRead(_ fd: Int32, count: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
    return Array(bytes.prefix(max(n, 0)))
}

/// Makes `fd` blocking again (detach leaves it non-blocking).
private func makeBlocking(_ fd: Int32) {
    precondition(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0)
}

/// Expects every operation on `connection` to throw `.closed`.
private func expectAllClosed(_ connection: Connection, sourceLocation: SourceLocation = #_sourceLocation) async {
    await expectNetError(.closed, sourceLocation: sourceLocation) { () async throws(NetError) in try await connection.read(maxBytes: 1) }
    await expectNetError(.closed, sourceLocation: sourceLocation) { () async throws(NetError) in try await connection.write([1]) }
    await expectNetError(.closed, sourceLocation: sourceLocation) { () throws(NetError) in try connection.setDeadline(in: .seconds(1)) }
    await expectNetError(.closed, sourceLocation: sourceLocation) { () throws(NetError) in try connection.closeWrite() }
    await expectNetError(.closed, sourceLocation: sourceLocation) { () async throws(NetError) in try await connection.detach() }
    await expectNetError(.closed, sourceLocation: sourceLocation) { () async throws(NetError) in try await connection.close() }
}

extension PollerNetTests {
    /// The ``NetConnection`` protocol (Connection and RawConnection behind one interface, and
    /// wrappers over it) and ``Connection/detach()``.
    @Suite("NetConnection and detach")
    struct NetConnections {
        // MARK: Wrapping

        @Test("a length-prefixed wrapper over a TCP connection carries frames both ways", arguments: BackendKind.allCases)
        func wrapperOverConnection(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try await exchangeFrames(from: pair.client, to: pair.server)
                try await exchangeFrames(from: pair.server, to: pair.client)
                #expect(LengthPrefixedConnection(pair.client).remoteEndpoint == pair.server.localAddress)
            }
        }

        @Test("a length-prefixed wrapper over the ends of a pipe carries frames", arguments: BackendKind.allCases)
        func wrapperOverPipe(kind: BackendKind) async throws {
            try await withPipe(kind) { _, pipe in
                try await exchangeFrames(from: pipe.writeEnd, to: pipe.readEnd)
                #expect(LengthPrefixedConnection(pipe.readEnd).localEndpoint == nil)
            }
        }

        @Test("deadlines set on a wrapper reach the TCP connection beneath it", arguments: BackendKind.allCases)
        func wrapperDeadlinesOnConnection(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try await expectDeadlinesPassThrough(writer: pair.client, reader: pair.server)
            }
        }

        @Test("deadlines set on a wrapper reach the pipe ends beneath it", arguments: BackendKind.allCases)
        func wrapperDeadlinesOnPipe(kind: BackendKind) async throws {
            try await withPipe(kind) { _, pipe in
                try await expectDeadlinesPassThrough(writer: pipe.writeEnd, reader: pipe.readEnd)
            }
        }

        @Test("closing a wrapper closes its base and wakes a read blocked in it with closed", arguments: BackendKind.allCases)
        func wrapperClose(kind: BackendKind) async throws {
            try await withPipe(kind) { poller, pipe in
                let wrapped = LengthPrefixedConnection(pipe.readEnd)
                let reader = Task { await netError { () async throws(NetError) in try await wrapped.read(maxBytes: 8) } }
                try await waitUntilParked(poller)
                try await wrapped.close()
                #expect(await reader.value == .closed)
                await expectNetError(.closed) { () async throws(NetError) in try await pipe.readEnd.read(maxBytes: 1) }
            }
        }

        @Test("a BufferedReader reads lines from any NetConnection: a pipe end and a wrapper", arguments: BackendKind.allCases)
        func bufferedReaderOverNetConnections(kind: BackendKind) async throws {
            try await withPipe(kind) { _, pipe in
                try await pipe.writeEnd.write(Array("one\ntwo\n".utf8))
                let reader = BufferedReader(pipe.readEnd, capacity: 64)
                #expect(Array(try await reader.readSlice(through: UInt8(ascii: "\n"), maxLength: 64)) == Array("one\n".utf8))
                #expect(Array(try await reader.readSlice(through: UInt8(ascii: "\n"), maxLength: 64)) == Array("two\n".utf8))
                try await LengthPrefixedConnection(pipe.writeEnd).write(Array("three\n".utf8))
                let framed = BufferedReader(LengthPrefixedConnection(pipe.readEnd), capacity: 64)
                #expect(Array(try await framed.readSlice(through: UInt8(ascii: "\n"), maxLength: 64)) == Array("three\n".utf8))
            }
        }

        @Test("closeWrite through the protocol half-closes a TCP connection and is ENOTSOCK on a pipe end", arguments: BackendKind.allCases)
        func closeWriteThroughProtocol(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let client: any NetConnection = pair.client
                try await client.closeWrite()
                try await expectPeerClosed(pair.server, kind: kind)
                try await pair.server.write([42])  // the other direction still works
                #expect(try await client.read(maxBytes: 1) == [42])
            }
            try await withPipe(kind) { _, pipe in
                let end: any NetConnection = pipe.writeEnd
                await expectNetError(.system(call: "shutdown", errno: ENOTSOCK)) { () async throws(NetError) in try await end.closeWrite() }
                try await end.write([1])  // still usable
                #expect(try await pipe.readEnd.read(maxBytes: 1) == [1])
            }
        }

        // MARK: Detach

        @Test(
            "a detached connection's descriptor is read and written with plain system calls, and the connection reports closed",
            arguments: BackendKind.allCases)
        func detachHandsOverDescriptor(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let registered = registeredDescriptors(poller)
                try await pair.server.write(Array("ping".utf8))
                let fd = try await pair.client.detach()
                #expect(registeredDescriptors(poller) == registered - 1)
                #expect(fcntl(fd, F_GETFL) & O_NONBLOCK != 0, "detach leaves the descriptor non-blocking")
                makeBlocking(fd)
                #expect(plainRead(fd, count: 4) == Array("ping".utf8))
                try await expectPlainWriteArrives(fd, at: pair.server, Array("pong".utf8))
                await expectAllClosed(pair.client)
                #expect(fcntl(fd, F_GETFD) >= 0, "the descriptor is the caller's, still open")
                Glibc.close(fd)
                try await expectPeerClosed(pair.server, kind: kind)
            }
        }

        @Test("detach wakes a blocked read with closed and the descriptor stays open and usable", arguments: BackendKind.allCases)
        func detachWakesBlockedRead(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let reader = try await startBlockedRead(pair.client, poller)
                let fd = try await pair.client.detach()
                #expect(await reader.value == .closed)
                try await pair.server.write(Array("after".utf8))
                makeBlocking(fd)
                #expect(plainRead(fd, count: 5) == Array("after".utf8))
                try await expectPlainWriteArrives(fd, at: pair.server, [1, 2, 3])
                Glibc.close(fd)
            }
        }

        @Test(
            "a second detach, a detach after close and a close after detach throw closed; a detached connection dropped closes nothing",
            arguments: BackendKind.allCases)
        func detachTwiceOrAfterClose(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await pair.server.close()
                await expectNetError(.closed) { () async throws(NetError) in try await pair.server.detach() }
                var dialled: Connection? = try await Connection.dial(
                    host: "127.0.0.1", port: pair.listener.localAddress.port!, poller: poller)
                let accepted = try await pair.listener.accept()
                let fd = try await dialled!.detach()
                await expectAllClosed(dialled!)
                dialled = nil  // deinit must not close the caller's descriptor
                #expect(fcntl(fd, F_GETFD) >= 0)
                try await expectPlainWriteArrives(fd, at: accepted, [5])
                Glibc.close(fd)
                try await expectPeerClosed(accepted, kind: kind)
                try await accepted.close()
            }
        }
    }
}
