// poller-microbench: the costs behind the poller's hot paths, measured in one run.
//
//   swift run -c release poller-microbench [--backend epoll|io_uring] [--descriptors 100000]
//   swift run -c release poller-microbench [--backend …] --default-executor THREADS
//
// 1. wait when readiness is already latched (the fast path: no suspension);
// 2. park-and-wake through a pipe: two tasks ping-pong over two pipes, both on the poller's
//    executor, then both on the global executor (one round trip = two park-and-wakes);
// 3. set-deadline while N descriptors hold deadlines (the timer heap at size N);
// 4. memory per open descriptor: heap bytes (glibc mallinfo2) and resident bytes (VmRSS) added
//    by registering 10,000 sockets with the poller, then by wrapping 10,000 more in NetFDs.
// 5. open+close of a descriptor (register, unblock, close the PollDescriptor, close(2); then the
//    same through a NetFD) from a task off the poller thread and from a task on it: median and
//    mean µs per open+close over 10,000 connected stream sockets created beforehand. With --offthread only this,
//    for both backends in the same run.
// With --default-executor THREADS the process first installs a group of THREADS pollers as
// Swift's default executor (PollerGroup.installAsDefaultExecutor) and measures only 2, on a
// member's executor, from plain `Task {}` tasks, and (THREADS ≥ 2) on another member's
// executor, where every wake-up hops threads, in the same process.
// Each timing is the median of 5 repetitions.
import CPoller
import Dispatch
import Glibc
@_spi(Benchmarks) import Poller
import PollerNet

@main
struct MicroBench {
    /// Synchronous, so that `--default-executor` can install the group before the first task.
    static func main() throws {
        var backend: BackendChoice = .epoll
        var descriptors = 100_000
        var defaultExecutorThreads: Int?
        var offThreadOnly = false
        var args = CommandLine.arguments.dropFirst()
        while let arg = args.popFirst() {
            switch arg {
            case "--backend": backend = try BackendChoice(parsing: args.popFirst() ?? "")
            case "--descriptors": descriptors = Int(args.popFirst() ?? "") ?? descriptors
            case "--default-executor": defaultExecutorThreads = Int(args.popFirst() ?? "") ?? 1
            case "--offthread": offThreadOnly = true
            default:
                print("usage: poller-microbench [--backend epoll|io_uring] [--descriptors N] [--default-executor THREADS] [--offthread]")
                exit(2)
            }
        }
        if let threads = defaultExecutorThreads {
            try PollerGroup.installAsDefaultExecutor(threads: threads, backend: backend)
        }
        Task {
            do {
                if offThreadOnly {
                    for kind in [BackendChoice.epoll, .ioUring] { try await openCloseSection(backend: kind) }
                } else if defaultExecutorThreads != nil {
                    try await plainTasks()
                } else {
                    try await run(backend: backend, descriptors: descriptors)
                }
                exit(0)
            } catch {
                print("poller-microbench: \(error)")
                exit(1)
            }
        }
        dispatchMain()
    }

    /// Park-and-wake under the installed group: on a member's executor, then from plain tasks.
    static func plainTasks() async throws {
        let group = PollerGroup.defaultExecutorGroup!
        let poller = try Poller.shared()  // the member this task runs on
        print("backend: \(group.backendKind), group of \(group.count) installed as the default executor")
        let onPoller = try await median(5) { try await pingPong(poller, iterations: 20_000, executor: poller.executor) }
        print("park-and-wake via pipe, poller executor:   \(fmt(onPoller / 2, 0)) ns  (\(fmt(1e9 / onPoller, 0)) round trips/s)")
        let plain = try await median(5) { try await pingPong(poller, iterations: 20_000, executor: nil) }
        print(
            "park-and-wake via pipe, plain Task {}:     \(fmt(plain / 2, 0)) ns  (\(fmt(1e9 / plain, 0)) round trips/s; \(fmt(plain / onPoller, 2))x the poller executor)"
        )
        if let other = group.pollers.first(where: { $0 !== poller }) {
            // A connection served by a task on another member: every wake-up hops threads.
            let hop = try await median(5) { try await pingPong(poller, iterations: 20_000, executor: other.executor) }
            print("park-and-wake via pipe, tasks on another poller (hop per wake-up): \(fmt(hop / 2, 0)) ns  (\(fmt(hop / onPoller, 2))x)")
        }
    }

