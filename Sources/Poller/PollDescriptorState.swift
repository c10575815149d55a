import CPoller
import Synchronization

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

/// The state of one descriptor (Go's pollDesc), guarded by its slot's mutex, and every
/// transition of that state.
///
/// The three parts of Go's pollDesc live here: the handle is ``PollDescriptor`` (a generation
/// and a slot), the operations that need the poller (its deadline heap, its backend, resuming
/// waiters once the lock is released) are `Poller`'s, and the state and its transitions are
/// this type's. Every method runs under the slot's lock; none resumes a waiter: the waiters it
/// takes out of their semaphores go to a `woken` list that the caller resumes after unlocking.
///
/// Invariants:
/// - A handle or kernel token is current only while `isOpen` and its generation matches
///   (``isCurrent(_:)``); the generation changes only in ``retire()``.
/// - `closing` is sticky until the slot is reopened; once set, no timer of this slot is
///   armed (a popped entry is stale), and only a wait that ignores errors
///   (`runtime_pollWaitCanceled`) may still park: every other wait fails with `.closing`.
/// - A timer entry in the heap is live only while its sequence equals this direction's
///   sequence; every deadline change, unblock and reopen bumps the sequence instead of
///   searching the heap.
/// - At most one waiter per direction is parked (a second is a double wait).
struct SlotState {
    /// Bumped when the slot is retired; handles and kernel tokens carry the generation they
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
    /// data (EPOLLPRI) until the slot is reopened.
    ///
    /// Short reads (the one explanation; PollerNet's read path and
    /// `PollDescriptor.wait(for:cancellable:afterDrainingRead:)` point here): a stream read
    /// that returns fewer bytes than asked for has drained the receive queue, so anything that
    /// arrives later raises a new edge and latches readiness; the next read can wait first
    /// (`afterDrainingRead`) and save the system call that would only say EAGAIN. While this
    /// flag is false that proof holds. Once it is true the proof is gone: a FIN or reset
    /// queued behind data is not returned by the read that takes the data, and its edge may
    /// have been consumed already. So a wait `afterDrainingRead` then reports ready at once
    /// without consuming readiness, and leaves an error event to the read to report (as Go's
    /// pollReset-then-read does).
    var sawHangUpErrorOrUrgent = false
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
    /// Identifies each park, so a late cancellation cannot take a later waiter.
    var nextWaiterID: UInt64 = 0
    /// io_uring completion receive: bytes received and not yet read (RingReceive.swift).
    var received = ReceiveQueue()
    /// io_uring completion send: the send in flight and its writer (RingSend.swift).
    var sent = SendInFlight()
    /// io_uring multishot accept: connections accepted and not yet taken (RingAccept.swift).
    var accepted = AcceptQueue()

    func isCurrent(_ generation: UInt32) -> Bool { isOpen && self.generation == generation }

    subscript(semaphore mode: PollMode) -> Semaphore {
        get { mode == .read ? readSemaphore : writeSemaphore }
        set {
            if mode == .read { readSemaphore = newValue } else { writeSemaphore = newValue }
        }
    }

    // MARK: Lifecycle

    /// Reinitialises a free slot for `fd` (Go's pollOpen without the kernel registration) and
    /// returns the generation the new handle carries.
    mutating func open(fd: Int32) -> UInt32 {
        precondition(
            !readSemaphore.isParked && !writeSemaphore.isParked,
            "poller: waiter on a free descriptor slot")
        isOpen = true
        self.fd = fd
        closing = false
        eventErr = false
        sawHangUpErrorOrUrgent = false
        readDeadline = 0
        writeDeadline = 0
        // Bump (not reset) the timer sequences so a timer left by the previous user of this
        // slot is stale.
        readSequence &+= 1
        writeSequence &+= 1
        readTimerArmed = false
        writeTimerArmed = false
        readSemaphore = .empty
        writeSemaphore = .empty
        // Empty already: close discarded the queue.
        received.discard(into: nil)
        sent = SendInFlight()
        _ = accepted.discard()
        return generation
    }

    /// Ends the current generation (after a failed registration, or in close): from here on,
    /// kernel events and handles for it are stale. Returns the descriptor it was for. The
    /// caller then releases the slot to the table.
    mutating func retire() -> Int32 {
        let fd = self.fd
        isOpen = false
        self.fd = -1
        readSemaphore = .empty
        writeSemaphore = .empty
        generation = PollToken.nextGeneration(after: generation)
        return fd
    }

