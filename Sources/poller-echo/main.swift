// poller-echo: the seeds' echo server made real, on PollerNet.
//
//   poller-echo [--host 127.0.0.1] [--port 0] [--backend epoll|io_uring|auto]
//               [--threads N] [--accept shared|reuseport]
//               [--idle-timeout SECONDS] [--write-timeout SECONDS]
//               [--max-connections N] [--shutdown-grace SECONDS] [--global-executor]
//
// One task per connection, echoing everything, run by PollerNet's `listener.serve` (a task
// group; each handler on its connection's poller). --threads N pollers (default: one per CPU the
// process may run on), each connection on one of them; its task runs on that poller's own
// thread (its TaskExecutor) unless --global-executor is given. --accept shared (default): one
// listener hands connections to the pollers in turn; reuseport: one SO_REUSEPORT listener per
// poller (BENCHMARKS.md compares them). SIGINT/SIGTERM stop it
// cleanly through serve's graceful shutdown: stop accepting, let connections run on for
// --shutdown-grace seconds (default 0), unblock and close every one left, print totals, exit 0.
// Port 0 picks a free port; the first line printed says which.
//
// Defaults a public server needs (each can be changed; 0 turns a timeout or the cap off):
//   --idle-timeout 60     every read carries a read deadline this far ahead: a connection
//                         that sends nothing for that long is closed.
//   --write-timeout 30    every echo write must finish within this: a peer that sends but
//                         never reads cannot pin its connection (and its buffer) forever.
//   --max-connections N   at most N open connections (default min(16384, RLIMIT_NOFILE - 64));
//                         beyond it new connections are accepted and closed at once (shed),
//                         so the listen queue keeps draining and the server keeps its
//                         descriptors; shedding is logged at most once a second.
// Accept errors (out of descriptors or memory, aborted handshakes, firewall refusals, anything
// else) never stop the server: it backs off (5 ms doubling to 1 s) and retries, logging at most
// once a second; accepting ends only when the listener is closed at shutdown.
import Glibc
import Poller
import PollerNet
import ServerSupport
import Synchronization

let usageText = """
    usage: poller-echo [--host H] [--port P] [--backend epoll|io_uring|auto] [--threads N]
                       [--accept shared|reuseport] [--idle-timeout S] [--write-timeout S]
                       [--max-connections N] [--shutdown-grace S] [--global-executor]
      --threads N           pollers, one thread each (default and 0: one per CPU this process
                            may run on; more is clamped to that)
      --accept MODE         shared: one listener hands connections to the pollers in turn
                            (default); reuseport: one SO_REUSEPORT listener per poller
      --idle-timeout S      close a connection that sends nothing for S seconds (default 60; 0 = off)
      --write-timeout S     close a connection whose echo cannot be written within S seconds
                            (a peer that does not read; default 30; 0 = off)
      --max-connections N   shed (accept and close) connections beyond N open ones
                            (default min(16384, RLIMIT_NOFILE - 64); 0 = no cap)
      --shutdown-grace S    on SIGINT/SIGTERM, let connections run on for S seconds before
                            closing them (default 0)
    """

/// The shared server flags (`options.host`, `options.idleTimeout`, ...) and echo's own.
@dynamicMemberLookup
struct Options: Sendable {
    var server = ServerOptions(idleTimeout: .seconds(60), writeTimeout: .seconds(30))
    var onPollerExecutor = true
    /// How long connections may run on after SIGINT/SIGTERM before they are closed.
    var shutdownGrace: Duration = .zero

    subscript<T>(dynamicMember path: WritableKeyPath<ServerOptions, T>) -> T {
        get { server[keyPath: path] }
        set { server[keyPath: path] = newValue }
    }

    static func parse(_ arguments: [String]) -> Options {
        var options = Options()
        var flags = FlagReader(arguments)
        while let flag = flags.next() {
            if options.server.read(flag, from: &flags) { continue }
            switch flag {
            case "--global-executor": options.onPollerExecutor = false
            case "--shutdown-grace": options.shutdownGrace = parseTimeout(flag, flags.value(of: flag)) ?? .zero
            default: flags.unknown(flag, usage: usageText)
            }
        }
        return options
    }
}

/// The server's totals and its per-connection work, run by `listener.serve`.
final class Server: Sendable {
    let options: Options
    /// Connections being served (shed ones excluded), against `--max-connections`.
    private let open = Atomic<Int>(0)
    let accepted = Atomic<Int>(0)
    let shed = Atomic<Int>(0)
    let bytesEchoed = Atomic<Int>(0)
    let idleClosed = Atomic<Int>(0)
    let writeTimedOut = Atomic<Int>(0)
    private let shedLog = Mutex(RateLimitedLog())

