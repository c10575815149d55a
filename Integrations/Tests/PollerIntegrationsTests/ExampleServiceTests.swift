import Glibc
import Poller
import PollerNet
import Testing

/// The example service, run as a process the way its README section says.
@Suite("poller-service, the example service")
struct ExampleServiceTests {
    @Test(
        "poller-service echoes, closes an idle connection after --idle-timeout, and exits 0 on SIGTERM once stopped",
        arguments: backends)
    func servesAndStops(backend: BackendChoice) async throws {
        try await withPoller(backend) { poller in  // skips io_uring where it cannot run
            let service = try ServiceProcess.start(["--port", "0", "--idle-timeout", "0.3", "--backend", "\(backend)"])
            defer { service.kill() }
            let client = try await Connection.dial(host: "127.0.0.1", port: service.port, timeout: .seconds(5), poller: poller)
            try await client.write(Array("hello".utf8))
            var echoed: [UInt8] = []
            while echoed.count < 5 { echoed += try await client.read(maxBytes: 5 - echoed.count) }
            #expect(echoed == Array("hello".utf8))
            // Idle: the service closes it after 0.3 s (bounded here by 5 s).
            try client.setReadDeadline(in: .seconds(5))
            let start = ContinuousClock.now
            await #expect(throws: NetError.endOfFile) { _ = try await client.read(maxBytes: 1) }
            #expect(ContinuousClock.now - start >= .milliseconds(250))
            try await client.close()
            let (status, output) = service.terminate()
            #expect(status == 0, "exit status \(status); output: \(output)")
            #expect(output.contains("shutting down") && output.contains("stopped"), "output: \(output)")
        }
    }

    @Test("poller-service refuses a flag value out of range with exit code 64 and names the flag")
    func refusesBadFlags() throws {
        for arguments in [["--idle-timeout", "inf"], ["--max-connections", "0"], ["--backend", "kqueue"], ["--log-level", "loud"]] {
            let service = try ServiceProcess.spawn(arguments)
            let (status, output) = service.wait()
            #expect(status == 64, "\(arguments): exit status \(status)")
            #expect(output.contains(arguments[0]), "\(arguments): \(output)")
        }
    }
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
