import CPoller
import Glibc
import Synchronization

// Start-up and shutdown: the poller thread's birth (the backend is made on that thread), the
// process-wide shared poller, and the stop that ends the loop. The designated initializer
// stays with the stored properties in Poller.swift and calls `PollerThreadStart.launch`.

extension Poller {
    /// Starts a poller thread with the given backend choice.
    ///
    /// - Throws: ``PollerError/backendUnavailable(_:reason:)`` when `.ioUring` is forced
    ///   where io_uring cannot work (the reason names the errno and the likely cause), or
    ///   ``PollerError/system(call:errno:)``.
    public convenience init(backend choice: BackendChoice) throws(PollerError) {
        try self.init(backend: choice, options: Options())
    }

    /// Starts a poller with the backend named by `POLLER_BACKEND` (`auto` when unset).
    public convenience init() throws(PollerError) {
        try self.init(backend: try BackendChoice.fromEnvironment())
    }

    /// A poller of the process-wide group (``PollerGroup/shared()``, sized by
    /// `POLLER_THREADS`, on the backend named by `POLLER_BACKEND`), started on first use: the
    /// member whose thread is calling, else the next member in turn, so descriptors
    /// registered from plain code spread across the group and those registered from a
    /// member's own tasks stay on it. With `POLLER_THREADS=1` every call returns the same
    /// poller. Thread-safe; throws the group's start-up error on every call if it failed.
    public static func shared() throws(PollerError) -> Poller {
        try PollerGroup.shared().poller()
    }

    /// The poller whose thread is running the caller (a job on its ``executor``), or nil on
    /// any other thread.
    public static var current: Poller? {
        guard let raw = cpoller_current_poller() else { return nil }
        return Unmanaged<Poller>.fromOpaque(raw).takeUnretainedValue()
    }

    /// Stops the poller thread: every descriptor still open is unblocked (its waiters return
    /// ``PollError/closing``), the thread exits, and the backend's descriptors are closed.
    /// Tasks that prefer ``executor`` afterwards run on the global executor. Idempotent.
    /// Called from a task running on ``executor`` (that is, on the poller thread), it requests
    /// the stop and returns at once instead of waiting for the thread, which would wait for
    /// itself; the thread then ends when that task's job returns.
    public func shutdown() {
        let onPollerThread = cpoller_thread_id() == threadID
        guard
            shutdownStarted.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent)
                .exchanged
        else {
            // A second call waits for the first one's stop, except on the poller thread,
            // which cannot see its own loop end (issue 11: a second shutdown from the
            // executor parked the poller thread on its own exit).
            guard !onPollerThread else { return }
            loopExited.park()
            loopExited.unpark()
            return
        }
        runQueue.state.withLockAnnotated { $0.stopRequested = true }
        backend.wake()
        if onPollerThread {
            // Nobody else will join the thread: let it release its stack when it ends.
            _ = cpoller_thread_detach(threadID)
        } else {
            _ = cpoller_thread_join(threadID)
        }
    }
}

extension Poller {
    /// Set-up knobs of the designated initializer, for the convenience initializers, tests
    /// and tools.
    struct Options: Sendable {
        /// Make the wake-up channel a self-pipe even where eventfd works.
        var forcePipeWake = false
        var autoPrefersIOUring = BackendChoice.autoPrefersIOUring
        var threadName = "poller"
        /// io_uring's completion receive (`POLLER_URING_RECV=off` turns it off).
        var receive = URingBackend.ReceiveSettings.fromEnvironment()
        /// io_uring's completion send (`POLLER_URING_SEND=off` turns it off).
        var send = URingBackend.SendSettings.fromEnvironment()
        /// io_uring's multishot accept for listeners (`POLLER_URING_ACCEPT=off` turns it off).
        var accept = URingBackend.AcceptSettings.fromEnvironment()
        /// io_uring's submission and completion queue sizes (tests shrink the completion queue
        /// to make it overflow).
        var uringEntries: (submission: UInt32, completion: UInt32) = (512, 16384)
        #if DEBUG
        var hooks = TestHooks()
        #endif
    }
}

/// Hand-off between `Poller.init` and the poller thread it starts.
///
/// The backend is created on the poller thread itself: an io_uring ring set up with
/// SINGLE_ISSUER may only ever be used by the thread that created it. So `init` starts the
/// thread, waits (`created`) for its backend, finishes the `Poller`, and only then lets the
/// thread run its loop (`go`). `exited` is signalled once the loop has closed everything.
final class PollerThreadStart: Sendable {
    let kind: BackendKind
    let options: Poller.Options
    let created = ParkerBox()
    let go = ParkerBox()
    let exited = ParkerBox()
    let result = Mutex<Result<any PollerBackend, PollerError>?>(nil)
    let poller = Mutex<Poller?>(nil)

    init(kind: BackendKind, options: Poller.Options) {
        self.kind = kind
        self.options = options
    }

    /// Starts the poller thread and waits until it has made its backend. On failure the
    /// thread has ended (and been joined).
    static func launch(
        kind: BackendKind, options: Poller.Options
    ) throws(PollerError) -> (start: PollerThreadStart, thread: UInt64, backend: any PollerBackend) {
        let start = PollerThreadStart(kind: kind, options: options)
        var thread: UInt64 = 0
        let context = Unmanaged.passRetained(start).toOpaque()
        let err = cpoller_thread_start(&thread, pollerThreadMain, context)
        guard err == 0 else {
            Unmanaged<PollerThreadStart>.fromOpaque(context).release()
            throw .system(call: "pthread_create", errno: err)
        }
        start.created.park()
        switch start.result.withLockAnnotated({ $0 }) {
        case .success(let backend)?:
            return (start, thread, backend)
        case .failure(let error)?:
            _ = cpoller_thread_join(thread)
            throw error
        case nil:
            _ = cpoller_thread_join(thread)
            throw .system(call: "poller thread start", errno: EINVAL)
        }
    }

    /// Lets the waiting thread run `poller`'s loop; `poller` is fully initialised.
    func handOff(to poller: Poller) {
        self.poller.withLockAnnotated { $0 = poller }
        go.unpark()
    }
}

private func pollerThreadMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let start = Unmanaged<PollerThreadStart>.fromOpaque(context!).takeRetainedValue()
    cpoller_thread_set_name(start.options.threadName)
    let backend: any PollerBackend
    do throws(PollerError) {
        #if DEBUG
        if let error = start.options.hooks.beforeBackendSetup?(start.options.threadName) { throw error }
        #endif
        backend = try start.kind.makeBackend(
            forcePipeWake: start.options.forcePipeWake, receive: start.options.receive, send: start.options.send,
            accept: start.options.accept,
            uringEntries: start.options.uringEntries)
    } catch {
        start.result.withLockAnnotated { $0 = .failure(error) }
        start.created.unpark()
        return nil
    }
    start.result.withLockAnnotated { $0 = .success(backend) }
    start.created.unpark()
    start.go.park()
    guard let poller = start.poller.withLockAnnotated({ $0 }) else { return nil }
    start.poller.withLockAnnotated { $0 = nil }
    // Unretained: `poller` holds it for as long as the loop runs on this thread.
    cpoller_set_current_poller(Unmanaged.passUnretained(poller).toOpaque())
    poller.runLoop()
    cpoller_set_current_poller(nil)
    return nil
}
