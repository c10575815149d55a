import CPoller

/// The direction(s) a wait, reset or deadline applies to.
public struct PollMode: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let read = PollMode(rawValue: 1)
    public static let write = PollMode(rawValue: 2)
    public static let readWrite: PollMode = [.read, .write]

    /// Go's mode encoding: `'r'` (114), `'w'` (119) or `'r'+'w'` (233). Nil for anything else.
    public init?(goMode: Int) {
        switch goMode {
        case 114: self = .read
        case 119: self = .write
        case 233: self = .readWrite
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .readWrite: "read+write"
        default: "PollMode(\(rawValue))"
        }
    }
}

/// Why an operation on one descriptor did not succeed: a wait, reset or close on a
/// ``PollDescriptor``, or ``Poller/register(_:)``.
///
/// Not to be confused with ``PollerError``, which is about the poller itself (creating it,
/// choosing its backend). Go's counterpart is the `pollErr*` codes that `runtime_pollWait`
/// and `runtime_pollReset` return (see ``PollError/goCode``).
public enum PollError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The descriptor was unblocked (``PollDescriptor/unblock()``) or closed. Go's
    /// `pollErrClosing`; the net layer reports it as "use of closed network connection".
    case closing
    /// The deadline for this direction has passed. Go's `pollErrTimeout`.
    case timeout
    /// The kernel reported an error condition and nothing else on the descriptor; reported to
    /// readers only, as Go's `pollErrNotPollable`.
    case notPollable
    /// The waiting task was cancelled. Go has no counterpart.
    case cancelled
    /// Another waiter is already parked on this direction of this descriptor (Go's "double
    /// wait", which Go treats as fatal). The existing waiter is undisturbed.
    case doubleWait
    /// A mode other than read, write or read+write where one direction is required.
    case invalidMode
    /// ``PollDescriptor/close()`` before ``PollDescriptor/unblock()``. Nothing was changed.
    case notUnblocked
    /// ``PollDescriptor/close()`` while a waiter is still parked. Nothing was changed.
    case waiterParked
    /// ``PollDescriptor/waitBlocking(for:)`` was called on the poller thread (from a task
    /// running on ``PollerExecutor``), where blocking would stop the loop that must wake it.
    case wouldBlockPollerThread
    /// The descriptor could not be registered: `errno` says why (EBADF for a bad or closed
    /// fd, EPERM for a regular file or directory, EINVAL for the poller's own descriptors,
    /// EEXIST if it is already registered with this poller).
    case registrationFailed(errno: Int32)

    /// Go's numeric code for this error (see ``pollErrClosing`` and its siblings).
    public var goCode: Int {
        switch self {
        case .closing: pollErrClosing
        case .timeout: pollErrTimeout
        case .notPollable: pollErrNotPollable
        case .doubleWait: pollErrDoubleWait
        case .cancelled: pollErrCancelled
        case .invalidMode, .notUnblocked, .wouldBlockPollerThread, .waiterParked, .registrationFailed: pollErrInvalidArgument
        }
    }

    public var description: String {
        switch self {
        case .closing: "use of closed poll descriptor"
        case .timeout: "i/o timeout"
        case .notPollable: "not pollable"
        case .cancelled: "wait cancelled"
        case .doubleWait: "double wait: another waiter is parked on this direction"
        case .invalidMode: "invalid poll mode"
        case .notUnblocked: "close of a poll descriptor that was not unblocked first"
        case .waiterParked: "close of a poll descriptor with a waiter still parked"
        case .wouldBlockPollerThread: "blocking wait on the poller thread"
        case .registrationFailed(let errno): "cannot register descriptor: \(ErrnoName.describe(errno))"
        }
    }
}

/// Monotonic time and Duration conversions used for deadlines.
enum MonotonicClock {
    /// CLOCK_MONOTONIC in nanoseconds.
    @inline(__always) static func now() -> Int64 { cpoller_now_ns() }

    /// `d` in nanoseconds, clamped to Int64's range.
    static func nanoseconds(_ d: Duration) -> Int64 {
        let (seconds, attoseconds) = d.components
        let (secNanos, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflow2) = secNanos.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return sum
    }
}
