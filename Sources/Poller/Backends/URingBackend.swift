import CPoller
import Glibc
import Synchronization

/// The io_uring backend: readiness through one multishot POLL_ADD per descriptor for
/// IN | OUT | RDHUP | PRI, the io_uring form of Go's single edge-triggered registration.
///
/// Ownership: the ring is created with SINGLE_ISSUER | DEFER_TASKRUN (measured here as the
/// only set-up that keeps up with epoll), so only the thread that created it (the owner, in
/// practice the poller thread) may submit or wait. `register` and `deregister` called on
/// another thread become commands that the owner applies at the start of its next `poll`;
/// the caller wakes the owner, and `deregister` waits until the poll has been cancelled and
/// has completed, because a pending io_uring poll keeps a closed socket alive (the peer would
/// see no EOF).
///
/// Invariants:
/// - `live` holds exactly the registrations that have not been deregistered. A completion
///   without IORING_CQE_F_MORE for a live token means the kernel ended the multishot poll
///   (completion-queue overflow, -ECANCELED, ...): it is re-armed at once, and the new poll
///   checks the current level, so no readiness is lost.
/// - Removal is by token, never by fd number.
final class URingBackend: PollerBackend {
    let kind = BackendKind.ioUring
    let wakeChannel: WakeChannel
    let ringFD: Int32
    /// A private epoll instance used only to ask the kernel, at registration, whether a
    /// descriptor supports polling at all. io_uring would accept /dev/null or a regular file
    /// and complete its poll at once, forever; epoll answers EPERM, which is Go's contract.
    let probeEpollFD: Int32
    private let ownerThread: UInt64
    private let state: Mutex<State>
    // The ring pointer is used only on the owner thread (or after the owner stopped).
    private nonisolated(unsafe) let ring: OpaquePointer
    let faults = FaultLog()
    var kernelFD: Int32 { ringFD }
    let waitBackoff = WaitBackoff(call: "io_uring_enter (wait)")

    private struct Command {
        enum Kind { case arm, remove }
        var kind: Kind
        var fd: Int32
        var token: PollToken
        var done: ParkerBox?
    }

    private struct State {
        var commands: [Command] = []
        var live: [PollToken: Int32] = [:]
        /// The descriptors in `live`, so a second registration of one fails with EEXIST as
        /// epoll's does.
        var liveFDs: Set<Int32> = []
        var isShutdown = false
        /// Multishot polls re-armed after the kernel ended them. For tests.
        var rearms = 0
    }

    /// Creates the ring on the calling thread, which becomes its owner.
    init(forcePipeWake: Bool = false, submissionEntries: UInt32 = 512, completionEntries: UInt32 = 16384)
        throws(PollerError)
    {
        var err: Int32 = 0
        guard let ring = cpoller_uring_create(submissionEntries, completionEntries, &err) else {
            throw .backendUnavailable(.ioUring, reason: URingBackend.describeSetupFailure(errno: err))
        }
        let probe = cpoller_epoll_create()
        guard probe >= 0 else {
            cpoller_uring_destroy(ring)
            throw .system(call: "epoll_create1", errno: -probe)
        }
        let channel: WakeChannel
        do {
            channel = try WakeChannel(forcePipe: forcePipeWake)
        } catch {
            _ = Glibc.close(probe)
            cpoller_uring_destroy(ring)
            throw error
        }
        let r = cpoller_uring_arm_in(ring, channel.readFD, PollToken.wake.raw)
        guard r == 0 else {
            channel.close()
            _ = Glibc.close(probe)
            cpoller_uring_destroy(ring)
            throw .system(call: "io_uring poll (wake)", errno: -r)
        }
        probeEpollFD = probe
        self.ring = ring
        ringFD = cpoller_uring_fd(ring)
        wakeChannel = channel
        ownerThread = cpoller_thread_id()
        state = Mutex(State())
    }

    /// Whether io_uring readiness works for this process, and if not, why.
    static func probe() -> Result<Void, PollerError> {
        let err = cpoller_uring_probe()
        if err == 0 { return .success(()) }
        return .failure(.backendUnavailable(.ioUring, reason: describeSetupFailure(errno: err)))
    }

    static func describeSetupFailure(errno: Int32) -> String {
        let name = ErrnoName.describe(errno)
        switch errno {
        case ENOSYS where cpoller_uring_compiled() == 0:
            return "io_uring support was not compiled in (the package's IOUring trait is off)"
        case ENOSYS:
            return "\(name): this kernel has no io_uring"
        case EPERM, EACCES:
            return "\(name): io_uring is forbidden for this process "
                + "(sysctl kernel.io_uring_disabled, or a seccomp profile such as Docker's default)"
        case EINVAL:
            return "\(name): the kernel lacks a required io_uring feature "
                + "(SINGLE_ISSUER/DEFER_TASKRUN need Linux 6.1)"
        case EOPNOTSUPP:
            return "\(name): the kernel lacks a required io_uring feature (NODROP, EXT_ARG or multishot poll)"
        case ENOMEM:
            return "\(name): cannot lock memory for the ring (raise RLIMIT_MEMLOCK)"
        default:
            return "\(name): io_uring set-up failed"
        }
    }

