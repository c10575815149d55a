import Glibc
import Poller

/// SIGINT and SIGTERM as an awaitable event, for servers that stop cleanly.
///
/// ``install()`` replaces the two signals' handlers with one that writes a byte to a
/// non-blocking pipe (write(2) is async-signal-safe); ``wait(poller:)`` parks on that pipe
/// through the poller. Installing is process-wide and meant for executables, once, at start.
public enum TerminationSignal {
    /// The write end of the pipe. Written only by the signal handler; set once by install().
    nonisolated(unsafe) private static var writeFD: Int32 = -1
    nonisolated(unsafe) private static var readFD: Int32 = -1

    /// Installs the handlers (and ignores SIGPIPE). Call once, before any thread might need
    /// the default action of these signals.
    public static func install() {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        readFD = fds[0]
        writeFD = fds[1]
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in
            var byte: UInt8 = 1
            _ = write(TerminationSignal.writeFD, &byte, 1)
        }
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART
        sigaction(SIGINT, &action, nil)
        sigaction(SIGTERM, &action, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Waits until SIGINT or SIGTERM arrives (after ``install()``).
    public static func wait(poller: Poller) async throws(NetError) {
        guard readFD >= 0 else { throw .system(call: "pipe", errno: EBADF) }
        let pd: PollDescriptor
        do {
            pd = try poller.register(readFD)
        } catch {
            throw .system(call: "register", errno: EBADF)
        }
        defer {
            pd.unblock()
            try? pd.close()
        }
        var byte: UInt8 = 0
        while read(readFD, &byte, 1) != 1 {
            do {
                try await pd.wait(for: .read)
            } catch {
                throw .cancelled
            }
        }
    }
}
