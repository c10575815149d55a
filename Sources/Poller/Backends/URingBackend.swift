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
/// the caller wakes the owner and, as a rule, does not wait (waiting costs two thread
/// wake-ups, 20–110 µs measured here): `register` checks up front everything that can fail for
/// the descriptor, and the owner's arm goes through the re-arm rules below (a poll the kernel
/// fails wakes both directions with the error; one that cannot be queued is retried with a
/// back-off). `deregister` returns before the poll is cancelled: a pending io_uring poll keeps
/// a closed socket alive, so the peer's EOF comes when the owner has cancelled it, a wake-up
/// later. It waits only for a listening or datagram socket, whose address must be free when
/// the caller's close(2) returns (Go's TestListenCloseListen).
///
/// Invariants:
/// - `live` holds exactly the registrations that have not been deregistered, and each of them
///   has a poll armed, queued (in the ring, or as an `arm` command from another thread), or due
///   for a retry in `owner.trouble`.
/// - A completion without IORING_CQE_F_MORE for a live token means the kernel ended the
///   multishot poll: it is re-armed, and the new poll checks the current level, so no
///   readiness is lost. After completion-queue overflow or -ECANCELED at once. After a
///   failure (the request itself failed: -ENOMEM, -EBADF, ...) both directions are woken, so
///   readers and writers retry their I/O and see the error there (Go wakes both on an error),
///   then the poll is re-armed: at once the first time, with a back-off (1 ms doubling to 1 s)
///   while it keeps failing, so a broken descriptor cannot make the loop spin. Without the
///   re-arm a writer that retried and got EAGAIN would park for good.
/// - The wake-up channel's poll follows the same rules, its back-off capped at 10 ms. While it
///   is not armed the ring cannot see a wake-up, so every wait is bounded by the next retry
///   and drains the channel after.
/// - A full submission queue is submitted and the request retried; a submission the kernel
///   refuses for want of resources (EAGAIN, ENOMEM) or until completions are reaped (EBUSY)
///   is retried after reaping and a short back-off (at most ~15 ms in all), then reported.
/// - Removal is by token, never by fd number. A cancel that cannot be queued is retried before
///   every wait until it is.
/// - Completion receive (when `receiveBuffers` is set): a registration in `receiving` has a
///   multishot recv armed (tagged token | RECV_BIT), or queued, or due in `owner.receiveArms`,
///   or ended (-ENOBUFS: the core's reader resumes it; end of file or an error: for good).
///   Removal cancels it with the poll. A recv that ends with data is re-armed at once. Every
///   completion that names a buffer counts it out of the ring (`taken`); one that carries no
///   bytes gives it back here; the core owns the rest (ReceiveBufferRing.swift).
final class URingBackend: PollerBackend {
    let wakeChannel: WakeChannel
    let ringFD: Int32
    /// A private epoll instance used only to ask the kernel, at registration, whether a
    /// descriptor supports polling at all. io_uring would accept /dev/null or a regular file
    /// and complete its poll at once, forever; epoll answers EPERM, which is Go's contract.
    let probeEpollFD: Int32
    private let ownerThread: UInt64
    private let state: Mutex<State>
    // The ring pointer is used only on the owner thread (or after the owner stopped). Internal
    // for tests that drive the ring from a job on the poller thread.
    nonisolated(unsafe) let ring: OpaquePointer
    let faults = FaultLog()
    let waitBackoff = WaitBackoff(call: "io_uring_enter (wait)")
    let receiveBuffers: ReceiveBufferRing?
    let receiveSummary: String
    let sendsThroughCompletions: Bool
    let sendMinimumBatch: Int
    let sendSummary: String
    /// Whether listeners accept through multishot accept (RingAccept.swift), and why (not).
    let acceptsThroughCompletions: Bool
    let acceptSummary: String

    /// Completion receive's set-up: on unless turned off (`POLLER_URING_RECV=off`, or a test),
    /// with the buffer ring's geometry.
    struct ReceiveSettings: Sendable {
        var enabled = true
        /// Tests: the probe's verdict to use instead of the kernel's (an errno: what a kernel
        /// without the feature answers), so that the fallback can be forced.
        var probeVerdict: Int32? = nil
        var bufferCount = ReceiveBufferRing.defaultCount
        var bufferSize = ReceiveBufferRing.defaultSize
        /// A `POLLER_URING_RECV_BUFFERS` value that did not parse (the defaults run, and the
        /// backend reason says it was ignored).
        var ignoredGeometry: String? = nil

        /// The environment variable that turns completion receive off: `off` or `0`.
        static let environmentVariable = "POLLER_URING_RECV"

        /// The ring's geometry from the environment: `POLLER_URING_RECV_BUFFERS=COUNTxSIZE`
        /// (a power of two up to 32768 buffers, each 256 B to 1 MiB; say `128x16384`).
        static let geometryVariable = "POLLER_URING_RECV_BUFFERS"

        /// `variable`: the environment's value of a name (tests pass their own).
        static func fromEnvironment(_ variable: (String) -> String? = URingBackend.environment) -> ReceiveSettings {
            var settings = ReceiveSettings()
            settings.enabled = !URingBackend.isTurnedOff(variable(environmentVariable))
            if let value = variable(geometryVariable) {
                let parts = value.lowercased().split(separator: "x")
                if parts.count == 2, let count = UInt32(parts[0]), let size = UInt32(parts[1]), count > 0,
                    count & (count - 1) == 0, count <= 32768, (256...(1 << 20)).contains(size)
                {
                    settings.bufferCount = count
                    settings.bufferSize = size
                } else {
                    settings.ignoredGeometry = value
                }
            }
            return settings
        }
    }

    /// Completion send's set-up: on unless turned off (`POLLER_URING_SEND=off`, or a test).
    /// IORING_OP_SEND is older (Linux 5.6) than what the ring's set-up needs (6.1), so there
    /// is nothing to probe.
    struct SendSettings: Sendable {
        var enabled = true
        /// Sends go on the ring only while the poller's last poll returned at least this many
        /// events (see `Poller.sendsThroughCompletions`); 0: always.
        var minimumBatch = defaultMinimumBatch

        /// 2: one arrival on a quiet poller is one event (the recv's completion: a receiving
        /// connection's poll does not report input, `KernelReadiness.receivingInterest`), so
        /// a batch of 2 or more means more than one thing happened.
        static let defaultMinimumBatch = 2