    private var onOwnerThread: Bool { cpoller_thread_id() == ownerThread }

    func register(fd: Int32, token: PollToken) -> Int32 {
        // io_uring would arm a poll on a regular file or directory and report it always ready;
        // refuse them up front with epoll's answer, and bad descriptors with EBADF.
        let check = cpoller_check_pollable(fd)
        if check != 0 { return check }
        let onOwner = onOwnerThread
        let result: Int32 = state.withLockAnnotated { s in
            guard !s.isShutdown else { return EBADF }
            guard !s.liveFDs.contains(fd) else { return EEXIST }
            // Does the file support polling? (ADD then DEL on the private epoll instance.)
            let probe = cpoller_epoll_add(probeEpollFD, fd, token.raw)
            guard probe == 0 else { return -probe }
            _ = cpoller_epoll_del(probeEpollFD, fd)
            if onOwner {
                let r = cpoller_uring_arm(ring, fd, token.raw)
                guard r == 0 else { return -r }
            } else {
                s.commands.append(Command(kind: .arm, fd: fd, token: token, done: nil))
            }
            s.live[token] = fd
            s.liveFDs.insert(fd)
            return 0
        }
        if result == 0 && !onOwner { wake() }
        return result
    }

    func deregister(fd: Int32, token: PollToken) -> Int32 {
        if onOwnerThread {
            return state.withLockAnnotated { s in
                guard let fd = s.live.removeValue(forKey: token), !s.isShutdown else { return 0 }
                s.liveFDs.remove(fd)
                return -cpoller_uring_remove(ring, token.raw)
            }
        }
        let done = ParkerBox()
        let queued = state.withLockAnnotated { s in
            guard let fd = s.live.removeValue(forKey: token), !s.isShutdown else { return false }
            s.liveFDs.remove(fd)
            s.commands.append(Command(kind: .remove, fd: fd, token: token, done: done))
            return true
        }
        guard queued else { return 0 }
        wake()
        // The owner cancels the poll at the start of its next poll (which the wake above
        // brings about at once) and unparks us once the cancelled poll has completed.
        done.park()
        return 0
    }

    func poll(into events: UnsafeMutableBufferPointer<cpoller_event>, timeoutNanos: Int64) -> Int {
        applyCommands()
        let n = Int(cpoller_uring_wait(ring, events.baseAddress, Int32(events.count), timeoutNanos))
        guard n >= 0 else {
            waitBackoff.failed(errno: Int32(-n), timeoutNanos: timeoutNanos, wakeChannel: wakeChannel, log: faults)
            return 0
        }
        waitBackoff.succeeded()
        guard n > 0 else { return 0 }
        var kept = 0
        var ended: [PollToken] = []
        for i in 0..<n {
            let event = events[i]
            if event.token == PollToken.wake.raw {
                wakeChannel.drain()
                if event.isEnded { _ = cpoller_uring_arm_in(ring, wakeChannel.readFD, PollToken.wake.raw) }
                continue
            }
            // A request that failed (not -ECANCELED) is not re-armed: it would fail again.
            if event.isEnded && (event.res >= 0 || event.res == -ECANCELED) { ended.append(event.pollToken) }
            if event.flags & ~UInt32(CPOLLER_EV_ENDED) != 0 {
                if kept != i { events[kept] = event }
                kept += 1
            }
        }
        if !ended.isEmpty { rearm(ended) }
        return kept
    }

    /// Re-arms the multishot polls the kernel ended for registrations that are still live.
    private func rearm(_ tokens: [PollToken]) {
        state.withLockAnnotated { s in
            for token in tokens {
                guard let fd = s.live[token] else { continue }
                s.rearms += 1
                _ = cpoller_uring_arm(ring, fd, token.raw)
            }
        }
    }

    private func applyCommands() {
        let commands: [Command] = state.withLockAnnotated { s in
            guard !s.commands.isEmpty else { return [] }
            defer { s.commands.removeAll(keepingCapacity: true) }
            return s.commands
        }
        for command in commands {
            switch command.kind {
            case .arm:
                _ = cpoller_uring_arm(ring, command.fd, command.token.raw)
            case .remove:
                _ = cpoller_uring_remove(ring, command.token.raw)
                command.done?.unpark()
            }
        }
    }

    /// Multishot polls re-armed so far (tests).
    var rearmCount: Int { state.withLockAnnotated { $0.rearms } }
    /// Completion-queue overflows seen so far (tests). Owner thread only.
    var overflowCount: UInt64 { cpoller_uring_overflow_count(ring) }

    func isPollerDescriptor(_ fd: Int32) -> Bool {
        fd == ringFD || fd == probeEpollFD || wakeChannel.isOwnDescriptor(fd)
    }

    func shutdown() {
        let waiting: [Command] = state.withLockAnnotated { s in
            s.isShutdown = true
            defer { s.commands.removeAll() }
            return s.commands
        }
        // Destroying the ring cancels every poll; release anyone waiting for a removal.
        for command in waiting { command.done?.unpark() }
        wakeChannel.close()
        _ = Glibc.close(probeEpollFD)
        cpoller_uring_destroy(ring)
    }
}
