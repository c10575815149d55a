import CPoller
import Glibc
import Poller
import Synchronization

/// Any descriptor a service owns (a pipe end, a timerfd, a signalfd, an inotify or eventfd
/// descriptor, a terminal), waited on through the poller: Go's `syscall.RawConn` (what
/// `SyscallConn()` returns) together with the `os.File` that owns the descriptor.
///
/// ``read(_:)`` and ``write(_:)-((Int32)->Bool)`` hand the descriptor to a closure in Go's
/// style: the closure makes its system call and returns true when it is done, or false when
/// the call said EAGAIN; the connection then waits for readiness through the poller and calls
/// it again. ``read(into:)`` and ``write(_:)-(UnsafeRawBufferPointer)`` do the usual loops
/// for you.
///
/// ```swift
/// // timerFD: timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC), armed with
/// // timerfd_settime (from a C target: Swift's Glibc module does not show them).
/// let timer = try RawConnection(adopting: timerFD, poller: poller)
/// var expirations: UInt64 = 0
/// try await timer.read { fd in
///     read(fd, &expirations, 8) == 8 || errno != EAGAIN   // false: wait, then call again
/// }
/// try await timer.close()
/// ```
///
/// Operations follow Go's fdMutex discipline, like ``NetFD``'s: reads (``read(_:)``,
/// ``read(into:)``) serialise with reads and writes with writes, in arrival order;
/// ``control(_:)`` runs beside them. ``close()`` fails later operations with
/// ``NetError/closed``, wakes operations waiting in the poller with ``NetError/closed``,
/// waits until every operation has returned and only then closes the descriptor, exactly
/// once. A `RawConnection` dropped without `close()` closes its descriptor in deinit.
///
/// Descriptors the poller cannot watch (regular files, directories, other files epoll refuses
/// with EPERM), and any descriptor adopted with `usePoller: false`, are *unwatched*: their
/// operations are plain system calls on the calling thread, blocking if the descriptor blocks
/// (so never run one that may block for long, such as a read of a blocking pipe or terminal,
/// from a task on a poller's executor: it would stall every descriptor of that poller), and
/// setting a deadline on them throws ``NetError/noDeadline`` (Go's `os.ErrNoDeadline`). A
/// closure that returns false on such a descriptor ends the operation with
/// `.system(call: "read" or "write", errno: EAGAIN)`: there is nothing to wait on (Go's
/// answer for a non-blocking descriptor outside the poller, issue 20915). Closing one does not
/// wait for an operation blocked in its system call (nothing can interrupt it, and Go's
/// `FD.Close` does not wait either): the descriptor is closed when that operation returns.
public final class RawConnection: NetConnection, DeadlineSetting {
    /// A watched descriptor (a ``NetFD``), or one the poller does not watch.
    private enum Core: Sendable {
        case polled(NetFD)
        case unwatched(UnwatchedDescriptor)
    }

    private let core: Core

    /// Takes ownership of `fd` and registers it with the poller, or leaves it unwatched.
    ///
    /// With `usePoller` (the default) the descriptor is registered and made non-blocking; if
    /// the poller refuses it as a file that cannot be polled (EPERM: a regular file, a
    /// directory, `/dev/null`), it is adopted unwatched, its mode unchanged. With `usePoller:
    /// false` it is never registered and its mode is left as it is: for a terminal or a pipe
    /// shared with other processes, which share its O_NONBLOCK flag too.
    ///
    /// - Parameters:
    ///   - fd: an open descriptor; from here on the connection owns it. On failure it has
    ///     been closed, except when it was not open at all, or belongs to someone else (the
    ///     poller's own descriptors, one already registered with the poller): those are left
    ///     alone.
    ///   - poller: the poller to register with; nil for `Poller.shared()`.
    ///   - usePoller: false to leave the descriptor unwatched (blocking I/O, no deadlines).
    /// - Throws: `.system(call: "fcntl", errno: EBADF)` for a descriptor that is not open;
    ///   `.system(call: "poll register", errno:)` when the poller refuses it otherwise (EINVAL
    ///   for the poller's own descriptors, EEXIST for one already registered there, EBADF after
    ///   the poller's shutdown).
    public init(adopting fd: Int32, poller: Poller? = nil, usePoller: Bool = true) throws(NetError) {
        if fcntl(fd, F_GETFL) < 0 { throw .system(call: "fcntl", errno: errno) }
        guard usePoller else {
            core = .unwatched(UnwatchedDescriptor(fd))
            return
        }
        let pd: PollDescriptor
        do {
            pd = try (poller ?? Poller.shared()).register(fd)
        } catch PollError.registrationFailed(let e) where e == EPERM {
            // Not pollable: Go's os.newFile keeps such files in blocking mode, outside the poller.
            core = .unwatched(UnwatchedDescriptor(fd))
            return
        } catch let error as PollError {
            // Not ours to close: the poller's own descriptor, or one another owner registered.
            if error != .registrationFailed(errno: EINVAL) && error != .registrationFailed(errno: EEXIST) {
                Glibc.close(fd)
            }
            throw NetError(error)
        } catch {
            // PollerError from Poller.shared().
            Glibc.close(fd)
            throw .system(call: "poller start (\(error))", errno: ENOSYS)
        }
        let set = cpoller_set_nonblocking(fd)
        if set != 0 {
            pd.unblock()
            try? pd.close()
            Glibc.close(fd)
            throw .system(call: "fcntl", errno: -set)
        }
        core = .polled(NetFD(registered: pd, isStream: true, isSocket: false))
    }

