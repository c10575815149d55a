import Glibc

/// A byte stream with deadlines, half-close and close: what ``Connection`` and
/// ``RawConnection`` have in common, and what a layer that wraps a stream (framing, a codec,
/// TLS) implements so that it can sit wherever a connection is expected. Go's `net.Conn`.
///
/// Conformers implement the requirements; the conveniences (``read(maxBytes:)``,
/// ``read(exactly:)``, ``write(_:)-(Collection<UInt8>)`` and the relative deadlines
/// ``setReadDeadline(in:)`` and friends) are written once, in an extension, over
/// ``read(into:)``, ``write(_:)-(UnsafeRawBufferPointer)`` and the absolute deadlines.
///
/// ```swift
/// /// Every byte XORed with a key, in both directions: a wrapper over any stream.
/// struct XORConnection<Base: NetConnection>: NetConnection {
///     let base: Base
///     let key: UInt8
///
///     func read(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> Int {
///         let n = try await base.read(into: buffer)
///         for i in 0..<n { buffer[i] ^= key }
///         return n
///     }
///     func write(_ buffer: UnsafeRawBufferPointer) async throws(NetError) {
///         try await base.write(buffer.map { $0 ^ key })
///     }
///     func setReadDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) {
///         try base.setReadDeadline(deadline)
///     }
///     func setWriteDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) {
///         try base.setWriteDeadline(deadline)
///     }
///     func closeWrite() async throws(NetError) { try await base.closeWrite() }
///     func close() async throws(NetError) { try await base.close() }
///     var localEndpoint: SocketAddress? { base.localEndpoint }
///     var remoteEndpoint: SocketAddress? { base.remoteEndpoint }
/// }
///
/// let xored = XORConnection(base: connection, key: 0x5A)
/// try xored.setReadDeadline(in: .seconds(5))     // the base's deadline
/// let bytes = try await xored.read(maxBytes: 4096)
/// ```
///
/// The contract every conformer keeps (``Connection`` and ``RawConnection`` do):
/// - Errors are ``NetError``s, with their meaning: ``NetError/endOfFile`` when the stream has
///   ended, ``NetError/timeout`` when the direction's deadline has passed (the stream stays
///   usable), ``NetError/closed`` after ``close()``, ``NetError/cancelled`` when the task was
///   cancelled while waiting.
/// - One reader and one writer may work at once.
/// - ``close()`` wakes blocked operations with ``NetError/closed``; a second close throws
///   ``NetError/closed``.
public protocol NetConnection: Sendable {
    /// Reads at most `buffer.count` bytes into `buffer`, waiting until at least one arrives.
    ///
    /// - Returns: the number of bytes read: at least 1 for a non-empty buffer; 0 only for an
    ///   empty buffer. (The end of the stream is not a 0 here, as it is in Go: it is
    ///   ``NetError/endOfFile``, so that no caller mistakes it for "nothing yet".)
    /// - Throws: ``NetError/endOfFile`` once the stream has ended; ``NetError/timeout``;
    ///   ``NetError/closed``; ``NetError/cancelled``; others as the conformer documents.
    nonisolated(nonsending) func read(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> Int

    /// Writes every byte of `buffer`, waiting for space as needed.
    ///
    /// - Throws: ``NetError/timeout``; ``NetError/closed``; ``NetError/cancelled``; others as
    ///   the conformer documents. Part of the buffer may have been written.
    nonisolated(nonsending) func write(_ buffer: UnsafeRawBufferPointer) async throws(NetError)

    /// Writes every byte of every buffer, in order (Go's `net.Buffers.WriteTo`). The default
    /// writes the buffers one after another with ``write(_:)-(UnsafeRawBufferPointer)``;
    /// ``Connection`` gathers them into writev-style system calls.
    ///
    /// - Throws: as ``write(_:)-(UnsafeRawBufferPointer)``. Part of the bytes may have been
    ///   written.
    nonisolated(nonsending) func write(buffers: [UnsafeRawBufferPointer]) async throws(NetError)

    /// Writes every byte of `bytes` (a `RawSpan`: a borrowed view of an array's or a
    /// buffer's bytes, or of part of them). ``Connection`` and ``RawConnection`` write straight
    /// from the span; the default copies the bytes once into a buffer and calls
    /// ``write(_:)-(UnsafeRawBufferPointer)``, since a pointer out of a span must not be kept
    /// across that call's suspensions.
    ///
    /// - Throws: as ``write(_:)-(UnsafeRawBufferPointer)``.
    nonisolated(nonsending) func write(_ bytes: RawSpan) async throws(NetError)

    /// Sets (nil clears) the read deadline: reads blocked now or later fail with
    /// ``NetError/timeout`` once it passes (at once for an instant in the past).
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; ``NetError/noDeadline`` where the
    ///   stream cannot take one.
    func setReadDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError)

