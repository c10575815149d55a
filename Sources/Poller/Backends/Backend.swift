import CPoller
import Glibc

// The backend contract. As runtime/netpoll.go lists what each platform file must provide,
// this is everything the poller core needs from a readiness mechanism; EpollBackend and
// URingBackend each implement it in one file, BackendSelection.swift's `make(_:forcePipeWake:)`
// creates one, and nothing outside Backends/ knows which one runs (the core learns the kind
// from the selection, not from the backend).
//
// Used by the core:
//   register    Go's netpollopen: arm edge-triggered notification for both directions of
//               fd, once, tagged with a token. Readiness present at registration is reported.
//               Callable from any thread. Returns 0 or an errno. (io_uring off its owner
//               thread returns before the poll is armed; a poll that then fails is reported
//               as an error event to both directions, never lost.)
//   deregister  Go's netpollclose: stop notifications for fd. Callable from any thread. When
//               it returns, no event for the token will be delivered as current (later ones
//               are stale by generation) and the caller may close(2) fd. On epoll, and on
//               io_uring on its owner thread or for a listening or datagram socket, the kernel
//               then holds no reference to the file through this backend (the peer sees the
//               close at once, the address is free); on io_uring off the owner thread a
//               connection's file is released when the owner has cancelled its poll, a
//               wake-up later.
//   poll        Go's netpoll(delay): wait at most timeoutNanos (< 0 forever, 0 do not block)
//               and return readiness events for registered tokens, with `flags` set as
//               described at `extension cpoller_event` below. Only ever called from one
//               thread, the poller thread (for io_uring, the thread that created the backend).
//               The wake-up channel's own events are consumed inside and never returned.
//               Events for deregistered tokens may still be returned: the caller drops them
//               by generation. A wait the kernel refuses returns no events after a back-off
//               (`waitBackoff`), never at once again. Allocation-free per call.
//   wake        Go's netpollBreak: make a blocked or the next poll return. Any thread;
//               concurrent wakes coalesce into one write (provided: `wakeChannel.signal()`).
//   wakeChannel The channel `wake` writes to (the core reports whether it is a self-pipe).
//   isPollerDescriptor  Go's netpollIsPollDescriptor: fd is one of the backend's own.
//   shutdown    Release every descriptor the backend owns. Poller thread, after the last poll.
//
// Observed by tests only (the core never reads them; tests reach them through
// `any PollerBackend`; the counters and kernelFD exist in debug builds only):
//   kernelFD    The epoll or io_uring descriptor: what the C layer's fault points are keyed by.
//   faults      Every fault the backend survived, reported once per kind (FaultLog).
//   waitBackoff The back-off of failing waits, with its failure count (WaitBackoff).
//
// Completion receive (io_uring only; epoll has none):
//   receiveBuffers  The provided-buffer ring recv completions take their buffers from, or nil
//               when this backend does not receive through completions (epoll; an io_uring
//               kernel without buffer rings or multishot recv; turned off).
//   armReceive  Arm a multishot recv for a registered fd, tagged token | RECV_BIT: its
//               completions come back from `poll` flagged RECEIVED (never as readiness), and
//               `deregister` cancels it with the poll. Used to start receiving and to resume
//               after the recv ended for want of buffers (-ENOBUFS). Any thread; does not
//               wait (a recv that cannot be queued now is retried before the next wait).
//   cancelReceive  Stop the recv of `token` without deregistering: its last completion comes
//               back flagged RECEIVED | ENDED (every completion after which no other comes for
//               that recv carries ENDED; a recv ended with data and re-armed does not). Any
//               thread; does not wait.
//   receiveSummary  One phrase for `Poller.backendReason`: what does the reads.
//
// Completion send (io_uring only):
//   sendsThroughCompletions  Whether `submitSend` works (false on epoll, or turned off).
//   sendMinimumBatch  Sends go on the ring only when the poller's last poll returned at least
//               this many events (0: always).
//   submitSend  Queue a send(2) or sendmsg(2) on fd, tagged token | SEND_BIT (the request's
//               memory stays the kernel's until its completion, which `poll` returns flagged
//               SENT). Owner thread only (the ring's single issuer); submitted with the next
//               poll. Returns 0, or an errno (EBUSY: the ring would not take it).
//   cancelSend  Cancel the send of `token` (its completion then says what it sent, or
//               -ECANCELED). Any thread; does not wait.
//   sendSummary  One phrase for `Poller.backendReason`: what does the writes.
// Multishot accept (io_uring only; RingAccept.swift has defaults for backends without it):
//   acceptsThroughCompletions  Whether `armAccept` does anything here.
//   armAccept   Arm a multishot accept for a registered listening fd, tagged token |
//               ACCEPT_BIT: its completions (an accepted fd, or -errno) come back from `poll`
//               flagged ACCEPTED (never as readiness), with ENDED on the last one; `deregister`
//               cancels it with the poll. Any thread; does not wait.
//   cancelAccept  Stop the accept of `token` without deregistering: its last completion comes
//               back flagged ACCEPTED | ENDED. Poller thread (the core calls it from dispatch).
//   acceptSummary  One phrase for `Poller.backendReason`: what does the accepts.
protocol PollerBackend: AnyObject, Sendable {
    var wakeChannel: WakeChannel { get }
    func register(fd: Int32, token: PollToken) -> Int32
    var receiveBuffers: ReceiveBufferRing? { get }
    func armReceive(fd: Int32, token: PollToken)
    func cancelReceive(token: PollToken)
    var receiveSummary: String { get }
    var sendsThroughCompletions: Bool { get }
    var sendMinimumBatch: Int { get }
    func submitSend(fd: Int32, token: PollToken, request: RingSendRequest) -> Int32
    func cancelSend(token: PollToken)
    var sendSummary: String { get }
    var acceptsThroughCompletions: Bool { get }
    func armAccept(fd: Int32, token: PollToken)
    func cancelAccept(token: PollToken)
    var acceptSummary: String { get }
    func deregister(fd: Int32, token: PollToken) -> Int32
    func poll(into events: UnsafeMutableBufferPointer<cpoller_event>, timeoutNanos: Int64) -> Int
    func wake()
    func isPollerDescriptor(_ fd: Int32) -> Bool
    func shutdown()

