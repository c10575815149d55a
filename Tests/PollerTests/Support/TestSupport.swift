import CPoller
import Glibc
import Testing

@testable import Poller

/// Whether io_uring works for this process, and if not, why (computed once).
let ioUringUnavailableReason: String? = {
    switch URingBackend.probe() {
    case .success: return nil
    case .failure(let error): return "\(error)"
    }
}()

/// Skips the current io_uring test case, with the reason, where io_uring cannot be set up.
/// Every behavioural test calls this (through `makePoller`) so the io_uring cases are
/// reported as skipped, never as silently passed.
func skipIfUnavailable(_ kind: BackendKind) throws {
    if kind == .ioUring, let reason = ioUringUnavailableReason {
        try Test.cancel("io_uring unavailable here: \(reason)")
    }
}

extension BackendKind {
    var choice: BackendChoice { self == .epoll ? .epoll : .ioUring }
}

/// Poller options for tests: `forcePipeWake` as asked, a thread name tests recognise.
func testOptions(forcePipeWake: Bool = false) -> Poller.Options {
    var options = Poller.Options()
    options.forcePipeWake = forcePipeWake
    options.threadName = "poller-test"
    return options
}

/// A single poller on `kind`; skips the test case where that backend cannot run. For tests
/// about one poller's own life (start-up, shutdown); the others use ``withPoller``, which
/// runs on a group when `POLLER_THREADS` asks for one.
func makePoller(_ kind: BackendKind, forcePipeWake: Bool = false) throws -> Poller {
    try skipIfUnavailable(kind)
    return try Poller(backend: kind.choice, options: testOptions(forcePipeWake: forcePipeWake))
}

/// How many pollers ``withPoller`` runs a test on: `POLLER_THREADS` when it names 2 or more
/// (scripts/test.sh runs the suite once so), else 1. A value `PollerGroup` refuses counts as
/// unset here; GroupTests pins the refusal. (The `runtime_poll*` tests run on the shared
/// group, which `POLLER_THREADS` sizes itself.)
let testThreads: Int = { ((try? PollerGroup.threadsFromEnvironment()) ?? nil) ?? 1 }()

/// Skips the case where this process may run on one CPU only (a group is then one poller).
func requireTwoCPUs() throws {
    if PollerGroup.availableCPUs < 2 {
        try Test.cancel("one CPU in this process's affinity mask: a group has one poller here")
    }
}

/// Runs `body` with a fresh poller and checks, afterwards, that no waiter is left parked and
/// no descriptor left registered, then shuts the poller down.
///
/// With `POLLER_THREADS` of 2 or more (``testThreads``) the poller is the first member of a
/// fresh group of that size (every member with these options), the others running beside it;
/// the checks then cover every member.
func withPoller<R>(
    _ kind: BackendKind, forcePipeWake: Bool = false, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller) async throws -> R
) async throws -> R {
    let pollers: [Poller]
    if testThreads > 1 {
        try skipIfUnavailable(kind)
        try requireTwoCPUs()
        pollers = try PollerGroup(
            threads: testThreads, backend: kind.choice,
            options: testOptions(forcePipeWake: forcePipeWake)
        ).pollers
    } else {
        pollers = [try makePoller(kind, forcePipeWake: forcePipeWake)]
    }
    defer { for poller in pollers { poller.shutdown() } }
    let result = try await body(pollers[0])
    let parked = pollers.reduce(0) { $0 + $1.parkedWaiterCount }
    let registered = pollers.reduce(0) { $0 + $1.openDescriptorCount }
    #expect(parked == 0, "a waiter was left parked", sourceLocation: sourceLocation)
    #expect(registered == 0, "a descriptor was left registered", sourceLocation: sourceLocation)
    return result
}

/// `withPoller` with a new pipe whose read end is registered as `pd`.
func withRegisteredPipe<R>(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, OwnedPipe, PollDescriptor) async throws -> R
) async throws -> R {
    try await withPoller(kind, sourceLocation: sourceLocation) { poller in
        let pipe = OwnedPipe()
        let pd = try poller.register(pipe.readFD)
        return try await body(poller, pipe, pd)
    }
}

/// `withPoller` with a new `descriptor` pair whose read side is registered as `pd`.
func withRegisteredReader<R>(
    _ kind: BackendKind, _ descriptor: DescriptorKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, _ ends: (reader: Int32, writer: Int32), PollDescriptor) async throws -> R
) async throws -> R {
    try await withPoller(kind, sourceLocation: sourceLocation) { poller in
        let fds = Descriptors()
        let ends = fds.make(descriptor)
        let pd = try poller.register(ends.reader)
        return try await body(poller, ends, pd)
    }
}

/// `withPoller` with the write end of a full pipe registered as `pd`. Once `closeReader` has
/// closed the read end, the write end reports EPOLLERR and nothing else (no EPOLLOUT: it is
/// full; no EPOLLHUP: that is for readers).
func withFullPipeWriter<R>(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, PollDescriptor, _ closeReader: () -> Void) async throws -> R
) async throws -> R {
    try await withPoller(kind, sourceLocation: sourceLocation) { poller in
        let fds = Descriptors()
        let (readFD, writeFD) = fds.pipe()
        fillUntilBlocked(writeFD)
        let pd = try poller.register(writeFD)
        return try await body(poller, pd) { fds.close(readFD) }
    }
}

/// Two descriptors, closed together when the owner goes away.
struct ClosingPair: ~Copyable, Sendable {
    let first: Int32
    let second: Int32

    init(_ fds: (Int32, Int32)) { (first, second) = fds }

