import CPoller

// The backend contract. As runtime/netpoll.go lists what each platform file must provide,
// this is everything the poller core needs from a readiness mechanism; EpollBackend and
// URingBackend each implement it in one file, and nothing outside Backends/ knows which one
// runs.
//
//   register    Go's netpollopen: arm edge-triggered notification for both directions of
//               fd, once, tagged with a token. Readiness present at registration is reported.
//               Callable from any thread. Returns 0 or an errno.
//   deregister  Go's netpollclose: stop notifications for fd. Callable from any thread. When
//               it returns, the kernel holds no reference to fd through this backend, so the
//               caller may close(2) it and the peer sees the close at once.
//   poll        Go's netpoll(delay): wait at most timeoutNanos (< 0 forever, 0 do not block)
//               and return readiness events for registered tokens. Only ever called from one
//               thread, the poller thread (for io_uring, the thread that created the backend).
//               The wake-up channel's own events are consumed inside and never returned.
//               Events for deregistered tokens may still be returned: the caller drops them
//               by generation.
//   wake        Go's netpollBreak: make a blocked or the next poll return. Any thread;
//               concurrent wakes coalesce into one write.
//   isPollerDescriptor  Go's netpollIsPollDescriptor.
//   shutdown    Release every descriptor the backend owns. Poller thread, after the last poll.
//
// Failures: a wait that fails returns no events after a back-off (WaitBackoff), never at once
// again; every fault the backend survives is reported once per kind (FaultLog).
protocol PollerBackend: AnyObject, Sendable {
    var kind: BackendKind { get }
    var wakeChannel: WakeChannel { get }
    /// The epoll or io_uring descriptor: what the C layer's fault points are keyed by (tests).
    var kernelFD: Int32 { get }
    var faults: FaultLog { get }
    var waitBackoff: WaitBackoff { get }
    func register(fd: Int32, token: PollToken) -> Int32
    func deregister(fd: Int32, token: PollToken) -> Int32
    func poll(into events: UnsafeMutableBufferPointer<cpoller_event>, timeoutNanos: Int64) -> Int
    func wake()
    func isPollerDescriptor(_ fd: Int32) -> Bool
    func shutdown()
}

extension PollerBackend {
    func wake() { wakeChannel.signal() }
}

/// A 64-bit registration token: the descriptor slot in the low 32 bits and the slot's
/// generation in the high 32 bits.
///
/// Generations start at 1 and stay below 2^31, so a user token is never 0 (reserved for the
/// wake-up channel), never has bit 63 set (reserved for io_uring control requests) and is
/// never UINT64_MAX (liburing's internal timeout marker). A slot's generation changes when its
/// descriptor is closed, so an event still in flight for the old registration no longer
/// matches even if the kernel hands the same fd number to a new registration.
struct PollToken: Hashable, Sendable {
    var raw: UInt64

    init(raw: UInt64) { self.raw = raw }

    init(slot: UInt32, generation: UInt32) {
        precondition(generation > 0 && generation < 1 << 31, "generation out of range")
        raw = UInt64(generation) << 32 | UInt64(slot)
    }

    var slot: UInt32 { UInt32(truncatingIfNeeded: raw) }
    var generation: UInt32 { UInt32(truncatingIfNeeded: raw >> 32) }

    /// The wake-up channel's token.
    static let wake = PollToken(raw: 0)

    /// The generation after `generation`, wrapping within 1..<2^31.
    static func nextGeneration(after generation: UInt32) -> UInt32 {
        generation >= (1 << 31) - 1 ? 1 : generation + 1
    }
}

/// A readiness event from a backend, in backend-neutral form.
typealias BackendEvent = cpoller_event

extension cpoller_event {
    var pollToken: PollToken { PollToken(raw: token) }
    var isReadable: Bool { flags & UInt32(CPOLLER_EV_READABLE) != 0 }
    var isWritable: Bool { flags & UInt32(CPOLLER_EV_WRITABLE) != 0 }
    /// The kernel reported an error and nothing else (Go's eventErr).
    var isError: Bool { flags & UInt32(CPOLLER_EV_ERROR) != 0 }
    var isHangup: Bool { flags & UInt32(CPOLLER_EV_HANGUP) != 0 }
    /// Urgent (out-of-band) data is queued.
    var isPriority: Bool { flags & UInt32(CPOLLER_EV_PRIORITY) != 0 }
    var isEnded: Bool { flags & UInt32(CPOLLER_EV_ENDED) != 0 }
}
