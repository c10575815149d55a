import CPoller
import Glibc
import Testing

@testable import Poller

// Go's eventErr rule and stale error events, with the events handed to the descriptor's slot
// exactly as the poller thread's dispatch hands a kernel event (a real lone EPOLLERR needs a
// tun device, that is root: Go's TestReadError/ErrNotPollable).

extension NetpollSuites {
    @Suite("Error events")
    struct EventErrorTests {
        // Digest #72; §6 bug 15 (Go #30426, #30624, #38618).
        @Test(
            "An exact EPOLLERR fails reads with notPollable and not writes; any later event clears it, and EPOLLERR with EPOLLIN never sets it",
            arguments: BackendKind.allCases)
        func eventErrorSetAndCleared(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let token = PollToken(slot: pd.slot.index, generation: pd.generation)
                let error = KernelReadiness.error
                let input = KernelReadiness.input
                for (masks, expected) in [
                    ([error], PollError.notPollable), ([error, input], nil), ([error | input], nil),
                    ([error, KernelReadiness.output], nil), ([input, error], .notPollable),
                ] as [([UInt32], PollError?)] {
                    for mask in masks { deliver(mask, token: token, to: pd) }
                    #expect(pd.resetResult(.read) == expected, "after \(masks)")
                    #expect(pd.resetResult(.write) == nil, "writers saw the error event after \(masks)")
                }
                deliver(input, token: token, to: pd)
                pd.finish()
            }
        }

        // Digest #71 (last point); §6 bug 4 (Go #59545).
        @Test(
            "A stale EPOLLERR or EPOLLIN for the previous registration of a slot neither fails nor wakes the new registration's reader",
            arguments: BackendKind.allCases)
        func staleErrorEventIgnored(kind: BackendKind) async throws {
            try await withPoller(kind) { poller in
                let old = OwnedPipe()
                let new = OwnedPipe()
                let previous = try poller.register(old.readFD)
                let staleToken = PollToken(slot: previous.slot.index, generation: previous.generation)
                previous.finish()
                let pd = try poller.register(new.readFD)
                #expect(pd.slot === previous.slot, "the slot was not reused (LIFO)")
                deliver(KernelReadiness.error, token: staleToken, to: pd)
                #expect(pd.resetResult(.read) == nil, "a stale error event failed the new reader")
                let waiter = startWait(pd, .read)
                #expect(await waitersParked(poller, 1))
                deliver(KernelReadiness.input, token: staleToken, to: pd)
                deliver(KernelReadiness.error, token: staleToken, to: pd)
                try await Task.sleep(for: .milliseconds(20))
                #expect(!waiter.isFinished, "a stale event woke the new reader")
                writeBytes(new.writeFD)
                #expect(await waiter.outcome() == .ready)
                pd.finish()
            }
        }
    }
}

/// Hands `pd`'s slot a kernel event for `token` with the readiness `mask` (epoll's bits), as
/// the poller thread's dispatch does, and resumes whom it wakes.
private func deliver(_ mask: UInt32, token: PollToken, to pd: PollDescriptor) {
    let event = cpoller_event(
        token: token.raw, flags: cpoller_event.flags(readiness: mask), res: Int32(bitPattern: mask), cqe_flags: 0)
    var woken: [(Waiter, WakeReason)] = []
    pd.slot.state.withLockAnnotated { $0.noteEvent(event, woken: &woken) }
    pd.poller.resume(&woken)
}
