import CPoller
import Glibc
import Testing

@testable import Poller

// Go's pollSetDeadline and the deadline timers (go-netpoll.md §2.8, §2.9, §5.6 items 68–70,
// §6 items 6–8, 22), through PollDescriptor on both backends.

extension NetpollSuites {
    @Suite("Deadlines") struct DeadlineTests {
        @Test(
            "a positive relative deadline times out a blocked wait once it has passed, for its direction only",
            arguments: BackendKind.allCases, DescriptorKind.allCases)
        func relativeDeadline(kind: BackendKind, descriptor: DescriptorKind) async throws {
            try await withRegisteredReader(kind, descriptor) { poller, ends, pd in
                let start = ContinuousClock.now
                pd.setDeadline(in: .milliseconds(30), for: .read)
                #expect(await pd.boundedOutcome(.read) == .failed(.timeout))
                let elapsed = ContinuousClock.now - start
                #expect(elapsed >= .milliseconds(30), "timed out early, after \(elapsed)")
                #expect(elapsed < .seconds(2), "timed out late, after \(elapsed)")
                #expect(pd.resetResult(.read) == .timeout)
                #expect(pd.resetResult(.write) == nil)
                pd.finish()
            }
        }

        @Test(
            "a zero relative duration expires the deadline (it does not mean no deadline); Go's d = 0 clears it",
            arguments: BackendKind.allCases)
        func zeroMeansNow(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                pd.setDeadline(in: .zero, for: .read)
                #expect(pd.resetResult(.read) == .timeout)
                pd.setDeadline(goRelative: 0, for: .read)
                #expect(pd.resetResult(.read) == nil)
                #expect(pd.deadlines.read == 0)
                pd.setDeadline(goRelative: -1, for: .write)
                #expect(pd.resetResult(.write) == .timeout)
                pd.setDeadline(nil, for: .write)
                #expect(pd.resetResult(.write) == nil)
                #expect(poller.armedTimerCount == 0)
                pd.finish()
            }
        }

        @Test(
            "clearing the deadline while a waiter is blocked keeps it waiting for I/O", arguments: BackendKind.allCases,
            DescriptorKind.allCases)
        func clearWhileBlocked(kind: BackendKind, descriptor: DescriptorKind) async throws {
            try await withRegisteredReader(kind, descriptor) { poller, ends, pd in
                pd.setDeadline(in: .milliseconds(60), for: .read)
                let waiter = startWait(pd, .read)
                #expect(await waitersParked(poller, 1))
                pd.setDeadline(nil, for: .read)
                #expect(poller.armedTimerCount == 0, "clearing left a timer armed")
                try await Task.sleep(for: .milliseconds(150))
                #expect(!waiter.isFinished, "the cleared deadline still woke the waiter")
                writeBytes(ends.writer)
                #expect(await waiter.outcome() == .ready)
                pd.finish()
            }
        }

