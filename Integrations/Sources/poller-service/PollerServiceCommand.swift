import ArgumentParser
import Logging
import Poller
import PollerNet
import PollerServiceLifecycle
import ServiceLifecycle
import Synchronization

/// An echo service on PollerNet, run the way a Swift server runs: flags by
/// swift-argument-parser, logs through swift-log, start and stop by swift-service-lifecycle
/// (SIGTERM or SIGINT: stop accepting, let connections finish for the grace period, exit 0).
/// Deadlines and a connection cap are on by default: it is meant to be copied.
@main
struct PollerServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "poller-service",
        abstract: "An echo service on PollerNet under swift-service-lifecycle.")

    @Option(help: "The address to listen on.") var host = "127.0.0.1"
    @Option(help: "The port (0: any free port, printed in the log).") var port: UInt16 = 7008
    @Option(help: "Pollers, one thread each (0: one per CPU this process may run on).") var threads = 0
    @Option(help: "epoll, io_uring or auto.") var backend = "auto"
    @Option(help: "Seconds a connection may stay idle before it is closed.") var idleTimeout: Double = 60
    @Option(help: "Seconds a write may wait for a slow reader.") var writeTimeout: Double = 10
    @Option(help: "Connections served at once; more are closed on arrival.") var maxConnections = 10_000
    @Option(help: "Seconds connections may run on after a shutdown begins.") var gracePeriod: Double = 10
    @Option(help: "trace, debug, info, notice, warning, error or critical.") var logLevel = "info"

    func validate() throws {
        for (name, value) in [("--idle-timeout", idleTimeout), ("--write-timeout", writeTimeout), ("--grace-period", gracePeriod)]
        where !(value.isFinite && value > 0 && value <= 86_400) {
            throw ValidationError("\(name) must be a number of seconds in (0, 86400]")
        }
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
        guard threads >= 0 else { throw ValidationError("--threads must be 0 or more") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level: unknown level \(logLevel)") }
        guard (try? BackendChoice(parsing: backend)) != nil else { throw ValidationError("--backend: epoll, io_uring or auto") }
    }

    // README begin
    func run() async throws {
        var logger = Logger(label: "poller-service")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let group = try PollerGroup(threads: threads == 0 ? nil : threads, backend: try BackendChoice(parsing: backend))
        defer { group.shutdown() }
        logger.info("pollers", metadata: ["threads": "\(group.count)", "backend": "\(group.backendKind)"])
        let listener = try TCPListener.listen(host: host, port: port, group: group)
        let limits = EchoLimits(
            idle: .milliseconds(Int64(idleTimeout * 1000)), write: .milliseconds(Int64(writeTimeout * 1000)),
            maxConnections: maxConnections)
        let service = PollerService(listeners: [listener], gracePeriod: .milliseconds(Int64(gracePeriod * 1000)), logger: logger) {
            connection, logger in
            await echo(connection, limits: limits, logger: logger)
        }
        let services = ServiceGroup(services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await services.run()
    }
    // README end
}

/// The echo handler's limits, and the count of connections served.
final class EchoLimits: Sendable {
    let idle: Duration, write: Duration, maxConnections: Int
    let open = Atomic<Int>(0)

    init(idle: Duration, write: Duration, maxConnections: Int) {
        (self.idle, self.write, self.maxConnections) = (idle, write, maxConnections)
    }
}

/// Echoes until end of file, an idle timeout or an error, through one 16 KiB buffer.
func echo(_ connection: Connection, limits: EchoLimits, logger: Logger) async {
    defer { limits.open.subtract(1, ordering: .relaxed) }
    guard limits.open.add(1, ordering: .relaxed).newValue <= limits.maxConnections else {
        logger.warning("at the connection cap: closing", metadata: ["cap": "\(limits.maxConnections)"])
        return
    }
    logger.debug("connected")
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 << 10, alignment: 1)
    defer { buffer.deallocate() }
    do {
        while true {
            try connection.setReadDeadline(in: limits.idle)
            let n = try await connection.read(into: buffer)
            try connection.setWriteDeadline(in: limits.write)
            try await connection.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    } catch {
        logger.debug("closing", metadata: ["reason": "\(error)"])
    }
}
