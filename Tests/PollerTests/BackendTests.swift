import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller

// Backend-layer tests: each backend driven directly, as the poller thread drives it, against
// real kernel readiness. Every test is synchronous, so its body runs on one thread: an
// URingBackend may only be polled (and used on the fast path) by the thread that created it.
// Other threads appear only where a behaviour needs them (wake-ups), started with
// cpoller_thread_start and joined before the test returns.
//
// Early returns: the contract lets `poll` return before its timeout with no events (EINTR, as
// Go's netpoll does), and it happens here without any signal: closing an io_uring ring makes
// the kernel queue task work (TWA_SIGNAL) for the ring's creator thread some milliseconds
// later, which interrupts that thread's next blocking wait. Swift Testing reuses threads
// across test cases, so a test case may run on a thread that owned a ring a moment ago.
// Hence tests that expect an event poll until it arrives (within a budget), tests that expect
// silence poll for the whole period, and tests that measure how long a wait takes run the
// whole backend life on a thread of their own (`onFreshThread`) and assert on the results.
//
// Serialized: several tests measure time (timeouts, wake-ups) or count descriptors, which
// parallel test cases on a shared two-core machine would disturb.
@Suite("Backends", .serialized)
struct BackendTests {

    // MARK: Readiness

    @Test(
        "A descriptor's read side is reported readable when its peer writes",
        arguments: BackendKind.allCases, DescriptorKind.allCases)
    func readReadiness(kind: BackendKind, descriptor: DescriptorKind) throws {
        try withIdleReader(kind, descriptor) { backend, _, ends, token in
            #expect(writeBytes(ends.writer, count: 3) == 3)
            let events = nextEvents(backend)
            #expect(events.map(\.pollToken) == [token])
            #expect(events.allSatisfy { $0.isReadable && !$0.isHangup && !$0.isError })
            #expect(drain(ends.reader) == 3)
        }
    }

    @Test(
        "A descriptor's write side is reported writable, and again once a full buffer is drained",
        arguments: BackendKind.allCases, DescriptorKind.allCases)
    func writeReadiness(kind: BackendKind, descriptor: DescriptorKind) throws {
        try withDescriptors(kind, descriptor) { backend, _, ends, token in
            withRegistration(backend, fd: ends.writer, token: token) {
                // Writable at registration (an empty pipe, a connected socket).
                let first = nextEvents(backend)
                #expect(first.map(\.pollToken) == [token])
                #expect(first.allSatisfy { $0.isWritable && !$0.isReadable && !$0.isError })

                // Fill it: no space, no new edge.
                let filled = fillUntilBlocked(ends.writer)
                #expect(filled > 0)
                #expect(eventsWithin(backend, 20 * ms).isEmpty)

                // Space again: a new writable edge.
                #expect(drain(ends.reader) == filled)
                let again = collect(backend, budgetNanos: 2 * sec) { events in events.contains { $0.isWritable } }
                #expect(again.contains { $0.pollToken == token && $0.isWritable })
                #expect(again.allSatisfy { $0.pollToken == token })
                if descriptor == .pipe {
                    // A pipe reports the new space as exactly one writable event.
                    #expect(again.map(\.pollToken) == [token])
                    #expect(again.allSatisfy { $0.isWritable })
                }
            }
        }
    }

    @Test(
        "Edge-triggered: one notification per edge and none while nothing changes",
        arguments: BackendKind.allCases, DescriptorKind.allCases)
    func edgeTriggered(kind: BackendKind, descriptor: DescriptorKind) throws {
        try withIdleReader(kind, descriptor) { backend, _, ends, token in
            for round in 1...3 {
                // New data (the reader is deliberately never drained): exactly one notification.
                #expect(writeBytes(ends.writer) == 1)
                let events = nextEvents(backend)
                #expect(events.map(\.pollToken) == [token], "round \(round)")
                #expect(events.allSatisfy { $0.isReadable }, "round \(round)")
                // Still readable, but nothing changed: no further notification, however often asked.
                for _ in 0..<3 {
                    #expect(pollEvents(backend, timeoutNanos: 0).isEmpty, "round \(round)")
                }
                #expect(eventsWithin(backend, 20 * ms).isEmpty, "round \(round)")
            }
            #expect(drain(ends.reader) == 3)
        }
    }