        /// The environment variable that turns completion send off (`off`, `0`, `no`) or on
        /// for every write from the poller thread (`always`).
        static let environmentVariable = "POLLER_URING_SEND"

        static func fromEnvironment() -> SendSettings {
            let value = URingBackend.environment(environmentVariable)
            let always = value?.lowercased() == "always"
            return SendSettings(enabled: !isTurnedOff(value), minimumBatch: always ? 0 : defaultMinimumBatch)
        }
    }

    /// Multishot accept's set-up: on unless turned off (`POLLER_URING_ACCEPT=off`, or a test).
    struct AcceptSettings: Sendable {
        var enabled = true
        /// Tests: the probe's verdict to use instead of the kernel's (see ReceiveSettings).
        var probeVerdict: Int32? = nil

        /// The environment variable that turns multishot accept off: `off`, `0` or `no`.
        static let environmentVariable = "POLLER_URING_ACCEPT"

        static func fromEnvironment() -> AcceptSettings {
            AcceptSettings(enabled: !isTurnedOff(URingBackend.environment(environmentVariable)))
        }
    }

    /// The environment variable `name`'s value, if it is set.
    static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    /// Whether an environment variable's `value` says `off`, `0` or `no`.
    static func isTurnedOff(_ value: String?) -> Bool {
        guard let value else { return false }
        return ["off", "0", "no"].contains(value.lowercased())
    }

    /// The ring's set-up flags. SINGLE_ISSUER | DEFER_TASKRUN: measured here, a readiness ring
    /// without DEFER_TASKRUN (or COOP_TASKRUN) costs twice the CPU per round trip, and
    /// DEFER_TASKRUN (which needs SINGLE_ISSUER) is the best of the three with many
    /// connections (docs: uring-ring-flags). Its price is the ownership rule above, and that
    /// a cancelled poll completes only when the owner runs its task work (`runTaskWork`).
    /// SUBMIT_ALL: a request that fails at submission does not stop the ones queued after it.
    static let setupFlags =
        UInt32(CPOLLER_URING_SETUP_SINGLE_ISSUER) | UInt32(CPOLLER_URING_SETUP_DEFER_TASKRUN)
        | UInt32(CPOLLER_URING_SETUP_SUBMIT_ALL)

    private struct Command {
        enum Kind {
            /// The first poll of a registration made off the owner thread (which did not wait).
            case arm
            /// The cancel of a registration's poll (and recv). The caller waits for it only for
            /// a listening or datagram socket (`done`), whose address must be free when its
            /// close(2) returns: otherwise its close(2) returns at once, and the
            /// file, which the pending poll holds, is released when the owner has applied the
            /// cancel, a wake-up later (a few µs when the owner is idle): the peer's EOF comes
            /// then. A detached descriptor (handed back, not closed) may meanwhile still have
            /// its old poll pending: its completions carry the old token, stale by generation,
            /// and a poll consumes nothing (a recv, which would, has ended before a detach
            /// deregisters). `receives`: it has a recv to cancel too.
            case remove(receives: Bool)
            /// `starts`: the registration has just started receiving (its poll's mask changes).
            case armReceive(starts: Bool)
            /// `neverArmed`: its arm was still queued here: nothing to cancel, only its ENDED
            /// completion to make up.
            case cancelReceive(neverArmed: Bool)
            case cancelSend, armAccept, cancelAccept

            var isArmReceive: Bool {
                if case .armReceive = self { return true }
                return false
            }
        }
        var kind: Kind
        var fd: Int32
        var token: PollToken
        /// Nil unless the caller waits (the `remove` of a listening or datagram socket).
        var done: CommandDone? = nil
    }

    /// A command's hand-off: the owner stores the result, then unparks the caller. A command
    /// that shutdown releases unapplied keeps the initial EBADF.
    private final class CommandDone: Sendable {
        let parker = ParkerBox()
        let result = Atomic<Int32>(EBADF)

        func finish(_ r: Int32) {
            result.store(r, ordering: .sequentiallyConsistent)
            parker.unpark()
        }
    }

    private struct State {
        var commands: [Command] = []
        var live: [PollToken: Int32] = [:]
        /// The descriptors in `live`, so a second registration of one fails with EEXIST as
        /// epoll's does.
        var liveFDs: Set<Int32> = []
        /// The registrations in `live` that receive through a multishot recv.
        var receiving: Set<PollToken> = []
        var isShutdown = false
        /// Multishot polls re-armed after the kernel ended them. For tests.
        var rearms = 0
    }

    /// A poll that failed, or could not be queued, and is re-armed with a back-off.
    private struct Trouble {
        /// Consecutive failures (a completion with res >= 0 clears them).
        var failures: Int
        /// When to try again; nil once re-armed (kept to count the next failure).
        var rearmAt: Int64?
    }

    /// Touched only on the owner thread (the ring's single issuer), like the ring itself.
    private struct OwnerState {
        /// Whether the wake-up channel's poll is armed (or queued).
        var wakeArmed = true
        var trouble: [PollToken: Trouble] = [:]
        /// Cancels that could not be queued yet.
        var cancels: [PollToken] = []
        /// Completion-queue overflows seen (IORING_SQ_CQ_OVERFLOW set after a drain).
        var overflows: UInt64 = 0
        /// Multishot recvs that could not be queued yet.
        var receiveArms: [PollToken] = []
        /// Recvs the kernel ended with data and that were armed again. For tests.
        var receiveRearms = 0
        /// Mask updates that found their poll completing (-EALREADY): queued again before the
        /// next wait.
        var maskUpdates: [PollToken] = []
        /// Recvs cancelled before they could be queued: their ENDED completion, made up, goes
        /// out with the next poll.
        var receiveEndsDue: [PollToken] = []
        /// Registrations with a multishot accept armed (or due in `acceptArms`): what removal
        /// cancels.
        var accepting: Set<PollToken> = []
        /// Listeners that have started multishot accept, until they are deregistered: their
        /// polls watch `KernelReadiness.receivingInterest` (an acceptor never waits on a
        /// listener's input readiness once its connections come by completions).
        var listening: Set<PollToken> = []
        /// Multishot accepts that could not be queued yet.
        var acceptArms: [PollToken] = []
    }

    private nonisolated(unsafe) var owner = OwnerState()

