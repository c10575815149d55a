import CPoller
import Synchronization

// The poller thread's loop (Go's findRunnable → netpoll): poll the backend, hand readiness
// to the parked waiters, fire due deadlines (PollerDeadlines.swift), run the executor's jobs;
// and, once stopped, close everything.

extension Poller {
    /// The poller thread's loop: poll the backend (without blocking while jobs are queued),
    /// hand readiness to the parked waiters, fire due deadlines, run the queued jobs.
    func runLoop() {
        let capacity = 256
        let events = UnsafeMutableBufferPointer<cpoller_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        var batch: [QueuedJob] = []
        var slots: [DescriptorSlot?] = []
        var indices: [UInt32] = []
        var woken: [(Waiter, WakeReason)] = []
        var expired: [DeadlineHeap.Timer] = []
        var dueJobs: [QueuedJob] = []
        var dueAlarms: [PollerAlarm] = []
        loop: while true {
            var timeout: Int64 = 0
            var slept = false
            switch runQueue.prepareToSleep() {
            case .stop: break loop
            case .work: break
            case .sleep:
                slept = true
                timeout = timeoutUntilNextDeadline()
            }
            let n = backend.poll(into: events, timeoutNanos: timeout)
            lastPollBatch = n
            if slept {
                runQueue.awake()
                timers.withLockAnnotated { $0.sleepUntil = .min }
            }
            if n > 0 {
                dispatch(UnsafeBufferPointer(rebasing: events[0..<n]), &indices, &slots, &woken)
            }
            fireDeadlines(&expired, &woken, &dueJobs, &dueAlarms)
            runQueue.takeAll(into: &batch)
            for job in batch { job.run() }
            batch.removeAll(keepingCapacity: true)
        }
        closeEverything()
    }

    /// Go's netpoll event processing: readiness from the kernel to the semaphores (the state
    /// transition is ``SlotState/noteEvent(_:woken:)``), then the waiters resumed unlocked.
    private func dispatch(
        _ events: UnsafeBufferPointer<cpoller_event>,
        _ indices: inout [UInt32],
        _ slots: inout [DescriptorSlot?],
        _ woken: inout [(Waiter, WakeReason)]
    ) {
        indices.removeAll(keepingCapacity: true)
        for event in events { indices.append(event.pollToken.slot) }
        slots.removeAll(keepingCapacity: true)
        indices.withUnsafeBufferPointer { table.resolve($0, into: &slots) }
        for (i, event) in events.enumerated() {
            if event.isReceived {
                dispatchReceive(event, slot: slots[i], woken: &woken)
                continue
            }
            if event.isSent {
                dispatchSent(event, slot: slots[i])
                continue
            }
            if event.isAccepted {
                dispatchAccept(event, slot: slots[i], woken: &woken)
                continue
            }
            guard let slot = slots[i] else { continue }
            slot.state.withLockAnnotated { s in s.noteEvent(event, woken: &woken) }
        }
        resume(&woken)
    }

    /// Poller thread, after the loop: close the backend, unblock what is still open, return
    /// every alarm's waiter, and route queued, delayed and later jobs to the platform's
    /// executor (not the default executor, which may be this poller's group).
    ///
    /// The backend is closed before the sweep: a `register` racing this either reaches the
    /// backend after the close and is refused, or opened its slot before the sweep, which then
    /// marks it closing. Sweeping first would miss a slot opened just after the sweep whose
    /// registration still reached the live backend (issue 11).
    private func closeEverything() {
        var leftover: [QueuedJob] = []
        runQueue.state.withLockAnnotated { s in
            s.stopped = true
            swap(&s.jobs, &leftover)
        }
        let (delayed, alarms) = timers.withLockAnnotated { t in
            t.stopped = true
            return (t.delayedJobs.removeAll(), t.alarms.removeAll())
        }
        for entry in alarms { entry.job.stop() }
        backend.shutdown()
        #if DEBUG
        hooks.shutdownBeforeSweep?()
        #endif
        for slot in table.allSlots {
            let generation: UInt32? = slot.state.withLockAnnotated { s in s.isOpen ? s.generation : nil }
            if let generation { unblock(slot, generation: generation) }
            abandonSend(slot)
        }
        for job in leftover { PlatformFallback.enqueue(job.job) }
        let now = MonotonicClock.now()
        for entry in delayed { PlatformFallback.enqueue(entry.job.job, afterNanos: entry.when - now) }
        loopExited.unpark()
    }
}
