import CPoller
import Synchronization

// Waits: Go's pollWait, netpollblock and the waking side that ends them. Read one wait top to
// bottom here and in PollDescriptorState.swift (the checks and semaphore transitions under
// the slot's lock). The poller thread ends a wait from PollerLoop.swift (readiness) or
// PollerDeadlines.swift (a deadline), by taking the waiter out of its semaphore under the
// lock and calling ``Poller/resume(_:)`` below once unlocked.

/// How a parked waiter was woken.
enum WakeReason: UInt8, Sendable {
    /// The kernel reported readiness for the waiter's direction (Go: netpollblock returned true).
    case ready
    /// A deadline, an unblock or a shutdown woke it: the waiter re-checks the error state
    /// and, if there is none (the deadline moved meanwhile), waits again (Go's pollWait loop).
    case interrupted
    /// The waiting Task was cancelled.
    case cancelled
    /// Another waiter already held this direction; the new one never parked.
    case doubleWait
}

/// A thread blocked in ``PollDescriptor/waitBlocking(for:)``.
final class BlockingWaiter: Sendable {
    let parker = ParkerBox()
    let reason = Atomic<UInt8>(WakeReason.interrupted.rawValue)
}

/// Whoever is parked on one direction of a descriptor.
enum Waiter: @unchecked Sendable {
    // @unchecked: an UnsafeContinuation is resumed exactly once, by whoever removed the
    // waiter from its semaphore under the slot's lock.
    case task(UnsafeContinuation<WakeReason, Never>)
    case thread(BlockingWaiter)

    func resume(_ reason: WakeReason) {
        switch self {
        case .task(let continuation):
            continuation.resume(returning: reason)
        case .thread(let waiter):
            waiter.reason.store(reason.rawValue, ordering: .sequentiallyConsistent)
            waiter.parker.unpark()
        }
    }
}

extension Poller {
    /// Go's pollWait (and, with `ignoringErrors`, pollWaitCanceled): returns nil once the
    /// direction is ready, or the error that ended the wait.
    @usableFromInline
    nonisolated(nonsending) func wait(
        _ slot: DescriptorSlot, generation: UInt32, mode: PollMode, cancellable: Bool, ignoringErrors: Bool = false,
        afterDrainingRead: Bool = false
    ) async -> PollError? {
        guard mode == .read || mode == .write else { return .invalidMode }
        while true {
            // Fast path: pending error, or latched readiness, without suspending.
            let step: WaitStep = slot.state.withLockAnnotated { s in
                switch s.checkBeforeWait(
                    mode, generation: generation, ignoringErrors: ignoringErrors, afterDrainingRead: afterDrainingRead)
                {
                case .ready: return .done
                case .failed(let error): return .fail(error)
                case .mustPark:
                    return .park(id: s.newWaiterID())
                }
            }
            guard case .park(let id) = step else {
                if case .fail(let error) = step { return error }
                return nil
            }
            let reason: WakeReason
            if cancellable {
                reason = await withTaskCancellationHandler {
                    await park(
                        slot, generation: generation, mode: mode, id: id, ignoringErrors: ignoringErrors,
                        afterDrainingRead: afterDrainingRead, cancellable: true)
                } onCancel: {
                    cancelWaiter(slot, mode: mode, id: id)
                }
            } else {
                reason = await park(
                    slot, generation: generation, mode: mode, id: id, ignoringErrors: ignoringErrors,
                    afterDrainingRead: afterDrainingRead, cancellable: false)
            }
            switch reason {
            case .ready: return nil
            case .cancelled: return .cancelled
            case .doubleWait: return .doubleWait
            case .interrupted:
                // A wait that ignores errors still ends when the poller shuts down.
                if ignoringErrors && shutdownStarted.load(ordering: .sequentiallyConsistent) { return .closing }
                continue  // re-check: a deadline may have been extended meanwhile
            }
        }
    }

    private enum WaitStep {
        case done
        case fail(PollError)
        case park(id: UInt64)
    }

