import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller

// Races between a starting or parked wait and readiness, deadlines, unblock and close
// (go-netpoll.md §1.6, §2.6, §6 items 1, 6, 7). Each runs 1,000 times per backend; every wait
// is bounded, and the first bad iteration stops the loop.

extension NetpollSuites {
    @Suite("Races") struct RaceTests {
        static let iterations = 1_000

        /// A pseudo-random jitter of 0..<`bound` nanoseconds.
        private static func jitter(_ i: Int, _ bound: Int64) -> Int64 {
            Int64(truncatingIfNeeded: (UInt64(i) &* 0x9E37_79B9_7F4A_7C15) >> 40) % bound
        }

        @Test("readiness arriving while a wait starts is never lost", arguments: BackendKind.allCases)
        func readinessVersusWait(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                for i in 0..<Self.iterations {
                    drain(pipe.readFD)
                    #expect(pd.resetResult(.read) == nil)
                    let waiter = startWait(pd, .read)
                    spinWait(nanoseconds: Self.jitter(i, 30_000))
                    writeBytes(pipe.writeFD)
                    let outcome = await waiter.outcome()
                    guard outcome == .ready else {
                        Issue.record("iteration \(i): the wait ended \(outcome)")
                        break
                    }
                }
                pd.finish()
            }
        }

        @Test(
            "readiness racing a very short deadline ends the wait with ready or timeout, never a hang",
            arguments: BackendKind.allCases)
        func readinessVersusDeadline(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                var ready = 0
                var timedOut = 0
                for i in 0..<Self.iterations {
                    pd.setDeadline(nil, for: .read)
                    drain(pipe.readFD)
                    #expect(pd.resetResult(.read) == nil)
                    pd.setDeadline(in: .microseconds(20), for: .read)
                    let waiter = startWait(pd, .read)
                    spinWait(nanoseconds: Self.jitter(i, 40_000))
                    writeBytes(pipe.writeFD)
                    let outcome = await waiter.outcome()
                    switch outcome {
                    case .ready: ready += 1
                    case .failed(.timeout): timedOut += 1
                    default:
                        Issue.record("iteration \(i): the wait ended \(outcome)")
                    }
                    if outcome != .ready && outcome != .failed(.timeout) { break }
                }
                #expect(ready + timedOut == Self.iterations, "ready \(ready), timeout \(timedOut)")
                pd.setDeadline(nil, for: .read)
                #expect(poller.armedTimerCount == 0)
                pd.finish()
            }
        }

        @Test("unblock racing a starting wait always ends it with closing", arguments: BackendKind.allCases)
        func unblockVersusWait(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let pipe = Pipe()
                for i in 0..<Self.iterations {
                    let pd = try poller.register(pipe.readFD)
                    let waiter = startWait(pd, .read)
                    spinWait(nanoseconds: Self.jitter(i, 30_000))
                    pd.unblock()
                    let outcome = await waiter.outcome()
                    let closed = pd.closeResult()
                    #expect(closed == nil, "iteration \(i): close after the waiter returned failed: \(String(describing: closed))")
                    guard outcome == .failed(.closing), closed == nil else {
                        Issue.record("iteration \(i): the wait ended \(outcome)")
                        break
                    }
                }
            }
        }

        @Test(
            "unblock and close racing a starting wait: the wait gets closing; close succeeds, at worst after the waiter returns",
            arguments: BackendKind.allCases)
        func closeVersusWait(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let pipe = Pipe()
                var refused = 0
                for i in 0..<Self.iterations {
                    let pd = try poller.register(pipe.readFD)
                    let waiter = startWait(pd, .read)
                    spinWait(nanoseconds: Self.jitter(i, 30_000))
                    pd.unblock()
                    let early = pd.closeResult()
                    let outcome = await waiter.outcome()
                    var bad = outcome != .failed(.closing)
                    if bad { Issue.record("iteration \(i): the wait ended \(outcome)") }
                    if early == .waiterParked {
                        refused += 1
                        let late = pd.closeResult()
                        if late != nil {
                            Issue.record("iteration \(i): close after the waiter returned failed: \(late!)")
                            bad = true
                        }
                    } else if early != nil {
                        Issue.record("iteration \(i): close failed with \(early!)")
                        bad = true
                    }
                    if bad { break }
                }
                #expect(poller.openDescriptorCount == 0)
                _ = refused
            }
        }

        @Test("a deadline cleared or extended while it fires never strands the waiter", arguments: BackendKind.allCases)
        func deadlineChangeVersusExpiry(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                for i in 0..<Self.iterations {
                    pd.setDeadline(nil, for: .read)
                    drain(pipe.readFD)
                    #expect(pd.resetResult(.read) == nil)
                    let waiter = startWait(pd, .read)
                    pd.setDeadline(in: .microseconds(30), for: .read)
                    spinWait(nanoseconds: Self.jitter(i, 60_000))
                    if i.isMultiple(of: 2) {
                        pd.setDeadline(nil, for: .read)
                        #expect(pd.deadlines.read == 0)
                    } else {
                        pd.setDeadline(in: .seconds(30), for: .read)
                        #expect(pd.deadlines.read > 0)
                    }
                    // Whoever won, the deadline is no longer expired: a waiter still parked
                    // must stay parked until readiness.
                    #expect(
                        pd.slot.state.withLockAnnotated { $0.pendingError(.read) } == nil,
                        "iteration \(i): the read deadline is still expired after it was changed")
                    writeBytes(pipe.writeFD)
                    let outcome = await waiter.outcome()
                    guard outcome == .ready || outcome == .failed(.timeout) else {
                        Issue.record("iteration \(i): the wait ended \(outcome)")
                        break
                    }
                }
                pd.setDeadline(nil, for: .read)
                #expect(poller.armedTimerCount == 0, "timers leaked: \(poller.armedTimerCount)")
                pd.finish()
            }
        }

        @Test(
            "64 tasks waiting on 64 descriptors all complete when every descriptor becomes ready",
            arguments: BackendKind.allCases)
        func manyWaiters(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let count = 64
                let pipes = (0..<count).map { _ in OwnedPipe() }
                let pds = try pipes.map { try poller.register($0.readFD) }
                for i in 0..<Self.iterations {
                    for (pipe, pd) in zip(pipes, pds) {
                        drain(pipe.readFD)
                        _ = pd.resetResult(.read)
                    }
                    let waitUntilParked = i.isMultiple(of: 100)
                    let all = Task { () -> [WaitOutcome] in
                        await withTaskGroup(of: WaitOutcome.self) { group in
                            for pd in pds { group.addTask { await pd.outcome(.read) } }
                            var outcomes: [WaitOutcome] = []
                            for await outcome in group { outcomes.append(outcome) }
                            return outcomes
                        }
                    }
                    if waitUntilParked {
                        #expect(await waitersParked(poller, count), "iteration \(i): not every waiter parked")
                    }
                    for pipe in pipes { writeBytes(pipe.writeFD) }
                    let (result, timedOut) = await boundedValue(of: all, within: .seconds(30)) { all.cancel() }
                    let outcomes = result ?? []
                    let notReady = outcomes.filter { $0 != .ready }
                    guard !timedOut, notReady.isEmpty, outcomes.count == count else {
                        Issue.record("iteration \(i): \(notReady.count) of \(count) waits did not complete: \(notReady.prefix(4))")
                        break
                    }
                }
                for pd in pds { pd.finish() }
            }
        }
    }
}