    /// Creates the ring on the calling thread, which becomes its owner.
    init(
        forcePipeWake: Bool = false, receive: ReceiveSettings = .fromEnvironment(),
        send: SendSettings = .fromEnvironment(), accept: AcceptSettings = .fromEnvironment(),
        submissionEntries: UInt32 = 512, completionEntries: UInt32 = 16384
    ) throws(PollerError) {
        var err: Int32 = 0
        guard let ring = cpoller_uring_create(submissionEntries, completionEntries, Self.setupFlags, &err) else {
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
        let r = cpoller_uring_arm(ring, channel.readFD, KernelReadiness.input, PollToken.wake.raw)
        guard r == 0 else {
            channel.close()
            _ = Glibc.close(probe)
            cpoller_uring_destroy(ring)
            throw .system(call: "io_uring poll (wake)", errno: -r)
        }
        (receiveBuffers, receiveSummary) = Self.setUpReceive(ring, receive)
        sendsThroughCompletions = send.enabled
        sendMinimumBatch = send.minimumBatch
        sendSummary =
            !send.enabled
            ? "writes by send(2) (completion send turned off: \(SendSettings.environmentVariable))"
            : send.minimumBatch == 0
                ? "writes from the poller thread through the ring (send(2) elsewhere)"
                : "writes from the poller thread through the ring while it is busy (send(2) otherwise)"
        (acceptsThroughCompletions, acceptSummary) = Self.setUpAccept(accept)
        probeEpollFD = probe
        self.ring = ring
        ringFD = cpoller_uring_fd(ring)
        wakeChannel = channel
        ownerThread = cpoller_thread_id()
        state = Mutex(State())
    }

    /// The provided-buffer ring for completion receive, or nil and why not.
    private static func setUpReceive(_ ring: OpaquePointer, _ settings: ReceiveSettings) -> (ReceiveBufferRing?, String) {
        guard settings.enabled else {
            return (nil, "reads by recv(2) on readiness (completion receive turned off: \(ReceiveSettings.environmentVariable))")
        }
        let probe = settings.probeVerdict ?? receiveProbe
        guard probe == 0 else {
            let why =
                probe == EINVAL
                ? "the kernel has no provided-buffer rings (Linux 5.19)"
                : probe == EOPNOTSUPP ? "the kernel has no multishot recv (Linux 6.0)" : ErrnoName.describe(probe)
            return (nil, "reads by recv(2) on readiness (completion receive unavailable: \(why))")
        }
        do {
            let buffers = try ReceiveBufferRing(ring: ring, count: settings.bufferCount, size: settings.bufferSize)
            let ignored =
                settings.ignoredGeometry.map {
                    "; \(ReceiveSettings.geometryVariable)=\($0) ignored: COUNTxSIZE, a power of two up to 32768 buffers of 256 B to 1 MiB"
                } ?? ""
            return (
                buffers,
                "reads through multishot recv and a provided-buffer ring (\(settings.bufferCount) × \(settings.bufferSize) bytes\(ignored))"
            )
        } catch {
            return (nil, "reads by recv(2) on readiness (completion receive unavailable: \(error))")
        }
    }

    /// Whether listeners accept through multishot accept, and the phrase saying so and why.
    private static func setUpAccept(_ settings: AcceptSettings) -> (Bool, String) {
        guard settings.enabled else {
            return (false, "accepts by accept4(2) on readiness (multishot accept turned off: \(AcceptSettings.environmentVariable))")
        }
        let probe = settings.probeVerdict ?? acceptProbe
        guard probe == 0 else {
            let why =
                probe == EINVAL || probe == EOPNOTSUPP
                ? "the kernel has no multishot accept (Linux 5.19)" : ErrnoName.describe(probe)
            return (false, "accepts by accept4(2) on readiness (multishot accept unavailable: \(why))")
        }
        return (true, "accepts through multishot accept (at most \(AcceptQueue.bound) queued per listener)")
    }

    /// Whether multishot accept works here: 0 or the errno saying why not. Probed once per
    /// process, on a ring of its own.
    static let acceptProbe: Int32 = cpoller_uring_probe_accept(setupFlags)

    /// Whether multishot recv with provided-buffer rings works here: 0 or the errno saying why
    /// not. Probed once per process, on a ring of its own.
    static let receiveProbe: Int32 = cpoller_uring_probe_recv(setupFlags)

    /// Whether io_uring readiness works for this process, and if not, why.
    static func probe() -> Result<Void, PollerError> {
        let err = cpoller_uring_probe(setupFlags)
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
            let probe = cpoller_epoll_add(probeEpollFD, fd, KernelReadiness.interest, token.raw)
            guard probe == 0 else { return -probe }
            _ = cpoller_epoll_del(probeEpollFD, fd)
            if !onOwner { s.commands.append(Command(kind: .arm, fd: fd, token: token)) }
            s.live[token] = fd
            s.liveFDs.insert(fd)
            return 0
        }
        guard result == 0 else { return result }
        // Nobody else knows the token before this returns, so nothing can deregister it while
        // its poll is being queued outside the lock.
        if onOwner { return armNew(fd: fd, token: token) }
        // Off the owner: the owner queues the poll at its next `poll` (the wake brings that
        // about at once). Nothing to wait for: everything that can fail for the descriptor was
        // checked above; a poll the kernel fails reports the error to both directions, and
        // one that cannot be queued is retried with a back-off (`rearmNow`).
        wake()
        return 0
    }

    func deregister(fd: Int32, token: PollToken) -> Int32 {
        if onOwnerThread {
            let found = state.withLockAnnotated { s -> Bool? in
                guard let fd = s.live.removeValue(forKey: token), !s.isShutdown else { return nil }
                s.liveFDs.remove(fd)
                return !s.receiving.isEmpty && s.receiving.remove(token) != nil
            }
            guard let receives = found else { return 0 }
            return removePoll(token, receives: receives)
        }
        // A listening or datagram socket's close must free its address when close(2) returns
        // (Go's TestListenCloseListen listens again on it at once): wait for the owner's
        // cancel. Anything else (connections, pipes): do not wait (see `Command.Kind.remove`).
        let done = cpoller_holds_address(fd) == 1 ? CommandDone() : nil
        let queued = state.withLockAnnotated { s in
            guard let fd = s.live.removeValue(forKey: token), !s.isShutdown else { return false }
            s.liveFDs.remove(fd)
            let receives = !s.receiving.isEmpty && s.receiving.remove(token) != nil
            s.commands.append(Command(kind: .remove(receives: receives), fd: fd, token: token, done: done))
            return true
        }
        guard queued else { return 0 }
        wake()
        guard let done else { return 0 }
        // The owner cancels the poll at the start of its next poll (which the wake above
        // brings about at once) and unparks us once the cancelled poll has completed.
        done.parker.park()
        return done.result.load(ordering: .sequentiallyConsistent)
    }

