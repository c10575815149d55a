import CPoller
import Glibc
import Synchronization

// What a backend does when the kernel refuses it something it cannot do without: a wait, a
// submission, a poll request. Go's netpoll throws ("runtime: netpoll failed") on an
// unexpected wait error; a library must not kill its host process for that, and must not turn
// it into a silent busy loop either. So: report it, keep the loop alive at a bounded pace, and
// recover on its own when the kernel does.

/// Faults the backend survives but must not hide.
///
/// Invariant: each (operation, errno) pair is written to standard error once per backend, so
/// a persistent fault cannot flood the log, and a new kind of fault is never silent. (Not
/// gated by `POLLER_LOG`: that switch is for start-up chatter, this is trouble.)
final class FaultLog: Sendable {
    private let seen = Mutex<Set<String>>([])

    #if DEBUG
    /// Test seam: "operation errno" for every fault reported so far.
    var reported: Set<String> { seen.withLockAnnotated { $0 } }
    #endif

    // MARK: Reporting

    func report(_ operation: String, errno: Int32, _ consequence: String) {
        let first = seen.withLockAnnotated { $0.insert("\(operation) \(errno)").inserted }
        guard first else { return }
        PollerLog.write("poller: \(operation) failed: \(ErrnoName.describe(errno)); \(consequence)")
    }
}

/// The back-off of a backend's wait that fails (EINTR, and io_uring's ETIME, are not
/// failures: they end a wait early).
///
/// Invariants: a failed wait returns no events, so nothing would stop the loop from calling it
/// again at once. Each consecutive failure therefore sleeps before returning, 1 ms doubling up
/// to 100 ms (never past the caller's timeout, so deadlines still fire on time), on the wake-up
/// channel: a wake (a queued job, an earlier deadline, shutdown) still ends the sleep at once,
/// so the loop keeps running jobs and firing deadlines while the kernel refuses the wait. A
/// non-blocking poll (timeout 0: jobs are queued) does not sleep; the loop has work to do and
/// sleeps on its next, blocking, poll. One success resets the back-off.
final class WaitBackoff: Sendable {
    /// The system call's name, for the report.
    let call: String
    private let consecutive = Atomic<Int>(0)

    #if DEBUG
    /// Test seam: failed waits so far.
    let failures = Atomic<Int>(0)
    #endif

    // MARK: Back-off

    static let firstPause: Int64 = 1_000_000
    static let longestPause: Int64 = 100_000_000

    init(call: String) { self.call = call }

    /// Poller thread, after a wait that did not fail.
    @inline(__always) func succeeded() {
        if consecutive.load(ordering: .relaxed) != 0 { consecutive.store(0, ordering: .relaxed) }
    }

    /// Poller thread, after a wait that failed with `errno`: reports it (once per errno) and
    /// sleeps as described above.
    func failed(errno: Int32, timeoutNanos: Int64, wakeChannel: WakeChannel, log: FaultLog) {
        #if DEBUG
        failures.add(1, ordering: .relaxed)
        #endif
        let n = consecutive.wrappingAdd(1, ordering: .relaxed).newValue
        log.report(call, errno: errno, "retrying with back-off (at most 100 ms); no readiness is delivered until it succeeds")
        guard timeoutNanos != 0 else { return }
        let pause = Self.pause(afterFailures: n)
        wakeChannel.sleep(upTo: timeoutNanos < 0 ? pause : min(pause, timeoutNanos))
    }

    /// 1 ms after the first failure, doubling, at most 100 ms.
    static func pause(afterFailures n: Int) -> Int64 {
        min(firstPause << min(max(n - 1, 0), 7), longestPause)
    }
}

extension WakeChannel {
    /// Poller thread, while the backend cannot wait for it: sleeps until the channel is
    /// signalled or `nanos` pass, then drains it. The loop re-reads all shared state after
    /// every poll, so a drained signal is not lost (see the type's invariant).
    func sleep(upTo nanos: Int64) {
        var fd = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
        let ms = Int32(clamping: (max(nanos, 0) + 999_999) / 1_000_000)
        _ = Glibc.poll(&fd, 1, ms)
        drain()
    }
}