    /// Sets (nil clears) the write deadline; as ``setReadDeadline(_:)`` for writes.
    func setWriteDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError)

    /// Sets (nil clears) both deadlines: Go's `SetDeadline`. The default sets the read
    /// deadline, then the write deadline.
    func setDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError)

    /// Sets the read deadline to `duration` from now (zero or negative: already expired).
    /// The default uses ``setReadDeadline(_:)``.
    func setReadDeadline(in duration: Duration) throws(NetError)

    /// Sets the write deadline to `duration` from now. The default uses
    /// ``setWriteDeadline(_:)``.
    func setWriteDeadline(in duration: Duration) throws(NetError)

    /// Sets both deadlines to `duration` from now. The default uses ``setDeadline(_:)``.
    func setDeadline(in duration: Duration) throws(NetError)

    /// Shuts down the writing side: the peer reads end of file and can still write back
    /// (Go's `CloseWrite`).
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; a ``NetError/system(call:errno:)``
    ///   where the stream has no half-close (ENOTSOCK for a pipe end).
    func closeWrite() async throws(NetError)

    /// Closes the stream: blocked operations return ``NetError/closed``; returns once it is
    /// closed.
    ///
    /// - Throws: ``NetError/closed`` when called again.
    func close() async throws(NetError)

    /// This end's address, or nil where the stream has none (a pipe, a timerfd). For a
    /// ``Connection``, its ``Connection/localAddress``.
    var localEndpoint: SocketAddress? { get }

    /// The peer's address, or nil where the stream has none. For a ``Connection``, its
    /// ``Connection/remoteAddress``.
    var remoteEndpoint: SocketAddress? { get }
}

extension NetConnection {
    public func setDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) {
        try setReadDeadline(deadline)
        try setWriteDeadline(deadline)
    }

    public func setReadDeadline(in duration: Duration) throws(NetError) {
        try setReadDeadline(.now + duration)
    }

    public func setWriteDeadline(in duration: Duration) throws(NetError) {
        try setWriteDeadline(.now + duration)
    }

    public func setDeadline(in duration: Duration) throws(NetError) {
        try setDeadline(.now + duration)
    }

    /// Reads what is available, up to `maxBytes` bytes (at least one), into a new array.
    ///
    /// Same errors as ``read(into:)``. `maxBytes` ≤ 0 reads nothing and returns an empty
    /// array, but like a read into an empty buffer (and Go's `Read` with an empty slice) it
    /// still takes its turn and throws ``NetError/closed`` after ``close()``.
    @inlinable
    nonisolated(nonsending) public func read(maxBytes: Int) async throws(NetError) -> [UInt8] {
        let count = max(maxBytes, 0)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
        defer { buffer.deallocate() }
        let n = try await read(into: count > 0 ? buffer : UnsafeMutableRawBufferPointer(start: nil, count: 0))
        return [UInt8](buffer.prefix(n))
    }

    /// Reads exactly `buffer.count` bytes (Go's `io.ReadFull`).
    ///
    /// - Throws: ``NetError/endOfFile`` if the stream ends first (the bytes read so far are in
    ///   `buffer`), or any error of ``read(into:)``.
    @inlinable
    nonisolated(nonsending) public func read(exactly buffer: UnsafeMutableRawBufferPointer) async throws(NetError) {
        var filled = 0
        while filled < buffer.count {
            filled += try await read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
        }
    }

    /// Writes the buffers one after another: the default of ``write(buffers:)-([UnsafeRawBufferPointer])``.
    nonisolated(nonsending) public func write(buffers: [UnsafeRawBufferPointer]) async throws(NetError) {
        for buffer in buffers where buffer.count > 0 { try await write(buffer) }
    }

    /// Writes every byte of every collection, in order, as one write (Go's `net.Buffers`
    /// built from slices); same errors as ``write(_:)-(UnsafeRawBufferPointer)``.
    ///
    /// The bytes are copied once into one buffer that stays put across suspensions (arrays
    /// are not guaranteed to keep their storage across an `await`), so this costs a copy;
    /// ``write(buffers:)-([UnsafeRawBufferPointer])`` with buffers the caller keeps valid
    /// does not.
    nonisolated(nonsending) public func write<Buffers: Collection>(buffers: Buffers) async throws(NetError)
    where Buffers.Element: Collection, Buffers.Element.Element == UInt8 {
        let total = buffers.reduce(0) { $0 + $1.count }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: total, alignment: 1)
        defer { buffer.deallocate() }
        var filled = 0
        for part in buffers {
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + part.count)])
            let copied: Bool? = part.withContiguousStorageIfAvailable { source in
                target.copyMemory(from: UnsafeRawBufferPointer(source))
                return true
            }
            if copied == nil { target.copyBytes(from: part) }
            filled += part.count
        }
        try await write(UnsafeRawBufferPointer(buffer))
    }

    /// Copies `bytes` once into a buffer and writes it: the default of
    /// ``write(_:)-(RawSpan)``, for conformers that only write from buffers.
    nonisolated(nonsending) public func write(_ bytes: RawSpan) async throws(NetError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.byteCount, alignment: 1)
        defer { buffer.deallocate() }
        bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
        try await write(UnsafeRawBufferPointer(buffer))
    }

    /// Writes every element of `span`, through ``write(_:)-(RawSpan)`` (so without a copy on
    /// a ``Connection``): `try await connection.write(array.span)`.
    ///
    /// - Throws: as ``write(_:)-(UnsafeRawBufferPointer)``.
    nonisolated(nonsending) public func write(_ span: Span<UInt8>) async throws(NetError) {
        try await write(span.bytes)
    }

    /// Writes every byte of `bytes`; same errors as ``write(_:)-(UnsafeRawBufferPointer)``.
    ///
    /// The bytes are copied once into a buffer that stays put across suspensions (one
    /// `memcpy` for contiguous collections such as arrays).
    @inlinable
    nonisolated(nonsending) public func write(_ bytes: some Collection<UInt8>) async throws(NetError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        defer { buffer.deallocate() }
        let copied: Bool? = bytes.withContiguousStorageIfAvailable { source in
            buffer.copyMemory(from: UnsafeRawBufferPointer(source))
            return true
        }
        if copied == nil { buffer.copyBytes(from: bytes) }
        try await write(UnsafeRawBufferPointer(buffer))
    }
}
