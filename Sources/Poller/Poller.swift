import CPoller
import Glibc
import Synchronization

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
    let timers = Mutex(TimerState())
    let runQueue: RunQueue
    /// The pthread id of the poller thread.
    let threadID: UInt64
    private let parked = Atomic<Int>(0)
    private let loopExited: ParkerBox
    private let shutdownStarted = Atomic<Bool>(false)
    let hooks: TestHooks

    struct TimerState {
        var heap = DeadlineHeap()
        /// When the sleeping poller will wake up by itself: `.min` while it is awake (it will
        /// look at the heap before sleeping), `.max` when it sleeps with no timeout. A new
        /// deadline earlier than this must wake it.
        var sleepUntil: Int64 = .min
    }

    /// Starts a poller thread with the given backend choice.
    ///
    /// - Throws: ``PollerError/backendUnavailable(_:reason:)`` when `.ioUring` is forced
    ///   where io_uring cannot work (the reason names the errno and the likely cause), or
    ///   ``PollerError/system(call:errno:)``.
    public convenience init(backend choice: BackendChoice) throws(PollerError) {
        try self.init(backend: choice, options: Options())
    }

    /// Starts a poller with the backend named by `POLLER_BACKEND` (`auto` when unset).
    public convenience init() throws(PollerError) {
        try self.init(backend: try BackendChoice.fromEnvironment())
    }

    /// Set-up knobs for tests and tools.
    struct Options {
        var forcePipeWake = false
        var autoPrefersIOUring = BackendChoice.autoPrefersIOUring
        var threadName = "poller"
        var hooks = TestHooks()
    }

    /// Seams that widen race windows which are otherwise a few instructions wide, so tests
    /// can force the interleavings the code must survive. Inert (nil) outside tests.
    struct TestHooks: Sendable {
        /// In `register`, after the shutdown check and before the slot is opened.
        var registerAfterShutdownCheck: (@Sendable () -> Void)?
        /// On the poller thread during shutdown, after the backend is closed and before the
        /// open descriptors are unblocked.
        var shutdownBeforeSweep: (@Sendable () -> Void)?
    }

    init(backend choice: BackendChoice, options: Options) throws(PollerError) {
        let (kind, reason) = try choice.resolve(autoPrefersIOUring: options.autoPrefersIOUring)
        // The backend is created on the poller thread itself: an io_uring ring set up with
        // SINGLE_ISSUER may only ever be used by the thread that created it.
        let start = PollerThreadStart(kind: kind, options: options)
        var thread: UInt64 = 0
        let context = Unmanaged.passRetained(start).toOpaque()
        let err = cpoller_thread_start(&thread, pollerThreadMain, context)
        guard err == 0 else {
            Unmanaged<PollerThreadStart>.fromOpaque(context).release()
            throw .system(call: "pthread_create", errno: err)
        }
        start.created.park()
        let backend: any PollerBackend
        switch start.result.withLockAnnotated({ $0 }) {
        case .success(let b)?:
            backend = b
        case .failure(let error)?:
            _ = cpoller_thread_join(thread)
            throw error
        case nil:
            _ = cpoller_thread_join(thread)
            throw .system(call: "poller thread start", errno: EINVAL)
        }
        self.backend = backend
        backendKind = kind
        backendReason = reason
        runQueue = RunQueue(backend: backend)
        executor = PollerExecutor(runQueue: runQueue)
        threadID = thread
        loopExited = start.exited
        hooks = options.hooks
        start.poller.withLockAnnotated { $0 = self }
        start.go.unpark()
        if PollerLog.enabled {
            PollerLog.write("poller: backend \(kind) (\(reason))")
        }
    }

    /// The process-wide poller used by the `runtime_poll*` functions, started on first use
    /// with the backend named by `POLLER_BACKEND`. Thread-safe; every call returns the same
    /// poller or the same error.
    public static func shared() throws(PollerError) -> Poller {
        try sharedPoller.withLockAnnotated { result throws(PollerError) -> Poller in
            if result == nil {
                do throws(PollerError) {
                    result = .success(try Poller())
                } catch {
                    result = .failure(error)
                }
            }
            return try result!.get()
        }
    }

    /// The shared poller if it has been started.
    static var sharedIfStarted: Poller? {
        sharedPoller.withLockAnnotated { result in
            if case .success(let poller)? = result { return poller }
            return nil
        }
    }

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
        if backend.isPollerDescriptor(fd) { throw .registrationFailed(errno: EINVAL) }
        if shutdownStarted.load(ordering: .acquiring) { throw .registrationFailed(errno: EBADF) }
        hooks.registerAfterShutdownCheck?()
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
        let generation: UInt32 = slot.state.withLockAnnotated { s in
            // Bump (not reset) the timer sequences so a timer left by the previous user of
            // this slot is stale.
            precondition(!s.readSemaphore.isParked && !s.writeSemaphore.isParked,
                         "poller: waiter on a free descriptor slot")
            s.isOpen = true
            s.fd = fd
            s.closing = false
            s.eventErr = false
            s.sawHangUp = false
            s.readDeadline = 0
            s.writeDeadline = 0
            s.readSequence &+= 1
            s.writeSequence &+= 1
            s.readTimerArmed = false
            s.writeTimerArmed = false
            s.readSemaphore = .empty
            s.writeSemaphore = .empty
            return s.generation
        }
        return (slot, generation)
    }

    /// The number of waiters (tasks and threads) currently parked on this poller's
    /// descriptors. Zero whenever nobody waits; tests check it to prove nobody is stranded.
    public var parkedWaiterCount: Int { parked.load(ordering: .sequentiallyConsistent) }

    /// The number of registered (open) descriptors.
    public var openDescriptorCount: Int { table.openCount }

    /// Whether `fd` is one of the poller's own descriptors (the epoll or io_uring descriptor,
    /// the wake-up eventfd or pipe): Go's `runtime_isPollServerDescriptor`.
    public func isPollerDescriptor(_ fd: Int32) -> Bool { backend.isPollerDescriptor(fd) }

    /// Whether the wake-up channel is a self-pipe (eventfd was unavailable).
    public var usesSelfPipeWakeup: Bool { backend.wakeChannel.isPipe }

    /// Stops the poller thread: every descriptor still open is unblocked (its waiters return
    /// ``PollError/closing``), the thread exits, and the backend's descriptors are closed.
    /// Tasks that prefer ``executor`` afterwards run on the global executor. Idempotent.
    /// Called from a task running on ``executor`` (that is, on the poller thread), it requests
    /// the stop and returns at once instead of waiting for the thread, which would wait for
    /// itself; the thread then ends when that task's job returns.
    public func shutdown() {
        let onPollerThread = cpoller_thread_id() == threadID
        guard shutdownStarted.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent)
            .exchanged
        else {
            // A second call waits for the first one's stop, except on the poller thread,
            // which cannot see its own loop end (issue 11: a second shutdown from the
            // executor parked the poller thread on its own exit).
            guard !onPollerThread else { return }
            loopExited.park()
            loopExited.unpark()
            return
        }
        runQueue.state.withLockAnnotated { $0.stopRequested = true }
        backend.wake()
        if onPollerThread {
            // Nobody else will join the thread: let it release its stack when it ends.
            _ = cpoller_thread_detach(threadID)
        } else {
            _ = cpoller_thread_join(threadID)
        }
    }

    // MARK: The loop

    /// The poller thread's loop: poll the backend (without blocking while jobs are queued),
    /// hand readiness to the parked waiters, fire due deadlines, run the queued jobs.
    fileprivate func runLoop() {
        let capacity = 256
        let events = UnsafeMutableBufferPointer<cpoller_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        var batch: [UnownedJob] = []
        var slots: [DescriptorSlot?] = []
        var indices: [UInt32] = []
        var woken: [(Waiter, WakeReason)] = []
        var expired: [DeadlineHeap.Timer] = []
        let taskExecutor = executor.asUnownedTaskExecutor()
        loop: while true {
            var timeout: Int64 = 0
            var slept = false
            switch runQueue.prepareToSleep() {
            case .stop: break loop
            case .work: break
            case .sleep:
                slept = true
                timeout = timeoutUntilNextDeadline()
            }
            let n = backend.poll(into: events, timeoutNanos: timeout)
            if slept {
                runQueue.awake()
                timers.withLockAnnotated { $0.sleepUntil = .min }
            }
            if n > 0 {
                dispatch(UnsafeBufferPointer(rebasing: events[0..<n]), &indices, &slots, &woken)
            }
            fireDeadlines(&expired, &woken)
            runQueue.takeAll(into: &batch)
            for job in batch { job.runSynchronously(on: taskExecutor) }
            batch.removeAll(keepingCapacity: true)
        }
        closeEverything()
    }

    /// The longest timeout ever handed to the kernel: one day.
    ///
    /// Why: a deadline at the end of the clock (overflowing deadlines clamp to `Int64.max`)
    /// makes `earliest - now` about `Int64.max`, and the kernel adds its own current time to a
    /// relative timeout. io_uring's EXT_ARG wait does that with a plain 64-bit add
    /// (io_cqring_wait: `ktime_add(timeout, start_time)`), which wraps to an instant in the
    /// past. On Linux 6.18 the hrtimer code happens to turn that negative expiry into "never"
    /// (ktime_add_safe), so nothing spins there (measured: 0 µs of poller CPU per second, both
    /// backends); but a poller must not depend on what each kernel makes of an overflowed
    /// expiry. A bounded timeout never reaches that arithmetic, and costs one wake-up a day:
    /// the loop recomputes the timeout after every wake-up, so a far deadline is slept towards
    /// in steps. (Go caps epoll's timeout at 1e9 ms for the same reason; epoll_pwait2 and the
    /// millisecond epoll_wait path clamp safely already.)
    static let maxSleepNanos: Int64 = 86_400 * 1_000_000_000

    /// The timeout for a blocking poll with the earliest deadline at `earliest` (nil: none):
    /// -1 (forever) without a deadline, 0 when it is due, else the time left, at most
    /// ``maxSleepNanos``.
    static func sleepTimeout(earliest: Int64?, now: Int64) -> Int64 {
        guard let earliest else { return -1 }
        if earliest <= now { return 0 }
        // No overflow: earliest > now, and now (CLOCK_MONOTONIC) is never negative.
        return min(earliest - now, maxSleepNanos)
    }

    /// Timeout for the next blocking poll, recording when the poller will wake by itself.
    private func timeoutUntilNextDeadline() -> Int64 {
        timers.withLockAnnotated { t in
            let now = MonotonicClock.now()
            let timeout = Poller.sleepTimeout(earliest: t.heap.earliest, now: now)
            // A deadline earlier than sleepUntil wakes the poller; one later is picked up when
            // it wakes by itself, at the (possibly capped) timeout.
            if timeout < 0 {
                t.sleepUntil = .max
            } else if timeout > 0 {
                t.sleepUntil = now + timeout
            }
            return timeout
        }
    }

    /// Go's netpoll event processing: readiness from the kernel to the semaphores.
    private func dispatch(
        _ events: UnsafeBufferPointer<cpoller_event>,
        _ indices: inout [UInt32],
        _ slots: inout [DescriptorSlot?],
        _ woken: inout [(Waiter, WakeReason)]
    ) {
        indices.removeAll(keepingCapacity: true)
        for event in events { indices.append(event.pollToken.slot) }
        slots.removeAll(keepingCapacity: true)
        indices.withUnsafeBufferPointer { table.resolve($0, into: &slots) }
        for (i, event) in events.enumerated() {
            guard let slot = slots[i] else { continue }
            let token = event.pollToken
            slot.state.withLockAnnotated { s in
                // A stale event: the registration was closed, maybe reopened for another fd.
                guard s.isCurrent(token.generation) else { return }
                s.eventErr = event.isError
                if event.isHangup || event.isError || event.isPriority { s.sawHangUp = true }
                if event.isReadable, let w = s.unblock(.read, ioReady: true) { woken.append((w, .ready)) }
                if event.isWritable, let w = s.unblock(.write, ioReady: true) { woken.append((w, .ready)) }
            }
        }
        resume(&woken)
    }

    /// Runs the deadline timers that are due (Go's netpolldeadlineimpl).
    private func fireDeadlines(_ expired: inout [DeadlineHeap.Timer], _ woken: inout [(Waiter, WakeReason)]) {
        let now = MonotonicClock.now()
        let due = timers.withLockAnnotated { t -> Bool in
            guard let earliest = t.heap.earliest, earliest <= now else { return false }
            t.heap.popExpired(now: now, into: &expired)
            return true
        }
        guard due else { return }
        // The heap's lock is released: a timer callback takes the slot's lock (Go #35532).
        for timer in expired {
            guard let slot = table.slot(at: timer.slot) else { continue }
            slot.state.withLockAnnotated { s in
                let current = timer.isWrite ? s.writeSequence : s.readSequence
                guard s.isOpen, current == timer.sequence else { return }  // stale timer
                // The deadline was moved later after this entry was armed: re-arm it there.
                // (For a combined timer the two deadlines are equal.)
                let deadline = timer.isWrite ? s.writeDeadline : s.readDeadline
                if deadline > now {
                    if timer.isWrite { s.writeTimerWhen = deadline } else { s.readTimerWhen = deadline }
                    _ = schedule(slot, when: deadline, isWrite: timer.isWrite, both: timer.expiresBoth, sequence: timer.sequence)
                    return
                }
                if timer.isWrite {
                    s.writeDeadline = -1
                } else {
                    s.readDeadline = -1
                    if timer.expiresBoth { s.writeDeadline = -1 }
                }
                if !timer.isWrite, let w = s.unblock(.read, ioReady: false) { woken.append((w, .interrupted)) }
                if timer.isWrite || timer.expiresBoth, let w = s.unblock(.write, ioReady: false) {
                    woken.append((w, .interrupted))
                }
            }
        }
        expired.removeAll(keepingCapacity: true)
        resume(&woken)
    }

    /// Resumes waiters taken out of their semaphores; always called with no lock held.
    func resume(_ woken: inout [(Waiter, WakeReason)]) {
        guard !woken.isEmpty else { return }
        parked.subtract(woken.count, ordering: .sequentiallyConsistent)
        for (waiter, reason) in woken { waiter.resume(reason) }
        woken.removeAll(keepingCapacity: true)
    }

    func didPark() { parked.add(1, ordering: .sequentiallyConsistent) }
    func didUnpark(_ count: Int = 1) { parked.subtract(count, ordering: .sequentiallyConsistent) }

    /// Poller thread, after the loop: close the backend, unblock what is still open, and route
    /// later jobs to the global executor.
    ///
    /// The backend is closed before the sweep: a `register` racing this either reaches the
    /// backend after the close and is refused, or opened its slot before the sweep, which then
    /// marks it closing. Sweeping first would miss a slot opened just after the sweep whose
    /// registration still reached the live backend (issue 11).
    private func closeEverything() {
        var leftover: [UnownedJob] = []
        runQueue.state.withLockAnnotated { s in
            s.stopped = true
            swap(&s.jobs, &leftover)
        }
        backend.shutdown()
        hooks.shutdownBeforeSweep?()
        for slot in table.allSlots {
            let generation: UInt32? = slot.state.withLockAnnotated { s in s.isOpen ? s.generation : nil }
            if let generation { unblock(slot, generation: generation) }
        }
        for job in leftover { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
        loopExited.unpark()
    }

    // MARK: Descriptor operations (Go's runtime_poll* bodies)

    /// Frees a slot after open failed or close: stale handles and kernel tokens for the old
    /// generation stop matching.
    func retire(_ slot: DescriptorSlot) {
        slot.state.withLockAnnotated { s in
            s.isOpen = false
            s.fd = -1
            s.generation = PollToken.nextGeneration(after: s.generation)
        }
        table.release(slot)
    }

    /// Go's pollUnblock: mark closing, wake both waiters, stop the timers. Later waits fail
    /// with `.closing`. Idempotent (Go throws on a second unblock).
    func unblock(_ slot: DescriptorSlot, generation: UInt32) {
        var woken: [(Waiter, WakeReason)] = []
        slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation) else { return }
            // Waiters are taken even when already closing: the only ones that can be parked
            // then ignore errors (runtime_pollWaitCanceled), and shutdown must still wake them.
            if let w = s.unblock(.read, ioReady: false) { woken.append((w, .interrupted)) }
            if let w = s.unblock(.write, ioReady: false) { woken.append((w, .interrupted)) }
            guard !s.closing else { return }
            s.closing = true
            s.readSequence &+= 1
            s.writeSequence &+= 1
            if s.readTimerArmed || s.writeTimerArmed {
                timers.withLockAnnotated { t in
                    t.heap.cancel(slot: slot.index, isWrite: false)
                    t.heap.cancel(slot: slot.index, isWrite: true)
                }
                s.readTimerArmed = false
                s.writeTimerArmed = false
            }
        }
        resume(&woken)
    }

    /// Go's pollClose: deregister and recycle. Requires a prior unblock and no parked waiter.
    func close(_ slot: DescriptorSlot, generation: UInt32) throws(PollError) {
        let fd: Int32 = try slot.state.withLockAnnotated { s throws(PollError) -> Int32 in
            guard s.isCurrent(generation) else { throw .closing }
            guard s.closing else { throw .notUnblocked }
            guard !s.readSemaphore.isParked, !s.writeSemaphore.isParked else { throw .waiterParked }
            let fd = s.fd
            // Retire the generation first: from here on, kernel events and handles for it
            // are stale.
            s.isOpen = false
            s.fd = -1
            s.readSemaphore = .empty
            s.writeSemaphore = .empty
            s.generation = PollToken.nextGeneration(after: s.generation)
            return fd
        }
        // Deregister before the caller closes fd: a DEL on a closed (maybe reused) number
        // could hit someone else's registration.
        _ = backend.deregister(fd: fd, token: PollToken(slot: slot.index, generation: generation))
        table.release(slot)
    }

    /// Go's pollReset: fail on a pending error, else forget latched readiness.
    func reset(_ slot: DescriptorSlot, generation: UInt32, mode: PollMode) -> PollError? {
        guard mode == .read || mode == .write || mode == .readWrite else { return .invalidMode }
        return slot.state.withLockAnnotated { s -> PollError? in
            guard s.isCurrent(generation) else { return .closing }
            if let error = s.pendingError(mode) { return error }
            if mode.contains(.read), case .ready = s.readSemaphore { s.readSemaphore = .empty }
            if mode.contains(.write), case .ready = s.writeSemaphore { s.writeSemaphore = .empty }
            return nil
        }
    }

    /// Go's pollSetDeadline with an absolute deadline: 0 none, < 0 already expired, > 0 a
    /// CLOCK_MONOTONIC instant in nanoseconds.
    func setDeadline(_ slot: DescriptorSlot, generation: UInt32, deadline d: Int64, mode: PollMode) {
        guard mode == .read || mode == .write || mode == .readWrite else { return }
        var woken: [(Waiter, WakeReason)] = []
        var wakePoller = false
        slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation), !s.closing else { return }
            let rd0 = s.readDeadline, wd0 = s.writeDeadline
            let combo0 = rd0 > 0 && rd0 == wd0
            if mode.contains(.read) { s.readDeadline = d }
            if mode.contains(.write) { s.writeDeadline = d }
            let rd = s.readDeadline, wd = s.writeDeadline
            // Equal read and write deadlines share one timer: the read timer, expiring both.
            let combo = rd > 0 && rd == wd
            if !s.readTimerArmed && rd > 0 {
                s.readTimerArmed = true
                s.readTimerWhen = rd
                wakePoller = schedule(slot, when: rd, isWrite: false, both: combo, sequence: s.readSequence)
                    || wakePoller
            } else if s.readTimerArmed && rd0 > 0 && rd >= s.readTimerWhen && combo == combo0 {
                // Moved later (or kept) while pending: the entry stays; it re-arms when it fires.
            } else if s.readTimerArmed && (rd != rd0 || combo != combo0) {
                s.readSequence &+= 1
                if rd > 0 {
                    s.readTimerWhen = rd
                    wakePoller = schedule(slot, when: rd, isWrite: false, both: combo, sequence: s.readSequence)
                        || wakePoller
                } else {
                    s.readTimerArmed = false
                    timers.withLockAnnotated { $0.heap.cancel(slot: slot.index, isWrite: false) }
                }
            }
            if !s.writeTimerArmed && wd > 0 && !combo {
                s.writeTimerArmed = true
                s.writeTimerWhen = wd
                wakePoller = schedule(slot, when: wd, isWrite: true, both: false, sequence: s.writeSequence)
                    || wakePoller
            } else if s.writeTimerArmed && wd0 > 0 && !combo0 && !combo && wd >= s.writeTimerWhen {
                // Moved later (or kept) while pending, still on its own timer: as for reads.
            } else if s.writeTimerArmed && (wd != wd0 || combo != combo0) {
                s.writeSequence &+= 1
                if wd > 0 && !combo {
                    s.writeTimerWhen = wd
                    wakePoller = schedule(slot, when: wd, isWrite: true, both: false, sequence: s.writeSequence)
                        || wakePoller
                } else {
                    s.writeTimerArmed = false
                    timers.withLockAnnotated { $0.heap.cancel(slot: slot.index, isWrite: true) }
                }
            }
            // A deadline in the past wakes the waiters now, with a timeout.
            if rd < 0, let w = s.unblock(.read, ioReady: false) { woken.append((w, .interrupted)) }
            if wd < 0, let w = s.unblock(.write, ioReady: false) { woken.append((w, .interrupted)) }
        }
        resume(&woken)
        if wakePoller { backend.wake() }
    }

    /// Arms a timer; true if the sleeping poller must be woken to honour it.
    private func schedule(_ slot: DescriptorSlot, when: Int64, isWrite: Bool, both: Bool, sequence: UInt64) -> Bool {
        timers.withLockAnnotated { t in
            t.heap.schedule(.init(when: when, slot: slot.index, isWrite: isWrite, expiresBoth: both, sequence: sequence))
            return when < t.sleepUntil
        }
    }

    /// Go's pollWait (and, with `ignoringErrors`, pollWaitCanceled): returns nil once the
    /// direction is ready, or the error that ended the wait.
    @usableFromInline
    nonisolated(nonsending) func wait(
        _ slot: DescriptorSlot, generation: UInt32, mode: PollMode, cancellable: Bool, ignoringErrors: Bool = false,
        afterDrainingRead: Bool = false
    ) async -> PollError? {
        guard mode == .read || mode == .write else { return .invalidMode }
        while true {
            // Fast path: pending error, or latched readiness, without suspending.
            let step: WaitStep = slot.state.withLockAnnotated { s in
                switch s.checkBeforeWait(
                    mode, generation: generation, ignoringErrors: ignoringErrors, afterDrainingRead: afterDrainingRead)
                {
                case .ready: return .done
                case .failed(let error): return .fail(error)
                case .mustPark:
                    s.nextWaiterID &+= 1
                    return .park(id: s.nextWaiterID)
                }
            }
            guard case .park(let id) = step else {
                if case .fail(let error) = step { return error }
                return nil
            }
            let reason: WakeReason
            if cancellable {
                reason = await withTaskCancellationHandler {
                    await park(
                        slot, generation: generation, mode: mode, id: id, ignoringErrors: ignoringErrors,
                        afterDrainingRead: afterDrainingRead)
                } onCancel: {
                    cancelWaiter(slot, mode: mode, id: id)
                }
            } else {
                reason = await park(
                    slot, generation: generation, mode: mode, id: id, ignoringErrors: ignoringErrors,
                    afterDrainingRead: afterDrainingRead)
            }
            switch reason {
            case .ready: return nil
            case .cancelled: return .cancelled
            case .doubleWait: return .doubleWait
            case .interrupted:
                // A wait that ignores errors still ends when the poller shuts down.
                if ignoringErrors && shutdownStarted.load(ordering: .sequentiallyConsistent) { return .closing }
                continue  // re-check: a deadline may have been extended meanwhile
            }
        }
    }

    private enum WaitStep {
        case done
        case fail(PollError)
        case park(id: UInt64)
    }

    /// Parks the current task on one direction. The check and the commit happen under the
    /// slot's lock, with the continuation already created, so nothing can slip in between.
    @inline(__always)
    nonisolated(nonsending) private func park(
        _ slot: DescriptorSlot, generation: UInt32, mode: PollMode, id: UInt64, ignoringErrors: Bool,
        afterDrainingRead: Bool
    ) async -> WakeReason {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<WakeReason, Never>) in
            let immediate: WakeReason? = slot.state.withLockAnnotated { s in
                // Shutdown sets the flag before it wakes the waiters of every open slot, under
                // this lock; a waiter that ignores errors must not park after that pass.
                if ignoringErrors && shutdownStarted.load(ordering: .sequentiallyConsistent) { return .interrupted }
                switch s.checkBeforeWait(
                    mode, generation: generation, ignoringErrors: ignoringErrors, afterDrainingRead: afterDrainingRead)
                {
                case .ready: return .ready
                case .failed(.doubleWait): return .doubleWait
                case .failed: return .interrupted  // the caller re-checks and reports it
                case .mustPark:
                    // Cancelled before parking: onCancel has run or will find nothing.
                    if Task.isCancelled { return .cancelled }
                    s[semaphore: mode] = .parked(.task(continuation), id: id)
                    didPark()
                    return nil
                }
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    private func cancelWaiter(_ slot: DescriptorSlot, mode: PollMode, id: UInt64) {
        let waiter: Waiter? = slot.state.withLockAnnotated { s in
            guard case .parked(let waiter, let parkedID) = s[semaphore: mode], parkedID == id else { return nil }
            s[semaphore: mode] = .empty
            return waiter
        }
        if let waiter {
            didUnpark()
            waiter.resume(.cancelled)
        }
    }

    /// The blocking form of ``wait(_:generation:mode:cancellable:ignoringErrors:)`` for plain
    /// threads.
    func waitBlocking(_ slot: DescriptorSlot, generation: UInt32, mode: PollMode) -> PollError? {
        guard mode == .read || mode == .write else { return .invalidMode }
        // Blocking the poller thread would stop the very loop that has to wake it.
        if cpoller_thread_id() == threadID { return .wouldBlockPollerThread }
        var blocker: BlockingWaiter?
        while true {
            let step: WaitStep = slot.state.withLockAnnotated { s in
                switch s.checkBeforeWait(mode, generation: generation, ignoringErrors: false) {
                case .ready: return .done
                case .failed(let error): return .fail(error)
                case .mustPark:
                    let waiter = blocker ?? BlockingWaiter()
                    blocker = waiter
                    s.nextWaiterID &+= 1
                    s[semaphore: mode] = .parked(.thread(waiter), id: s.nextWaiterID)
                    didPark()
                    return .park(id: s.nextWaiterID)
                }
            }
            guard case .park = step, let waiter = blocker else {
                if case .fail(let error) = step { return error }
                return nil
            }
            waiter.parker.park()
            let reason = WakeReason(rawValue: waiter.reason.load(ordering: .sequentiallyConsistent))
            if reason == .ready { return nil }
        }
    }
}

