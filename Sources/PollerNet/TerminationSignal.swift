import CPoller
import Glibc
import Poller
import Synchronization

/// SIGINT and SIGTERM as an awaitable event, for servers that stop cleanly.
///
/// ``install()`` replaces the two signals' handlers with one that writes a byte to a
/// non-blocking, close-on-exec pipe (write(2) is async-signal-safe, and the handler saves and
/// restores `errno`, so the code it interrupts never sees it change); ``wait(poller:)`` parks
/// on that pipe through the poller. Installing is process-wide and meant for executables,
/// once, at start.
public enum TerminationSignal {
    /// The pipe's write end, read by the signal handler: an atomic load is async-signal-safe,
    /// a lock is not. -1 when not installed.
    private static let writeEnd = Atomic<Int32>(-1)
    /// The pipe's read end; -1 when not installed.
    private static let readEnd = Atomic<Int32>(-1)
    /// Whether a ``wait(poller:)`` is in progress: one at a time, process-wide.
    private static let waiting = Atomic<Bool>(false)

    /// What ``install()`` replaced, so that tests can put it back.
    private struct Installation {
        var previousInt = sigaction()
        var previousTerm = sigaction()
        var previousPipe = sigaction()
    }

    /// Non-nil once installed. Serialises install and (for tests) uninstall.
    private static let installation = Mutex<Installation?>(nil)

    /// Installs the handlers, and ignores SIGPIPE process-wide. Call once, before any thread
    /// might need the default action of these signals; later calls do nothing.
    ///
    /// Ignoring SIGPIPE is part of what this executable-only call does, and is not needed by
    /// PollerNet itself: its writes report EPIPE instead of raising SIGPIPE whether or not
    /// it is ignored. With it ignored, a write to a closed standard output also fails with
    /// EPIPE instead of ending the process (Go would end it).
    ///
    /// - Throws: `.system(call: "pipe2", errno:)` when the pipe cannot be created (EMFILE,
    ///   ENFILE), `.system(call: "sigaction", errno:)` when a handler cannot be installed; in
    ///   both cases nothing has changed.
    public static func install() throws(NetError) {
        try installation.withLockAnnotated { (installed: inout Installation?) throws(NetError) in
            if installed != nil { return }
            var fds: [Int32] = [-1, -1]
            let r = cpoller_pipe_cloexec_nonblocking(&fds)
            if r < 0 { throw .system(call: "pipe2", errno: -r) }
            readEnd.store(fds[0], ordering: .sequentiallyConsistent)
            writeEnd.store(fds[1], ordering: .sequentiallyConsistent)
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { _ in
                let savedErrno = errno
                var byte: UInt8 = 1
                // A full pipe (EAGAIN) already holds a pending wake-up: nothing is lost.
                _ = write(TerminationSignal.writeEnd.load(ordering: .relaxed), &byte, 1)
                errno = savedErrno
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            var ignore = sigaction()
            ignore.__sigaction_handler.sa_handler = SIG_IGN
            sigemptyset(&ignore.sa_mask)
            // sigaction fails only for an invalid signal or a bad pointer; still, a failure
            // puts back what was already replaced, so that a throw means nothing changed.
            var saved = Installation()
            var failure: Int32 = 0
            if sigaction(SIGINT, &action, &saved.previousInt) != 0 {
                failure = errno
            } else if sigaction(SIGTERM, &action, &saved.previousTerm) != 0 {
                failure = errno
                sigaction(SIGINT, &saved.previousInt, nil)
            } else if sigaction(SIGPIPE, &ignore, &saved.previousPipe) != 0 {
                failure = errno
                sigaction(SIGINT, &saved.previousInt, nil)
                sigaction(SIGTERM, &saved.previousTerm, nil)
            }
            if failure != 0 {
                closePipe()
                throw .system(call: "sigaction", errno: failure)
            }
            installed = saved
        }
    }

    /// Waits until SIGINT or SIGTERM arrives (after ``install()``). Each signal ends one wait;
    /// a signal that arrives while nobody waits ends the next wait at once.
    ///
    /// One wait at a time, process-wide: a second concurrent call is rejected, so that no
    /// waiter silently misses the signal another one consumed.
    ///
    /// - Throws: `.system(call: "TerminationSignal.wait", errno: EBADF)` before
    ///   ``install()``; `.system(call: "TerminationSignal.wait", errno: EBUSY)` while
    ///   another wait is in progress; ``NetError/cancelled`` if the task is cancelled;
    ///   ``NetError/closed`` if `poller` is shut down; `.system(call: "poll register",
    ///   errno:)` if the pipe cannot be registered; `.system(call: "read", errno:)` if
    ///   reading the pipe fails.
    public static func wait(poller: Poller) async throws(NetError) {
        let fd = readEnd.load(ordering: .sequentiallyConsistent)
        guard fd >= 0 else { throw .system(call: "TerminationSignal.wait", errno: EBADF) }
        guard waiting.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
        else { throw .system(call: "TerminationSignal.wait", errno: EBUSY) }
        defer { waiting.store(false, ordering: .sequentiallyConsistent) }
        let pd: PollDescriptor
        do {
            pd = try poller.register(fd)
        } catch {
            throw NetError(error)
        }
        defer {
            pd.unblock()
            try? pd.close()
        }
        var byte: UInt8 = 0
        while true {
            let n = read(fd, &byte, 1)
            if n == 1 { return }
            // The write end stays open while installed: end of file cannot happen.
            if n == 0 { throw .system(call: "read", errno: EBADF) }
            let e = errno
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK:
                do {
                    try await pd.wait(for: .read)
                } catch {
                    throw NetError(error)
                }
            default: throw .system(call: "read", errno: e)
            }
        }
    }

    // MARK: Tests

    #if DEBUG
    /// The pipe's write end (-1 when not installed), for tests that fill the pipe.
    static var writeFDForTesting: Int32 { writeEnd.load(ordering: .sequentiallyConsistent) }

    /// Undoes ``install()`` (handlers back as they were, pipe closed), so that a test does
    /// not leave the test process deaf to SIGINT and SIGTERM. Not for use while waiting.
    static func uninstallForTesting() {
        installation.withLockAnnotated { installed in
            guard let saved = installed else { return }
            restore(saved)
            closePipe()
            installed = nil
        }
    }
    #endif

    private static func restore(_ saved: Installation) {
        var saved = saved
        sigaction(SIGINT, &saved.previousInt, nil)
        sigaction(SIGTERM, &saved.previousTerm, nil)
        sigaction(SIGPIPE, &saved.previousPipe, nil)
    }

    /// Closes the pipe, after the handlers that write to it are gone.
    private static func closePipe() {
        let w = writeEnd.exchange(-1, ordering: .sequentiallyConsistent)
        let r = readEnd.exchange(-1, ordering: .sequentiallyConsistent)
        if w >= 0 { Glibc.close(w) }
        if r >= 0 { Glibc.close(r) }
    }
}