    #if DEBUG  // test seam
    var kernelFD: Int32 { get }
    #endif
    var faults: FaultLog { get }
    var waitBackoff: WaitBackoff { get }
}

extension PollerBackend {
    func wake() { wakeChannel.signal() }
}

/// A 64-bit registration token: the descriptor slot in the low 32 bits and the slot's
/// generation in the high 32 bits.
///
/// Generations start at 1 and stay below 2^28 (`generationLimit`), so a user token is never 0
/// (reserved for the wake-up channel), never has bit 63 set (reserved for io_uring control
/// requests) nor bits 62 to 60 (io_uring's requests for the same registration carry the token
/// with the bit of their kind: 62 a multishot recv, 61 a send, 60 a multishot accept) and is
/// never UINT64_MAX (liburing's internal timeout marker). A slot's generation changes when its
/// descriptor is closed, so an event still in flight for the old registration no longer
/// matches even if the kernel hands the same fd number to a new registration.
struct PollToken: Hashable, Sendable {
    var raw: UInt64

    init(raw: UInt64) { self.raw = raw }

    init(slot: UInt32, generation: UInt32) {
        precondition(generation > 0 && generation < Self.generationLimit, "generation out of range")
        raw = UInt64(generation) << 32 | UInt64(slot)
    }

    var slot: UInt32 { UInt32(truncatingIfNeeded: raw) }
    var generation: UInt32 { UInt32(truncatingIfNeeded: raw >> 32) }

    /// The wake-up channel's token.
    static let wake = PollToken(raw: 0)

    /// Generations stay below this (see the type's comment for why).
    static let generationLimit: UInt32 = 1 << 28

    /// The generation after `generation`, wrapping within 1..<generationLimit.
    static func nextGeneration(after generation: UInt32) -> UInt32 {
        generation >= generationLimit - 1 ? 1 : generation + 1
    }
}

/// The readiness bits the kernel reports, in poll(2) numbering: epoll's EPOLL* bits are the
/// same numbers on Linux (checked at compile time in epoll.c), so one set serves both backends.
enum KernelReadiness {
    static let input = EPOLLIN.rawValue
    static let priority = EPOLLPRI.rawValue
    static let output = EPOLLOUT.rawValue
    static let error = EPOLLERR.rawValue
    static let hangup = EPOLLHUP.rawValue
    static let readHangup = EPOLLRDHUP.rawValue

