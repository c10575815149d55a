import CPoller
import Glibc
import PollerNet
import Testing

@testable import Poller

extension PollerNetTests {
    @Suite("Faults")
    struct Faults {
        @Test(
            "accept out of descriptors reports EMFILE, and serves every queued connection once descriptors free up",
            arguments: BackendKind.allCases)
        func acceptUnderEMFILE(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                // No headroom: this pins the bare EMFILE path, where the connection stays queued
                // (the headroom's shedding is pinned in DescriptorExhaustionRegressions).
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller, descriptorHeadroom: 0)
                let port = listener.localAddress.port!
                // Eight clients connect before the limit drops: the kernel completes their
                // handshakes into the listen queue, so they wait there for accept.
                var clients: [Connection] = []
                for _ in 0..<8 { clients.append(try await Connection.dial(host: "127.0.0.1", port: port, poller: poller)) }

                var limit = rlimit()
                getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
                let saved = limit
                var open: [Connection] = []  // accepted, not yet served
                var acceptedTotal = 0
                var sawEMFILE = false
                // Room for three more descriptors only.
                limit.rlim_cur = rlim_t(openFDCount() + 3)
                #expect(setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0)
                var rounds = 0
                while acceptedTotal < 8 && rounds < 100 {
                    rounds += 1
                    let outcome: NetError?
                    do {
                        open.append(try await listener.accept())
                        acceptedTotal += 1
                        outcome = nil
                    } catch let error as NetError {
                        outcome = error
                    }
                    if let outcome {
                        #expect(outcome == .tooManyOpenFiles(errno: EMFILE))
                        sawEMFILE = true
                        // Back off the way a server does: finish the connections in hand,
                        // which frees their descriptors, then accept again.
                        for connection in open {
                            try await connection.write([7])
                            try await connection.close()
                        }
                        open.removeAll()
                    }
                }
                var restore = saved
                _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &restore)
                for connection in open {
                    try await connection.write([7])
                    try await connection.close()
                }
                #expect(sawEMFILE, "accept never reported EMFILE")
                #expect(acceptedTotal == 8, "a queued connection was lost: accepted \(acceptedTotal) of 8")
                // Every client was served exactly once.
                for client in clients {
                    try client.setReadDeadline(in: .seconds(5))
                    #expect(try await client.read(maxBytes: 8) == [7])
                    try await client.close()
                }
                try await listener.close()
            }
        }

        @Test("a peer's reset while a read is blocked wakes it with connectionReset", arguments: BackendKind.allCases)
        func resetMidRead(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let reader = try await startBlockedRead(client, poller)
                setLingerZero(pair.server.netFD.fd)
                try await pair.server.close()
                #expect(await reader.value == .connectionReset)
            }
        }

        @Test(
            "a peer's reset while a write is blocked wakes it with an error, and SIGPIPE never fires",
            arguments: BackendKind.allCases)
        func resetMidWrite(kind: BackendKind) async throws {
            // The default action of SIGPIPE kills the process: if any write raised it, this
            // test run would die here rather than fail politely.
            let previous = signal(SIGPIPE, SIG_DFL)
            defer { signal(SIGPIPE, previous) }
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let writer = Task {
                    await client.writeReportingProgress([UInt8](repeating: 1, count: 32 << 20))
                }
                try await waitUntilParked(poller)
                setLingerZero(pair.server.netFD.fd)
                try await pair.server.close()
                let result = await writer.value
                #expect(result.bytesWritten > 0 && result.bytesWritten < 32 << 20)
                #expect(result.error == .connectionReset || result.error == .system(call: "send", errno: EPIPE))
                // Later writes keep failing cleanly.
                for _ in 0..<3 {
                    let error = await netError { () async throws(NetError) in try await client.write([1]) }
                    #expect(error == .connectionReset || error == .system(call: "send", errno: EPIPE))
                }
            }
        }

        @Test("dialling a malformed address fails with invalidAddress and leaks nothing", arguments: BackendKind.allCases)
        func dialBadAddress(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                // (A name, "not-an-ip", is looked up: DialerTests.)
                for host in ["999.1.1.1", "1.2.3", "::g", "[::1", "a\0b"] {
                    let error = await netError { () async throws(NetError) in
                        try await Connection.dial(host: host, port: 80, poller: poller)
                    }
                    guard case .invalidAddress = error else {
                        Issue.record("dial(\"\(host)\") gave \(String(describing: error)), not invalidAddress")
                        continue
                    }
                }
                let unixError = await netError { () async throws(NetError) in
                    try await Connection.dial(unixPath: String(repeating: "x", count: 200), poller: poller)
                }
                #expect(unixError != nil)
            }
        }
    }
}
