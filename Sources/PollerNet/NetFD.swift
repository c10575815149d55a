import Glibc
import Poller
import Synchronization

/// A non-blocking descriptor registered with a ``Poller``: Go's `internal/poll.FD`.
///
/// `NetFD` owns its descriptor from ``init(adopting:poller:isStream:isSocket:)`` until
/// ``close()`` (or, if nobody calls it, until deinit). It serialises operations the way Go's
/// fdMutex does:
/// - reads (``read(into:)``, ``accept()``) take the read lock, writes take the write lock;
///   each is an ``AsyncFIFOLock``, so one reader and one writer run at once and later callers
///   queue in order without spinning;
/// - every operation, locked or not, holds a reference for as long as it runs;
/// - ``close()`` marks the descriptor closing (new operations fail with ``NetError/closed``),
///   unblocks the poller (blocked waits return ``NetError/closed``), fails queued lock
///   waiters, waits until the last reference is dropped, and only then deregisters from the
///   poller and calls `close(2)`, exactly once. So when `close()` returns the number is
///   really closed, and no operation can ever touch a reused descriptor number.
public final class NetFD: Sendable {
    /// The descriptor. Valid while the `NetFD` is open; never use it after ``close()``.
    public let fd: Int32
    /// The registration with the poller.
    public let pollDescriptor: PollDescriptor
    /// Whether a zero-byte read means end of file (stream sockets, pipes).
    public let isStream: Bool
    /// Whether `fd` is a socket: writes then use `send(MSG_NOSIGNAL)`, so a peer that has
    /// gone away yields EPIPE instead of SIGPIPE.
    public let isSocket: Bool

    private struct State {
        /// Set once by the first ``close()``; no new operation starts after it.
        var closing = false
        /// Operations in flight (plus one held by a running close). Never negative.
        var references = 0
        /// The close waiting for `references` to reach zero.
        var closeWaiter: UnsafeContinuation<Void, Never>?
        /// Set after `close(2)`: deinit must not close again.
        var destroyed = false
    }

    private let state = Mutex(State())
    private let readLock = AsyncFIFOLock()
    private let writeLock = AsyncFIFOLock()
    /// Work to do after `close(2)` (a Unix listener unlinks its path).
    private let afterClose: (@Sendable () -> Void)?

    /// Takes ownership of `fd`, makes it non-blocking and registers it with `poller`.
    ///
    /// On failure `fd` has been closed: ownership passes in either case, so callers never
    /// leak it.
    ///
    /// - Parameters:
    ///   - poller: the poller to register with; nil for ``Poller/shared()``.
    ///   - isStream: true for stream sockets and pipes (a zero-byte read is end of file).
    ///   - isSocket: true for sockets (writes use `send` with `MSG_NOSIGNAL`).
    public convenience init(
        adopting fd: Int32, poller: Poller? = nil, isStream: Bool = true, isSocket: Bool = true
    ) throws(NetError) {
        try self.init(adopting: fd, poller: poller, isStream: isStream, isSocket: isSocket, afterClose: nil)
    }

    init(
        adopting fd: Int32, poller: Poller?, isStream: Bool, isSocket: Bool,
        afterClose: (@Sendable () -> Void)?
    ) throws(NetError) {
        let pd: PollDescriptor
        do {
            let p = try poller ?? Poller.shared()
            let flags = fcntl(fd, F_GETFL)
            if flags < 0 || (flags & O_NONBLOCK == 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
                throw NetError.system(call: "fcntl", errno: errno)
            }
            pd = try p.register(fd)
        } catch let error as NetError {
            Glibc.close(fd)
            afterClose?()
            throw error
        } catch let error as PollError {
            Glibc.close(fd)
            afterClose?()
            throw NetError(error)
        } catch {
            // PollerError from Poller.shared().
            Glibc.close(fd)
            afterClose?()
            throw .system(call: "poller start (\(error))", errno: ENOSYS)
        }
        self.fd = fd
        self.pollDescriptor = pd
        self.isStream = isStream
        self.isSocket = isSocket
        self.afterClose = afterClose
    }

