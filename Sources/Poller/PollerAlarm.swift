import Synchronization

/// A wake-up at an instant on a poller's own timers, needing no descriptor: what an accept
/// loop's back-off and a serve's grace period sleep on.
///
/// Why not a descriptor with a read deadline (a pipe that is never written, as before): the
/// pipe has to be made, and at EMFILE — exactly when an accept loop must back off — it cannot
/// be; a serve started at the descriptor limit failed with `pipe2: EMFILE` (regression
/// "serve started with no descriptor free accepts once one is free"). Why not `Task.sleep`:
/// Dispatch opens its timer descriptors lazily and traps when it cannot.
///
/// Invariants (all under `state`'s lock):
/// - `deadline` 0 means not armed (``wait()`` waits for ``arm(in:)``, ``expire()`` or the
///   poller's shutdown); otherwise a CLOCK_MONOTONIC instant, and once it is at or before now
///   every ``wait()`` returns at once until the alarm is armed again.
/// - An entry sits in the poller's heap only while a waiter is parked (or one fired since and
///   has not been looked at): `scheduled` is the earliest such entry's instant, so re-arming
///   later adds nothing and re-arming earlier adds one entry. A stale entry is harmless: firing
///   looks at `deadline`, never at the entry's instant.
/// - Once the poller has stopped, waits return at once (`stopped`).
package final class PollerAlarm: Sendable {
    struct State {
        var deadline: Int64 = 0
        var scheduled: Int64?
        var waiter: UnsafeContinuation<Void, Never>?
        var stopped = false
    }

    private let poller: Poller
    private let state = Mutex(State())

    package init(poller: Poller) {
        self.poller = poller
    }

    /// Sets the time ``wait()`` returns at: `duration` from now (zero or less: at once).
    package func arm(in duration: Duration) {
        let nanos = MonotonicClock.nanoseconds(duration)
        let now = MonotonicClock.now()
        let (sum, overflow) = now.addingReportingOverflow(max(nanos, 0))
        set(deadline: nanos <= 0 ? now : (overflow ? .max : sum), now: now)
    }

    /// Makes a pending or the next ``wait()`` return at once (until ``arm(in:)`` again).
    package func expire() {
        let now = MonotonicClock.now()
        set(deadline: now, now: now)
    }

    /// Returns when the armed time comes, ``expire()`` is called or the poller shuts down,
    /// whatever the task's cancellation. One waiter at a time.
    package nonisolated(nonsending) func wait() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let now = MonotonicClock.now()
            let decision = state.withLockAnnotated { s -> WaitDecision in
                precondition(s.waiter == nil, "PollerAlarm: a second concurrent wait")
                if s.stopped || (s.deadline != 0 && s.deadline <= now) { return .returnNow }
                s.waiter = continuation
                return s.needsEntry().map { .parkWithEntry(at: $0) } ?? .park
            }
            switch decision {
            case .returnNow: continuation.resume()
            case .parkWithEntry(let when): schedule(at: when)
            case .park: break
            }
        }
    }

    private enum WaitDecision {
        case returnNow
        case park
        case parkWithEntry(at: Int64)
    }

    /// Whether a waiter is parked (for tests).
    var isWaiterParked: Bool { state.withLockAnnotated { $0.waiter != nil } }

    private func set(deadline: Int64, now: Int64) {
        let (ready, scheduleAt) = state.withLockAnnotated { s -> (UnsafeContinuation<Void, Never>?, Int64?) in
            s.deadline = deadline
            guard s.waiter != nil else { return (nil, nil) }
            if deadline <= now {
                defer { s.waiter = nil }
                return (s.waiter, nil)
            }
            return (nil, s.needsEntry())
        }
        ready?.resume()
        if let scheduleAt { schedule(at: scheduleAt) }
    }

    /// Puts an entry in the poller's heap; when the poller has stopped, resumes the waiter.
    private func schedule(at when: Int64) {
        if !poller.schedule(self, at: when) { stop() }
    }

    /// Poller thread: an entry of this alarm is due.
    func fire(now: Int64) {
        let (ready, scheduleAt) = state.withLockAnnotated { s -> (UnsafeContinuation<Void, Never>?, Int64?) in
            s.scheduled = nil
            guard s.waiter != nil, s.deadline != 0 else { return (nil, nil) }
            if s.deadline <= now {
                defer { s.waiter = nil }
                return (s.waiter, nil)
            }
            // Armed later since this entry was made: one entry at the new instant.
            return (nil, s.needsEntry())
        }
        ready?.resume()
        if let scheduleAt { schedule(at: scheduleAt) }
    }

    /// The poller has stopped (or refused an entry because it has): the waiter returns, and
    /// every later wait returns at once.
    func stop() {
        let waiter = state.withLockAnnotated { s -> UnsafeContinuation<Void, Never>? in
            s.stopped = true
            s.scheduled = nil
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }
}

extension PollerAlarm.State {
    /// The instant a new heap entry is needed at for a parked waiter, recording it; nil when
    /// an entry at or before the deadline is already in the heap, or the alarm is not armed.
    mutating func needsEntry() -> Int64? {
        guard deadline != 0 else { return nil }
        if let scheduled, scheduled <= deadline { return nil }
        scheduled = deadline
        return deadline
    }
}
