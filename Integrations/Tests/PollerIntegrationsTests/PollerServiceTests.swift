import Glibc
import Logging
import Poller
import PollerNet
import PollerServiceLifecycle
import ServiceLifecycle
import Synchronization
import Testing

/// A service group running one ``PollerService`` on `listener` with `handler`, in a task.
private func startGroup(
    _ listener: TCPListener, logger: Logger, gracePeriod: Duration = .seconds(5),
    handler: @escaping @Sendable (Connection, Logger) async -> Void
) -> (ServiceGroup, Task<Void, any Error>) {
    let service = PollerService(listeners: [listener], gracePeriod: gracePeriod, logger: logger, handler: handler)
    let group = ServiceGroup(services: [service], logger: logger)
    return (group, Task { try await group.run() })
}

@Suite("PollerService under swift-service-lifecycle")
struct PollerServiceTests {
    @Test(
        "a graceful shutdown stops accepting and lets the handler in flight finish before run returns",
        arguments: backends)
    func gracefulShutdownLetsHandlersFinish(backend: BackendChoice) async throws {
        try await withPoller(backend) { poller in
            let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
            let (logger, _) = RecordingLogHandler.logger()
            let started = Atomic<Bool>(false)
            let (group, running) = startGroup(listener, logger: logger) { connection, _ in
                started.store(true, ordering: .sequentiallyConsistent)
                // Echo one byte, sent only after the shutdown began.
                if let byte = try? await connection.read(maxBytes: 1) { try? await connection.write(byte) }
            }
            let client = try await Connection.dial(listener.localAddress, timeout: .seconds(5), poller: poller)
            #expect(await becomesTrue { started.load(ordering: .sequentiallyConsistent) }, "the handler never ran")
            await group.triggerGracefulShutdown()
            try await client.write([7])
            #expect(try await client.read(maxBytes: 1) == [7], "the handler in flight was cut short")
            try await client.close()
            try await running.value
            // The listener closed when shutdown began: new clients are refused.
            await #expect(throws: NetError.self) {
                _ = try await Connection.dial(listener.localAddress, timeout: .seconds(5), poller: poller)
            }
        }
    }

    @Test(
        "cancelling the service group's task ends handlers blocked in a read, and run returns",
        arguments: backends)
    func cancellationEndsBlockedHandlers(backend: BackendChoice) async throws {
        try await withPoller(backend) { poller in
            let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
            let (logger, _) = RecordingLogHandler.logger()
            let outcome = Mutex<NetError?>(nil)
            let (_, running) = startGroup(listener, logger: logger, gracePeriod: .seconds(3600)) { connection, _ in
                do {
                    _ = try await connection.read(maxBytes: 1)
                } catch {
                    outcome.withLock { $0 = error as? NetError }
                }
            }
            let client = try await Connection.dial(listener.localAddress, timeout: .seconds(5), poller: poller)
            defer { Task { try? await client.close() } }
            try await Task.sleep(for: .milliseconds(50))
            running.cancel()
            _ = await running.result
            #expect(outcome.withLock { $0 } == .cancelled)
        }
    }

    @Test("each handler gets the service's logger with its peer's address in the metadata", arguments: backends)
    func handlersGetPeerMetadata(backend: BackendChoice) async throws {
        try await withPoller(backend) { poller in
            let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
            let (logger, store) = RecordingLogHandler.logger()
            let (group, running) = startGroup(listener, logger: logger) { _, logger in logger.info("served") }
            let client = try await Connection.dial(listener.localAddress, timeout: .seconds(5), poller: poller)
            #expect(await becomesTrue { store.all.contains { $0.message == "served" } })
            let served = store.all.first { $0.message == "served" }
            #expect(served?.metadata["peer"]?.description == "\(client.localAddress)")
            try await client.close()
            await group.triggerGracefulShutdown()
            try await running.value
            let messages = store.all.map(\.message)
            #expect(messages.contains("listening") && messages.contains("shutting down") && messages.contains("stopped"))
        }
    }

    @Test("an accept error is logged as a warning with the back-off, and serving goes on", arguments: backends)
    func acceptErrorsAreWarnings(backend: BackendChoice) async throws {
        try await withPoller(backend) { poller in
            let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
            // A listening socket shut down for reading fails every accept4 with EINVAL.
            #expect(Glibc.shutdown(listener.netFD.fd, Int32(SHUT_RD)) == 0)
            let (logger, store) = RecordingLogHandler.logger()
            let (group, running) = startGroup(listener, logger: logger) { _, _ in }
            #expect(await becomesTrue { store.all.contains { $0.message == "accept failed" } })
            let warning = store.all.first { $0.message == "accept failed" }
            #expect(warning?.level == .warning)
            #expect(warning?.metadata["error"]?.description == "\(NetError.system(call: "accept4", errno: EINVAL))")
            #expect(warning?.metadata["retry_in"] != nil)
            await group.triggerGracefulShutdown()
            try await running.value
        }
    }
}
