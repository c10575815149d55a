import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller

// Opening and closing a descriptor from a task that is not on the poller thread. On io_uring
// the ring's owner (the poller thread) alone may submit, so both become commands the owner
// applies; neither waits for it (a deregistration waits only for a listening or datagram
// socket, whose address must be free when close(2) returns). These tests pin what must still
// hold: readiness reaches waiters, the peer sees EOF, nothing is left behind, and a poll the
// kernel fails wakes its waiters instead of leaving them parked.
//
// Serialized: the fault-injection test arms a process-wide test seam of the C shim.
@Suite("Registration off the poller thread", .serialized)
struct OffThreadRegistrationTests {
    @Test("registering off the poller thread, then readiness wakes a parked reader", arguments: BackendKind.allCases)
    func offThreadRegistrationDeliversReadiness(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            let pair = SocketPair()
            #expect(cpoller_thread_id() != poller.threadID, "the test body runs on the poller thread")
            let pd = try poller.register(pair.a)
            let reader = startWait(pd, .read)
            #expect(await waitersParked(poller, 1))
            #expect(writeBytes(pair.b) == 1)
            #expect(await reader.outcome() == .ready)
            pd.unblock()
            try pd.close()
        }
    }

    @Test("closing off the poller thread lets the peer see EOF promptly", arguments: BackendKind.allCases)
    func offThreadCloseGivesThePeerEOF(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            let fds = makeSocketPairFDs()
            defer { close(fds.b) }
            let pd = try poller.register(fds.a)
            // Readiness has been seen (the poll is armed and has fired) before the close.
            #expect(await startWait(pd, .write).outcome() == .ready)
            pd.unblock()
            try pd.close()
            close(fds.a)
            // Bounded only to catch a hang: the poll holding the socket is cancelled a wake-up
            // after close returned (microseconds).
            #expect(await peerSeesEOF(fds.b), "the peer saw no EOF: a poll still holds the closed socket")
        }
    }

    @Test(
        "opening and closing 10,000 times off the poller thread leaks no descriptor, leaves no registration, and every peer sees EOF",
        arguments: BackendKind.allCases)
    func offThreadOpenCloseLeavesNothing(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            for _ in 0..<10 {
                var peers: [Int32] = []
                for _ in 0..<1_000 {
                    let fds = makeSocketPairFDs()
                    let pd = try poller.register(fds.a)
                    pd.unblock()
                    try pd.close()
                    close(fds.a)
                    peers.append(fds.b)
                }
                for peer in peers {
                    #expect(await peerSeesEOF(peer), "a peer saw no EOF")
                    close(peer)
                }
            }
            #expect(poller.openDescriptorCount == 0)
            if let ring = poller.backend as? URingBackend {
                #expect(await becomesTrue { ring.liveRegistrationCount == 0 && ring.queuedCommandCount == 0 })
            }
        }
    }

    @Test(
        "io_uring: a registration made off the poller thread whose poll the kernel fails wakes its parked waiters with the error instead of leaving them parked"
    )
    func offThreadFailedArmWakesWaiters() async throws {
        try await withPoller(.ioUring) { poller in
            let pair = SocketPair()
            let backend = try #require(poller.backend as? URingBackend)
            // Hold the poller thread so that the waiters park before the owner arms the poll.
            let gate = Atomic<Bool>(false)
            let held = Atomic<Bool>(false)
            let holder = Task(executorPreference: poller.executor) {
                held.store(true, ordering: .sequentiallyConsistent)
                while !gate.load(ordering: .sequentiallyConsistent) { sched_yield() }
            }
            #expect(await becomesTrue { held.load(ordering: .sequentiallyConsistent) })
            // The first poll request names descriptor -1: the kernel fails it (-EBADF).
            _ = cpoller_fault_inject(Int32(CPOLLER_FAULT_POLL_REQUEST), backend.kernelFD, 0, 1)
            // Returns while the owner is held: the registration did not wait for the arm.
            let pd = try poller.register(pair.a)
            let filled = fillUntilBlocked(pair.a)
            #expect(filled > 0)
            let reader = startWait(pd, .read)
            let writer = startWait(pd, .write)
            #expect(await waitersParked(poller, 2))
            gate.store(true, ordering: .sequentiallyConsistent)
            await holder.value
            // Both directions are woken (not left parked); the reader then sees the error Go
            // reports to readers.
            #expect(await reader.outcome() == .ready)
            #expect(await writer.outcome() == .ready)
            #expect(pd.resetResult(.read) == .notPollable)
            #expect(cpoller_fault_inject(Int32(CPOLLER_FAULT_POLL_REQUEST), -1, 0, 0) == 1)
            #expect(backend.faults.reported.contains("io_uring poll \(EBADF)"))
            try await expectWriterWokenByNextEdgeThenClose(poller, pd, writeEnd: pair.a, peer: pair.b)
        }
    }
}

extension OffThreadRegistrationTests {
    @Test(
        "io_uring: a registration made off the poller thread whose poll cannot be queued yet succeeds, and its poll is retried with back-off until it reports readiness",
        arguments: [EBUSY, ENOMEM])
    func offThreadUnqueueableArmIsRetried(error: Int32) async throws {
        try await withPoller(.ioUring) { poller in
            let pair = SocketPair()
            refuseRingSubmissions(ringFD: poller.backend.kernelFD, error: error)
            let pd = try poller.register(pair.a)
            let reader = startWait(pd, .read)
            #expect(await waitersParked(poller, 1))
            #expect(await becomesTrue { poller.backend.faults.reported.contains("io_uring submission (register) \(error)") })
            #expect(cpoller_fault_inject(Int32(CPOLLER_FAULT_GET_SQE), -1, 0, 0) >= 1)
            _ = cpoller_fault_inject(Int32(CPOLLER_FAULT_SUBMIT), -1, 0, 0)
            // Once the ring accepts it (the next retry, within the back-off), the poll is armed.
            #expect(writeBytes(pair.b) == 1)
            #expect(await reader.outcome() == .ready)
            pd.unblock()
            try pd.close()
        }
    }
}

/// Whether a non-blocking read of `fd` returns 0 (end of file) within `limit`.
private func peerSeesEOF(_ fd: Int32, within limit: Duration = .seconds(5)) async -> Bool {
    await becomesTrue(within: limit) {
        var byte: UInt8 = 0
        return read(fd, &byte, 1) == 0
    }
}
