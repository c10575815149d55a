import CPoller
import Glibc
import Synchronization
import Testing
@testable import Poller
@testable import PollerNet

extension PollerNetTests {
    /// Regressions from issue 11 (net layer), one test per behaviour. Nested in
    /// ``PollerNetTests`` so they run serialized with the other net-layer tests (each counts
    /// the process's descriptors, and some install process-wide test hooks).
    @Suite("Regressions: net layer")
    struct NetLayerRegressions {
        // MARK: 3. close() waits for the last reference

        @Test("close returns, closes the descriptor and frees its slot when the last reference is dropped by a writer that had not yet queued for the write lock",
              arguments: BackendKind.allCases)
        func closeResumedByUnqueuedWriter(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let fdMutex = client.netFD.fdMutex
                let fd = client.netFD.fd
                let writerBArrived = Flag()
                let releaseWriterB = Gate()
                var hooks = NetTestHooks.Hooks()
                hooks.beforeLockQueue = { mutex, direction in
                    guard mutex === fdMutex, direction == .write else { return }
                    writerBArrived.set()
                    await releaseWriterB.wait()
                }
                try await NetTestHooks.with(hooks) {
                    // Writer A takes the write lock and parks in the poller on a full buffer.
                    let writerA = Task { await client.writeReportingProgress([UInt8](repeating: 1, count: 64 << 20)) }
                    try await waitUntilParked(poller)
                    // Writer B is past beginLock (one reference) and held before queueing.
                    let writerB = Task { await client.writeReportingProgress([2]) }
                    #expect(await waitUntil { writerBArrived.isSet }, "writer B never reached the lock queue")
                    let closeReturned = Flag()
                    let closer = Task { () async -> NetError? in
                        defer { closeReturned.set() }
                        return await netError { () async throws(NetError) in try await client.close() }
                    }
                    // Close has failed writer A (which dropped its reference) and dropped its
                    // own: writer B's is the last one.
                    #expect(await waitUntil {
                        let s = fdMutex.snapshot
                        return s.closing && s.closeWaiting && s.references == 1
                    }, "close never came to wait for writer B's reference: \(fdMutex.snapshot)")
                    releaseWriterB.open()
                    // The only time bound: to report a hang instead of hanging.
                    guard await waitUntil(seconds: 5, { closeReturned.isSet }) else {
                        Issue.record("close() never returned: \(fdMutex.snapshot)")
                        return
                    }
                    #expect(await closer.value == nil, "close() threw")
                    #expect(fcntl(fd, F_GETFD) == -1 && errno == EBADF, "the descriptor is still open")
                    let a = await writerA.value
                    #expect(a.error == .closed && a.bytesWritten > 0)
                    #expect(await writerB.value == WriteResult(bytesWritten: 0, error: .closed))
                    #expect(poller.parkedWaiterCount == 0)
                    // The server end and the listener remain; the client's slot is free.
                    #expect(poller.openDescriptorCount == 2)
                }
            }
        }
    }
}

// MARK: - Helpers

/// A flag set once, read from any task.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// A one-shot gate: ``wait()`` suspends until ``open()`` (and returns at once after it).
final class Gate: Sendable {
    private struct State {
        var isOpen = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s in
                if s.isOpen { return true }
                s.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { s in
            s.isOpen = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Polls `condition` every 2 ms until it holds (true) or `seconds` pass (false).
func waitUntil(seconds: Int = 5, _ condition: () -> Bool) async -> Bool {
    let limit = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        if ContinuousClock.now > limit { return false }
        await sleep(ms: 2)
    }
    return true
}
