import Glibc
import Poller
import Testing

// Issue 11, item 8: one hostile client could hold or starve poller-echo and poller-http. Each
// test starts the real server binary (built beside this test bundle by `swift build
// --build-tests`) on 127.0.0.1 with small deadlines, attacks it with a plain blocking Glibc
// socket client (every receive bounded by SO_RCVTIMEO, every wait by a deadline), and checks
// what the server does. Both backends.

extension PollerNetTests {
    @Suite("Regressions: hostile clients")
    struct HostileClientRegressions {
        // MARK: Read deadlines

        @Test("a slowloris client is disconnected by the read deadline", arguments: ServerKind.allCases, BackendKind.allCases)
        func slowloris(server kind: ServerKind, backend: BackendKind) throws {
            // poller-http: a request head dripped a byte every 50 ms is cut off by the
            // request's read deadline (set once, not pushed back by each byte) although the
            // idle timeout (30 s) is never reached between bytes. poller-echo: a connection
            // that sends nothing is closed by its read deadline.
            let server = try ServerProcess.start(
                kind, backend: backend,
                kind == .http ? ["--idle-timeout", "30", "--read-timeout", "0.5"] : ["--idle-timeout", "0.5"])
            defer { server.stop() }
            let client = try Client(port: server.port)
            defer { client.close() }
            let began = ContinuousClock.now
            var closed = false
            if kind == .http {
                let drip = Array("GET / HTTP/1.1\r\nX-Drip: ".utf8) + Array(repeating: UInt8(ascii: "a"), count: 200)
                for byte in drip {
                    guard client.sendAllowingClose([byte]) else {
                        closed = true
                        break
                    }
                    if client.peerClosed(waitingMs: 50) {
                        closed = true
                        break
                    }
                }
            } else {
                closed = client.peerClosed(waitingMs: 5000)
            }
            let elapsed = ContinuousClock.now - began
            #expect(closed, "the connection was still open after \(elapsed)")
            #expect(elapsed >= .milliseconds(400), "closed after \(elapsed), before the 0.5 s deadline")
            #expect(elapsed < .seconds(5))
        }

        @Test(
            "a finished request's read deadline does not close the connection while it waits for the next",
            arguments: BackendKind.allCases)
        func requestDeadlineEndsWithTheRequest(backend: BackendKind) throws {
            // With the idle timeout off, the per-request deadline of a request that arrived in
            // two reads must be cleared once it is answered, or it would close the idle
            // keep-alive connection 0.3 s later.
            let server = try ServerProcess.start(.http, backend: backend, ["--idle-timeout", "0", "--read-timeout", "0.3"])
            defer { server.stop() }
            let client = try Client(port: server.port)
            defer { client.close() }
            client.sendAllowingClose(Array("GET / HTTP/1.1\r\n".utf8))
            usleep(50_000)  // the head arrives in two reads: the request deadline is set
            client.sendAllowingClose(Array("\r\n".utf8))
            let reply = String(decoding: client.receive(count: 12, waitingMs: 2000), as: UTF8.self)
            #expect(reply == "HTTP/1.1 200")
            #expect(!client.peerClosed(waitingMs: 1000), "the idle connection was closed by a stale request deadline")
        }

        // MARK: Write deadlines

        @Test("a client that never reads is disconnected by the write deadline", arguments: ServerKind.allCases, BackendKind.allCases)
        func neverReads(server kind: ServerKind, backend: BackendKind) throws {
            // The read deadlines are long, so only the write deadline can end this connection:
            // the server is blocked writing to a peer whose receive buffer is full.
            let server = try ServerProcess.start(
                kind, backend: backend,
                kind == .http
                    ? ["--idle-timeout", "30", "--read-timeout", "30", "--write-timeout", "0.5"]
                    : ["--idle-timeout", "30", "--write-timeout", "0.5"])
            defer { server.stop() }
            let client = try Client(port: server.port, receiveBuffer: 4096)
            defer { client.close() }
            let unit = kind == .http ? Array("GET / HTTP/1.1\r\n\r\n".utf8) : Array(repeating: UInt8(ascii: "e"), count: 4096)
            let sent = client.sendUntilStalled(unit)
            #expect(sent > 0)
            let began = ContinuousClock.now
            let closed = client.peerClosed(waitingMs: 5000)
            #expect(closed, "the server still held the connection \(ContinuousClock.now - began) after the client stalled")
            if kind == .echo {
                let final = server.stop()
                #expect(final.stdout.contains("write timeouts 1"), "final line: \(final.stdout)")
            }
        }

