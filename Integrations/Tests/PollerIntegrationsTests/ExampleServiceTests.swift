import Glibc
import Poller
import PollerNet
import Testing

/// The example service (a line-based key-value server), run as a process the way its README
/// section says, on both backends.
@Suite("poller-service, the example key-value service")
struct ExampleServiceTests {
    @Test("poller-service answers SET, GET and DEL from two connections sharing one store", arguments: backends)
    func sharedStoreRoundTrips(backend: BackendChoice) async throws {
        try await withService(backend) { service, poller in
            let (a, b) = (try await LineClient(service, poller), try await LineClient(service, poller))
            #expect(try await a.request("GET colour") == "NOT_FOUND")
            #expect(try await a.request("SET colour dark blue") == "OK")
            #expect(try await b.request("GET colour") == "VALUE dark blue")
            #expect(try await b.request("SET colour red\r") == "OK")  // CR LF lines too
            #expect(try await a.request("GET colour") == "VALUE red")
            #expect(try await b.request("DEL colour") == "DELETED")
            #expect(try await a.request("DEL colour") == "NOT_FOUND")
            #expect(try await a.request("GET colour") == "NOT_FOUND")
            try await a.close()
            try await b.close()
        }
    }

    @Test("poller-service answers an unknown or malformed request with ERROR and serves the next one", arguments: backends)
    func answersBadRequests(backend: BackendChoice) async throws {
        try await withService(backend) { service, poller in
            let client = try await LineClient(service, poller)
            #expect(try await client.request("PUT a b") == "ERROR unknown command")
            #expect(try await client.request("") == "ERROR empty line")
            #expect(try await client.request("SET a") == "ERROR usage: SET key value")
            #expect(try await client.request("GET a b") == "ERROR usage: GET key")
            #expect(try await client.request("DEL") == "ERROR usage: DEL key")
            #expect(try await client.request("SET a b") == "OK")
            try await client.close()
        }
    }

    @Test("poller-service closes the connection on QUIT", arguments: backends)
    func quitCloses(backend: BackendChoice) async throws {
        try await withService(backend) { service, poller in
            let client = try await LineClient(service, poller)
            try await client.connection.write(Array("QUIT\n".utf8))
            await #expect(throws: NetError.endOfFile) { _ = try await client.line() }
            try await client.close()
        }
    }

    @Test("poller-service answers a SET of a new key past --max-keys with ERROR store full", arguments: backends)
    func storeFull(backend: BackendChoice) async throws {
        try await withService(backend, ["--max-keys", "2"]) { service, poller in
            let client = try await LineClient(service, poller)
            #expect(try await client.request("SET a 1") == "OK")
            #expect(try await client.request("SET b 2") == "OK")
            #expect(try await client.request("SET c 3") == "ERROR store full")
            #expect(try await client.request("SET a 10") == "OK")  // replacing a key is fine
            #expect(try await client.request("DEL b") == "DELETED")
            #expect(try await client.request("SET c 3") == "OK")
            try await client.close()
        }
    }

    @Test("poller-service answers a line longer than --max-line with ERROR line too long and closes", arguments: backends)
    func lineTooLong(backend: BackendChoice) async throws {
        try await withService(backend, ["--max-line", "64"]) { service, poller in
            let client = try await LineClient(service, poller)
            #expect(try await client.request("SET k " + String(repeating: "v", count: 57)) == "OK")  // 64 with the newline
            try await client.connection.write(Array(("SET k " + String(repeating: "v", count: 100) + "\n").utf8))
            #expect(try await client.line() == "ERROR line too long")
            await #expect(throws: NetError.endOfFile) { _ = try await client.line() }
            try await client.close()
        }
    }

    @Test(
        "poller-service cuts a client sending a line with no newline forever at --max-line, and closes it within seconds",
        arguments: backends)
    func endlessLineIsCut(backend: BackendChoice) async throws {
        try await withService(backend, ["--max-line", "64"]) { service, poller in
            let client = try await LineClient(service, poller)
            let connection = client.connection
            let writer = Task<NetError?, Never>(executorPreference: poller.executor) {
                let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 4096)
                do throws(NetError) {
                    try connection.setWriteDeadline(in: .seconds(10))
                    while true { try await connection.write(chunk) }
                } catch { return error }
            }
            #expect(try await client.line() == "ERROR line too long")
            await #expect(throws: NetError.endOfFile) { _ = try await client.line() }
            let start = ContinuousClock.now
            let ended = await writer.value  // the service closes after at most a second of draining
            #expect(ended != .timeout && ended != nil, "the writer ended with \(String(describing: ended))")
            #expect(ContinuousClock.now - start < .seconds(5))
            try await client.close()
        }
    }

    @Test("poller-service closes a client that sends nothing, or half a line, at --idle-timeout", arguments: backends)
    func idleClientsAreClosed(backend: BackendChoice) async throws {
        try await withService(backend, ["--idle-timeout", "0.3"]) { service, poller in
            for partial in ["", "SET half"] {
                let client = try await LineClient(service, poller)
                if !partial.isEmpty { try await client.connection.write(Array(partial.utf8)) }
                let start = ContinuousClock.now
                await #expect(throws: NetError.endOfFile) { _ = try await client.line() }
                #expect(ContinuousClock.now - start >= .milliseconds(250))
                try await client.close()
            }
        }
    }

    @Test(
        "poller-service on SIGTERM with a connection open exits 0 within the grace period and the client sees end of file",
        arguments: backends)
    func sigtermWithConnectionOpen(backend: BackendChoice) async throws {
        try await withPoller(backend) { poller in  // skips io_uring where it cannot run
            let service = try ServiceProcess.start(["--port", "0", "--grace-period", "0.5", "--backend", "\(backend)"])
            defer { service.kill() }
            let client = try await LineClient(service, poller)
            #expect(try await client.request("SET k v") == "OK")
            let start = ContinuousClock.now
            let (status, output) = service.terminate()
            #expect(ContinuousClock.now - start < .seconds(3), "the grace period is 0.5 s")
            #expect(status == 0, "exit status \(status); output: \(output)")
            #expect(output.contains("shutting down") && output.contains("stopped"), "output: \(output)")
            await #expect(throws: NetError.endOfFile) { _ = try await client.line() }
            try await client.close()
        }
    }

    @Test("poller-service refuses a flag value out of range with exit code 64 and names the flag")
    func refusesBadFlags() throws {
        for arguments in [
            ["--idle-timeout", "inf"], ["--max-connections", "0"], ["--backend", "kqueue"], ["--log-level", "loud"],
            ["--max-line", "8"], ["--max-keys", "0"],
        ] {
            let service = try ServiceProcess.spawn(arguments)
            let (status, output) = service.wait()
            #expect(status == 64, "\(arguments): exit status \(status)")
            #expect(output.contains(arguments[0]), "\(arguments): \(output)")
        }
    }
}

