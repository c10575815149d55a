import Glibc
import Poller

/// The outcome of a write that may have been cut short: Go's `(n int, err error)`.
///
/// `bytesWritten` counts the bytes the kernel accepted before `error` stopped the write; a
/// timeout or close in the middle of a large write reports both.
public struct WriteResult: Sendable, Equatable {
    /// Bytes handed to the kernel.
    public var bytesWritten: Int
    /// Why the write stopped early, or nil when every byte was written.
    public var error: NetError?

    public init(bytesWritten: Int, error: NetError?) {
        self.bytesWritten = bytesWritten
        self.error = error
    }
}

/// The largest chunk handed to one system call (Go caps at 1 GiB for streams too).
let maxChunk = 1 << 30

extension NetFD {
    // MARK: Read

    /// Reads at most `buffer.count` bytes: Go's `FD.Read`.
    ///
    /// Waits for readiness through the poller when nothing is available. An empty buffer
    /// returns 0 without a system call (a zero read would look like end of file), once it
    /// has the read lock: like Go's, it throws ``NetError/closed`` after ``close()``.
    ///
    /// - Returns: the number of bytes read, at least 1 for a non-empty buffer.
    /// - Throws: ``NetError/endOfFile`` when the peer has closed its side (streams);
    ///   ``NetError/timeout`` once the read deadline has passed, even if data is waiting;
    ///   ``NetError/closed`` if the descriptor is or gets closed; ``NetError/cancelled`` if
    ///   the task is cancelled while waiting (nothing was consumed; the descriptor stays
    ///   usable); ``NetError/connectionReset``; ``NetError/system(call:errno:)``.
    nonisolated(nonsending) public func read(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> Int {
        let previousReadDrained = try await fdMutex.lock(.read)
        var drained = false
        defer { fdMutex.unlock(.read, drained: drained) }
        guard buffer.count > 0, let base = buffer.baseAddress else {
            // Nothing read: the queue is as the last read left it.
            drained = previousReadDrained
            return 0
        }
        let count = isStream ? min(buffer.count, maxChunk) : buffer.count
        var ring = ringReceive.load(ordering: .relaxed)
        if ring == RingReceive.allowed {
            ring = pollDescriptor.startReceiving() ? RingReceive.on : RingReceive.off
            ringReceive.store(ring, ordering: .relaxed)
        }
        if ring == RingReceive.on {
            return try await readReceived(into: UnsafeMutableRawBufferPointer(start: base, count: count))
        }
        if previousReadDrained {
            // The last read ended short, so the queue was empty then, and every arrival since
            // has latched readiness (no reset has run since the one before that read): wait
            // for it first and save the read(2) that would only say EAGAIN. The wait checks
            // closing and the deadline as the reset would, and returns at once if a hang-up,
            // an error or urgent data was ever seen, since then the queue may hold a FIN or
            // bytes behind a mark that no new edge will announce.
            try await waitReady(.read, call: "read", afterDrainingRead: true)
        } else {
            try prepare(.read)
        }
        while true {
            // recv on sockets: the same result as read(2) without the VFS layers.
            let n = isSocket ? recv(fd, base, count, 0) : Glibc.read(fd, base, count)
            if n > 0 {
                drained = n < count && shortReadsDrainQueue
                return n
            }
            if n == 0 {
                if isStream { throw .endOfFile }
                return 0
            }
            let e = errno
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: try await waitReady(.read, call: "read")
            default: throw NetError.fromErrno(e, call: "read")
            }
        }
    }