    static func run(backend: BackendChoice, descriptors: Int) async throws {
        let poller = try Poller(backend: backend)
        defer { poller.shutdown() }
        print("backend: \(poller.backendKind)")

        let ready = try await median(5) { try await waitAlreadyReady(poller, iterations: 200_000) }
        print("wait, readiness already latched:           \(fmt(ready, 1)) ns/op")

        let onPoller = try await median(5) { try await pingPong(poller, iterations: 20_000, executor: poller.executor) }
        print("park-and-wake via pipe, poller executor:   \(fmt(onPoller / 2, 0)) ns  (\(fmt(1e9 / onPoller, 0)) round trips/s)")
        let goStyle = try await median(5) { try await pingPong(poller, iterations: 20_000, executor: poller.executor, goAPI: true) }
        print("park-and-wake, poller executor, runtime_pollWait (no cancellation handler): \(fmt(goStyle / 2, 0)) ns")
        let onGlobal = try await median(5) { try await pingPong(poller, iterations: 5_000, executor: nil) }
        print("park-and-wake via pipe, global executor:   \(fmt(onGlobal / 2, 0)) ns  (\(fmt(1e9 / onGlobal, 0)) round trips/s)")

        let deadline = try setDeadlineCost(poller, descriptors: descriptors)
        print("set-deadline, \(descriptors) descriptors holding deadlines: \(fmt(deadline, 1)) ns/op")

        // Fresh pollers: the slots of the pollers above would otherwise be reused for free.
        let registrationPoller = try Poller(backend: backend)
        defer { registrationPoller.shutdown() }
        let registration = try await memoryPerDescriptor(count: 10_000) { fd in
            let pd = try registrationPoller.register(fd)
            return {
                pd.unblock()
                try? pd.close()
                close(fd)
            }
        }
        print(
            "memory per open descriptor, poller registration: \(fmt(registration.heap, 0)) B heap, \(fmt(registration.rss, 0)) B resident")
        let netPoller = try Poller(backend: backend)
        defer { netPoller.shutdown() }
        let netFD = try await memoryPerDescriptor(count: 10_000) { fd in
            let netFD = try NetFD(adopting: fd, poller: netPoller, isStream: false, isSocket: true)
            return {
                _ = netFD.pollDescriptor
                try? await netFD.close()
            }
        }
        print("memory per open descriptor, NetFD (registration included): \(fmt(netFD.heap, 0)) B heap, \(fmt(netFD.rss, 0)) B resident")
        try await openCloseSection(backend: backend)
    }

    /// Section 5: open+close off the poller thread and on it, PollDescriptor and NetFD.
    static func openCloseSection(backend: BackendChoice) async throws {
        let poller = try Poller(backend: backend)
        defer { poller.shutdown() }
        print("backend: \(poller.backendKind), open+close of a connected stream socket, 10,000 times (median / mean µs)")
        for (label, executor) in [("off the poller thread", nil), ("on the poller thread ", poller.executor)] as [(String, PollerExecutor?)]
        {
            let pd = try await Task(executorPreference: executor) { try await openClose(count: 10_000, poller: poller, netFD: false) }.value
            print("  open+close \(label), PollDescriptor: \(fmt(pd.median, 2)) / \(fmt(pd.mean, 2)) µs")
            print("    the peer's EOF after close(2) returned: median \(fmt(pd.eofMedian, 2)) µs, p99 \(fmt(pd.eofP99, 2)) µs")
            let net = try await Task(executorPreference: executor) { try await openClose(count: 10_000, poller: poller, netFD: true) }.value
            print("  open+close \(label), NetFD:          \(fmt(net.median, 2)) / \(fmt(net.mean, 2)) µs")
        }
    }

