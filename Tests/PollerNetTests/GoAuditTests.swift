import Glibc
import Testing

@testable import Poller
@testable import PollerNet

extension PollerNetTests {
    /// Go tests the audit of issue 14 (TESTING.md) found missing or only partly ported,
    /// numbered as in the digest (go-netpoll.md §5).
    @Suite("Go tests: audit")
    struct GoAuditTests {
        // Digest #4. Go's fdMutex panics on these; ours stops the process at a precondition
        // (a trap is not an error a caller could handle: the misuse is a bug in this package).
        // No backend: the mutex alone, in a child process each.
        @Test("TestMutexPanic: releasing a reference or a direction lock that is not held stops the process")
        func mutexPanic() async {
            await #expect(processExitsWith: .failure) { FDMutex().decref() }
            await #expect(processExitsWith: .failure) { FDMutex().unlock(.read) }
            await #expect(processExitsWith: .failure) { FDMutex().unlock(.write) }
            await #expect(processExitsWith: .failure) {
                let mutex = FDMutex()
                try mutex.incref()
                mutex.decref()
                mutex.decref()
            }
            await #expect(processExitsWith: .failure) {
                let mutex = FDMutex()
                _ = try await mutex.lock(.read)
                mutex.unlock(.read)
                mutex.unlock(.read)
            }
            await #expect(processExitsWith: .failure) {
                let mutex = FDMutex()
                _ = try await mutex.lock(.write)
                mutex.unlock(.write)
                mutex.unlock(.write)
            }
        }

        // Digest #8. Go reads each file whole, 4 workers × 100 times; whether the poller
        // takes the descriptor (sysfs files poll) or refuses it (EPERM: read unwatched), every
        // read must work.
        @Test(
            "TestRead/SpecialFile: /dev/null, /proc/stat and a sysfs file are each read whole by 4 tasks 100 times without an error",
            arguments: BackendKind.allCases)
        func readSpecialFiles(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                for path in ["/dev/null", "/proc/stat", "/sys/devices/system/cpu/online"] where access(path, R_OK) == 0 {
                    let failures = await withTaskGroup(of: [String].self) { group in
                        for _ in 0..<4 {
                            group.addTask {
                                var failed: [String] = []
                                for _ in 0..<100 {
                                    if let failure = await readWhole(path, poller) { failed.append(failure) }
                                    try? await Task.sleep(for: .nanoseconds(1))
                                }
                                return failed
                            }
                        }
                        return await group.reduce([], +)
                    }
                    #expect(failures.isEmpty, "\(path): \(failures.count) failed reads, first \(failures.first ?? "")")
                }
            }
        }

        // Digest #12. Go's child program dials a closed port from its package init, before
        // main; here an exit test's child process makes a dial its first use of the shared
        // poller (started lazily, on the backend the environment names) from a plain task.
        @Test(
            "TestNetpollDeadlock: a fresh process whose first use of the shared poller is a dial to a closed port gets ECONNREFUSED promptly",
            arguments: BackendKind.allCases)
        func netpollDeadlock(kind: BackendKind) async throws {
            switch kind {
            case .epoll:
                await #expect(processExitsWith: .success) { await dialClosedPortAsFirstUse(backend: "epoll") }
            case .ioUring:
                if let reason = ioUringUnavailableReason { try Test.cancel("io_uring unavailable: \(reason)") }
                await #expect(processExitsWith: .success) { await dialClosedPortAsFirstUse(backend: "io_uring") }
            }
        }

        // Digest #18.
        @Test(
            "TestAcceptTimeoutMustNotReturn: an accept whose deadline was expired then cleared waits, and close ends it with closed",
            arguments: BackendKind.allCases)
        func acceptTimeoutMustNotReturn(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                try listener.setDeadline(.now - .seconds(5))
                try listener.setDeadline(nil)
                let acceptor = Task { await netError { () async throws(NetError) in try await listener.accept() } }
                let error = try await valueAfterClose(acceptor, poller) { try await listener.close() }
                #expect(error == .closed)
            }
        }

        // Digest #23 (the TCP version; the pipe version is #54).
        @Test(
            "TestWriteTimeoutMustNotReturn: a write blocked on a full buffer after the deadline dance waits, and close ends it with closed and its partial count",
            arguments: BackendKind.allCases)
        func writeTimeoutMustNotReturn(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                try client.setDeadline(.now - .seconds(5))
                try client.setReadDeadline(.now - .seconds(5))
                try client.setWriteDeadline(nil)
                let writer = try await startBlockedWrite(client, poller)
                let result = try await valueAfterClose(writer, poller) { try await client.close() }
                #expect(result.error == .closed && result.bytesWritten > 0)
                #expect(!(result.error?.isTimeout ?? true))
            }
        }

        // Digest #22. A fresh connection per case to a listener that never accepts: the
        // handshake completes in the kernel, so the send buffer has room throughout.
        @Test(
            "TestWriteTimeout: a past write deadline fails two writes with room in the buffer and nothing written; a 10 ms one lets writes through until it passes, then fails them with nothing written",
            arguments: BackendKind.allCases)
        func writeTimeout(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                let message = Array("WRITE TIMEOUT TEST".utf8)
                for timeout: Duration in [.seconds(-5), .milliseconds(10)] {
                    let client = try await Connection.dial(host: "127.0.0.1", port: listener.localAddress.port!, poller: poller)
                    try client.setWriteDeadline(.now + timeout)
                    var timeouts = 0
                    var successes = 0
                    while timeouts < 2 {
                        let result = await client.writeReportingProgress(message)
                        if let error = result.error {
                            #expect(error == .timeout && result.bytesWritten == 0, "\(timeout): \(result)")
                            timeouts += 1
                        } else {
                            #expect(timeouts == 0 && timeout > .zero, "\(timeout): a write succeeded after a timeout")
                            successes += 1
                            await sleep(ms: 3)
                        }
                    }
                    #expect(timeout < .zero || successes > 0, "no write went through before the 10 ms deadline")
                    try await client.close()
                }
                try await listener.close()
            }
        }

        // Digest #33.
        @Test(
            "TestCloseWrite: after both ends close their write sides each reads end of file, and each one's writes fail",
            arguments: BackendKind.allCases)
        func closeWriteBothWays(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try pair.client.closeWrite()
                await expectNetError(.endOfFile) { () async throws(NetError) in try await pair.server.read(maxBytes: 16) }
                try pair.server.closeWrite()
                await expectNetError(.endOfFile) { () async throws(NetError) in try await pair.client.read(maxBytes: 16) }
                for end in [pair.server, pair.client] {
                    let error = await netError { () async throws(NetError) in try await end.write([1]) }
                    #expect(error == .system(call: "send", errno: EPIPE))
                }
            }
        }

        // Digest #32, Unix stream sockets (TCP: "closeRead makes later reads return end of file").
        @Test(
            "TestCloseRead (unix): after closeRead a read returns end of file",
            arguments: BackendKind.allCases)
        func closeReadUnix(kind: BackendKind) async throws {
            try await withUnixPair(kind) { _, client, _ in
                try client.closeRead()
                await expectNetError(.endOfFile) { () async throws(NetError) in try await client.read(maxBytes: 1) }
            }
        }

        // Digest #39, Unix stream sockets (TCP: in "a dialled connection echoes bytes…").
        @Test(
            "TestZeroByteRead (unix): a zero-byte read returns 0 at once on both ends of a fresh connection",
            arguments: BackendKind.allCases)
        func zeroByteReadUnix(kind: BackendKind) async throws {
            try await withUnixPair(kind) { _, client, server in
                for end in [client, server] {
                    let count = try await end.read(into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
                    let bytes = try await end.read(maxBytes: 0)
                    #expect(count == 0 && bytes.isEmpty)
                }
            }
        }

        // Digest #49.
        @Test(
            "TestConnAndListener: with 1 h deadlines on the listener and both ends, TCP and Unix connections echo, and every address is of the network's family",
            arguments: BackendKind.allCases)
        func connAndListener(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let tcp = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
                try tcp.setDeadline(in: .seconds(3600))
                async let accepted = tcp.accept()
                let client = try await Connection.dial(host: "127.0.0.1", port: tcp.localAddress.port!, poller: poller)
                try await expectEchoWithLongDeadlines(client, try await accepted, unix: false)
                try await tcp.close()
            }
            try await withUnixPair(kind) { listener, client, server in
                try listener.setDeadline(in: .seconds(3600))
                try await expectEchoWithLongDeadlines(client, server, unix: true)
            }
        }

        // Digest #56 (Go's os/timeout_test.go version: every error must be a timeout).
        @Test(
            "TestReadWriteDeadlineRace (pipe): reads and writes racing 2 µs deadlines reset 200 times end with data or a timeout, never another error or a hang",
            arguments: BackendKind.allCases)
        func pipeReadWriteDeadlineRace(kind: BackendKind) async throws {
            try await withPipe(kind) { poller, pipe in
                let rounds = 200
                let unexpected = await withTaskGroup(of: [NetError].self) { group in
                    group.addTask {
                        for _ in 0..<rounds {
                            try? pipe.readEnd.setReadDeadline(in: .microseconds(2))
                            try? pipe.writeEnd.setWriteDeadline(in: .microseconds(2))
                            await Task.yield()
                        }
                        return []
                    }
                    group.addTask {
                        var errors: [NetError] = []
                        for _ in 0..<rounds {
                            let error = await netError { () async throws(NetError) in try await pipe.readEnd.read(maxBytes: 1) }
                            if let error, error != .timeout { errors.append(error) }
                        }
                        return errors
                    }
                    group.addTask {
                        var errors: [NetError] = []
                        for _ in 0..<rounds {
                            let error = await netError { () async throws(NetError) in try await pipe.writeEnd.write([1]) }
                            if let error, error != .timeout { errors.append(error) }
                        }
                        return errors
                    }
                    return await group.reduce([], +)
                }
                #expect(unexpected.isEmpty, "\(unexpected)")
            }
        }

        // Digest #60 (Go #24164).
        @Test(
            "TestPipeEOF: lines written 10 ms apart are all read, then end of file once the writer closes, within a second",
            arguments: BackendKind.allCases)
        func pipeEOF(kind: BackendKind) async throws {
            try await withPipe(kind) { poller, pipe in
                let writer = Task { () async -> NetError? in
                    await netError { () async throws(NetError) in
                        for line in 0..<3 {
                            try await pipe.writeEnd.write(Array("line \(line)\n".utf8))
                            await sleep(ms: 10)
                        }
                        try await pipe.writeEnd.close()
                    }
                }
                try pipe.readEnd.setReadDeadline(in: .seconds(1))
                var got: [UInt8] = []
                let end = await netError { () async throws(NetError) in
                    while true { got += try await pipe.readEnd.read(maxBytes: 64) }
                }
                #expect(end == .endOfFile)
                #expect(String(decoding: got, as: UTF8.self) == "line 0\nline 1\nline 2\n")
                #expect(await writer.value == nil)
            }
        }
    }
}

