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

/// How many pollers ``withNetPoller(_:sourceLocation:_:)`` runs a test on: `POLLER_THREADS`
/// when it names 2 or more (scripts/test.sh runs the suite once so), else 1. A value
/// `PollerGroup` refuses counts as unset here; GroupTests pins the refusal.
let netTestThreads: Int = { ((try? PollerGroup.threadsFromEnvironment()) ?? nil) ?? 1 }()

/// The group the running test's poller belongs to, when ``withNetPoller(_:sourceLocation:_:)``
/// runs it on one (`POLLER_THREADS` of 2 or more); nil on a single poller.
enum NetTestGroup {
    @TaskLocal static var current: PollerGroup?
}

/// The waiters parked on `poller`, or on every member of the test's group.
func parkedWaiters(_ poller: Poller) -> Int {
    NetTestGroup.current?.parkedWaiterCount ?? poller.parkedWaiterCount
}

/// The descriptors registered with `poller`, or with every member of the test's group.
func registeredDescriptors(_ poller: Poller) -> Int {
    NetTestGroup.current?.openDescriptorCount ?? poller.openDescriptorCount
}

/// Runs `body` with a fresh poller on `kind` and checks afterwards that no waiter is parked,
/// no descriptor is registered, and (after shutdown) the process has exactly the descriptors
/// it had before. Skips the io_uring case where io_uring cannot run.
///
/// With `POLLER_THREADS` of 2 or more (``netTestThreads``) the poller is the first member of a
/// fresh group of that size, the others running beside it; the group is
/// ``NetTestGroup/current`` while `body` runs, so that ``TCPPair/make(_:host:)`` accepts on
/// another member than the one that dials, and the checks cover every member.
func withNetPoller(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller) async throws -> Void
) async throws {
    try await withFreshPollers(kind, threads: netTestThreads, sourceLocation: sourceLocation) { pollers, group in
        try await NetTestGroup.$current.withValue(group) { try await body(pollers[0]) }
    }
}

/// Runs `body` with a fresh group of two pollers on `kind`, checked as
/// ``withNetPoller(_:sourceLocation:_:)`` checks its poller. Skips where one CPU is all there is.
func withNetGroup(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (PollerGroup) async throws -> Void
) async throws {
    try await withFreshPollers(kind, threads: 2, sourceLocation: sourceLocation) { _, group in try await body(group!) }
}

/// Runs `body` with fresh pollers on `kind`: a group of `threads` (and the group) when that is
/// 2 or more, else one poller (and nil). Afterwards no waiter may be parked and no descriptor
/// registered on any of them, and (after shutdown) the process has the descriptors it had
/// before. Skips where io_uring cannot run, or where a group is asked for and one CPU is all
/// there is (a group would have one poller).
func withFreshPollers(
    _ kind: BackendKind, threads: Int, options: Poller.Options? = nil, sourceLocation: SourceLocation,
    _ body: ([Poller], PollerGroup?) async throws -> Void
) async throws {
    if kind == .ioUring, let reason = ioUringUnavailableReason {
        try Test.cancel("io_uring unavailable: \(reason)")
    }
    if threads > 1 && PollerGroup.availableCPUs < 2 {
        try Test.cancel("one CPU in this process's affinity mask: a group has one poller here")
    }
    // Warm up what the runtime opens lazily on first use (Dispatch's timer descriptors for
    // Task.sleep), so it is not counted as a leak of the first test that sleeps. Dispatch's
    // second timerfd can appear a few milliseconds after the first sleep, inside
    // settledFDCount's samples (whose lowest was then one short): wait for a steady count.
    await fdCountSteady()
    let before = await settledFDCount()
    let backend: BackendChoice = kind == .epoll ? .epoll : .ioUring
    let group = threads > 1 ? try PollerGroup(threads: threads, backend: backend) : nil
    let pollers = try group?.pollers ?? [options.map { try Poller(backend: backend, options: $0) } ?? Poller(backend: backend)]
    do {
        try await body(pollers, group)
    } catch {
        for poller in pollers { poller.shutdown() }
        throw error
    }
    let parked = pollers.reduce(0) { $0 + $1.parkedWaiterCount }
    let registered = pollers.reduce(0) { $0 + $1.openDescriptorCount }
    #expect(parked == 0, "a waiter was left parked", sourceLocation: sourceLocation)
    #expect(registered == 0, "a descriptor was left registered", sourceLocation: sourceLocation)
    let buffers = pollers.reduce(0) { $0 + ($1.receiveBuffersInUse ?? 0) }
    #expect(buffers == 0, "a receive buffer was not given back to the ring", sourceLocation: sourceLocation)
    for poller in pollers { poller.shutdown() }
    var after = openFDCount()
    let limit = ContinuousClock.now + .seconds(1)
    while after != before && ContinuousClock.now < limit {
        try? await Task.sleep(for: .milliseconds(5))
        after = openFDCount()
    }
    #expect(after == before, "descriptor count changed", sourceLocation: sourceLocation)
}