    /// Whether the poller watches the descriptor: false for files it cannot poll and for
    /// descriptors adopted with `usePoller: false` (blocking I/O, no deadlines).
    public var isPollable: Bool {
        if case .polled = core { return true }
        return false
    }

    /// The descriptor and its reference count.
    private var parts: (fd: Int32, fdMutex: FDMutex) {
        switch core {
        case .polled(let netFD): (netFD.fd, netFD.fdMutex)
        case .unwatched(let descriptor): (descriptor.fd, descriptor.fdMutex)
        }
    }

    /// Whether ``close()`` has started.
    public var isClosed: Bool { parts.fdMutex.isClosing }

    // MARK: Go's RawConn

    /// Runs `body` with the descriptor, holding a reference so that the descriptor cannot be
    /// closed meanwhile: Go's `RawConn.Control`. Takes no direction lock: it runs beside
    /// blocked reads and writes. For options (`ioctl`, `fcntl`, `timerfd_settime`), not for
    /// I/O that may block.
    ///
    /// - Returns: what `body` returns.
    /// - Throws: ``NetError/closed`` after ``close()`` (`body` is not called).
    public func control<R>(_ body: (Int32) -> R) throws(NetError) -> R {
        let (fd, fdMutex) = parts
        return try fdMutex.withReference { () throws(NetError) in body(fd) }
    }

    /// Reads through `body`: Go's `RawConn.Read`.
    ///
    /// Takes the read lock, then calls `body` with the descriptor until it returns true.
    /// `body` makes its system calls and returns true when done (its own errors are its
    /// business: keep them in a variable outside), or false when the descriptor said EAGAIN:
    /// the call then waits until the poller reports the descriptor readable and calls `body`
    /// again. Return false only after EAGAIN: readiness is edge-triggered, so a descriptor
    /// that still has data does not wake the wait again.
    ///
    /// - Throws: ``NetError/timeout`` when the read deadline passes (at once if it already
    ///   has, before `body` runs); ``NetError/closed``; ``NetError/cancelled`` if the task is
    ///   cancelled while waiting; `.system(call: "read", errno: EAGAIN)` when `body` returns
    ///   false on an unwatched descriptor (see ``isPollable``).
    nonisolated(nonsending) public func read(_ body: (Int32) -> Bool) async throws(NetError) {
        try await raw(.read, body)
    }

    /// Writes through `body`: Go's `RawConn.Write`. Like ``read(_:)``, with the write lock,
    /// the write deadline and writability; EAGAIN on an unwatched descriptor is reported with
    /// call "write".
    nonisolated(nonsending) public func write(_ body: (Int32) -> Bool) async throws(NetError) {
        try await raw(.write, body)
    }

    nonisolated(nonsending) private func raw(_ direction: FDMutex.Direction, _ body: (Int32) -> Bool) async throws(NetError) {
        switch core {
        case .polled(let netFD): try await netFD.rawIO(direction, body)
        case .unwatched(let descriptor): try await descriptor.rawIO(direction, body)
        }
    }

    // MARK: Typed reads and writes

