import CPoller
import Glibc
import Testing

@testable import Poller

// Go's pollDesc state machine (go-netpoll.md §1, §2.4–2.6, §2.11, §5.6 items 65–67, 71, 72),
// through PollDescriptor on both backends.

extension NetpollSuites {
    @Suite("Netpoll semantics") struct NetpollSemanticsTests {
        // MARK: Latched readiness (T4 from nil, T2)

        @Test(
            "readiness with no waiter is latched and consumed by the next wait, which returns without parking; a second wait blocks until a new edge",
            arguments: BackendKind.allCases, DescriptorKind.allCases)
        func latchedReadiness(kind: BackendKind, descriptor: DescriptorKind) async throws {
            try await withRegisteredReader(kind, descriptor) { poller, ends, pd in
                #expect(!pd.isLatched(.read))
                writeBytes(ends.writer)
                #expect(await becomesTrue { pd.isLatched(.read) }, "readiness with no waiter was not latched")

                let attempts = pd.parkAttempts
                #expect(await pd.boundedOutcome(.read) == .ready)
                #expect(pd.parkAttempts == attempts, "the wait parked although readiness was latched")
                #expect(!pd.isLatched(.read), "the wait did not consume the latched readiness")

                drain(ends.reader)
                try await expectReadWaitEndsReady(
                    poller, pd, writer: ends.writer, parked: "the second wait did not park",
                    pendingFor: .milliseconds(50), pending: "the second wait returned without a new edge")
                pd.finish()
            }
        }

        @Test(
            "readiness present at registration is reported: a fresh socket's write wait returns at once",
            arguments: BackendKind.allCases)
        func readyAtRegistration(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let sockets = SocketPair()
                let pd = try poller.register(sockets.a)
                #expect(await becomesTrue { pd.isLatched(.write) }, "initial writability was not reported")
                let attempts = pd.parkAttempts
                #expect(await pd.boundedOutcome(.write) == .ready)
                #expect(pd.parkAttempts == attempts, "a wait on a ready direction parked")
                pd.finish()
            }
        }

        // MARK: Error checks in pollWait (netpollcheckerr order: closing, timeout, eventErr)

