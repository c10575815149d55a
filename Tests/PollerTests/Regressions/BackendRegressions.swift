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

    // MARK: Item 5: failing waits

    // Epoll only: epoll_pwait2 is an epoll system call; io_uring's wait has no such fallback.
    @Test("Where epoll_pwait2 is refused with EPERM (a seccomp profile), the poller falls back to epoll_wait for good and still delivers events")
    func pwait2RefusedFallsBack() async throws {
        defer { cpoller_epoll_force_ms_timeouts(0) }  // let later pollers find epoll_pwait2 again
        try await withPoller(.epoll) { poller in
            let pipe = Pipe()
            let pd = try poller.register(pipe.readFD)
            // Every epoll_pwait2 on this poller is refused from now on, as under seccomp; the
            // wake makes the poller leave the wait it may already be in.
            _ = cpoller_fault_inject(Int32(CPOLLER_FAULT_PWAIT2), poller.backend.kernelFD, EPERM, -1)
            poller.backend.wake()
            let waiter = startWait(pd, .read)
            #expect(await waitersParked(poller, 1))
            writeBytes(pipe.writeFD)
            #expect(await waiter.outcome() == .ready)
            let refusals = cpoller_fault_inject(Int32(CPOLLER_FAULT_PWAIT2), -1, 0, 0)
            #expect(refusals == 1, "epoll_pwait2 was tried \(refusals) times: the fallback was not remembered")
            #expect(cpoller_epoll_has_pwait2() == 0)
            #expect(poller.backend.faults.reported.isEmpty, "a fallback is not a fault")
            pd.unblock()
            try pd.close()
        }
    }

    @Test("A wait that keeps failing is reported once and backs off: the poller thread stays near idle, jobs still run, and events flow again once it succeeds",
          arguments: BackendKind.allCases, [EBADF, EINVAL, EFAULT])
    func failingWaitBacksOff(kind: BackendKind, error: Int32) async throws {
        try await withPoller(kind) { poller in
            let pipe = Pipe()
            let pd = try poller.register(pipe.readFD)
            let waiter = startWait(pd, .read)
            #expect(await waitersParked(poller, 1))
            let backend = poller.backend
            _ = cpoller_fault_inject(Int32(CPOLLER_FAULT_WAIT), backend.kernelFD, error, -1)
            defer { _ = cpoller_fault_inject(Int32(CPOLLER_FAULT_WAIT), -1, 0, 0) }
            backend.wake()
            try await Task.sleep(for: .milliseconds(20))

            let before = try #require(threadCPUNanos(poller))
            try await Task.sleep(for: .seconds(1))
            let used = try #require(threadCPUNanos(poller)) - before
            #expect(used < 100_000_000, "the poller thread used \(used / 1_000_000) ms of CPU in 1 s")

            // The loop is alive: a job sent to the poller thread runs.
            let job = Task(executorPreference: poller.executor) { 42 }
            #expect(await abandoningValue(of: job, within: .seconds(5)) == 42)

            #expect(backend.faults.reported == ["\(backend.waitBackoff.call) \(error)"])
            let failures = backend.waitBackoff.failures.load(ordering: .relaxed)
            #expect(failures >= 2, "the wait was not retried")

            // Once the wait works again, readiness is delivered.
            #expect(cpoller_fault_inject(Int32(CPOLLER_FAULT_WAIT), -1, 0, 0) >= failures)
            writeBytes(pipe.writeFD)
            #expect(await waiter.outcome() == .ready)
            pd.unblock()
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
