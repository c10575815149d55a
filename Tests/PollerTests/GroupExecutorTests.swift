import Testing

@testable import Poller

// The group's executor (what installAsDefaultExecutor installs), driven in this process as a
// task executor preference, since the default executor of a test process cannot be replaced.

@Suite("The group's executor")
struct GroupExecutorTests {
    @Test(
        "A task on the group's executor sleeps on a poller's timer heap and wakes on a poller thread",
        arguments: BackendKind.allCases)
    func sleepWakesOnAPollerThread(kind: BackendKind) async throws {
        try skipIfUnavailable(kind)
        let group = try PollerGroup(threads: 2, backend: kind.choice)
        defer { group.shutdown() }
        let executor = PollerGroupExecutor(group: group)
        let sleeper = Task(executorPreference: executor) {
            let start = ContinuousClock.now
            try await Task.sleep(for: .milliseconds(200))
            return (ContinuousClock.now - start, Poller.current.map(group.contains) ?? false)
        }
        // The sleep waits in a member's heap, not in Dispatch's timers.
        #expect(await becomesTrue { delayedJobCount(group) == 1 })
        let (slept, onPoller) = try await sleeper.value
        #expect(slept >= .milliseconds(200))
        #expect(onPoller)
        #expect(delayedJobCount(group) == 0)
    }

    @Test(
        "A sleep pending at shutdown still ends on time, on the platform's executor: never early, never stranded",
        arguments: BackendKind.allCases)
    func pendingSleepOutlivesShutdown(kind: BackendKind) async throws {
        try skipIfUnavailable(kind)
        let group = try PollerGroup(threads: 2, backend: kind.choice)
        let executor = PollerGroupExecutor(group: group)
        let start = ContinuousClock.now
        let sleeper = Task(executorPreference: executor) {
            try await Task.sleep(for: .milliseconds(300))
            return Poller.current == nil
        }
        #expect(await becomesTrue { delayedJobCount(group) == 1 })
        group.shutdown()
        let offPollers = try await sleeper.value
        #expect(ContinuousClock.now - start >= .milliseconds(300))
        #expect(offPollers)
    }
}

extension GroupExecutorTests {
    @Test(
        "Installing the default executor from a poller thread is refused with a clear error, and changes nothing",
        arguments: BackendKind.allCases)
    func installFromAPollerThreadIsRefused(kind: BackendKind) async throws {
        try await withPoller(kind) { poller in
            let refused = await Task(executorPreference: poller.executor) { () -> PollerError? in
                do throws(PollerError) {
                    try PollerGroup.installAsDefaultExecutor(threads: 1, backend: kind.choice)
                    return nil
                } catch {
                    return error
                }
            }.value
            #expect(refused == .defaultExecutorAlreadyChosen)
            #expect(PollerGroup.defaultExecutorGroup == nil)
            #expect(await Task { Poller.current == nil }.value, "plain tasks still run off the poller threads")
        }
    }
}

/// The jobs waiting in the members' timer heaps.
private func delayedJobCount(_ group: PollerGroup) -> Int {
    group.pollers.reduce(0) { n, poller in n + poller.timers.withLockAnnotated { $0.delayedJobs.count } }
}
