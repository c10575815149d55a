// What poller-echo and poller-http share: flag checks, logging, and the accept-error policy
// (back off on the poller's own timers, log at most once a second, never stop accepting).
// An internal target of the package, not a product.
import Glibc
import Poller
import PollerNet

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

/// Backoff sleeps on the poller's own timers: a pipe that is never written, registered with the
/// poller and waited on with a read deadline. Not Task.sleep: Dispatch opens its timer
/// descriptors lazily (one per timer class) and traps when it cannot, which is exactly the
/// state (out of descriptors) in which accept needs to back off. One sleeper at a time.
public final class BackoffTimer: Sendable {
    private let readFD: Int32, writeFD: Int32
    private let descriptor: PollDescriptor

    public init(poller: Poller) throws(PollError) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw .registrationFailed(errno: errno) }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        (readFD, writeFD) = (fds[0], fds[1])
        do {
            descriptor = try poller.register(fds[0])
        } catch {
            Glibc.close(fds[0])
            Glibc.close(fds[1])
            throw error
        }
    }

    /// Returns after `duration`, or at once after `unblock()`.
    public func sleep(for duration: Duration) async {
        descriptor.setDeadline(in: duration, for: .read)
        try? await descriptor.wait(for: .read)  // .timeout (nothing ever makes it readable) or .closing
    }

    /// Wakes a sleeper and makes later sleeps return at once (shutdown).
    public func unblock() { descriptor.unblock() }

    /// Deregisters and closes the pipe; after `unblock()`, once no sleeper is left.
    public func close() {
        try? descriptor.close()
        Glibc.close(readFD)
        Glibc.close(writeFD)
    }
}

/// What an accept loop does with an error other than `.closed`. Invariant: nothing here ends
/// the loop, and nothing lets it spin: a failure of accept4 itself (out of descriptors or
/// memory, a firewall's EPERM, an EPROTO, anything new) may persist, so the loop backs off,
/// 5 ms doubling to 1 s (Go's servers do the same), and tries again; a public server must not
/// stop accepting while the process stays up.
public struct AcceptErrorPolicy {
    private var backoff: Duration = .zero
    private var errorLog = RateLimitedLog()

    public init() {}

    /// The next connection from `listener`, or nil once it is closed or `running` turns
    /// false. Every other error goes through ``failed(_:timer:)`` and accepting goes on.
    public mutating func accept(
        from listener: TCPListener, backingOffOn timer: BackoffTimer, while running: () -> Bool = { true }
    ) async -> Connection? {
        while running() {
            do {
                let connection = try await listener.accept()
                backoff = .zero
                return connection
            } catch .closed {
                return nil
            } catch {
                if !running() { return nil }
                await failed(error, timer: timer)
            }
        }
        return nil
    }

    /// Logs `error` (at most once a second) and, when accept4 itself failed, sleeps the
    /// current backoff on `timer`.
    mutating func failed(_ error: NetError, timer: BackoffTimer) async {
        guard Self.isAcceptFailure(error) else {
            // accept4 succeeded but setting up that one connection failed (it is closed): no
            // reason to slow down the next one.
            errorLog("accept: setting up a connection: \(error)")
            return
        }
        backoff = backoff == .zero ? .milliseconds(5) : min(backoff * 2, .seconds(1))
        errorLog("accept: \(error); retrying in \(backoff)")
        await timer.sleep(for: backoff)
    }

    /// Whether `error` came from accept4 itself (the listener's condition) rather than from
    /// setting up an accepted connection.
    static func isAcceptFailure(_ error: NetError) -> Bool {
        switch error {
        case .tooManyOpenFiles: true
        case .system(let call, _): call.hasPrefix("accept")
        case .connectionReset, .endOfFile: false  // the new peer went away during setup
        default: true  // timeout, cancelled, or anything new: treat it as the listener's
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

