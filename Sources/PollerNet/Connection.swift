import Glibc
import Poller

#if !os(Linux)
#error("Poller needs Linux: its backends are epoll and io_uring. There is no kqueue backend yet (macOS, the BSDs).")
#endif

/// A stream connection (TCP over IPv4/IPv6, or a Unix domain socket): Go's `net.Conn`.
///
/// Made by ``dial(host:port:timeout:poller:)``, ``dial(unixPath:timeout:poller:)``, or a
/// listener's `accept()`. One reader and one writer may work at once; further readers (or
/// writers) queue in order.
///
/// Cancellation: cancelling the task of a blocked ``read(into:)``, ``write(_:)-(UnsafeRawBufferPointer)``
/// or accept throws ``NetError/cancelled``. Nothing is consumed by a cancelled read, and the
/// connection stays open and usable. A cancelled write may have sent part of its bytes; use
/// ``writeReportingProgress(_:)-(UnsafeRawBufferPointer)`` when the count matters.
///
/// Deadlines: ``DeadlineSetting`` (``setReadDeadline(_:)``, ``setWriteDeadline(_:)``,
/// ``setDeadline(_:)`` and their `in:` forms).
///
/// Closing: ``close()`` wakes blocked operations with ``NetError/closed`` and returns once the
/// descriptor is really closed. A connection dropped without `close()` is closed when its
/// last reference goes away, so descriptors never leak, but the close then is not awaited.
public final class Connection: NetConnection, DeadlineSetting {
    /// The descriptor and its poller registration.
    public let netFD: NetFD

    /// ``DeadlineSetting``: the deadlines live on ``netFD`` (which throws ``NetError/closed``
    /// once the connection is closed).
    public func deadlineDescriptor() throws(NetError) -> NetFD { netFD }

    /// This end's address (for TCP, with the port the kernel chose).
    public let localAddress: SocketAddress
    /// The peer's address (`.unix(path: "")` for an unnamed Unix client).
    public let remoteAddress: SocketAddress

    /// The poller the connection is registered with (for an accepted connection, the one
    /// its listener's group assigned).
    public var poller: Poller { netFD.poller }

    /// The executor of the connection's poller: a task that serves the connection from it
    /// (`Task(executorPreference: connection.executor)`) runs on the thread that sees the
    /// connection's readiness, so a read, its wake-up and the resumed task stay on one thread.
    /// A task elsewhere works as well; each wake-up then hops to it.
    public var executor: PollerExecutor { netFD.poller.executor }

    /// Wraps a connected socket, taking ownership of `fd` (closed on failure).
    convenience init(adopting fd: Int32, poller: Poller?) throws(NetError) {
        // From here on NetFD owns the fd (and on failure has closed it).
        try self.init(connected: NetFD(adopting: fd, poller: poller, isStream: true, isSocket: true))
    }

    /// Wraps a registered, connected socket. On failure the caller still owns `netFD`
    /// (dropping it closes the descriptor).
    init(connected netFD: NetFD) throws(NetError) {
        let fd = netFD.fd
        let local = try SocketOptions.localAddress(fd)
        // A peer that already reset has no name any more; keep going, reads will tell.
        let remote = (try? SocketOptions.remoteAddress(fd)) ?? (local.family == AF_UNIX ? .unix(path: "") : local)
        if local.family != AF_UNIX {
            // Go's default: no Nagle delay on TCP.
            try SocketOptions.set(fd, level: Int32(IPPROTO_TCP), option: TCP_NODELAY, value: 1)
            // Go's default keep-alive (15 s idle, 15 s interval, 9 probes); like Go, a failure
            // here does not fail the dial or accept.
            try? SocketOptions.setKeepAlive(fd, .default)
            netFD.declareShortReadsDrain()
        }
        netFD.allowRingReceive()
        self.netFD = netFD
        self.localAddress = local
        self.remoteAddress = remote
    }

    /// Whether task cancellation interrupts a blocked read or write (default true; see
    /// ``NetFD/observesTaskCancellation``). A server that stops its connections by closing
    /// them, as Go's do, can turn it off and save a cancellation record per wait.
    public var observesTaskCancellation: Bool {
        get { netFD.observesTaskCancellation }
        set { netFD.observesTaskCancellation = newValue }
    }

