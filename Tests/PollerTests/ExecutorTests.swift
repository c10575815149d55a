import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller

// The poller thread as a task executor, cancellation, and blocking waits on plain threads.

extension NetpollSuites {
    @Suite("Executor, cancellation and blocking waits") struct ExecutorTests {
        @Test(
            "a task preferring the poller's executor runs on the poller thread and resumes there after a wait",
            arguments: BackendKind.allCases)
        func runsOnPollerThread(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let task = Task(executorPreference: poller.executor) { () -> (UInt64, UInt64, WaitOutcome) in
                    let before = cpoller_thread_id()
                    let outcome = await pd.outcome(.read)
                    return (before, cpoller_thread_id(), outcome)
                }
                #expect(await waitersParked(poller, 1))
                writeBytes(pipe.writeFD)
                let (result, timedOut) = await boundedValue(of: task, within: .seconds(5)) { task.cancel() }
                #expect(!timedOut)
                let (before, after, outcome) = try #require(result)
                #expect(outcome == .ready)
                #expect(before == poller.threadID, "the task did not start on the poller thread")
                #expect(after == poller.threadID, "the task did not resume on the poller thread")
                pd.finish()
            }
        }

        /// Two tasks bounce one byte through two pipes `rounds` times; returns the round trips
        /// each side completed.
        private func pingPong(
            _ poller: Poller, rounds: Int, pingOn: (any TaskExecutor)?, pongOn: (any TaskExecutor)?
        ) async throws -> (ping: Int, pong: Int, pingThreads: Set<UInt64>) {
            let toPong = OwnedPipe()
            let toPing = OwnedPipe()
            let pongPD = try poller.register(toPong.readFD)
            let pingPD = try poller.register(toPing.readFD)
            // Deadlines turn a lost wake-up into a timeout instead of a hang.
            pongPD.setDeadline(in: .seconds(60), for: .read)
            pingPD.setDeadline(in: .seconds(60), for: .read)
            let ping = Task(executorPreference: pingOn) { () -> (Int, Set<UInt64>) in
                var threads: Set<UInt64> = []
                for i in 0..<rounds {
                    threads.insert(cpoller_thread_id())
                    guard writeBytes(toPong.writeFD) == 1 else { return (i, threads) }
                    do { try await readOneByte(toPing.readFD, pingPD) } catch { return (i, threads) }
                }
                threads.insert(cpoller_thread_id())
                return (rounds, threads)
            }
            let pong = Task(executorPreference: pongOn) { () -> Int in
                for i in 0..<rounds {
                    do { try await readOneByte(toPong.readFD, pongPD) } catch { return i }
                    guard writeBytes(toPing.writeFD) == 1 else { return i }
                }
                return rounds
            }
            let unblockBoth: @Sendable () -> Void = {
                pongPD.unblock()
                pingPD.unblock()
            }
            let (pingResult, pingTimedOut) = await boundedValue(of: ping, within: .seconds(90), onTimeout: unblockBoth)
            let (pongResult, pongTimedOut) = await boundedValue(of: pong, within: .seconds(10), onTimeout: unblockBoth)
            #expect(!pingTimedOut && !pongTimedOut)
            pongPD.finish()
            pingPD.finish()
            return (pingResult?.0 ?? -1, pongResult ?? -1, pingResult?.1 ?? [])
        }