    /// ``read(into:)`` through io_uring completion receive, with the read lock held: take what
    /// the multishot recv queued, else wait for its next completion (deadlines, cancellation
    /// and close end the wait as for readiness; bytes that arrive meanwhile stay queued for
    /// the next read). After the recv ran out of buffers, read the socket directly until it
    /// says EAGAIN, then resume the recv and wait.
    ///
    /// Inlined into `read(into:)`: as a frame of its own it took every parked reader's task
    /// past the task allocator's first slab, ~1 KiB more per idle connection than on epoll
    /// (measured at the 10,000-idle point: 5.6 against 4.6 KiB; inlined, 5.0 and 5.0).
    @inline(__always)
    nonisolated(nonsending) func readReceived(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> Int {
        try prepare(.read)
        while true {
            switch pollDescriptor.takeReceived(into: buffer) {
            case .bytes(let n):
                return n
            case .endOfFile:
                throw .endOfFile
            case .failed(let e):
                throw NetError.fromErrno(e, call: "recv")
            case .empty:
                try await waitReady(.read, call: "read")
            case .starved:
                let n = recv(fd, buffer.baseAddress, buffer.count, 0)
                if n > 0 { return n }
                if n == 0 { throw .endOfFile }
                let e = errno
                switch e {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK:
                    pollDescriptor.resumeReceiving()
                    try await waitReady(.read, call: "read")
                default: throw NetError.fromErrno(e, call: "recv")
                }
            }
        }
    }

    // MARK: Write

    /// Writes every byte of `buffer`, waiting for buffer space as needed: Go's `FD.Write`.
    ///
    /// Never throws: the result says how many bytes went out and, if not all did, why (a
    /// timeout or close mid-way reports the partial count with the error).
    ///
    /// A system call claiming to have taken more bytes than it was given (a kernel or shim
    /// bug) stops the write with `.system(call: "send" or "write", errno: EIO)`; that call's
    /// count is not trusted, so `bytesWritten` counts only the bytes before it and never
    /// exceeds `buffer.count`.
    ///
    /// A vanished peer or reader gives `.system(call: "send" or "write", errno: EPIPE)`,
    /// never SIGPIPE, without touching the process's signal dispositions: sockets are written
    /// with `send(MSG_NOSIGNAL)`; other descriptors (pipes, FIFOs) with write(2) while SIGPIPE
    /// is blocked in the calling thread, and a SIGPIPE that write raised is consumed before
    /// the thread's mask is restored (a SIGPIPE already pending before the write is left
    /// pending). This costs non-socket writes three extra system calls each.
    nonisolated(nonsending) public func write(_ buffer: UnsafeRawBufferPointer) async -> WriteResult {
        await withWriteLock { (written: inout Int) async throws(NetError) in
            try await writeAll(buffer, counting: &written)
        }
    }

    /// Runs `body` with the write lock (and a reference) held and the write direction
    /// prepared: the frame of every write. `body` adds the bytes the kernel took to its
    /// argument as it goes, so the result counts them whether `body` returns or throws.
    @inline(__always)
    nonisolated(nonsending) func withWriteLock(
        _ body: nonisolated(nonsending) (inout Int) async throws(NetError) -> Void
    ) async -> WriteResult {
        var written = 0
        do throws(NetError) {
            _ = try await fdMutex.lock(.write)
        } catch {
            return WriteResult(bytesWritten: 0, error: error)
        }
        defer { fdMutex.unlock(.write) }
        do throws(NetError) {
            try prepare(.write)
            try await body(&written)
            return WriteResult(bytesWritten: written, error: nil)
        } catch {
            return WriteResult(bytesWritten: written, error: error)
        }
    }

    /// Writes every byte of `bytes` (a borrowed span: an array's, a buffer's, a part of
    /// either) without copying it, as ``write(_:)-(UnsafeRawBufferPointer)`` does: same
    /// system calls, same lock, same result.
    ///
    /// Sound across the suspensions: the bytes are reached only inside
    /// `bytes.withUnsafeBytes`, around each system call, never through a pointer kept across
    /// an `await`; between calls only the span itself is held, and it is borrowed for the
    /// whole call, so its storage can neither be freed nor changed until the write returns.
    nonisolated(nonsending) public func write(_ bytes: RawSpan) async -> WriteResult {
        await withWriteLock { (written: inout Int) async throws(NetError) in
            try await writeAll(byteCount: bytes.byteCount, counting: &written) { offset, chunk in
                bytes.withUnsafeBytes { buffer in buffer.baseAddress.map { sendChunk($0 + offset, chunk) } ?? 0 }
            }
        }
    }

    /// Writes every byte of `buffer` with the write lock held, adding what the kernel took to
    /// `written` as it goes (so a caller sees the progress when this throws).
    @inline(__always)
    nonisolated(nonsending) func writeAll(_ buffer: UnsafeRawBufferPointer, counting written: inout Int) async throws(NetError) {
        guard let base = buffer.baseAddress else { return }
        if isSocket && pollDescriptor.sendsThroughRing && ringSend.load(ordering: .relaxed) && !writeCallsAreInjected {
            try await sendThroughRing(buffer, counting: &written)
            return
        }
        try await writeAll(byteCount: buffer.count, counting: &written) { offset, chunk in sendChunk(base + offset, chunk) }
    }

    /// ``writeAll(_:counting:)`` through io_uring completion send, on the poller thread with
    /// the write lock held: each chunk is a send on the ring, submitted with the poller's next
    /// wait, and the writer parks until its completion. The bytes stay the kernel's until
    /// then: a deadline, close or cancellation cancels the send and still waits for its
    /// completion, which counts what was sent. A ring that will not take the send (EBUSY), or
    /// a kernel that says EAGAIN, gets the readiness path for that chunk.
    nonisolated(nonsending) func sendThroughRing(_ buffer: UnsafeRawBufferPointer, counting written: inout Int) async throws(NetError) {
        guard let base = buffer.baseAddress else { return }
        var done = 0
        while done < buffer.count {
            let chunk = min(buffer.count - done, maxChunk)
            let r = await pollDescriptor.sendThroughRing(.bytes(base + done, count: chunk), cancellable: observesTaskCancellation)
            if r > 0 {
                // Impossible from a sane kernel; trusting it would move past the buffer.
                guard Int(r) <= chunk else { throw NetError.system(call: "send", errno: EIO) }
                done += Int(r)
                written += Int(r)
                continue
            }
            // A stream accepting nothing without an error: Go's io.ErrUnexpectedEOF.
            if r == 0 { throw NetError.system(call: "send", errno: EIO) }
            switch -r {
            case ECANCELED:
                try ringSendCancelled()
            case EINTR:
                continue
            case EAGAIN, EBUSY:
                let rest = UnsafeRawBufferPointer(rebasing: buffer[done...])
                try await writeAll(byteCount: rest.count, counting: &written) { offset, chunk in
                    sendChunk(rest.baseAddress! + offset, chunk)
                }
                return
            default:
                throw NetError.fromErrno(-r, call: "send")
            }
        }
    }

    /// A send on the ring ended with -ECANCELED, before sending a byte: throws why, as a
    /// readiness wait would have (closed, timeout, cancelled). When neither holds, a cancel
    /// meant for an earlier send found this one: returns, and the caller sends again.
    func ringSendCancelled() throws(NetError) {
        try prepare(.write)
        if observesTaskCancellation && Task.isCancelled { throw .cancelled }
    }

    /// Whether a test has replaced write system calls (debug builds): the ring path would
    /// bypass the replacement.
    @inline(__always)
    var writeCallsAreInjected: Bool {
        #if DEBUG
        NetTestHooks.active.load(ordering: .relaxed) && NetTestHooks.current.writeCall != nil
        #else
        false
        #endif
    }

    /// The loop of every plain write, with the write lock held: `attempt(offset, chunk)`
    /// makes one system call (``sendChunk(_:_:)``) for the `chunk` bytes at `offset` and
    /// returns its result, synchronously, so that the bytes need to be reachable only while
    /// it runs (see ``write(_:)-(RawSpan)``). Adds what the kernel took to `written` as it
    /// goes.
    @inline(__always)
    nonisolated(nonsending) func writeAll(
        byteCount: Int, counting written: inout Int, attempt: (_ offset: Int, _ chunk: Int) -> Int
    ) async throws(NetError) {
        var done = 0
        while done < byteCount {
            let chunk = min(byteCount - done, maxChunk)
            let n = attempt(done, chunk)
            if n > chunk {
                // Impossible from a sane kernel; trusting it would move past the buffer.
                throw NetError.system(call: isSocket ? "send" : "write", errno: EIO)
            }
            if n > 0 {
                done += n
                written += n
                continue
            }
            if n == 0 {
                // A stream accepting nothing without an error: Go's io.ErrUnexpectedEOF.
                throw NetError.system(call: isSocket ? "send" : "write", errno: EIO)
            }
            let e = errno
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: try await waitReady(.write, call: "write")
            default: throw NetError.fromErrno(e, call: isSocket ? "send" : "write")
            }
        }
    }