        // MARK: HTTP parsing

        @Test("bare CRLFs are not answered as requests", arguments: BackendKind.allCases)
        func bareCRLFs(backend: BackendKind) throws {
            let server = try ServerProcess.start(.http, backend: backend, [])
            defer { server.stop() }
            let client = try Client(port: server.port)
            defer { client.close() }
            // 16 KiB of empty "requests": the old server queued ~320 KB of 200s for them.
            client.sendAllowingClose(Array(repeating: Array("\r\n\r\n".utf8), count: 4096).flatMap { $0 })
            let reply = String(decoding: client.readUntilClosed(), as: UTF8.self)
            #expect(reply.hasPrefix("HTTP/1.1 400 "), "reply: \(reply.prefix(200))")
            #expect(!reply.contains("200 OK"))
            #expect(reply.ranges(of: "HTTP/1.1 ").count == 1, "one reply only")

            // A malformed request line: 400 and close, too.
            let other = try Client(port: server.port)
            defer { other.close() }
            other.sendAllowingClose(Array("GET /a b c HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n".utf8))
            let second = String(decoding: other.readUntilClosed(), as: UTF8.self)
            #expect(second.hasPrefix("HTTP/1.1 400 ") && !second.contains("200 OK"), "reply: \(second)")
        }

        @Test("a body is not parsed as a request", arguments: BackendKind.allCases)
        func bodyIsNotARequest(backend: BackendKind) throws {
            let server = try ServerProcess.start(.http, backend: backend, ["--max-body-bytes", "1000"])
            defer { server.stop() }
            // The body holds two requests' bytes: they must be discarded, not answered.
            let body = "GET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n"
            let client = try Client(port: server.port)
            defer { client.close() }
            client.sendAllowingClose(
                Array(
                    ("POST / HTTP/1.1\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body
                        + "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").utf8))
            let reply = String(decoding: client.readUntilClosed(), as: UTF8.self)
            #expect(reply.ranges(of: "HTTP/1.1 200 OK").count == 2, "reply: \(reply)")
            #expect(!reply.contains("HTTP/1.1 4"))

            // The same body arriving a few bytes per read after its head is skipped too.
            let slow = try Client(port: server.port)
            defer { slow.close() }
            slow.sendAllowingClose(Array("POST / HTTP/1.1\r\nContent-Length: \(body.utf8.count)\r\n\r\n".utf8))
            for chunk in chunks(Array(body.utf8), size: 5) {
                slow.sendAllowingClose(chunk)
                usleep(2000)
            }
            slow.sendAllowingClose(Array("GET / HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))
            let slowReply = String(decoding: slow.readUntilClosed(), as: UTF8.self)
            #expect(slowReply.ranges(of: "HTTP/1.1 200 OK").count == 2, "reply: \(slowReply)")

            // Bodies it will not read are refused and the connection closed.
            for (head, status) in [
                ("POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", "413"),
                ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501"),
                ("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "400"),
            ] {
                let refused = try Client(port: server.port)
                defer { refused.close() }
                refused.sendAllowingClose(Array((head + "GET / HTTP/1.1\r\n\r\n").utf8))
                let answer = String(decoding: refused.readUntilClosed(), as: UTF8.self)
                #expect(answer.hasPrefix("HTTP/1.1 \(status) ") && !answer.contains("200 OK"), "\(head): \(answer)")
            }
        }

        @Test("a one-byte drip of a long head costs linear work", arguments: BackendKind.allCases)
        func oneByteDrip(backend: BackendKind) throws {
            // Pinned by what the server does at the head cap: it must answer 431 once exactly
            // --max-header-bytes are buffered without an end of head (the scan covers only new
            // bytes, resuming where the last stopped; a cap bounds the total), and close.
            let cap = 1024
            let server = try ServerProcess.start(.http, backend: backend, ["--max-header-bytes", "\(cap)"])
            defer { server.stop() }
            let client = try Client(port: server.port)
            defer { client.close() }
            let head = Array("GET / HTTP/1.1\r\nX-Long: ".utf8) + Array(repeating: UInt8(ascii: "a"), count: 2 * cap)
            var sent = 0
            var reply: [UInt8] = []
            for byte in head {
                guard client.sendAllowingClose([byte]) else { break }
                sent += 1
                // At the cap, give the server time to read what was sent (the machine may be busy):
                // checking without waiting raced the server and read on past 2 x cap.
                if sent >= cap && (client.peerClosed(waitingMs: sent == cap ? 2000 : 0) || client.hasData()) { break }
            }
            reply = client.readUntilClosed()
            let text = String(decoding: reply, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 431 "), "after \(sent) bytes: \(text)")
            #expect(sent >= cap && sent < 2 * cap, "answered after \(sent) bytes; cap \(cap)")

            // A head that does fit, dripped a byte per read, is answered.
            let ok = try Client(port: server.port)
            defer { ok.close() }
            for byte in Array("GET / HTTP/1.1\r\nX-A: b\r\nConnection: close\r\n\r\n".utf8) {
                ok.sendAllowingClose([byte])
                usleep(500)
            }
            let answer = String(decoding: ok.readUntilClosed(), as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 200 OK"), "reply: \(answer)")
        }

        // MARK: Connection cap

        @Test(
            "connections beyond the cap are shed and served again once below it",
            arguments: ServerKind.allCases, BackendKind.allCases)
        func connectionCap(server kind: ServerKind, backend: BackendKind) throws {
            let server = try ServerProcess.start(kind, backend: backend, ["--max-connections", "2"])
            defer { server.stop() }
            let first = try Client(port: server.port)
            defer { first.close() }
            let second = try Client(port: server.port)
            defer { second.close() }
            #expect(kind.isServed(first), "first connection not served")
            #expect(kind.isServed(second), "second connection not served")
            // The third is accepted and closed at once (poller-http first says 503).
            let third = try Client(port: server.port)
            defer { third.close() }
            #expect(!kind.isServed(third), "a third connection was served with a cap of 2")
            // Below the cap again: new connections are served (within 5 s).
            first.close()
            let served = try kind.servesAgain(port: server.port)
            #expect(served, "no connection served after one of the two closed")
            #expect(server.stderr().contains("at the connection cap (2)"), "stderr: \(server.stderr())")
        }

        // MARK: Accept errors

        @Test(
            "an accept error does not stop accepting and is not logged in a loop",
            arguments: ServerKind.allCases, BackendKind.allCases)
        func persistentAcceptError(server kind: ServerKind, backend: BackendKind) throws {
            // Injected from outside: the test takes a duplicate of the server's listening
            // socket (pidfd_getfd; the server is our child) and shuts it down, so every
            // accept4 fails with EINVAL — an error that is neither EMFILE nor transient. The
            // old poller-http stopped accepting for good; the old poller-echo logged it in a
            // tight loop. Then the test listens again on the same socket.
            let server = try ServerProcess.start(kind, backend: backend, [])
            defer { server.stop() }
            let listener = try server.duplicateListeningSocket()
            defer { Glibc.close(listener) }
            #expect(Glibc.shutdown(listener, Int32(SHUT_RD)) == 0, "shutdown: errno \(errno)")
            // The shutdown makes the listener readable (hung up): the server's parked accept
            // wakes, and accept4 fails with EINVAL for as long as the socket is not listening.
            usleep(1_500_000)
            let errorLines = server.stderr().split(separator: "\n").filter { $0.contains("accept") }
            #expect(!errorLines.isEmpty, "the accept error was not reported")
            #expect(errorLines.count <= 3, "\(errorLines.count) accept error lines in 1.5 s: \(errorLines.prefix(5))")
            // Listening again (the kernel may pick a new port): the server serves it.
            #expect(Glibc.listen(listener, 128) == 0, "listen: errno \(errno)")
            let port = try localPort(listener)
            let limit = ContinuousClock.now + .seconds(5)
            var served = false
            while !served && ContinuousClock.now < limit {
                let client = try Client(port: port)
                served = kind.isServed(client)
                client.close()
                if !served { usleep(50_000) }
            }
            #expect(served, "the server stopped accepting after an accept error")
            #expect(server.isRunning, "the server exited")
        }

        @Test(
            "running out of descriptors neither stops accepting nor floods the log",
            arguments: ServerKind.allCases, BackendKind.allCases)
        func outOfDescriptors(server kind: ServerKind, backend: BackendKind) throws {
            let server = try ServerProcess.start(kind, backend: backend, [])
            defer { server.stop() }
            let saved = try server.setDescriptorLimit(server.openDescriptorCount())
            let waiting: Client
            do {
                waiting = try Client(port: server.port)  // accept4 fails with EMFILE on it
            } catch {
                throw TestFailure("\(error); server running: \(server.isRunning); stderr: \(server.stderr())")
            }
            defer { waiting.close() }
            usleep(1_000_000)
            _ = try server.setDescriptorLimit(saved)
            let lines = server.stderr().split(separator: "\n").filter { $0.contains("accept") }
            #expect(lines.count <= 2, "\(lines.count) accept error lines in 1 s: \(lines.prefix(5))")
            let served: Bool
            do {
                served = try kind.servesAgain(port: server.port)
            } catch {
                throw TestFailure("\(error); server running: \(server.isRunning); stderr: \(server.stderr())")
            }
            #expect(served, "not serving once descriptors were available again")
        }

        // MARK: Flags

        @Test("--idle-timeout inf is rejected with exit code 2", arguments: ServerKind.allCases)
        func invalidFlags(server kind: ServerKind) throws {
            var cases: [[String]] = []
            let timeouts = kind == .http ? ["--idle-timeout", "--read-timeout", "--write-timeout"] : ["--idle-timeout", "--write-timeout"]
            for flag in timeouts {
                for value in ["inf", "1e10", "nan", "-1", "abc", "1e-9"] { cases.append([flag, value]) }
            }
            cases += [["--max-connections", "-1"], ["--max-connections", "x"], ["--idle-timeout"], ["--no-such-flag"]]
            if kind == .http { cases += [["--max-header-bytes", "10"], ["--max-body-bytes", "-1"]] }
            for arguments in cases {
                let (status, stderr) = try ServerProcess.runToExit(kind, arguments)
                #expect(status == .exited(2), "\(arguments): \(status); stderr: \(stderr)")
                #expect(stderr.contains(arguments[0]), "\(arguments): stderr does not name the flag: \(stderr)")
            }
            // The documented "off" value is accepted.
            let server = try ServerProcess.start(kind, backend: .epoll, ["--idle-timeout", "0", "--write-timeout", "0"])
            #expect(server.stop().status == .exited(0))
        }
    }
}

// MARK: - The servers

enum ServerKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case echo = "poller-echo"
    case http = "poller-http"

    var testDescription: String { rawValue }

    /// Whether the server serves `client`: an echoed byte, or a 200 to a request.
    func isServed(_ client: Client) -> Bool {
        switch self {
        case .echo:
            guard client.sendAllowingClose([0x2A]) else { return false }
            return client.receive(count: 1, waitingMs: 2000) == [0x2A]
        case .http:
            let request = Array("GET / HTTP/1.1\r\n\r\n".utf8)
            guard client.sendAllowingClose(request) else { return false }
            let reply = client.receive(count: 12, waitingMs: 2000)
            return String(decoding: reply, as: UTF8.self) == "HTTP/1.1 200"
        }
    }

    /// Whether a new connection to `port` is served within `limit`, trying every 50 ms.
    func servesAgain(port: UInt16, within limit: Duration = .seconds(5)) throws -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            let client = try Client(port: port)
            defer { client.close() }
            if isServed(client) { return true }
            usleep(50_000)
        }
        return false
    }
}

enum ExitStatus: Equatable, CustomStringConvertible {
    case exited(Int32)
    case signalled(Int32)
    case running