        @Test(
            "two tasks on the poller's executor complete 10,000 round trips through two pipes",
            arguments: BackendKind.allCases)
        func pingPongOnExecutor(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let start = ContinuousClock.now
                let result = try await pingPong(poller, rounds: 10_000, pingOn: poller.executor, pongOn: poller.executor)
                #expect(result.ping == 10_000)
                #expect(result.pong == 10_000)
                #expect(result.pingThreads == [poller.threadID], "the ping task ran off the poller thread")
                #expect(ContinuousClock.now - start < .seconds(60))
            }
        }

        @Test(
            "tasks on other executors are woken too: 2,000 round trips between plain tasks, and between a poller task and a plain task",
            arguments: BackendKind.allCases)
        func pingPongElsewhere(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let plain = try await pingPong(poller, rounds: 2_000, pingOn: nil, pongOn: nil)
                #expect(plain.ping == 2_000 && plain.pong == 2_000)
                let mixed = try await pingPong(poller, rounds: 2_000, pingOn: poller.executor, pongOn: nil)
                #expect(mixed.ping == 2_000 && mixed.pong == 2_000)
            }
        }

        @Test(
            "cancelling a task blocked in wait ends it with cancelled promptly and leaves the descriptor usable",
            arguments: BackendKind.allCases)
        func cancellation(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let waiter = startWait(pd, .read)
                #expect(await waitersParked(poller, 1))
                let start = ContinuousClock.now
                waiter.task.cancel()
                #expect(await waiter.outcome() == .failed(.cancelled))
                #expect(ContinuousClock.now - start < .seconds(1))
                #expect(poller.parkedWaiterCount == 0)
                // The descriptor is still usable: a new wait parks and gets readiness.
                try await expectReadWaitEndsReady(poller, pd, writer: pipe.writeFD)
                pd.finish()
            }
        }

        @Test(
            "a wait started in an already-cancelled task returns cancelled without parking",
            arguments: BackendKind.allCases)
        func alreadyCancelled(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let task = Task { () -> WaitOutcome in
                    while !Task.isCancelled { await Task.yield() }
                    return await pd.outcome(.read)
                }
                task.cancel()
                let (outcome, timedOut) = await boundedValue(of: task, within: .seconds(5)) { pd.unblock() }
                #expect(!timedOut)
                #expect(outcome == .failed(.cancelled))
                #expect(poller.parkedWaiterCount == 0)
                pd.finish()
            }
        }

        @Test("waitBlocking on a plain thread returns when the descriptor becomes ready", arguments: BackendKind.allCases)
        func blockingWaitReady(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let result = SharedBox<PollError??>(nil)
                let thread = BlockingThread { result.value = .some(pd.blockingResult(.read)) }
                #expect(await waitersParked(poller, 1), "the blocking waiter did not park")
                #expect(!thread.done.isSet)
                writeBytes(pipe.writeFD)
                #expect(await thread.finish { pd.unblock() }, "waitBlocking did not return on readiness")
                #expect(result.value == .some(nil))
                pd.finish()
            }
        }

        @Test(
            "waitBlocking returns timeout when the deadline passes, and closing when unblocked",
            arguments: BackendKind.allCases)
        func blockingWaitErrors(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let result = SharedBox<PollError??>(nil)
                let start = ContinuousClock.now
                pd.setDeadline(in: .milliseconds(30), for: .read)
                let timed = BlockingThread { result.value = .some(pd.blockingResult(.read)) }
                #expect(await timed.finish { pd.unblock() }, "waitBlocking ignored the deadline")
                #expect(result.value == .some(.timeout))
                #expect(ContinuousClock.now - start >= .milliseconds(30))

                pd.setDeadline(nil, for: .read)
                result.value = nil
                let closing = BlockingThread { result.value = .some(pd.blockingResult(.read)) }
                #expect(await waitersParked(poller, 1))
                pd.unblock()
                #expect(await closing.finish { writeBytes(pipe.writeFD) }, "unblock did not wake waitBlocking")
                #expect(result.value == .some(.closing))
                #expect(pd.closeResult() == nil)
            }
        }

        @Test("waitBlocking on the poller thread is refused instead of stopping the loop", arguments: BackendKind.allCases)
        func blockingWaitOnPollerThread(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let task = Task(executorPreference: poller.executor) { pd.blockingResult(.read) }
                let (result, timedOut) = await boundedValue(of: task, within: .seconds(5)) { pd.unblock() }
                #expect(!timedOut)
                #expect(result == .wouldBlockPollerThread)
                pd.finish()
            }
        }
    }
}
