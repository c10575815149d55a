import CPoller
import Glibc
import PollerNet
import Testing
@testable import Poller

extension PollerNetTests {
    @Suite("Faults")
    struct Faults {
        @Test("accept out of descriptors reports EMFILE, and serves every queued connection once descriptors free up",
              arguments: BackendKind.allCases)
        func acceptUnderEMFILE(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
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
    }
}