    var description: String {
        switch self {
        case .exited(let code): "exit code \(code)"
        case .signalled(let signal): "killed by signal \(signal)"
        case .running: "still running"
        }
    }
}

/// A server binary started by a test: its pid, port and output files. Stopped (SIGTERM, then
/// SIGKILL after 5 s) by `stop()`, which every test defers.
final class ServerProcess {
    let pid: pid_t
    let port: UInt16
    let outPath: String, errPath: String
    private var finished: (status: ExitStatus, stdout: String)?

    private init(pid: pid_t, port: UInt16, outPath: String, errPath: String) {
        self.pid = pid
        self.port = port
        self.outPath = outPath
        self.errPath = errPath
    }

    /// The directory holding the products: the test bundle's own (`swift build --build-tests`
    /// puts every product beside it).
    static func binary(_ kind: ServerKind) throws -> String { try binary(named: kind.rawValue) }

    /// The product `name` beside the test bundle.
    static func binary(named name: String) throws -> String {
        var candidates: [String] = []
        var path = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &path, path.count - 1)
        if n > 0 { candidates.append(String(decoding: path[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
        candidates.append(CommandLine.arguments[0])
        for exe in candidates {
            // The bundle may be a directory (….xctest/…) or the test executable itself.
            var dir = exe
            while let slash = dir.lastIndex(of: "/") {
                dir = String(dir[..<slash])
                let candidate = dir + "/" + name
                if access(candidate, X_OK) == 0 { return candidate }
                if dir.hasSuffix("/.build") || dir.isEmpty { break }
            }
        }
        throw TestFailure(
            "\(name) not found beside the test bundle (\(candidates)); "
                + "build every product first: swift build --build-tests")
    }

    /// Starts `kind` on 127.0.0.1:0 with `backend` and `arguments`; waits (≤ 10 s) for its
    /// "listening on 127.0.0.1:PORT" line. Skips the test when io_uring cannot run.
    static func start(_ kind: ServerKind, backend: BackendKind, _ arguments: [String]) throws -> ServerProcess {
        if backend == .ioUring, let reason = ioUringUnavailableReason {
            try Test.cancel("io_uring unavailable: \(reason)")
        }
        let name = backend == .epoll ? "epoll" : "io_uring"
        let (pid, outPath, errPath) = try spawn(kind, ["--host", "127.0.0.1", "--port", "0", "--backend", name] + arguments)
        let limit = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < limit {
            let out = readFile(outPath)
            if let range = out.firstRange(of: "listening on 127.0.0.1:") {
                let digits = out[range.upperBound...].prefix { $0.isNumber }
                if let port = UInt16(digits), port != 0 {
                    return ServerProcess(pid: pid, port: port, outPath: outPath, errPath: errPath)
                }
            }
            if case .exited = reap(pid, waitingMs: 0) { break }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        _ = reap(pid, waitingMs: 5000)
        throw TestFailure("\(kind.rawValue) did not start: \(readFile(outPath)) \(readFile(errPath))")
    }

    /// Runs `kind` with `arguments` to its exit (≤ 5 s, else killed): its status and stderr.
    static func runToExit(_ kind: ServerKind, _ arguments: [String]) throws -> (ExitStatus, String) {
        let (pid, outPath, errPath) = try spawn(kind, ["--port", "0"] + arguments)
        var status = reap(pid, waitingMs: 5000)
        if status == .running {
            kill(pid, SIGKILL)
            _ = reap(pid, waitingMs: 5000)
            status = .running
        }
        let stderr = readFile(errPath)
        unlink(outPath)
        unlink(errPath)
        return (status, stderr)
    }

    /// Runs the product `name` with `arguments` to its exit (≤ `waitingMs`, else killed): its
    /// status, stdout and stderr.
    static func runToExit(named name: String, _ arguments: [String], waitingMs: Int) throws -> (ExitStatus, String, String) {
        let (pid, outPath, errPath) = try spawn(named: name, arguments)
        let status = reap(pid, waitingMs: waitingMs)
        if status == .running {
            kill(pid, SIGKILL)
            _ = reap(pid, waitingMs: 5000)
        }
        let result = (status, readFile(outPath), readFile(errPath))
        unlink(outPath)
        unlink(errPath)
        return result
    }

    private static func spawn(_ kind: ServerKind, _ arguments: [String]) throws -> (pid_t, String, String) {
        try spawn(named: kind.rawValue, arguments)
    }

    /// Starts the product `name` with `arguments`: its pid and the files its stdout and stderr go to.
    static func spawn(named name: String, _ arguments: [String]) throws -> (pid_t, String, String) {
        let path = try binary(named: name)
        let tag = "/tmp/poller-hostile-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let outPath = tag + ".out"
        let errPath = tag + ".err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard rc == 0 else { throw TestFailure("posix_spawn \(path): errno \(rc)") }
        return (pid, outPath, errPath)
    }

    /// Waits up to `waitingMs` for the process to exit.
    static func reap(_ pid: pid_t, waitingMs: Int) -> ExitStatus {
        let limit = ContinuousClock.now + .milliseconds(waitingMs)
        while true {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (macros are not imported).
                if status & 0x7F == 0 { return .exited((status >> 8) & 0xFF) }
                return .signalled(status & 0x7F)
            }
            if r < 0 { return .exited(-1) }
            if ContinuousClock.now >= limit { return .running }
            usleep(5000)
        }
    }

    var isRunning: Bool { finished == nil && kill(pid, 0) == 0 }

    func stderr() -> String { readFile(errPath) }

    /// SIGTERM, then SIGKILL after 5 s; the exit status and final stdout. Idempotent.
    @discardableResult
    func stop() -> (status: ExitStatus, stdout: String) {
        if let finished { return finished }
        kill(pid, SIGTERM)
        var status = Self.reap(pid, waitingMs: 5000)
        if status == .running {
            kill(pid, SIGKILL)
            _ = Self.reap(pid, waitingMs: 5000)
            status = .signalled(SIGKILL)
        }
        let result = (status, readFile(outPath))
        finished = result
        unlink(outPath)
        unlink(errPath)
        return result
    }

    /// The number of descriptors the server has open.
    func openDescriptorCount() -> Int {
        guard let dir = opendir("/proc/\(pid)/fd") else { return 0 }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            if entry.pointee.d_name.0 != CChar(UInt8(ascii: ".")) { count += 1 }
        }
        return count
    }

    /// Sets the server's soft RLIMIT_NOFILE (prlimit on the child); returns the previous one.
    func setDescriptorLimit(_ soft: Int) throws -> Int {
        typealias PrlimitFn = @convention(c) (pid_t, Int32, UnsafePointer<rlimit>?, UnsafeMutablePointer<rlimit>?) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prlimit") else {
            throw TestFailure("prlimit not found")
        }
        let prlimitFn = unsafeBitCast(symbol, to: PrlimitFn.self)
        var old = rlimit()
        guard prlimitFn(pid, Int32(RLIMIT_NOFILE.rawValue), nil, &old) == 0 else { throw TestFailure("prlimit: errno \(errno)") }
        var new = old
        new.rlim_cur = rlim_t(soft)
        guard prlimitFn(pid, Int32(RLIMIT_NOFILE.rawValue), &new, nil) == 0 else { throw TestFailure("prlimit: errno \(errno)") }
        return Int(old.rlim_cur)
    }

    /// A duplicate of the server's listening socket in this process (pidfd_getfd: allowed
    /// for a child). Skips the test where the kernel or its policy forbids it.
    func duplicateListeningSocket() throws -> Int32 {
        typealias PidfdOpen = @convention(c) (pid_t, UInt32) -> Int32
        typealias PidfdGetfd = @convention(c) (Int32, Int32, UInt32) -> Int32
        guard let openSymbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pidfd_open"),
            let getfdSymbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pidfd_getfd")
        else {
            try Test.cancel("pidfd_open/pidfd_getfd not in this C library")
        }
        let pidfd = unsafeBitCast(openSymbol, to: PidfdOpen.self)(pid, 0)
        guard pidfd >= 0 else { try Test.cancel("pidfd_open: errno \(errno)") }
        defer { Glibc.close(pidfd) }
        let getfd = unsafeBitCast(getfdSymbol, to: PidfdGetfd.self)
        for target in Int32(3)..<Int32(64) {
            let fd = getfd(pidfd, target, 0)
            if fd < 0 {
                if errno == EPERM || errno == ENOSYS { try Test.cancel("pidfd_getfd: errno \(errno)") }
                continue
            }
            var listening: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            if getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0, listening == 1,
                (try? localPort(fd)) == port
            {
                return fd
            }
            Glibc.close(fd)
        }
        throw TestFailure("no listening socket on port \(port) among the server's descriptors")
    }
}

// MARK: - A blocking test client

/// A blocking TCP client on 127.0.0.1 (close-on-exec, so spawned servers never inherit it);
/// every receive is bounded by SO_RCVTIMEO and every send by SO_SNDTIMEO.
final class Client {
    private(set) var fd: Int32

