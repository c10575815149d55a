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

/// A feature an older kernel lacks, with the probe's answer there.
enum MissingFeature: String, CaseIterable, CustomStringConvertible, Sendable {
    case multishotRecv = "multishot recv (probe forced to EOPNOTSUPP)"
    case bufferRings = "provided-buffer rings (probe forced to EINVAL)"
    case multishotAccept = "multishot accept (probe forced to EINVAL)"

    var description: String { rawValue }

    var options: Poller.Options {
        var options = Poller.Options()
        switch self {
        case .multishotRecv: options.receive.probeVerdict = EOPNOTSUPP
        case .bufferRings: options.receive.probeVerdict = EINVAL
        case .multishotAccept: options.accept.probeVerdict = EINVAL
        }
        return options
    }

    /// What `backendReason` says on io_uring.
    var reason: String {
        switch self {
        case .multishotRecv: "completion receive unavailable: the kernel has no multishot recv"
        case .bufferRings: "completion receive unavailable: the kernel has no provided-buffer rings"
        case .multishotAccept: "multishot accept unavailable: the kernel has no multishot accept"
        }
    }
}

extension PollerNetTests {
    @Suite("Feature probes: what the kernel lacks falls back to readiness, per operation")
    struct FeatureProbeTests {
        @Test(
            "A kernel without a feature: that operation alone falls back to its system call, the reason says so, and traffic flows",
            arguments: BackendKind.allCases, MissingFeature.allCases)
        func withoutFeature(kind: BackendKind, missing: MissingFeature) async throws {
            try await withProbes(kind, missing.options) { poller in
                if missing == .multishotAccept {
                    #expect(!poller.acceptsThroughCompletions)
                    #expect(poller.receivesThroughCompletions == (kind == .ioUring && URingBackend.receiveProbe == 0))
                } else {
                    #expect(!poller.receivesThroughCompletions)
                    #expect(poller.acceptsThroughCompletions == (kind == .ioUring && URingBackend.acceptProbe == 0))
                }
                if kind == .ioUring { #expect(poller.backendReason.contains(missing.reason), "\(poller.backendReason)") }
                try await expectTrafficFlows(poller)
            }
        }

        @Test(
            "A malformed POLLER_URING_RECV_BUFFERS is ignored for the default ring, and the reason says so",
            arguments: ["64", "64x", "100x4096", "64x100", "65536x4096", "0x4096", "x", "64x16384x2"])
        func malformedRingGeometry(value: String) async throws {
            let settings = URingBackend.ReceiveSettings.fromEnvironment {
                $0 == URingBackend.ReceiveSettings.geometryVariable ? value : nil
            }
            #expect(settings.ignoredGeometry == value)
            #expect(settings.bufferCount == ReceiveBufferRing.defaultCount && settings.bufferSize == ReceiveBufferRing.defaultSize)
            var options = Poller.Options()
            options.receive = settings
            try await withProbes(.ioUring, options) { poller in
                if poller.receivesThroughCompletions {
                    #expect(poller.backendReason.contains("POLLER_URING_RECV_BUFFERS=\(value) ignored"), "\(poller.backendReason)")
                }
            }
        }

        @Test("A well-formed POLLER_URING_RECV_BUFFERS sets the ring's geometry")
        func ringGeometryFromEnvironment() {
            let settings = URingBackend.ReceiveSettings.fromEnvironment {
                $0 == URingBackend.ReceiveSettings.geometryVariable ? "128X4096" : nil
            }
            #expect(settings.ignoredGeometry == nil)
            #expect(settings.bufferCount == 128 && settings.bufferSize == 4096)
        }
    }
}
