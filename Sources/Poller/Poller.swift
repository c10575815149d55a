import CPoller
import Glibc
import Synchronization

#if !os(Linux)
#error("Poller needs Linux: its backends are epoll and io_uring. There is no kqueue backend yet (macOS, the BSDs).")
#endif

/// A network poller: one thread that waits for readiness on many descriptors and wakes the
/// tasks or threads parked on them, with Go's netpoll semantics.
///
/// Create one with a chosen backend, or use the process-wide ``shared()`` poller that the
/// `runtime_poll*` functions use. Register descriptors with ``register(_:)`` and wait on the
/// returned ``PollDescriptor``.
///
/// The poller thread also runs tasks: see ``executor``. A poller lives until
/// ``shutdown()``; the shared one lives for the whole process.
///
/// ```swift
/// let poller = try Poller(backend: .auto)
/// let pd = try poller.register(fd)
/// try await pd.wait(for: .read)      // parks until fd is readable
/// ```
public final class Poller: Sendable {
    /// The backend in use.
    public let backendKind: BackendKind
    /// Why this backend was chosen ("auto: epoll (…)", "io_uring requested").
    public let backendReason: String
    /// The poller thread as a `TaskExecutor`.
    public let executor: PollerExecutor

    let backend: any PollerBackend
    let table = DescriptorTable()
    /// The deadline heap (PollerDeadlines.swift). Lock order: a slot's lock, then this one.
    let timers = Mutex(TimerState())
    let runQueue: RunQueue
    /// The pthread id of the poller thread.
    let threadID: UInt64
    /// Waiters parked on this poller's descriptors (``parkedWaiterCount``).
    let parked = Atomic<Int>(0)
    /// Signalled once the loop has stopped and closed everything (PollerStartup.swift).
    let loopExited: ParkerBox
    /// Set once by ``shutdown()``; from then on registrations fail and waits that ignore
    /// errors end.
    let shutdownStarted = Atomic<Bool>(false)
    /// How many events the loop's last poll returned: how busy the poller is, for completion
    /// send's choice (RingSend.swift). Written and read on the poller thread only.
    nonisolated(unsafe) var lastPollBatch = 0
    /// The batch from which a write goes through the ring: the backend's `sendMinimumBatch`,
    /// or `Int.max` without completion send. A stored copy: every write asks (RingSend.swift),
    /// and the backend is an existential.
    let ringSendBatch: Int
    #if DEBUG
    /// Test seams (PollerTestSeams.swift); inert unless a test sets them.
    let hooks: TestHooks
    #endif

    /// Starts the poller thread (PollerStartup.swift) and hands it this poller once every
    /// stored property is set.
    convenience init(backend choice: BackendChoice, options: Options) throws(PollerError) {
        let (kind, reason) = try choice.resolve(autoPrefersIOUring: options.autoPrefersIOUring)
        try self.init(kind: kind, reason: reason, options: options)
    }

    /// Starts a poller on a backend already resolved (a group resolves `.auto` once for all
    /// its members).
    init(kind: BackendKind, reason: String, options: Options) throws(PollerError) {
        let (start, thread, backend) = try PollerThreadStart.launch(kind: kind, options: options)
        self.backend = backend
        ringSendBatch = backend.sendsThroughCompletions ? backend.sendMinimumBatch : .max
        backendKind = kind
        backendReason = "\(reason); \(backend.receiveSummary); \(backend.sendSummary); \(backend.acceptSummary)"
        runQueue = RunQueue(backend: backend)
        executor = PollerExecutor(runQueue: runQueue)
        threadID = thread
        loopExited = start.exited
        #if DEBUG
        hooks = options.hooks
        #endif
        start.handOff(to: self)
        if PollerLog.enabled {
            PollerLog.write("poller: backend \(kind) (\(reason))")
        }
    }

    /// The number of waiters (tasks and threads) currently parked on this poller's
    /// descriptors. Zero whenever nobody waits; tests check it to prove nobody is stranded.
    public var parkedWaiterCount: Int { parked.load(ordering: .sequentiallyConsistent) }

    /// The number of registered (open) descriptors.
    public var openDescriptorCount: Int { table.openCount }

    /// Whether `fd` is one of the poller's own descriptors (the epoll or io_uring descriptor,
    /// the wake-up eventfd or pipe): Go's `runtime_isPollServerDescriptor`.
    /// False once ``shutdown()`` has started: the numbers are then being closed, and the
    /// kernel may hand them to new descriptors.
    public func isPollerDescriptor(_ fd: Int32) -> Bool {
        !shutdownStarted.load(ordering: .acquiring) && backend.isPollerDescriptor(fd)
    }

    /// Whether the wake-up channel is a self-pipe (eventfd was unavailable).
    public var usesSelfPipeWakeup: Bool { backend.wakeChannel.isPipe }