    func armReceive(fd: Int32, token: PollToken) {
        guard receiveBuffers != nil else { return }
        let onOwner = onOwnerThread
        let starts: Bool? = state.withLockAnnotated { s in
            guard s.live[token] != nil, !s.isShutdown else { return nil }
            let starts = s.receiving.insert(token).inserted
            if !onOwner { s.commands.append(Command(kind: .armReceive(starts: starts), fd: fd, token: token, done: nil)) }
            return starts
        }
        guard let starts else { return }
        if onOwner { armReceiveNow(token, starts: starts) } else { wake() }
    }

    /// Points the poll of `token` at `mask` (input stays out of it while a recv delivers it).
    /// A failed update leaves the old mask: a completion more per arrival, nothing lost (and a
    /// poll re-armed later takes the right mask). Owner thread.
    private func updateMask(_ token: PollToken, _ mask: UInt32) {
        let r = queueRequest { cpoller_uring_update_mask(ring, token.raw, mask) }
        if r != 0 { faults.report("io_uring submission (poll update)", errno: r, "the poll keeps its mask") }
    }

    func cancelReceive(token: PollToken) {
        guard receiveBuffers != nil else { return }
        let onOwner = onOwnerThread
        let neverArmed: Bool? = state.withLockAnnotated { s in
            // Out of `receiving` first: a recv ending with data is no longer re-armed.
            guard s.receiving.remove(token) != nil, !s.isShutdown else { return nil }
            // Its arm may still be waiting here (a reader off the owner thread started it just
            // now): take it back, or the owner would skip it (no longer receiving) and the
            // cancel would find no recv, and nothing would end it.
            var neverArmed = false
            if let i = s.commands.firstIndex(where: { $0.kind.isArmReceive && $0.token == token }) {
                s.commands.remove(at: i)
                neverArmed = true
            }
            if !onOwner {
                s.commands.append(Command(kind: .cancelReceive(neverArmed: neverArmed), fd: -1, token: token, done: nil))
            }
            return neverArmed
        }
        guard let neverArmed else { return }
        if onOwner { cancelReceiveNow(token, neverArmed: neverArmed) } else { wake() }
    }

    func submitSend(fd: Int32, token: PollToken, request: RingSendRequest) -> Int32 {
        precondition(onOwnerThread, "io_uring: a send submitted off the ring's owner thread")
        #if DEBUG
        ringSends.add(1, ordering: .relaxed)
        #endif
        let tag = token.raw | CPOLLER_URING_SEND_BIT
        return queueRequest {
            switch request {
            case .bytes(let base, let count): cpoller_uring_send(ring, fd, base, count, tag)
            case .message(let header, let vectors, let count): cpoller_uring_sendmsg(ring, fd, header, vectors, Int32(count), tag)
            }
        }
    }

    func cancelSend(token: PollToken) {
        let onOwner = onOwnerThread
        // After shutdown the ring is gone (the sends with it: their writers are resumed by the
        // core's sweep).
        let queued = state.withLockAnnotated { s in
            guard !s.isShutdown else { return false }
            if !onOwner { s.commands.append(Command(kind: .cancelSend, fd: -1, token: token, done: nil)) }
            return true
        }
        guard queued else { return }
        #if DEBUG
        ringSendCancels.add(1, ordering: .relaxed)
        #endif
        if onOwner { cancelNow(PollToken(raw: token.raw | CPOLLER_URING_SEND_BIT)) } else { wake() }
    }

    /// Queues the cancel of the request tagged `request` (a token with its kind's bit), or
    /// retries it before every wait until it is queued. Owner thread.
    private func cancelNow(_ request: PollToken) {
        if queueRequest({ cpoller_uring_queue_cancel(ring, request.raw) }) != 0 { owner.cancels.append(request) }
    }

    /// Cancels the recv of `token`, or, if it was never queued, makes up its ended completion.
    /// Owner thread.
    private func cancelReceiveNow(_ token: PollToken, neverArmed: Bool = false) {
        // Input is the readers' business again (they read the socket directly, on readiness).
        if KernelReadiness.receivingInterest != KernelReadiness.interest { updateMask(token, KernelReadiness.interest) }
        if neverArmed {
            owner.receiveEndsDue.append(token)
            return
        }
        if let index = owner.receiveArms.firstIndex(of: token) {
            owner.receiveArms.remove(at: index)
            owner.receiveEndsDue.append(token)
            return
        }
        cancelNow(PollToken(raw: token.raw | CPOLLER_URING_RECV_BIT))
    }

    /// Queues the multishot recv of `token` if it is still live and receiving, else (when the
    /// queue is full) schedules it for the next wait. Owner thread.
    private func armReceiveNow(_ token: PollToken, starts: Bool = false) {
        let fd: Int32? = state.withLockAnnotated { s in s.receiving.contains(token) ? s.live[token] : nil }
        guard let fd else { return }
        if starts && KernelReadiness.receivingInterest != KernelReadiness.interest {
            updateMask(token, KernelReadiness.receivingInterest)
        }
        let r = queueRequest {
            cpoller_uring_arm_recv(ring, fd, ReceiveBufferRing.group, token.raw | CPOLLER_URING_RECV_BIT)
        }
        if r != 0 {
            faults.report("io_uring submission (recv)", errno: r, "retrying before the next wait")
            owner.receiveArms.append(token)
        }
    }

    /// What the poll of `token` watches: `receivingInterest` while its input comes by
    /// completions (a receiving connection, an accepting listener), else `interest`. Owner
    /// thread.
    @inline(__always)
    private func pollMask(_ token: PollToken, receiving: Bool) -> UInt32 {
        receiving || (!owner.listening.isEmpty && owner.listening.contains(token))
            ? KernelReadiness.receivingInterest : KernelReadiness.interest
    }

