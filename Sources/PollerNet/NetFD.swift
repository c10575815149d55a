import Glibc
import Poller
import Synchronization

/// A non-blocking descriptor registered with a `Poller`: Go's `internal/poll.FD`.
///
/// `NetFD` owns its descriptor from ``init(adopting:poller:isStream:isSocket:)`` until
/// ``close()`` (or, if nobody calls it, until deinit). It serialises operations the way Go's
/// fdMutex does:
/// - reads (``read(into:)``, ``accept()``) take the read lock, writes take the write lock
///   (an `FDMutex`), so one reader and one writer run at once and later callers queue in
///   order without spinning;
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
    /// The poller the descriptor is registered with.
    public var poller: Poller { pollDescriptor.poller }
    /// Whether a zero-byte read means end of file (stream sockets, pipes).
    public let isStream: Bool
    /// Whether `fd` is a socket: writes then use `send(MSG_NOSIGNAL)`, so a peer that has
    /// gone away yields EPIPE instead of SIGPIPE. Other descriptors get EPIPE too, at the
    /// cost of masking SIGPIPE in the writing thread around each write(2)
    /// (see ``write(_:)-(UnsafeRawBufferPointer)``).
    public let isSocket: Bool

    /// References and the two direction locks.
    let fdMutex = FDMutex()
    /// Set by the first ``destroy()``: the descriptor is closed exactly once.
    private let destroyed = Atomic<Bool>(false)
    /// Whether a short read proves the receive queue empty (TCP), so that the next read can
    /// wait for fresh readiness before its system call instead of after one that fails with
    /// EAGAIN. Set once, before the descriptor is shared.
    private let shortReadsDrain = Atomic<Bool>(false)
    /// See ``observesTaskCancellation``.
    private let cancellationObserved = Atomic<Bool>(true)
    /// io_uring completion receive for this descriptor (``RingReceive``): a connected stream
    /// socket allows it; the first read starts it where the poller can. Changed only with the
    /// read lock held (or before the descriptor is shared).
    let ringReceive = Atomic<UInt8>(RingReceive.off)
    /// Whether writes from the poller thread may go through io_uring completion send (when the
    /// poller has it). Tests that pin the readiness write path turn it off.
    let ringSend = Atomic<Bool>(true)
    /// io_uring multishot accept for this descriptor (``RingReceive``'s states): a listening
    /// socket allows it; the first accept starts it where the poller can. Changed only with
    /// the read lock held (or before the descriptor is shared).
    let ringAccept = Atomic<UInt8>(RingReceive.off)
    /// Work to do after `close(2)` (a Unix listener unlinks its path).
    private let afterClose: (@Sendable () -> Void)?

    /// Takes ownership of `fd`, makes it non-blocking and registers it with `poller`.
    ///
    /// On failure `fd` has been closed: ownership passes in either case, so callers never
    /// leak it.
    ///
    /// - Parameters:
    ///   - fd: an open descriptor; from here on the `NetFD` owns it.
    ///   - poller: the poller to register with; nil for `Poller.shared()`.
    ///   - isStream: true for stream sockets and pipes (a zero-byte read is end of file).
    ///   - isSocket: true for sockets (writes use `send` with `MSG_NOSIGNAL`); false for
    ///     pipes and other descriptors (writes use write(2) with SIGPIPE masked in the
    ///     writing thread, so a closed reader gives EPIPE, not SIGPIPE).
    public convenience init(
        adopting fd: Int32, poller: Poller? = nil, isStream: Bool = true, isSocket: Bool = true
    ) throws(NetError) {
        try self.init(adopting: fd, poller: poller, isStream: isStream, isSocket: isSocket, afterClose: nil)
    }

    convenience init(
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
        self.init(registered: pd, isStream: isStream, isSocket: isSocket, afterClose: afterClose)
    }

    /// Takes ownership of a descriptor already made non-blocking and registered as `pd`.
    init(
        registered pd: PollDescriptor, isStream: Bool, isSocket: Bool,
        afterClose: (@Sendable () -> Void)? = nil
    ) {
        self.fd = pd.fd
        self.pollDescriptor = pd
        self.isStream = isStream
        self.isSocket = isSocket
        self.afterClose = afterClose
    }

    deinit {
        // Nobody can be inside an operation (each holds a strong reference), so a NetFD that
        // was never closed can be torn down synchronously here: no descriptor leaks.
        destroy()
    }

    /// Whether ``close()`` has started.
    public var isClosed: Bool { fdMutex.isClosing }

    /// Declares that a read returning fewer bytes than asked for leaves the receive queue
    /// empty, as on TCP: tcp_recvmsg copies until the buffer is full or the queue is empty,
    /// stopping early only at an urgent-data mark (which the poller sees as a priority event
    /// and which turns the shortcut off). Not true of Unix sockets passing credentials, which
    /// stop at every change of sender; so it is set only for TCP.
    func declareShortReadsDrain() { shortReadsDrain.store(true, ordering: .relaxed) }

    /// The states of ``ringReceive``.
    enum RingReceive {
        /// Reads by recv(2) on readiness (epoll, no kernel support, not a connected stream).
        static let off: UInt8 = 0
        /// A connected stream socket: the first read tries to start completion receive.
        static let allowed: UInt8 = 1
        /// Reads take what multishot recv queued (NetFDIO.swift, `readReceived`).
        static let on: UInt8 = 2
    }

    /// Lets reads go through io_uring completion receive where the poller can (a connected
    /// stream socket; before the descriptor is shared).
    func allowRingReceive() { ringReceive.store(RingReceive.allowed, ordering: .relaxed) }

    /// Lets accepts go through io_uring multishot accept where the poller can (a listening
    /// socket; before the descriptor is shared).
    func allowRingAccept() { ringAccept.store(RingReceive.allowed, ordering: .relaxed) }

    /// Whether task cancellation ends a read, write or accept blocked in the poller (true, the
    /// default: it throws ``NetError/cancelled``). Set it to false for Go's model, where only
    /// ``close()`` and deadlines interrupt a blocked operation: each wait then installs no
    /// cancellation handler, which saves a task status record (and an executor check) per
    /// wait on a hot connection. A wait queued for the read or write lock behind another
    /// operation still observes cancellation.
    public var observesTaskCancellation: Bool {
        get { cancellationObserved.load(ordering: .relaxed) }
        set { cancellationObserved.store(newValue, ordering: .relaxed) }
    }

    /// Whether short reads drain the receive queue (see ``declareShortReadsDrain()``).
    var shortReadsDrainQueue: Bool { shortReadsDrain.load(ordering: .relaxed) }

    // MARK: References and direction locks (Go's fdMutex)

    /// Runs `body` holding a reference (for operations that never wait: shutdown, options,
    /// deadlines).
    func withReference<R>(_ body: () throws(NetError) -> R) throws(NetError) -> R {
        try fdMutex.withReference(body)
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
        guard fdMutex.beginClose() else { throw .closed }
        // Queued lock waiters have failed; now wake operations parked in the poller.
        pollDescriptor.unblock()
        // Every in-flight operation is already returning; wait for the last one.
        await fdMutex.awaitLastReference()
        destroy()
    }

    /// Takes the descriptor out of the poller without closing it: ``close()`` up to the
    /// deregistration, then the number is returned to the caller, who owns it from then on.
    /// Later operations (and ``close()``) throw ``NetError/closed``; deinit closes nothing.
    ///
    /// - Throws: ``NetError/closed`` if close or detach was already called.
    func detach() async throws(NetError) -> Int32 {
        if ringReceive.load(ordering: .relaxed) == RingReceive.on {
            // Bytes io_uring received for this descriptor and nobody has read would stay
            // behind in the poller: stop the recv (every completion it made is queued when
            // this returns) and refuse, unchanged, if any are left (see Connection.detach()).
            if await pollDescriptor.stopReceiving() > 0 {
                pollDescriptor.restartReceiving()
                throw .system(call: "detach", errno: EBUSY)
            }
        }
        guard fdMutex.beginClose() else { throw .closed }
        pollDescriptor.unblock()
        await fdMutex.awaitLastReference()
        // beginClose lets one caller through, and deinit cannot run while we hold self.
        guard deregister() else { throw .closed }
        return fd
    }

    /// Deregisters and closes the descriptor (Go's `FD.destroy`). Runs once, with no
    /// operation in flight.
    private func destroy() {
        guard deregister() else { return }
        // No EINTR retry: on Linux the descriptor is released even when close(2) says EINTR.
        Glibc.close(fd)
        afterClose?()
    }

    /// Deregisters from the poller, the first time only (false after): the common part of
    /// ``destroy()`` and ``detach()``.
    private func deregister() -> Bool {
        if destroyed.exchange(true, ordering: .acquiringAndReleasing) { return false }
        pollDescriptor.unblock()
        do {
            try pollDescriptor.close()
        } catch {
            // `.closing` means the poller already dropped the slot (it was shut down first);
            // anything else would be a reference-count bug. Either way the fd is released.
            assert(error == .closing, "NetFD: poll descriptor close failed: \(error)")
        }
        return true
    }
}
