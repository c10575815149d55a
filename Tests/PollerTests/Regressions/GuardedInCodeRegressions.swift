import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller

// Regressions for the bugs of the digest (go-netpoll.md §6) that Go guards only in code, at
// the poller's level: each test is named after the bug and carries its number in a comment.
// The net-layer ones are in PollerNetTests/Regressions/GuardedInCodeRegressions.swift.

extension NetpollSuites {
    @Suite("Regressions: bugs Go guards only in code (poller)")
    struct GuardedInCodeRegressions {
        // Digest §6 bug 5 (Go #72900, #67056).
        @Test(
            "Wake-tag aliasing: no registration's token is the wake-up channel's, even in slot 0 across the generation wrap; wake-ups leave a slot-0 waiter parked and its readiness is delivered",
            arguments: BackendKind.allCases)
        func wakeTagAliasing(kind: BackendKind) async throws {
            let last: UInt32 = (1 << 28) - 1
            #expect(PollToken.nextGeneration(after: last) == 1, "the generation wraps to 0, the wake-up's tag")
            for generation in [1, 2, last - 1, last] {
                let token = PollToken(slot: 0, generation: generation)
                #expect(token != .wake && token.raw >> 60 == 0 && token.raw != .max, "generation \(generation)")
            }
            try await withPoller(kind) { poller in
                let pipe = OwnedPipe()
                let first = try poller.register(pipe.readFD)
                #expect(first.slot.index == 0)
                first.finish()
                // White-box: slot 0's next registration carries the last generation before the wrap.
                first.slot.state.withLockAnnotated { $0.generation = last }
                for expected in [last, 1] {
                    let pd = try poller.register(pipe.readFD)
                    #expect(pd.slot.index == 0 && pd.generation == expected)
                    let waiter = startWait(pd, .read)
                    #expect(await waitersParked(poller, 1))
                    for _ in 0..<100 { poller.backend.wake() }
                    try await Task.sleep(for: .milliseconds(20))
                    #expect(!waiter.isFinished, "a wake-up reached the waiter of slot 0, generation \(expected)")
                    writeBytes(pipe.writeFD)
                    #expect(await waiter.outcome() == .ready)
                    drain(pipe.readFD)
                    pd.finish()
                }
            }
        }

        // Digest §6 bug 9 (Go #35532): the slot's lock and the timer heap's lock.
        @Test(
            "Lock order: deadlines set from a plain thread and from tasks while their timers fire on many descriptors, with waits in both directions, never deadlock",
            arguments: BackendKind.allCases)
        func lockOrder(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let pipes = (0..<8).map { _ in OwnedPipe() }
                var pds: [PollDescriptor] = []
                for pipe in pipes { pds.append(try poller.register(pipe.readFD)) }
                let all = pds
                // Only tiny or past deadlines, never cleared: every wait ends with a timeout soon.
                let setter = startThread {
                    for j in 0..<4_000 {
                        let mode: PollMode = [.read, .write, [.read, .write]][j % 3]
                        all[j % all.count].setDeadline(in: .microseconds(Int64(j % 40) - 5), for: mode)
                    }
                }
                let run = Task { () -> Int in
                    await withTaskGroup(of: Int.self) { group in
                        for (i, pd) in all.enumerated() {
                            for mode in [PollMode.read, .write] {
                                group.addTask {
                                    var timeouts = 0
                                    for k in 0..<150 {
                                        pd.setDeadline(in: .microseconds(Int64((i + k) % 30 + 1)), for: mode)
                                        if await pd.outcome(mode) == .failed(.timeout) { timeouts += 1 }
                                    }
                                    return timeouts
                                }
                            }
                        }
                        return await group.reduce(0, +)
                    }
                }
                let timeouts = await abandoningValue(of: run, within: .seconds(60))
                joinThread(setter)
                if timeouts == nil {
                    Issue.record("deadline setting and firing deadlocked")
                    for pd in all { pd.unblock() }
                }
                #expect((timeouts ?? 0) > 0)
                for pd in all {
                    pd.setDeadline(nil, for: [.read, .write])
                    pd.finish()
                }
                #expect(await becomesTrue { poller.armedTimerCount == 0 }, "timers left: \(poller.armedTimerCount)")
            }
        }

        // Digest §6 bug 14.
        @Test(
            "EINTR: a backend wait ended by EINTR is not a failure (no back-off, no report); a deadline still fires on time and readiness is still delivered",
            arguments: BackendKind.allCases)
        func interruptedWait(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let backend = poller.backend
                let point = Int32(CPOLLER_FAULT_WAIT)
                _ = cpoller_fault_inject(point, backend.kernelFD, EINTR, 1_000)
                defer { _ = cpoller_fault_inject(point, -1, 0, 0) }
                let start = ContinuousClock.now
                pd.setDeadline(in: .milliseconds(50), for: .read)
                backend.wake()
                #expect(await pd.boundedOutcome(.read) == .failed(.timeout))
                let elapsed = ContinuousClock.now - start
                #expect(elapsed >= .milliseconds(50) && elapsed < .seconds(2), "timed out after \(elapsed)")
                pd.setDeadline(nil, for: .read)
                let interrupted = cpoller_fault_inject(point, backend.kernelFD, EINTR, 100)
                #expect(interrupted > 0, "no wait was interrupted")
                backend.wake()
                try await expectReadWaitEndsReady(poller, pd, writer: pipe.writeFD)
                #expect(backend.waitBackoff.failures.load(ordering: .relaxed) == 0, "EINTR counted as a failed wait")
                #expect(backend.faults.reported.isEmpty, "EINTR reported as a fault: \(backend.faults.reported)")
                pd.finish()
            }
        }
    }
}