    @Test(
        "Readiness present before registration is reported",
        arguments: BackendKind.allCases, DescriptorKind.allCases)
    func readinessBeforeRegistration(kind: BackendKind, descriptor: DescriptorKind) throws {
        try withDescriptors(kind, descriptor) { backend, _, ends, token in
            #expect(writeBytes(ends.writer, count: 4) == 4)
            withRegistration(backend, fd: ends.reader, token: token) {
                let events = nextEvents(backend)
                #expect(events.map(\.pollToken) == [token])
                #expect(events.allSatisfy { $0.isReadable })
                #expect(drain(ends.reader) == 4)
            }
        }
    }

    @Test(
        "A peer's close is seen as readable and hangup, and a read returns EOF",
        arguments: BackendKind.allCases, DescriptorKind.allCases)
    func peerClose(kind: BackendKind, descriptor: DescriptorKind) throws {
        try withIdleReader(kind, descriptor) { backend, fds, ends, token in
            // The peer is closed mid-test; Descriptors closes nothing twice.
            fds.close(ends.writer)
            let events = collect(backend, budgetNanos: 2 * sec) { events in events.contains { $0.isHangup } }
            #expect(!events.isEmpty)
            #expect(events.allSatisfy { $0.pollToken == token })
            #expect(events.contains { $0.isReadable && $0.isHangup })
            #expect(events.allSatisfy { !$0.isError })

            var byte: UInt8 = 0
            #expect(read(ends.reader, &byte, 1) == 0, "EOF")
        }
    }

    // MARK: Waiting and waking

    @Test("A wake from another thread ends a blocked wait", arguments: BackendKind.allCases)
    func wakeEndsBlockedWait(kind: BackendKind) throws {
        let result = try onFreshBackend(kind) { backend throws(PollerError) -> WakeMeasurement in
            return measureWake(backend)
        }
        expectWakeEndedWait(result)
    }

    @Test("A wait with a timeout returns after the timeout with no events", arguments: BackendKind.allCases)
    func timeoutIsHonoured(kind: BackendKind) throws {
        let timeouts = [20 * ms, 5 * ms, 20 * ms]
        let results = try onFreshBackend(kind) { backend throws(PollerError) -> [(events: Int, elapsed: Int64)] in
            // A registered, idle descriptor: the wait has something to watch and nothing to report.
            let pipe = Pipe()
            let token = PollToken(slot: 7, generation: 1)
            precondition(backend.register(fd: pipe.readFD, token: token) == 0)
            defer { _ = backend.deregister(fd: pipe.readFD, token: token) }
            return timeouts.map { timeout in
                let start = cpoller_now_ns()
                let n = pollEvents(backend, timeoutNanos: timeout).count
                return (n, cpoller_now_ns() - start)
            }
        }
        for (timeout, result) in zip(timeouts, results) {
            #expect(result.events == 0)
            // Never early. 1 ms slack for where the clock is read; a timespec wait never returns
            // early and epoll_wait's millisecond fallback rounds up.
            #expect(result.elapsed >= timeout - 1 * ms, "a \(timeout) ns wait returned after \(result.elapsed) ns")
            #expect(result.elapsed < timeout + 1 * sec, "a \(timeout) ns wait returned after \(result.elapsed) ns")
        }
    }

    @Test(
        "A 50 µs timeout returns in well under a millisecond, not rounded to zero or up to a tick",
        arguments: BackendKind.allCases)
    func shortTimeout(kind: BackendKind) throws {
        let results = try onFreshBackend(kind) { backend throws(PollerError) -> [(events: Int, elapsed: Int64)] in
            // The first poll of a ring submits the wake-up channel's request; keep it out of the
            // measurement.
            _ = pollEvents(backend, timeoutNanos: 0)
            return (0..<5).map { _ in
                let start = cpoller_now_ns()
                let n = pollEvents(backend, timeoutNanos: 50 * us).count
                return (n, cpoller_now_ns() - start)
            }
        }
        #expect(results.allSatisfy { $0.events == 0 })
        // The best of five, so one preemption on a shared machine does not fail the test.
        let best = results.map(\.elapsed).min() ?? .max
        #expect(best < 5 * ms, "a 50 µs wait took at best \(best) ns")
        if EpollBackend.WaitCall.usesPwait2 || kind == .ioUring {
            // Nanosecond timeouts: a 50 µs wait really waits (it is not made "do not block").
            #expect(best >= 45 * us, "a 50 µs wait returned after \(best) ns")
        }
    }

