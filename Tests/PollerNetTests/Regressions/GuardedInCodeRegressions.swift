import Glibc
import Testing

@_spi(Benchmarks) @testable import Poller
@testable import PollerNet

extension PollerNetTests {
    /// Regressions for the bugs of the digest (go-netpoll.md §6) that Go guards only in code,
    /// at the net layer: each test is named after the bug and carries its number in a comment.
    /// The poller-level ones are in PollerTests/Regressions/GuardedInCodeRegressions.swift.
    @Suite("Regressions: bugs Go guards only in code (net layer)")
    struct GuardedInCodeRegressions {
        /// Dials `listener` and checks that `accept` (the accept under test, started before or
        /// after the dial) returns that connection, which carries a byte; closes both ends.
        private static func expectAcceptsDial(
            _ listener: TCPListener, _ poller: Poller, accept: () async throws -> Connection
        ) async throws {
            let dialled = try await Connection.dial(host: "127.0.0.1", port: listener.localAddress.port!, poller: poller)
            let accepted = try await accept()
            #expect(accepted.remoteAddress == dialled.localAddress)
            try await dialled.write([3])
            #expect(try await accepted.read(maxBytes: 1) == [3])
            try await dialled.close()
            try await accepted.close()
        }

        // Digest §6 bug 3 (Go #14548, #19289 for connect).
        @Test(
            "Readiness taken as truth: a spurious readiness wakes a blocked read, write and accept; each retries its system call, gets EAGAIN and waits again",
            arguments: BackendKind.allCases)
        func spuriousReadiness(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let reader = Task { () async throws(NetError) -> [UInt8] in try await client.read(maxBytes: 16) }
                try await expectStillWaiting(after: client.netFD, .read, poller)
                try await pair.server.write([7, 8])
                #expect(try await reader.value == [7, 8])

                let writer = try await startBlockedWrite(client, poller)
                try await expectStillWaiting(after: client.netFD, .write, poller)
                try client.setWriteDeadline(.now - .seconds(1))
                let written = await writer.value
                #expect(written.error == .timeout && written.bytesWritten > 0)

                let acceptor = Task { () async throws(NetError) -> Connection in try await pair.listener.accept() }
                try await expectStillWaiting(after: pair.listener.netFD, .read, poller)
                try await Self.expectAcceptsDial(pair.listener, poller) { try await acceptor.value }
            }
        }

        // Digest §6 bug 10.
        @Test(
            "Descriptor reused mid-operation: while a read still holds a reference, close keeps the number open, so a descriptor opened meanwhile never gets it, and the read ends with closed",
            arguments: BackendKind.allCases)
        func numberHeldUntilLastReference(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let fd = client.netFD.fd
                // The first read holds the read lock, parked; the second holds a reference on
                // its way to the lock queue.
                let readers = try await closeWhileOperationHeldBeforeQueue(client, .read) {
                    (
                        try await startBlockedRead(client, poller),
                        Task { await netError { () async throws(NetError) in try await client.read(maxBytes: 16) } }
                    )
                } whileClosing: { closeReturned in
                    #expect(fcntl(fd, F_GETFD) != -1, "the number was closed under an operation holding it")
                    var opened: [Int32] = []
                    for _ in 0..<8 {
                        var ends: [Int32] = [-1, -1]
                        if Glibc.pipe(&ends) == 0 { opened += ends }
                    }
                    #expect(!opened.isEmpty && !opened.contains(fd), "a new descriptor got the number \(fd) in use")
                    for end in opened { Glibc.close(end) }
                    #expect(!closeReturned.isSet, "close returned with a reference outstanding")
                }
                guard let (first, second) = readers else { return }
                #expect(await first.value == .closed)
                #expect(await second.value == .closed)
            }
        }

        // Digest §6 bug 20 and Go test #38 (TestAcceptIgnoreAbortedConnRequest, Go #6163, #6987),
        // with the errors injected, as Go does.
        @Test(
            "Accept's transient errors: ECONNABORTED and EINTR from accept4 are retried, and the pending connection is accepted",
            arguments: BackendKind.allCases)
        func acceptRetriesTransientErrors(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let listenerFD = pair.listener.netFD.fd
                let injected = [ECONNABORTED, EINTR, ECONNABORTED]
                let calls = Counter()
                var hooks = NetTestHooks.Hooks()
                hooks.acceptCall = { fd in
                    guard fd == listenerFD else { return nil }
                    let n = calls.increment()
                    guard n <= injected.count else { return nil }
                    errno = injected[n - 1]
                    return -1
                }
                try await NetTestHooks.with(hooks) {
                    try await Self.expectAcceptsDial(pair.listener, poller) { try await pair.listener.accept() }
                }
                #expect(calls.value == injected.count + 1)
            }
        }

        // Digest §6 bug 14, at the net layer (the poller's wait: PollerTests).
        @Test(
            "EINTR: a write interrupted before it wrote anything is retried, and every byte arrives",
            arguments: BackendKind.allCases)
        func interruptedWriteRetried(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let (result, calls) = await writeWithInjectedCalls(pair) { call, _ in
                    guard call <= 2 else { return nil }
                    errno = EINTR
                    return -1
                }
                #expect(result == WriteResult(bytesWritten: 4, error: nil))
                #expect(calls == 3)
                var got: [UInt8] = []
                while got.count < 4 { got += try await pair.server.read(maxBytes: 4) }
                #expect(got == [1, 2, 3, 4])
            }
        }
    }
}

/// Latches a readiness the kernel never reported (`mode` of `netFD`, whose operation is
/// blocked in the poller), then checks that the operation is still waiting 30 ms later and
/// parked again: it retried its system call and went back to wait on EAGAIN.
private func expectStillWaiting(
    after netFD: NetFD, _ mode: PollMode, _ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    try await waitUntilParked(poller, sourceLocation: sourceLocation)
    netFD.pollDescriptor._latchReadinessForBenchmark(mode)
    await sleep(ms: 30)
    #expect(parkedWaiters(poller) == 1, "the woken operation did not wait again", sourceLocation: sourceLocation)
    #expect(!netFD.pollDescriptor.isLatchedForTesting(mode), sourceLocation: sourceLocation)
}

extension PollDescriptor {
    /// White-box: readiness is latched for `mode` (nobody consumed it).
    fileprivate func isLatchedForTesting(_ mode: PollMode) -> Bool {
        slot.state.withLockAnnotated { s in
            if case .ready = s[semaphore: mode] { return true }
            return false
        }
    }
}
