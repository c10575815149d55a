import CPoller
import Glibc
import Testing

@testable import Poller

// Bad input and misuse: every case must end in a documented error (or a documented no-op),
// never a trap, a hang or a leaked descriptor.
//
// Descriptor leaks: the suite is serialized, so its own tests never overlap, but other suites
// run in parallel and open and close descriptors meanwhile. Each test therefore compares
// `openFDCount()` with the count taken before it and, when it is higher, re-samples for a
// while: a real leak keeps the count high, a parallel test's descriptors come and go.

@Suite("Bad input", .serialized)
struct BadInputTests {
    // MARK: Registration

    @Test(
        "registering -1, a closed descriptor, or a number beyond the descriptor limit fails with EBADF",
        arguments: BackendKind.allCases)
    func registerBadDescriptors(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            #expect(registrationError(poller, -1) == .registrationFailed(errno: EBADF))
            #expect(registrationError(poller, Int32.min) == .registrationFailed(errno: EBADF))
            #expect(registrationError(poller, 1_000_000) == .registrationFailed(errno: EBADF))
            #expect(registrationError(poller, Int32.max) == .registrationFailed(errno: EBADF))

            // A closed descriptor. Descriptors are allocated lowest-first, so a number just
            // under RLIMIT_NOFILE stays free after we close it even while other tests open
            // descriptors in parallel.
            let closed = closedHighDescriptor()
            try #require(closed >= 0, "could not dup a descriptor near the limit")
            #expect(registrationError(poller, closed) == .registrationFailed(errno: EBADF))
            // Failures leave nothing registered and the poller usable.
            #expect(poller.openDescriptorCount == 0)
            try expectPollerStillWorks(poller)
        }
    }

    @Test("registering a regular file fails with EPERM", arguments: BackendKind.allCases)
    func registerRegularFile(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            var template = Array("/tmp/poller-badinput-XXXXXX".utf8CString)
            let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            try #require(fd >= 0, "mkstemp failed: errno \(errno)")
            _ = template.withUnsafeBufferPointer { unlink($0.baseAddress!) }
            defer { close(fd) }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            #expect(registrationError(poller, fd) == .registrationFailed(errno: EPERM))
            // Still refused when it has contents (io_uring would call it always ready).
            #expect(writeBytes(fd, count: 16) == 16)
            #expect(registrationError(poller, fd) == .registrationFailed(errno: EPERM))
            #expect(poller.openDescriptorCount == 0)
            try expectPollerStillWorks(poller)
        }
    }

    @Test("registering a directory fails with EPERM", arguments: BackendKind.allCases)
    func registerDirectory(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            let fd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            try #require(fd >= 0, "open(/tmp) failed: errno \(errno)")
            defer { close(fd) }
            #expect(registrationError(poller, fd) == .registrationFailed(errno: EPERM))
            #expect(poller.openDescriptorCount == 0)
            try expectPollerStillWorks(poller)
        }
    }

    /// epoll refuses a file without poll support (here the /dev/null character device) with
    /// EPERM. The io_uring backend only refuses regular files and directories (it checks the
    /// file type with fstat), accepts /dev/null, and its poller thread then spins: the kernel
    /// completes the multishot poll at once without IORING_CQE_F_MORE and the backend re-arms
    /// it immediately, forever. The test expects epoll's answer on both backends and, where
    /// the registration is accepted, at least no busy loop.
    @Test(
        "registering a character device without poll support (/dev/null) fails with EPERM",
        arguments: BackendKind.allCases)
    func registerUnpollableDevice(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            let fd = open("/dev/null", O_RDWR | O_NONBLOCK | O_CLOEXEC)
            try #require(fd >= 0, "open(/dev/null) failed: errno \(errno)")
            defer { close(fd) }
            let pd: PollDescriptor?
            do throws(PollError) {
                pd = try poller.register(fd)
            } catch {
                #expect(error == .registrationFailed(errno: EPERM))
                pd = nil
            }
            #expect(pd == nil, "a descriptor without poll support was accepted")
            if let pd {
                if let uring = poller.backend as? URingBackend {
                    let before = uring.rearmCount
                    try await Task.sleep(for: .milliseconds(50))
                    let rearms = uring.rearmCount - before
                    #expect(rearms < 100, "the poller re-armed the poll \(rearms) times in 50 ms (a busy loop)")
                }
                pd.finish()
            }
            try expectPollerStillWorks(poller)
        }
    }

    @Test("registering the poller's own descriptors fails with EINVAL", arguments: BackendKind.allCases)
    func registerOwnDescriptors(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            let main: Int32
            switch kind {
            case .epoll: main = (poller.backend as! EpollBackend).epollFD
            case .ioUring: main = (poller.backend as! URingBackend).ringFD
            }
            let wake = poller.backend.wakeChannel
            for fd in Set([main, wake.readFD, wake.writeFD]) {
                #expect(poller.isPollerDescriptor(fd))
                #expect(registrationError(poller, fd) == .registrationFailed(errno: EINVAL), "fd \(fd)")
            }
            #expect(poller.openDescriptorCount == 0)
            try expectPollerStillWorks(poller)
        }
    }

    @Test("the poller's self-pipe wake-up descriptors are refused with EINVAL too", arguments: BackendKind.allCases)
    func registerOwnSelfPipe(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind, forcePipeWake: true) { poller in
            let wake = poller.backend.wakeChannel
            try #require(wake.isPipe)
            #expect(wake.readFD != wake.writeFD)
            #expect(registrationError(poller, wake.readFD) == .registrationFailed(errno: EINVAL))
            #expect(registrationError(poller, wake.writeFD) == .registrationFailed(errno: EINVAL))
            try expectPollerStillWorks(poller)
        }
    }

    /// epoll answers EEXIST. The io_uring backend arms a second, independent multishot poll
    /// for the same fd instead (see the report): the test accepts that as long as both
    /// registrations then work and clean up.
    @Test(
        "registering the same descriptor twice fails with EEXIST (epoll); io_uring may accept it, and both then work",
        arguments: BackendKind.allCases)
    func registerTwice(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            let pipe = Pipe()
            let first = try poller.register(pipe.readFD)
            let second: PollDescriptor?
            do throws(PollError) {
                second = try poller.register(pipe.readFD)
            } catch {
                #expect(error == .registrationFailed(errno: EEXIST))
                second = nil
            }
            if kind == .epoll {
                #expect(second == nil, "epoll accepted a duplicate registration")
            }
            if let second {
                #expect(second != first)
                #expect(poller.openDescriptorCount == 2)
                // Both registrations see the readiness.
                writeBytes(pipe.writeFD)
                #expect(await first.boundedOutcome(.read) == .ready)
                #expect(await second.boundedOutcome(.read) == .ready)
                // Closing one leaves the other working.
                first.finish()
                drain(pipe.readFD)
                try await expectReadWaitEndsReady(poller, second, writer: pipe.writeFD)
                second.finish()
            } else {
                // The failed attempt left the first registration intact.
                #expect(poller.openDescriptorCount == 1)
                try await expectReadWaitEndsReady(poller, first, writer: pipe.writeFD)
                first.finish()
                // Once closed, the same fd registers again.
                let again = try poller.register(pipe.readFD)
                again.finish()
            }
        }
    }

    @Test(
        "registering after shutdown fails with EBADF; a descriptor open at shutdown reports closing and still closes",
        arguments: BackendKind.allCases)
    func registerAfterShutdown(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            poller.shutdown()
            #expect(registrationError(poller, pipe.writeFD) == .registrationFailed(errno: EBADF))
            #expect(await pd.boundedOutcome(.read) == .failed(.closing))
            #expect(pd.resetResult(.write) == .closing)
            #expect(pd.closeResult() == nil)
            #expect(pd.closeResult() == .closing)
        }
    }

    // MARK: Modes

    @Test("PollMode(goMode:) is nil for anything but 'r', 'w' and 'r'+'w'")
    func goModes() {
        for mode in [0, 1, -114, 113, 115, 118, 120, 232, 234, Int(UInt8(ascii: "x")), 114 + 1, 114 * 2, Int.max, Int.min] {
            #expect(PollMode(goMode: mode) == nil, "mode \(mode)")
        }
        #expect(PollMode(goMode: Int(UInt8(ascii: "r"))) == .read)
        #expect(PollMode(goMode: Int(UInt8(ascii: "w"))) == .write)
        #expect(PollMode(goMode: Int(UInt8(ascii: "r")) + Int(UInt8(ascii: "w"))) == .readWrite)
    }

    @Test(
        "a wait for read+write or for no valid direction fails with invalidMode without parking; a reset for an invalid mode too",
        arguments: BackendKind.allCases)
    func invalidModes(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            let bad: [PollMode] = [
                .readWrite, PollMode(rawValue: 0), PollMode(rawValue: 4), PollMode(rawValue: 5),
                PollMode(rawValue: 0xFF),
            ]
            for mode in bad {
                let error = await poller.wait(pd.slot, generation: pd.generation, mode: mode, cancellable: true)
                #expect(error == .invalidMode, "wait \(mode)")
                let uncancellable = await poller.wait(
                    pd.slot, generation: pd.generation, mode: mode,
                    cancellable: false)
                #expect(uncancellable == .invalidMode, "uncancellable wait \(mode)")
                #expect(await pd.outcome(mode) == .failed(.invalidMode), "wait(for: \(mode))")
                #expect(pd.blockingResult(mode) == .invalidMode, "waitBlocking \(mode)")
            }
            for raw: UInt8 in [0, 4, 5, 6, 7, 8, 0xFF] {
                #expect(pd.resetResult(PollMode(rawValue: raw)) == .invalidMode, "reset \(raw)")
            }
            #expect(pd.parkAttempts == 0, "an invalid wait took the park path")
            #expect(poller.parkedWaiterCount == 0)
            // The mode check comes first even on a closing descriptor.
            pd.unblock()
            #expect(pd.resetResult(PollMode(rawValue: 4)) == .invalidMode)
            #expect(await pd.outcome(.readWrite) == .failed(.invalidMode))
            #expect(pd.resetResult(.readWrite) == .closing)
            #expect(pd.closeResult() == nil)
        }
    }

    // MARK: Deadlines

    @Test(
        "a Go deadline of Int64.max nanoseconds is the far future: a wait stays pending until unblocked",
        arguments: BackendKind.allCases)
    func deadlineInt64Max(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            pd.setDeadline(goRelative: .max, for: .readWrite)
            #expect(pd.deadlines.read > 0 && pd.deadlines.write > 0, "Int64.max expired or cleared the deadline")
            #expect(pd.resetResult(.readWrite) == nil)
            let reader = startWait(pd, .read)
            let writer = startWait(pd, .write)  // a pipe's read end never becomes writable
            #expect(await waitersParked(poller, 2))
            try await Task.sleep(for: .milliseconds(50))
            #expect(!reader.isFinished && !writer.isFinished, "the Int64.max deadline fired")
            pd.unblock()
            #expect(await reader.outcome() == .failed(.closing))
            #expect(await writer.outcome() == .failed(.closing))
            #expect(pd.closeResult() == nil)
        }
    }

    @Test(
        "a Go deadline of Int64.min nanoseconds has already expired: a wait times out at once, for that direction only",
        arguments: BackendKind.allCases)
    func deadlineInt64Min(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            pd.setDeadline(goRelative: .min, for: .read)
            #expect(await pd.boundedOutcome(.read, within: .seconds(2)) == .failed(.timeout))
            #expect(pd.resetResult(.read) == .timeout)
            #expect(pd.resetResult(.write) == nil, "the read deadline reached the write direction")
            pd.setDeadline(goRelative: .min, for: .write)
            #expect(pd.blockingResult(.write) == .timeout)
            #expect(pd.resetResult(.readWrite) == .timeout)
            // Clearing it (Go's d = 0) makes the wait block again.
            pd.setDeadline(goRelative: 0, for: .readWrite)
            try await expectReadWaitEndsReady(poller, pd, writer: pipe.writeFD)
            pd.finish()
        }
    }

    @Test(
        "a zero or negative Duration expires the deadline at once, for both directions by default",
        arguments: BackendKind.allCases)
    func negativeDurations(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            let durations: [Duration] = [
                .seconds(-5), .zero, .nanoseconds(-1), .seconds(Int64.min),
                .seconds(-1) + .nanoseconds(1),
            ]
            for duration in durations {
                pd.setDeadline(nil)
                #expect(pd.resetResult(.readWrite) == nil)
                pd.setDeadline(in: duration)
                #expect(await pd.boundedOutcome(.read, within: .seconds(2)) == .failed(.timeout), "\(duration)")
                #expect(await pd.boundedOutcome(.write, within: .seconds(2)) == .failed(.timeout), "\(duration)")
                #expect(pd.blockingResult(.read) == .timeout, "\(duration)")
            }
            pd.finish()
        }
    }

    @Test(
        "a ContinuousClock instant in the past (or now) expires the deadline at once, even for a blocked waiter",
        arguments: BackendKind.allCases)
    func pastInstant(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            pd.setDeadline(ContinuousClock.now - .seconds(3600), for: .read)
            #expect(await pd.boundedOutcome(.read, within: .seconds(2)) == .failed(.timeout))
            #expect(pd.resetResult(.write) == nil)
            pd.setDeadline(ContinuousClock.now, for: .write)
            #expect(pd.resetResult(.write) == .timeout)
            pd.setDeadline(nil)
            let waiter = startWait(pd, .read)
            #expect(await waitersParked(poller, 1))
            pd.setDeadline(ContinuousClock.now - .milliseconds(1), for: .read)
            #expect(await waiter.outcome() == .failed(.timeout))
            pd.finish()
        }
    }

    // MARK: Stale handles and close

    @Test(
        "after close, a stale handle's wait and reset fail with closing and its setDeadline, unblock and close do nothing, also once the slot is reused",
        arguments: BackendKind.allCases)
    func staleHandleAfterClose(kind: BackendKind) async throws {
        try await withLeakCheckedPoller(kind) { poller in
            let old = makePipeFDs()
            let stale = try poller.register(old.read)
            stale.finish()
            close(old.read)
            close(old.write)
            try await expectStaleHandleInert(stale)

            // A new registration, likely on the same fd number, takes the freed slot.
            let pipe = Pipe()
            let fresh = try poller.register(pipe.readFD)
            #expect(fresh.slot === stale.slot, "the freed slot was not reused")
            #expect(fresh != stale)
            try await expectStaleHandleInert(stale)
            #expect(poller.openDescriptorCount == 1)
            // The stale handle's deadlines and unblock did not reach the new registration.
            #expect(fresh.resetResult(.readWrite) == nil)
            #expect(fresh.deadlines.read == 0 && fresh.deadlines.write == 0)

            // Nor does it disturb a waiter parked on the new registration.
            let waiter = startWait(fresh, .read)
            #expect(await waitersParked(poller, 1))
            stale.unblock()
            stale.setDeadline(in: .zero)
            stale.setDeadline(goRelative: .min, for: .read)
            #expect(stale.closeResult() == .closing)
            #expect(await stale.boundedOutcome(.read, within: .seconds(2)) == .failed(.closing))
            try await Task.sleep(for: .milliseconds(20))
            #expect(!waiter.isFinished, "the stale handle woke the new registration's waiter")
            writeBytes(pipe.writeFD)
            #expect(await waiter.outcome() == .ready)
            fresh.finish()
            try await expectStaleHandleInert(fresh)
            try await expectStaleHandleInert(stale)
        }
    }

    @Test("a second close throws closing and changes nothing", arguments: BackendKind.allCases)
    func doubleClose(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            pd.unblock()
            #expect(pd.closeResult() == nil)
            #expect(poller.openDescriptorCount == 0)
            #expect(pd.closeResult() == .closing)
            #expect(pd.closeResult() == .closing)
            pd.unblock()
            #expect(pd.closeResult() == .closing)
            #expect(poller.openDescriptorCount == 0)
            // The slot is free exactly once: two new registrations get two distinct slots.
            let other = Pipe()
            let a = try poller.register(pipe.readFD)
            let b = try poller.register(other.readFD)
            #expect(a.slot !== b.slot)
            a.finish()
            b.finish()
        }
    }

    @Test("close without unblock throws notUnblocked and the descriptor keeps working", arguments: BackendKind.allCases)
    func closeWithoutUnblock(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            #expect(pd.closeResult() == .notUnblocked)
            #expect(pd.closeResult() == .notUnblocked)
            #expect(poller.openDescriptorCount == 1)
            let waiter = startWait(pd, .read)
            #expect(await waitersParked(poller, 1))
            #expect(pd.closeResult() == .notUnblocked, "not unblocked comes before waiter parked")
            writeBytes(pipe.writeFD)
            #expect(await waiter.outcome() == .ready)
            pd.setDeadline(in: .zero, for: .write)
            #expect(pd.resetResult(.write) == .timeout)
            #expect(pd.closeResult() == .notUnblocked)
            pd.finish()
        }
    }

    @Test(
        "waitBlocking from a task on the poller's executor fails with wouldBlockPollerThread, for every direction and state",
        arguments: BackendKind.allCases)
    func waitBlockingOnPollerThread(kind: BackendKind) async throws {
        try await withLeakCheckedPipe(kind) { poller, pipe, pd in
            let task = Task(executorPreference: poller.executor) {
                [pd.blockingResult(.read), pd.blockingResult(.write), pd.blockingResult(.read)]
            }
            let (results, timedOut) = await boundedValue(of: task, within: .seconds(5)) { pd.unblock() }
            #expect(!timedOut, "waitBlocking on the poller thread deadlocked")
            #expect(results == [.wouldBlockPollerThread, .wouldBlockPollerThread, .wouldBlockPollerThread])
            // The mode check still comes first.
            let invalid = await Task(executorPreference: poller.executor) { pd.blockingResult(.readWrite) }.value
            #expect(invalid == .invalidMode)
            // The loop is alive: readiness still arrives.
            try await expectReadWaitEndsReady(poller, pd, writer: pipe.writeFD)
            pd.finish()
        }
    }
}

