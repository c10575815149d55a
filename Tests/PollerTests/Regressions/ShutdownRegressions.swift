import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller

// Regressions in stopping a poller (issue 11, item 6). Each test is named after the bug it pins.
//
// These tests make their pollers with `makePoller` or `Poller(backend:options:)`, not
// `withPoller`, also when POLLER_THREADS asks for a group: each is about one poller's own
// shutdown (its thread, its executor, its slots, its address space), which a group only
// repeats per member.

extension NetpollSuites {
    @Suite("Regressions: shutdown") struct ShutdownRegressions {
        /// Bug: a second `shutdown()` from a task on the poller's executor parked the poller
        /// thread on its own exit, so the loop never ended and the task never returned.
        @Test(
            "a second shutdown from a task on the poller's executor returns instead of parking the poller thread",
            arguments: BackendKind.allCases)
        func secondShutdownOnExecutorReturns(kind: BackendKind) async throws {
            let poller = try makePoller(kind)
            let task = Task(executorPreference: poller.executor) { () -> Bool in
                poller.shutdown()
                poller.shutdown()
                return true
            }
            let returned = await abandoningValue(of: task, within: .seconds(5))
            #expect(returned == true, "shutdown re-entered on the poller thread did not return")
            guard returned == true else { return }
            // From another thread, a later call waits for the stop and returns.
            let later = BlockingThread { poller.shutdown() }
            #expect(await later.finish(onTimeout: {}), "shutdown from another thread did not return")
        }

        /// Bug: a shutdown started on the poller thread returned without joining the thread,
        /// and nothing else joined it: every such poller left its thread's stack mapped.
        @Test(
            "a shutdown started on the poller's executor releases the poller thread's stack",
            arguments: BackendKind.allCases)
        func shutdownOnExecutorReleasesThread(kind: BackendKind) async throws {
            try skipIfUnavailable(kind)
            let count = 48
            // The same number of pollers stopped from outside (joined) first: whatever else
            // grows the address space (a malloc arena for the new threads, caches) is charged
            // to this control run, not to the one under test.
            let control = try await addressSpaceGrowth(pollers: count, kind: kind, stopOnExecutor: false)
            let underTest = try await addressSpaceGrowth(pollers: count, kind: kind, stopOnExecutor: true)
            let stack = defaultThreadStackSize()
            // Unjoined, each ended thread keeps its whole stack: count x stack (384 MiB with
            // 8 MiB stacks). Released, glibc caches at most ~40 MiB of stacks.
            #expect(
                underTest - control < count * stack / 2,
                "address space grew \(underTest >> 20) MiB (control \(control >> 20) MiB, stack \(stack >> 20) MiB)")
        }

        /// Bug: `register` racing `shutdown` could open its slot just after shutdown had
        /// unblocked every open slot, and still reach the backend before it was closed: it
        /// returned a descriptor no poller served, and a wait on it parked forever.
        @Test(
            "a register racing shutdown fails or is unblocked, never left without a poller",
            arguments: BackendKind.allCases)
        func registerRacingShutdown(kind: BackendKind) async throws {
            try skipIfUnavailable(kind)
            let inRegister = ParkerBox()
            let shutdownReached = ParkerBox()
            let registerReturned = ParkerBox()
            var options = Poller.Options()
            options.threadName = "poller-test"
            // register: past its shutdown check, it waits until shutdown is under way on the
            // poller thread; the poller thread then waits until register has returned.
            options.hooks.registerAfterShutdownCheck = {
                inRegister.unpark()
                _ = shutdownReached.park(timeoutNanos: 5_000_000_000)
            }
            options.hooks.shutdownBeforeSweep = {
                shutdownReached.unpark()
                _ = registerReturned.park(timeoutNanos: 5_000_000_000)
            }
            let poller = try Poller(backend: kind.choice, options: options)
            let (r, w) = makePipeFDs()
            defer {
                close(r)
                close(w)
            }
            let result = Mutex<Result<PollDescriptor, PollError>?>(nil)
            let registering = BlockingThread {
                let outcome: Result<PollDescriptor, PollError>
                do throws(PollError) {
                    outcome = .success(try poller.register(r))
                } catch {
                    outcome = .failure(error)
                }
                result.withLockAnnotated { $0 = outcome }
                registerReturned.unpark()
            }
            #expect(inRegister.park(timeoutNanos: 5_000_000_000), "register never reached its hook")
            let stopping = BlockingThread { poller.shutdown() }
            #expect(await registering.finish(onTimeout: {}), "register did not return")
            #expect(await stopping.finish(onTimeout: {}), "shutdown did not return")
            switch result.withLockAnnotated({ $0 }) {
            case .failure(let error)?:
                #expect(error == .registrationFailed(errno: EBADF))
            case .success(let pd)?:
                // Accepted before the backend closed: the sweep must have marked it closing.
                let outcome = await pd.boundedOutcome(.read)
                #expect(outcome == .failed(.closing), "a wait on the late registration ended \(outcome)")
                pd.unblock()
                _ = pd.closeResult()
            case nil:
                Issue.record("register produced no result")
            }
        }
    }
}

/// How much the process's address space (VmSize) grows while `pollers` pollers are started
/// and stopped one after another, each stopped from a task on its own executor or from here.
private func addressSpaceGrowth(pollers: Int, kind: BackendKind, stopOnExecutor: Bool) async throws -> Int {
    let before = virtualMemorySize()
    for _ in 0..<pollers {
        let poller = try makePoller(kind)
        if stopOnExecutor {
            let task = Task(executorPreference: poller.executor) { poller.shutdown() }
            _ = await abandoningValue(of: task, within: .seconds(5))
        }
        // Returns once the loop has ended (joining the thread when it was not stopped above).
        poller.shutdown()
    }
    // An ended thread's last steps (releasing its stack) follow the loop's end.
    try await Task.sleep(for: .milliseconds(100))
    return virtualMemorySize() - before
}

/// VmSize of this process in bytes.
private func virtualMemorySize() -> Int {
    let fd = open("/proc/self/status", O_RDONLY)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 16384)
    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard n > 0 else { return 0 }
    for line in String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n")
    where line.hasPrefix("VmSize:") {
        return (Int(String(line.filter(\.isNumber))) ?? 0) * 1024
    }
    return 0
}

/// The stack size new threads get by default (RLIMIT_STACK at start-up, for glibc).
private func defaultThreadStackSize() -> Int {
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    var size = 0
    pthread_attr_getstacksize(&attr, &size)
    return size
}