    deinit {
        // Nobody can be inside an operation (each holds a strong reference), so a NetFD that
        // was never closed can be torn down synchronously here: no descriptor leaks.
        let destroyed = state.withLockAnnotated { $0.destroyed }
        if !destroyed { destroy() }
    }

    /// Whether ``close()`` has started.
    public var isClosed: Bool { state.withLockAnnotated { $0.closing } }

    // MARK: References (Go's incref/decref)

    /// Adds a reference for an operation; ``NetError/closed`` once closing.
    func incref() throws(NetError) {
        let ok = state.withLockAnnotated { s in
            if s.closing { return false }
            s.references += 1
            return true
        }
        if !ok { throw .closed }
    }

    /// Drops a reference; the last one after close resumes the waiting close.
    func decref() {
        let waiter: UnsafeContinuation<Void, Never>? = state.withLockAnnotated { s in
            precondition(s.references > 0, "NetFD: inconsistent reference count")
            s.references -= 1
            guard s.closing, s.references == 0, let w = s.closeWaiter else { return nil }
            s.closeWaiter = nil
            return w
        }
        waiter?.resume()
    }

    /// Runs `body` holding a reference (for operations that never wait: shutdown, options,
    /// deadlines).
    func withReference<R>(_ body: () throws(NetError) -> R) throws(NetError) -> R {
        try incref()
        defer { decref() }
        return try body()
    }

    // MARK: Direction locks (Go's rwlock/rwunlock)

    /// Takes a reference and the read lock. Throws ``NetError/closed`` or
    /// ``NetError/cancelled`` (holding neither).
    nonisolated(nonsending) func lockRead() async throws(NetError) {
        try incref()
        if let error = await readLock.lock() {
            decref()
            throw error
        }
    }

    func unlockRead() {
        readLock.unlock()
        decref()
    }

    /// Takes a reference and the write lock, as ``lockRead()``.
    nonisolated(nonsending) func lockWrite() async throws(NetError) {
        try incref()
        if let error = await writeLock.lock() {
            decref()
            throw error
        }
    }

    func unlockWrite() {
        writeLock.unlock()
        decref()
    }

    // MARK: Close

    /// Closes the descriptor, Go's `FD.Close`: operations blocked in it return
    /// ``NetError/closed``, then (once every operation in flight has returned) the poller
    /// registration and the descriptor itself are closed, exactly once.
    ///
    /// When this returns, `close(2)` has run: the port or path can be reused at once.
    ///
    /// - Throws: ``NetError/closed`` if close was already called (the first call does the
    ///   work; later calls change nothing). Never throws otherwise.
    public func close() async throws(NetError) {
        let first = state.withLockAnnotated { s in
            if s.closing { return false }
            s.closing = true
            s.references += 1
            return true
        }
        guard first else { throw .closed }
        // Wake operations parked in the poller, then those queued on the locks.
        pollDescriptor.unblock()
        readLock.close()
        writeLock.close()
        // Drop close's own reference and wait for the others. Not cancellable on purpose:
        // a close must finish, and every in-flight operation is already returning.
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let done = state.withLockAnnotated { s in
                s.references -= 1
                if s.references == 0 { return true }
                s.closeWaiter = continuation
                return false
            }
            if done { continuation.resume() }
        }
        destroy()
    }

    /// Deregisters and closes the descriptor (Go's `FD.destroy`). Runs once, with no
    /// operation in flight.
    private func destroy() {
        let already = state.withLockAnnotated { s in
            defer { s.destroyed = true }
            return s.destroyed
        }
        if already { return }
        pollDescriptor.unblock()
        do {
            try pollDescriptor.close()
        } catch {
            // `.closing` means the poller already dropped the slot (it was shut down first);
            // anything else would be a reference-count bug. Either way the fd must close.
            assert(error == .closing, "NetFD: poll descriptor close failed: \(error)")
        }
        // No EINTR retry: on Linux the descriptor is released even when close(2) says EINTR.
        Glibc.close(fd)
        afterClose?()
    }
}
