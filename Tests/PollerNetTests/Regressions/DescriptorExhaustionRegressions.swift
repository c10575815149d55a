import Glibc
import Poller
import PollerNet
import Testing

// Issue 11, item 2: `poller-echo --backend io_uring` under `prlimit --nofile=64`, flooded with
// 150 connections, died with SIGILL. The trap is libdispatch's worker-pool monitor
// (`_dispatch_workq_monitor_pools`), which aborts the process when it cannot open
// `/proc/<tid>/stat`: any Swift process that sits at its descriptor limit while the global
// executor has work queued can die, whatever our code does with EMFILE. (Measured: epoll
// died the same way; the backends use the same descriptors per connection.) Listeners now
// keep `descriptorHeadroom` descriptors free below the limit and shed connections that
// would take them.

extension PollerNetTests {
    @Suite("Regressions: descriptor exhaustion")
    struct DescriptorExhaustionRegressions {
        /// The descriptor limit and flood of the issue.
        static let limit = 64
        static let floodSize = 150

        @Test(
            "poller-echo under a 64-descriptor limit died with SIGILL when flooded with 150 connections: it must stay up and echo again once the flood closes",
            arguments: BackendKind.allCases)
        func echoServerSurvivesDescriptorFlood(kind: BackendKind) async throws {
            guard let binary = EchoServerProcess.binaryPath() else {
                Issue.record(
                    "poller-echo is not built next to the test bundle (\(EchoServerProcess.buildDirectory)); run swift build --build-tests")
                return
            }
            try await withNetPoller(kind) { poller in
                let server = try EchoServerProcess.start(binary: binary, backend: kind, descriptorLimit: Self.limit)
                defer { server.kill() }
                let port = try server.port()

                // The flood: every client connects and sends a byte, as real clients do, and
                // holds its connection open.
                var flood: [Connection] = []
                for _ in 0..<Self.floodSize {
                    do throws(NetError) {
                        let client = try await Connection.dial(host: "127.0.0.1", port: port, poller: poller)
                        flood.append(client)
                        _ = await client.writeReportingProgress([0x78])
                    } catch {
                        Issue.record("dial \(flood.count + 1) of \(Self.floodSize) failed: \(error)")
                        break
                    }
                }
                // Hold the flood across several of libdispatch's one-second monitor ticks (the
                // crash needed one to find the server at its limit), watching the server.
                var peak = 0
                let holdUntil = ContinuousClock.now + .milliseconds(3500)
                while ContinuousClock.now < holdUntil && server.isRunning {
                    peak = max(peak, server.openDescriptorCount() ?? 0)
                    await sleep(ms: 20)
                }
                #expect(server.isRunning, "poller-echo died during the flood: \(server.exitDescription); stderr:\n\(server.stderrTail())")
                #expect(peak < Self.limit, "poller-echo sat at its descriptor limit (\(peak) open)")

                for client in flood { try? await client.close() }
                guard server.isRunning else { return }

                // Once the flood has closed, a fresh connection is echoed. The server may be in
                // its accept back-off (at most a second) and then drains the closed clients
                // still queued; the bound only catches a hang.
                var echoed = false
                let giveUp = ContinuousClock.now + .seconds(20)
                while !echoed && ContinuousClock.now < giveUp && server.isRunning {
                    echoed = await echoesHello(port: port, poller: poller)
                    if !echoed { await sleep(ms: 100) }  // shed, or still draining: try again
                }
                #expect(echoed, "no echo after the flood closed; stderr:\n\(server.stderrTail())")

                // And it still stops cleanly.
                let status = server.terminate(within: .seconds(10))
                #expect(
                    status == 0, "poller-echo did not stop cleanly on SIGTERM: \(server.exitDescription); stderr:\n\(server.stderrTail())")
            }
        }

        @Test(
            "a listener at its descriptor limit let accepted connections fill the table: it must shed them with tooManyOpenFiles, keep its headroom free, and serve again once descriptors free up",
            arguments: BackendKind.allCases)
        func listenerShedsToKeepHeadroom(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let headroom = listener.descriptorHeadroom
                #expect(headroom == TCPListener.defaultDescriptorHeadroom)
                let port = listener.localAddress.port!
                // Eight clients connect before the limit drops: their handshakes complete into
                // the listen queue.
                var clients: [Connection] = []
                for _ in 0..<8 { clients.append(try await Connection.dial(host: "127.0.0.1", port: port, poller: poller)) }

                // Lower the soft limit so that exactly three descriptor numbers stay free below
                // the headroom: the fourth lowest free number is where the headroom starts.
                var saved = rlimit()
                #expect(getrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved) == 0)
                let free = lowestFreeDescriptors(4, below: Int(saved.rlim_cur))
                try #require(free.count == 4)
                let limit = free[3] + headroom
                var lowered = saved
                lowered.rlim_cur = rlim_t(limit)
                try #require(setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered) == 0)
                // The limit is process-wide: restore it on every path (the suite is serialized).
                var restore = saved
                defer { _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &restore) }