    /// One send(2) (sockets, no SIGPIPE) or write(2) (others, SIGPIPE blocked) of `count`
    /// bytes at `base`: its result, and errno set on -1.
    @inline(__always)
    func sendChunk(_ base: UnsafeRawPointer, _ count: Int) -> Int {
        #if DEBUG  // the test seam exists only where tests run: release writes pay nothing
        if NetTestHooks.active.load(ordering: .relaxed), let injected = NetTestHooks.current.writeCall?(fd, count) {
            return injected
        }
        #endif
        return isSocket ? send(fd, base, count, Int32(MSG_NOSIGNAL)) : writeWithoutSIGPIPE(fd, base, count)
    }

    // MARK: Accept

    /// Accepts one pending connection: Go's `FD.Accept`.
    ///
    /// Uses `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`, or, for a listener's descriptor on
    /// io_uring, a multishot accept with the same flags (see ``Listener/accept()``). EINTR and
    /// ECONNABORTED (a client that gave up while queued) are retried silently. Keeps no descriptor headroom: a listener's
    /// ``Listener/accept()`` does (see ``Listener/descriptorHeadroom``).
    ///
    /// - Returns: the new descriptor, owned by the caller.
    /// - Throws: ``NetError/tooManyOpenFiles(errno:)`` for EMFILE/ENFILE (the connection stays
    ///   queued: back off and retry); ``NetError/timeout``, ``NetError/closed``,
    ///   ``NetError/cancelled`` as for reads; ``NetError/system(call:errno:)`` with call
    ///   "accept4".
    nonisolated(nonsending) public func accept() async throws(NetError) -> Int32 {
        try await accept(keepingFree: 0)
    }

