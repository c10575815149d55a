// The poller's hot paths under ordo-one/benchmark (wall clock, CPU, mallocs per operation).
// Each benchmark opens what it needs once and tears it down after the measured loop.
import Benchmark
import Glibc
@_spi(Benchmarks) import Poller

private func makePipe() -> (Int32, Int32) {
    var fds: [Int32] = [-1, -1]
    precondition(pipe(&fds) == 0)
    for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    return (fds[0], fds[1])
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        // 1,000 operations per sample, so per-sample task start-up is amortised; figures are
        // per operation.
        scalingFactor: .kilo,
        maxDuration: .seconds(1)
    )
    connectionBenchmarks()

    for backend in [BackendChoice.epoll, .ioUring] {
        Benchmark("wait, readiness already latched (\(backend))") { benchmark in
            guard let poller = try? Poller(backend: backend) else { return }
            defer { poller.shutdown() }
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
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                pd._latchReadinessForBenchmark(.read)
                try await pd.wait(for: .read)
            }
            benchmark.stopMeasurement()
        }

        Benchmark("round trip between two tasks through two pipes, poller executor (\(backend))") { benchmark in
            guard let poller = try? Poller(backend: backend) else { return }
            defer { poller.shutdown() }
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
            let n = benchmark.scaledIterations.count
            benchmark.startMeasurement()
            let echo = Task(executorPreference: poller.executor) {
                var byte: UInt8 = 0
                for _ in 0..<n {
                    while read(aR, &byte, 1) != 1 { try await pa.wait(for: .read) }
                    precondition(write(bW, &byte, 1) == 1)
                }
            }
            try await Task(executorPreference: poller.executor) {
                var byte: UInt8 = 7
                for _ in 0..<n {
                    precondition(write(aW, &byte, 1) == 1)
                    while read(bR, &byte, 1) != 1 { try await pb.wait(for: .read) }
                }
            }.value
            try await echo.value
            benchmark.stopMeasurement()
        }

        Benchmark("10 tasks enqueued at once onto the poller executor from another thread (\(backend))") { benchmark in
            guard let poller = try? Poller(backend: backend) else { return }
            defer { poller.shutdown() }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                await withTaskGroup(of: Void.self) { group in
                    for _ in 0..<10 { group.addTask(executorPreference: poller.executor) {} }
                }
            }
            benchmark.stopMeasurement()
        }

        Benchmark("open + unblock + close (\(backend))") { benchmark in
            guard let poller = try? Poller(backend: backend) else { return }
            defer { poller.shutdown() }
            let (r, w) = makePipe()
            defer {
                close(r)
                close(w)
            }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let pd = try poller.register(r)
                pd.unblock()
                try pd.close()
            }
            benchmark.stopMeasurement()
        }
    }

    Benchmark("set-deadline, 100,000 descriptors holding deadlines") { benchmark in
        let poller = try Poller(backend: .epoll)
        defer { poller.shutdown() }
        var pds: [PollDescriptor] = []
        for i in 0..<100_000 {
            let pd = poller._openWithoutKernelRegistrationForBenchmark(fd: Int32(100_000_000 + i))
            pd.setDeadline(in: .seconds(3600 + Int64(i % 3600)), for: .read)
            pd.setDeadline(in: .seconds(3600 + Int64((i * 7) % 3600)), for: .write)
            pds.append(pd)
        }
        defer {
            for pd in pds {
                pd.unblock()
                try? pd.close()
            }
        }
        var i = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            i = (i &* 1_103_515_245 &+ 12345) & 0x7fff_ffff
            pds[i % pds.count].setDeadline(in: .seconds(3600 + Int64(i % 3600)), for: .read)
        }
        benchmark.stopMeasurement()
    }
}
