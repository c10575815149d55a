import CPoller
import Glibc

// io_uring completion send, the core's half: a writer on the poller thread queues a send on
// the ring (submitted with the loop's next io_uring_enter, together with every other send
// and the wait) and parks until its completion, instead of making a send(2) of its own.
//
// The caller's bytes are the kernel's until the completion: a send is never abandoned. A
// deadline that expires, an unblock (close) or the writer's task being cancelled cancels the
// request instead (IORING_OP_ASYNC_CANCEL), and the writer still waits for the send's own
// completion, which says what the kernel took: bytes sent before the cancel are counted (none
// lost, none sent twice), and -ECANCELED means none were. The writer then asks the slot why
// (``SlotState/pendingError(_:)``), as a readiness wait would have told it.

/// What a send on the ring sends: bytes, or a gathered write (sendmsg(2) of iovecs). The
/// pointers, and what they point to, must stay valid until the send's completion.
package enum RingSendRequest {
    case bytes(UnsafeRawPointer, count: Int)
    /// `header` is storage for the message header; `vectors` the `count` iovecs.
    case message(header: UnsafeMutablePointer<msghdr>, vectors: UnsafePointer<iovec>, count: Int)
}

/// The send in flight for one descriptor, under the slot's lock.
///
/// Invariants: at most one send per descriptor is in flight (the net layer's write lock); a
/// writer is parked here from the moment its send is queued until its completion (or the
/// poller's shutdown, which resumes it with -ECANCELED: the ring is gone); `cancelRequested`
/// is set at most once per send, so a deadline, a close and a cancellation together queue
/// one cancel.
struct SendInFlight {
    /// The writer waiting for the completion, resumed with its result (bytes, or -errno).
    var waiter: UnsafeContinuation<Int32, Never>? = nil
    var cancelRequested = false

    /// Whether a cancel should be queued now: a send is in flight, none was asked for, and
    /// `reason` holds (the write deadline expired, the slot is closing, the task was
    /// cancelled). Marks it asked for.
    mutating func needsCancel(_ reason: Bool) -> Bool {
        guard reason, waiter != nil, !cancelRequested else { return false }
        cancelRequested = true
        return true
    }
}

extension Poller {
    /// Whether writes can go through the ring: the backend sends through completions. A write
    /// does when it is made on the poller thread (the ring's only submitter: a writer
    /// elsewhere makes its own send(2), since a hop to the poller thread would cost a wake-up,
    /// more than the system call it saves) while the poller is busy: its last poll returned
    /// at least `minimumBatch` events (2 unless set; `POLLER_URING_SEND=always` makes it 0).
    /// On a quiet poller a send on the ring costs the writer a park and the loop a second
    /// kernel entry per round trip, more than the send(2) it replaces; on a busy one the
    /// sends ride along with the wait.
    public var sendsThroughCompletions: Bool { backend.sendsThroughCompletions }

    /// The caller's thread before `lastPollBatch`, which is the poller thread's alone; an
    /// epoll poller answers from a stored constant, without the thread-local look-up.
    @inline(__always)
    func canSendThroughRing() -> Bool {
        ringSendBatch != .max && Poller.current === self && lastPollBatch >= ringSendBatch
    }

    /// Queues `request` and waits for its completion: the bytes sent
    /// (at least 0), or -errno: -ECANCELED when it was cancelled before sending a byte (or was
    /// never queued because the slot is closing, its write deadline has passed or the task is
    /// cancelled), -EBUSY when the ring would not take it (send it yourself).
    nonisolated(nonsending) func sendThroughRing(
        _ slot: DescriptorSlot, generation: UInt32, request: RingSendRequest, cancellable: Bool
    ) async -> Int32 {
        let token = PollToken(slot: slot.index, generation: generation)
        // No handler when cancellation is not observed: it would add and remove a task status
        // record per send, under the runtime's status-record lock (the top user-space symbol
        // of poller-echo on io_uring at 64 connections), as a wait skips it (PollerWaits.swift).
        guard cancellable else { return await queueSend(slot, generation: generation, token: token, request: request) }
        return await withTaskCancellationHandler {
            await queueSend(slot, generation: generation, token: token, request: request, checkingCancellation: true)
        } onCancel: {
            slot.state.withLockAnnotated { s in
                if s.isCurrent(generation), s.sent.needsCancel(true) { backend.cancelSend(token: token) }
            }
        }
    }