    /// ``accept()`` that sheds a connection rather than let it take one of the last
    /// `headroom` descriptors below the soft RLIMIT_NOFILE.
    ///
    /// The check costs one `getrlimit` and no descriptor: the kernel hands out the lowest free
    /// number, so an accepted number in the top `headroom` slots (`fd >= limit - headroom`)
    /// means every slot below it was taken. Such a connection is closed at once (the client
    /// sees end of file, or a reset if it had sent data) and the call throws
    /// `tooManyOpenFiles(errno: EMFILE)`. Invariant: a connection this returns has a number
    /// below `limit - headroom`, so connections accepted here never occupy the top `headroom`
    /// slots, and those stay free for whatever else in the process needs a descriptor
    /// (libdispatch's worker monitor aborts the process when it cannot open
    /// `/proc/<tid>/stat`). Holes below the mark are used first, so nothing is shed while the
    /// lower slots have room, however fragmented.
    nonisolated(nonsending) func accept(keepingFree headroom: Int) async throws(NetError) -> Int32 {
        _ = try await fdMutex.lock(.read)
        defer { fdMutex.unlock(.read) }
        try prepare(.read)
        var ring = ringAccept.load(ordering: .relaxed)
        if ring == RingReceive.allowed {
            ring = pollDescriptor.startAccepting(headroom: headroom) ? RingReceive.on : RingReceive.off
            ringAccept.store(ring, ordering: .relaxed)
        }
        if ring == RingReceive.on { return try await acceptQueued(keepingFree: headroom) }
        while true {
            var injected: Int32? = nil
            #if DEBUG  // the test seam exists only where tests run: release accepts pay nothing
            if NetTestHooks.active.load(ordering: .relaxed) { injected = NetTestHooks.current.acceptCall?(fd) }
            #endif
            let s = injected ?? SocketOptions.acceptNonBlocking(fd)
            if s >= 0 {
                if headroom > 0 && DescriptorLimit.isInHeadroom(s, headroom: headroom) {
                    Glibc.close(s)
                    throw .tooManyOpenFiles(errno: EMFILE)
                }
                return s
            }
            let e = errno
            switch e {
            case EINTR, ECONNABORTED: continue
            case EAGAIN, EWOULDBLOCK: try await waitReady(.read, call: "accept4")
            default: throw Self.acceptFailure(e)
            }
        }
    }