// MARK: Helpers

/// `register` as an error value; a registration that unexpectedly succeeds is closed again.
private func registrationError(_ poller: Poller, _ fd: Int32) -> PollError? {
    do {
        let pd = try poller.register(fd)
        pd.finish()
        return nil
    } catch {
        return error
    }
}

/// A descriptor number near RLIMIT_NOFILE that was open a moment ago and is closed now.
private func closedHighDescriptor() -> Int32 {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return -1 }
    let target = Int32(clamping: min(limit.rlim_cur, 1 << 20)) - 4
    guard target > 3 else { return -1 }
    let pipe = Pipe()
    let fd = fcntl(pipe.readFD, F_DUPFD_CLOEXEC, target)
    guard fd >= 0 else { return -1 }
    close(fd)
    return fd
}

/// Registers a fresh pipe, checks readiness reaches a waiter, and closes everything again.
private func expectPollerStillWorks(_ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let pipe = Pipe()
    let pd = try poller.register(pipe.readFD)
    writeBytes(pipe.writeFD)
    #expect(pd.blockingResult(.read) == nil, "readiness did not arrive", sourceLocation: sourceLocation)
    pd.finish(sourceLocation: sourceLocation)
}

/// Every operation on a closed registration's handle: `.closing`, or nothing at all.
private func expectStaleHandleInert(_ pd: PollDescriptor, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    #expect(await pd.boundedOutcome(.read, within: .seconds(2)) == .failed(.closing), sourceLocation: sourceLocation)
    #expect(await pd.boundedOutcome(.write, within: .seconds(2)) == .failed(.closing), sourceLocation: sourceLocation)
    #expect(pd.blockingResult(.read) == .closing, sourceLocation: sourceLocation)
    for mode: PollMode in [.read, .write, .readWrite] {
        #expect(pd.resetResult(mode) == .closing, sourceLocation: sourceLocation)
    }
    pd.setDeadline(in: .zero)
    pd.setDeadline(in: .seconds(3600), for: .read)
    pd.setDeadline(nil, for: .write)
    pd.setDeadline(goRelative: .max, for: .readWrite)
    pd.setDeadline(goRelative: .min, for: .readWrite)
    pd.unblock()
    pd.unblock()
    #expect(pd.closeResult() == .closing, sourceLocation: sourceLocation)
    #expect(pd.resetResult(.read) == .closing, sourceLocation: sourceLocation)
}
