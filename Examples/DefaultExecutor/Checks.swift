// What example-default-executor checks, one printed line per behaviour.
import Glibc
import Synchronization

#if DEBUG
@_spi(Testing) import Poller
#else
import Poller
#endif

/// One line per behaviour: "ok: ..." or "FAIL: ..."; any failure makes the exit status 1.
func check(_ passed: Bool, _ what: String) {
    print("\(passed ? "ok" : "FAIL"): \(what)")
    if !passed { failures.add(1, ordering: .relaxed) }
}
let failures = Atomic<Int>(0)

func onPollerThread(_ group: PollerGroup) -> Bool { Poller.current.map(group.contains) ?? false }

func serve(on group: PollerGroup) async -> Int32 {
    print("backend \(group.backendKind), \(group.count) pollers")
    check(onPollerThread(group), "a plain Task {} runs on a poller thread")
    check(await Task { onPollerThread(group) }.value, "a Task {} started from a poller thread runs on one")
    check(await Task.detached { onPollerThread(group) }.value, "a detached task runs on a poller thread")
    async let child = onPollerThread(group)
    check(await child, "an async let child runs on a poller thread")

    let start = ContinuousClock.now
    try? await Task.sleep(for: .milliseconds(30))
    let slept = ContinuousClock.now - start
    check(slept >= .milliseconds(30) && slept < .seconds(5), "Task.sleep(30 ms) slept \(slept)")
    check(onPollerThread(group), "after Task.sleep the task is back on a poller thread")

    // The main actor keeps the platform's main executor (Dispatch's main queue, which
    // dispatchMain() drains on a thread of Dispatch's own): it works, off the poller threads.
    let mainActorOnPoller = await MainActor.run { Poller.current != nil }
    check(!mainActorOnPoller, "MainActor.run runs on the main queue, not on a poller thread")
    check(onPollerThread(group), "after the main actor the task is back on a poller thread")

    // Park and wake: the wait's wake-up resumes the task on the poller that owns the descriptor.
    var ends: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &ends) == 0 else {
        check(false, "socketpair: errno \(errno)")
        return 1
    }
    let (reader, writerEnd) = (ends[0], ends[1])
    defer {
        close(reader)
        close(writerEnd)
    }
    do {
        let poller = try Poller.shared()  // the member this task runs on
        check(poller === Poller.current, "Poller.shared() from a poller thread is that poller")
        let pd = try poller.register(reader)
        let writer = Task.detached {
            try? await Task.sleep(for: .milliseconds(5))
            var byte: UInt8 = 1
            _ = write(writerEnd, &byte, 1)
        }
        try await pd.wait(for: .read)
        check(Poller.current === poller, "a wait's wake-up resumes the task on the descriptor's poller")
        await writer.value
        pd.unblock()
        try pd.close()
    } catch {
        check(false, "park and wake: \(error)")
    }
    #if DEBUG
    await checkNoHops(group)
    #endif
    let parked = group.parkedWaiterCount
    let open = group.openDescriptorCount
    check(parked == 0 && open == 0, "nothing left parked (\(parked)) or registered (\(open))")

    // After the group's shutdown tasks go on, on the platform's executor (never stranded).
    group.shutdown()
    check(await Task { Poller.current == nil }.value, "after shutdown a plain Task {} runs off the poller threads")
    let before = ContinuousClock.now
    try? await Task.sleep(for: .milliseconds(10))
    check(ContinuousClock.now - before >= .milliseconds(10), "after shutdown Task.sleep still sleeps")

    let failed = failures.load(ordering: .relaxed)
    print(failed == 0 ? "all passed" : "\(failed) failed")
    return failed == 0 ? 0 : 1
}

extension BackendChoice {
    init(argument: String) {
        switch argument {
        case "epoll": self = .epoll
        case "io_uring", "iouring": self = .ioUring
        default: self = .auto
        }
    }
}

#if DEBUG
/// Regression (a plain task ran its jobs "on" the poller's own task executor, so the runtime
/// hopped at every call into a nonisolated async function: 10 enqueues per round trip): two
/// plain tasks ping-ponging a byte over two socket pairs cost two enqueues per round trip,
/// one per park-and-wake, as tasks on a poller's executor do.
func checkNoHops(_ group: PollerGroup) async {
    var a: [Int32] = [-1, -1]
    var b: [Int32] = [-1, -1]
    let flags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
    guard socketpair(AF_UNIX, flags, 0, &a) == 0, socketpair(AF_UNIX, flags, 0, &b) == 0 else {
        return check(false, "socketpair: errno \(errno)")
    }
    let (a0, a1, b0, b1) = (a[0], a[1], b[0], b[1])
    defer { for fd in [a0, a1, b0, b1] { close(fd) } }
    do {
        let poller = try Poller.shared()
        let pa = try poller.register(a0)
        let pb = try poller.register(b0)
        defer {
            for pd in [pa, pb] {
                pd.unblock()
                try? pd.close()
            }
        }
        let rounds = 1000
        let before = group._enqueuedJobCountForTesting
        async let echo: Void = Task {
            for _ in 0..<rounds {
                try await readByte(a0, pa)
                var byte: UInt8 = 1
                _ = write(b1, &byte, 1)
            }
        }.value
        for _ in 0..<rounds {
            var byte: UInt8 = 1
            _ = write(a1, &byte, 1)
            try await readByte(b0, pb)
        }
        try await echo
        let perRound = Double(group._enqueuedJobCountForTesting - before) / Double(rounds)
        check(perRound < 2.5, "a park-and-wake round trip between plain tasks costs \(perRound) enqueues (no hops: 2)")
    } catch {
        check(false, "ping-pong: \(error)")
    }
}

/// Reads one byte from `fd`, waiting on `pd` while there is none.
func readByte(_ fd: Int32, _ pd: PollDescriptor) async throws {
    var byte: UInt8 = 0
    while read(fd, &byte, 1) != 1 {
        try await pd.wait(for: .read)
    }
}
#endif
