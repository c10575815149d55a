// What poller-echo and poller-http share: flag checks, logging, and the accept-error log
// (at most once a second; the back-off itself is PollerNet's, in `listener.serve`).
// An internal target of the package, not a product.
import Glibc
import Poller
import PollerNet
import Synchronization

/// The program's name as invoked (its last path component), the prefix of every log line.
public let programName: String = {
    guard let first = CommandLine.arguments.first, let name = first.split(separator: "/").last else {
        return "server"
    }
    return String(name)
}()

/// Writes "<program>: <line>" to stderr in one write(2).
public func log(_ line: String) {
    var text = "\(programName): \(line)\n"
    _ = text.withUTF8 { write(2, $0.baseAddress, $0.count) }
}

/// Logs `message` and exits with status 2 (bad usage).
public func fail(_ message: String) -> Never {
    log(message)
    exit(2)
}

/// The largest timeout accepted, in seconds (one day): anything longer is a typo or an attack
/// on the flag parser (Double accepts "inf" and "1e300", which overflow Duration).
public let maxTimeoutSeconds = 86_400.0

/// Seconds → a timeout: 0 is off (nil); otherwise finite, 0.001...86400, or exit 2 with a
/// message. Never traps: the range check comes before the conversion to integer nanoseconds.
public func parseTimeout(_ flag: String, _ text: String) -> Duration? {
    guard let seconds = Double(text), seconds.isFinite, seconds == 0 || (seconds >= 0.001 && seconds <= maxTimeoutSeconds)
    else {
        fail("\(flag) needs seconds: 0 (off) or 0.001...\(Int(maxTimeoutSeconds)), got '\(text)'")
    }
    if seconds == 0 { return nil }
    return .nanoseconds(Int64((seconds * 1e9).rounded()))
}

/// min(16384, RLIMIT_NOFILE - 64), at least 1: the cap keeps a margin of descriptors for the
/// server itself (poller, signal pipe, listener, runtime), so a full house sheds connections
/// instead of running accept into EMFILE.
public func defaultMaxConnections() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return 16384 }
    return max(1, min(16384, Int(clamping: limit.rlim_cur) - 64))
}

/// A log line that may repeat at a high rate (an accept error on every connection, shedding
/// under a flood): printed at most once per `interval`, with how many were suppressed since.
/// Used from one task only (the accept loop), so it needs no lock.
public struct RateLimitedLog {
    let interval: Duration
    private var last: ContinuousClock.Instant?
    private var suppressed = 0

    public init(interval: Duration = .seconds(1)) { self.interval = interval }

    public mutating func callAsFunction(_ line: @autoclosure () -> String) {
        let now = ContinuousClock.now
        if let last, now - last < interval {
            suppressed += 1
            return
        }
        log(suppressed > 0 ? "\(line()) (\(suppressed) more since the last report)" : line())
        last = now
        suppressed = 0
    }
}

/// The accept-error report both servers give `listener.serve` (PollerNet backs off and keeps
/// accepting on its own: `AcceptBackoff`): one line at most once a second, from any thread.
public final class AcceptErrorLog: Sendable {
    private let lines = Mutex(RateLimitedLog())

    public init() {}

    /// Logs `error`; `delay` is how long serve waits before accepting again (zero: only that
    /// connection's set-up failed, and it is closed).
    @Sendable public func report(_ error: NetError, retryingIn delay: Duration) {
        lines.withLockAnnotated { log in
            if delay == .zero {
                log("accept: setting up a connection: \(error)")
            } else {
                log("accept: \(error); retrying in \(delay)")
            }
        }
    }
}

// MARK: Flags

/// The command line, read one word at a time. A malformed value exits with status 2 and a
/// message naming the flag; nothing here traps.
public struct FlagReader {
    private var words: ArraySlice<String>

    public init(_ arguments: [String] = CommandLine.arguments) { words = arguments.dropFirst() }

    /// The next word, or nil at the end.
    public mutating func next() -> String? { words.popFirst() }

    /// The value following `flag`.
    public mutating func value(of flag: String) -> String {
        guard let value = words.popFirst() else { fail("\(flag) needs a value") }
        return value
    }

    /// A whole number in `range` following `flag`.
    public mutating func integer(of flag: String, in range: ClosedRange<Int>) -> Int {
        let text = value(of: flag)
        guard let n = Int(text), range.contains(n) else {
            fail("\(flag) needs a whole number \(range.lowerBound)...\(range.upperBound), got '\(text)'")
        }
        return n
    }

    /// For a word no server flag matched: `-h`/`--help` print `usage` and exit 0; anything
    /// else is refused with `usage` and exit 2.
    public func unknown(_ word: String, usage: String) -> Never {
        if word == "-h" || word == "--help" {
            print(usage)
            exit(0)
        }
        fail("unknown argument \(word)\n\(usage)")
    }
}

/// How a server with several pollers takes connections in.
public enum AcceptMode: String, Sendable {
    /// One listener; its accept loop hands connections to the group's pollers in turn.
    case shared
    /// One SO_REUSEPORT listener and accept loop per poller; the kernel spreads connections.
    case reusePort = "reuseport"
}

