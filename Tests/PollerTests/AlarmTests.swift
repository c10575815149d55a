import Synchronization
import Testing

@testable import Poller

// PollerAlarm: a wake-up on a poller's own timers with no descriptor behind it, what an
// accept loop backs off on while the process is out of descriptors (PollerNetTests
// "serve started with no descriptor free accepts once one is free").

/// `alarm.wait()` in a task of its own, with a flag set when it returns.
private func startWaiting(_ alarm: PollerAlarm) -> (task: Task<Void, Never>, returned: DoneFlag) {
    let returned = DoneFlag()
    let task = Task {
        await alarm.wait()
        returned.set()
    }
    return (task, returned)
}

/// Starts a wait on `alarm`, expects it to park and to stay parked `holding` long, then runs
/// `release` and expects the wait to return (bounded: a parked wait that never returns fails).
private func expectWaitHeldUntil(
    _ alarm: PollerAlarm, holding: Duration = .zero, sourceLocation: SourceLocation = #_sourceLocation,
    release: () -> Void
) async {
    let (task, returned) = startWaiting(alarm)
    #expect(await becomesTrue { alarm.isWaiterParked }, "the wait did not park", sourceLocation: sourceLocation)
    if holding > .zero { try? await Task.sleep(for: holding) }
    #expect(!returned.isSet, "the wait returned before its release", sourceLocation: sourceLocation)
    release()
    #expect(await becomesTrue { returned.isSet }, "released, the wait never returned", sourceLocation: sourceLocation)
    await task.value
}

@Suite("Alarms")
struct AlarmTests {
    @Test("an alarm returns its wait no earlier than the time it was armed for", arguments: BackendKind.allCases)
    func armedAlarmWaitsItsTime(kind: BackendKind) async throws {
        try await withPoller(kind) { poller in
            let alarm = PollerAlarm(poller: poller)
            let start = ContinuousClock.now
            alarm.arm(in: .milliseconds(50))
            let (task, returned) = startWaiting(alarm)
            #expect(await becomesTrue { returned.isSet }, "the wait never returned")
            #expect(ContinuousClock.now - start >= .milliseconds(50))
            await task.value
        }
    }

    @Test("an alarm that is not armed holds its waiter until it is armed", arguments: BackendKind.allCases)
    func unarmedAlarmHoldsItsWaiter(kind: BackendKind) async throws {
        try await withPoller(kind) { poller in
            let alarm = PollerAlarm(poller: poller)
            await expectWaitHeldUntil(alarm, holding: .milliseconds(50)) { alarm.arm(in: .milliseconds(10)) }
        }
    }

    @Test(
        "expire returns a parked wait at once, and every later wait until the alarm is armed again",
        arguments: BackendKind.allCases)
    func expireReturnsWaitsUntilRearmed(kind: BackendKind) async throws {
        try await withPoller(kind) { poller in
            let alarm = PollerAlarm(poller: poller)
            alarm.arm(in: .seconds(3600))
            await expectWaitHeldUntil(alarm) { alarm.expire() }
            await alarm.wait()  // expired: returns at once
            alarm.arm(in: .seconds(3600))
            await expectWaitHeldUntil(alarm, holding: .milliseconds(20)) { alarm.expire() }
        }
    }

    @Test(
        "re-arming a parked alarm later holds its waiter until the later time; earlier returns it sooner",
        arguments: BackendKind.allCases)
    func rearmingMovesTheWakeUp(kind: BackendKind) async throws {
        try await withPoller(kind) { poller in
            let alarm = PollerAlarm(poller: poller)
            let start = ContinuousClock.now
            alarm.arm(in: .milliseconds(20))
            let (later, laterReturned) = startWaiting(alarm)
            alarm.arm(in: .milliseconds(200))
            #expect(await becomesTrue { laterReturned.isSet }, "the wait never returned")
            #expect(ContinuousClock.now - start >= .milliseconds(200), "the first, earlier entry returned the wait")
            await later.value
            alarm.arm(in: .seconds(3600))
            await expectWaitHeldUntil(alarm) { alarm.arm(in: .milliseconds(10)) }
        }
    }

    @Test(
        "a poller's shutdown returns a parked alarm wait, and every later wait returns at once",
        arguments: BackendKind.allCases)
    func shutdownReturnsAlarmWaits(kind: BackendKind) async throws {
        let poller = try makePoller(kind)
        let alarm = PollerAlarm(poller: poller)
        alarm.arm(in: .seconds(3600))
        await expectWaitHeldUntil(alarm) { poller.shutdown() }
        alarm.arm(in: .seconds(3600))
        let (after, afterReturned) = startWaiting(alarm)
        #expect(await becomesTrue { afterReturned.isSet }, "a wait after shutdown parked")
        await after.value
    }
}