    /// Reads at most `buffer.count` bytes into `buffer` (one `read(2)` that returns data).
    ///
    /// On a watched descriptor it waits through the poller until something arrives; on an
    /// unwatched one it is one blocking `read(2)`. An empty buffer returns 0 without a system
    /// call. For a timerfd or an eventfd pass exactly 8 bytes.
    ///
    /// - Returns: the number of bytes read, at least 1 for a non-empty buffer.
    /// - Throws: ``NetError/endOfFile`` when `read(2)` returns 0 (every writer of a pipe has
    ///   closed; the end of a regular file); ``NetError/timeout``; ``NetError/closed``;
    ///   ``NetError/cancelled``; ``NetError/system(call:errno:)`` with call "read" (EAGAIN
    ///   from a non-blocking unwatched descriptor with nothing to read, EINVAL for a buffer
    ///   the file type refuses).
    nonisolated(nonsending) public func read(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> Int {
        switch core {
        case .polled(let netFD): try await netFD.read(into: buffer)
        case .unwatched(let descriptor): try await descriptor.read(into: buffer)
        }
    }

    /// Writes every byte of `buffer`, waiting for space as needed, and says how far it got:
    /// Go's `(n, err)`. A pipe whose every reader has closed gives
    /// `.system(call: "write", errno: EPIPE)`, never SIGPIPE (see ``NetFD/write(_:)-(UnsafeRawBufferPointer)``).
    nonisolated(nonsending) public func writeReportingProgress(_ buffer: UnsafeRawBufferPointer) async -> WriteResult {
        switch core {
        case .polled(let netFD): await netFD.write(buffer)
        case .unwatched(let descriptor): await descriptor.write(buffer)
        }
    }

    /// Writes every byte of `buffer`, waiting for space as needed.
    ///
    /// - Throws: ``NetError/timeout`` once the write deadline has passed; ``NetError/closed``;
    ///   ``NetError/cancelled``; `.system(call: "write", errno: EPIPE)` when the pipe's
    ///   readers have gone (never SIGPIPE); EAGAIN from a non-blocking unwatched descriptor
    ///   that is full. Part of the buffer may have been written:
    ///   ``writeReportingProgress(_:)-(UnsafeRawBufferPointer)`` says how much.
    nonisolated(nonsending) public func write(_ buffer: UnsafeRawBufferPointer) async throws(NetError) {
        if let error = await writeReportingProgress(buffer).error { throw error }
    }

    /// Writes every byte of `bytes` (a `RawSpan` over an array, a buffer or part of one)
    /// without copying them, and says how far it got; see
    /// ``Connection/write(_:)-(RawSpan)`` for why this is sound across suspensions. On an
    /// unwatched descriptor the only suspension is the write lock, taken before the bytes
    /// are reached.
    nonisolated(nonsending) public func writeReportingProgress(_ bytes: RawSpan) async -> WriteResult {
        switch core {
        case .polled(let netFD): await netFD.write(bytes)
        case .unwatched(let descriptor): await descriptor.write(bytes)
        }
    }

    /// Writes every byte of `bytes` without copying them; same errors as
    /// ``write(_:)-(UnsafeRawBufferPointer)``; ``writeReportingProgress(_:)-(RawSpan)`` says
    /// how much went out.
    nonisolated(nonsending) public func write(_ bytes: RawSpan) async throws(NetError) {
        if let error = await writeReportingProgress(bytes).error { throw error }
    }

    // MARK: Deadlines (the setters come from DeadlineSetting, Deadlines.swift)

    /// The watched descriptor, or the error a deadline gets: ``NetError/closed`` once closed
    /// (checked first, as Go's incref is), else ``NetError/noDeadline``.
    public func deadlineDescriptor() throws(NetError) -> NetFD {
        switch core {
        case .polled(let netFD):
            return netFD
        case .unwatched(let descriptor):
            try descriptor.fdMutex.incref()
            descriptor.fdMutex.decref()
            throw .noDeadline
        }
    }

    // MARK: Half-close and close

    /// Shuts down the writing side of a socket (`shutdown(SHUT_WR)`), for ``NetConnection``:
    /// the peer reads end of file.
    ///
    /// - Throws: `.system(call: "shutdown", errno: ENOTSOCK)` for a descriptor that is not a
    ///   socket (a pipe end: close the write end instead); ``NetError/closed`` after
    ///   ``close()``.
    public func closeWrite() throws(NetError) {
        let result = try control { fd in Glibc.shutdown(fd, Int32(SHUT_WR)) == 0 ? 0 : errno }
        if result != 0 { throw NetError.fromErrno(result, call: "shutdown") }
    }

    /// Nil: a descriptor adopted raw has no address here (for ``NetConnection``).
    public var localEndpoint: SocketAddress? { nil }

    /// Nil: a descriptor adopted raw has no address here (for ``NetConnection``).
    public var remoteEndpoint: SocketAddress? { nil }

    /// Closes the descriptor: Go's `FD.Close`. Later operations fail with
    /// ``NetError/closed``; operations waiting in the poller or for a direction lock return
    /// ``NetError/closed``; once every operation in flight has returned, the registration and
    /// the descriptor are closed, exactly once, and this returns.
    ///
    /// On an unwatched descriptor an operation blocked in its system call cannot be woken:
    /// this then returns at once and the descriptor is closed when that operation returns.
    ///
    /// - Throws: ``NetError/closed`` if close was already called.
    public func close() async throws(NetError) {
        switch core {
        case .polled(let netFD): try await netFD.close()
        case .unwatched(let descriptor): try await descriptor.close()
        }
    }
}

extension NetFD {
    /// Go's `FD.RawRead` / `FD.RawWrite`: calls `body` under the direction lock until it
    /// returns true, waiting for readiness each time it returns false.
    nonisolated(nonsending) func rawIO(_ direction: FDMutex.Direction, _ body: (Int32) -> Bool) async throws(NetError) {
        _ = try await fdMutex.lock(direction)
        defer { fdMutex.unlock(direction) }
        let mode: PollMode = direction == .read ? .read : .write
        try prepare(mode)
        while !body(fd) {
            try await waitReady(mode, call: direction == .read ? "read" : "write")
        }
    }
}

/// A descriptor outside the poller: Go's `FD` with `isBlocking` set. Every operation is its
/// system call on the calling thread, under the same fdMutex discipline as ``NetFD``.
final class UnwatchedDescriptor: Sendable {
    let fd: Int32
    let fdMutex = FDMutex()
    /// Set by the first ``destroy()``: the descriptor is closed exactly once.
    private let destroyed = Atomic<Bool>(false)

