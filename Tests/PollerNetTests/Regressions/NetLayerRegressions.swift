import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller
@testable import PollerNet

extension PollerNetTests {
    /// Regressions from issue 11 (net layer), one test per behaviour. Nested in
    /// ``PollerNetTests`` so they run serialized with the other net-layer tests (each counts
    /// the process's descriptors, and some install process-wide test hooks).
    @Suite("Regressions: net layer")
    struct NetLayerRegressions {
        // MARK: 3. close() waits for the last reference

        @Test(
            "close returns, closes the descriptor and frees its slot when the last reference is dropped by a writer that had not yet queued for the write lock",
            arguments: BackendKind.allCases)
        func closeResumedByUnqueuedWriter(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                // Writer A takes the write lock and parks in the poller on a full buffer; writer
                // B is past beginLock (one reference) and held before queueing.
                let writers = try await closeWhileOperationHeldBeforeQueue(client, .write) {
                    (try await startBlockedWrite(client, poller), Task { await client.writeReportingProgress([2]) })
                }
                guard let (writerA, writerB) = writers else { return }
                let a = await writerA.value
                #expect(a.error == .closed && a.bytesWritten > 0)
                #expect(await writerB.value == WriteResult(bytesWritten: 0, error: .closed))
                #expect(parkedWaiters(poller) == 0)
                // The server end and the listener remain; the client's slot is free.
                #expect(registeredDescriptors(poller) == 2)
            }
        }

        // MARK: 9. SIGPIPE from write(2) on non-socket descriptors