/// Sleeps a millisecond at a time until the open-descriptor count has not changed for five
/// samples in a row (at most 200 ms).
func fdCountSteady() async {
    let limit = ContinuousClock.now + .milliseconds(200)
    var (last, same) = (-1, 0)
    while same < 5 && ContinuousClock.now < limit {
        try? await Task.sleep(for: .milliseconds(1))
        let count = openFDCount()
        (last, same) = (count, count == last ? same + 1 : 0)
    }
}

/// The open-descriptor count without the runtime's passing descriptors: the lowest of a few
/// samples a millisecond apart. (libdispatch's worker monitor opens `/proc/<tid>/stat` for a
/// moment now and then; counted once in "before", it showed up as one descriptor too few
/// after, about one run in thirty.) A leak or a stray close still shows: the count after
/// must settle back to exactly this within a second.
func settledFDCount() async -> Int {
    var lowest = openFDCount()
    for _ in 0..<3 {
        try? await Task.sleep(for: .milliseconds(1))
        lowest = min(lowest, openFDCount())
    }
    return lowest
}

/// A listener on 127.0.0.1:0 plus one dialled and one accepted connection.
struct TCPPair {
    let listener: TCPListener
    let client: Connection
    let server: Connection

    /// On a test's group (``NetTestGroup/current``) the listener hands its connections to the
    /// group's members in turn, and the turn is moved past `poller` first: the accepted side
    /// lands on another member than the dialled one, so every wake-up between them crosses
    /// threads.
    static func make(_ poller: Poller, host: String = "127.0.0.1") async throws -> TCPPair {
        let group = NetTestGroup.current
        let listener = try TCPListener.listen(host: host, port: 0, poller: poller, group: group)
        guard let group, group.count > 1, group.contains(poller) else {
            return try await connect(listener, from: host, poller: poller)
        }
        while group.next() !== poller {}  // the next accept takes the member after it
        let pair = try await connect(listener, from: host, poller: poller)
        #expect(pair.server.poller !== poller, "the accepted side landed on the dialling poller")
        return pair
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
        try await using(try await TCPPair.make(poller), closedBy: { await $0.close() }) { try await body(poller, $0) }
    }
}

/// Runs `body` with `resource`, then `close`s it whether `body` returns or throws.
func using<R>(_ resource: R, closedBy close: (R) async -> Void, _ body: (R) async throws -> Void) async throws {
    do {
        try await body(resource)
    } catch {
        await close(resource)
        throw error
    }
    await close(resource)
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

/// Waits (up to 5 s) until some task is parked in the poller (in any member of the test's
/// group, ``parkedWaiters(_:)``): a read, write or accept has really blocked.
func waitUntilParked(_ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let limit = ContinuousClock.now + .seconds(5)
    while parkedWaiters(poller) == 0 {
        if ContinuousClock.now > limit {
            Issue.record("nothing parked within 5 s", sourceLocation: sourceLocation)
            return
        }
        await sleep(ms: 5)
    }
}

/// ``withNetPoller(_:sourceLocation:_:)`` with a fresh ``Pipe`` on that poller, both ends
/// closed after `body` whether it returns or throws.
func withPipe(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, Pipe) async throws -> Void
) async throws {
    try await withNetPoller(kind, sourceLocation: sourceLocation) { poller in
        try await using(try Pipe.make(poller: poller), closedBy: { await $0.closeBoth() }) { try await body(poller, $0) }
    }
}

extension Pipe {
    /// Closes both ends, ignoring `.closed` from an end the test already closed.
    func closeBoth() async {
        try? await readEnd.close()
        try? await writeEnd.close()
    }
}

/// Listens on `poller`, dials `count` clients at once, each sending its own message, and
/// expects every one echoed back by the connection accepted for it; closes everything.
func expectEveryConnectionEchoes(_ poller: Poller, count: Int, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
    let port = listener.localAddress.port!
    let server = Task {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<count {
                let connection = try await listener.accept()
                group.addTask {
                    let message = try await connection.read(maxBytes: 64)
                    try await connection.write(message)
                    try await connection.close()
                }
            }
            try await group.waitForAll()
        }
    }
    try await withThrowingTaskGroup(of: Bool.self) { group in
        for i in 0..<count {
            group.addTask {
                let connection = try await Connection.dial(host: "127.0.0.1", port: port, poller: poller)
                let message = Array("message \(i)".utf8)
                try await connection.write(message)
                var got: [UInt8] = []
                while got.count < message.count { got += try await connection.read(maxBytes: 64) }
                try await connection.close()
                return got == message
            }
        }
        for try await ok in group { #expect(ok, sourceLocation: sourceLocation) }
    }
    try await server.value
    try await listener.close()
}