    deinit {
        close(first)
        close(second)
    }
}

/// A non-blocking, close-on-exec pipe.
struct Pipe: ~Copyable, Sendable {
    private let fds = ClosingPair(makePipeFDs())
    var readFD: Int32 { fds.first }
    var writeFD: Int32 { fds.second }
}

/// A non-blocking AF_UNIX stream socket pair.
struct SocketPair: ~Copyable {
    private let fds = ClosingPair(makeSocketPairFDs())
    var a: Int32 { fds.first }
    var b: Int32 { fds.second }
}

/// The kinds of descriptor a behaviour is checked on, where it is the same for both.
enum DescriptorKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// A pipe: `reader` is its read end, `writer` its write end.
    case pipe
    /// An AF_UNIX stream socket pair: `reader` and `writer` are its two ends.
    case socketPair = "socket pair"

    var testDescription: String { rawValue }
}

/// Raw descriptors a test closes itself (part-way through, or in bulk); whatever is still
/// open when the owner goes away is closed then, and nothing is closed twice.
final class Descriptors {
    private var open: Set<Int32> = []

    func pipe() -> (read: Int32, write: Int32) {
        let fds = makePipeFDs()
        open.formUnion([fds.read, fds.write])
        return fds
    }

    func socketPair() -> (a: Int32, b: Int32) {
        let fds = makeSocketPairFDs()
        open.formUnion([fds.a, fds.b])
        return fds
    }

    /// Two connected descriptors of `kind`: what is written to `writer` can be read from `reader`.
    func make(_ kind: DescriptorKind) -> (reader: Int32, writer: Int32) {
        switch kind {
        case .pipe:
            let (read, write) = pipe()
            return (read, write)
        case .socketPair:
            let (a, b) = socketPair()
            return (a, b)
        }
    }

    func close(_ fd: Int32) {
        precondition(open.remove(fd) != nil, "fd \(fd) is not open here")
        _ = Glibc.close(fd)
    }

    deinit {
        for fd in open { _ = Glibc.close(fd) }
    }
}

/// Writes `count` bytes of 0x2A to `fd`; returns what write(2) returned.
@discardableResult
func writeBytes(_ fd: Int32, count: Int = 1) -> Int {
    let bytes = [UInt8](repeating: 0x2A, count: count)
    return bytes.withUnsafeBytes { write(fd, $0.baseAddress, count) }
}

/// Reads until EAGAIN or EOF; returns the number of bytes read.
@discardableResult
func drain(_ fd: Int32) -> Int {
    var buffer = [UInt8](repeating: 0, count: 65536)
    return untilBlocked { buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
}

/// Writes until the kernel refuses (EAGAIN); returns the bytes written.
@discardableResult
func fillUntilBlocked(_ fd: Int32) -> Int {
    let chunk = [UInt8](repeating: 0x55, count: 65536)
    return untilBlocked { chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
}

/// Repeats `transfer` (one read or write) until it moves nothing; returns the bytes moved.
private func untilBlocked(_ transfer: () -> Int) -> Int {
    var total = 0
    while true {
        let n = transfer()
        if n <= 0 { return total }
        total += n
    }
}

/// A raw non-blocking close-on-exec pipe; the caller closes both ends.
func makePipeFDs() -> (read: Int32, write: Int32) {
    var fds: [Int32] = [-1, -1]
    precondition(pipe(&fds) == 0, "pipe: errno \(errno)")
    for fd in fds {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }
    return (fds[0], fds[1])
}

/// A raw non-blocking close-on-exec AF_UNIX stream socket pair; the caller closes both ends.
func makeSocketPairFDs() -> (a: Int32, b: Int32) {
    var fds: [Int32] = [-1, -1]
    let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    precondition(socketpair(AF_UNIX, type, 0, &fds) == 0, "socketpair: errno \(errno)")
    return (fds[0], fds[1])
}

/// The number of open descriptors in this process.
func openFDCount() -> Int { Int(cpoller_count_open_fds()) }

/// A closure to run on a thread started with cpoller_thread_start.
final class ThreadBody {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Starts a joinable pthread running `body`.
func startThread(_ body: @escaping @Sendable () -> Void) -> UInt64 {
    let context = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread: UInt64 = 0
    let err = cpoller_thread_start(
        &thread,
        { context in
            Unmanaged<ThreadBody>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
    precondition(err == 0, "pthread_create: errno \(err)")
    return thread
}

func joinThread(_ thread: UInt64) {
    precondition(cpoller_thread_join(thread) == 0)
}

/// A raw non-blocking close-on-exec TCP listening socket on 127.0.0.1 (an ephemeral port) and
/// its port; the caller closes it.
func makeLoopbackListenerFD() -> (fd: Int32, port: UInt16) {
    let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    let fd = socket(AF_INET, type, 0)
    precondition(fd >= 0, "socket: errno \(errno)")
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
            precondition(bind(fd, sa, length) == 0, "bind: errno \(errno)")
            precondition(getsockname(fd, sa, &length) == 0, "getsockname: errno \(errno)")
        }
    }
    precondition(listen(fd, 64) == 0, "listen: errno \(errno)")
    return (fd, UInt16(bigEndian: address.sin_port))
}

/// A blocking TCP connect to 127.0.0.1:`port` (on loopback it returns once the connection
/// waits in the listener's backlog); the caller closes it.
func dialLoopbackFD(port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    precondition(fd >= 0, "socket: errno \(errno)")
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    address.sin_port = port.bigEndian
    let r = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    precondition(r == 0, "connect: errno \(errno)")
    return fd
}
