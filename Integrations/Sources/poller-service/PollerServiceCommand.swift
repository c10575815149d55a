import ArgumentParser
import Logging
import Poller
import PollerNet
import PollerServiceLifecycle
import ServiceLifecycle
import Synchronization

/// A line-based key-value service on PollerNet, written the way a Swift server is: flags by
/// swift-argument-parser, logs through swift-log, start and stop by swift-service-lifecycle
/// (SIGTERM or SIGINT: stop accepting, let connections finish for the grace period, close
/// the rest, exit 0). Lines are read with PollerNet's `BufferedReader`; deadlines, a line
/// limit, a store limit and a connection cap are on by default: it is meant to be copied.
@main
struct PollerServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "poller-service",
        abstract: "A line-based key-value service on PollerNet under swift-service-lifecycle.",
        discussion: """
            One request per line (LF, or CR LF), one reply line per request; the store is shared \
            by every connection and lives as long as the process.
              SET key value    -> OK               (value: the rest of the line; may hold spaces)
              GET key          -> VALUE value | NOT_FOUND
              DEL key          -> DELETED | NOT_FOUND
              QUIT             -> the connection is closed
              anything else    -> ERROR <reason>
            A line longer than --max-line is answered "ERROR line too long" and the connection \
            closed; a SET of a new key when --max-keys are stored is answered "ERROR store full". \
            Try it: poller-service --port 7008, then nc 127.0.0.1 7008.
            """)

    @Option(help: "The address to listen on.") var host = "127.0.0.1"
    @Option(help: "The port (0: any free port, printed in the log).") var port: UInt16 = 7008
    @Option(help: "Pollers, one thread each (0: one per CPU this process may run on).") var threads = 0
    @Option(help: "epoll, io_uring or auto.") var backend = "auto"
    @Option(help: "Seconds a connection may stay idle before it is closed.") var idleTimeout: Double = 60
    @Option(help: "Seconds a write may wait for a slow reader.") var writeTimeout: Double = 10
    @Option(help: "Connections served at once; more are closed on arrival.") var maxConnections = 10_000
    @Option(help: "Seconds connections may run on after a shutdown begins.") var gracePeriod: Double = 10
    @Option(help: "trace, debug, info, notice, warning, error or critical.") var logLevel = "info"
    @Option(help: "The longest request line in bytes, newline included (16...1048576).") var maxLine = 4096
    @Option(help: "The most keys stored at once.") var maxKeys = 100_000

    func validate() throws {
        for (name, value) in [("--idle-timeout", idleTimeout), ("--write-timeout", writeTimeout), ("--grace-period", gracePeriod)]
        where !(value.isFinite && value > 0 && value <= 86_400) {
            throw ValidationError("\(name) must be a number of seconds in (0, 86400]")
        }
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
        guard threads >= 0 else { throw ValidationError("--threads must be 0 or more") }
        guard (16...(1 << 20)).contains(maxLine) else { throw ValidationError("--max-line must be in 16...1048576") }
        guard maxKeys > 0 else { throw ValidationError("--max-keys must be positive") }
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
        let store = KeyValueStore(maxKeys: maxKeys)
        let limits = ConnectionLimits(
            idle: .milliseconds(Int64(idleTimeout * 1000)), write: .milliseconds(Int64(writeTimeout * 1000)),
            maxLine: maxLine, maxConnections: maxConnections)
        let service = PollerService(listeners: [listener], gracePeriod: .milliseconds(Int64(gracePeriod * 1000)), logger: logger) {
            connection, logger in
            await serveKeyValue(connection, store: store, limits: limits, logger: logger)
        }
        let services = ServiceGroup(services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await services.run()
    }
    // README end
}

// README begin
/// Serves one connection: a request line in, a reply line out, until QUIT, end of file, the
/// idle timeout, an over-long line or an error. The connection is closed when it returns.
func serveKeyValue(_ connection: Connection, store: KeyValueStore, limits: ConnectionLimits, logger: Logger) async {
    guard let admitted = limits.admit() else {
        logger.warning("at the connection cap: closing", metadata: ["cap": "\(limits.maxConnections)"])
        return
    }
    defer { admitted.release() }
    let reader = BufferedReader(connection, capacity: limits.maxLine)
    do throws(NetError) {
        while true {
            try connection.setReadDeadline(in: limits.idle)
            let line = try await reader.readSlice(through: UInt8(ascii: "\n"), maxLength: limits.maxLine)
            guard let reply = store.respond(to: line) else { return }  // QUIT
            try connection.setWriteDeadline(in: limits.write)
            try await connection.write(reply.utf8)
        }
    } catch .delimiterNotFound {
        logger.info("line too long: closing", metadata: ["max_line": "\(limits.maxLine)"])
        await refuse(connection, with: "ERROR line too long\n", limits: limits)
    } catch {
        logger.debug("closing", metadata: ["reason": "\(error)"])
    }
}
// README end