    /// A mask update that completed with `res` (only failures complete). Owner thread.
    private func noteFailedUpdate(_ token: PollToken, _ res: Int32) {
        if res == -EALREADY {
            owner.maskUpdates.append(token)
        } else if res != -ENOENT {
            #if DEBUG
            maskUpdatesRefused.add(1, ordering: .relaxed)
            #endif
            faults.report("io_uring poll update", errno: -res, "the poll keeps its mask")
        }
    }

    /// Queues again the mask updates that found their poll completing, each with the mask its
    /// registration wants now. Owner thread.
    private func retryMaskUpdates() {
        let tokens = owner.maskUpdates
        owner.maskUpdates.removeAll(keepingCapacity: true)
        for token in tokens {
            let receives: Bool? = state.withLockAnnotated { s in s.live[token] != nil ? s.receiving.contains(token) : nil }
            if let receives { updateMask(token, pollMask(token, receiving: receives)) }
        }
    }

    func poll(into events: UnsafeMutableBufferPointer<cpoller_event>, timeoutNanos: Int64) -> Int {
        applyCommands()
        if !owner.maskUpdates.isEmpty { retryMaskUpdates() }
        var timeout = timeoutNanos
        if !owner.receiveArms.isEmpty { retryReceiveArms() }
        if !owner.acceptArms.isEmpty { timeout = retryAcceptArms(timeout) }
        if !owner.receiveEndsDue.isEmpty { timeout = 0 }
        if !owner.trouble.isEmpty || !owner.cancels.isEmpty || !owner.receiveArms.isEmpty { timeout = retryDue(timeout) }
        let r = cpoller_uring_enter(ring, timeout)
        let enterErrno: Int32 = r < 0 ? -r : 0
        // A wake-up the ring could not see (its poll is not armed): consume it here; the loop
        // re-reads everything after a poll.
        if !owner.wakeArmed { wakeChannel.drain() }
        // ETIME and EINTR end a wait early, and completions may be there. EAGAIN (the kernel
        // is short of resources) and EBUSY (completions must be reaped first) are failures
        // only when there is nothing to reap (below).
        let busy = enterErrno == EAGAIN || enterErrno == EBUSY
        guard enterErrno == 0 || enterErrno == ETIME || enterErrno == EINTR || busy else {
            waitBackoff.failed(errno: enterErrno, timeoutNanos: timeout, wakeChannel: wakeChannel, log: faults)
            return 0
        }
        var n = reap(into: events)
        if !owner.receiveEndsDue.isEmpty { n = appendReceiveEnds(to: events, after: n) }
        var seen = 0
        var kept = 0
        var ended: [PollToken] = []
        var failed: [(PollToken, Int32)] = []
        var receiveEnded = 0
        for i in 0..<n {
            var event = events[i]
            if event.token & CPOLLER_URING_CONTROL_BIT != 0 {
                // A mask update that failed: -EALREADY, the poll was completing: again before
                // the next wait; -ENOENT, no poll armed (its arm or re-arm takes the mask from
                // `receiving`). A cancel that failed (-ENOENT, -EALREADY): the request was
                // gone already.
                if event.token & CPOLLER_URING_UPDATE_TAG == CPOLLER_URING_UPDATE_TAG {
                    noteFailedUpdate(PollToken(raw: event.token & ~(CPOLLER_URING_CONTROL_BIT | CPOLLER_URING_UPDATE_TAG)), event.res)
                }
                continue
            }
            seen += 1
            if event.token & CPOLLER_URING_SEND_BIT != 0 {
                event.token &= ~CPOLLER_URING_SEND_BIT
                event.flags = UInt32(CPOLLER_EV_SENT)
                events[kept] = event
                kept += 1
                continue
            }
            if event.token & CPOLLER_URING_ACCEPT_BIT != 0 {
                events[kept] = acceptCompletion(event)
                kept += 1
                continue
            }
            if event.token & CPOLLER_URING_RECV_BIT != 0 {
                event.token &= ~CPOLLER_URING_RECV_BIT
                if let id = event.bufferID, let buffers = receiveBuffers {
                    buffers.taken()
                    // No bytes in it (end of file, an error): back to the kernel at once.
                    if event.res <= 0 { buffers.recycle(id) }
                }
                event.flags = UInt32(CPOLLER_EV_RECEIVED)
                #if DEBUG
                if event.res == -ENOBUFS { receiveStarvations.add(1, ordering: .relaxed) }
                #endif
                if event.cqe_flags & UInt32(CPOLLER_URING_CQE_F_MORE) == 0 {
                    let token = event.pollToken
                    if event.res > 0 && state.withLockAnnotated({ $0.receiving.contains(token) }) {
                        // Ended with data (the completion queue overflowed, say): the stream
                        // goes on, and so does the recv.
                        owner.receiveArms.append(token)
                        receiveEnded += 1
                    } else {
                        event.flags |= UInt32(CPOLLER_EV_ENDED)
                    }
                }
                events[kept] = event
                kept += 1
                continue
            }
            event.flags = Self.flags(completion: event)
            if event.token == PollToken.wake.raw {
                wakeChannel.drain()
                if !owner.trouble.isEmpty, event.res >= 0, owner.trouble[.wake]?.rearmAt == nil {
                    owner.trouble[.wake] = nil
                }
                if event.isEnded {
                    owner.wakeArmed = false
                    if event.res >= 0 || event.res == -ECANCELED { ended.append(.wake) } else { failed.append((.wake, -event.res)) }
                }
                continue
            }
            let token = event.pollToken
            #if DEBUG
            if event.res > 0 && UInt32(event.res) & KernelReadiness.input != 0 { inputEvents.add(1, ordering: .relaxed) }
            #endif
            if event.res < 0 && event.res != -ECANCELED {
                if event.isEnded { failed.append((token, -event.res)) }
            } else {
                if event.isEnded { ended.append(token) }
                if !owner.trouble.isEmpty, event.res >= 0, owner.trouble[token]?.rearmAt == nil {
                    owner.trouble[token] = nil
                }
            }
            if event.flags & ~UInt32(CPOLLER_EV_ENDED) != 0 {
                events[kept] = event
                kept += 1
            }
        }
        if seen == 0 && busy {
            // Refused for want of resources and nothing to reap: back off instead of calling
            // again at once.
            waitBackoff.failed(errno: enterErrno, timeoutNanos: timeout, wakeChannel: wakeChannel, log: faults)
            return 0
        }
        waitBackoff.succeeded()
        if !ended.isEmpty || !failed.isEmpty { rearm(ended: ended, failed: failed) }
        if receiveEnded > 0 {
            owner.receiveRearms += receiveEnded
            retryReceiveArms()
        }
        return kept
    }