    /// ``accept(keepingFree:)`` through io_uring multishot accept, with the read lock held:
    /// take the oldest connection the kernel queued, else wait for its next completion
    /// (deadlines, cancellation and close end the wait as for readiness; a connection that
    /// arrives meanwhile stays queued for the next accept). Errors as accept4's: ECONNABORTED
    /// never shows (the poller drops it), EMFILE and ENFILE are ``NetError/tooManyOpenFiles(errno:)``.
    nonisolated(nonsending) func acceptQueued(keepingFree headroom: Int) async throws(NetError) -> Int32 {
        while true {
            #if DEBUG  // the test seam stands in for the take as it does for accept4
            if NetTestHooks.active.load(ordering: .relaxed), let s = NetTestHooks.current.acceptCall?(fd) {
                if s >= 0 { return s }
                let e = errno
                if e == EINTR || e == ECONNABORTED { continue }
                throw Self.acceptFailure(e)
            }
            #endif
            switch pollDescriptor.takeAccepted(headroom: headroom) {
            case .descriptor(let s):
                // The poller sheds arrivals in the headroom; the limit may have dropped since.
                if headroom > 0 && DescriptorLimit.isInHeadroom(s, headroom: headroom) {
                    Glibc.close(s)
                    throw .tooManyOpenFiles(errno: EMFILE)
                }
                return s
            case .failed(let e):
                throw Self.acceptFailure(e)
            case .empty:
                try await waitReady(.read, call: "accept4")
            }
        }
    }

    /// The error an accept that failed with `errno` throws (EINTR and ECONNABORTED are retried
    /// before this).
    static func acceptFailure(_ errno: Int32) -> NetError {
        // Out of descriptors altogether (something other than this listener took the
        // headroom, or there is none): nothing can be accepted, so the connection stays
        // queued for a retry once descriptors free up.
        errno == EMFILE || errno == ENFILE ? .tooManyOpenFiles(errno: errno) : .system(call: "accept4", errno: errno)
    }

    // MARK: Poller steps

    /// Go's prepareRead/prepareWrite: fails on close or an expired deadline and forgets stale
    /// readiness. A pending error event (reads) is left to the system call to report.
    func prepare(_ mode: PollMode) throws(NetError) {
        do {
            try pollDescriptor.reset(for: mode)
        } catch .notPollable {
            // The kernel flagged an error: let the read/accept itself return it.
        } catch {
            throw NetError(error)
        }
    }

    /// Waits for `mode`; on an error event reports the socket's pending error (SO_ERROR) so
    /// the caller gets, say, ECONNRESET rather than "not pollable".
    ///
    /// With `afterDrainingRead`, returns at once (without consuming readiness) if the poller
    /// has seen a hang-up, error or urgent data, so that the caller's read reports what is
    /// queued (see `PollDescriptor.wait(for:cancellable:afterDrainingRead:)`).
    @inline(__always)
    nonisolated(nonsending) func waitReady(
        _ mode: PollMode, call: String, afterDrainingRead: Bool = false
    ) async throws(NetError) {
        do {
            try await pollDescriptor.wait(
                for: mode, cancellable: observesTaskCancellation, afterDrainingRead: afterDrainingRead)
        } catch .notPollable {
            if isSocket, let pending = SocketOptions.pendingError(fd), pending != 0 {
                throw NetError.fromErrno(pending, call: call)
            }
            // Nothing pending: the next attempt reports the state; to avoid spinning on a
            // sticky error event, give up with a clear message.
            throw NetError.system(call: call, errno: EIO)
        } catch {
            throw NetError(error)
        }
    }

    // MARK: Deadlines

    /// Sets (or with nil clears) the deadline for `mode`: Go's `SetDeadline`,
    /// `SetReadDeadline`, `SetWriteDeadline`. Applies to operations already blocked.
    /// An instant in the past (or now) makes operations in that direction fail with
    /// ``NetError/timeout`` at once, even when they could proceed.
    ///
    /// - Throws: ``NetError/closed`` after ``close()``.
    public func setDeadline(_ deadline: ContinuousClock.Instant?, for mode: PollMode) throws(NetError) {
        try withReference { () throws(NetError) in
            pollDescriptor.setDeadline(deadline, for: mode)
        }
    }

    /// Sets the deadline for `mode` to `duration` from now (zero or negative: expired now).
    public func setDeadline(in duration: Duration, for mode: PollMode) throws(NetError) {
        try withReference { () throws(NetError) in
            pollDescriptor.setDeadline(in: duration, for: mode)
        }
    }
}