    // MARK: Descriptor operations (Go's runtime_poll* bodies; the state transitions are
    // SlotState's, in PollDescriptorState.swift; deadlines are in PollerDeadlines.swift,
    // waits in PollerWaits.swift)

    /// Registers `fd` for readiness in both directions (Go's `runtime_pollOpen`).
    ///
    /// The descriptor should be non-blocking. Readiness that is already there is reported.
    /// Close it with ``PollDescriptor/unblock()`` then ``PollDescriptor/close()`` before
    /// closing `fd` itself.
    ///
    /// - Throws: ``PollError/registrationFailed(errno:)``: EBADF for a negative or closed
    ///   descriptor, EPERM for a regular file or directory, EINVAL for the poller's own
    ///   descriptors, EEXIST if `fd` is already registered here, EBADF after shutdown.
    public func register(_ fd: Int32) throws(PollError) -> PollDescriptor {
        guard fd >= 0 else { throw .registrationFailed(errno: EBADF) }
        // Shutdown first: the backend's descriptor numbers are stale once it has closed them.
        if shutdownStarted.load(ordering: .acquiring) { throw .registrationFailed(errno: EBADF) }
        if backend.isPollerDescriptor(fd) { throw .registrationFailed(errno: EINVAL) }
        #if DEBUG
        hooks.registerAfterShutdownCheck?()
        #endif
        // A shutdown may start from here on. It closes the backend before it unblocks the open
        // slots, so either the backend refuses this registration (EBADF, the slot is retired)
        // or it was accepted before the close, hence the slot was opened before the sweep,
        // which then finds it and marks it closing. No registration outlives the poller
        // unseen (a wait on one would park forever).
        let (slot, generation) = openSlot(fd: fd)
        let token = PollToken(slot: slot.index, generation: generation)
        let r = backend.register(fd: fd, token: token)
        guard r == 0 else {
            retire(slot)
            throw .registrationFailed(errno: r)
        }
        return PollDescriptor(poller: self, slot: slot, generation: generation, fd: fd)
    }

    /// Takes a free slot and reinitialises it for `fd` (Go's pollOpen without the kernel
    /// registration). Returns the slot and its current generation.
    func openSlot(fd: Int32) -> (DescriptorSlot, UInt32) {
        let slot = table.allocate()
        let generation = slot.state.withLockAnnotated { s in s.open(fd: fd) }
        return (slot, generation)
    }

    /// Frees a slot whose registration failed: stale handles and kernel tokens for its
    /// generation stop matching.
    func retire(_ slot: DescriptorSlot) {
        _ = slot.state.withLockAnnotated { s in s.retire() }
        table.release(slot)
    }

    /// Go's pollUnblock: mark closing, wake both waiters, stop the timers. Later waits fail
    /// with `.closing`. Idempotent (Go throws on a second unblock).
    func unblock(_ slot: DescriptorSlot, generation: UInt32) {
        var woken: [(Waiter, WakeReason)] = []
        var stopWaiter: UnsafeContinuation<Void, Never>? = nil
        slot.state.withLockAnnotated { s in
            if s.unblock(generation: generation, woken: &woken) { cancelTimers(slot) }
            // A send in flight is cancelled; its writer waits for the completion (RingSend.swift).
            if s.isCurrent(generation) { cancelSendIfStopped(&s, slot: slot) }
            // A detach waiting for its stopped recv (RingReceive.swift) is released too.
            if s.isCurrent(generation) { swap(&stopWaiter, &s.received.stopWaiter) }
        }
        resume(&woken)
        stopWaiter?.resume()
    }

    /// Go's pollClose: deregister and recycle. Requires a prior unblock and no parked waiter.
    func close(_ slot: DescriptorSlot, generation: UInt32) throws(PollError) {
        var queued: [Int32] = []
        let fd = try slot.state.withLockAnnotated { s throws(PollError) -> Int32 in
            let fd = try s.close(generation: generation)
            // Unread bytes go with the registration; their buffers go back to the kernel.
            if s.received.isOn { s.received.discard(into: backend.receiveBuffers) }
            // So do connections accepted and never taken (RingAccept.swift).
            if s.accepted.isOn { queued = s.accepted.discard() }
            return fd
        }
        if !queued.isEmpty { Self.closeQueued(queued) }
        // Deregister before the caller closes fd: a DEL on a closed (maybe reused) number
        // could hit someone else's registration.
        _ = backend.deregister(fd: fd, token: PollToken(slot: slot.index, generation: generation))
        table.release(slot)
    }

    /// Go's pollReset: fail on a pending error, else forget latched readiness.
    func reset(_ slot: DescriptorSlot, generation: UInt32, mode: PollMode) -> PollError? {
        guard mode == .read || mode == .write || mode == .readWrite else { return .invalidMode }
        return slot.state.withLockAnnotated { s in s.reset(mode, generation: generation) }
    }
}