    /// Median and mean µs per open+close (registration, unblock, close, close(2); or NetFD
    /// adopt and close) of one end each of `count` Unix stream socket pairs created beforehand
    /// (a connection: what a server opens and closes), timed one by one; and how long after
    /// close(2) returned the peer reads its EOF (median, 99th percentile).
    nonisolated(nonsending) static func openClose(count: Int, poller: Poller, netFD: Bool) async throws -> (
        median: Double, mean: Double, eofMedian: Double, eofP99: Double
    ) {
        var samples: [Double] = []
        var eofDelays: [Double] = []
        samples.reserveCapacity(count)
        // In batches: two descriptors per pair, and RLIMIT_NOFILE may be 20,000.
        let batch = 1_000
        for first in stride(from: 0, to: count, by: batch) {
            var pairs: [(Int32, Int32)] = []
            for _ in first..<min(first + batch, count) {
                var pair: [Int32] = [-1, -1]
                let r = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &pair)
                precondition(r == 0, "socketpair failed: errno \(errno)")
                pairs.append((pair[0], pair[1]))
            }
            for (fd, peer) in pairs {
                let start = cpoller_now_ns()
                if netFD {
                    let netFD = try NetFD(adopting: fd, poller: poller, isStream: true, isSocket: true)
                    try await netFD.close()
                } else {
                    let pd = try poller.register(fd)
                    pd.unblock()
                    try pd.close()
                    close(fd)
                }
                let closed = cpoller_now_ns()
                samples.append(Double(closed - start) / 1000)
                // The peer's EOF: at once when nothing holds the file any more.
                var byte: UInt8 = 0
                while read(peer, &byte, 1) != 0 { precondition(errno == EAGAIN) }
                eofDelays.append(Double(cpoller_now_ns() - closed) / 1000)
                close(peer)
            }
        }
        let mean = samples.reduce(0, +) / Double(count)
        samples.sort()
        eofDelays.sort()
        return (samples[count / 2], mean, eofDelays[count / 2], eofDelays[count * 99 / 100])
    }

    /// Heap and resident bytes added per descriptor by `open` (which registers one socket and
    /// returns how to close it), over `count` UDP sockets created beforehand (so the kernel's
    /// socket memory, which is not in this process's heap or RSS, stays out of the figure).
    nonisolated(nonsending) static func memoryPerDescriptor(
        count: Int, _ open: (Int32) throws -> (@Sendable () async -> Void)
    ) async throws -> (heap: Double, rss: Double) {
        var fds: [Int32] = []
        fds.reserveCapacity(count)
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            precondition(fd >= 0, "socket failed: errno \(errno)")
            fds.append(fd)
        }
        var closers: [@Sendable () async -> Void] = []
        closers.reserveCapacity(count)
        let heap0 = cpoller_heap_bytes_in_use()
        let rss0 = residentBytes()
        for fd in fds { closers.append(try open(fd)) }
        let heap1 = cpoller_heap_bytes_in_use()
        let rss1 = residentBytes()
        for close in closers { await close() }
        return (Double(heap1 - heap0) / Double(count), Double(rss1 - rss0) / Double(count))
    }

    /// VmRSS of this process in bytes.
    static func residentBytes() -> Int {
        guard let f = fopen("/proc/self/status", "r") else { return 0 }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, 256, f) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix("VmRSS:") {
                let kib = text.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) }
                return (kib ?? 0) * 1024
            }
        }
        return 0
    }

    static func fmt(_ v: Double, _ decimals: Int) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        _ = withVaList([decimals, v]) { vsnprintf(&buffer, 64, "%10.*f", $0) }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func median(_ runs: Int, _ body: @Sendable () async throws -> Double) async rethrows -> Double {
        var samples: [Double] = []
        for _ in 0..<runs { samples.append(try await body()) }
        samples.sort()
        return samples[samples.count / 2]
    }

    static func nanos(_ d: Duration) -> Double {
        Double(d.components.seconds) * 1e9 + Double(d.components.attoseconds) / 1e9
    }

    static func makePipe() -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        precondition(pipe(&fds) == 0)
        for fd in fds { precondition(cpoller_set_nonblocking(fd) == 0) }
        return (fds[0], fds[1])
    }

    /// ns per wait whose readiness is latched (the latch itself included).
    static func waitAlreadyReady(_ poller: Poller, iterations: Int) async throws -> Double {
        let (r, w) = makePipe()
        defer {
            close(r)
            close(w)
        }
        let pd = try poller.register(r)
        defer {
            pd.unblock()
            try? pd.close()
        }
        let clock = ContinuousClock()
        let elapsed = try await clock.measure {
            for _ in 0..<iterations {
                pd._latchReadinessForBenchmark(.read)
                try await pd.wait(for: .read)
            }
        }
        return nanos(elapsed) / Double(iterations)
    }

    /// ns per round trip between two tasks through two pipes.
    /// Both tasks prefer `executor` (nil: none, so the default executor).
    static func pingPong(_ poller: Poller, iterations: Int, executor: (any TaskExecutor)?, goAPI: Bool = false) async throws -> Double {
        let (aR, aW) = makePipe()
        let (bR, bW) = makePipe()
        defer { for fd in [aR, aW, bR, bW] { close(fd) } }
        let pa = try poller.register(aR)
        let pb = try poller.register(bR)
        defer {
            for pd in [pa, pb] {
                pd.unblock()
                try? pd.close()
            }
        }
        let clock = ContinuousClock()
        let start = clock.now
        async let echo: Void = Task(executorPreference: executor) {
            var byte: UInt8 = 0
            for _ in 0..<iterations {
                try await readOne(aR, pa, &byte, goAPI: goAPI)
                precondition(write(bW, &byte, 1) == 1)
            }
        }.value
        let driver = Task(executorPreference: executor) {
            var byte: UInt8 = 7
            for _ in 0..<iterations {
                precondition(write(aW, &byte, 1) == 1)
                try await readOne(bR, pb, &byte, goAPI: goAPI)
            }
        }
        try await driver.value
        try await echo
        return nanos(clock.now - start) / Double(iterations)
    }

    static func readOne(_ fd: Int32, _ pd: PollDescriptor, _ byte: inout UInt8, goAPI: Bool = false) async throws {
        while true {
            if read(fd, &byte, 1) == 1 { return }
            precondition(errno == EAGAIN)
            if goAPI {
                let code = await runtime_pollWait(pd, 114)
                precondition(code == pollNoError)
            } else {
                try await pd.wait(for: .read)
            }
        }
    }

    /// ns per setDeadline (moving one descriptor's deadline) while `descriptors` hold one.
    static func setDeadlineCost(_ poller: Poller, descriptors: Int) throws -> Double {
        // Real, kernel-registered descriptors as far as RLIMIT_NOFILE allows; the rest are
        // slots opened without a kernel registration (setDeadline never touches the kernel:
        // it is the slot's lock plus the timer heap).
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let realCount = min(descriptors, max(0, Int(limit.rlim_cur) - 512))
        var fds: [Int32] = []
        var pds: [PollDescriptor] = []
        fds.reserveCapacity(descriptors)
        pds.reserveCapacity(descriptors)
        defer {
            for pd in pds {
                pd.unblock()
                try? pd.close()
            }  // deregistering a never-registered fd is ignored
            for fd in fds { close(fd) }
        }
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            seed ^= seed << 13
            seed ^= seed >> 7
            seed ^= seed << 17
            return seed
        }
        for i in 0..<descriptors {
            if i >= realCount {
                let pd = poller._openWithoutKernelRegistrationForBenchmark(fd: Int32(100_000_000 + i))
                pds.append(pd)
                pd.setDeadline(in: .seconds(3600) + .milliseconds(Int64(next() % 3_600_000)), for: PollMode.read)
                pd.setDeadline(in: .seconds(3600) + .milliseconds(Int64(next() % 3_600_000)), for: PollMode.write)
                continue
            }
            // One descriptor each: a UDP socket is pollable and costs a single fd.
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            precondition(fd >= 0, "socket failed: errno \(errno)")
            fds.append(fd)
            let pd = try poller.register(fd)
            pds.append(pd)
            // Deadlines spread over 1 to 2 hours, read and write apart (two timers each).
            pd.setDeadline(in: .seconds(3600) + .milliseconds(Int64(next() % 3_600_000)), for: PollMode.read)
            pd.setDeadline(in: .seconds(3600) + .milliseconds(Int64(next() % 3_600_000)), for: PollMode.write)
        }
        precondition(pds[0]._armedTimerCountForBenchmark == 2 * descriptors)
        let iterations = 1_000_000
        let clock = ContinuousClock()
        var samples: [Double] = []
        for _ in 0..<5 {
            let elapsed = clock.measure {
                for i in 0..<iterations {
                    let pd = pds[Int(next() % UInt64(descriptors))]
                    pd.setDeadline(in: .seconds(3600) + .milliseconds(Int64(i % 3_600_000)), for: .read)
                }
            }
            samples.append(nanos(elapsed) / Double(iterations))
        }
        samples.sort()
        print(
            "  (\(realCount) kernel-registered UDP sockets + \(descriptors - realCount) slots without a kernel registration, 2 timers each)"
        )
        return samples[2]
    }
}
