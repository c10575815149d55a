import CPoller
import Synchronization

/// The poller thread as a task executor, the way Go's scheduler runs the goroutines that
/// netpoll made runnable on the thread that polled.
///
/// A task started with this executor as its preference (`Task(executorPreference:)`,
/// `withTaskExecutorPreference(_:operation:)`, `addTask(executorPreference:)`) runs on the
/// poller thread. When the poller finds its descriptor ready and resumes it, the task is
/// enqueued here from the poller thread itself: no other thread is woken, and the task runs
/// in the same loop iteration. The loop runs ready jobs, polls the kernel without blocking
/// while jobs remain, and blocks only when it has nothing to run.
///
/// Jobs must not block the thread: a task that blocks stalls every descriptor of the poller.
/// After ``Poller/shutdown()``, jobs enqueued here are handed to the platform's global
/// executor (Dispatch), so no task is stranded.
public final class PollerExecutor: TaskExecutor {
    let runQueue: RunQueue

    init(runQueue: RunQueue) { self.runQueue = runQueue }

    public func enqueue(_ job: consuming ExecutorJob) {
        runQueue.enqueue(QueuedJob(job: UnownedJob(job), executor: asUnownedTaskExecutor()))
    }
}

/// A job and the task executor it was enqueued on, which it runs "on": a task with this
/// poller's executor as its preference runs on ``PollerExecutor``; a task with no preference
/// runs on the group installed as the default executor. Running a job on another executor
/// than the one the runtime expects makes every call into a nonisolated `async` function
/// hop (enqueue again): measured 10 enqueues per ping-pong round trip instead of 2.
struct QueuedJob {
    var job: UnownedJob
    var executor: UnownedTaskExecutor

    func run() { job.runSynchronously(on: executor) }
}

/// The poller thread's run queue.
///
/// Invariant (no lost wake-up): the poller sets `sleeping` under the mutex only after seeing
/// `jobs` empty under the same mutex, and enqueuers from other threads read `sleeping` in the
/// critical section that appends; so either the poller sees the job before it blocks, or the
/// enqueuer sees `sleeping` and wakes it.
final class RunQueue: Sendable {
    struct State {
        var jobs: [QueuedJob] = []
        var sleeping = false
        /// The loop has exited: jobs go to the platform's executor.
        var stopped = false
        var stopRequested = false
    }

    let state = Mutex(State())
    let backend: any PollerBackend
    #if DEBUG
    /// Test seam: jobs enqueued (a hop shows up as an extra enqueue).
    let enqueued = Atomic<Int>(0)
    #endif

    init(backend: any PollerBackend) { self.backend = backend }

    func enqueue(_ job: QueuedJob) {
        #if DEBUG
        enqueued.add(1, ordering: .relaxed)
        #endif
        let (wake, forward) = state.withLockAnnotated { s -> (Bool, Bool) in
            if s.stopped { return (false, true) }
            s.jobs.append(job)
            return (s.sleeping, false)
        }
        if forward {
            PlatformFallback.enqueue(job.job)
        } else if wake {
            backend.wake()
        }
    }

    /// Poller thread: moves every queued job into `batch` (which must be empty) and leaves
    /// `batch`'s old storage as the queue, so steady state allocates nothing.
    func takeAll(into batch: inout [QueuedJob]) {
        state.withLockAnnotated { s in swap(&s.jobs, &batch) }
    }

    enum Next { case sleep, work, stop }

    /// Poller thread: marks it asleep unless there is work or a stop was requested.
    func prepareToSleep() -> Next {
        state.withLockAnnotated { s in
            if s.stopRequested { return .stop }
            guard s.jobs.isEmpty else { return .work }
            s.sleeping = true
            return .sleep
        }
    }

    func awake() { state.withLockAnnotated { $0.sleeping = false } }
}
