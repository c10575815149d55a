import CPoller
import Glibc

// io_uring multishot accept, the core's half: a listener's connections arrive as multishot
// accept completions (an accepted descriptor each, or -errno), wait in the slot's
// `AcceptQueue` in arrival order, and an acceptor takes them under the slot's lock. As for
// completion receive (RingReceive.swift), the readiness machinery does the waiting: a
// completion latches read readiness (or wakes the parked acceptor) exactly as a readable event
// does, so deadlines, task cancellation and unblock end an accept's wait as before, and a
// connection accepted after a wait ended stays queued for the next accept.
//
// Back-pressure: a multishot accept would empty the kernel's backlog into this process whether
// or not anybody accepts. So the queue holds at most `AcceptQueue.bound` entries: on reaching
// it the accept is cancelled, and the next take that leaves the queue below the bound arms it
// again. Meanwhile the kernel's backlog (and SYN cookies) push back on clients as without the
// ring.

/// What an accept through the ring found (``PollDescriptor/takeAccepted()``).
package enum AcceptedDescriptor: Equatable, Sendable {
    /// A connection: its descriptor (non-blocking, close-on-exec), now the caller's.
    case descriptor(Int32)
    /// The kernel's accept failed with this errno (EMFILE, ENFILE, ...), or a connection was
    /// shed at arrival to keep the listener's descriptor headroom (EMFILE).
    case failed(errno: Int32)
    /// Nothing queued: wait for `.read`, then ask again. (The accept is armed.)
    case empty
}

/// The connections multishot accept delivered to one listener and nobody has taken yet.
///
/// Invariants (under the slot's lock): `entries` are in arrival order, each an accepted
/// descriptor (>= 0, owned by this queue until taken or discarded) or a -errno; there are at
/// most `bound` of them plus those that arrived while the cancel was in flight; at most one
/// accept request is armed per listener (`armed` is cleared only by its ENDED completion, and
/// only a take arms a new one, after that).
struct AcceptQueue {
    /// The most entries queued before the accept is cancelled.
    static let bound = 16

    /// Whether multishot accept was started for this registration.
    var isOn = false
    /// Whether an accept is armed (or queued to be): set when one is armed, cleared by its
    /// ENDED completion.
    var armed = false
    /// Its cancel has been asked for (the bound, a shed, an error), and ENDED has not come yet.
    var cancelling = false
    /// A take arms the accept again once fewer entries than this are queued: `bound`, or 1
    /// (only when the queue is empty) after a failure or a shed, so that an acceptor backing
    /// off is not met by a new stream of failures.
    var rearmBelow = bound
    /// The listener's descriptor headroom: a connection the kernel puts in the top `headroom`
    /// descriptor slots is closed at arrival and queued as EMFILE.
    var headroom = 0
    var entries: [Int32] = []

    /// Forgets the queue; returns the descriptors it held, for the caller to close(2) (close,
    /// reopen).
    mutating func discard() -> [Int32] {
        let descriptors = entries.filter { $0 >= 0 }
        entries.removeAll()
        isOn = false
        armed = false
        cancelling = false
        rearmBelow = Self.bound
        headroom = 0
        return descriptors
    }
}

extension SlotState {
    /// An accept completion for this slot: queues its descriptor (or shed it, or its error)
    /// and hands read readiness on as a readable event would. Returns whether the
    /// completion's descriptor now belongs to the queue (if not, the caller closes it), and in
    /// `shed` a descriptor closed for the headroom, in `cancel` whether to cancel the accept.
    mutating func noteAccept(
        _ event: cpoller_event, woken: inout [(Waiter, WakeReason)], shed: inout Int32, cancel: inout Bool
    ) -> Bool {
        guard isCurrent(event.pollToken.generation), accepted.isOn else { return false }
        var kept = false
        if event.res >= 0 {
            if accepted.headroom > 0, descriptorIsInHeadroom(event.res, headroom: accepted.headroom) {
                shed = event.res
                accepted.entries.append(-EMFILE)
                accepted.rearmBelow = 1
            } else {
                accepted.entries.append(event.res)
                kept = true
            }
        } else if event.res != -ECANCELED && event.res != -ECONNABORTED && event.res != -EINTR {
            // The kernel ends a multishot accept on a failure; the next accept reports it. (A
            // client that gave up while queued and an interrupted accept are dropped: the next
            // take arms the accept again, as accept4's caller retries them.)
            accepted.entries.append(event.res)
            accepted.rearmBelow = 1
        }
        if event.isEnded {
            accepted.armed = false
            accepted.cancelling = false
        } else if !accepted.cancelling && (accepted.entries.count >= AcceptQueue.bound || accepted.rearmBelow == 1) {
            accepted.cancelling = true
            cancel = true
        }
        if let w = takeWaiter(.read, ioReady: true) { woken.append((w, .ready)) }
        return kept
    }