/// Opens `path`, adopts it on `poller` (watched if the poller takes it, else unwatched), reads
/// it to end of file and closes it. Returns what went wrong, or nil.
private func readWhole(_ path: String, _ poller: Poller) async -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "open: errno \(errno)" }
    let file: RawConnection
    do throws(NetError) {
        file = try RawConnection(adopting: fd, poller: poller)
    } catch {
        return "adopt: \(error)"
    }
    let failure = await netError { () async throws(NetError) in
        while true {
            do throws(NetError) { _ = try await file.read(maxBytes: 4096) } catch .endOfFile { return }
        }
    }
    let closeFailure = await netError { () async throws(NetError) in try await file.close() }
    return (failure ?? closeFailure).map { "\($0)" }
}

/// Go's *MustNotReturn window: `task`'s operation, blocked in the poller, is still parked
/// 100 ms later; then `close` runs, and the operation's outcome is returned.
private func valueAfterClose<T: Sendable>(
    _ task: Task<T, Never>, _ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation,
    close: () async throws -> Void
) async throws -> T {
    try await waitUntilParked(poller, sourceLocation: sourceLocation)
    await sleep(ms: 100)
    #expect(parkedWaiters(poller) == 1, "the operation returned within 100 ms", sourceLocation: sourceLocation)
    try await close()
    return await task.value
}

