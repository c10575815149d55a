import CPoller
import Glibc
import Synchronization

/// The channel that interrupts a blocked poll: Go's netpollBreak.
///
/// An eventfd, or a non-blocking self-pipe where eventfd cannot be created. Registered with
/// the backend under ``PollToken/wake``.
///
/// Invariant (Go's netpollWakeSig): `pending` is true from the first `signal()` until the
/// poller drains the channel, so concurrent signals coalesce into one write. The poller
/// drains first and clears `pending` second, and re-reads all shared state (run queue,
/// deadlines, commands) before it blocks again; a signal that lost the race to set `pending`
/// therefore always finds its state read by the poller. Anyone who signals must publish the
/// state change before calling `signal()`.
final class WakeChannel: Sendable {
    let readFD: Int32
    let writeFD: Int32
    /// True when a self-pipe is used because eventfd could not be created (or was refused).
    let isPipe: Bool
    private let pending = Atomic<Bool>(false)
    /// True once closed. Held across the write in `signal()` so a write never reaches a
    /// descriptor number that `close()` has released (and the kernel may have reused).
    private let closed = Mutex<Bool>(false)

    #if DEBUG
    /// Test seam: writes made by `signal()` (coalesced signals are not counted).
    let writes = Atomic<Int>(0)
    #endif

    // MARK: The channel

    /// An eventfd; a self-pipe when `forcePipe` is set or eventfd cannot be created (a seccomp
    /// filter, an old kernel, EMFILE: the pipe then fails too and its error is thrown).
    init(forcePipe: Bool = false) throws(PollerError) {
        if !forcePipe {
            let efd = cpoller_eventfd_create()
            if efd >= 0 {
                (readFD, writeFD, isPipe) = (efd, efd, false)
                return
            }
        }
        var fds: (Int32, Int32) = (-1, -1)
        let r = withUnsafeMutableBytes(of: &fds) { raw in
            cpoller_pipe_cloexec_nonblocking(raw.baseAddress!.assumingMemoryBound(to: Int32.self))
        }
        if r < 0 { throw .system(call: "eventfd/pipe2", errno: -r) }
        (readFD, writeFD, isPipe) = (fds.0, fds.1, true)
    }

    func signal() {
        guard pending.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
        else { return }
        closed.withLockAnnotated { closed in
            guard !closed else { return }
            #if DEBUG
            writes.add(1, ordering: .relaxed)
            #endif
            // -EAGAIN (the counter or pipe is full) means a wake-up is pending already: as
            // good as a write. Nothing else can fail on an open non-blocking channel.
            _ = cpoller_wake_signal(writeFD, isPipe ? 1 : 0)
        }
    }

    /// Poller thread only.
    func drain() {
        _ = cpoller_wake_drain(readFD, isPipe ? 1 : 0)  // -EAGAIN: drained
        pending.store(false, ordering: .sequentiallyConsistent)
    }

    func isOwnDescriptor(_ fd: Int32) -> Bool { fd == readFD || fd == writeFD }

    /// Closes the descriptors once; later signals are ignored.
    func close() {
        closed.withLockAnnotated { closed in
            guard !closed else { return }
            closed = true
            _ = Glibc.close(readFD)
            if writeFD != readFD { _ = Glibc.close(writeFD) }
        }
    }
}
