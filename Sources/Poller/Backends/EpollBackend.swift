import CPoller
import Glibc
import Synchronization

/// The epoll backend: one edge-triggered registration per descriptor for IN | OUT | RDHUP | PRI,
/// never modified, deleted at close (Go's netpoll_epoll.go). Timeouts have nanosecond
/// precision through epoll_pwait2 where the kernel has it.
///
/// Thread safety: epoll_ctl is safe from any thread, so `register` and `deregister` call the
/// kernel directly; only `poll` is confined to the poller thread.
final class EpollBackend: PollerBackend {
    let epollFD: Int32
    let wakeChannel: WakeChannel
    /// True after shutdown. Held across epoll_ctl so a late register or deregister never
    /// reaches the epoll descriptor's number after it was closed (and maybe reused).
    private let closed = Mutex(false)
    let waitBackoff = WaitBackoff(call: "epoll_wait")
    let faults = FaultLog()

    #if DEBUG  // test seam
    var kernelFD: Int32 { epollFD }
    #endif

    // MARK: The backend

    init(forcePipeWake: Bool = false) throws(PollerError) {
        let fd = cpoller_epoll_create()
        guard fd >= 0 else { throw .system(call: "epoll_create1", errno: -fd) }
        let channel: WakeChannel
        do {
            channel = try WakeChannel(forcePipe: forcePipeWake)
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
        // The wake-up channel is level-triggered: it stays reported until drained.
        let r = cpoller_epoll_add(fd, channel.readFD, KernelReadiness.input, PollToken.wake.raw)
        guard r == 0 else {
            channel.close()
            _ = Glibc.close(fd)
            throw .system(call: "epoll_ctl(ADD wake)", errno: -r)
        }
        epollFD = fd
        wakeChannel = channel
    }

    /// Every descriptor's one registration: edge-triggered, for `KernelReadiness.interest`.
    static let registration = KernelReadiness.interest | EPOLLET.rawValue

    var receiveBuffers: ReceiveBufferRing? { nil }
    var receiveSummary: String { "reads by recv(2) on readiness" }
    func armReceive(fd: Int32, token: PollToken) {}
    func cancelReceive(token: PollToken) {}
    var sendsThroughCompletions: Bool { false }
    var sendMinimumBatch: Int { .max }
    var sendSummary: String { "writes by send(2)" }
    func submitSend(fd: Int32, token: PollToken, request: RingSendRequest) -> Int32 { EOPNOTSUPP }
    func cancelSend(token: PollToken) {}

    func register(fd: Int32, token: PollToken) -> Int32 {
        closed.withLockAnnotated { closed in closed ? EBADF : -cpoller_epoll_add(epollFD, fd, Self.registration, token.raw) }
    }

    func deregister(fd: Int32, token: PollToken) -> Int32 {
        closed.withLockAnnotated { closed in closed ? 0 : -cpoller_epoll_del(epollFD, fd) }
    }

    func poll(into events: UnsafeMutableBufferPointer<cpoller_event>, timeoutNanos: Int64) -> Int {
        var n = Int(WaitCall.wait(epollFD, events, timeoutNanos: timeoutNanos))
        if n == -Int(EINTR) { n = 0 }  // a signal ended the wait early: not a failure
        guard n >= 0 else {
            waitBackoff.failed(errno: Int32(-n), timeoutNanos: timeoutNanos, wakeChannel: wakeChannel, log: faults)
            return 0
        }
        waitBackoff.succeeded()
        guard n > 0 else { return 0 }
        // Compact out the wake-up channel's event; set the neutral flags of the others.
        var kept = 0
        for i in 0..<n {
            if events[i].token == PollToken.wake.raw {
                wakeChannel.drain()
            } else {
                if kept != i { events[kept] = events[i] }
                events[kept].flags = cpoller_event.flags(readiness: UInt32(bitPattern: events[kept].res))
                kept += 1
            }
        }
        return kept
    }

    func isPollerDescriptor(_ fd: Int32) -> Bool {
        fd == epollFD || wakeChannel.isOwnDescriptor(fd)
    }

    func shutdown() {
        closed.withLockAnnotated { closed in
            guard !closed else { return }
            closed = true
            wakeChannel.close()
            _ = Glibc.close(epollFD)
        }
    }
}

extension EpollBackend {
    /// Which system call waits, chosen once per process: epoll_pwait2 (nanosecond timeouts,
    /// Linux 5.11) while it works, else epoll_wait with whole milliseconds.
    ///
    /// Invariants: the state only moves from unknown to one answer, and from "works" never
    /// back, except through the debug-only test seam; a wait that raced with another poller's
    /// switch to the fallback must not switch the process back (compare-exchange from unknown
    /// only). The fallback rounds a positive timeout up, never down to 0 (which would spin the
    /// loop until the deadline), and caps it at 1e9 ms as Go does.
    enum WaitCall {
        static let unknown = 0, pwait2 = 1, milliseconds = -1
        private static let state = Atomic<Int>(unknown)

        /// Whether epoll_pwait2 is in use (or not yet refused).
        static var usesPwait2: Bool { state.load(ordering: .relaxed) >= unknown }

        static func wait(_ epollFD: Int32, _ events: UnsafeMutableBufferPointer<cpoller_event>, timeoutNanos: Int64) -> Int32 {
            let cap = Int32(events.count)
            let known = state.load(ordering: .relaxed)
            if known >= unknown {
                let n = cpoller_epoll_pwait2(epollFD, events.baseAddress, cap, timeoutNanos)
                // ENOSYS: the kernel predates 5.11. EPERM: a seccomp profile that denies
                // system calls it does not know (older container runtimes' defaults, many
                // sandboxes) refuses it; epoll_wait is on every such list. epoll_pwait2
                // never fails with EPERM otherwise.
                guard n == -ENOSYS || n == -EPERM else {
                    if n >= 0 && known == unknown {
                        _ = state.compareExchange(expected: unknown, desired: pwait2, ordering: .relaxed)
                    }
                    return n
                }
                state.store(milliseconds, ordering: .relaxed)
            }
            return cpoller_epoll_wait_ms(epollFD, events.baseAddress, cap, milliseconds(roundingUp: timeoutNanos))
        }

        /// epoll_wait's timeout for `nanos`: < 0 forever, 0 poll, else whole milliseconds
        /// rounded up, at most 1e9 (about 11.5 days, Go's cap).
        static func milliseconds(roundingUp nanos: Int64) -> Int32 {
            if nanos <= 0 { return nanos < 0 ? -1 : 0 }
            if nanos >= 1_000_000_000 * 1_000_000 { return 1_000_000_000 }
            return Int32((nanos + 999_999) / 1_000_000)
        }

        #if DEBUG
        /// Test seam: force the millisecond fallback (true) or let the next wait try
        /// epoll_pwait2 again (false), process-wide.
        static func forceMilliseconds(_ force: Bool) {
            state.store(force ? milliseconds : unknown, ordering: .relaxed)
        }
        #endif
    }
}
