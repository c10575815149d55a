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

    // MARK: Test seams
    var kernelFD: Int32 { epollFD }

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

    func register(fd: Int32, token: PollToken) -> Int32 {
        closed.withLockAnnotated { closed in closed ? EBADF : -cpoller_epoll_add(epollFD, fd, Self.registration, token.raw) }
    }

    func deregister(fd: Int32, token: PollToken) -> Int32 {
        closed.withLockAnnotated { closed in closed ? 0 : -cpoller_epoll_del(epollFD, fd) }
    }

    func poll(into events: UnsafeMutableBufferPointer<cpoller_event>, timeoutNanos: Int64) -> Int {
        let n = Int(cpoller_epoll_wait(epollFD, events.baseAddress, Int32(events.count), timeoutNanos))
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
