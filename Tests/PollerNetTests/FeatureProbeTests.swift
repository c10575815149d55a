import Glibc
import PollerNet
import Testing

@testable import Poller

// The io_uring feature probes, each forced to say what an older kernel says: the operation
// falls back to the readiness path alone, the others keep theirs, `backendReason` says why,
// and the connection works as before. (On epoll the probes do not exist: the same traffic,
// readiness throughout.)

/// A poller of `kind` with `options` (whose io_uring probes answer as the test says).
private func withProbes(_ kind: BackendKind, _ options: Poller.Options, _ body: (Poller) async throws -> Void) async throws {
    try await withReadPath(kind == .epoll ? .epoll : .uringReadiness, options: options, body)
}

/// Default options but for `tweak`.
private func options(_ tweak: (inout Poller.Options) -> Void) -> Poller.Options {
    var options = Poller.Options()
    tweak(&options)
    return options
}

/// Dials `listener` (on `poller`), accepts, sends 256 KiB one way and checks they arrive.
private func expectTrafficFlows(_ poller: Poller) async throws {
    let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
    let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: poller)
    let sent = patterned(256 << 10)
    let writer = Task { try await pair.client.write(sent) }
    var received: [UInt8] = []
    try await readExactly(pair.server, sent.count, into: &received)
    try await writer.value
    #expect(received == sent)
    await pair.close()
}

extension PollerNetTests {
    @Suite("Feature probes: what the kernel lacks falls back to readiness, per operation")
    struct FeatureProbeTests {
        @Test(
            "A kernel without multishot recv (probe forced to EOPNOTSUPP): reads by recv(2), accepts still on the ring, and the reason says so",
            arguments: BackendKind.allCases)
        func withoutMultishotRecv(kind: BackendKind) async throws {
            try await withProbes(kind, options { $0.receive.probeVerdict = EOPNOTSUPP }) { poller in
                #expect(!poller.receivesThroughCompletions)
                if kind == .ioUring {
                    #expect(poller.backendReason.contains("completion receive unavailable: the kernel has no multishot recv"))
                    #expect(poller.acceptsThroughCompletions == (URingBackend.acceptProbe == 0))
                }
                try await expectTrafficFlows(poller)
            }
        }

        @Test(
            "A kernel without provided-buffer rings (probe forced to EINVAL): reads by recv(2), and the reason says so",
            arguments: BackendKind.allCases)
        func withoutBufferRings(kind: BackendKind) async throws {
            try await withProbes(kind, options { $0.receive.probeVerdict = EINVAL }) { poller in
                #expect(!poller.receivesThroughCompletions)
                if kind == .ioUring {
                    #expect(poller.backendReason.contains("the kernel has no provided-buffer rings"))
                }
                try await expectTrafficFlows(poller)
            }
        }

        @Test(
            "A kernel without multishot accept (probe forced to EINVAL): accepts by accept4(2), reads still on the ring, and the reason says so",
            arguments: BackendKind.allCases)
        func withoutMultishotAccept(kind: BackendKind) async throws {
            try await withProbes(kind, options { $0.accept.probeVerdict = EINVAL }) { poller in
                #expect(!poller.acceptsThroughCompletions)
                if kind == .ioUring {
                    #expect(poller.backendReason.contains("multishot accept unavailable: the kernel has no multishot accept"))
                    #expect(poller.receivesThroughCompletions == (URingBackend.receiveProbe == 0))
                }
                try await expectTrafficFlows(poller)
            }
        }
    }
}
