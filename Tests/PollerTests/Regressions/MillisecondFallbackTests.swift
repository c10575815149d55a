import CPoller
import Glibc
import Testing
@testable import Poller

// The epoll backend's millisecond path: epoll_wait, used for good once epoll_pwait2 is missing
// (ENOSYS, kernels before 5.11) or refused (EPERM, seccomp). On this machine epoll_pwait2
// works, so without these tests the path would run only for the one poll after
// BackendRegressions' EPERM test. `cpoller_epoll_force_ms_timeouts` (a C test seam) switches
// the process to it; every test switches back when done.
//
// Serialized: the switch is process-wide.
@Suite("Regressions: epoll's millisecond fallback", .serialized)
struct MillisecondFallbackTests {
    private static let us: Int64 = 1_000
    private static let ms: Int64 = 1_000_000

    /// Runs `body` with epoll_wait in use, on a fresh epoll backend.
    private func withMillisecondEpoll(_ body: (EpollBackend, UnsafeMutableBufferPointer<cpoller_event>) throws -> Void)
        throws
    {
        cpoller_epoll_force_ms_timeouts(1)
        defer { cpoller_epoll_force_ms_timeouts(0) }  // let later pollers find epoll_pwait2 again
        let backend = try EpollBackend()
        defer { backend.shutdown() }
        let events = UnsafeMutableBufferPointer<cpoller_event>.allocate(capacity: 64)
        defer { events.deallocate() }
        #expect(cpoller_epoll_has_pwait2() == 0)
        try body(backend, events)
    }

    @Test("A sub-millisecond timeout is rounded up to 1 ms, never down to 0 (which would spin)")
    func subMillisecondRoundsUp() throws {
        try withMillisecondEpoll { backend, events in
            // The C wait itself, to tell a timeout from an interruption: both return 0, but
            // EINTR leaves errno set. (Seen here: a test thread that earlier tests used gets
            // EINTR from epoll_wait now and then; the poller treats it as "no events".)
            var elapsed: [Int64] = []
            var interrupted = 0
            for _ in 0..<50 where elapsed.count < 5 {
                errno = 0
                let start = cpoller_now_ns()
                let n = cpoller_epoll_wait(backend.epollFD, events.baseAddress, Int32(events.count), 50 * Self.us)
                let end = cpoller_now_ns()
                #expect(n == 0)
                if errno == EINTR { interrupted += 1 } else { elapsed.append(end - start) }
            }
            try #require(elapsed.count == 5, "epoll_wait was interrupted \(interrupted) times")
            elapsed.sort()
            // The best for both bounds: a wait never ends early, only late (one preemption on a
            // shared machine).
            #expect(elapsed[0] >= 1 * Self.ms, "50 µs waits returned after \(elapsed) ns: rounded down to no wait")
            #expect(elapsed[0] < 20 * Self.ms, "50 µs waits took \(elapsed) ns")
        }
    }

    @Test("A zero timeout does not block, and a pending event is returned with its neutral flags")
    func zeroTimeoutAndEvents() throws {
        try withMillisecondEpoll { backend, events in
            let start = cpoller_now_ns()
            #expect(backend.poll(into: events, timeoutNanos: 0) == 0)
            #expect(cpoller_now_ns() - start < 5 * Self.ms)

            let pipe = Pipe()
            #expect(backend.register(fd: pipe.readFD, token: PollToken(slot: 7, generation: 1)) == 0)
            _ = writeBytes(pipe.writeFD)
            let n = backend.poll(into: events, timeoutNanos: 100 * Self.ms)
            #expect(n == 1)
            if n == 1 {
                #expect(events[0].pollToken == PollToken(slot: 7, generation: 1))
                #expect(events[0].isReadable && !events[0].isWritable && !events[0].isError)
            }
            #expect(backend.deregister(fd: pipe.readFD, token: PollToken(slot: 7, generation: 1)) == 0)
        }
    }

    @Test("A wake ends an unbounded wait (timeout -1) on the millisecond path")
    func wakeEndsForeverWait() throws {
        try withMillisecondEpoll { backend, events in
            backend.wake()
            let start = cpoller_now_ns()
            #expect(backend.poll(into: events, timeoutNanos: -1) == 0, "the wake-up channel's event leaked")
            #expect(cpoller_now_ns() - start < 1_000 * Self.ms)
        }
    }
}