    // MARK: Reading

    /// Reads at most `buffer.count` bytes into `buffer`, waiting until at least one arrives.
    ///
    /// An empty buffer returns 0 without a system call (after ``close()`` it throws
    /// ``NetError/closed``, as Go does).
    ///
    /// - Throws: ``NetError/endOfFile`` once the peer has closed its side;
    ///   ``NetError/timeout`` once the read deadline has passed (even with data waiting);
    ///   ``NetError/closed``; ``NetError/cancelled``; ``NetError/connectionReset``;
    ///   ``NetError/system(call:errno:)``.
    @inlinable  // one async frame fewer per read in the caller's task
    nonisolated(nonsending) public func read(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> Int {
        try await netFD.read(into: buffer)
    }

    // MARK: Writing

    /// Writes every byte of `buffer`, waiting for buffer space as needed.
    ///
    /// - Throws: ``NetError/timeout`` once the write deadline has passed; ``NetError/closed``;
    ///   ``NetError/cancelled``; ``NetError/connectionReset``; `.system(call: "send", errno:
    ///   EPIPE)` after the peer has gone. Part of the buffer may have been sent before the
    ///   error: ``writeReportingProgress(_:)-(UnsafeRawBufferPointer)`` says how much.
    @inlinable  // one async frame fewer per write in the caller's task
    nonisolated(nonsending) public func write(_ buffer: UnsafeRawBufferPointer) async throws(NetError) {
        if let error = await netFD.write(buffer).error { throw error }
    }

    /// Writes every byte of `buffer`, Go-style: returns how many bytes were written and, if
    /// not all, the error that stopped the write (a timeout or close mid-way reports both).
    nonisolated(nonsending) public func writeReportingProgress(_ buffer: UnsafeRawBufferPointer) async -> WriteResult {
        await netFD.write(buffer)
    }

    /// Writes every byte of `bytes`, Go-style; see ``writeReportingProgress(_:)-(UnsafeRawBufferPointer)``.
    nonisolated(nonsending) public func writeReportingProgress(_ bytes: some Collection<UInt8>) async -> WriteResult {
        // The bytes are copied once into a buffer that stays put across suspensions.
        let count = bytes.count
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
        defer { buffer.deallocate() }
        // Contiguous storage (arrays) is copied with one memcpy; other collections byte by byte.
        let copied: Bool? = bytes.withContiguousStorageIfAvailable { source in
            buffer.copyMemory(from: UnsafeRawBufferPointer(source))
            return true
        }
        if copied == nil { buffer.copyBytes(from: bytes) }
        return await netFD.write(UnsafeRawBufferPointer(buffer))
    }

    /// Writes every byte of `bytes` without copying them: a `RawSpan` over an array, a
    /// buffer, or part of one (`array.span.bytes.extracting(10..<20)`). Same system calls,
    /// errors and partial-write rules as ``write(_:)-(UnsafeRawBufferPointer)``; `Span<UInt8>`
    /// goes through ``NetConnection/write(_:)-(Span<UInt8>)``.
    ///
    /// ```swift
    /// let frame: [UInt8] = header + payload
    /// try await connection.write(frame.span)                          // the whole array, no copy
    /// try await connection.write(frame.span.bytes.extracting(0..<4))  // exactly its first 4 bytes
    /// ```
    ///
    /// Why this is sound although the write may suspend: the span is borrowed for the whole
    /// call (the array cannot be changed or freed until it returns), and the bytes are
    /// reached only inside `withUnsafeBytes`, around each non-blocking `send`; no pointer to
    /// them is kept across an `await`. Waiting for buffer space happens between those calls.
    nonisolated(nonsending) public func write(_ bytes: RawSpan) async throws(NetError) {
        if let error = await netFD.write(bytes).error { throw error }
    }

    /// Writes every byte of `bytes` without copying them, Go-style: how many bytes went out
    /// and, if not all, why; see ``write(_:)-(RawSpan)``.
    nonisolated(nonsending) public func writeReportingProgress(_ bytes: RawSpan) async -> WriteResult {
        await netFD.write(bytes)
    }

    // MARK: Deadlines

    // setDeadline(_:), setReadDeadline(_:), setWriteDeadline(_:) and their `in:` forms come
    // from DeadlineSetting (Deadlines.swift), shared with DatagramSocket.

    // MARK: Half-close and close

    /// Shuts down the reading side (`shutdown(SHUT_RD)`): later reads return
    /// ``NetError/endOfFile``.
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "shutdown", …)`.
    public func closeRead() throws(NetError) {
        try shutdown(Int32(SHUT_RD))
    }

    /// Shuts down the writing side (`shutdown(SHUT_WR)`): the peer reads end of file, and
    /// can still write to us. Later writes here fail with EPIPE.
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "shutdown", …)`.
    public func closeWrite() throws(NetError) {
        try shutdown(Int32(SHUT_WR))
    }

