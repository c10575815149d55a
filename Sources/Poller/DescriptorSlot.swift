import Synchronization

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

/// One direction's semaphore: Go's `rg` / `wg`.
///
/// Go has four states: nil, pdReady, pdWait (a waiter announced it will park but has not
/// committed) and a parked G. Go needs pdWait because it checks the state and commits the
/// park in two lock-free steps. Here the check and the commit happen in one critical section
/// of the slot's mutex, inside `withUnsafeContinuation`'s body, where the continuation
/// already exists and may be resumed before the task has finished suspending. The window
/// that pdWait guards (readiness or an error arriving between "check" and "park") therefore
/// cannot open, and three states suffice:
///
///   empty  --readiness-->  ready            (latched; nobody is woken)
///   ready  --wait-->       empty            (consumed; the wait returns at once)
///   empty  --wait-->       parked(waiter)
///   parked --readiness-->  empty, waiter resumed with .ready
///   parked --deadline, unblock, cancel--> empty, waiter resumed (.interrupted / .cancelled)
///   ready  --deadline, unblock-->  ready    (an error never clears latched readiness)
///   ready  --reset-->      empty            (Go's pollReset, only when no error is pending)
enum Semaphore {
    case empty
    case ready
    case parked(Waiter, id: UInt64)

    var isParked: Bool {
        if case .parked = self { return true }
        return false
    }
}

/// The state of one descriptor slot (Go's pollDesc), guarded by the slot's mutex.
struct SlotState {
    /// Bumped when the slot is closed; handles and kernel tokens carry the generation they
    /// were made with, and anything that does not match is stale.
    var generation: UInt32 = 1
    /// Between a successful open and close.
    var isOpen = false
    var fd: Int32 = -1
    /// Set by unblock: every wait and reset fails with `.closing` from then on.
    var closing = false
    /// The last event for this descriptor was an error and nothing else (Go's eventErr).
    var eventErr = false
    /// Sticky from the first event that reported a hang-up (RDHUP, HUP), an error or urgent
    /// data until the slot is reopened. While it is false, a read that came back short has
    /// proven the receive queue empty, and anything that arrives later raises a new edge; once
    /// it is true that proof is gone (a FIN or reset queued behind data is not returned by the
    /// read that takes the data, and its edge may have been consumed already), so a wait
    /// `afterDrainingRead` lets the caller look with a system call instead of parking.
    var sawHangUp = false
    /// Deadlines in CLOCK_MONOTONIC nanoseconds: 0 none, > 0 pending, < 0 expired.
    var readDeadline: Int64 = 0
    var writeDeadline: Int64 = 0
    /// Timer sequence numbers (Go's rseq/wseq). A heap entry armed with an older value is
    /// stale. Bumped on every deadline change, on unblock and on reopen.
    var readSequence: UInt64 = 0
    var writeSequence: UInt64 = 0
    /// Whether the read/write timer was armed (it may have fired since; Go keeps the flag).
    var readTimerArmed = false
    var writeTimerArmed = false
    /// When the armed timer's heap entry is due. A deadline moved later leaves the entry where
    /// it is (Go's timerModifiedLater): a service that pushes its read deadline forward on
    /// every read then pays no heap operation, and the entry, firing early, finds the deadline
    /// still ahead and re-arms itself there. Only an earlier deadline moves the entry at once.
    /// Meaningful while the deadline is pending (> 0), which implies the entry is in the heap.
    var readTimerWhen: Int64 = 0
    var writeTimerWhen: Int64 = 0
    var readSemaphore = Semaphore.empty
    var writeSemaphore = Semaphore.empty
    var nextWaiterID: UInt64 = 0

    func isCurrent(_ generation: UInt32) -> Bool { isOpen && self.generation == generation }

    /// Go's netpollcheckerr: closing first, then this direction's deadline, then (reads
    /// only) an error event.
    func pendingError(_ mode: PollMode) -> PollError? {
        if closing { return .closing }
        if mode.contains(.read) && readDeadline < 0 { return .timeout }
        if mode.contains(.write) && writeDeadline < 0 { return .timeout }
        if mode.contains(.read) && eventErr { return .notPollable }
        return nil
    }