    @Test("Concurrent wakes coalesce into one write, and one poll drains it", arguments: BackendKind.allCases)
    func concurrentWakesCoalesce(kind: BackendKind) throws {
        struct Result: Sendable {
            var writesBefore = -1, writesAfterStorm = -1, writesAfterNextWake = -1
            var stormPoll: (events: Int, elapsed: Int64) = (-1, -1)
            var drainedPoll: (events: Int, elapsed: Int64) = (-1, -1)
            var nextWakePoll: (events: Int, elapsed: Int64) = (-1, -1)
        }
        let r = try onFreshBackend(kind) { backend throws(PollerError) -> Result in
            var r = Result()
            r.writesBefore = backend.wakeChannel.writes.load(ordering: .relaxed)
            // 4 threads x 250 wakes while nobody polls.
            let threads = (0..<4).map { _ in
                startThread { for _ in 0..<250 { backend.wake() } }
            }
            threads.forEach(joinThread)
            r.writesAfterStorm = backend.wakeChannel.writes.load(ordering: .relaxed)
            // One poll consumes them all; the next wait runs to its timeout.
            r.stormPoll = timedPoll(backend, timeoutNanos: 2 * sec)
            r.drainedPoll = timedPoll(backend, timeoutNanos: 10 * ms)
            // The drain re-opened the channel: the next wake writes again.
            backend.wake()
            backend.wake()
            r.writesAfterNextWake = backend.wakeChannel.writes.load(ordering: .relaxed)
            r.nextWakePoll = timedPoll(backend, timeoutNanos: 2 * sec)
            return r
        }
        #expect(r.writesBefore == 0)
        #expect(r.writesAfterStorm == 1, "1000 wakes made \(r.writesAfterStorm) writes")
        #expect(r.stormPoll.events == 0, "a wake is not an event")
        #expect(r.stormPoll.elapsed < 1 * sec, "the pending wake did not end the wait")
        #expect(r.drainedPoll.events == 0)
        #expect(r.drainedPoll.elapsed >= 9 * ms, "a drained wake still ended the wait (\(r.drainedPoll.elapsed) ns)")
        #expect(r.writesAfterNextWake == 2)
        #expect(r.nextWakePoll.events == 0)
        #expect(r.nextWakePoll.elapsed < 1 * sec, "a wake after a drain did not end the wait")
    }

    @Test("The self-pipe wake-up channel works where eventfd cannot be created", arguments: BackendKind.allCases)
    func selfPipeFallback(kind: BackendKind) throws {
        try skipIfUnavailable(kind)
        struct Result: Sendable {
            var isPipe = false, distinctFDs = false, ownsBoth = false, restoredIsPipe = true
            var wake = WakeMeasurement()
        }
        let r = try onFreshThread { () throws(PollerError) -> Result in
            var r = Result()
            let backend: any PollerBackend
            do {
                // Thread-local: only this thread's set-ups see the failure.
                cpoller_wake_inject_eventfd_failure(1)
                defer { cpoller_wake_inject_eventfd_failure(0) }
                backend = try kind.makeBackend()
            }
            defer { backend.shutdown() }
            let channel = backend.wakeChannel
            r.isPipe = channel.isPipe
            r.distinctFDs = channel.readFD != channel.writeFD
            r.ownsBoth = backend.isPollerDescriptor(channel.readFD) && backend.isPollerDescriptor(channel.writeFD)
            r.wake = measureWake(backend)
            // The injection was restored: the next channel on this thread is an eventfd again.
            let normal = try WakeChannel()
            r.restoredIsPipe = normal.isPipe
            normal.close()
            return r
        }
        #expect(r.isPipe)
        #expect(r.distinctFDs)
        #expect(r.ownsBoth)
        expectWakeEndedWait(r.wake)
        #expect(!r.restoredIsPipe)
    }

    // MARK: Registration lifetime

    @Test("After deregistration no event arrives", arguments: BackendKind.allCases)
    func noEventAfterDeregistration(kind: BackendKind) throws {
        try withBackend(kind) { backend in
            let pipe = Pipe()
            let pair = SocketPair()
            let pipeToken = PollToken(slot: 7, generation: 1)
            let socketToken = PollToken(slot: 8, generation: 1)
            #expect(backend.register(fd: pipe.readFD, token: pipeToken) == 0)
            #expect(backend.register(fd: pair.a, token: socketToken) == 0)
            // Take the socket's initial writable event while both are registered.
            _ = collect(backend, budgetNanos: 2 * sec) { events in events.contains { $0.pollToken == socketToken } }

            #expect(backend.deregister(fd: pipe.readFD, token: pipeToken) == 0)
            #expect(backend.deregister(fd: pair.a, token: socketToken) == 0)
            #expect(writeBytes(pipe.writeFD) == 1)
            #expect(writeBytes(pair.b) == 1)
            _ = shutdown(pair.b, Int32(SHUT_RDWR))
            let events = eventsWithin(backend, 50 * ms)
            #expect(events.isEmpty, "events after deregistration: \(events.map { describe($0) })")
        }
    }