    /// The neutral flags of one poll completion. A readiness mask maps by the shared rule; a
    /// cancelled poll (-ECANCELED) carries no readiness; a poll request that failed wakes both
    /// directions so the I/O reports the error, and is an error event unless it failed for want
    /// of resources, which says nothing about the descriptor (readers would get notPollable).
    /// ENDED when the multishot poll is over (no IORING_CQE_F_MORE).
    @inline(__always)
    static func flags(completion event: cpoller_event) -> UInt32 {
        var f: UInt32
        if event.res >= 0 {
            f = cpoller_event.flags(readiness: UInt32(bitPattern: event.res))
        } else if event.res == -ECANCELED {
            f = 0
        } else {
            f = UInt32(CPOLLER_EV_READABLE) | UInt32(CPOLLER_EV_WRITABLE)
            if !isTransient(-event.res) { f |= UInt32(CPOLLER_EV_ERROR) }
        }
        if event.cqe_flags & UInt32(CPOLLER_URING_CQE_F_MORE) == 0 { f |= UInt32(CPOLLER_EV_ENDED) }
        return f
    }

    /// Copies the completions that are there into `events` (raw: flags unset), at most its
    /// count. When the ring runs dry before that, completions may still be parked in the
    /// kernel (overflowed ones, which NODROP keeps, and deferred task work beyond the per-enter
    /// cap): they are flushed into the ring and drained too, in at most `drainPasses` passes,
    /// never looping on a tail the kernel keeps moving. Owner thread.
    private func reap(into events: UnsafeMutableBufferPointer<cpoller_event>) -> Int {
        guard let base = events.baseAddress else { return 0 }
        let parkedWork = UInt32(CPOLLER_URING_SQ_CQ_OVERFLOW) | UInt32(CPOLLER_URING_SQ_TASKRUN)
        var n = 0
        for _ in 0..<Self.drainPasses where n < events.count {
            let want = events.count - n
            let got = Int(cpoller_uring_reap(ring, base + n, Int32(want)))
            n += got
            if got == want { continue }
            let sqFlags = cpoller_uring_sq_flags(ring)
            if sqFlags & parkedWork == 0 { break }
            if sqFlags & UInt32(CPOLLER_URING_SQ_CQ_OVERFLOW) != 0 { owner.overflows += 1 }
            _ = cpoller_uring_get_events(ring)
        }
        return n
    }

    static let drainPasses = 8

    static func isTransient(_ errno: Int32) -> Bool {
        errno == ENOMEM || errno == EAGAIN || errno == EBUSY || errno == ENOBUFS
    }

    /// Re-arms the multishot polls the kernel ended, for registrations that are still live and
    /// for the wake-up channel. Owner thread.
    private func rearm(ended: [PollToken], failed: [(PollToken, Int32)]) {
        let now = MonotonicClock.now()
        for (token, errno) in failed {
            // A failure for a registration closed meanwhile is stale, like any of its events.
            if token != .wake, state.withLockAnnotated({ $0.live[token] == nil }) { continue }
            let failures = (owner.trouble[token]?.failures ?? 0) + 1
            faults.report(
                token == .wake ? "io_uring poll (wake-up channel)" : "io_uring poll", errno: errno,
                "waking both directions and re-arming it (with back-off while it keeps failing)")
            if failures == 1 {
                owner.trouble[token] = Trouble(failures: 1, rearmAt: nil)
                rearmNow(token, now: now)
            } else {
                owner.trouble[token] = Trouble(failures: failures, rearmAt: now + Self.rearmPause(failures - 1, token))
            }
        }
        for token in ended { rearmNow(token, now: now) }
    }

    /// 1 ms after the first repeated failure, doubling, at most 1 s; at most 10 ms for the
    /// wake-up channel, since every wait is bounded by its retry while it is down and a
    /// wake-up waits for that.
    static func rearmPause(_ n: Int, _ token: PollToken) -> Int64 {
        min(Int64(1_000_000) << min(max(n - 1, 0), 10), token == .wake ? 10_000_000 : 1_000_000_000)
    }

    /// Queues the poll for `token` again if it is still live (or is the wake-up channel's);
    /// when that cannot be done now, schedules a retry. `first`: the first poll of a
    /// registration made off the owner thread (not counted as a re-arm). Owner thread.
    private func rearmNow(_ token: PollToken, now: Int64, first: Bool = false) {
        let r: Int32
        if token == .wake {
            r = queueRequest { cpoller_uring_arm(ring, wakeChannel.readFD, KernelReadiness.input, PollToken.wake.raw) }
            if r == 0 { owner.wakeArmed = true }
        } else {
            let armed: (fd: Int32, receives: Bool)? = state.withLockAnnotated { s in
                guard let fd = s.live[token] else { return nil }
                if !first { s.rearms += 1 }
                return (fd, s.receiving.contains(token))
            }
            guard let armed else {
                owner.trouble[token] = nil
                return
            }
            let mask = pollMask(token, receiving: armed.receives)
            r = queueRequest { cpoller_uring_arm(ring, armed.fd, mask, token.raw) }
        }
        if r == 0 {
            if owner.trouble[token] != nil { owner.trouble[token]!.rearmAt = nil }
            return
        }
        faults.report(first ? "io_uring submission (register)" : "io_uring submission (re-arm)", errno: r, "retrying with back-off")
        let failures = (owner.trouble[token]?.failures ?? 0) + 1
        owner.trouble[token] = Trouble(failures: failures, rearmAt: now + Self.rearmPause(failures, token))
    }

    /// Adds the made-up ended completions of recvs cancelled before they were queued (as many
    /// as fit; the rest go out with the next poll). Owner thread.
    private func appendReceiveEnds(to events: UnsafeMutableBufferPointer<cpoller_event>, after n: Int) -> Int {
        var n = n
        while n < events.count, let token = owner.receiveEndsDue.popLast() {
            events[n] = cpoller_event(token: token.raw | CPOLLER_URING_RECV_BIT, flags: 0, res: -ECANCELED, cqe_flags: 0)
            n += 1
        }
        return n
    }