        @Test(
            "a write to a pipe whose reader has closed returns EPIPE instead of killing the process with SIGPIPE",
            arguments: BackendKind.allCases)
        func pipeWriteAfterReaderClosed(kind: BackendKind) async throws {
            // SIGPIPE's default action kills the process: without the fix this test run dies
            // here instead of failing politely.
            let previous = signal(SIGPIPE, SIG_DFL)
            defer { signal(SIGPIPE, previous) }
            try await withNetPoller(kind) { poller in
                var fds: [Int32] = [-1, -1]
                try #require(pipe(&fds) == 0)
                Glibc.close(fds[0])
                let writer = try NetFD(adopting: fds[1], poller: poller, isStream: true, isSocket: false)
                let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 3, alignment: 1)
                defer { bytes.deallocate() }
                bytes.initializeMemory(as: UInt8.self, repeating: 7)
                for _ in 0..<3 {
                    let result = await writer.write(UnsafeRawBufferPointer(bytes))
                    #expect(result == WriteResult(bytesWritten: 0, error: .system(call: "write", errno: EPIPE)))
                }
                #expect(!sigpipePending(), "a SIGPIPE was left pending")
                try await writer.close()
            }
        }

        @Test("masking SIGPIPE around write(2) leaves the thread's signal mask, and a SIGPIPE the caller already had pending, as they were")
        func pipeWriteLeavesSignalStateAlone() throws {
            let previous = signal(SIGPIPE, SIG_DFL)
            defer { signal(SIGPIPE, previous) }
            var fds: [Int32] = [-1, -1]
            try #require(pipe(&fds) == 0)
            Glibc.close(fds[0])
            defer { Glibc.close(fds[1]) }
            var byte: UInt8 = 1
            // No suspension point below: all of it runs on this thread.
            #expect(!sigpipeBlocked())
            #expect(writeWithoutSIGPIPE(fds[1], &byte, 1) == -1 && errno == EPIPE)
            #expect(!sigpipeBlocked(), "the thread's mask was not restored")
            #expect(!sigpipePending())

            // The caller blocks SIGPIPE and has one pending: it must survive the write.
            var sigpipe = sigset_t()
            sigemptyset(&sigpipe)
            sigaddset(&sigpipe, SIGPIPE)
            var saved = sigset_t()
            pthread_sigmask(SIG_BLOCK, &sigpipe, &saved)
            raise(SIGPIPE)
            #expect(sigpipePending())
            #expect(writeWithoutSIGPIPE(fds[1], &byte, 1) == -1 && errno == EPIPE)
            #expect(sigpipeBlocked(), "the caller's blocked SIGPIPE was unblocked")
            #expect(sigpipePending(), "the caller's pending SIGPIPE was consumed")
            var zero = timespec(tv_sec: 0, tv_nsec: 0)
            _ = sigtimedwait(&sigpipe, nil, &zero)
            pthread_sigmask(SIG_SETMASK, &saved, nil)
        }

        // MARK: 10. Reads of nothing after close; writes claiming too much

        @Test(
            "read(maxBytes: 0) on a closed connection throws closed, as a read into an empty buffer does, and returns an empty array while open",
            arguments: BackendKind.allCases)
        func emptyReadAfterClose(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let client = pair.client
                #expect(try await client.read(maxBytes: 0) == [])
                #expect(try await client.read(maxBytes: -1) == [])
                try await client.close()
                await expectNetError(.closed) { () async throws(NetError) in try await client.read(maxBytes: 0) }
                await expectNetError(.closed) { () async throws(NetError) in try await client.read(maxBytes: -1) }
                await expectNetError(.closed) { () async throws(NetError) in
                    try await client.read(into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
                }
            }
        }

        @Test(
            "a write call claiming more bytes than it was given fails the write with EIO and never counts past the buffer",
            arguments: BackendKind.allCases)
        func writeClaimingTooMuch(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                // The first call takes one byte; the second claims five more than it was given.
                let (result, calls) = await writeWithInjectedCalls(pair) { call, count in call == 1 ? 1 : count + 5 }
                #expect(result == WriteResult(bytesWritten: 1, error: .system(call: "send", errno: EIO)))
                #expect(calls == 2)
            }
        }

        // MARK: 11. TerminationSignal

        @Test("TerminationSignal.install throws EMFILE when the pipe cannot be created, and changes no signal handler")
        func terminationInstallFailure() throws {
            TerminationSignal.uninstallForTesting()
            let before = signalHandler(SIGTERM)
            var limit = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            let saved = limit
            // No descriptor number is free below the limit: pipe2 fails with EMFILE.
            limit.rlim_cur = 0
            try #require(setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0)
            let error: NetError?
            do {
                try TerminationSignal.install()
                error = nil
            } catch let e {
                error = e
            }
            var restore = saved
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &restore)
            defer { TerminationSignal.uninstallForTesting() }
            #expect(error == .system(call: "pipe2", errno: EMFILE))
            #expect(signalHandler(SIGTERM) == before, "a handler was installed although install threw")
            #expect(TerminationSignal.writeFDForTesting == -1)
        }

        @Test("TerminationSignal's pipe is close-on-exec and non-blocking from the start")
        func terminationPipeFlags() throws {
            try withFreshTerminationSignal { fd in
                #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
                #expect(fcntl(fd, F_GETFL) & O_NONBLOCK != 0)
            }
        }

        @Test(
            "a second concurrent TerminationSignal.wait is rejected with EBUSY, and the first still returns on SIGTERM",
            arguments: BackendKind.allCases)
        func terminationSecondWaiter(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                TerminationSignal.uninstallForTesting()
                try TerminationSignal.install()
                defer { TerminationSignal.uninstallForTesting() }
                let first = Task { await netError { () async throws(NetError) in try await TerminationSignal.wait(poller: poller) } }
                try await waitUntilParked(poller)
                let secondDone = Flag()
                let second = Task {
                    defer { secondDone.set() }
                    return await netError { () async throws(NetError) in try await TerminationSignal.wait(poller: poller) }
                }
                if await waitUntil(seconds: 2, { secondDone.isSet }) {
                    #expect(await second.value == .system(call: "TerminationSignal.wait", errno: EBUSY))
                } else {
                    Issue.record("a second wait parked instead of being rejected")
                    second.cancel()
                    _ = await second.value
                }
                raiseUnblocked(SIGTERM)
                #expect(await first.value == nil)
            }
        }

        @Test(
            "TerminationSignal.wait reports errors as they are: not installed, cancelled, poller shut down",
            arguments: BackendKind.allCases)
        func terminationWaitErrors(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                TerminationSignal.uninstallForTesting()
                await expectNetError(.system(call: "TerminationSignal.wait", errno: EBADF)) { () async throws(NetError) in
                    try await TerminationSignal.wait(poller: poller)
                }
                try TerminationSignal.install()
                defer { TerminationSignal.uninstallForTesting() }
                let cancelled = Task { await netError { () async throws(NetError) in try await TerminationSignal.wait(poller: poller) } }
                try await waitUntilParked(poller)
                cancelled.cancel()
                #expect(await cancelled.value == .cancelled)
                let interrupted = Task { await netError { () async throws(NetError) in try await TerminationSignal.wait(poller: poller) } }
                try await waitUntilParked(poller)
                poller.shutdown()
                #expect(await interrupted.value == .closed)
            }
        }

        @Test("the termination signal handler leaves errno as the interrupted code had it")
        func terminationHandlerPreservesErrno() throws {
            try withFreshTerminationSignal { fd in
                // Fill the pipe, so that the handler's write fails with EAGAIN and sets errno.
                let block = [UInt8](repeating: 1, count: 4096)
                while write(fd, block, block.count) > 0 {}
                var byte: UInt8 = 1
                while write(fd, &byte, 1) > 0 {}
                try #require(errno == EAGAIN)
                // raise delivers to this thread before it returns, and leaves errno alone itself.
                let after = raiseUnblocked(SIGTERM, errnoBefore: ERANGE)
                #expect(after == ERANGE, "errno changed to \(after) across the signal handler")
            }
        }
    }
}