    init(_ fd: Int32) { self.fd = fd }

    deinit { destroy() }

    /// Calls `body` once under the direction lock; false (EAGAIN) has nothing to wait on.
    nonisolated(nonsending) func rawIO(_ direction: FDMutex.Direction, _ body: (Int32) -> Bool) async throws(NetError) {
        _ = try await fdMutex.lock(direction)
        defer { fdMutex.unlock(direction) }
        if !body(fd) { throw .system(call: direction == .read ? "read" : "write", errno: EAGAIN) }
    }

    nonisolated(nonsending) func read(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> Int {
        _ = try await fdMutex.lock(.read)
        defer { fdMutex.unlock(.read) }
        guard buffer.count > 0, let base = buffer.baseAddress else { return 0 }
        while true {
            let n = Glibc.read(fd, base, buffer.count)
            if n > 0 { return n }
            if n == 0 { throw .endOfFile }
            let e = errno
            if e != EINTR { throw NetError.fromErrno(e, call: "read") }
        }
    }

    nonisolated(nonsending) func write(_ buffer: UnsafeRawBufferPointer) async -> WriteResult {
        await withWriteLock { (written: inout Int) throws(NetError) in try writeBlocking(buffer, counting: &written) }
    }

    /// ``write(_:)-(UnsafeRawBufferPointer)`` of a span's bytes: the only suspension is the
    /// lock, taken before the bytes are reached; the system calls run inside
    /// `withUnsafeBytes`.
    nonisolated(nonsending) func write(_ bytes: RawSpan) async -> WriteResult {
        await withWriteLock { (written: inout Int) throws(NetError) in
            try bytes.withUnsafeBytes { (buffer) throws(NetError) in try writeBlocking(buffer, counting: &written) }
        }
    }

    /// Runs `body` (no suspension) with the write lock held; the bytes it counts in its
    /// argument are reported whether it returns or throws.
    nonisolated(nonsending) private func withWriteLock(_ body: (inout Int) throws(NetError) -> Void) async -> WriteResult {
        var written = 0
        do throws(NetError) {
            _ = try await fdMutex.lock(.write)
            defer { fdMutex.unlock(.write) }
            try body(&written)
        } catch {
            return WriteResult(bytesWritten: written, error: error)
        }
        return WriteResult(bytesWritten: written, error: nil)
    }

    /// Blocking write(2)s of all of `buffer` (SIGPIPE blocked), counting into `written`.
    private func writeBlocking(_ buffer: UnsafeRawBufferPointer, counting written: inout Int) throws(NetError) {
        while written < buffer.count, let base = buffer.baseAddress {
            let left = buffer.count - written
            let n = writeWithoutSIGPIPE(fd, base + written, left)
            let e = errno
            if n > 0 && n <= left {
                written += n
            } else if n < 0 && e != EINTR {
                throw NetError.fromErrno(e, call: "write")
            } else if n >= 0 {
                // A file that takes nothing, or a count past the buffer: not to be trusted.
                throw NetError.system(call: "write", errno: EIO)
            }
        }
    }

    /// Go's `FD.Close` for a blocking descriptor: with nothing in flight, closes now;
    /// otherwise an operation may be blocked in a system call that nothing can interrupt, so
    /// the last operation to return closes the descriptor (through a task that waits for it).
    func close() async throws(NetError) {
        guard fdMutex.beginClose() else { throw .closed }
        // Once closing, no reference is added: one reference (close's own) means none in flight.
        if fdMutex.snapshot.references == 1 {
            await fdMutex.awaitLastReference()
            destroy()
        } else {
            Task { [self] in
                await fdMutex.awaitLastReference()
                destroy()
            }
        }
    }

    private func destroy() {
        if destroyed.exchange(true, ordering: .acquiringAndReleasing) { return }
        Glibc.close(fd)
    }
}