    /// Parks the current task on one direction. The check and the commit happen under the
    /// slot's lock, with the continuation already created, so nothing can slip in between.
    @inline(__always)
    nonisolated(nonsending) private func park(
        _ slot: DescriptorSlot, generation: UInt32, mode: PollMode, id: UInt64, ignoringErrors: Bool,
        afterDrainingRead: Bool, cancellable: Bool
    ) async -> WakeReason {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<WakeReason, Never>) in
            let immediate: WakeReason? = slot.state.withLockAnnotated { s in
                // Shutdown sets the flag before it wakes the waiters of every open slot, under
                // this lock; a waiter that ignores errors must not park after that pass.
                if ignoringErrors && shutdownStarted.load(ordering: .sequentiallyConsistent) { return .interrupted }
                switch s.checkBeforeWait(
                    mode, generation: generation, ignoringErrors: ignoringErrors, afterDrainingRead: afterDrainingRead)
                {
                case .ready: return .ready
                case .failed(.doubleWait): return .doubleWait
                case .failed: return .interrupted  // the caller re-checks and reports it
                case .mustPark:
                    // Cancelled before parking: onCancel has run or will find nothing. A wait
                    // that does not observe cancellation parks anyway (a cancelled task's
                    // second wait of one write used to end it here: regression test
                    // "... cancelling a writer's task does not stop its write").
                    if cancellable && Task.isCancelled { return .cancelled }
                    s.park(.task(continuation), on: mode, id: id)
                    didPark()
                    return nil
                }
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    /// The task's cancellation handler: resumes the waiter with `.cancelled` if it is still the
    /// park numbered `id`; a waiter already woken (or not parked yet: `park` checks
    /// `Task.isCancelled` under the lock) is left alone.
    private func cancelWaiter(_ slot: DescriptorSlot, mode: PollMode, id: UInt64) {
        let waiter = slot.state.withLockAnnotated { s in s.takeWaiter(mode, id: id) }
        if let waiter {
            didUnpark()
            waiter.resume(.cancelled)
        }
    }

    /// The blocking form of ``wait(_:generation:mode:cancellable:ignoringErrors:)`` for plain
    /// threads.
    func waitBlocking(_ slot: DescriptorSlot, generation: UInt32, mode: PollMode) -> PollError? {
        guard mode == .read || mode == .write else { return .invalidMode }
        // Blocking the poller thread would stop the very loop that has to wake it.
        if cpoller_thread_id() == threadID { return .wouldBlockPollerThread }
        var blocker: BlockingWaiter?
        while true {
            let step: WaitStep = slot.state.withLockAnnotated { s in
                switch s.checkBeforeWait(mode, generation: generation, ignoringErrors: false) {
                case .ready: return .done
                case .failed(let error): return .fail(error)
                case .mustPark:
                    let waiter = blocker ?? BlockingWaiter()
                    blocker = waiter
                    let id = s.newWaiterID()
                    s.park(.thread(waiter), on: mode, id: id)
                    didPark()
                    return .park(id: id)
                }
            }
            guard case .park = step, let waiter = blocker else {
                if case .fail(let error) = step { return error }
                return nil
            }
            waiter.parker.park()
            let reason = WakeReason(rawValue: waiter.reason.load(ordering: .sequentiallyConsistent))
            if reason == .ready { return nil }
        }
    }

    /// Resumes waiters taken out of their semaphores; always called with no lock held.
    func resume(_ woken: inout [(Waiter, WakeReason)]) {
        guard !woken.isEmpty else { return }
        parked.subtract(woken.count, ordering: .sequentiallyConsistent)
        for (waiter, reason) in woken { waiter.resume(reason) }
        woken.removeAll(keepingCapacity: true)
    }

    /// `parkedWaiterCount` bookkeeping: one more waiter parked, under the slot's lock.
    func didPark() { parked.add(1, ordering: .sequentiallyConsistent) }
    /// One waiter taken out of its semaphore other than through ``resume(_:)`` (cancellation).
    func didUnpark() { parked.subtract(1, ordering: .sequentiallyConsistent) }
}