/// Installs TerminationSignal afresh, runs `body` with the write end of its pipe, and
/// uninstalls it again.
private func withFreshTerminationSignal(_ body: (Int32) throws -> Void) throws {
    TerminationSignal.uninstallForTesting()
    try TerminationSignal.install()
    defer { TerminationSignal.uninstallForTesting() }
    try body(TerminationSignal.writeFDForTesting)
}

/// Raises `signal` in this thread with it unblocked for the duration, and returns errno as
/// it is right after the handler ran (set to `errnoBefore` just before raising).
///
/// Test tasks run on Dispatch's worker threads, which block SIGTERM and SIGINT: a plain
/// raise there would leave the signal pending on the thread, never handled.
@discardableResult
func raiseUnblocked(_ signal: Int32, errnoBefore: Int32 = 0) -> Int32 {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, signal)
    var saved = sigset_t()
    pthread_sigmask(SIG_UNBLOCK, &set, &saved)
    errno = errnoBefore
    raise(signal)
    let after = errno
    pthread_sigmask(SIG_SETMASK, &saved, nil)
    return after
}

/// The handler address installed for `signal` (SIG_DFL is nil).
func signalHandler(_ signal: Int32) -> UnsafeRawPointer? {
    var current = sigaction()
    sigaction(signal, nil, &current)
    return unsafeBitCast(current.__sigaction_handler.sa_handler, to: UnsafeRawPointer?.self)
}

/// Whether SIGPIPE is pending for this thread or the process.
func sigpipePending() -> Bool {
    var pending = sigset_t()
    sigemptyset(&pending)
    sigpending(&pending)
    return sigismember(&pending, SIGPIPE) == 1
}

/// Whether SIGPIPE is blocked in this thread's mask.
func sigpipeBlocked() -> Bool {
    var mask = sigset_t()
    pthread_sigmask(SIG_SETMASK, nil, &mask)
    return sigismember(&mask, SIGPIPE) == 1
}

// MARK: - Helpers

