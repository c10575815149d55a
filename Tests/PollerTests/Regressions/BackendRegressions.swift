import CPoller
import Glibc
import Synchronization
import Testing
@testable import Poller

// Regressions from issue 11 in the backends and the loop's handling of what they return:
// far-future deadlines (item 4), failing waits (item 5) and failing io_uring submissions
// (item 7). Each test is named after the behaviour it pins, and fails with the fix removed.
//
// Serialized: the CPU-time bounds and the injected faults (process-wide test seams in the C
// shim) must not be disturbed by other cases of this suite.
@Suite("Regressions: backends", .serialized)
struct BackendRegressions {

    // MARK: Item 4: far-future deadlines

    /// The ways a deadline at (or a hair before) the end of the monotonic clock gets in.
    enum FarDeadline: String, CaseIterable, Sendable, CustomStringConvertible {
        /// `runtime_pollSetDeadline(pd, Int64.max, 'r')`: now + Int64.max overflows and clamps.
        case goMaxRelative
        /// `setDeadline(in: .seconds(Int64.max))`: the Duration overflows Int64 nanoseconds.
        case hugeDuration
        /// An absolute instant a few nanoseconds before the end of the clock: no clamp at all,
        /// the wait's timeout is Int64.max minus now minus almost nothing.
        case instantNearEnd
        /// A 20 ms deadline pushed later (doubling) until it clamps: its timer fires at 20 ms
        /// and re-arms at the far end while the poller is awake (Go's timerModifiedLater).
        case movedLaterRepeatedly

        var description: String { rawValue }

        func apply(to pd: PollDescriptor) async throws {
            switch self {
            case .goMaxRelative:
                runtime_pollSetDeadline(pd, .max, 114)
            case .hugeDuration:
                pd.setDeadline(in: .seconds(Int64.max), for: .read)
            case .instantNearEnd:
                let left = Int64.max - MonotonicClock.now() - 2
                pd.setDeadline(ContinuousClock.now.advanced(by: .nanoseconds(left)), for: .read)
            case .movedLaterRepeatedly:
                var d: Int64 = 20_000_000
                pd.setDeadline(goRelative: d, for: .read)
                while d < Int64.max / 2 {
                    d *= 2
                    pd.setDeadline(goRelative: d, for: .read)
                }
                pd.setDeadline(goRelative: .max, for: .read)
                // Let the original 20 ms timer fire and re-arm at the far end.
                try await Task.sleep(for: .milliseconds(60))
            }
        }
    }

    @Test("An idle poller holding only a far-future deadline (and a parked waiter) uses almost no CPU",
          arguments: BackendKind.allCases, FarDeadline.allCases)
    func farFutureDeadlineDoesNotSpin(kind: BackendKind, way: FarDeadline) async throws {
        try await withPoller(kind) { poller in
            let pair = SocketPair()
            let pd = try poller.register(pair.a)
            try await way.apply(to: pd)
            let waiter = startWait(pd, .read)
            #expect(await waitersParked(poller, 1))
            // Make the loop go round once with the deadline armed, so it computes a timeout
            // from it (a deadline set while the poller sleeps with no timeout does not wake
            // it), then let it settle.
            poller.backend.wake()
            try await Task.sleep(for: .milliseconds(20))
            let before = try #require(threadCPUNanos(poller))
            try await Task.sleep(for: .seconds(1))
            let used = try #require(threadCPUNanos(poller)) - before
            #expect(used < 100_000_000, "the poller thread used \(used / 1_000_000) ms of CPU in 1 s")
            // Linux 6.18's timer code absorbs io_uring's wrapped sum (see Poller.maxSleepNanos),
            // so on this kernel the CPU bound alone does not catch a missing cap (measured: 0 µs
            // either way): also check that the timeout the loop computes for this deadline, the
            // one it hands to the kernel, is at most a day.
            let earliest = try #require(poller.timers.withLockAnnotated { $0.heap.earliest })
            #expect(earliest > Int64.max - 1_000_000_000, "not a deadline at the end of the clock")
            let timeout = Poller.sleepTimeout(earliest: earliest, now: MonotonicClock.now())
            let oneDay: Int64 = 86_400 * 1_000_000_000
            #expect(timeout > 0 && timeout <= oneDay, "the kernel would be asked to wait \(timeout) ns")
            #expect(!waiter.isFinished, "the far deadline woke the waiter")
            pd.unblock()
            #expect(await waiter.outcome() == .failed(.closing))
            try pd.close()
        }
    }
}

// MARK: Helpers

/// CPU time (user + system) the poller thread has used so far, in nanoseconds.
private func threadCPUNanos(_ poller: Poller) -> Int64? {
    var clock = clockid_t()
    guard pthread_getcpuclockid(pthread_t(poller.threadID), &clock) == 0 else { return nil }
    var ts = timespec()
    guard clock_gettime(clock, &ts) == 0 else { return nil }
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