        @Test("closing is reported before an expired deadline", arguments: BackendKind.allCases)
        func closingBeforeTimeout(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                pd.setDeadline(in: .seconds(-1), for: .readWrite)
                #expect(await pd.boundedOutcome(.read) == .failed(.timeout))
                pd.unblock()
                #expect(await pd.boundedOutcome(.read) == .failed(.closing))
                #expect(await pd.boundedOutcome(.write) == .failed(.closing))
                #expect(pd.resetResult(.read) == .closing)
                #expect(pd.resetResult(.readWrite) == .closing)
                #expect(pd.closeResult() == nil)
            }
        }

        @Test(
            "an expired deadline fails the wait at once even with readiness latched, and keeps the latch",
            arguments: BackendKind.allCases)
        func expiredDeadlineBeatsReadiness(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                writeBytes(pipe.writeFD)
                #expect(await becomesTrue { pd.isLatched(.read) })
                pd.setDeadline(in: .seconds(-1), for: .read)
                let start = ContinuousClock.now
                #expect(await pd.boundedOutcome(.read) == .failed(.timeout))
                #expect(ContinuousClock.now - start < .seconds(1))
                #expect(pd.isLatched(.read), "a timeout cleared latched readiness (Go's T8 keeps it)")
                // The write direction has its own deadline.
                #expect(pd.resetResult(.write) == nil)
                // Not sticky: clearing the deadline lets the latched readiness through.
                pd.setDeadline(nil, for: .read)
                let attempts = pd.parkAttempts
                #expect(await pd.boundedOutcome(.read) == .ready)
                #expect(pd.parkAttempts == attempts)
                pd.finish()
            }
        }

        @Test(
            "an error event that is exactly EPOLLERR fails reads with notPollable and leaves writes ready",
            arguments: BackendKind.allCases)
        func errorEventIsReadOnly(kind: BackendKind) async throws {
            try await withFullPipeWriter(kind) { poller, pd, closeReader in
                closeReader()
                let reported = await becomesTrue { poller.reset(pd.slot, generation: pd.generation, mode: .read) == .notPollable }
                #expect(reported, "no notPollable after the reader of a full pipe went away")
                #expect(await pd.boundedOutcome(.read) == .failed(.notPollable))
                #expect(await pd.boundedOutcome(.write) == .ready, "writers must not see the error event as an error")
                #expect(pd.resetResult(.write) == nil)
                pd.finish()
            }
        }

        @Test(
            "an EPOLLERR event wakes a blocked writer with readiness, not an error",
            arguments: BackendKind.allCases)
        func errorEventWakesWriter(kind: BackendKind) async throws {
            try await withFullPipeWriter(kind) { poller, pd, closeReader in
                let writer = startWait(pd, .write)
                #expect(await waitersParked(poller, 1))
                closeReader()
                #expect(await writer.outcome() == .ready)
                #expect(await pd.boundedOutcome(.read) == .failed(.notPollable))
                pd.finish()
            }
        }

        // MARK: One waiter per direction

        @Test(
            "a second wait on a direction that has a waiter gets doubleWait; the first still completes on readiness",
            arguments: BackendKind.allCases, DescriptorKind.allCases)
        func doubleWait(kind: BackendKind, descriptor: DescriptorKind) async throws {
            try await withRegisteredReader(kind, descriptor) { poller, ends, pd in
                let first = startWait(pd, .read)
                #expect(await waitersParked(poller, 1))
                #expect(await pd.boundedOutcome(.read) == .failed(.doubleWait))
                try await Task.sleep(for: .milliseconds(20))
                #expect(!first.isFinished, "the double wait disturbed the first waiter")
                #expect(poller.parkedWaiterCount == 1)
                writeBytes(ends.writer)
                #expect(await first.outcome() == .ready)
                pd.finish()
            }
        }

        @Test("a reader and a writer can wait on one descriptor at the same time", arguments: BackendKind.allCases)
        func readerAndWriter(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let sockets = SocketPair()
                #expect(fillUntilBlocked(sockets.a) > 0)
                let pd = try poller.register(sockets.a)
                let reader = startWait(pd, .read)
                let writer = startWait(pd, .write)
                #expect(await waitersParked(poller, 2), "reader and writer did not both park")
                writeBytes(sockets.b)
                #expect(await reader.outcome() == .ready)
                #expect(!writer.isFinished, "data to read woke the writer")
                drain(sockets.b)
                #expect(await writer.outcome() == .ready)
                pd.finish()
            }
        }

        // MARK: Unblock and close (pollUnblock, pollClose)

        @Test(
            "unblock wakes a blocked reader and writer with closing; later waits and resets fail at once; a second unblock is harmless",
            arguments: BackendKind.allCases)
        func unblockWakesEveryone(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let pipe = Pipe()
                // The read end of a pipe never becomes writable: its writer waits forever.
                let pd = try poller.register(pipe.readFD)
                let reader = startWait(pd, .read)
                let writer = startWait(pd, .write)
                #expect(await waitersParked(poller, 2))
                let start = ContinuousClock.now
                pd.unblock()
                #expect(await reader.outcome() == .failed(.closing))
                #expect(await writer.outcome() == .failed(.closing))
                #expect(ContinuousClock.now - start < .seconds(1))
                #expect(await pd.boundedOutcome(.read) == .failed(.closing))
                #expect(pd.resetResult(.write) == .closing)
                pd.unblock()
                #expect(pd.resetResult(.read) == .closing)
                #expect(pd.closeResult() == nil)
                #expect(pd.closeResult() == .closing, "a second close of the same handle succeeded")
            }
        }

        // Close without unblock: BadInputTests.closeWithoutUnblock (with a descriptor-leak check).

        @Test(
            "close while a waiter is still parked is refused, and succeeds once it has returned",
            arguments: BackendKind.allCases)
        func closeWithParkedWaiter(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let pipe = Pipe()
                let writeFD = pipe.writeFD
                let pd = try poller.register(pipe.readFD)
                pd.unblock()
                // Only a wait that ignores errors (Go's pollWaitCanceled) can park after unblock.
                let done = DoneFlag()
                let waiter = Task {
                    await runtime_pollWaitCanceled(pd, 114)
                    done.set()
                }
                #expect(await waitersParked(poller, 1))
                #expect(pd.closeResult() == .waiterParked)
                #expect(poller.openDescriptorCount == 1)
                writeBytes(writeFD)
                let (_, timedOut) = await boundedValue(of: waiter, within: .seconds(5)) { writeBytes(writeFD) }
                #expect(!timedOut)
                #expect(pd.closeResult() == nil)
            }
        }

        @Test("a stale handle cannot affect a new registration that reuses its slot", arguments: BackendKind.allCases)
        func staleHandle(kind: BackendKind) async throws {
            try await withReusedSlot(kind, reused: "the freed slot was not reused (LIFO)") { poller, a, b, second in
                #expect(a != b)
                let waiter = startWait(b, .read)
                #expect(await waitersParked(poller, 1))
                a.unblock()
                a.setDeadline(in: .seconds(-1), for: .readWrite)
                #expect(a.resetResult(.read) == .closing)
                #expect(await a.boundedOutcome(.read) == .failed(.closing))
                #expect(a.closeResult() == .closing)
                try await Task.sleep(for: .milliseconds(30))
                #expect(!waiter.isFinished, "the stale handle woke the new registration's waiter")
                #expect(b.resetResult(.write) == nil, "the stale handle's deadline reached the new registration")
                #expect(poller.openDescriptorCount == 1)
                writeBytes(second.writeFD)
                #expect(await waiter.outcome() == .ready)
                b.finish()
            }
        }

        @Test(
            "a deadline armed by the previous user of a slot does not fire on the new registration",
            arguments: BackendKind.allCases)
        func staleTimerAfterReuse(kind: BackendKind) async throws {
            try await withReusedSlot(
                kind,
                beforeClose: { a, _ in
                    a.setDeadline(in: .milliseconds(20), for: .readWrite)
                },
                then: { poller, a, b, second in
                    let waiter = startWait(b, .read)
                    try await Task.sleep(for: .milliseconds(100))
                    #expect(!waiter.isFinished, "the old registration's deadline woke the new one")
                    #expect(b.resetResult(.write) == nil)
                    b.unblock()
                    #expect(await waiter.outcome() == .failed(.closing))
                    #expect(b.closeResult() == nil)
                })
        }

        @Test(
            "readiness of a closed registration does not reach the new registration in its slot",
            arguments: BackendKind.allCases)
        func staleEventAfterReuse(kind: BackendKind) async throws {
            try await withReusedSlot(
                kind,
                beforeClose: { _, first in
                    writeBytes(first.writeFD)
                },
                then: { poller, a, b, second in
                    let waiter = startWait(b, .read)
                    try await Task.sleep(for: .milliseconds(50))
                    #expect(!waiter.isFinished, "the closed registration's readiness woke the new one")
                    writeBytes(second.writeFD)
                    #expect(await waiter.outcome() == .ready)
                    b.finish()
                })
        }

        // MARK: pollReset

        @Test(
            "reset forgets latched readiness, so the next wait blocks until a new edge", arguments: BackendKind.allCases,
            DescriptorKind.allCases)
        func resetClearsLatch(kind: BackendKind, descriptor: DescriptorKind) async throws {
            try await withRegisteredReader(kind, descriptor) { poller, ends, pd in
                writeBytes(ends.writer)
                #expect(await becomesTrue { pd.isLatched(.read) })
                #expect(pd.resetResult(.read) == nil)
                #expect(!pd.isLatched(.read), "reset kept the latched readiness")
                drain(ends.reader)
                try await expectReadWaitEndsReady(
                    poller, pd, writer: ends.writer,
                    pendingFor: .milliseconds(50), pending: "a wait after reset returned without a new edge")
                pd.finish()
            }
        }

        @Test(
            "reset reports the pending error in Go's order, per direction, and keeps latched readiness when it does",
            arguments: BackendKind.allCases)
        func resetReportsErrors(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                writeBytes(pipe.writeFD)
                #expect(await becomesTrue { pd.isLatched(.read) })
                pd.setDeadline(in: .seconds(-1), for: .read)
                #expect(pd.resetResult(.read) == .timeout)
                #expect(pd.isLatched(.read), "a failing reset cleared latched readiness")
                #expect(pd.resetResult(.write) == nil)
                #expect(pd.resetResult(.readWrite) == .timeout)
                #expect(pd.resetResult(PollMode(rawValue: 4)) == .invalidMode)
                #expect(await pd.boundedOutcome(.readWrite) == .failed(.invalidMode))
                #expect(pd.blockingResult(.readWrite) == .invalidMode)
                pd.unblock()
                #expect(pd.resetResult(.read) == .closing)
                #expect(pd.closeResult() == nil)
            }
        }

        // MARK: An idle poller sleeps

        @Test(
            "an idle poller makes no wake-ups while a waiter is parked and no deadline is set",
            arguments: BackendKind.allCases)
        func idleMeansIdle(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let tid = await pollerTID(poller)
                let waiter = startWait(pd, .read)
                #expect(await waitersParked(poller, 1))
                try await Task.sleep(for: .milliseconds(30))
                let writes0 = poller.wakeWrites
                let switches0 = tid.flatMap { contextSwitches(tid: $0) }
                try await Task.sleep(for: .milliseconds(200))
                let writes1 = poller.wakeWrites
                let switches1 = tid.flatMap { contextSwitches(tid: $0) }
                #expect(writes1 == writes0, "the idle poller was woken \(writes1 - writes0) times")
                #expect(switches0 != nil, "could not read the poller thread's context switches")
                if let switches0, let switches1 {
                    #expect(switches1 - switches0 <= 2, "the idle poller thread ran \(switches1 - switches0) times in 200 ms")
                }
                writeBytes(pipe.writeFD)
                #expect(await waiter.outcome() == .ready)
                pd.finish()
            }
        }
    }
}

/// `withPoller` with a registration `a` of one pipe, prepared by `beforeClose` and then
/// finished, and a registration `b` of a second pipe (`second`) that must reuse `a`'s slot.
private func withReusedSlot(
    _ kind: BackendKind, reused: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation,
    beforeClose: (PollDescriptor, OwnedPipe) -> Void = { _, _ in },
    then body: (Poller, _ a: PollDescriptor, _ b: PollDescriptor, _ second: OwnedPipe) async throws -> Void
) async throws {
    try await withPoller(kind, sourceLocation: sourceLocation) { poller in
        let first = OwnedPipe()
        let second = OwnedPipe()
        let a = try poller.register(first.readFD)
        beforeClose(a, first)
        a.finish(sourceLocation: sourceLocation)
        let b = try poller.register(second.readFD)
        #expect(b.slot === a.slot, reused, sourceLocation: sourceLocation)
        try await body(poller, a, b, second)
        withExtendedLifetime(first) {}  // open throughout: `second` gets other descriptor numbers
    }
}