/// Writes `[1, 2, 3, 4]` on `pair.client` with its write system calls answered by `answer`
/// (given the call's number, from 1, and the byte count asked for; nil makes the real call).
/// Returns the write's result and the number of calls made.
func writeWithInjectedCalls(
    _ pair: TCPPair, _ answer: @escaping @Sendable (_ call: Int, _ count: Int) -> Int?
) async -> (WriteResult, calls: Int) {
    let fd = pair.client.netFD.fd
    let calls = Counter()
    var hooks = NetTestHooks.Hooks()
    hooks.writeCall = { target, count in target == fd ? answer(calls.increment(), count) : nil }
    let result = await NetTestHooks.with(hooks) { await pair.client.writeReportingProgress([1, 2, 3, 4]) }
    return (result, calls.value)
}

/// Closes `connection` while an operation in `direction` holds a reference on its way to the
/// lock queue. `startOperations` starts an operation that takes the direction's lock and parks
/// in the poller, then a second one, which the test hook holds just before it queues. Close
/// fails the first (which drops its reference) and drops its own: the second's is then the
/// last one. Once close waits for it alone, `whileClosing` runs with a flag telling whether
/// close has returned; then the second operation is let go. Checks that close then returns
/// without error and has closed the descriptor, and returns what `startOperations` returned
/// (nil, with an issue recorded, if close never returned).
func closeWhileOperationHeldBeforeQueue<T: Sendable>(
    _ connection: Connection, _ direction: FDMutex.Direction,
    startOperations: () async throws -> T,
    whileClosing: (_ closeReturned: Flag) async -> Void = { _ in }
) async throws -> T? {
    let fdMutex = connection.netFD.fdMutex
    let fd = connection.netFD.fd
    let held = Flag()
    let release = Gate()
    var hooks = NetTestHooks.Hooks()
    hooks.beforeLockQueue = { mutex, heldDirection in
        guard mutex === fdMutex, heldDirection == direction else { return }
        held.set()
        await release.wait()
    }
    return try await NetTestHooks.with(hooks) {
        let operations = try await startOperations()
        #expect(await waitUntil { held.isSet }, "the second operation never reached the lock queue")
        let closeReturned = Flag()
        let closer = Task { () async -> NetError? in
            defer { closeReturned.set() }
            return await netError { () async throws(NetError) in try await connection.close() }
        }
        #expect(
            await waitUntil {
                let s = fdMutex.snapshot
                return s.closing && s.closeWaiting && s.references == 1
            }, "close never came to wait for the held operation's reference: \(fdMutex.snapshot)")
        await whileClosing(closeReturned)
        release.open()
        // The only time bound: to report a hang instead of hanging.
        guard await waitUntil(seconds: 5, { closeReturned.isSet }) else {
            Issue.record("close() never returned: \(fdMutex.snapshot)")
            return nil
        }
        #expect(await closer.value == nil, "close() threw")
        #expect(fcntl(fd, F_GETFD) == -1 && errno == EBADF, "the descriptor is still open")
        return operations
    }
}

/// A flag set once, read from any task.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// A counter shared between tasks.
final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    /// Adds one; returns the new value.
    func increment() -> Int { count.add(1, ordering: .sequentiallyConsistent).newValue }
    var value: Int { count.load(ordering: .sequentiallyConsistent) }
}

/// A one-shot gate: ``wait()`` suspends until ``open()`` (and returns at once after it).
final class Gate: Sendable {
    private struct State {
        var isOpen = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLockAnnotated { s in
                if s.isOpen { return true }
                s.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLockAnnotated { s in
            s.isOpen = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// Polls `condition` every 2 ms until it holds (true) or `seconds` pass (false).
func waitUntil(seconds: Int = 5, _ condition: () -> Bool) async -> Bool {
    let limit = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        if ContinuousClock.now > limit { return false }
        await sleep(ms: 2)
    }
    return true
}
