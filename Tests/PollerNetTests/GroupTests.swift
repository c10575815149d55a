import CPoller
import Glibc
import PollerNet
import Synchronization
import Testing

@testable import Poller

/// Where a connection's serving task runs, relative to the poller that owns the connection.
enum ServingPlacement: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// On the owning poller's executor: no hop.
    case ownPoller = "on its own poller"
    /// On the other member's executor: every wake-up hops threads.
    case otherPoller = "on the other poller"
    /// On Swift's global executor.
    case globalExecutor = "on the global executor"

    var testDescription: String { rawValue }

    func executor(for connection: Connection, in group: PollerGroup) -> (any TaskExecutor)? {
        switch self {
        case .ownPoller: connection.executor
        case .otherPoller: group.pollers.first { $0 !== connection.poller }!.executor
        case .globalExecutor: nil
        }
    }
}

extension PollerNetTests {
    @Suite("Connections across a poller group")
    struct Groups {
        @Test(
            "A listener with a group hands accepted connections to its pollers in turn, and each is served on its own poller's thread",
            arguments: BackendKind.allCases)
        func acceptedConnectionsSpreadAndStay(kind: BackendKind) async throws {
            try await withNetGroup(kind) { group in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, group: group)
                #expect(listener.group === group)
                var clients: [Connection] = []
                var served: [Task<Bool, any Error>] = []
                var owners: [ObjectIdentifier] = []
                for _ in 0..<4 {
                    let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: group.pollers[0])
                    clients.append(pair.client)
                    owners.append(ObjectIdentifier(pair.server.poller))
                    let server = pair.server
                    served.append(
                        Task(executorPreference: server.executor) {
                            // Read, wake-up and resumption: every step on the owner's thread.
                            let before = cpoller_thread_id() == server.poller.threadID
                            let got = try await server.read(maxBytes: 1)
                            let after = cpoller_thread_id() == server.poller.threadID
                            try await server.write(got)
                            try await server.close()
                            return before && after
                        })
                }
                // In turn: 0, 1, 0, 1 (whichever member comes first).
                #expect(owners[0] != owners[1] && owners[0] == owners[2] && owners[1] == owners[3])
                for client in clients { try await client.write([7]) }
                for task in served { #expect(try await task.value, "a connection was served off its poller's thread") }
                for client in clients {
                    #expect(try await client.read(maxBytes: 1) == [7])
                    try await client.close()
                }
                try await listener.close()
            }
        }

        @Test(
            "listenOnEveryPoller makes one SO_REUSEPORT listener per poller on one port, and each keeps its connections on its poller",
            arguments: BackendKind.allCases)
        func listenerPerPoller(kind: BackendKind) async throws {
            try await withNetGroup(kind) { group in
                let listeners = try await TCPListener.listenOnEveryPoller(host: "127.0.0.1", port: 0, group: group)
                #expect(listeners.count == group.count)
                let port = try #require(listeners[0].localAddress.port)
                #expect(listeners.allSatisfy { $0.localAddress.port == port })
                #expect(zip(listeners, group.pollers).allSatisfy { $0.netFD.poller === $1 })
                // Each listener accepts on its own poller's executor until it is closed.
                let acceptLoops = listeners.map { listener in
                    Task(executorPreference: listener.netFD.poller.executor) { () -> [Bool] in
                        var placed: [Bool] = []
                        while let connection = try? await listener.accept() {
                            placed.append(
                                connection.poller === listener.netFD.poller
                                    && cpoller_thread_id() == listener.netFD.poller.threadID)
                            try? await connection.close()
                        }
                        return placed
                    }
                }
                // The kernel hashes the peer's port: 16 clients all on one listener is a 2^-15 chance.
                var clients: [Connection] = []
                for _ in 0..<16 {
                    clients.append(try await Connection.dial(host: "127.0.0.1", port: port, poller: group.pollers[0]))
                }
                for client in clients {
                    try await expectPeerClosed(client, kind: kind)
                    try await client.close()
                }
                for listener in listeners { try await listener.close() }
                var perListener: [Int] = []
                for loop in acceptLoops {
                    let placed = await loop.value
                    #expect(placed.allSatisfy { $0 }, "a connection left its listener's poller")
                    perListener.append(placed.count)
                }
                #expect(perListener.reduce(0, +) == 16)
                #expect(perListener.allSatisfy { $0 > 0 }, "the kernel spread nothing: \(perListener)")
            }
        }

        @Test(
            "A connection of a group echoes, times out, and is unblocked by close, wherever its task runs",
            arguments: BackendKind.allCases, ServingPlacement.allCases)
        func servedAnywhere(kind: BackendKind, placement: ServingPlacement) async throws {
            try await withNetGroup(kind) { group in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, group: group)
                let pair = try await TCPPair.connect(listener, from: "127.0.0.1", poller: group.pollers[0])
                let server = pair.server
                let executor = placement.executor(for: server, in: group)
                // Echo.
                let echo = Task(executorPreference: executor) { () async throws -> Void in
                    let got = try await server.read(maxBytes: 64)
                    try await server.write(got)
                }
                try await pair.client.write(Array("across".utf8))
                try await echo.value
                #expect(try await pair.client.read(maxBytes: 64) == Array("across".utf8))
                // A read deadline fires.
                let timedOut = await Task(executorPreference: executor) { () async -> NetError? in
                    try? server.setReadDeadline(in: .milliseconds(20))
                    return await netError { () async throws(NetError) in try await server.read(maxBytes: 1) }
                }.value
                #expect(timedOut == .timeout)
                try server.setReadDeadline(nil)
                // Close unblocks a blocked read.
                let blocked = Task(executorPreference: executor) { () async -> NetError? in
                    await netError { () async throws(NetError) in try await server.read(maxBytes: 1) }
                }
                try await waitUntilParked(server.poller)
                try await server.close()
                #expect(await blocked.value == .closed)
                try await expectPeerClosed(pair.client, kind: kind)
                try await pair.client.close()
                try await listener.close()
            }
        }
    }
}