    init(options: Options) {
        self.options = options
    }

    /// The handler `serve` runs for each connection (on the connection's poller's thread):
    /// sheds it over the cap, else echoes on that thread, or on the global executor with
    /// --global-executor. `serve` closes the connection when this returns.
    @Sendable func handle(_ connection: Connection) async {
        accepted.add(1, ordering: .relaxed)
        // Reserve a place first, so that loops on several pollers cannot overshoot the cap.
        if open.add(1, ordering: .relaxed).newValue > options.maxConnections {
            open.subtract(1, ordering: .relaxed)
            // Over the cap: shed. Accepting and closing keeps the listen queue moving (clients
            // get an immediate end of file rather than a hung handshake) and costs no memory
            // beyond the moment.
            shed.add(1, ordering: .relaxed)
            shedLog.withLockAnnotated { $0("at the connection cap (\(options.maxConnections)): shedding new connections") }
            return
        }
        if options.onPollerExecutor {
            await echo(connection)
        } else {
            await withTaskExecutorPreference(globalConcurrentExecutor) { await echo(connection) }
        }
        open.subtract(1, ordering: .relaxed)
    }

    /// Echoes until end of file, an error, the idle or write timeout, or shutdown.
    func echo(_ connection: Connection) async {
        // Go's model: shutdown closes the connection (which wakes a blocked read or write with
        // .closed); nothing cancels this task, so its waits need no cancellation handler.
        connection.observesTaskCancellation = false
        let idleTimeout = options.idleTimeout
        let writeTimeout = options.writeTimeout
        var size = 512
        var buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n: Int
            do {
                // Moving a pending deadline later costs no heap operation (the timer re-arms
                // when it fires), so one deadline per read is cheap.
                if let idleTimeout { try connection.setReadDeadline(in: idleTimeout) }
                n = try await connection.read(into: buffer)
            } catch .timeout {
                idleClosed.add(1, ordering: .relaxed)
                return
            } catch {
                return  // end of file, reset, closed by shutdown: the connection is done
            }
            do {
                // The write deadline bounds how long a peer that does not read can hold this
                // task and its buffer. Set per write (moved later: cheap), so only a write that
                // blocks for the whole timeout fails.
                if let writeTimeout { try connection.setWriteDeadline(in: writeTimeout) }
                try await connection.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            } catch .timeout {
                writeTimedOut.add(1, ordering: .relaxed)
                return
            } catch {
                return
            }
            bytesEchoed.add(n, ordering: .relaxed)
            if n == size && size < 65536 {
                // A busy stream: grow the buffer once (idle and small-message connections keep 512 B).
                buffer.deallocate()
                size = 65536
                buffer = .allocate(byteCount: size, alignment: 16)
            }
        }
    }
}

nonisolated func run(_ options: Options) async -> Int32 {
    do {
        try TerminationSignal.install()
    } catch {
        fail("signal handlers: \(error)")
    }
    let serving = await ServingGroup(options.server)
    let group = serving.group
    print("poller-echo: listening on \(serving.listeners[0].localAddress) (\(serving.summary))")
    fflush(nil)
    let server = Server(options: options)
    // SIGINT/SIGTERM: the graceful shutdown. Every serve stops accepting, gives its
    // connections the grace period (echo connections do not end on their own, so the default
    // is none), closes them (a blocked read or write wakes with .closed) and returns once
    // every handler has. Accept errors never end a serve: it backs off on the poller's timers.
    await serving.serveUntilTerminated(gracePeriod: options.shutdownGrace, handler: server.handle)
    // Every connection is closed and the signal pipe deregistered: nobody may still be parked.
    print(
        "poller-echo: stopped; accepted \(server.accepted.load(ordering: .relaxed)) connections, "
            + "echoed \(server.bytesEchoed.load(ordering: .relaxed)) bytes, "
            + "closed \(server.idleClosed.load(ordering: .relaxed)) idle, "
            + "parked \(group.parkedWaiterCount), registered \(group.openDescriptorCount), "
            + "write timeouts \(server.writeTimedOut.load(ordering: .relaxed)), "
            + "shed \(server.shed.load(ordering: .relaxed))")
    fflush(nil)
    group.shutdown()
    return 0
}

exit(await run(Options.parse(CommandLine.arguments)))
