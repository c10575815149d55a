import Synchronization

/// Go's fdMutex: the reference count of a descriptor's operations and its two direction
/// locks (read, write), in one state under one `Mutex`, so that taking a reference and a
/// direction lock is one critical section, and so is releasing both.
///
/// Invariants, all guarded by the mutex:
/// - `references` counts operations in flight (holding or queued for a direction lock, or
///   inside ``withReference(_:)``) plus one for a running ``close()``. Never negative.
/// - A direction is `held` while it has an owner. Ownership passes directly from
///   ``unlock(_:drained:)`` to the oldest waiter, so a newcomer never overtakes a queued
///   waiter (FIFO, no barging), and nobody spins.
/// - A waiter is a suspended continuation in its direction's queue, counted in `references`.
///   It is resumed exactly once: by a hand-off, by ``close()``, or by its own cancellation;
///   whichever removes it from the queue under the mutex resumes it, and drops its reference
///   if it does not get the lock.
/// - Once `closing` is set, no reference is added: queued and later lock attempts fail with
///   ``NetError/closed``; current owners keep their locks until they unlock.
/// - A close suspended in ``awaitLastReference()`` holds no reference, so whichever path drops
///   the last one (unlock, decref, a cancelled or failed lock attempt, queued or not yet
///   queued) resumes it: every reference is dropped through `State.release()`, whose result
///   is never discarded (Go's decref/rwunlock report "last reference while closing" to the
///   caller, which then destroys the descriptor, for the same reason).
/// - `readDrained` belongs to the read lock's owner: it is read when the lock is taken and
///   written when it is released, never in between by anyone else.
final class FDMutex: Sendable {
    enum Direction { case read, write }

    private struct Waiter {
        let id: UInt64
        let continuation: UnsafeContinuation<NetError?, Never>
    }

    private struct DirectionState {
        var held = false
        var waiters: [Waiter] = []
    }

    private struct State {
        var closing = false
        var references = 0
        var closeWaiter: UnsafeContinuation<Void, Never>?
        var read = DirectionState()
        var write = DirectionState()
        var nextWaiterID: UInt64 = 0
        /// The last read ended short on a stream whose short reads drain the receive queue.
        var readDrained = false

        /// In place (`_modify`, not get-then-set), so that appending to or removing from a
        /// direction's waiter queue does not copy the queue.
        subscript(direction: Direction) -> DirectionState {
            get { direction == .read ? read : write }
            _modify {
                if direction == .read { yield &read } else { yield &write }
            }
        }

        /// Drops a reference; the close waiting for the last one, if this was it.
        ///
        /// Every caller must resume what this returns (outside the mutex), whatever it
        /// believes about the count: once ``awaitLastReference()`` has dropped close's own
        /// reference, any release, on any path, may be the last, and a discarded result
        /// would leave the close suspended forever with its descriptor open.
        mutating func release() -> UnsafeContinuation<Void, Never>? {
            precondition(references > 0, "FDMutex: inconsistent reference count")
            references -= 1
            guard closing, references == 0, let waiter = closeWaiter else { return nil }
            closeWaiter = nil
            return waiter
        }
    }

    private let state = Mutex(State())

    init() {}

    /// Whether ``close()`` has started.
    var isClosing: Bool { state.withLockAnnotated { $0.closing } }

    /// For tests: the reference count, whether closing has started, and whether a close is
    /// suspended in ``awaitLastReference()`` waiting for the last reference.
    var snapshot: (references: Int, closing: Bool, closeWaiting: Bool) {
        state.withLockAnnotated { ($0.references, $0.closing, $0.closeWaiter != nil) }
    }

    // MARK: References (Go's incref/decref)

    /// Adds a reference for an operation that takes no direction lock; ``NetError/closed``
    /// once closing.
    func incref() throws(NetError) {
        let ok = state.withLockAnnotated { s in
            if s.closing { return false }
            s.references += 1
            return true
        }
        if !ok { throw .closed }
    }

    /// Drops a reference taken by ``incref()``.
    func decref() {
        state.withLockAnnotated { $0.release() }?.resume()
    }

    /// Runs `body` holding a reference.
    func withReference<R>(_ body: () throws(NetError) -> R) throws(NetError) -> R {
        try incref()
        defer { decref() }
        return try body()
    }

    // MARK: Direction locks (Go's rwlock/rwunlock)

    /// Takes a reference and the lock for `direction`, waiting behind earlier callers.
    ///
    /// - Returns: for `.read`, whether the previous owner's read drained the receive queue
    ///   (see ``unlock(_:drained:)``); false for `.write`.
    /// - Throws: ``NetError/closed`` once closing; ``NetError/cancelled`` if the task is
    ///   cancelled while it waits. In both cases the caller holds neither lock nor reference.
    @inline(__always)
    nonisolated(nonsending) func lock(_ direction: Direction) async throws(NetError) -> Bool {
        // The uncontended case does not suspend: kept inline in the caller, it costs no async
        // call (no frame from the task allocator, no executor check).
        switch try beginLock(direction) {
        case .acquired(let drained): return drained
        case .wait(let ticket): return try await waitForLock(direction, ticket: ticket)
        }
    }