    /// Takes the oldest queued entry, and arms the accept again (through `arm`) if none is
    /// armed and the queue is below its re-arm mark (unless the entry is a failure).
    mutating func takeAccepted(arm: () -> Void) -> AcceptedDescriptor {
        var result = AcceptedDescriptor.empty
        if !accepted.entries.isEmpty {
            let entry = accepted.entries.removeFirst()
            result = entry >= 0 ? .descriptor(entry) : .failed(errno: -entry)
        }
        // Not after a failure: the acceptor backs off (frees descriptors, say) before its next
        // accept, which arms the accept then, and finds no failure made meanwhile.
        if case .failed = result { return result }
        if !accepted.armed && !closing && accepted.entries.count < accepted.rearmBelow {
            accepted.armed = true
            accepted.rearmBelow = AcceptQueue.bound
            arm()
        }
        return result
    }
}

/// Whether descriptor `fd` lies in the top `headroom` slots below the soft RLIMIT_NOFILE (read
/// now, never cached; unlimited or unreadable: no).
func descriptorIsInHeadroom(_ fd: Int32, headroom: Int) -> Bool {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur <= rlim_t(Int32.max) else { return false }
    return Int(fd) >= Int(limit.rlim_cur) - headroom
}

extension Poller {
    /// Whether this poller's listeners accept through io_uring multishot accept: io_uring, a
    /// kernel with it (Linux 5.19), and not turned off (`POLLER_URING_ACCEPT=off`).
    /// ``backendReason`` says which, and why.
    public var acceptsThroughCompletions: Bool { backend.acceptsThroughCompletions }

    /// Dispatch of one accept completion (PollerLoop.swift). A descriptor that no queue takes
    /// (the listener closed meanwhile, its slot reused) is closed here.
    func dispatchAccept(_ event: cpoller_event, slot: DescriptorSlot?, woken: inout [(Waiter, WakeReason)]) {
        var shed: Int32 = -1
        var cancel = false
        let kept =
            slot?.state.withLockAnnotated { s in s.noteAccept(event, woken: &woken, shed: &shed, cancel: &cancel) } ?? false
        if !kept && event.res >= 0 && shed < 0 { Glibc.close(event.res) }
        if shed >= 0 { Glibc.close(shed) }
        if cancel { backend.cancelAccept(token: event.pollToken) }
    }

    /// Starts multishot accept on a listening socket's slot (arms it); false where the
    /// backend cannot, or the slot is closing.
    func startAccepting(_ slot: DescriptorSlot, generation: UInt32, headroom: Int) -> Bool {
        guard backend.acceptsThroughCompletions else { return false }
        return slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation), !s.closing, !s.accepted.isOn else { return false }
            s.accepted.isOn = true
            s.accepted.armed = true
            s.accepted.headroom = max(0, headroom)
            backend.armAccept(fd: s.fd, token: PollToken(slot: slot.index, generation: generation))
            return true
        }
    }

    func takeAccepted(_ slot: DescriptorSlot, generation: UInt32, headroom: Int) -> AcceptedDescriptor {
        slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation) else { return .empty }
            s.accepted.headroom = max(0, headroom)
            let fd = s.fd
            return s.takeAccepted { backend.armAccept(fd: fd, token: PollToken(slot: slot.index, generation: generation)) }
        }
    }

    /// Closes the descriptors a closed listener's queue held.
    static func closeQueued(_ descriptors: [Int32]) {
        for fd in descriptors { Glibc.close(fd) }
    }
}

extension PollDescriptor {
    /// Starts io_uring multishot accept for this descriptor, a listening stream socket: from
    /// here on its connections arrive in a queue that ``takeAccepted()`` reads, never by
    /// accept4(2) of the caller's. A connection the kernel puts in the top `headroom`
    /// descriptor slots below the soft RLIMIT_NOFILE is closed at arrival and reported as
    /// EMFILE. False when the poller cannot (epoll, no kernel support, turned off) or the
    /// descriptor is closing; then accept as usual. Call it once, from the acceptor.
    package func startAccepting(headroom: Int) -> Bool {
        poller.startAccepting(slot, generation: generation, headroom: headroom)
    }

    /// Takes the oldest connection (or failure) multishot accept queued; see
    /// ``AcceptedDescriptor``. Arms the accept again when it was stopped and the queue has
    /// room. `headroom` replaces the one arrivals are checked against from here on.
    package func takeAccepted(headroom: Int) -> AcceptedDescriptor {
        poller.takeAccepted(slot, generation: generation, headroom: headroom)
    }
}

// Backends without multishot accept (epoll).
extension PollerBackend {
    var acceptsThroughCompletions: Bool { false }
    func armAccept(fd: Int32, token: PollToken) {}
    func cancelAccept(token: PollToken) {}
    var acceptSummary: String { "accepts by accept4(2) on readiness" }
}