    /// `sendThroughRing`'s queueing and parking: the send's result, or the -errno that refused it.
    nonisolated(nonsending) private func queueSend(
        _ slot: DescriptorSlot, generation: UInt32, token: PollToken, request: RingSendRequest, checkingCancellation: Bool = false
    ) async -> Int32 {
        await withUnsafeContinuation { (c: UnsafeContinuation<Int32, Never>) in
            let refused: Int32? = slot.state.withLockAnnotated { s in
                guard s.isCurrent(generation), s.pendingError(.write) == nil else { return -ECANCELED }
                // Checked under the lock: a cancellation after this finds the send queued.
                if checkingCancellation && Task.isCancelled { return -ECANCELED }
                let r = backend.submitSend(fd: s.fd, token: token, request: request)
                guard r == 0 else { return -r }
                s.sent = SendInFlight(waiter: c)
                return nil
            }
            if let refused { c.resume(returning: refused) }
        }
    }

    /// Queues the cancel of the slot's send if `s` now says its writer must stop (deadline,
    /// closing). Under the slot's lock (lock order: slot, then the backend's state).
    func cancelSendIfStopped(_ s: inout SlotState, slot: DescriptorSlot) {
        guard s.sent.waiter != nil, s.sent.needsCancel(s.pendingError(.write) != nil) else { return }
        backend.cancelSend(token: PollToken(slot: slot.index, generation: s.generation))
    }

    /// Dispatch of one send completion (PollerLoop.swift).
    func dispatchSent(_ event: cpoller_event, slot: DescriptorSlot?) {
        let waiter: UnsafeContinuation<Int32, Never>? = slot?.state.withLockAnnotated { s in
            guard s.isCurrent(event.pollToken.generation) else { return nil }
            defer { s.sent = SendInFlight() }
            return s.sent.waiter
        }
        waiter?.resume(returning: event.res)
    }

    /// Shutdown: the ring is destroyed, so no send completes any more; its writer is resumed
    /// with -ECANCELED (the slot is closing, so it reports `.closing`). Poller thread, after
    /// the backend's shutdown (which cancelled the requests).
    func abandonSend(_ slot: DescriptorSlot) {
        let waiter: UnsafeContinuation<Int32, Never>? = slot.state.withLockAnnotated { s in
            defer { s.sent = SendInFlight() }
            return s.sent.waiter
        }
        waiter?.resume(returning: -ECANCELED)
    }
}

extension PollDescriptor {
    /// Whether a write from the calling thread now goes through the ring
    /// (``sendThroughRing(_:cancellable:)``): io_uring completion send, and this is the
    /// poller's own thread.
    @inline(__always)
    package var sendsThroughRing: Bool { poller.canSendThroughRing() }

    /// Sends `request` through the ring and waits for the completion; see
    /// `Poller.sendThroughRing`. Its pointers must stay valid until this returns (it always
    /// waits for the kernel to be done with them). A deadline, close or (with `cancellable`) task
    /// cancellation cancels the send; bytes it sent before that are returned, -ECANCELED when
    /// none were: then ``reset(for:)`` and `Task.isCancelled` say why, and with neither the
    /// caller tries again.
    package nonisolated(nonsending) func sendThroughRing(
        _ request: RingSendRequest, cancellable: Bool
    ) async -> Int32 {
        await poller.sendThroughRing(slot, generation: generation, request: request, cancellable: cancellable)
    }
}
