import Synchronization
@_spi(ExperimentalCustomExecutors) @_spi(ExperimentalScheduling) import _Concurrency

// The poller group as Swift's default (global) executor: plain `Task {}` code and `async`
// functions without an executor preference run on the poller threads, the way Go's scheduler
// runs every goroutine on the threads that poll the network. Opt-in and experimental: it
// rests on Swift 6.3's `ExecutorFactory` (SPI `ExperimentalCustomExecutors`) and
// `SchedulingExecutor` (SPI `ExperimentalScheduling`), which may change.
//
// Why the executor factory rather than the runtime's global-enqueue hook (what SwiftNIO
// installs): the factory is the runtime's designed entry point for this, it covers delayed
// jobs (`Task.sleep` stays on the poller threads; on 6.3 the hook sees no delayed job, so
// every sleep would come back on a Dispatch worker) and the main executor, and it needs no
// `dlsym` of a private symbol. Its constraint: it is installed from synchronous code (an async
// `main` already runs as a task on the main actor), best first thing in `main`.

extension PollerGroup {
    /// Makes the shared group (``shared()``) Swift's default executor: tasks created with
    /// plain `Task {}`, `async let` and task groups, and `async` code with no executor
    /// preference, run on the poller threads. **Experimental.**
    ///
    /// Call it first in `main`, from synchronous code, before starting the async work (see
    /// the README's "Plain Task {} on the poller threads"). Installed later, it still takes
    /// effect for every job enqueued afterwards (measured on Swift 6.3), but work already
    /// running stays where it is until it next suspends, and an async `main` runs on the
    /// main actor either way. Before returning it starts one task and checks that it lands
    /// on a poller thread.
    ///
    /// Where jobs go:
    /// - a job enqueued from a poller thread (a task resumed by its poller, a child task
    ///   started by a task running there) runs on that thread: Go's local run queue, no hop;
    /// - a job enqueued from any other thread goes to the members in turn;
    /// - a delayed job (`Task.sleep`, a clock's `sleep(until:)`) waits in its poller's timer
    ///   heap beside the descriptor deadlines; clocks whose durations are not `Duration` go to
    ///   the platform's executor instead. Tolerance is not used;
    /// - the main actor keeps the platform's main executor (Dispatch's main queue).
    ///
    /// There is no work stealing: a task that computes for long holds up the other tasks of
    /// its poller (as it would on an event loop). After the group is shut down, new jobs go
    /// to the platform's executor (Dispatch), so no task is stranded.
    ///
    /// - Parameters:
    ///   - threads: the size of the shared group if this call starts it; nil for
    ///     `POLLER_THREADS` (unset: every CPU this process may run on).
    ///   - backend: the backend if this call starts the shared group; nil for
    ///     `POLLER_BACKEND` (unset: `auto`).
    /// - Returns: the shared group, now the default executor. A second call returns it again.
    /// - Throws: the shared group's start-up error (``PollerError``), or
    ///   ``PollerError/defaultExecutorAlreadyChosen`` when called from a poller thread, or when
    ///   a task started right after the install does not land on the group (the runtime keeps
    ///   its own executor without a word; this check makes it loud). The shared group stays
    ///   started either way.
    @discardableResult
    public static func installAsDefaultExecutor(threads: Int? = nil, backend: BackendChoice? = nil) throws(PollerError) -> PollerGroup {
        // On a poller thread the probe below would block the thread that may have to run it.
        guard Poller.current == nil else { throw .defaultExecutorAlreadyChosen }
        let group = try startShared(threads: threads, backend: backend)
        // Serialized, so a second caller sees the first one's verdict, not a probe under way.
        // (The runtime reads `installedExecutor`, a different lock, while the probe runs.)
        let tookEffect = installation.withLockAnnotated { tookEffect -> Bool in
            if let tookEffect { return tookEffect }
            installedExecutor.withLockAnnotated { $0 = PollerGroupExecutor(group: group) }
            _createExecutors(factory: PollerExecutorFactory.self)
            let verdict = probeRunsOnAPoller(group)
            tookEffect = verdict
            return verdict
        }
        guard tookEffect else { throw .defaultExecutorAlreadyChosen }
        return group
    }