                // Each accept either returns a connection below the headroom or sheds one.
                var accepted: [Connection] = []
                var shed = 0
                for _ in 0..<8 {
                    do throws(NetError) {
                        let connection = try await listener.accept()
                        #expect(Int(connection.netFD.fd) < limit - headroom, "a connection took a headroom descriptor")
                        accepted.append(connection)
                    } catch {
                        #expect(error == .tooManyOpenFiles(errno: EMFILE))
                        shed += 1
                    }
                }
                #expect(accepted.count >= 1 && accepted.count <= 3, "accepted \(accepted.count), expected the 3 free below the headroom")
                #expect(shed == 8 - accepted.count)
                // The headroom is really free: the rest of the process can open that many.
                var opened: [Int32] = []
                for _ in 0..<headroom {
                    let fd = fcntl(listener.netFD.fd, F_DUPFD_CLOEXEC, 0)
                    if fd < 0 { break }
                    opened.append(fd)
                }
                #expect(opened.count == headroom, "only \(opened.count) of the \(headroom) headroom descriptors could be opened")
                for fd in opened { Glibc.close(fd) }

                // Every accepted connection is served; every shed client sees its connection
                // closed (end of file, or a reset).
                for connection in accepted { try await connection.write([7]) }
                var served = 0
                var closed = 0
                for client in clients {
                    try client.setReadDeadline(in: .seconds(5))
                    do throws(NetError) {
                        if try await client.read(maxBytes: 1) == [7] { served += 1 }
                    } catch {
                        if error == .endOfFile || error == .connectionReset {
                            closed += 1
                        } else {
                            Issue.record("a client read gave \(error)")
                        }
                    }
                }
                #expect(served == accepted.count)
                #expect(closed == shed, "\(shed) connections shed but \(closed) clients saw them closed")
                for connection in accepted { try await connection.close() }
                for client in clients { try await client.close() }

                // Descriptors below the headroom have freed up: a new client is served again,
                // under the same lowered limit.
                let client = try await Connection.dial(host: "127.0.0.1", port: port, poller: poller)
                let fresh = try await listener.accept()
                #expect(Int(fresh.netFD.fd) < limit - headroom)
                try await client.write([42])
                #expect(try await fresh.read(maxBytes: 1) == [42])
                try await fresh.close()
                try await client.close()
                try await listener.close()
            }
        }
    }
}

/// Whether a fresh connection to `port` gets "hello" echoed back (within 3 s).
private func echoesHello(port: UInt16, poller: Poller) async -> Bool {
    let hello = Array("hello".utf8)
    let client: Connection
    do throws(NetError) {
        client = try await Connection.dial(host: "127.0.0.1", port: port, poller: poller)
    } catch {
        return false
    }
    var received: [UInt8] = []
    do throws(NetError) {
        try await client.write(hello)
        try client.setReadDeadline(in: .seconds(3))
        while received.count < hello.count { received += try await client.read(maxBytes: hello.count - received.count) }
    } catch {
        // Shed (end of file, reset) or no answer in time: not echoed.
    }
    try? await client.close()
    return received == hello
}

/// The `count` lowest descriptor numbers not in use, scanning up to `limit`.
func lowestFreeDescriptors(_ count: Int, below limit: Int) -> [Int] {
    var free: [Int] = []
    var fd: Int32 = 0
    while free.count < count && Int(fd) < limit {
        if fcntl(fd, F_GETFD) < 0 && errno == EBADF { free.append(Int(fd)) }
        fd += 1
    }
    return free
}

/// The real `poller-echo` binary, started under a descriptor limit.
private final class EchoServerProcess {
    let pid: pid_t
    private let stdoutFD: Int32
    private let stderrPath: String
    private var exitStatus: Int32?