    init(port: UInt16, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        if var size = receiveBuffer {
            // Before connect, so the window the server sees is small from the start.
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        setTimeouts(milliseconds: 2000)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw TestFailure("connect to 127.0.0.1:\(port): errno \(e)")
        }
    }

    func setTimeouts(milliseconds ms: Int) {
        var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Sends all of `bytes`; false if the peer has closed (EPIPE, ECONNRESET) or a send timed out.
    @discardableResult
    func sendAllowingClose(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }

    /// Sends `unit` over and over without reading until the send has made no progress for
    /// 300 ms (the server's and our buffers are full) or 64 MiB went out; the bytes sent.
    func sendUntilStalled(_ unit: [UInt8]) -> Int {
        var total = 0
        var lastProgress = ContinuousClock.now
        while ContinuousClock.now - lastProgress < .milliseconds(300) && total < 64 << 20 {
            let n = unit.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 {
                total += n
                lastProgress = ContinuousClock.now
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 50)
            } else {
                break  // the peer closed
            }
        }
        return total
    }

    /// Whether the peer has closed (FIN or RST), waiting up to `waitingMs`; reads nothing.
    func peerClosed(waitingMs: Int) -> Bool {
        let limit = ContinuousClock.now + .milliseconds(waitingMs)
        while true {
            let pollReadHangup: Int16 = 0x2000  // POLLRDHUP
            var p = pollfd(fd: fd, events: pollReadHangup, revents: 0)
            let remaining = max(
                0,
                Int(
                    (limit - ContinuousClock.now).components.seconds * 1000
                        + (limit - ContinuousClock.now).components.attoseconds / 1_000_000_000_000_000))
            let r = poll(&p, 1, Int32(min(remaining, 1000)))
            if r > 0 && p.revents & Int16(0x2000 | POLLHUP | POLLERR) != 0 { return true }
            if ContinuousClock.now >= limit { return false }
        }
    }