    /// Go's pollUnblock, the state half: takes both waiters and, the first time, marks the
    /// slot closing and makes its timers stale. Returns true if timers were armed, and the
    /// caller must take both out of the heap (still under this lock, so a re-arm cannot
    /// slip in between).
    mutating func unblock(generation: UInt32, woken: inout [(Waiter, WakeReason)]) -> Bool {
        guard isCurrent(generation) else { return false }
        // Waiters are taken even when already closing: the only ones that can be parked then
        // ignore errors (runtime_pollWaitCanceled), and shutdown must still wake them.
        if let w = takeWaiter(.read, ioReady: false) { woken.append((w, .interrupted)) }
        if let w = takeWaiter(.write, ioReady: false) { woken.append((w, .interrupted)) }
        guard !closing else { return false }
        closing = true
        readSequence &+= 1
        writeSequence &+= 1
        guard readTimerArmed || writeTimerArmed else { return false }
        readTimerArmed = false
        writeTimerArmed = false
        return true
    }

    /// Go's pollClose, the state half: requires a prior unblock and no parked waiter, then
    /// retires the generation. Returns the descriptor to deregister.
    mutating func close(generation: UInt32) throws(PollError) -> Int32 {
        guard isCurrent(generation) else { throw .closing }
        guard closing else { throw .notUnblocked }
        guard !readSemaphore.isParked, !writeSemaphore.isParked else { throw .waiterParked }
        return retire()
    }

    /// Go's pollReset: fail on a pending error, else forget latched readiness.
    mutating func reset(_ mode: PollMode, generation: UInt32) -> PollError? {
        guard isCurrent(generation) else { return .closing }
        if let error = pendingError(mode) { return error }
        if mode.contains(.read), case .ready = readSemaphore { readSemaphore = .empty }
        if mode.contains(.write), case .ready = writeSemaphore { writeSemaphore = .empty }
        return nil
    }

    // MARK: Readiness and waiters

    /// Go's netpollready for one kernel event: records error and hang-up, then latches
    /// readiness or takes the parked waiter of each ready direction. A stale event (the
    /// registration was closed, maybe reopened for another fd) is ignored.
    mutating func noteEvent(_ event: cpoller_event, woken: inout [(Waiter, WakeReason)]) {
        guard isCurrent(event.pollToken.generation) else { return }
        eventErr = event.isError
        if event.isHangup || event.isError || event.isPriority { sawHangUpErrorOrUrgent = true }
        if event.isReadable, let w = takeWaiter(.read, ioReady: true) { woken.append((w, .ready)) }
        if event.isWritable, let w = takeWaiter(.write, ioReady: true) { woken.append((w, .ready)) }
    }