    /// What a registered descriptor is watched for, by both backends: both directions, the
    /// peer's half-close and urgent data (Go's netpollopen asks epoll for the same).
    static let interest = input | output | readHangup | priority
    /// What io_uring watches a descriptor for while a multishot recv (or, for a listener,
    /// accept) delivers its input: output only. The completions say everything about input
    /// (bytes, end of file, errors; connections), so a readable event beside each would be a
    /// second completion per arrival for nothing. (An update of a poll's mask also unmasks
    /// hang-ups and errors: the kernel's IO_POLL_UNMASK.) A reader never waits on input
    /// readiness while its recv is off: after -ENOBUFS it re-arms the recv before it waits
    /// (`resumeReceiving`), and a detach or a cancelled recv puts `interest` back first. An
    /// acceptor waits only with an accept armed, or after a take that arms one.
    static let receivingInterest = output
}

/// A readiness event in backend-neutral form: `token` names the registration and `flags` holds
/// these bits (`res` and `cqe_flags` keep what the kernel said, for diagnostics):
///
///   READABLE  a reader should retry: input, or the peer hung up, or an error.
///   WRITABLE  a writer should retry: output space, or a hang-up, or an error.
///             (Hang-up and error count as both directions, as Go maps EPOLLHUP/EPOLLERR.)
///   ERROR     the kernel reported an error and nothing else (Go's eventErr rule), or the
///             io_uring poll request itself failed for a reason that concerns the descriptor.
///   HANGUP    the peer hung up its write side (RDHUP) or the whole connection (HUP).
///   PRIORITY  urgent (out-of-band) data is queued: a read stops at its mark, so a short read
///             no longer proves the receive queue empty.
///   ENDED     io_uring only, never seen by the core: the multishot poll behind the token has
///             ended (no IORING_CQE_F_MORE); the backend re-arms it if the registration is live.
///   RECEIVED  io_uring completion receive only: a recv completion (see `isReceived`), never
///             readiness; with ENDED when that recv is over (nothing more comes from it).
///   SENT      io_uring completion send only: a send's completion (see `isSent`), never
///             readiness.
///   ACCEPTED  io_uring multishot accept only: an accept completion (see `isAccepted`), never
///             readiness; with ENDED when that accept is over.
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
    /// A multishot recv completed (io_uring completion receive): `res` bytes (0: end of file;
    /// < 0: -errno, -ENOBUFS when the buffer ring was empty) in the buffer `bufferID` names.
    var isReceived: Bool { flags & UInt32(CPOLLER_EV_RECEIVED) != 0 }
    /// A send completed (io_uring completion send): `res` bytes sent, or -errno.
    var isSent: Bool { flags & UInt32(CPOLLER_EV_SENT) != 0 }
    /// A multishot accept completed (io_uring): `res` is the accepted descriptor, or -errno.
    var isAccepted: Bool { flags & UInt32(CPOLLER_EV_ACCEPTED) != 0 }
    /// The provided buffer a recv completion filled, if it names one.
    var bufferID: UInt16? {
        cqe_flags & UInt32(CPOLLER_URING_CQE_F_BUFFER) != 0
            ? UInt16(truncatingIfNeeded: cqe_flags >> UInt32(CPOLLER_URING_CQE_BUFFER_SHIFT)) : nil
    }

    /// The neutral bits for a readiness mask the kernel reported (`KernelReadiness` bits, from
    /// epoll or from an io_uring poll): the one place the hang-up and error rule is written.
    /// Runs once per event on the poll path: inlined, no allocation.
    @inline(__always)
    static func flags(readiness e: UInt32) -> UInt32 {
        typealias K = KernelReadiness
        var f: UInt32 = 0
        if e & (K.input | K.readHangup | K.hangup | K.error) != 0 { f |= UInt32(CPOLLER_EV_READABLE) }
        if e & (K.output | K.hangup | K.error) != 0 { f |= UInt32(CPOLLER_EV_WRITABLE) }
        if e == K.error { f |= UInt32(CPOLLER_EV_ERROR) }
        if e & (K.readHangup | K.hangup) != 0 { f |= UInt32(CPOLLER_EV_HANGUP) }
        if e & K.priority != 0 { f |= UInt32(CPOLLER_EV_PRIORITY) }
        return f
    }
}
