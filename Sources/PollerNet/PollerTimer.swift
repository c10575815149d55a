import CPoller
import Glibc
import Poller

/// A sleep on a poller's own timers: a pipe that is never written, registered with the poller
/// and waited on with a read deadline. One waiter at a time.
///
/// Not `Task.sleep`: Dispatch opens its timer descriptors lazily and traps when it cannot,
/// which is exactly the state (out of descriptors) in which an accept loop must back off.
/// Made once, before it is needed; closed by `deinit`.
final class PollerTimer: Sendable {
    private let readFD: Int32, writeFD: Int32
    private let descriptor: PollDescriptor

    /// - Throws: `.system(call: "pipe2", errno:)` (EMFILE, ENFILE) or `.system(call: "poll
    ///   register", errno:)`; nothing is left open.
    init(poller: Poller) throws(NetError) {
        var fds: [Int32] = [-1, -1]
        let r = cpoller_pipe_cloexec_nonblocking(&fds)
        if r < 0 { throw .system(call: "pipe2", errno: -r) }
        (readFD, writeFD) = (fds[0], fds[1])
        do {
            descriptor = try poller.register(fds[0])
        } catch {
            Glibc.close(fds[0])
            Glibc.close(fds[1])
            throw NetError(error)
        }
    }

    deinit {
        descriptor.unblock()
        try? descriptor.close()
        Glibc.close(readFD)
        Glibc.close(writeFD)
    }

    /// Sets the time ``wait()`` returns at: `duration` from now (zero or less: at once).
    func arm(in duration: Duration) {
        descriptor.setDeadline(in: duration, for: .read)
    }

    /// Makes a pending or the next ``wait()`` return at once (until ``arm(in:)`` again).
    func expire() {
        descriptor.setDeadline(in: .zero, for: .read)
    }

    /// Returns when the armed time comes or ``expire()`` is called, whatever the task's
    /// cancellation (or at once if the poller has shut down).
    nonisolated(nonsending) func wait() async {
        // Only .timeout can end it (nothing ever makes the pipe readable), or .closing at
        // poller shutdown.
        try? await descriptor.wait(for: .read, cancellable: false)
    }
}
