import CPoller
import Glibc
import PollerNet
import Testing
@testable import Poller

/// Every PollerNet test lives under this one serialized suite: each test counts the process's
/// open descriptors before and after, which is only exact when no other test of this target
/// runs at the same time. (Other test targets run in their own processes.)
@Suite(.serialized, .timeLimit(.minutes(2)))
struct PollerNetTests {}

/// Whether io_uring works for this process, and if not, why (computed once).
let ioUringUnavailableReason: String? = {
    switch URingBackend.probe() {
    case .success: return nil
    case .failure(let error): return "\(error)"
    }
}()

/// The number of open descriptors in this process.
func openFDCount() -> Int { Int(cpoller_count_open_fds()) }

/// Runs `body` with a fresh poller on `kind` and checks afterwards that no waiter is parked,
/// no descriptor is registered, and (after shutdown) the process has exactly the descriptors
/// it had before. Skips the io_uring case where io_uring cannot run.
func withNetPoller(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller) async throws -> Void
) async throws {
    if kind == .ioUring, let reason = ioUringUnavailableReason {
        try Test.cancel("io_uring unavailable: \(reason)")
    }
    // Warm up what the runtime opens lazily on first use (Dispatch's timer descriptors for
    // Task.sleep), so it is not counted as a leak of the first test that sleeps.
    try? await Task.sleep(for: .milliseconds(1))
    let before = openFDCount()
    let poller = try Poller(backend: kind == .epoll ? .epoll : .ioUring)
    do {
        try await body(poller)
    } catch {
        poller.shutdown()
        throw error
    }
    #expect(poller.parkedWaiterCount == 0, "a waiter was left parked", sourceLocation: sourceLocation)
    #expect(poller.openDescriptorCount == 0, "a descriptor was left registered", sourceLocation: sourceLocation)
    poller.shutdown()
    #expect(openFDCount() == before, "descriptor count changed", sourceLocation: sourceLocation)
}

/// A listener on 127.0.0.1:0 plus one dialled and one accepted connection.
struct TCPPair {
    let listener: TCPListener
    let client: Connection
    let server: Connection

    static func make(_ poller: Poller, host: String = "127.0.0.1") async throws -> TCPPair {
        try await connect(TCPListener.listen(host: host, port: 0, poller: poller), from: host, poller: poller)
    }

    /// A connection to `listener` dialled from `host`, and the accepted side.
    static func connect(_ listener: TCPListener, from host: String, poller: Poller) async throws -> TCPPair {
        async let accepted = listener.accept()
        let client = try await Connection.dial(host: host, port: listener.localAddress.port!, poller: poller)
        let server = try await accepted
        return TCPPair(listener: listener, client: client, server: server)
    }

    /// Closes all three (ignoring `.closed` from ones a test already closed).
    func close() async {
        try? await client.close()
        try? await server.close()
        try? await listener.close()
    }

    /// Closes all three, each of which must still be open.
    func closeAll() async throws {
        try await client.close()
        try await server.close()
        try await listener.close()
    }
}

/// ``withNetPoller(_:sourceLocation:_:)`` with a connected ``TCPPair`` on that poller, closed
/// after `body` whether it returns or throws.
func withTCPPair(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, TCPPair) async throws -> Void
) async throws {
    try await withNetPoller(kind, sourceLocation: sourceLocation) { poller in
        let pair = try await TCPPair.make(poller)
        do {
            try await body(poller, pair)
        } catch {
            await pair.close()
            throw error
        }
        await pair.close()
    }
}

/// Runs `body` with the error it throws, failing the test if it does not throw.
func expectNetError<R>(
    _ expected: NetError, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws(NetError) -> R
) async {
    do {
        _ = try await body()
        Issue.record("expected \(expected), got success", sourceLocation: sourceLocation)
    } catch {
        #expect(error == expected, sourceLocation: sourceLocation)
    }
}

/// The error `body` throws, or nil.
func netError<R>(_ body: () async throws(NetError) -> R) async -> NetError? {
    do {
        _ = try await body()
        return nil
    } catch {
        return error
    }
}

/// Sets SO_LINGER {on, 0}: the next close sends RST instead of FIN.
func setLingerZero(_ fd: Int32) {
    var l = linger(l_onoff: 1, l_linger: 0)
    precondition(setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size)) == 0)
}

/// A unique socket path in the temporary directory.
func temporarySocketPath(_ tag: String) -> String {
    "/tmp/pollernet-\(getpid())-\(tag)-\(UInt32.random(in: 0...UInt32.max)).sock"
}

/// Sleeps, ignoring cancellation.
/// Starts `count` one-byte reads on `connection`, 20 ms apart so that their order is known:
/// the first parks in the poller holding the read lock, the others queue for it in turn.
func startReadersOneByOne(_ connection: Connection, count: Int) async -> [Task<[UInt8], any Error>] {
    var readers: [Task<[UInt8], any Error>] = []
    for _ in 0..<count {
        readers.append(Task { try await connection.read(maxBytes: 1) })
        await sleep(ms: 20)
    }
    return readers
}

func sleep(ms: Int) async {
    try? await Task.sleep(for: .milliseconds(ms))
}

/// A simple 64-bit FNV-1a checksum.
func checksum(_ bytes: some Sequence<UInt8>) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes {
        h ^= UInt64(b)
        h &*= 0x100_0000_01b3
    }
    return h
}

/// Expects `connection` to read end of file because its peer closed (within 2 s).
///
/// The peer sees end of file. On io_uring this pins that `PollDescriptor.close()` has
/// cancelled the poll request and let it complete, so `close(2)` really releases the socket
/// (a pending poll would keep it alive and the FIN would never be sent).
func expectPeerClosed(
    _ connection: Connection, kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    try connection.setReadDeadline(in: .seconds(2))
    let error = await netError { () async throws(NetError) in try await connection.read(maxBytes: 1) }
    try connection.setReadDeadline(nil)
    #expect(error == .endOfFile, sourceLocation: sourceLocation)
}

/// Starts a write of 64 MiB (more than any socket buffer holds) on `connection`, and waits
/// until it has blocked in the poller.
func startBlockedWrite(
    _ connection: Connection, _ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation
) async throws -> Task<WriteResult, Never> {
    let writer = Task { await connection.writeReportingProgress([UInt8](repeating: 1, count: 64 << 20)) }
    try await waitUntilParked(poller, sourceLocation: sourceLocation)
    return writer
}

/// Starts a read of up to 16 bytes on `connection` that has nothing to read, and waits until
/// it has blocked in the poller; the task's value is the error the read ends with, or nil.
func startBlockedRead(
    _ connection: Connection, _ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation
) async throws -> Task<NetError?, Never> {
    let reader = Task { await netError { () async throws(NetError) in try await connection.read(maxBytes: 16) } }
    try await waitUntilParked(poller, sourceLocation: sourceLocation)
    return reader
}

/// Waits (up to 5 s) until some task is parked in the poller: a read, write or accept has
/// really blocked.
func waitUntilParked(_ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let limit = ContinuousClock.now + .seconds(5)
    while poller.parkedWaiterCount == 0 {
        if ContinuousClock.now > limit {
            Issue.record("nothing parked within 5 s", sourceLocation: sourceLocation)
            return
        }
        await sleep(ms: 5)
    }
}
