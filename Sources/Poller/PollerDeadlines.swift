import Synchronization

// Deadlines: the poller's side of Go's pollSetDeadline and netpolldeadlineimpl. The state
// transitions (which timer to arm, move or cancel; what expires when one fires) are
// SlotState's (PollDescriptorState.swift); here are the heap they act on, the loop's sleep
// bound, and the waking of a sleeping poller for an earlier deadline.
//
// Lock order: a slot's lock, then the heap's (`timers`). Timers are popped under the heap's
// lock and fired after it is released, since firing takes the slot's lock (Go #35532).

extension Poller {
    /// The deadline heap and the sleeping poller's own wake-up time, under one mutex
    /// (`Poller.timers`), so a new deadline can tell whether it must wake the poller.
    struct TimerState {
        var heap = DeadlineHeap()
        /// When the sleeping poller will wake up by itself: `.min` while it is awake (it will
        /// look at the heap before sleeping), `.max` when it sleeps with no timeout. A new
        /// deadline earlier than this must wake it.
        var sleepUntil: Int64 = .min
        /// Jobs scheduled for an instant (`Task.sleep` under the installed default executor).
        var delayedJobs = DelayedJobHeap<QueuedJob>()
        /// Alarms with a parked waiter (``PollerAlarm``), due at an instant.
        var alarms = DelayedJobHeap<PollerAlarm>()
        /// The loop has exited: delayed jobs go to the platform's executor instead.
        var stopped = false

        /// The earliest descriptor deadline or delayed job, if any.
        var earliest: Int64? {
            // Spelled out: this runs on every iteration of the loop, and must not allocate.
            var first = heap.earliest
            if let b = delayedJobs.earliest { first = first.map { min($0, b) } ?? b }
            if let c = alarms.earliest { first = first.map { min($0, c) } ?? c }
            return first
        }
    }

    /// The longest timeout ever handed to the kernel: one day.
    ///
    /// Why: a deadline at the end of the clock (overflowing deadlines clamp to `Int64.max`)
    /// makes `earliest - now` about `Int64.max`, and the kernel adds its own current time to a
    /// relative timeout. io_uring's EXT_ARG wait does that with a plain 64-bit add
    /// (io_cqring_wait: `ktime_add(timeout, start_time)`), which wraps to an instant in the
    /// past. On Linux 6.18 the hrtimer code happens to turn that negative expiry into "never"
    /// (ktime_add_safe), so nothing spins there (measured: 0 µs of poller CPU per second, both
    /// backends); but a poller must not depend on what each kernel makes of an overflowed
    /// expiry. A bounded timeout never reaches that arithmetic, and costs one wake-up a day:
    /// the loop recomputes the timeout after every wake-up, so a far deadline is slept towards
    /// in steps. (Go caps epoll's timeout at 1e9 ms for the same reason; epoll_pwait2 and the
    /// millisecond epoll_wait path clamp safely already.)
    static let maxSleepNanos: Int64 = 86_400 * 1_000_000_000

    /// The timeout for a blocking poll with the earliest deadline at `earliest` (nil: none):
    /// -1 (forever) without a deadline, 0 when it is due, else the time left, at most
    /// ``maxSleepNanos``.
    static func sleepTimeout(earliest: Int64?, now: Int64) -> Int64 {
        guard let earliest else { return -1 }
        if earliest <= now { return 0 }
        // No overflow: earliest > now, and now (CLOCK_MONOTONIC) is never negative.
        return min(earliest - now, maxSleepNanos)
    }

    /// Timeout for the next blocking poll, recording when the poller will wake by itself.
    func timeoutUntilNextDeadline() -> Int64 {
        timers.withLockAnnotated { t in
            let now = MonotonicClock.now()
            let timeout = Poller.sleepTimeout(earliest: t.earliest, now: now)
            // A deadline earlier than sleepUntil wakes the poller; one later is picked up when
            // it wakes by itself, at the (possibly capped) timeout.
            if timeout < 0 {
                t.sleepUntil = .max
            } else if timeout > 0 {
                t.sleepUntil = now + timeout
            }
            return timeout
        }
    }

    /// Runs `job` on this poller's thread at the CLOCK_MONOTONIC instant `when` (nanoseconds):
    /// `Task.sleep` under the group installed as the default executor. Waking a sleeping
    /// poller follows the deadline rule: only for an instant earlier than it will wake by
    /// itself. After the loop has exited the job goes to the platform's executor, with the
    /// time it has left.
    func enqueue(_ job: QueuedJob, at when: Int64) {
        let (accepted, wakePoller) = timers.withLockAnnotated { t -> (Bool, Bool) in
            if t.stopped { return (false, false) }
            t.delayedJobs.schedule(job, at: when)
            return (true, when < t.sleepUntil)
        }
        if !accepted {
            PlatformFallback.enqueue(job.job, afterNanos: when - MonotonicClock.now())
        } else if wakePoller {
            backend.wake()
        }
    }

