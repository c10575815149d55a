import CPoller
import Glibc
import Testing

@testable import Poller

// The epoll backend's millisecond path: epoll_wait, used for good once epoll_pwait2 is missing
// (ENOSYS, kernels before 5.11) or refused (EPERM, seccomp). On this machine epoll_pwait2
// works, so without these tests the path would run only for the one poll after
// BackendRegressions' EPERM test. `EpollBackend.WaitCall.forceMilliseconds` (a debug-only test
// seam) switches the process to it; every test switches back when done.
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
        EpollBackend.WaitCall.forceMilliseconds(true)
        defer { EpollBackend.WaitCall.forceMilliseconds(false) }  // let later pollers find epoll_pwait2 again
        let backend = try EpollBackend()
        defer { backend.shutdown() }
        let events = UnsafeMutableBufferPointer<cpoller_event>.allocate(capacity: 64)
        defer { events.deallocate() }
        #expect(!EpollBackend.WaitCall.usesPwait2)
        try body(backend, events)
    }

    @Test("A sub-millisecond timeout is rounded up to 1 ms, never down to 0 (which would spin)")
    func subMillisecondRoundsUp() throws {
        try withMillisecondEpoll { backend, events in
            // The wait call itself, to tell a timeout (0) from an interruption (-EINTR; the
            // backend's poll turns both into "no events"). Seen here: a test thread that
            // earlier tests used gets EINTR from epoll_wait now and then.
            var elapsed: [Int64] = []
            var interrupted = 0
            for _ in 0..<50 where elapsed.count < 5 {
                let start = cpoller_now_ns()
                let n = EpollBackend.WaitCall.wait(backend.epollFD, events, timeoutNanos: 50 * Self.us)
                let end = cpoller_now_ns()
                if n == -EINTR {
                    interrupted += 1
                } else {
                    #expect(n == 0)
                    elapsed.append(end - start)
                }
            }
            try #require(elapsed.count == 5, "epoll_wait was interrupted \(interrupted) times")
            elapsed.sort()
            // The best for both bounds: a wait never ends early, only late (one preemption on a
            // shared machine).
            #expect(elapsed[0] >= 1 * Self.ms, "50 µs waits returned after \(elapsed) ns: rounded down to no wait")
            #expect(elapsed[0] < 20 * Self.ms, "50 µs waits took \(elapsed) ns")
        }
    }

    @Test("Timeouts become whole milliseconds rounded up, with forever, zero and Go's cap kept")
    func millisecondConversion() {
        let ms = EpollBackend.WaitCall.milliseconds(roundingUp:)
        #expect(ms(-1) == -1)
        #expect(ms(Int64.min) == -1)
        #expect(ms(0) == 0)
        #expect(ms(1) == 1)
        #expect(ms(Self.ms) == 1)
        #expect(ms(Self.ms + 1) == 2)
        #expect(ms(1_500 * Self.ms) == 1_500)
        #expect(ms(1_000_000_000 * Self.ms - 1) == 1_000_000_000)
        #expect(ms(Int64.max) == 1_000_000_000)
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