    /// The outcome of checking one direction before a wait.
    enum WaitCheck {
        /// Latched readiness was consumed: the wait is over.
        case ready
        /// The wait ends with this error (closed handle, pending error, double wait).
        case failed(PollError)
        /// Nothing latched, nobody waiting: the caller may park.
        case mustPark
    }

    /// Go's netpollcheckerr followed by the first step of netpollblock, shared by every kind of
    /// wait: a stale handle or (unless ignored) a pending error fails; latched readiness is
    /// consumed; a waiter already parked on this direction is a double wait.
    ///
    /// `afterDrainingRead` (reads only) is the wait of a read that skips its first system call
    /// because the previous read drained the queue: it reports `.ready` at once, without
    /// consuming readiness, when `sawHangUp` is set, and leaves an error event to the read
    /// (as Go's pollReset-then-read does).
    mutating func checkBeforeWait(
        _ mode: PollMode, generation: UInt32, ignoringErrors: Bool, afterDrainingRead: Bool = false
    ) -> WaitCheck {
        guard isCurrent(generation) else { return .failed(.closing) }
        if !ignoringErrors, let error = pendingError(mode) {
            // eventErr implies sawHangUp: such a wait goes on to the read below.
            if !(afterDrainingRead && error == .notPollable) { return .failed(error) }
        }
        if afterDrainingRead && sawHangUp { return .ready }
        switch self[semaphore: mode] {
        case .ready:
            self[semaphore: mode] = .empty
            return .ready
        case .parked:
            return .failed(.doubleWait)
        case .empty:
            return .mustPark
        }
    }

    subscript(semaphore mode: PollMode) -> Semaphore {
        get { mode == .read ? readSemaphore : writeSemaphore }
        set {
            if mode == .read { readSemaphore = newValue } else { writeSemaphore = newValue }
        }
    }

    /// Go's netpollunblock. With `ioReady`, latches readiness (or hands it to the parked
    /// waiter); without, only takes a parked waiter (an error-type wake-up) and leaves latched
    /// readiness alone. Returns the waiter to resume after the lock is released.
    mutating func unblock(_ mode: PollMode, ioReady: Bool) -> Waiter? {
        switch self[semaphore: mode] {
        case .ready:
            return nil
        case .empty:
            if ioReady { self[semaphore: mode] = .ready }
            return nil
        case .parked(let waiter, _):
            self[semaphore: mode] = .empty
            return waiter
        }
    }
}

/// A type-stable descriptor slot: allocated once, never freed while its poller lives, and
/// reused LIFO across opens (Go's pollCache), so a late kernel event or timer can always look
/// it up and compare generations.
@usableFromInline
final class DescriptorSlot: Sendable {
    let index: UInt32
    let state: Mutex<SlotState>

    init(index: UInt32) {
        self.index = index
        state = Mutex(SlotState())
    }
}

/// The slots of one poller and the free list.
final class DescriptorTable: Sendable {
    private struct Storage {
        var slots: [DescriptorSlot] = []
        var free: [UInt32] = []
        var openCount = 0
    }

    private let storage = Mutex(Storage())

    /// A free slot, reusing the most recently freed one.
    func allocate() -> DescriptorSlot {
        storage.withLockAnnotated { s in
            s.openCount += 1
            if let index = s.free.popLast() { return s.slots[Int(index)] }
            let slot = DescriptorSlot(index: UInt32(s.slots.count))
            s.slots.append(slot)
            return slot
        }
    }

    func release(_ slot: DescriptorSlot) {
        storage.withLockAnnotated { s in
            s.openCount -= 1
            s.free.append(slot.index)
        }
    }

    func slot(at index: UInt32) -> DescriptorSlot? {
        storage.withLockAnnotated { s in Int(index) < s.slots.count ? s.slots[Int(index)] : nil }
    }

    /// Resolves many indices under one lock acquisition (the poller's event batches).
    func resolve(_ indices: UnsafeBufferPointer<UInt32>, into out: inout [DescriptorSlot?]) {
        storage.withLockAnnotated { s in
            for index in indices {
                out.append(Int(index) < s.slots.count ? s.slots[Int(index)] : nil)
            }
        }
    }

    var allSlots: [DescriptorSlot] { storage.withLockAnnotated { $0.slots } }
    var openCount: Int { storage.withLockAnnotated { $0.openCount } }
}