    /// Queues the recvs waiting in `owner.receiveArms` (those that fail stay there). Owner thread.
    private func retryReceiveArms() {
        let tokens = owner.receiveArms
        owner.receiveArms.removeAll(keepingCapacity: true)
        for token in tokens { armReceiveNow(token) }
    }

    /// Retries what is due (re-arms, cancels) and bounds `timeout` by the next retry. Owner
    /// thread, before a wait.
    private func retryDue(_ timeout: Int64) -> Int64 {
        let now = MonotonicClock.now()
        if !owner.cancels.isEmpty {
            owner.cancels.removeAll { token in queueRequest { cpoller_uring_queue_cancel(ring, token.raw) } == 0 }
        }
        for (token, trouble) in owner.trouble {
            if let at = trouble.rearmAt, at <= now { rearmNow(token, now: now) }
        }
        // A pending cancel is retried every 10 ms at least (it holds a file open meanwhile), and
        // so is a recv that could not be queued (its reader waits for it).
        var next: Int64 = owner.cancels.isEmpty && owner.receiveArms.isEmpty ? .max : now + 10_000_000
        for trouble in owner.trouble.values { if let at = trouble.rearmAt { next = min(next, at) } }
        guard next != .max else { return timeout }
        let left = max(next - now, 0)
        return timeout < 0 ? left : min(timeout, left)
    }

    /// Queues the first poll of a new registration; on failure forgets the registration.
    /// Owner thread.
    private func armNew(fd: Int32, token: PollToken) -> Int32 {
        let r = queueRequest { cpoller_uring_arm(ring, fd, KernelReadiness.interest, token.raw) }
        guard r != 0 else { return 0 }
        faults.report("io_uring submission (register)", errno: r, "the registration fails with it")
        state.withLockAnnotated { s in
            if s.live.removeValue(forKey: token) != nil { s.liveFDs.remove(fd) }
        }
        return r
    }

    /// Cancels the poll for `token` and runs the ring's deferred task work, so that when this
    /// returns the cancelled poll has completed and dropped its file reference (with
    /// DEFER_TASKRUN that happens only when this thread runs its task work): the caller's
    /// close(2) then really closes the file and the peer sees it at once. Owner thread.
    private func removePoll(_ token: PollToken, receives: Bool) -> Int32 {
        owner.trouble[token] = nil
        if !owner.accepting.isEmpty, owner.accepting.remove(token) != nil { cancelAcceptNow(token) }
        if !owner.listening.isEmpty { owner.listening.remove(token) }
        // Its recv, if it was receiving (one that has ended already: the cancel completes with
        // -ENOENT, unseen). A recv stopped for a detach left `receiving` then, and was cancelled.
        if receives { cancelNow(PollToken(raw: token.raw | CPOLLER_URING_RECV_BIT)) }
        var r = queueRequest { cpoller_uring_queue_cancel(ring, token.raw) }
        if r == 0 {
            r = submitQueued()
            if r != 0 {
                faults.report(
                    "io_uring submission (cancel)", errno: r,
                    "the cancel goes out with the next wait; until then the file stays open")
            }
        } else {
            owner.cancels.append(token)
            faults.report(
                "io_uring submission (cancel)", errno: r,
                "the cancel is retried before every wait; until then the file stays open")
        }
        // Even after a failed submit: completions and task work already due are run.
        runTaskWork()
        return r
    }

    /// Tries `prepare` (which takes one submission-queue entry: 0, or -EBUSY when the queue is
    /// full) until it succeeds, submitting what is queued to make room. Returns 0 or an errno.
    /// Owner thread.
    private func queueRequest(_ prepare: () -> Int32) -> Int32 {
        var attempt = 0
        while true {
            let r = prepare()
            if r == 0 { return 0 }
            guard r == -EBUSY else { return -r }
            attempt += 1
            if attempt >= Self.submitAttempts { return EBUSY }
            let submitted = submitQueued()
            if submitted != 0 { return submitted }
        }
    }

    static let submitAttempts = 6