    @Test(
        "Close then reuse of the same fd number never delivers an event to the old registration",
        arguments: BackendKind.allCases)
    func fdReuseKeepsRegistrationsApart(kind: BackendKind) throws {
        try withBackend(kind) { backend in
            let fds = Descriptors()
            let (oldRead, oldWrite) = fds.pipe()
            let oldToken = PollToken(slot: 7, generation: 1)
            #expect(backend.register(fd: oldRead, token: oldToken) == 0)
            #expect(eventsWithin(backend, 10 * ms).isEmpty)
            #expect(backend.deregister(fd: oldRead, token: oldToken) == 0)

            // Close the old read end and give its number to a new pipe. dup2 does both in one step,
            // so no test running in parallel can take the number in between.
            let (newRead, newWrite) = fds.pipe()
            #expect(dup2(newRead, oldRead) == oldRead)
            fds.close(newRead)
            fds.close(oldWrite)  // its read end is gone; never written again
            let reused = oldRead
            let newToken = PollToken(slot: 7, generation: 2)
            #expect(backend.register(fd: reused, token: newToken) == 0)

            #expect(writeBytes(newWrite) == 1)
            var events = collect(backend, budgetNanos: 2 * sec) { events in events.contains { $0.isReadable } }
            events += eventsWithin(backend, 20 * ms)
            #expect(events.contains { $0.pollToken == newToken && $0.isReadable })
            #expect(
                events.allSatisfy { $0.pollToken.generation == 2 },
                "events for the old registration: \(events.map { describe($0) })")
            #expect(drain(reused) == 1)
            #expect(backend.deregister(fd: reused, token: newToken) == 0)
        }
    }

    @Test("1000 descriptors registered at once are all reported", arguments: BackendKind.allCases)
    func thousandDescriptors(kind: BackendKind) throws {
        try withBackend(kind) { backend in
            let fds = Descriptors()
            // 500 pipes, both ends registered: read ends report readable, write ends writable.
            var expected: [PollToken: (fd: Int32, readable: Bool)] = [:]
            var writeEnds: [Int32] = []
            for i in 0..<500 {
                let (r, w) = fds.pipe()
                let readToken = PollToken(slot: UInt32(2 * i), generation: 1)
                let writeToken = PollToken(slot: UInt32(2 * i + 1), generation: 1)
                #expect(backend.register(fd: r, token: readToken) == 0)
                #expect(backend.register(fd: w, token: writeToken) == 0)
                expected[readToken] = (r, true)
                expected[writeToken] = (w, false)
                writeEnds.append(w)
            }
            for w in writeEnds { #expect(writeBytes(w) == 1) }

            var seen = Set<PollToken>()
            let deadline = cpoller_now_ns() + 5 * sec
            while seen.count < expected.count, cpoller_now_ns() < deadline {
                for event in pollEvents(backend, timeoutNanos: 100 * ms) {
                    guard let readable = expected[event.pollToken]?.readable else {
                        Issue.record("unknown token \(event.token)")
                        continue
                    }
                    if readable ? event.isReadable : event.isWritable { seen.insert(event.pollToken) }
                }
            }
            #expect(seen.count == 1000, "\(1000 - seen.count) descriptors never reported")
            for (token, entry) in expected {
                #expect(backend.deregister(fd: entry.fd, token: token) == 0)
            }
        }
    }

    @Test("A completion-queue overflow loses no readiness", arguments: BackendKind.allCases)
    func completionQueueOverflow(kind: BackendKind) throws {
        try skipIfUnavailable(kind)
        // A 16-entry completion queue for 64 descriptors (io_uring); epoll runs the same checks.
        let backend: any PollerBackend =
            kind == .ioUring
            ? try URingBackend(submissionEntries: 8, completionEntries: 16)
            : try EpollBackend()
        defer { backend.shutdown() }
        let fds = Descriptors()
        var pipes: [PollToken: (read: Int32, write: Int32)] = [:]
        for i in 0..<64 {
            let token = PollToken(slot: UInt32(i), generation: 1)
            let (r, w) = fds.pipe()
            pipes[token] = (r, w)
            #expect(backend.register(fd: r, token: token) == 0)
        }
        #expect(eventsWithin(backend, 10 * ms).isEmpty)

        for round in 1...3 {
            for (_, p) in pipes { #expect(writeBytes(p.write) == 1) }
            var seen = Set<PollToken>()
            let deadline = cpoller_now_ns() + 5 * sec
            while seen.count < pipes.count, cpoller_now_ns() < deadline {
                for event in pollEvents(backend, timeoutNanos: 100 * ms) {
                    #expect(pipes[event.pollToken] != nil, "unknown token \(event.token)")
                    if event.isReadable { seen.insert(event.pollToken) }
                }
            }
            #expect(seen.count == pipes.count, "round \(round): \(pipes.count - seen.count) of 64 never reported")
            // Drain and let the backend go quiet (re-armed polls on empty pipes report nothing),
            // so the next round counts only new edges.
            for (_, p) in pipes { #expect(drain(p.read) == 1) }
            var quiet = false
            for _ in 0..<50 where !quiet {
                quiet = eventsWithin(backend, 20 * ms).isEmpty
            }
            #expect(quiet, "round \(round): the backend never went quiet")
        }
        if let uring = backend as? URingBackend {
            // The test is only meaningful if the queue really overflowed and the kernel ended
            // multishot polls that the backend had to re-arm.
            #expect(uring.overflowCount > 0, "the completion queue never overflowed")
            #expect(uring.rearmCount > 0, "no multishot poll was ended and re-armed")
        }
        for (token, p) in pipes { #expect(backend.deregister(fd: p.read, token: token) == 0) }
    }

    // io_uring only: epoll has no accept completions. The connections are accepted in the
    // ring's deferred task work, which nothing runs before shutdown, so the completions that
    // carry them are certainly left in the ring (the PollerNet test of a poller shut down
    // while connections arrive leaves some there only by chance).
    @Test("io_uring: shutdown closes the descriptors that accept completions left in the ring carry")
    func shutdownClosesUnreapedAccepts() throws {
        try skipIfUnavailable(.ioUring)
        if URingBackend.acceptProbe != 0 {
            try Test.cancel("multishot accept unavailable: \(ErrnoName.describe(URingBackend.acceptProbe))")
        }
        let listener = makeLoopbackListenerFD()
        defer { close(listener.fd) }
        let before = openFDCount()
        let backend = try URingBackend()
        let token = PollToken(slot: 1, generation: 1)
        #expect(backend.register(fd: listener.fd, token: token) == 0)
        backend.armAccept(fd: listener.fd, token: token)
        // Submitted without IORING_ENTER_GETEVENTS: no task work runs.
        #expect(cpoller_uring_submit(backend.ring) >= 2)
        let clients = (0..<5).map { _ in dialLoopbackFD(port: listener.port) }
        defer { for client in clients { close(client) } }
        backend.shutdown()
        #expect(backend.acceptsClosedAtShutdown.load(ordering: .relaxed) == clients.count)
        // The ring's descriptors are closed; what is left open is the clients.
        #expect(openFDCount() == before + clients.count)
    }

    @Test("Creating and shutting down backends releases every descriptor", arguments: BackendKind.allCases)
    func noDescriptorLeak(kind: BackendKind) throws {
        try skipIfUnavailable(kind)
        let before = openFDCount()
        #expect(before > 0)
        let rounds = 100
        for i in 0..<rounds {
            let backend = try kind.makeBackend()
            let pipe = Pipe()
            let token = PollToken(slot: UInt32(i), generation: 1)
            #expect(backend.register(fd: pipe.readFD, token: token) == 0)
            #expect(writeBytes(pipe.writeFD) == 1)
            #expect(nextEvents(backend).count == 1)
            backend.wake()
            #expect(backend.deregister(fd: pipe.readFD, token: token) == 0)
            backend.shutdown()
        }
        // Tests in other suites may hold descriptors for a moment: a leak is permanent, so take
        // the smallest growth over a few samples. Leaking even one descriptor per round would
        // show as `rounds`.
        var growth = Int.max
        for _ in 0..<10 where growth >= rounds / 2 {
            growth = min(growth, openFDCount() - before)
            if growth >= rounds / 2 { usleep(20_000) }
        }
        #expect(growth < rounds / 2, "descriptor count grew by \(growth) over \(rounds) backends")
    }

    @Test("isPollerDescriptor is true for the backend's own descriptors only", arguments: BackendKind.allCases)
    func pollerDescriptors(kind: BackendKind) throws {
        try withBackend(kind) { backend in
            switch backend {
            case let epoll as EpollBackend:
                #expect(epoll.isPollerDescriptor(epoll.epollFD))
            case let uring as URingBackend:
                #expect(uring.ringFD >= 0)
                #expect(uring.isPollerDescriptor(uring.ringFD))
            default:
                Issue.record("unexpected backend \(type(of: backend))")
            }
            #expect(backend.isPollerDescriptor(backend.wakeChannel.readFD))
            #expect(backend.isPollerDescriptor(backend.wakeChannel.writeFD))
            let pipe = Pipe()
            #expect(!backend.isPollerDescriptor(pipe.readFD))
            #expect(!backend.isPollerDescriptor(pipe.writeFD))
            #expect(!backend.isPollerDescriptor(-1))
        }
    }

    // MARK: Backend selection

    @Test(
        "Forcing io_uring where it is disabled fails clearly, and auto falls back to epoll",
        arguments: BackendKind.allCases)
    func forcedIOUringFailsClearly(kind: BackendKind) throws {
        try skipIfUnavailable(kind)
        // Thread-local: only set-ups on this thread see the failure.
        cpoller_uring_inject_setup_failure(EPERM)
        defer { cpoller_uring_inject_setup_failure(0) }

        switch kind {
        case .ioUring:
            guard case .failure(let probeError) = URingBackend.probe() else {
                Issue.record("probe succeeded despite the injected EPERM")
                return
            }
            guard case .backendUnavailable(.ioUring, let reason) = probeError else {
                Issue.record("unexpected probe error \(probeError)")
                return
            }
            #expect(reason.contains("EPERM"))
            #expect(reason.contains("io_uring_disabled"))

            do {
                let backend = try URingBackend()
                backend.shutdown()
                Issue.record("URingBackend() was set up despite the injected EPERM")
            } catch {
                #expect(error == probeError)
            }
            // Poller(backend:) resolves (probes) on the calling thread, so it sees the injection.
            // (One Poller whatever POLLER_THREADS says: this pins backend resolution, which a
            // group does once for all members.)
            do {
                let poller = try Poller(backend: .ioUring)
                poller.shutdown()
                Issue.record("Poller(backend: .ioUring) started despite the injected EPERM")
            } catch {
                #expect(error == probeError)
                #expect(error.description.contains("EPERM"), "\(error)")
                #expect(error.description.contains("io_uring_disabled"), "\(error)")
            }

            let resolved = try BackendChoice.auto.resolve(autoPrefersIOUring: true)
            #expect(resolved.kind == .epoll)
            #expect(resolved.reason.contains("EPERM"), "reason: \(resolved.reason)")
        case .epoll:
            // epoll is untouched by an io_uring failure, whichever way it is chosen.
            #expect(try BackendChoice.epoll.resolve().kind == .epoll)
            #expect(try BackendChoice.auto.resolve(autoPrefersIOUring: true).kind == .epoll)
            #expect(try BackendChoice.auto.resolve(autoPrefersIOUring: false).kind == .epoll)
            let poller = try Poller(backend: .epoll)
            poller.shutdown()
        }

        // Restored, io_uring resolves again (where it works: skipIfUnavailable let us in).
        cpoller_uring_inject_setup_failure(0)
        if kind == .ioUring {
            #expect(try BackendChoice.ioUring.resolve().kind == .ioUring)
            #expect(try BackendChoice.auto.resolve(autoPrefersIOUring: true).kind == .ioUring)
        }
    }

    @Test(
        "BackendChoice parses epoll, io_uring and auto and rejects other names",
        arguments: BackendKind.allCases)
    func parsing(kind: BackendKind) throws {
        try skipIfUnavailable(kind)
        #expect(try BackendChoice(parsing: kind.rawValue) == kind.choice)
        #expect(try BackendChoice(parsing: kind.rawValue.uppercased()) == kind.choice)
        #expect(try BackendChoice(parsing: "\(kind.choice)") == kind.choice)
        #expect(try BackendChoice(parsing: "auto") == .auto)
        #expect(throws: PollerError.invalidBackendName("kqueue")) { try BackendChoice(parsing: "kqueue") }
        #expect(throws: PollerError.invalidBackendName("\(kind.rawValue)x")) {
            try BackendChoice(parsing: "\(kind.rawValue)x")
        }
    }
}

// MARK: Helpers

private let us: Int64 = 1_000
private let ms: Int64 = 1_000_000
private let sec: Int64 = 1_000_000_000

/// A backend of `kind`, created on (and so, for io_uring, owned by) the calling thread.
/// Runs `body` with a backend of `kind` created on the calling thread, then shuts it down;
/// skips the test case where that backend cannot run.
private func withBackend<R>(_ kind: BackendKind, _ body: (any PollerBackend) throws -> R) throws -> R {
    try skipIfUnavailable(kind)
    let backend = try kind.makeBackend()
    defer { backend.shutdown() }
    return try body(backend)
}

/// `body(backend)` on a thread of its own (`onFreshThread`), with a backend of `kind` created
/// there and shut down after; skips the test case where that backend cannot run.
private func onFreshBackend<T: Sendable>(
    _ kind: BackendKind, _ body: @Sendable (any PollerBackend) throws(PollerError) -> T
) throws -> T {
    try skipIfUnavailable(kind)
    return try onFreshThread { () throws(PollerError) -> T in
        let backend = try kind.makeBackend()
        defer { backend.shutdown() }
        return try body(backend)
    }
}

/// Registers `fd` under `token`, runs `body`, then deregisters it; both must succeed.
private func withRegistration(
    _ backend: any PollerBackend, fd: Int32, token: PollToken,
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) rethrows {
    #expect(backend.register(fd: fd, token: token) == 0, "register", sourceLocation: sourceLocation)
    try body()
    #expect(backend.deregister(fd: fd, token: token) == 0, "deregister", sourceLocation: sourceLocation)
}

/// Runs `body` with a backend of `kind`, a new `descriptor` pair (owned by a `Descriptors`)
/// and the token of slot 7, generation 1.
private func withDescriptors(
    _ kind: BackendKind, _ descriptor: DescriptorKind,
    _ body: (any PollerBackend, Descriptors, (reader: Int32, writer: Int32), PollToken) throws -> Void
) throws {
    try withBackend(kind) { backend in
        let fds = Descriptors()
        try body(backend, fds, fds.make(descriptor), PollToken(slot: 7, generation: 1))
    }
}

/// Runs `body` with a backend of `kind` and the read side of a new `descriptor` pair registered
/// under slot 7, once that read side has reported what it reports with nothing to read
/// (`expectIdleReader`); deregisters it after.
private func withIdleReader(
    _ kind: BackendKind, _ descriptor: DescriptorKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (any PollerBackend, Descriptors, (reader: Int32, writer: Int32), PollToken) throws -> Void
) throws {
    try withDescriptors(kind, descriptor) { backend, fds, ends, token in
        try withRegistration(backend, fd: ends.reader, token: token, sourceLocation: sourceLocation) {
            expectIdleReader(backend, descriptor, token: token, sourceLocation: sourceLocation)
            try body(backend, fds, ends, token)
        }
    }
}

/// What a freshly registered read side with nothing to read reports: a pipe's read end
/// nothing at all (for 20 ms); a connected socket only that it is writable.
private func expectIdleReader(
    _ backend: any PollerBackend, _ descriptor: DescriptorKind, token: PollToken,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    switch descriptor {
    case .pipe:
        #expect(eventsWithin(backend, 20 * ms).isEmpty, sourceLocation: sourceLocation)
    case .socketPair:
        let initial = nextEvents(backend)
        #expect(!initial.isEmpty, "a connected socket is writable", sourceLocation: sourceLocation)
        #expect(initial.map(\.pollToken) == [token], sourceLocation: sourceLocation)
        #expect(
            initial.allSatisfy { $0.isWritable && !$0.isReadable && !$0.isHangup },
            sourceLocation: sourceLocation)
    }
}

/// One poll of at most 256 events.
private func pollEvents(_ backend: any PollerBackend, timeoutNanos: Int64) -> [cpoller_event] {
    let buffer = UnsafeMutableBufferPointer<cpoller_event>.allocate(capacity: 256)
    defer { buffer.deallocate() }
    let n = backend.poll(into: buffer, timeoutNanos: timeoutNanos)
    precondition(n >= 0 && n <= buffer.count)
    return Array(buffer[0..<n])
}

/// Polls until `done` holds for the events gathered so far or `budgetNanos` passes.
private func collect(
    _ backend: any PollerBackend, budgetNanos: Int64, until done: ([cpoller_event]) -> Bool
) -> [cpoller_event] {
    var events: [cpoller_event] = []
    let deadline = cpoller_now_ns() + budgetNanos
    repeat {
        events += pollEvents(backend, timeoutNanos: max(0, min(100 * ms, deadline - cpoller_now_ns())))
    } while !done(events) && cpoller_now_ns() < deadline
    return events
}

/// The events of the first poll that returns any, within 2 s: a wait may end early with none.
private func nextEvents(_ backend: any PollerBackend) -> [cpoller_event] {
    collect(backend, budgetNanos: 2 * sec) { !$0.isEmpty }
}

/// Every event reported during the next `nanos` (polling again after an early return).
private func eventsWithin(_ backend: any PollerBackend, _ nanos: Int64) -> [cpoller_event] {
    var events: [cpoller_event] = []
    let deadline = cpoller_now_ns() + nanos
    var left = nanos
    while left > 0 {
        events += pollEvents(backend, timeoutNanos: left)
        left = deadline - cpoller_now_ns()
    }
    return events
}

/// One poll: how many events it returned and how long it took.
private func timedPoll(_ backend: any PollerBackend, timeoutNanos: Int64) -> (events: Int, elapsed: Int64) {
    let start = cpoller_now_ns()
    let n = pollEvents(backend, timeoutNanos: timeoutNanos).count
    return (n, cpoller_now_ns() - start)
}

private func describe(_ event: cpoller_event) -> String {
    "slot \(event.pollToken.slot) gen \(event.pollToken.generation) flags \(event.flags) res \(event.res)"
}

/// What `measureWake` saw.
private struct WakeMeasurement: Sendable {
    var blocked: (events: Int, elapsed: Int64) = (-1, -1)
    var writes = -1
    var after: (events: Int, elapsed: Int64) = (-1, -1)
}

/// Blocks in `backend.poll` for up to 5 s while another thread wakes it 50 ms after the clock
/// started, then waits 10 ms more. Run on the backend's owner thread.
private func measureWake(_ backend: any PollerBackend) -> WakeMeasurement {
    var m = WakeMeasurement()
    // Let a ring submit its wake-up request before the clock starts.
    _ = pollEvents(backend, timeoutNanos: 0)
    let writesBefore = backend.wakeChannel.writes.load(ordering: .relaxed)
    let start = cpoller_now_ns()
    let waker = startThread {
        usleep(50_000)
        backend.wake()
    }
    let events = pollEvents(backend, timeoutNanos: 5 * sec)
    m.blocked = (events.count, cpoller_now_ns() - start)
    joinThread(waker)
    m.writes = backend.wakeChannel.writes.load(ordering: .relaxed) - writesBefore
    m.after = timedPoll(backend, timeoutNanos: 10 * ms)
    return m
}

/// The wait ended with the wake (not before it, and long before its 5 s timeout), with no
/// events, after one write; and the wake was consumed: the next 10 ms wait ran to its end.
private func expectWakeEndedWait(_ m: WakeMeasurement, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(m.blocked.events == 0, "a wake is not an event", sourceLocation: sourceLocation)
    #expect(
        m.blocked.elapsed >= 45 * ms, "the wait ended before the wake (\(m.blocked.elapsed) ns)",
        sourceLocation: sourceLocation)
    #expect(
        m.blocked.elapsed < 2 * sec, "the wake did not end the wait (\(m.blocked.elapsed) ns)",
        sourceLocation: sourceLocation)
    #expect(m.writes == 1, sourceLocation: sourceLocation)
    #expect(m.after.events == 0, sourceLocation: sourceLocation)
    #expect(
        m.after.elapsed >= 9 * ms, "a consumed wake ended the next wait (\(m.after.elapsed) ns)",
        sourceLocation: sourceLocation)
}

/// Runs `body` on a new thread and returns its result. Timing measurements run there: a
/// thread of their own has never owned an io_uring ring, so no ring teardown interrupts
/// their waits (see the note at the top of the file). Assertions stay on the test's thread,
/// where Swift Testing attributes them to the test.
private func onFreshThread<T: Sendable>(_ body: @Sendable () throws(PollerError) -> T) throws(PollerError) -> T {
    let box = ResultBox<T>()
    withoutActuallyEscaping(body) { body in
        let thread = startThread {
            do throws(PollerError) {
                box.value = .success(try body())
            } catch {
                box.value = .failure(error)
            }
        }
        joinThread(thread)
    }
    return try box.value!.get()
}

/// Written by one thread before `joinThread` returns, read after it.
private final class ResultBox<T>: @unchecked Sendable {
    var value: Result<T, PollerError>?
}