/// Runs the service on `backend` with `arguments` (port 0) for `body`, then stops it with
/// SIGTERM and expects exit 0.
private func withService(
    _ backend: BackendChoice, _ arguments: [String] = [], _ body: (ServiceProcess, Poller) async throws -> Void
) async throws {
    try await withPoller(backend) { poller in  // skips io_uring where it cannot run
        let service = try ServiceProcess.start(["--port", "0", "--backend", "\(backend)"] + arguments)
        defer { service.kill() }
        try await body(service, poller)
        let (status, output) = service.terminate()
        #expect(status == 0, "exit status \(status); output: \(output)")
    }
}

/// A client of the key-value protocol: a request line out, a reply line in.
private final class LineClient {
    let connection: Connection
    private let reader: BufferedReader

    init(_ service: ServiceProcess, _ poller: Poller) async throws {
        connection = try await Connection.dial(host: "127.0.0.1", port: service.port, timeout: .seconds(5), poller: poller)
        reader = BufferedReader(connection, capacity: 4096)
        try connection.setReadDeadline(in: .seconds(10))
    }

    /// Sends `text` and a newline, and returns the reply line without its newline.
    func request(_ text: String) async throws -> String {
        try await connection.write(Array((text + "\n").utf8))
        return try await line()
    }

    /// The next line, without its newline.
    func line() async throws -> String {
        let slice = try await reader.readSlice(through: UInt8(ascii: "\n"), maxLength: 4096)
        return String(decoding: slice.dropLast(), as: UTF8.self)
    }

    func close() async throws { try await connection.close() }
}

/// poller-service as a child process, its stdout and stderr in one file.
final class ServiceProcess {
    let pid: pid_t
    let outputPath: String
    private(set) var port: UInt16 = 0
    /// Set once the process is reaped: its pid may then belong to another process.
    private var reaped = false

    private init(pid: pid_t, outputPath: String) {
        (self.pid, self.outputPath) = (pid, outputPath)
    }

    /// The binary beside this test bundle (both are in the build's products folder).
    static func binary() throws -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { throw TestFailure("readlink /proc/self/exe: errno \(errno)") }
        var path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        while let slash = path.lastIndex(of: "/") {
            path = String(path[..<slash])
            let candidate = path + "/poller-service"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        throw TestFailure("poller-service not found beside the tests; build it first: swift build --build-tests")
    }

    static func spawn(_ arguments: [String]) throws -> ServiceProcess {
        let path = try binary()
        let output = "/tmp/poller-service-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard rc == 0 else { throw TestFailure("posix_spawn \(path): errno \(rc)") }
        return ServiceProcess(pid: pid, outputPath: output)
    }

    /// Spawns the service and waits (≤ 10 s) for its "listening" line with the port.
    static func start(_ arguments: [String]) throws -> ServiceProcess {
        let service = try spawn(arguments)
        let limit = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < limit {
            if let range = service.output.firstRange(of: "address=127.0.0.1:") {
                let digits = service.output[range.upperBound...].prefix { $0.isNumber }
                if let port = UInt16(digits) {
                    service.port = port
                    return service
                }
            }
            usleep(10_000)
        }
        service.kill()
        throw TestFailure("poller-service did not start: \(service.output)")
    }

    var output: String {
        guard let file = fopen(outputPath, "r") else { return "" }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Waits (≤ 10 s, then SIGKILL) for the exit: its code (-1 if killed) and output.
    func wait() -> (Int32, String) {
        let limit = ContinuousClock.now + .seconds(10)
        var status: Int32 = 0
        while waitpid(pid, &status, WNOHANG) == 0 {
            if ContinuousClock.now >= limit {
                Glibc.kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                reaped = true
                return (-1, output)
            }
            usleep(5000)
        }
        reaped = true
        defer { unlink(outputPath) }
        return (status & 0x7F == 0 ? (status >> 8) & 0xFF : -1, output)
    }

    /// SIGTERM, then ``wait()``.
    func terminate() -> (Int32, String) {
        Glibc.kill(pid, SIGTERM)
        return wait()
    }

    /// SIGKILL and reap, unless reaped already.
    func kill() {
        guard !reaped else { return }
        Glibc.kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        reaped = true
        unlink(outputPath)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