    /// Go's netpollunblock. With `ioReady`, latches readiness (or hands it to the parked
    /// waiter); without, only takes a parked waiter (an error-type wake-up) and leaves latched
    /// readiness alone. Returns the waiter to resume after the lock is released.
    mutating func takeWaiter(_ mode: PollMode, ioReady: Bool) -> Waiter? {
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

    /// Numbers a park that is about to happen, so that its cancellation handler can tell it
    /// from a later one.
    @inline(__always)
    mutating func newWaiterID() -> UInt64 {
        nextWaiterID &+= 1
        return nextWaiterID
    }

    /// Netpollblock's commit: `waiter` now owns `mode`. Only where `checkBeforeWait` said
    /// `.mustPark` in the same critical section, so the semaphore is empty.
    @inline(__always)
    mutating func park(_ waiter: Waiter, on mode: PollMode, id: UInt64) {
        self[semaphore: mode] = .parked(waiter, id: id)
    }

    /// Takes the waiter parked on `mode` if it is still the park numbered `id` (a cancellation
    /// that arrives after the waiter was woken, or after another park, finds nothing).
    mutating func takeWaiter(_ mode: PollMode, id: UInt64) -> Waiter? {
        guard case .parked(let waiter, let parkedID) = self[semaphore: mode], parkedID == id else { return nil }
        self[semaphore: mode] = .empty
        return waiter
    }

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
    /// `afterDrainingRead` (reads only): the wait of a read that skips its first system call
    /// after a short read; see ``sawHangUpErrorOrUrgent`` for the rule.
    mutating func checkBeforeWait(
        _ mode: PollMode, generation: UInt32, ignoringErrors: Bool, afterDrainingRead: Bool = false
    ) -> WaitCheck {
        guard isCurrent(generation) else { return .failed(.closing) }
        if !ignoringErrors, let error = pendingError(mode) {
            // eventErr implies sawHangUpErrorOrUrgent: such a wait goes on to the read below.
            if !(afterDrainingRead && error == .notPollable) { return .failed(error) }
        }
        if afterDrainingRead && sawHangUpErrorOrUrgent { return .ready }
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

    // MARK: Deadlines

    /// What a deadline change asks of one direction's heap entry. The poller carries it out
    /// while it still holds this slot's lock (lock order: slot, then heap).
    enum TimerChange {
        /// The entry stays as it is (none armed, or moved later while pending: it re-arms
        /// itself when it fires).
        case keep
        /// Arm (or move) the entry.
        case schedule(when: Int64, expiresBoth: Bool, sequence: UInt64)
        /// Take the entry out of the heap.
        case cancel
    }

    /// Go's pollSetDeadline, the state half, with an absolute deadline `d` (0 none, < 0
    /// already expired, > 0 a CLOCK_MONOTONIC instant in nanoseconds). Takes the waiters of a
    /// direction whose deadline is now in the past; returns what each timer entry needs.
    ///
    /// Equal read and write deadlines share one timer: the read timer, expiring both.
    mutating func setDeadline(
        _ d: Int64, mode: PollMode, generation: UInt32, woken: inout [(Waiter, WakeReason)]
    ) -> (read: TimerChange, write: TimerChange) {
        guard isCurrent(generation), !closing else { return (.keep, .keep) }
        let rd0 = readDeadline
        let wd0 = writeDeadline
        let combo0 = rd0 > 0 && rd0 == wd0
        if mode.contains(.read) { readDeadline = d }
        if mode.contains(.write) { writeDeadline = d }
        let rd = readDeadline
        let wd = writeDeadline
        let combo = rd > 0 && rd == wd
        var read = TimerChange.keep
        var write = TimerChange.keep
        if !readTimerArmed && rd > 0 {
            readTimerArmed = true
            readTimerWhen = rd
            read = .schedule(when: rd, expiresBoth: combo, sequence: readSequence)
        } else if readTimerArmed && rd0 > 0 && rd >= readTimerWhen && combo == combo0 {
            // Moved later (or kept) while pending: the entry stays; it re-arms when it fires.
        } else if readTimerArmed && (rd != rd0 || combo != combo0) {
            readSequence &+= 1
            if rd > 0 {
                readTimerWhen = rd
                read = .schedule(when: rd, expiresBoth: combo, sequence: readSequence)
            } else {
                readTimerArmed = false
                read = .cancel
            }
        }
        if !writeTimerArmed && wd > 0 && !combo {
            writeTimerArmed = true
            writeTimerWhen = wd
            write = .schedule(when: wd, expiresBoth: false, sequence: writeSequence)
        } else if writeTimerArmed && wd0 > 0 && !combo0 && !combo && wd >= writeTimerWhen {
            // Moved later (or kept) while pending, still on its own timer: as for reads.
        } else if writeTimerArmed && (wd != wd0 || combo != combo0) {
            writeSequence &+= 1
            if wd > 0 && !combo {
                writeTimerWhen = wd
                write = .schedule(when: wd, expiresBoth: false, sequence: writeSequence)
            } else {
                writeTimerArmed = false
                write = .cancel
            }
        }
        // A deadline in the past wakes the waiters now, with a timeout.
        if rd < 0, let w = takeWaiter(.read, ioReady: false) { woken.append((w, .interrupted)) }
        if wd < 0, let w = takeWaiter(.write, ioReady: false) { woken.append((w, .interrupted)) }
        return (read, write)
    }

    /// Go's netpolldeadlineimpl for one popped heap entry at `now`. A stale entry does
    /// nothing. If the deadline was moved later after the entry was armed, returns the
    /// deadline to re-arm it at (for a combined timer the two deadlines are equal). Otherwise
    /// expires the deadline(s) and takes their waiters; returns nil.
    mutating func fireTimer(_ timer: DeadlineHeap.Timer, now: Int64, woken: inout [(Waiter, WakeReason)]) -> Int64? {
        let current = timer.isWrite ? writeSequence : readSequence
        guard isOpen, current == timer.sequence else { return nil }
        let deadline = timer.isWrite ? writeDeadline : readDeadline
        if deadline > now {
            if timer.isWrite { writeTimerWhen = deadline } else { readTimerWhen = deadline }
            return deadline
        }
        if timer.isWrite {
            writeDeadline = -1
        } else {
            readDeadline = -1
            if timer.expiresBoth { writeDeadline = -1 }
        }
        if !timer.isWrite, let w = takeWaiter(.read, ioReady: false) { woken.append((w, .interrupted)) }
        if timer.isWrite || timer.expiresBoth, let w = takeWaiter(.write, ioReady: false) {
            woken.append((w, .interrupted))
        }
        return nil
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