    /// The folder of the running test bundle, where SwiftPM puts every product it built.
    static var buildDirectory: String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "." }
        let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // The bundle is <build>/PollerPackageTests.xctest (a file on Linux) or a directory
        // containing the executable; either way, walk up to the folder holding the bundle.
        var components = path.split(separator: "/", omittingEmptySubsequences: false)
        while let last = components.last, !last.hasSuffix(".xctest") && components.count > 1 { components.removeLast() }
        components.removeLast()
        return components.joined(separator: "/")
    }

    static func binaryPath() -> String? {
        let path = buildDirectory + "/poller-echo"
        return access(path, X_OK) == 0 ? path : nil
    }

    /// Starts `binary --backend <kind> --port 0` through bash, which closes every inherited
    /// descriptor above stderr (they would count against the child's limit) and sets the limit
    /// (`ulimit -n`, soft and hard) before exec.
    static func start(binary: String, backend: BackendKind, descriptorLimit: Int) throws -> EchoServerProcess {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw ProcessError("pipe: errno \(errno)") }
        // Close-on-exec for the test process's own ends; the child gets the write end as its
        // stdout through dup2, which clears the flag on the copy.
        for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let stderrPath = "/tmp/pollernet-\(getpid())-echo-\(UInt32.random(in: 0...UInt32.max)).stderr"
        let script = """
            for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
            ulimit -n \(descriptorLimit) || exit 97
            exec "$0" "$@"
            """
        let arguments = ["/bin/bash", "-c", script, binary, "--backend", backend == .epoll ? "epoll" : "io_uring", "--port", "0"]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let r = posix_spawn(&pid, "/bin/bash", &actions, nil, &argv, environ)
        Glibc.close(pipeFDs[1])
        guard r == 0 else {
            Glibc.close(pipeFDs[0])
            throw ProcessError("posix_spawn: errno \(r)")
        }
        return EchoServerProcess(pid: pid, stdoutFD: pipeFDs[0], stderrPath: stderrPath)
    }

    private init(pid: pid_t, stdoutFD: Int32, stderrPath: String) {
        self.pid = pid
        self.stdoutFD = stdoutFD
        self.stderrPath = stderrPath
    }

    deinit {
        kill()
        Glibc.close(stdoutFD)
        unlink(stderrPath)
    }

    /// The port from the first line the server prints (within 10 s: only a hang takes longer).
    func port() throws -> UInt16 {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.last != UInt8(ascii: "\n") {
            var p = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 10_000) == 1, read(stdoutFD, &byte, 1) == 1 else {
                throw ProcessError("poller-echo printed no address (\(exitDescription)); stderr:\n\(stderrTail())")
            }
            line.append(byte)
        }
        let text = String(decoding: line, as: UTF8.self)
        // "poller-echo: listening on 127.0.0.1:PORT (backend ...)"
        let words = text.split(separator: " ")
        guard let on = words.firstIndex(of: "on"), on + 1 < words.count,
            case let address = words[on + 1],
            let colon = address.lastIndex(of: ":"),
            let port = UInt16(address[address.index(after: colon)...])
        else { throw ProcessError("no port in \(text)") }
        return port
    }

    /// Whether the process is still running (reaps it once it has exited).
    var isRunning: Bool {
        if exitStatus != nil { return false }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid {
            exitStatus = status
            return false
        }
        return true
    }

    var exitDescription: String {
        guard let status = exitStatus else { return "running" }
        if status & 0x7f == 0 { return "exited with status \((status >> 8) & 0xff)" }
        return "killed by signal \(status & 0x7f)"
    }

    /// The number of descriptors the process has open, from /proc/PID/fd.
    func openDescriptorCount() -> Int? {
        guard let directory = opendir("/proc/\(pid)/fd") else { return nil }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            if UInt8(bitPattern: entry.pointee.d_name.0) != UInt8(ascii: ".") { count += 1 }
        }
        return count
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; the exit status, or nil if it was
    /// killed by a signal or did not stop in time (then it is killed).
    func terminate(within limit: Duration) -> Int32? {
        guard isRunning else { return nil }
        Glibc.kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + limit
        while isRunning && ContinuousClock.now < deadline { usleep(10_000) }
        guard let status = exitStatus else {
            kill()
            return nil
        }
        return status & 0x7f == 0 ? (status >> 8) & 0xff : nil
    }

    /// Kills and reaps the process if it is still running.
    func kill() {
        guard exitStatus == nil else { return }
        Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        if waitpid(pid, &status, 0) == pid { exitStatus = status }
    }

    /// The last lines the server wrote to stderr.
    func stderrTail() -> String {
        guard let file = fopen(stderrPath, "r") else { return "(no stderr)" }
        defer { fclose(file) }
        var lines: [String] = []
        var buffer = [CChar](repeating: 0, count: 1024)
        while fgets(&buffer, Int32(buffer.count), file) != nil {
            lines.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            if lines.count > 40 { lines.removeFirst() }
        }
        return lines.joined()
    }
}

private struct ProcessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