    /// Fires `alarm` on this poller's thread at the CLOCK_MONOTONIC instant `when`
    /// (nanoseconds), waking a sleeping poller only for an instant earlier than it will wake
    /// by itself; false (nothing scheduled) once the loop has exited.
    func schedule(_ alarm: PollerAlarm, at when: Int64) -> Bool {
        let (accepted, wakePoller) = timers.withLockAnnotated { t -> (Bool, Bool) in
            if t.stopped { return (false, false) }
            t.alarms.schedule(alarm, at: when)
            return (true, when < t.sleepUntil)
        }
        if wakePoller { backend.wake() }
        return accepted
    }

    /// Go's pollSetDeadline with an absolute deadline: 0 none, < 0 already expired, > 0 a
    /// CLOCK_MONOTONIC instant in nanoseconds.
    func setDeadline(_ slot: DescriptorSlot, generation: UInt32, deadline d: Int64, mode: PollMode) {
        guard mode == .read || mode == .write || mode == .readWrite else { return }
        var woken: [(Waiter, WakeReason)] = []
        var wakePoller = false
        slot.state.withLockAnnotated { s in
            let change = s.setDeadline(d, mode: mode, generation: generation, woken: &woken)
            let read = apply(change.read, to: slot, isWrite: false)
            let write = apply(change.write, to: slot, isWrite: true)
            wakePoller = read || write
            cancelSendIfStopped(&s, slot: slot)
        }
        resume(&woken)
        if wakePoller { backend.wake() }
    }

    /// Carries out one timer change under the slot's lock; true if the sleeping poller must
    /// be woken to honour it.
    private func apply(_ change: SlotState.TimerChange, to slot: DescriptorSlot, isWrite: Bool) -> Bool {
        switch change {
        case .keep:
            return false
        case .schedule(let when, let expiresBoth, let sequence):
            return schedule(slot, when: when, isWrite: isWrite, both: expiresBoth, sequence: sequence)
        case .cancel:
            timers.withLockAnnotated { $0.heap.cancel(slot: slot.index, isWrite: isWrite) }
            return false
        }
    }

    /// Arms a timer; true if the sleeping poller must be woken to honour it.
    private func schedule(_ slot: DescriptorSlot, when: Int64, isWrite: Bool, both: Bool, sequence: UInt64) -> Bool {
        timers.withLockAnnotated { t in
            t.heap.schedule(.init(when: when, slot: slot.index, isWrite: isWrite, expiresBoth: both, sequence: sequence))
            return when < t.sleepUntil
        }
    }

    /// Takes both of a slot's timers out of the heap (unblock, with the slot's lock held).
    func cancelTimers(_ slot: DescriptorSlot) {
        timers.withLockAnnotated { t in
            t.heap.cancel(slot: slot.index, isWrite: false)
            t.heap.cancel(slot: slot.index, isWrite: true)
        }
    }

    /// Runs the deadline timers that are due (Go's netpolldeadlineimpl; the transition is
    /// ``SlotState/fireTimer(_:now:woken:)``) and moves the delayed jobs that are due to the
    /// run queue.
    func fireDeadlines(
        _ expired: inout [DeadlineHeap.Timer], _ woken: inout [(Waiter, WakeReason)], _ dueJobs: inout [QueuedJob],
        _ dueAlarms: inout [PollerAlarm]
    ) {
        let now = MonotonicClock.now()
        let due = timers.withLockAnnotated { t -> Bool in
            guard let earliest = t.earliest, earliest <= now else { return false }
            t.heap.popExpired(now: now, into: &expired)
            t.delayedJobs.popDue(now: now, into: &dueJobs)
            t.alarms.popDue(now: now, into: &dueAlarms)
            return true
        }
        guard due else { return }
        // Outside the heap's lock: firing may schedule the alarm again.
        for alarm in dueAlarms { alarm.fire(now: now) }
        dueAlarms.removeAll(keepingCapacity: true)
        // On the poller thread, so these stay local and run in this iteration of the loop.
        for job in dueJobs { runQueue.enqueue(job) }
        dueJobs.removeAll(keepingCapacity: true)
        // The heap's lock is released: a timer callback takes the slot's lock (Go #35532).
        for timer in expired {
            guard let slot = table.slot(at: timer.slot) else { continue }
            slot.state.withLockAnnotated { s in
                // The deadline was moved later after this entry was armed: re-arm it there.
                if let later = s.fireTimer(timer, now: now, woken: &woken) {
                    _ = schedule(slot, when: later, isWrite: timer.isWrite, both: timer.expiresBoth, sequence: timer.sequence)
                }
                cancelSendIfStopped(&s, slot: slot)
            }
        }
        expired.removeAll(keepingCapacity: true)
        resume(&woken)
    }
}
