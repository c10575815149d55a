import Synchronization

/// An asynchronous mutual-exclusion lock that admits waiters in arrival order: one direction
/// of Go's fdMutex (its read lock or its write lock).
///
/// Invariants, all guarded by one `Mutex`:
/// - `held` is true while an owner exists; ownership is handed directly from ``unlock()`` to
///   the oldest waiter, so a newcomer can never overtake a queued waiter (FIFO, no barging).
/// - A waiter is a suspended continuation in `waiters`; nobody spins. Each continuation is
///   resumed exactly once: by a hand-off, by ``close()``, or by its own cancellation, and
///   whichever of those removes it from `waiters` under the lock is the one that resumes it.
/// - Once ``close()`` has run, every queued and every later ``lock()`` fails with
///   ``NetError/closed``; the current owner keeps the lock until it unlocks.
final class AsyncFIFOLock: Sendable {
    private struct Waiter {
        let id: UInt64
        let continuation: UnsafeContinuation<NetError?, Never>
    }

    private struct State {
        var held = false
        var closed = false
        var waiters: [Waiter] = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    init() {}

    /// Takes the lock, waiting behind earlier callers.
    ///
    /// - Returns: nil once the lock is held by the caller; ``NetError/closed`` after
    ///   ``close()``; ``NetError/cancelled`` if the task is cancelled while it waits (it then
    ///   does not hold the lock).
    nonisolated(nonsending) func lock() async -> NetError? {
        // Fast path: free and open, or closed.
        enum Step { case acquired, closed, wait(UInt64) }
        let step: Step = state.withLockAnnotated { s in
            if s.closed { return .closed }
            if !s.held {
                s.held = true
                return .acquired
            }
            s.nextID &+= 1
            return .wait(s.nextID)
        }
        let id: UInt64
        switch step {
        case .acquired: return nil
        case .closed: return .closed
        case .wait(let ticket): id = ticket
        }
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<NetError?, Never>) in
                let immediate: NetError?? = state.withLockAnnotated { s in
                    if s.closed { return .some(.closed) }
                    if !s.held {
                        // Freed between the fast path and here.
                        s.held = true
                        return .some(nil)
                    }
                    // Cancelled before queueing: the handler ran and found nothing to remove.
                    if Task.isCancelled { return .some(.cancelled) }
                    s.waiters.append(Waiter(id: id, continuation: continuation))
                    return .none
                }
                if case .some(let result) = immediate { continuation.resume(returning: result) }
            }
        } onCancel: {
            let waiter: Waiter? = state.withLockAnnotated { s in
                guard let index = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: .cancelled)
        }
    }

    /// Releases the lock, handing it to the oldest waiter if there is one.
    func unlock() {
        let next: Waiter? = state.withLockAnnotated { s in
            precondition(s.held, "AsyncFIFOLock: unlock of a lock that is not held")
            if s.waiters.isEmpty {
                s.held = false
                return nil
            }
            // `held` stays true: ownership passes straight to the waiter.
            return s.waiters.removeFirst()
        }
        next?.continuation.resume(returning: nil)
    }

    /// Fails every queued waiter and every later ``lock()`` with ``NetError/closed``.
    /// Idempotent.
    func close() {
        let failed: [Waiter] = state.withLockAnnotated { s in
            s.closed = true
            defer { s.waiters.removeAll() }
            return s.waiters
        }
        for waiter in failed { waiter.continuation.resume(returning: .closed) }
    }
}