/// The process-wide poller, started on first use.
private let sharedPoller = Mutex<Result<Poller, PollerError>?>(nil)

/// Hand-off between `Poller.init` and the poller thread it starts.
private final class PollerThreadStart: Sendable {
    let kind: BackendKind
    let options: Poller.Options
    let created = ParkerBox()
    let go = ParkerBox()
    let exited = ParkerBox()
    let result = Mutex<Result<any PollerBackend, PollerError>?>(nil)
    let poller = Mutex<Poller?>(nil)

    init(kind: BackendKind, options: Poller.Options) {
        self.kind = kind
        self.options = options
    }

    func makeBackend() throws(PollerError) -> any PollerBackend {
        switch kind {
        case .epoll: try EpollBackend(forcePipeWake: options.forcePipeWake)
        case .ioUring: try URingBackend(forcePipeWake: options.forcePipeWake)
        }
    }
}

extension Poller.Options: Sendable {}

private func pollerThreadMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let start = Unmanaged<PollerThreadStart>.fromOpaque(context!).takeRetainedValue()
    cpoller_thread_set_name(start.options.threadName)
    let backend: any PollerBackend
    do {
        backend = try start.makeBackend()
    } catch {
        start.result.withLockAnnotated { $0 = .failure(error) }
        start.created.unpark()
        return nil
    }
    start.result.withLockAnnotated { $0 = .success(backend) }
    start.created.unpark()
    start.go.park()
    guard let poller = start.poller.withLockAnnotated({ $0 }) else { return nil }
    start.poller.withLockAnnotated { $0 = nil }
    poller.runLoop()
    return nil
}

/// Start-up logging, on when `POLLER_LOG` is set to anything but `0`.
enum PollerLog {
    static var enabled: Bool {
        guard let value = getenv("POLLER_LOG") else { return false }
        return String(cString: value) != "0"
    }

    static func write(_ line: String) {
        var text = line
        text.append("\n")
        _ = text.withCString { Glibc.write(2, $0, strlen($0)) }
    }
}