/// Writes a last reply, half-closes, and reads (and drops) what the client still sends for
/// at most a second, so that the reply is not lost to the reset a close with unread input
/// sends; a client that keeps sending is closed after that second.
func refuse(_ connection: Connection, with reply: String, limits: ConnectionLimits) async {
    do {
        try connection.setWriteDeadline(in: limits.write)
        try await connection.write(reply.utf8)
        try connection.closeWrite()
        try connection.setReadDeadline(in: min(limits.idle, .seconds(1)))
        let sink = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
        defer { sink.deallocate() }
        while true { _ = try await connection.read(into: sink) }
    } catch {}
}

/// The per-connection limits, and the count of connections served.
final class ConnectionLimits: Sendable {
    let idle: Duration, write: Duration, maxLine: Int, maxConnections: Int
    private let open = Atomic<Int>(0)

    init(idle: Duration, write: Duration, maxLine: Int, maxConnections: Int) {
        (self.idle, self.write, self.maxLine, self.maxConnections) = (idle, write, maxLine, maxConnections)
    }

    /// A slot for one more connection, or nil at the cap.
    func admit() -> Admitted? {
        guard open.add(1, ordering: .relaxed).newValue <= maxConnections else {
            open.subtract(1, ordering: .relaxed)
            return nil
        }
        return Admitted(limits: self)
    }

    /// One connection's slot; ``release()`` gives it back.
    struct Admitted {
        let limits: ConnectionLimits
        func release() { limits.open.subtract(1, ordering: .relaxed) }
    }
}

/// The key-value store every connection shares, behind a `Mutex`, with its size cap.
final class KeyValueStore: Sendable {
    let maxKeys: Int
    private let entries = Mutex<[String: String]>([:])

    init(maxKeys: Int) { self.maxKeys = maxKeys }

    /// The reply to one request line (its newline, and a CR before it, ignored); nil for QUIT.
    func respond(to line: UnsafeRawBufferPointer) -> String? {
        var text = Substring(decoding: line, as: UTF8.self)
        while let last = text.last, last == "\n" || last == "\r" || last == "\r\n" { text.removeLast() }
        let (command, arguments) = Self.split(text)
        switch command {
        case "SET":
            let (key, value) = Self.split(arguments)
            guard !key.isEmpty, arguments.count > key.count else { return "ERROR usage: SET key value\n" }
            return set(String(key), String(value)) ? "OK\n" : "ERROR store full\n"
        case "GET":
            guard let key = Self.singleKey(arguments) else { return "ERROR usage: GET key\n" }
            return entries.withLock { $0[String(key)] }.map { "VALUE \($0)\n" } ?? "NOT_FOUND\n"
        case "DEL":
            guard let key = Self.singleKey(arguments) else { return "ERROR usage: DEL key\n" }
            return entries.withLock { $0.removeValue(forKey: String(key)) } == nil ? "NOT_FOUND\n" : "DELETED\n"
        case "QUIT" where arguments.isEmpty:
            return nil
        case "":
            return "ERROR empty line\n"
        default:
            return "ERROR unknown command\n"
        }
    }

    /// Stores `value` under `key`; false when `key` is new and the store is full.
    func set(_ key: String, _ value: String) -> Bool {
        entries.withLock { entries in
            guard entries[key] != nil || entries.count < maxKeys else { return false }
            entries[key] = value
            return true
        }
    }

    /// The text before the first space, and the text after it.
    private static func split(_ text: Substring) -> (Substring, Substring) {
        guard let space = text.firstIndex(of: " ") else { return (text, "") }
        return (text[..<space], text[text.index(after: space)...])
    }

    /// `arguments` when it is one key (not empty, no space).
    private static func singleKey(_ arguments: Substring) -> Substring? {
        arguments.isEmpty || arguments.contains(" ") ? nil : arguments
    }
}