    enum LockStep {
        case acquired(drained: Bool)
        /// The direction is held: the caller holds a reference and must wait with this ticket.
        case wait(UInt64)
    }

    /// The first step of ``lock(_:)``: takes a reference, and the direction if it is free.
    func beginLock(_ direction: Direction) throws(NetError) -> LockStep {
        let step: LockStep? = state.withLockAnnotated { s in
            if s.closing { return nil }
            s.references += 1
            if !s[direction].held {
                s[direction].held = true
                return .acquired(drained: direction == .read && s.readDrained)
            }
            s.nextWaiterID &+= 1
            return .wait(s.nextWaiterID)
        }
        guard let step else { throw .closed }
        return step
    }

    /// The slow path of ``lock(_:)``: queues behind the current owner (holding the reference
    /// taken by ``beginLock(_:)``) until handed the lock, closed or cancelled.
    @inline(never)
    nonisolated(nonsending) private func waitForLock(_ direction: Direction, ticket id: UInt64) async throws(NetError) -> Bool {
        #if DEBUG  // the test seam exists only where tests run
        if NetTestHooks.active.load(ordering: .relaxed), let hook = NetTestHooks.current.beforeLockQueue {
            await hook(self, direction)
        }
        #endif
        let failure: NetError? = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<NetError?, Never>) in
                let (immediate, closeWaiter): (NetError??, UnsafeContinuation<Void, Never>?) = state.withLockAnnotated { s in
                    // The reference taken above is still ours: close cannot have finished.
                    // But it may have dropped its own reference already (it is suspended in
                    // awaitLastReference), so this release can be the last one.
                    if s.closing { return (.some(.closed), s.release()) }
                    if !s[direction].held {
                        // Freed between the first step and here.
                        s[direction].held = true
                        return (.some(nil), nil)
                    }
                    // Cancelled before queueing: the handler ran and found nothing to remove.
                    if Task.isCancelled { return (.some(.cancelled), s.release()) }
                    s[direction].waiters.append(Waiter(id: id, continuation: continuation))
                    return (.none, nil)
                }
                if case .some(let result) = immediate { continuation.resume(returning: result) }
                closeWaiter?.resume()
            }
        } onCancel: {
            let (waiter, closeWaiter): (Waiter?, UnsafeContinuation<Void, Never>?) = state.withLockAnnotated { s in
                guard let index = s[direction].waiters.firstIndex(where: { $0.id == id }) else { return (nil, nil) }
                let waiter = s[direction].waiters.remove(at: index)
                return (waiter, s.release())
            }
            waiter?.continuation.resume(returning: .cancelled)
            closeWaiter?.resume()
        }
        if let failure { throw failure }
        // Handed over by unlock: the hint is the state the previous owner left.
        return direction == .read && state.withLockAnnotated { $0.readDrained }
    }

    /// Releases the lock for `direction` and the reference taken with it, handing the lock
    /// to the oldest waiter if there is one. For `.read`, `drained` records whether this
    /// read ended short on a stream whose short reads drain the receive queue.
    func unlock(_ direction: Direction, drained: Bool = false) {
        let (next, closeWaiter): (Waiter?, UnsafeContinuation<Void, Never>?) = state.withLockAnnotated { s in
            precondition(s[direction].held, "FDMutex: unlock of a direction that is not held")
            if direction == .read { s.readDrained = drained }
            var next: Waiter?
            if s[direction].waiters.isEmpty {
                s[direction].held = false
            } else {
                // `held` stays true: ownership passes straight to the waiter.
                next = s[direction].waiters.removeFirst()
            }
            return (next, s.release())
        }
        next?.continuation.resume(returning: nil)
        closeWaiter?.resume()
    }

    // MARK: Close

    /// Marks the descriptor closing (true for the first call only, false after), fails every
    /// queued lock waiter with ``NetError/closed``, and returns without waiting.
    func beginClose() -> Bool {
        let failed: [Waiter]? = state.withLockAnnotated { s in
            if s.closing { return nil }
            s.closing = true
            // Close's own reference: released by `awaitLastReference()`.
            s.references += 1
            let failed = s.read.waiters + s.write.waiters
            s.read.waiters.removeAll()
            s.write.waiters.removeAll()
            // Close's reference keeps the count above zero: no close waiter to resume here.
            s.references -= failed.count
            return failed
        }
        guard let failed else { return false }
        for waiter in failed { waiter.continuation.resume(returning: .closed) }
        return true
    }

    /// After ``beginClose()``: drops close's reference and waits until every operation in
    /// flight has dropped its own. Not cancellable: a close must finish.
    func awaitLastReference() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let done = state.withLockAnnotated { s in
                s.references -= 1
                if s.references == 0 { return true }
                s.closeWaiter = continuation
                return false
            }
            if done { continuation.resume() }
        }
    }
}
