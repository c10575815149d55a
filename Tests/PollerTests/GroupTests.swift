import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller

/// The number of threads in this process (entries in /proc/self/task).
private func threadCount() -> Int {
    guard let dir = opendir("/proc/self/task") else { return -1 }
    defer { closedir(dir) }
    var n = 0
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { n += 1 }
    }
    return n
}

/// Whether the process's thread count comes down to `count` within two seconds (suites that
/// run beside this one start and stop poller threads of their own).
private func threadsSettle(atOrBelow count: Int) async -> Bool {
    await becomesTrue(within: .seconds(2)) { threadCount() <= count }
}

/// A group of `threads` pollers on `kind`, shut down after `body`; skips where the backend
/// cannot run.
private func withGroup<R>(
    _ kind: BackendKind, threads: Int? = 2, _ body: (PollerGroup) async throws -> R
) async throws -> R {
    try skipIfUnavailable(kind)
    let group = try PollerGroup(threads: threads, backend: kind.choice)
    defer { group.shutdown() }
    let result = try await body(group)
    #expect(group.parkedWaiterCount == 0, "a waiter was left parked")
    #expect(group.openDescriptorCount == 0, "a descriptor was left registered")
    return result
}

// Serialized: the thread and descriptor counts are the process's.
@Suite("Poller groups", .serialized)
struct GroupTests {
    @Test(
        "A group starts one poller per CPU it may run on, each on its own thread, all on one backend",
        arguments: BackendKind.allCases)
    func oneThreadPerCPU(kind: BackendKind) async throws {
        try await withGroup(kind, threads: nil) { group in
            #expect(group.count == PollerGroup.availableCPUs)
            #expect(Set(group.pollers.map(\.threadID)).count == group.count)
            #expect(group.pollers.allSatisfy { $0.backendKind == kind })
            #expect(group.backendKind == kind)
        }
    }

    @Test("The CPU count follows the affinity mask")
    func cpuCountIsTheAffinityMask() {
        #expect(PollerGroup.availableCPUs == Int(cpoller_affinity_cpu_count()))
        #expect(PollerGroup.availableCPUs >= 1)
    }

