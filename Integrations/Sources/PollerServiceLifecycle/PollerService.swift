import Logging
import Poller
import PollerNet
import ServiceLifecycle

/// A PollerNet server as a swift-service-lifecycle `Service`: run it in a `ServiceGroup` and
/// the group's graceful shutdown (SIGTERM, SIGINT, another service ending) becomes PollerNet's
/// (``PollerNet/ServingHandle/shutdown()``: stop accepting, let handlers run for the grace
/// period, close what is left), and the group's cancellation its forced shutdown.
///
/// ```swift
/// let listener = try TCPListener.listen(host: "127.0.0.1", port: 8080, group: PollerGroup.shared())
/// let server = PollerService(listeners: [listener], logger: logger) { connection, logger in
///     logger.debug("connected")
///     while let bytes = try? await connection.read(maxBytes: 4096) { try? await connection.write(bytes) }
/// }
/// let group = ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
/// try await group.run()
/// ```
///
/// Logging goes through the swift-log `Logger` it is given: each handler receives that logger
/// with the connection's `peer` in its metadata; accept errors (out of descriptors, say) are
/// logged at `warning` with the back-off before the next accept, one line per error.
public struct PollerService: Service {
    /// The listeners served, each on its own poller's executor.
    public let listeners: [any Listener]
    /// How long handlers may run after a graceful shutdown begins before their connections
    /// are closed.
    public let gracePeriod: Duration
    /// The logger handed to handlers (with `peer` metadata) and used for accept errors.
    public let logger: Logger
    private let handler: @Sendable (Connection, Logger) async -> Void

    /// - Parameters:
    ///   - listeners: the listeners to serve (one for most servers; one per poller with
    ///     `TCPListener.listenOnEveryPoller`). They are closed when ``run()`` returns.
    ///   - gracePeriod: see ``gracePeriod``. Default 30 s.
    ///   - logger: see ``logger``.
    ///   - handler: serves one connection; the connection is closed when it returns.
    public init(
        listeners: [any Listener], gracePeriod: Duration = .seconds(30), logger: Logger,
        handler: @escaping @Sendable (Connection, Logger) async -> Void
    ) {
        self.listeners = listeners
        self.gracePeriod = gracePeriod
        self.logger = logger
        self.handler = handler
    }

    /// Serves until the service group shuts down gracefully (returns once every handler has
    /// returned) or cancels the task (handlers' blocked reads and writes fail with
    /// `.cancelled`). Accept errors never end it.
    public func run() async throws {
        let shutdown = ServingHandle()
        let (logger, handler, gracePeriod) = (self.logger, self.handler, self.gracePeriod)
        for listener in listeners {
            logger.info("listening", metadata: ["address": "\(listener.localAddress)"])
        }
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { tasks in
                for listener in listeners {
                    tasks.addTask(executorPreference: listener.netFD.poller.executor) {
                        await listener.serve(
                            gracePeriod: gracePeriod, shutdown: shutdown,
                            onAcceptError: { error, delay in
                                logger.warning(
                                    "accept failed",
                                    metadata: [
                                        "error": "\(error)", "retry_in": "\(delay)",
                                    ])
                            }
                        ) { connection in
                            var connectionLogger = logger
                            connectionLogger[metadataKey: "peer"] = "\(connection.remoteAddress)"
                            await handler(connection, connectionLogger)
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            logger.info("shutting down", metadata: ["grace_period": "\(gracePeriod)"])
            shutdown.shutdown()
        }
        logger.info("stopped")
    }
}