    /// Submits what is queued. EAGAIN and ENOMEM (the kernel is short of memory) and EBUSY
    /// (completions must be reaped first) are retried after reaping (overflowed completions
    /// and deferred task work) and a back-off: a yield, then 1, 2, 4 and 8 ms. Returns 0 or the
    /// last errno; what could not be submitted stays queued for the next submit or wait.
    /// Owner thread.
    private func submitQueued() -> Int32 {
        var attempt = 0
        while true {
            let r = cpoller_uring_submit(ring)
            if r >= 0 { return 0 }
            guard Self.isTransient(-r) else { return -r }
            attempt += 1
            if attempt >= Self.submitAttempts { return -r }
            runTaskWork()
            if attempt == 1 { sched_yield() } else { usleep(UInt32(1000 << (attempt - 2))) }
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
                rearmNow(command.token, now: MonotonicClock.now(), first: true)
            case .remove(let receives):
                // Not `done?.finish(removePoll(...))`: optional chaining would skip the cancel.
                let r = removePoll(command.token, receives: receives)
                command.done?.finish(r)
            case .armReceive(let starts):
                armReceiveNow(command.token, starts: starts)
            case .cancelReceive(let neverArmed):
                cancelReceiveNow(command.token, neverArmed: neverArmed)
            case .cancelSend:
                cancelNow(PollToken(raw: command.token.raw | CPOLLER_URING_SEND_BIT))
            case .armAccept:
                armAcceptNow(command.token)
            case .cancelAccept:
                cancelAcceptNow(command.token)
            }
        }
    }

    /// Flushes overflowed completions into the completion ring and runs the ring's deferred
    /// task work. With DEFER_TASKRUN one call runs only a bounded amount; go on while the
    /// kernel says more is pending, but at most `taskWorkPasses` times: never loop on work that
    /// keeps arriving. Owner thread.
    private func runTaskWork() {
        for _ in 0..<Self.taskWorkPasses {
            _ = cpoller_uring_get_events(ring)
            if cpoller_uring_sq_flags(ring) & UInt32(CPOLLER_URING_SQ_TASKRUN) == 0 { break }
        }
    }

    static let taskWorkPasses = 16

    // MARK: Multishot accept

    func armAccept(fd: Int32, token: PollToken) {
        guard acceptsThroughCompletions else { return }
        if onOwnerThread {
            armAcceptNow(token)
            return
        }
        let queued = state.withLockAnnotated { s in
            guard s.live[token] != nil, !s.isShutdown else { return false }
            s.commands.append(Command(kind: .armAccept, fd: fd, token: token, done: nil))
            return true
        }
        if queued { wake() }
    }

    func cancelAccept(token: PollToken) {
        guard acceptsThroughCompletions else { return }
        if onOwnerThread {
            cancelAcceptNow(token)
            return
        }
        let queued = state.withLockAnnotated { s in
            guard !s.isShutdown else { return false }
            s.commands.append(Command(kind: .cancelAccept, fd: -1, token: token, done: nil))
            return true
        }
        if queued { wake() }
    }

    /// Queues the multishot accept of `token` if it is still live, else (when the queue is
    /// full) schedules it for the next wait. Owner thread.
    private func armAcceptNow(_ token: PollToken) {
        guard let fd = state.withLockAnnotated({ s in s.live[token] }) else { return }
        owner.accepting.insert(token)
        if owner.listening.insert(token).inserted { updateMask(token, KernelReadiness.receivingInterest) }
        let r = queueRequest { cpoller_uring_arm_accept(ring, fd, token.raw | CPOLLER_URING_ACCEPT_BIT) }
        if r != 0 {
            faults.report("io_uring submission (accept)", errno: r, "retrying before the next wait")
            owner.acceptArms.append(token)
        }
    }

    /// Cancels the multishot accept of `token` (its last completion comes back ENDED). One
    /// still waiting to be queued is queued first: the cancel then finds it (both go out in
    /// order), so its ENDED completion comes as for any other. Owner thread.
    private func cancelAcceptNow(_ token: PollToken) {
        if let index = owner.acceptArms.firstIndex(of: token) {
            owner.acceptArms.remove(at: index)
            armAcceptNow(token)
        }
        let accept = PollToken(raw: token.raw | CPOLLER_URING_ACCEPT_BIT)
        if queueRequest({ cpoller_uring_queue_cancel(ring, accept.raw) }) != 0 { owner.cancels.append(accept) }
    }

    /// Queues the accepts waiting in `owner.acceptArms`; returns `timeout` bounded by the next
    /// retry (10 ms) while some still wait. Owner thread.
    private func retryAcceptArms(_ timeout: Int64) -> Int64 {
        let tokens = owner.acceptArms
        owner.acceptArms.removeAll(keepingCapacity: true)
        for token in tokens where owner.accepting.contains(token) { armAcceptNow(token) }
        guard !owner.acceptArms.isEmpty else { return timeout }
        return timeout < 0 ? 10_000_000 : min(timeout, 10_000_000)
    }

    /// One accept completion in the core's terms: the registration's token, ACCEPTED, and
    /// ENDED when the kernel ended the accept (no IORING_CQE_F_MORE). Owner thread.
    @inline(__always)
    private func acceptCompletion(_ completion: cpoller_event) -> cpoller_event {
        var event = completion
        event.token &= ~CPOLLER_URING_ACCEPT_BIT
        event.flags = UInt32(CPOLLER_EV_ACCEPTED)
        if event.cqe_flags & UInt32(CPOLLER_URING_CQE_F_MORE) == 0 {
            event.flags |= UInt32(CPOLLER_EV_ENDED)
            owner.accepting.remove(event.pollToken)
        }
        return event
    }

    /// At shutdown: closes the descriptors that accept completions still in the ring carry
    /// (nobody will dispatch them). Owner thread, after the last poll.
    private func closeUnreapedAccepts() {
        guard acceptsThroughCompletions else { return }
        runTaskWork()
        let events = UnsafeMutableBufferPointer<cpoller_event>.allocate(capacity: 64)
        defer { events.deallocate() }
        while true {
            let n = reap(into: events)
            for event in events[0..<n]
            where event.token & CPOLLER_URING_ACCEPT_BIT != 0 && event.token & CPOLLER_URING_CONTROL_BIT == 0 && event.res >= 0 {
                _ = Glibc.close(event.res)
                #if DEBUG
                acceptsClosedAtShutdown.add(1, ordering: .relaxed)
                #endif
            }
            if n < events.count { break }
        }
    }

    // MARK: Test seams

    #if DEBUG
    var kernelFD: Int32 { ringFD }
    /// Multishot polls re-armed so far.
    var rearmCount: Int { state.withLockAnnotated { $0.rearms } }
    /// Registrations not deregistered yet.
    var liveRegistrationCount: Int { state.withLockAnnotated { $0.live.count } }
    /// Commands from other threads that the owner has not applied yet.
    var queuedCommandCount: Int { state.withLockAnnotated { $0.commands.count } }
    /// Completion-queue overflows seen so far. Owner thread only.
    var overflowCount: UInt64 { owner.overflows }
    /// Points the poll of `token` at `mask` as completion receive would. Owner thread.
    func updateMaskForTests(_ token: PollToken, _ mask: UInt32) { updateMask(token, mask) }
    /// Mask updates the kernel refused (neither -ENOENT nor -EALREADY) so far.
    let maskUpdatesRefused = Atomic<Int>(0)
    /// Accepted descriptors that shutdown found in the ring, undispatched, and closed.
    let acceptsClosedAtShutdown = Atomic<Int>(0)
    /// Poll completions that reported input (EPOLLIN) for a registration so far.
    let inputEvents = Atomic<Int>(0)
    /// Recv completions that found the buffer ring empty (-ENOBUFS) so far.
    let receiveStarvations = Atomic<Int>(0)
    /// Sends queued on the ring so far, and cancels asked of them.
    let ringSends = Atomic<Int>(0)
    let ringSendCancels = Atomic<Int>(0)
    /// Recvs re-armed after the kernel ended them with data. Owner thread only.
    var receiveRearmCount: Int { owner.receiveRearms }
    #endif

    // MARK: Descriptors

    func isPollerDescriptor(_ fd: Int32) -> Bool {
        fd == ringFD || fd == probeEpollFD || wakeChannel.isOwnDescriptor(fd)
    }

    func shutdown() {
        let waiting: [Command] = state.withLockAnnotated { s in
            s.isShutdown = true
            defer { s.commands.removeAll() }
            return s.commands
        }
        // Destroying the ring cancels every poll; release anyone waiting for a command (an
        // unapplied registration fails with EBADF).
        for command in waiting { command.done?.parker.unpark() }
        closeUnreapedAccepts()
        wakeChannel.close()
        _ = Glibc.close(probeEpollFD)
        cpoller_uring_destroy(ring)
    }
}