    @Test("A thread count below one is refused with a clear error", arguments: [0, -1, Int.min])
    func nonPositiveThreadCountIsRefused(threads: Int) {
        #expect(throws: PollerError.invalidThreadCount(String(threads))) {
            _ = try PollerGroup(threads: threads, backend: .epoll)
        }
        #expect(PollerError.invalidThreadCount("0").description.contains("1 or more"))
    }

    @Test("More threads than CPUs are clamped to the CPUs, and what was asked is kept")
    func threadCountIsClamped() async throws {
        try await withGroup(.epoll, threads: PollerGroup.availableCPUs + 3) { group in
            #expect(group.count == PollerGroup.availableCPUs)
            #expect(group.requestedThreads == PollerGroup.availableCPUs + 3)
        }
    }

    @Test("POLLER_THREADS is read as a whole number of 1 or more; anything else is an error")
    func threadsFromEnvironment() throws {
        let name = PollerGroup.threadsEnvironmentVariable
        let saved = getenv(name).map { String(cString: $0) }
        defer { if let saved { setenv(name, saved, 1) } else { unsetenv(name) } }
        unsetenv(name)
        #expect(try PollerGroup.threadsFromEnvironment() == nil)
        setenv(name, "", 1)
        #expect(try PollerGroup.threadsFromEnvironment() == nil)
        setenv(name, "3", 1)
        #expect(try PollerGroup.threadsFromEnvironment() == 3)
        for bad in ["0", "-2", "two", "2x", " 2", "99999999999999999999999"] {
            setenv(name, bad, 1)
            #expect(throws: PollerError.invalidThreadCount(bad)) { _ = try PollerGroup.threadsFromEnvironment() }
        }
    }

    @Test(
        "A group whose member cannot start fails as a whole: no thread and no descriptor is left",
        arguments: BackendKind.allCases)
    func memberFailureFailsTheGroup(kind: BackendKind) async throws {
        try skipIfUnavailable(kind)
        try requireTwoCPUs()
        let threadsBefore = threadCount()
        try await checkingDescriptorLeaks {
            var options = Poller.Options()
            options.threadName = "group-test"
            options.hooks.beforeBackendSetup = { name in
                guard name == "group-test-1" else { return nil }
                switch kind {
                case .ioUring:
                    // The real refusal, on this member's thread only: its ring set-up sees EPERM.
                    cpoller_uring_inject_setup_failure(EPERM)
                    return nil
                case .epoll:
                    return .system(call: "epoll_create1", errno: EMFILE)
                }
            }
            do {
                let group = try PollerGroup(threads: 2, backend: kind.choice, options: options)
                group.shutdown()
                Issue.record("the group started although member 1 could not")
            } catch {
                switch kind {
                case .ioUring: #expect("\(error)".contains("EPERM"), "\(error)")
                case .epoll: #expect(error as? PollerError == .system(call: "epoll_create1", errno: EMFILE))
                }
            }
        }
        // The failed member's thread and the started member's thread were both joined.
        #expect(await threadsSettle(atOrBelow: threadsBefore), "threads were left running")
    }

    @Test("Shutting a group down stops every poller and joins every thread", arguments: BackendKind.allCases)
    func shutdownStopsEveryMember(kind: BackendKind) async throws {
        try skipIfUnavailable(kind)
        let threadsBefore = threadCount()
        try await checkingDescriptorLeaks {
            let group = try PollerGroup(threads: 2, backend: kind.choice)
            #expect(threadCount() >= threadsBefore + group.count)
            group.shutdown()
            let pipe = Pipe()
            for poller in group.pollers {
                // EBADF, not EINVAL: the pipe may have been given a number the group just closed.
                #expect(throws: PollError.registrationFailed(errno: EBADF)) { _ = try poller.register(pipe.readFD) }
                #expect(!poller.isPollerDescriptor(pipe.readFD) && !poller.isPollerDescriptor(pipe.writeFD))
            }
            group.shutdown()  // idempotent
        }
        #expect(await threadsSettle(atOrBelow: threadsBefore), "threads were left running")
    }

    @Test("next() hands out the members in turn", arguments: BackendKind.allCases)
    func nextIsRoundRobin(kind: BackendKind) async throws {
        try requireTwoCPUs()
        try await withGroup(kind) { group in
            let picks = (0..<6).map { _ in group.next() }
            for (i, poller) in picks.enumerated() { #expect(poller === picks[i % group.count]) }
            #expect(Set(picks.map(ObjectIdentifier.init)).count == group.count)
        }
    }

    @Test(
        "On a member's thread the group hands out that member, and Poller.current names it",
        arguments: BackendKind.allCases)
    func currentMemberIsPreferred(kind: BackendKind) async throws {
        try requireTwoCPUs()
        try await withGroup(kind) { group in
            #expect(Poller.current == nil, "a test thread is no poller's")
            for member in group.pollers {
                let placed = await Task(executorPreference: member.executor) {
                    (
                        Poller.current === member, (0..<4).allSatisfy { _ in group.poller() === member },
                        cpoller_thread_id() == member.threadID
                    )
                }.value
                #expect(placed.0 && placed.1 && placed.2, "\(placed)")
            }
        }
    }

    @Test(
        "A descriptor's wake-up resumes a task on its own poller's thread, for every member",
        arguments: BackendKind.allCases, DescriptorKind.allCases)
    func wakeUpStaysOnTheOwningMember(kind: BackendKind, descriptor: DescriptorKind) async throws {
        try requireTwoCPUs()
        try await withGroup(kind) { group in
            let fds = Descriptors()
            for member in group.pollers {
                let ends = fds.make(descriptor)
                let pd = try member.register(ends.reader)
                let waiter = Task(executorPreference: member.executor) { () -> (Int, Bool) in
                    let result = await runtime_pollWait(pd, 114)  // 'r'
                    return (result, cpoller_thread_id() == member.threadID)
                }
                _ = await becomesTrue(within: .seconds(5)) { member.parkedWaiterCount == 1 }
                writeBytes(ends.writer)
                let (result, onMember) = await waiter.value
                #expect(result == pollNoError)
                #expect(onMember, "the task resumed off its poller's thread")
                pd.unblock()
                try pd.close()
            }
        }
    }

    @Test(
        "The shared Poller and runtime_pollOpen spread descriptors across the shared group, and Go's descriptor check covers every member")
    func sharedPollerSpreads() throws {
        let group = try PollerGroup.shared()
        let handedOut = try (0..<(2 * group.count)).map { _ in ObjectIdentifier(try Poller.shared()) }
        #expect(Set(handedOut).count == group.count)
        let fds = Descriptors()
        var owners: [ObjectIdentifier] = []
        // Hashed numbers: 8 per member makes "all on one member" a 2^-15 chance for 2 members.
        for _ in 0..<(8 * group.count) {
            let (pd, errno) = runtime_pollOpen(fds.pipe().read)
            guard let pd else {
                Issue.record("runtime_pollOpen failed: \(errno)")
                return
            }
            #expect(group.contains(pd.poller))
            owners.append(ObjectIdentifier(pd.poller))
            runtime_pollUnblock(pd)
            runtime_pollClose(pd)
        }
        #expect(Set(owners).count == group.count)
        for member in group.pollers {
            // A member's wake-up channel is a poller descriptor of the shared group.
            #expect(runtime_isPollServerDescriptor(member.backend.wakeChannel.readFD))
        }
    }
}