    /// Whether a plain detached task now runs on one of `group`'s threads. The runtime says
    /// nothing of its own about where enqueues go after `_createExecutors`, so the sure test
    /// is to run a task and see where it lands. The calling thread is not a poller thread
    /// (checked above), so blocking it cannot hold up the probe.
    private static func probeRunsOnAPoller(_ group: PollerGroup) -> Bool {
        let landed = Mutex<Bool>(false)
        let done = ParkerBox()
        Task.detached {
            landed.withLockAnnotated { $0 = Poller.current.map(group.contains) ?? false }
            done.unpark()
        }
        guard done.park(timeoutNanos: 10_000_000_000) else { return false }
        return landed.withLockAnnotated { $0 }
    }

    /// The group installed as Swift's default executor by ``installAsDefaultExecutor(threads:backend:)``,
    /// if any.
    public static var defaultExecutorGroup: PollerGroup? {
        guard installation.withLockAnnotated({ $0 }) == true else { return nil }
        return installedExecutor.withLockAnnotated { $0?.group }
    }
}

/// The executor installed by `installAsDefaultExecutor`; set once.
private let installedExecutor = Mutex<PollerGroupExecutor?>(nil)
/// Whether the runtime took it (the probe's answer): nil until the first install has run.
private let installation = Mutex<Bool?>(nil)

/// What the concurrency runtime asks for its executors: the group for the default executor,
/// the platform's for the main one.
struct PollerExecutorFactory: ExecutorFactory {
    static var mainExecutor: any MainExecutor { PlatformExecutorFactory.mainExecutor }

    static var defaultExecutor: any TaskExecutor {
        // Installed before `_createExecutors` is called, and never removed.
        installedExecutor.withLockAnnotated { $0! }
    }
}

/// A group as one task executor: local enqueues stay on the calling poller's thread, others
/// go to the members in turn.
final class PollerGroupExecutor: TaskExecutor, SchedulingExecutor {
    let group: PollerGroup

    init(group: PollerGroup) { self.group = group }

    /// The calling poller's own thread, else the next member. A caller on a poller that has
    /// stopped is not a problem: its run queue forwards to the platform's executor.
    private var target: Poller { Poller.current ?? group.next() }

    func enqueue(_ job: consuming ExecutorJob) {
        target.runQueue.enqueue(QueuedJob(job: UnownedJob(job), executor: asUnownedTaskExecutor()))
    }

    func enqueue<C: Clock>(_ job: consuming ExecutorJob, after delay: C.Duration, tolerance: C.Duration?, clock: C) {
        let job = UnownedJob(job)
        guard let delay = delay as? Duration else {
            PlatformFallback.enqueue(job, after: delay, clock: clock)
            return
        }
        schedule(job, afterNanos: delay.nanosecondsClamped)
    }

    func enqueue<C: Clock>(_ job: consuming ExecutorJob, at instant: C.Instant, tolerance: C.Duration?, clock: C) {
        let job = UnownedJob(job)
        let delay = clock.now.duration(to: instant)
        guard let delay = delay as? Duration else {
            PlatformFallback.enqueue(job, after: delay, clock: clock)
            return
        }
        schedule(job, afterNanos: delay.nanosecondsClamped)
    }

    private func schedule(_ job: UnownedJob, afterNanos delay: Int64) {
        let poller = target
        let queued = QueuedJob(job: job, executor: asUnownedTaskExecutor())
        guard delay > 0 else {
            poller.runQueue.enqueue(queued)
            return
        }
        let now = MonotonicClock.now()
        poller.enqueue(queued, at: delay > Int64.max - now ? Int64.max : now + delay)
    }
}

/// Where jobs go when no poller can take them (after shutdown): the platform's own default
/// executor (Dispatch's global queues), never `globalConcurrentExecutor`, which is the
/// group itself once it is installed and would hand the job back to the stopped poller.
enum PlatformFallback {
    static let executor: any TaskExecutor = PlatformExecutorFactory.defaultExecutor

    static func enqueue(_ job: UnownedJob) {
        executor.enqueue(ExecutorJob(job))
    }

    /// Runs `job` after `nanos` (at once when that is not in the future).
    static func enqueue(_ job: UnownedJob, afterNanos nanos: Int64) {
        guard nanos > 0 else { return enqueue(job) }
        enqueue(job, after: Duration.nanoseconds(nanos), clock: ContinuousClock())
    }

    static func enqueue<C: Clock>(_ job: UnownedJob, after delay: C.Duration, clock: C) {
        if let scheduling = executor as? any SchedulingExecutor {
            scheduling.enqueue(ExecutorJob(job), after: delay, tolerance: nil, clock: clock)
        } else {
            // Early rather than never: a stranded task is the worse failure.
            enqueue(job)
        }
    }
}

extension Duration {
    /// Whole nanoseconds, clamped to `Int64`.
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (total, overflow2) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return total
    }
}
