/// A descriptor registered with a ``Poller``: Go's pollDesc, as a value.
///
/// Made by ``Poller/register(_:)``. A handle stays tied to the registration it was made for:
/// once ``close()`` has run, every operation on it (or on copies of it) fails with
/// ``PollError/closing`` or does nothing, even after the poller reuses the slot for another
/// descriptor.
///
/// Lifecycle: `register` → any number of `wait`/`reset`/`setDeadline` → ``unblock()`` (wakes
/// every waiter with ``PollError/closing``) → ``close()`` → `close(2)` of the fd by its owner.
///
/// One waiter per direction: a reader and a writer may wait at once, but a second wait on a
/// direction that already has a waiter fails with ``PollError/doubleWait``.
public struct PollDescriptor: Sendable, Hashable {
    /// The poller this descriptor is registered with: its waits are woken on that poller's
    /// thread, so a task on its ``Poller/executor`` resumes without a hop.
    public let poller: Poller
    @usableFromInline let slot: DescriptorSlot
    @usableFromInline let generation: UInt32
    /// The registered file descriptor.
    public let fd: Int32

    public static func == (a: PollDescriptor, b: PollDescriptor) -> Bool {
        a.slot === b.slot && a.generation == b.generation
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(slot))
        hasher.combine(generation)
    }

    /// Waits until `mode` (`.read` or `.write`) is ready.
    ///
    /// Returns at once if readiness arrived since the last wait or ``reset(for:)``. Readiness
    /// is a hint: retry the I/O and wait again on EAGAIN.
    ///
    /// - Throws: ``PollError/closing`` after ``unblock()``; ``PollError/timeout`` once this
    ///   direction's deadline has passed (at once if it already has);
    ///   ``PollError/notPollable`` (reads) after an error event; ``PollError/cancelled`` if
    ///   the task is cancelled while waiting; ``PollError/doubleWait`` if another waiter holds
    ///   this direction; ``PollError/invalidMode`` for `.readWrite`.
    nonisolated(nonsending) public func wait(for mode: PollMode) async throws(PollError) {
        try await wait(for: mode, cancellable: true)
    }

    /// ``wait(for:)`` with two knobs for the net layer.
    ///
    /// - `cancellable: false` ignores task cancellation, as Go's waits do: only readiness, a
    ///   deadline or ``unblock()`` end the wait, and no cancellation handler is installed (which
    ///   saves a task status record per wait).
    /// - `afterDrainingRead: true` (reads) is the wait of a read that skipped its system call
    ///   because the previous read came back short. Latched readiness ends it at once, as
    ///   usual; once the kernel has reported a hang-up, an error or urgent data it returns at
    ///   once without consuming readiness. The rule and why it holds: `SlotState`'s
    ///   `sawHangUpErrorOrUrgent` (PollDescriptorState.swift).
    @inlinable  // the net layer's hot path: one async frame fewer per wait
    package nonisolated(nonsending) func wait(
        for mode: PollMode, cancellable: Bool, afterDrainingRead: Bool = false
    ) async throws(PollError) {
        if let error = await poller.wait(
            slot, generation: generation, mode: mode, cancellable: cancellable, afterDrainingRead: afterDrainingRead)
        {
            throw error
        }
    }

    /// Blocks the calling thread until `mode` is ready. For code on plain threads; from a
    /// task, use ``wait(for:)``. Same errors as ``wait(for:)`` except cancellation, plus
    /// ``PollError/wouldBlockPollerThread`` when called on the poller thread.
    public func waitBlocking(for mode: PollMode) throws(PollError) {
        if let error = poller.waitBlocking(slot, generation: generation, mode: mode) { throw error }
    }

    /// Prepares for an I/O attempt (Go's pollReset): fails if the descriptor is closing, the
    /// deadline for `mode` has passed, or (reads) an error event is pending; otherwise forgets
    /// readiness latched for `mode`.
    public func reset(for mode: PollMode) throws(PollError) {
        if let error = poller.reset(slot, generation: generation, mode: mode) { throw error }
    }

    /// Sets or clears the deadline for `mode`.
    ///
    /// `nil` clears it. An instant in the past (or now) expires it at once: waiters on `mode`
    /// return ``PollError/timeout`` immediately, as do later waits until the deadline is
    /// changed. A blocked waiter sees a change at once: extending or clearing the deadline
    /// keeps it waiting. Equal read and write deadlines share one timer. A mode other than
    /// `.read`, `.write` or `.readWrite` is ignored.
    public func setDeadline(_ deadline: ContinuousClock.Instant?, for mode: PollMode = .readWrite) {
        guard let deadline else {
            poller.setDeadline(slot, generation: generation, deadline: 0, mode: mode)
            return
        }
        setDeadline(in: deadline - ContinuousClock.now, for: mode)
    }

    /// Sets the deadline for `mode` to `duration` from now; zero or negative expires it now.
    public func setDeadline(in duration: Duration, for mode: PollMode = .readWrite) {
        setDeadline(nanoseconds: MonotonicClock.nanoseconds(duration), for: mode)
    }

    /// Go's encoding: `d` > 0 is relative (nanoseconds from now; an overflowing sum clamps to
    /// the far future), 0 clears, < 0 means already expired.
    func setDeadline(goRelative d: Int64, for mode: PollMode) {
        var absolute = d
        if d > 0 {
            let (sum, overflow) = MonotonicClock.now().addingReportingOverflow(d)
            absolute = overflow || sum <= 0 ? .max : sum
        }
        poller.setDeadline(slot, generation: generation, deadline: absolute, mode: mode)
    }

    private func setDeadline(nanoseconds d: Int64, for mode: PollMode) {
        setDeadline(goRelative: d <= 0 ? -1 : d, for: mode)
    }

    /// Marks the descriptor closing and wakes both waiters with ``PollError/closing`` (Go's
    /// pollUnblock). Stops its deadline timers. Every later wait or reset fails with
    /// ``PollError/closing``. Calling it again does nothing.
    public func unblock() {
        poller.unblock(slot, generation: generation)
    }

    /// Deregisters the descriptor and recycles its slot (Go's pollClose). Call it after
    /// ``unblock()`` and once every waiter has returned, then close the fd.
    ///
    /// - Throws: ``PollError/notUnblocked`` without a prior ``unblock()``;
    ///   ``PollError/waiterParked`` if a waiter has not returned yet; ``PollError/closing`` if
    ///   already closed. In each case nothing changes.
    public func close() throws(PollError) {
        try poller.close(slot, generation: generation)
    }
}