    /// Whether bytes are waiting to be read.
    func hasData() -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) > 0 && p.revents & Int16(POLLIN) != 0
    }

    /// Up to `count` bytes, waiting up to `waitingMs` in total; fewer on close or timeout.
    func receive(count: Int, waitingMs: Int) -> [UInt8] {
        var result: [UInt8] = []
        let limit = ContinuousClock.now + .milliseconds(waitingMs)
        var buffer = [UInt8](repeating: 0, count: count)
        while result.count < count && ContinuousClock.now < limit {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, count - result.count, 0) }
            if n > 0 {
                result += buffer[0..<n]
            } else if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                break
            }
        }
        return result
    }

    /// Everything until the peer closes (end of file or reset), at most 5 s and 4 MiB.
    func readUntilClosed() -> [UInt8] {
        var result: [UInt8] = []
        let limit = ContinuousClock.now + .seconds(5)
        var buffer = [UInt8](repeating: 0, count: 65536)
        while ContinuousClock.now < limit && result.count < 4 << 20 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                result += buffer[0..<n]
            } else if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                return result
            }
        }
        Issue.record("the server did not close the connection within 5 s")
        return result
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The local port of a bound socket.
func localPort(_ fd: Int32) throws -> UInt16 {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    guard rc == 0 else { throw TestFailure("getsockname: errno \(errno)") }
    return UInt16(bigEndian: address.sin_port)
}

func readFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { Glibc.close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

func chunks(_ bytes: [UInt8], size: Int) -> [[UInt8]] {
    stride(from: 0, to: bytes.count, by: size).map { Array(bytes[$0..<min($0 + size, bytes.count)]) }
}