/// The flags both servers take, with their defaults: `--host`, `--port`, `--backend` (default
/// from `POLLER_BACKEND`, else auto), `--threads` (default: every CPU the process may run on),
/// `--accept`, `--idle-timeout`, `--write-timeout`, `--max-connections`.
public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    public var port: UInt16 = 0
    public var backend: BackendChoice
    /// The pollers (threads) to run; nil: one per CPU in the affinity mask.
    public var threads: Int?
    public var acceptMode = AcceptMode.shared
    /// nil: off. The read deadline while waiting for data.
    public var idleTimeout: Duration?
    /// nil: off. The deadline of each write.
    public var writeTimeout: Duration?
    /// Int.max: no cap.
    public var maxConnections = defaultMaxConnections()

    public init(idleTimeout: Duration?, writeTimeout: Duration?) {
        self.idleTimeout = idleTimeout
        self.writeTimeout = writeTimeout
        backend = .auto
        if let env = getenv(BackendChoice.environmentVariable),
            let choice = try? BackendChoice(parsing: String(cString: env))
        {
            backend = choice
        }
    }

    /// Reads `flag` (and its value) if it is one of these flags; false if it is not.
    public mutating func read(_ flag: String, from flags: inout FlagReader) -> Bool {
        switch flag {
        case "--host": host = flags.value(of: flag)
        case "--port": port = UInt16(flags.integer(of: flag, in: 0...65535))
        case "--backend":
            do {
                backend = try BackendChoice(parsing: flags.value(of: flag))
            } catch {
                fail("\(error)")
            }
        case "--threads":
            let n = flags.integer(of: flag, in: 0...4096)
            threads = n == 0 ? nil : n
        case "--accept":
            let value = flags.value(of: flag)
            guard let mode = AcceptMode(rawValue: value) else { fail("--accept takes shared or reuseport, not '\(value)'") }
            acceptMode = mode
        case "--idle-timeout": idleTimeout = parseTimeout(flag, flags.value(of: flag))
        case "--write-timeout": writeTimeout = parseTimeout(flag, flags.value(of: flag))
        case "--max-connections":
            let n = flags.integer(of: flag, in: 0...10_000_000)
            maxConnections = n == 0 ? .max : n
        default: return false
        }
        return true
    }
}

/// A server's pollers and listeners, made from its ``ServerOptions``.
public struct ServingGroup: Sendable {
    public let group: PollerGroup
    /// One listener (``AcceptMode/shared``: connections to the pollers in turn) or one per
    /// poller (``AcceptMode/reusePort``). Run each one's accept loop on its own poller's
    /// executor (`listener.netFD.poller.executor`).
    public let listeners: [TCPListener]
    public let acceptMode: AcceptMode

    /// Starts the group and listens as `options` say; exits with a message on failure.
    public init(_ options: ServerOptions) async {
        do {
            group = try PollerGroup(threads: options.threads, backend: options.backend)
        } catch {
            fail("\(error)")
        }
        acceptMode = options.acceptMode
        do {
            switch options.acceptMode {
            case .shared:
                listeners = [try TCPListener.listen(host: options.host, port: options.port, group: group)]
            case .reusePort:
                listeners = try await TCPListener.listenOnEveryPoller(host: options.host, port: options.port, group: group)
            }
        } catch {
            fail("listen on \(options.host):\(options.port): \(error)")
        }
    }

    /// "threads 2 (of 2 CPUs), accept shared, backend epoll (reason)": for the start-up line.
    public var summary: String {
        let asked = group.requestedThreads == group.count ? "" : ", \(group.requestedThreads) asked"
        return "threads \(group.count) (of \(PollerGroup.availableCPUs) CPUs\(asked)), accept \(acceptMode.rawValue), "
            + "backend \(group.backendKind): \(group.backendReason)"
    }
}

extension ServingGroup {
    /// Serves every listener with `handler` (PollerNet's `listener.serve`: each accept loop on
    /// its listener's poller, each handler on its connection's poller) until SIGINT or SIGTERM
    /// (`TerminationSignal.install()` first), then shuts down gracefully: stop accepting, let
    /// connections run on for `gracePeriod`, close the rest, return once every handler has.
    public func serveUntilTerminated(
        gracePeriod: Duration, handler: @escaping @Sendable (Connection) async -> Void
    ) async {
        let shutdown = ServingHandle()
        let acceptErrors = AcceptErrorLog()
        await withDiscardingTaskGroup { tasks in
            for listener in listeners {
                tasks.addTask(executorPreference: listener.netFD.poller.executor) {
                    await listener.serve(
                        gracePeriod: gracePeriod, shutdown: shutdown, onAcceptError: acceptErrors.report,
                        handler: handler)
                }
            }
            tasks.addTask {
                do {
                    try await TerminationSignal.wait(poller: group.pollers[0])
                } catch {
                    log("signal wait: \(error)")
                }
                log("stopping")
                shutdown.shutdown()
            }
        }
    }
}