    private func shutdown(_ how: Int32) throws(NetError) {
        try netFD.withReference { () throws(NetError) in
            if Glibc.shutdown(netFD.fd, how) != 0 { throw NetError.fromErrno(errno, call: "shutdown") }
        }
    }

    /// Closes the connection: blocked reads and writes return ``NetError/closed``; returns
    /// once the descriptor is closed.
    ///
    /// - Throws: ``NetError/closed`` when called again (the first call did the work).
    public func close() async throws(NetError) {
        try await netFD.close()
    }

    // MARK: Handing the descriptor over

    /// Takes the descriptor out of the poller and hands it to the caller, open: for another
    /// library that adopts a connected socket (SwiftNIO's `withConnectedSocket`, a TLS
    /// library, a child process).
    ///
    /// Like ``close()`` up to the last step: later operations fail with ``NetError/closed``,
    /// blocked reads and writes are woken with ``NetError/closed`` (nothing they read is lost
    /// from the socket: a woken read consumed nothing), and once every operation in flight
    /// has returned the descriptor is deregistered from its poller. Then, instead of
    /// `close(2)`, the number is returned: from here on the caller owns it and must close it.
    /// The connection stays closed: every operation, ``close()`` and a second `detach()`
    /// included, throws ``NetError/closed``, and dropping it closes nothing.
    ///
    /// The descriptor is still non-blocking (`O_NONBLOCK`), as event-loop libraries expect;
    /// clear the flag with `fcntl` for blocking use. Its socket options (`TCP_NODELAY`) are
    /// as they were.
    ///
    /// The descriptor is a plain `Int32`, not swift-system's `FileDescriptor`: PollerNet's
    /// library products take no package dependencies. Wrap it with `FileDescriptor(rawValue:)`
    /// where swift-system is at hand.
    ///
    /// ```swift
    /// let fd = try await connection.detach()
    /// // e.g. SwiftNIO: try await ClientBootstrap(group: group).withConnectedSocket(fd) { … }
    /// ```
    ///
    /// On a poller that reads through io_uring completion receive
    /// (`Poller.receivesThroughCompletions`), the kernel may already have moved bytes out
    /// of the socket into the poller's buffers for this connection. `detach()` first stops
    /// that (and waits until every byte it took is queued); if bytes are queued and unread,
    /// it throws `.system(call: "detach", errno: EBUSY)` and changes nothing: read them, then
    /// detach again. So no byte is ever left behind.
    ///
    /// - Returns: the descriptor, open and no longer registered.
    /// - Throws: ``NetError/closed`` after ``close()`` or a previous `detach()` (the
    ///   descriptor is then not the caller's); `.system(call: "detach", errno: EBUSY)` while
    ///   received bytes wait to be read (the connection stays open and usable).
    public func detach() async throws(NetError) -> Int32 {
        try await netFD.detach()
    }

    // MARK: NetConnection

    /// ``localAddress``, for ``NetConnection`` (never nil).
    public var localEndpoint: SocketAddress? { localAddress }

    /// ``remoteAddress``, for ``NetConnection`` (never nil).
    public var remoteEndpoint: SocketAddress? { remoteAddress }
}
