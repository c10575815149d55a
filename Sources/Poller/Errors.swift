import CPoller
import Glibc

/// Errors from creating or configuring a ``Poller`` itself: starting its thread, choosing
/// and opening its backend, reading `POLLER_BACKEND`.
///
/// Not to be confused with ``PollError``, which is about one registered descriptor (a wait,
/// reset, close or registration that failed).
public enum PollerError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The requested backend cannot run in this process; `reason` says why (for example
    /// "EPERM: io_uring is forbidden for this process (sysctl kernel.io_uring_disabled, or a
    /// seccomp profile such as Docker's default)").
    case backendUnavailable(BackendKind, reason: String)
    /// `POLLER_BACKEND` (or a `--backend` flag) holds a value that is not
    /// `epoll`, `io_uring` or `auto`.
    case invalidBackendName(String)
    /// A system call failed while setting the poller up.
    case system(call: String, errno: Int32)
    /// A ``PollerGroup`` was asked for fewer than one thread (or `POLLER_THREADS` holds
    /// something that is not a positive number); the text is what was asked.
    case invalidThreadCount(String)
    /// ``PollerGroup/installAsDefaultExecutor(threads:backend:)`` came too late: Swift had
    /// already chosen its default executor (a task had been created or awaited), so tasks
    /// would have stayed where they were. Install first thing in `main`, from synchronous code.
    case defaultExecutorAlreadyChosen

    public var description: String {
        switch self {
        case .backendUnavailable(let kind, let reason):
            return "backend \(kind) is unavailable: \(reason)"
        case .invalidBackendName(let name):
            return "unknown backend '\(name)': expected epoll, io_uring or auto"
        case .system(let call, let errno):
            return "\(call) failed: \(ErrnoName.describe(errno))"
        case .invalidThreadCount(let asked):
            return "invalid poller thread count '\(asked)': expected a whole number of 1 or more"
        case .defaultExecutorAlreadyChosen:
            return "Swift's default executor was chosen before installAsDefaultExecutor: call it first in main, before any task"
        }
    }
}

/// Errno names for messages: "EBADF (Bad file descriptor)". Shared with PollerNet.
///
/// The name is glibc's own (`strerrorname_np`), so every errno has its name, not only those a
/// table here would list.
package enum ErrnoName {
    package static func describe(_ code: Int32) -> String {
        let message = String(cString: strerror(code))
        if let name = cpoller_errno_name(code) { return "\(String(cString: name)) (\(message))" }
        return "errno \(code) (\(message))"
    }
}
