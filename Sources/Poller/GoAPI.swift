import Glibc
import Synchronization

// Go's runtime_poll* surface (internal/poll/fd_poll_runtime.go), over the process-wide
// group (`PollerGroup.shared()`: descriptors spread across its pollers by `Poller.shared()`),
// so code written against Go's contract ports line for line.

/// Go's pollDesc handle.
public typealias PollDesc = PollDescriptor

/// No error: the direction is ready.
public let pollNoError: Int = 0
/// The descriptor is closing (unblocked or closed): "use of closed network connection".
public let pollErrClosing: Int = 1
/// The deadline for this direction has passed: "i/o timeout".
public let pollErrTimeout: Int = 2
/// An error event on the descriptor (reads only): "not pollable".
public let pollErrNotPollable: Int = 3
/// Not in Go (where it is a fatal "double wait"): a second waiter on a direction that already
/// has one. The first waiter is undisturbed.
public let pollErrDoubleWait: Int = 4
/// Not in Go: a mode other than 'r' (114) or 'w' (119) for a wait, or other than those and
/// 'r'+'w' (233) for a reset; or misuse reported by the Swift API.
public let pollErrInvalidArgument: Int = 5
/// Not in Go: the waiting task was cancelled (Swift API only; `runtime_pollWait` ignores
/// cancellation, as Go has none).
public let pollErrCancelled: Int = 6

/// Starts the process-wide poller if it is not running. Idempotent and thread-safe.
///
/// If the backend named by `POLLER_BACKEND` cannot start (for example `io_uring` where it is
/// forbidden), the reason is written once to standard error and every `runtime_pollOpen`
/// returns `(nil, ENOSYS)`; `Poller.shared()` throws the same error.
public func runtime_pollServerInit() {
    _ = sharedGroupForRuntime()
}

private func sharedGroupForRuntime() -> PollerGroup? {
    do {
        return try PollerGroup.shared()
    } catch {
        reportedInitFailure.withLockAnnotated { reported in
            guard !reported else { return }
            reported = true
            PollerLog.write("poller: cannot start: \(error)")
        }
        return nil
    }
}

private let reportedInitFailure = Mutex(false)

/// Registers `fd` with the process-wide poller. Returns the descriptor and 0, or nil and an
/// errno: EBADF (bad or closed fd), EPERM (regular file or directory), EINVAL (the poller's
/// own descriptors), EEXIST (already registered), ENOSYS (the poller could not start).
///
/// The member of the group is chosen by the descriptor's number, so asking twice for one
/// descriptor reaches the same member and fails with EEXIST, as Go's single epoll does.
public func runtime_pollOpen(_ fd: Int32) -> (PollDesc?, Int32) {
    guard let group = sharedGroupForRuntime() else { return (nil, ENOSYS) }
    guard fd >= 0 else { return (nil, EBADF) }
    if group.isPollerDescriptor(fd) { return (nil, EINVAL) }
    do {
        return (try group.member(forDescriptor: fd).register(fd), 0)
    } catch {
        if case .registrationFailed(let errno) = error { return (nil, errno) }
        return (nil, EINVAL)
    }
}

/// Deregisters and recycles `pd`. Go throws on a close without a prior
/// `runtime_pollUnblock`, or with a waiter still parked; here the call is refused (nothing
/// changes) and the reason is written to standard error. ``PollDescriptor/close()`` reports
/// the same cases as thrown errors.
public func runtime_pollClose(_ pd: PollDesc) {
    do {
        try pd.close()
    } catch {
        PollerLog.write("poller: runtime_pollClose refused: \(error)")
    }
}

/// Go's pollWait: 0 when `mode` ('r' or 'w') is ready, else pollErrClosing, pollErrTimeout,
/// pollErrNotPollable, or this package's pollErrDoubleWait / pollErrInvalidArgument.
/// Task cancellation does not end the wait (Go has none); use ``PollDescriptor/wait(for:)``.
public func runtime_pollWait(_ pd: PollDesc, _ mode: Int) async -> Int {
    guard let m = PollMode(goMode: mode), m != .readWrite else { return pollErrInvalidArgument }
    return await pd.poller.wait(pd.slot, generation: pd.generation, mode: m, cancellable: false)?.goCode ?? pollNoError
}

/// Waits for real readiness on `mode`, ignoring closing and deadlines (Go uses it on Windows
/// only, after a failed cancellation of overlapped I/O).
public func runtime_pollWaitCanceled(_ pd: PollDesc, _ mode: Int) async {
    guard let m = PollMode(goMode: mode), m != .readWrite else { return }
    _ = await pd.poller.wait(pd.slot, generation: pd.generation, mode: m, cancellable: false, ignoringErrors: true)
}

/// Go's pollReset: the pending error code for `mode`, or 0 after forgetting latched readiness.
public func runtime_pollReset(_ pd: PollDesc, _ mode: Int) -> Int {
    guard let m = PollMode(goMode: mode) else { return pollErrInvalidArgument }
    return pd.poller.reset(pd.slot, generation: pd.generation, mode: m)?.goCode ?? pollNoError
}

/// Go's pollSetDeadline: `d` nanoseconds from now (> 0), none (0) or already expired (< 0),
/// for 'r', 'w' or 'r'+'w'. A mode other than those is ignored.
public func runtime_pollSetDeadline(_ pd: PollDesc, _ d: Int64, _ mode: Int) {
    guard let m = PollMode(goMode: mode) else { return }
    pd.setDeadline(goRelative: d, for: m)
}

/// Go's pollUnblock: wakes every waiter with pollErrClosing; later waits fail the same way.
public func runtime_pollUnblock(_ pd: PollDesc) {
    pd.unblock()
}

/// True exactly for the process-wide poller's own descriptors (the epoll or io_uring fd and
/// the wake-up eventfd or pipe). False before the poller has started.
public func runtime_isPollServerDescriptor(_ fd: Int32) -> Bool {
    PollerGroup.sharedIfStarted?.isPollerDescriptor(fd) ?? false
}
