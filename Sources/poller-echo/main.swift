// poller-echo: the seeds' echo server made real, on PollerNet.
//
//   poller-echo [--host 127.0.0.1] [--port 0] [--backend epoll|io_uring|auto]
//               [--idle-timeout SECONDS] [--global-executor]
//
// One task per connection, echoing everything. With --idle-timeout, every read carries a
// read deadline of that many seconds and a connection idle that long is closed. Connection
// tasks run on the poller's own thread (its TaskExecutor) unless --global-executor is given.
// SIGINT/SIGTERM stop it cleanly: stop accepting, unblock and close every connection, print
// totals, exit 0. Port 0 picks a free port; the first line printed says which.
import Glibc
import Poller
import PollerNet
import Synchronization

struct Options {
    var host = "127.0.0.1"
    var port: UInt16 = 0
    var backend: BackendChoice = .auto
    var idleTimeout: Duration?
    var onPollerExecutor = true

    static func parse(_ arguments: [String]) -> Options {
        var options = Options()
        if let env = getenv(BackendChoice.environmentVariable),
           let choice = try? BackendChoice(parsing: String(cString: env))
        {
            options.backend = choice
        }
        var args = arguments.dropFirst()
        func value(_ flag: String) -> String {
            guard let v = args.popFirst() else { fail("\(flag) needs a value") }
            return v
        }
        while let arg = args.popFirst() {
            switch arg {
            case "--host": options.host = value(arg)
            case "--port":
                guard let p = UInt16(value(arg)) else { fail("--port needs a number 0...65535") }
                options.port = p
            case "--backend":
                do {
                    options.backend = try BackendChoice(parsing: value(arg))
                } catch {
                    fail("\(error)")
                }
            case "--idle-timeout":
                guard let s = Double(value(arg)), s > 0 else { fail("--idle-timeout needs seconds > 0") }
                options.idleTimeout = .nanoseconds(Int64(s * 1e9))
            case "--global-executor": options.onPollerExecutor = false
            case "-h", "--help":
                print("usage: poller-echo [--host H] [--port P] [--backend epoll|io_uring|auto] [--idle-timeout S] [--global-executor]")
                exit(0)
            default: fail("unknown argument \(arg)")
            }
        }
        return options
    }
}

func fail(_ message: String) -> Never {
    var text = "poller-echo: \(message)\n"
    _ = text.withUTF8 { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

/// The server's live connections and totals.
final class Server: Sendable {
    let listener: TCPListener
    let options: Options
    let poller: Poller
    private let connections = Mutex<[Int: Connection]>([:])
    private let nextID = Atomic<Int>(0)
    let accepted = Atomic<Int>(0)
    let bytesEchoed = Atomic<Int>(0)
    let idleClosed = Atomic<Int>(0)
    let stopping = Atomic<Bool>(false)

    init(listener: TCPListener, options: Options, poller: Poller) {
        self.listener = listener
        self.options = options
        self.poller = poller
    }

    var executor: (any TaskExecutor)? { options.onPollerExecutor ? poller.executor : nil }

    func acceptLoop() async {
        var backoff: Duration = .milliseconds(5)
        while !stopping.load(ordering: .relaxed) {
            let connection: Connection
            do {
                connection = try await listener.accept()
                backoff = .milliseconds(5)
            } catch .tooManyOpenFiles(let errno) {
                // Out of descriptors: the connection stays queued; back off as Go's http server does.
                log("accept: \(ErrnoText.name(errno)); retrying in \(backoff)")
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(1))
                continue
            } catch .closed {
                return
            } catch {
                if stopping.load(ordering: .relaxed) { return }
                log("accept: \(error)")
                continue
            }
            accepted.add(1, ordering: .relaxed)
            let id = nextID.add(1, ordering: .relaxed).newValue
            let registered = connections.withLockAnnotated { c -> Bool in
                guard !stopping.load(ordering: .relaxed) else { return false }
                c[id] = connection
                return true
            }
            guard registered else {
                try? await connection.close()
                return
            }
            Task(executorPreference: executor) {
                await self.serve(connection)
                _ = self.connections.withLockAnnotated { $0.removeValue(forKey: id) }
                try? await connection.close()
            }
        }
    }

    /// Echoes until end of file, an error, the idle timeout, or shutdown.
    func serve(_ connection: Connection) async {
        // Go's model: shutdown closes the connection (which wakes a blocked read or write with
        // .closed); nothing cancels this task, so its waits need no cancellation handler.
        connection.observesTaskCancellation = false
        var size = 512
        var buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            do {
                if let idle = options.idleTimeout { try connection.setReadDeadline(in: idle) }
                let n = try await connection.read(into: buffer)
                try await connection.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                bytesEchoed.add(n, ordering: .relaxed)
                if n == size && size < 65536 {
                    // A busy stream: grow the buffer once (idle and small-message connections keep 512 B).
                    buffer.deallocate()
                    size = 65536
                    buffer = .allocate(byteCount: size, alignment: 16)
                }
            } catch .timeout {
                idleClosed.add(1, ordering: .relaxed)
                return
            } catch {
                return  // end of file, reset, closed by shutdown: the connection is done
            }
        }
    }

    /// Stops accepting, unblocks and closes every connection, and waits (bounded) for their
    /// tasks to finish.
    func stop() async {
        stopping.store(true, ordering: .relaxed)
        try? await listener.close()
        let open = connections.withLockAnnotated { Array($0.values) }
        for connection in open { try? await connection.close() }
        let deadline = ContinuousClock.now + .seconds(5)
        while connections.withLockAnnotated({ !$0.isEmpty }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}

func log(_ line: String) {
    var text = "poller-echo: \(line)\n"
    _ = text.withUTF8 { write(2, $0.baseAddress, $0.count) }
}

enum ErrnoText {
    static func name(_ e: Int32) -> String {
        switch e {
        case EMFILE: "EMFILE"
        case ENFILE: "ENFILE"
        default: "errno \(e)"
        }
    }
}

nonisolated func run(_ options: Options) async -> Int32 {
    do {
        try TerminationSignal.install()
    } catch {
        fail("signal handlers: \(error)")
    }
    let poller: Poller
    do {
        poller = try Poller(backend: options.backend)
    } catch {
        fail("\(error)")
    }
    let listener: TCPListener
    do {
        listener = try TCPListener.listen(host: options.host, port: options.port, poller: poller)
    } catch {
        fail("listen on \(options.host):\(options.port): \(error)")
    }
    print("poller-echo: listening on \(listener.localAddress) (backend \(poller.backendKind): \(poller.backendReason))")
    fflush(nil)
    let server = Server(listener: listener, options: options, poller: poller)
    let acceptTask = Task(executorPreference: server.executor) { await server.acceptLoop() }

    do {
        try await TerminationSignal.wait(poller: poller)
    } catch {
        log("signal wait: \(error)")
    }
    log("stopping")
    await server.stop()
    await acceptTask.value
    // Every connection is closed and the signal pipe deregistered: nobody may still be parked.
    print("poller-echo: stopped; accepted \(server.accepted.load(ordering: .relaxed)) connections, "
        + "echoed \(server.bytesEchoed.load(ordering: .relaxed)) bytes, "
        + "closed \(server.idleClosed.load(ordering: .relaxed)) idle, "
        + "parked \(poller.parkedWaiterCount), registered \(poller.openDescriptorCount)")
    fflush(nil)
    poller.shutdown()
    return 0
}

exit(await run(Options.parse(CommandLine.arguments)))