        @Test("a deadline set in the past wakes a blocked waiter with timeout at once", arguments: BackendKind.allCases)
        func pastDeadlineWakes(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let reader = startWait(pd, .read)
                let writer = startWait(pd, .write)
                #expect(await waitersParked(poller, 2))
                let start = ContinuousClock.now
                pd.setDeadline(in: .seconds(-1), for: .read)
                #expect(await reader.outcome() == .failed(.timeout))
                #expect(ContinuousClock.now - start < .milliseconds(500))
                #expect(!writer.isFinished, "an expired read deadline disturbed the writer")
                pd.setDeadline(in: .seconds(-1), for: .write)
                #expect(await writer.outcome() == .failed(.timeout))
                pd.finish()
            }
        }

        @Test(
            "a deadline pushed later on every read leaves its timer in place, and the timer fires at the last deadline",
            arguments: BackendKind.allCases)
        func deadlinePushedLaterIsLazy(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let earliest = { poller.timers.withLockAnnotated { $0.heap.earliest } }
                pd.setDeadline(in: .milliseconds(30), for: .read)
                let first = try #require(earliest())
                let waiter = startWait(pd, .read)
                // A service pushing its read deadline forward: the heap entry does not move...
                var lastPush = ContinuousClock.now
                for _ in 0..<100 {
                    lastPush = ContinuousClock.now
                    pd.setDeadline(in: .milliseconds(60), for: .read)
                }
                #expect(earliest() == first, "a deadline moved later re-sorted the timer heap")
                #expect(poller.armedTimerCount == 1)
                // ...yet the waiter times out at the last deadline, not at the first.
                #expect(await waiter.outcome() == .failed(.timeout))
                let elapsed = ContinuousClock.now - lastPush
                #expect(elapsed >= .milliseconds(60), "timed out \(elapsed) after the last push")
                // A deadline moved earlier moves the entry at once.
                pd.setDeadline(in: .seconds(60), for: .read)
                let later = try #require(earliest())
                pd.setDeadline(in: .seconds(1), for: .read)
                #expect(try #require(earliest()) < later, "a deadline moved earlier left the timer late")
                pd.finish()
            }
        }

        @Test("equal read and write deadlines share one timer", arguments: BackendKind.allCases)
        func combinedTimer(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                pd.setDeadline(in: .seconds(10), for: .readWrite)
                #expect(poller.armedTimerCount == 1)
                // Different deadlines: two timers.
                pd.setDeadline(in: .seconds(20), for: .write)
                #expect(poller.armedTimerCount == 2)
                // Made equal again (same absolute instant): back to one.
                let when = MonotonicClock.now() + 30_000_000_000
                poller.setDeadline(pd.slot, generation: pd.generation, deadline: when, mode: .read)
                poller.setDeadline(pd.slot, generation: pd.generation, deadline: when, mode: .write)
                #expect(poller.armedTimerCount == 1)
                pd.setDeadline(nil, for: .readWrite)
                #expect(poller.armedTimerCount == 0)
                pd.finish()
            }
        }

        @Test(
            "after the combined timer fires both directions time out; clearing only write leaves read expired and makes write wait",
            arguments: BackendKind.allCases)
        func combinedTimerExpiresBoth(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                pd.setDeadline(in: .milliseconds(20), for: .readWrite)
                #expect(poller.armedTimerCount == 1)
                #expect(await pd.boundedOutcome(.read) == .failed(.timeout))
                #expect(pd.resetResult(.write) == .timeout, "the combined timer did not expire the write deadline")
                #expect(await pd.boundedOutcome(.write) == .failed(.timeout))
                pd.setDeadline(nil, for: .write)
                #expect(pd.resetResult(.read) == .timeout, "clearing the write deadline un-expired the read one")
                #expect(pd.resetResult(.write) == nil)
                let writer = startWait(pd, .write)
                #expect(await waitersParked(poller, 1))
                try await Task.sleep(for: .milliseconds(50))
                #expect(!writer.isFinished, "the write wait returned \(writer.isFinished) without readiness or deadline")
                pd.unblock()
                #expect(await writer.outcome() == .failed(.closing))
                #expect(pd.closeResult() == nil)
            }
        }

        @Test(
            "a changed deadline invalidates the old timer: the waiter does not wake at the old time",
            arguments: BackendKind.allCases)
        func movedDeadline(kind: BackendKind) async throws {
            try await withDeadlineChange(
                kind, from: .milliseconds(40), after: .milliseconds(5),
                tooSlowTo: "move the deadline"
            ) { poller, pd, start, waiter in
                pd.setDeadline(in: .milliseconds(400), for: .read)
                let movedAfter = ContinuousClock.now - start
                #expect(poller.armedTimerCount == 1, "the moved deadline left two timers")
                let checked = movedAfter < .milliseconds(30)
                if checked {
                    try await Task.sleep(until: start + .milliseconds(150))
                    #expect(!waiter.isFinished, "the waiter woke at the old deadline")
                }
                pd.unblock()
                let outcome = await waiter.outcome()
                if checked { #expect(outcome == .failed(.closing)) }
                #expect(pd.closeResult() == nil)
                return checked
            }
        }

        @Test(
            "extending the deadline while a waiter is blocked keeps it waiting until the new deadline",
            arguments: BackendKind.allCases)
        func extendedDeadline(kind: BackendKind) async throws {
            try await withDeadlineChange(
                kind, from: .milliseconds(50), after: .milliseconds(20),
                tooSlowTo: "extend the deadline"
            ) { poller, pd, start, waiter in
                let extendedAt = ContinuousClock.now
                pd.setDeadline(in: .milliseconds(200), for: .read)
                let checked = extendedAt - start < .milliseconds(40)
                if checked {
                    try await Task.sleep(until: start + .milliseconds(120))
                    #expect(!waiter.isFinished, "the waiter woke at the old deadline")
                    #expect(await waiter.outcome() == .failed(.timeout))
                    let elapsed = ContinuousClock.now - extendedAt
                    #expect(elapsed >= .milliseconds(200), "timed out \(elapsed) after the extension")
                } else {
                    pd.unblock()
                    _ = await waiter.outcome()
                }
                pd.finish()
                return checked
            }
        }

        @Test("an overflowing deadline clamps to the far future instead of expiring", arguments: BackendKind.allCases)
        func overflowClamps(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                pd.setDeadline(goRelative: .max, for: .read)
                #expect(pd.deadlines.read == .max)
                pd.setDeadline(in: .seconds(Int64.max), for: .write)
                #expect(pd.deadlines.write == .max)
                #expect(pd.resetResult(.readWrite) == nil)
                let reader = startWait(pd, .read)
                let writer = startWait(pd, .write)
                #expect(await waitersParked(poller, 2))
                try await Task.sleep(for: .milliseconds(100))
                #expect(!reader.isFinished && !writer.isFinished, "a clamped deadline expired")
                pd.unblock()
                #expect(await reader.outcome() == .failed(.closing))
                #expect(await writer.outcome() == .failed(.closing))
                #expect(pd.closeResult() == nil)
            }
        }

        @Test("a 50 µs deadline fires in well under a millisecond (median of 20)", arguments: BackendKind.allCases)
        func deadlinePrecision(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                var samples: [Duration] = []
                for _ in 0..<20 {
                    pd.setDeadline(nil, for: .read)
                    let task = Task { () -> (WaitOutcome, Duration) in
                        let start = ContinuousClock.now
                        pd.setDeadline(in: .microseconds(50), for: .read)
                        let outcome = await pd.outcome(.read)
                        return (outcome, ContinuousClock.now - start)
                    }
                    let (result, timedOut) = await boundedValue(of: task, within: .seconds(5)) { pd.unblock() }
                    guard let (outcome, elapsed) = result, !timedOut else {
                        Issue.record("a 50 µs deadline did not end the wait within 5 s")
                        break
                    }
                    #expect(outcome == .failed(.timeout))
                    samples.append(elapsed)
                }
                samples.sort()
                if samples.count == 20 {
                    let median = samples[10]
                    #expect(median < .milliseconds(1), "median \(median); samples \(samples)")
                    #expect(samples[0] >= .microseconds(50), "a deadline fired early: \(samples[0])")
                }
                pd.finish()
            }
        }

        @Test("an earlier deadline wakes a poller sleeping with no timers", arguments: BackendKind.allCases)
        func deadlineWakesIdlePoller(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let waiter = startWait(pd, .read)
                #expect(await waitersParked(poller, 1))
                #expect(
                    await becomesTrue { poller.timers.withLockAnnotated { $0.sleepUntil } == .max },
                    "the poller did not go to sleep without a timeout")
                let start = ContinuousClock.now
                pd.setDeadline(in: .milliseconds(10), for: .read)
                #expect(await waiter.outcome() == .failed(.timeout))
                let elapsed = ContinuousClock.now - start
                #expect(elapsed >= .milliseconds(10))
                #expect(elapsed < .milliseconds(200), "the sleeping poller noticed the new deadline after \(elapsed)")
                pd.finish()
            }
        }

        @Test("an earlier deadline wakes a poller sleeping until a later timer", arguments: BackendKind.allCases)
        func earlierDeadlineWakesPoller(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let far = Pipe()
                let near = Pipe()
                let farPD = try poller.register(far.readFD)
                let nearPD = try poller.register(near.readFD)
                farPD.setDeadline(in: .seconds(30), for: .read)
                let waiter = startWait(nearPD, .read)
                #expect(await waitersParked(poller, 1))
                #expect(
                    await becomesTrue {
                        let until = poller.timers.withLockAnnotated { $0.sleepUntil }
                        return until != .min && until != .max
                    }, "the poller did not go to sleep until the far timer")
                let start = ContinuousClock.now
                nearPD.setDeadline(in: .milliseconds(10), for: .read)
                #expect(await waiter.outcome() == .failed(.timeout))
                let elapsed = ContinuousClock.now - start
                #expect(elapsed < .milliseconds(200), "the sleeping poller noticed the earlier deadline after \(elapsed)")
                #expect(farPD.resetResult(.read) == nil)
                farPD.finish()
                nearPD.finish()
                #expect(poller.armedTimerCount == 0, "unblock left a timer armed")
            }
        }

        // Digest #70; §6 bug 7. Go's pollWait loops when its netpollblock returns false and
        // netpollcheckerr then finds no error. The waiter runs on an executor whose jobs are
        // held, so the deadline can be extended between its wake-up and its next step.
        @Test(
            "A wait woken by its deadline keeps waiting when the deadline is extended before the waiter runs again",
            arguments: BackendKind.allCases)
        func deadlineExtendedBeforeWaiterRuns(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let executor = GatedExecutor()
                defer { executor.stop() }
                pd.setDeadline(in: .milliseconds(20), for: .read)
                let waiter = startWait(pd, .read, on: executor)
                #expect(await waitersParked(poller, 1))
                executor.hold()
                #expect(
                    await becomesTrue { poller.parkedWaiterCount == 0 && executor.heldJobs > 0 },
                    "the deadline never woke the waiter")
                pd.setDeadline(in: .seconds(30), for: .read)
                executor.release()
                #expect(await waitersParked(poller, 1), "the waiter did not wait again after its deadline was extended")
                #expect(!waiter.isFinished)
                writeBytes(pipe.writeFD)
                #expect(await waiter.outcome() == .ready)
                pd.setDeadline(nil, for: .read)
                pd.finish()
            }
        }
    }
}

/// Up to five attempts, each with a fresh registration of one pipe's read end: a read deadline
/// `from` now, a waiter, and `after` later `attempt` (which changes the deadline and finishes
/// the registration). An attempt returns whether it ran fast enough to check its timing;
/// expects that one did.
private func withDeadlineChange(
    _ kind: BackendKind, from first: Duration, after gap: Duration, tooSlowTo what: String,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ attempt: (Poller, PollDescriptor, ContinuousClock.Instant, StartedWait) async throws -> Bool
) async throws {
    try await withPoller(kind, sourceLocation: sourceLocation) { poller in
        let pipe = Pipe()
        var checked = false
        for _ in 0..<5 where !checked {
            let pd = try poller.register(pipe.readFD)
            let start = ContinuousClock.now
            pd.setDeadline(in: first, for: .read)
            let waiter = startWait(pd, .read)
            try await Task.sleep(for: gap)
            checked = try await attempt(poller, pd, start, waiter)
        }
        #expect(checked, "the machine was too slow to \(what) in time, 5 times", sourceLocation: sourceLocation)
    }
}
