import Glibc
import Synchronization

/// A task executor running its jobs in order on one plain thread, except while held: then
/// jobs queue up until ``release()``. A test holds it to stop a resumed task between its
/// wake-up and its next step.
final class GatedExecutor: TaskExecutor, Sendable {
    private let jobs = Mutex<[UnownedJob]>([])
    private let held = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)
    private let thread = Mutex<UInt64?>(nil)

    init() {
        let id = startThread { [self] in run() }
        thread.withLockAnnotated { $0 = id }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        jobs.withLockAnnotated { $0.append(job) }
    }

    /// Jobs waiting to run.
    var heldJobs: Int { jobs.withLockAnnotated { $0.count } }

    func hold() { held.store(true, ordering: .sequentiallyConsistent) }
    func release() { held.store(false, ordering: .sequentiallyConsistent) }

    /// Stops the thread (after the jobs it may run) and joins it.
    func stop() {
        release()
        stopped.store(true, ordering: .sequentiallyConsistent)
        if let id = thread.withLockAnnotated({ $0.take() }) { joinThread(id) }
    }

    private func run() {
        while true {
            let job: UnownedJob? =
                held.load(ordering: .sequentiallyConsistent)
                ? nil : jobs.withLockAnnotated { $0.isEmpty ? nil : $0.removeFirst() }
            if let job {
                job.runSynchronously(on: asUnownedTaskExecutor())
            } else if stopped.load(ordering: .sequentiallyConsistent) {
                return
            } else {
                usleep(100)
            }
        }
    }
}