/// ``withNetPoller(_:sourceLocation:_:)`` with a Unix stream listener at a temporary path and
/// one dialled (`client`) and one accepted (`server`) connection, all closed after `body`.
private func withUnixPair(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (UnixListener, _ client: Connection, _ server: Connection) async throws -> Void
) async throws {
    try await withNetPoller(kind, sourceLocation: sourceLocation) { poller in
        let listener = try UnixListener.listen(path: temporarySocketPath("audit"), poller: poller)
        async let accepted = listener.accept()
        let client = try await Connection.dial(unixPath: listener.localAddress.description, poller: poller)
        let server = try await accepted
        try await body(listener, client, server)
        try? await client.close()
        try? await server.close()
        try await listener.close()
    }
}

/// Go's TestConnAndListener after the listener: 1 h deadlines on both ends, one echo of
/// "CONN AND LISTENER TEST", and every address of the network's family; closes both.
private func expectEchoWithLongDeadlines(
    _ client: Connection, _ server: Connection, unix: Bool, sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    for end in [client, server] { try end.setDeadline(in: .seconds(3600)) }
    let message = Array("CONN AND LISTENER TEST".utf8)
    try await client.write(message)
    var got: [UInt8] = []
    while got.count < message.count { got += try await server.read(maxBytes: 64) }
    try await server.write(got)
    got = []
    while got.count < message.count { got += try await client.read(maxBytes: 64) }
    #expect(got == message, sourceLocation: sourceLocation)
    for address in [client.localAddress, client.remoteAddress, server.localAddress, server.remoteAddress] {
        let isUnix = if case .unix = address { true } else { false }
        let isIPv4 = if case .ipv4 = address { true } else { false }
        #expect(unix ? isUnix : isIPv4, "\(address)", sourceLocation: sourceLocation)
    }
    try await client.close()
    try await server.close()
}

/// Runs in an exit test's child process: the process's first use of the shared poller (on
/// `backend`) is a dial, from a task on no poller, to a local port bound but not listening.
/// Exits 1 unless the dial fails with ECONNREFUSED; a hang ends the child with SIGALRM.
private func dialClosedPortAsFirstUse(backend: String) async {
    setenv("POLLER_BACKEND", backend, 1)
    alarm(10)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard fd >= 0, bound else { exit(2) }
    let port = UInt16(bigEndian: address.sin_port)
    let error = await Task.detached {
        await netError { () async throws(NetError) in _ = try await Connection.dial(host: "127.0.0.1", port: port) }
    }.value
    close(fd)
    if error != .system(call: "connect", errno: ECONNREFUSED) { exit(1) }
}
