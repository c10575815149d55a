import Glibc
import Poller
import Synchronization

/// Starts the graceful shutdown of one or more ``Listener/serve(gracePeriod:shutdown:onAcceptError:handler:)``
/// calls: the handle to give to a service lifecycle's graceful-shutdown hook.
///
/// ```swift
/// let shutdown = ServingHandle()
/// // swift-service-lifecycle: try await withGracefulShutdownHandler { … } onGracefulShutdown: { shutdown.shutdown() }
/// await listener.serve(gracePeriod: .seconds(10), shutdown: shutdown) { connection in … }
/// ```
///
/// ``shutdown()`` is synchronous and may be called from anywhere (a signal-handling task, a
/// lifecycle hook), any number of times. A serve call started with a handle that is already
/// shut down closes its listener and returns at once.
public final class ServingHandle: Sendable {
    private struct State {
        var isShutDown = false
        var runs: [ObjectIdentifier: ServeRun] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// Whether ``shutdown()`` has been called.
    public var isShutDown: Bool { state.withLockAnnotated { $0.isShutDown } }

    /// Begins the graceful shutdown of every serve call using this handle: each stops
    /// accepting (its listener is closed), lets its handlers run for its grace period, then
    /// closes the connections still open and returns once every handler has returned.
    public func shutdown() {
        let runs = state.withLockAnnotated { state -> [ServeRun] in
            state.isShutDown = true
            return Array(state.runs.values)
        }
        for run in runs { run.stop() }
    }

    /// Adds `run`, or stops it at once when shut down already.
    func register(_ run: ServeRun) {
        let shutDown = state.withLockAnnotated { state -> Bool in
            if !state.isShutDown { state.runs[ObjectIdentifier(run)] = run }
            return state.isShutDown
        }
        if shutDown { run.stop() }
    }

    func unregister(_ run: ServeRun) {
        _ = state.withLockAnnotated { $0.runs.removeValue(forKey: ObjectIdentifier(run)) }
    }
}

/// One serve call's shared state: its open connections and where its shutdown stands.
///
/// The accept loop stops through the listener's deadline (set to now: a parked accept wakes
/// with `.timeout`, a later one fails at once) and the timer (a back-off in progress ends),
/// so `stop()` needs no task and no lock order beyond state → poller.
final class ServeRun: Sendable {
    private struct State {
        var open: [ObjectIdentifier: Connection] = [:]
        /// Set by `stop()`: accept no more.
        var stopping = false
        /// Set when the accept loop has ended: the last handler to return expires the timer.
        var draining = false
    }

    private let state = Mutex(State())
    let listener: any Listener
    /// The accept loop's back-off and the grace period sleep on it: no descriptor needed, so
    /// a serve started or backing off at EMFILE works.
    let timer: PollerAlarm

    init(listener: any Listener) {
        self.listener = listener
        self.timer = PollerAlarm(poller: listener.netFD.poller)
    }

    var isStopping: Bool { state.withLockAnnotated { $0.stopping } }

    func stop() {
        state.withLockAnnotated { state in
            state.stopping = true
            // Under the lock, so that a back-off armed by `backOff(for:)` cannot overwrite it.
            timer.expire()
        }
        try? listener.setDeadline(in: .zero)  // .closed: the accept loop is ending anyway
    }

    /// Arms the timer for a back-off unless stopping; false when stopping.
    func backOff(for delay: Duration) -> Bool {
        state.withLockAnnotated { state in
            if state.stopping { return false }
            timer.arm(in: delay)
            return true
        }
    }

    /// Records `connection` as served; false (do not serve it) once stopping.
    func admit(_ connection: Connection) -> Bool {
        state.withLockAnnotated { state in
            if state.stopping { return false }
            state.open[ObjectIdentifier(connection)] = connection
            return true
        }
    }

    /// A handler has returned and its connection is closed.
    func finished(_ connection: Connection) {
        state.withLockAnnotated { state in
            state.open.removeValue(forKey: ObjectIdentifier(connection))
            if state.draining && state.open.isEmpty { timer.expire() }
        }
    }

    /// Stops accepting and starts the grace period; false if no handler is left.
    func startDraining(gracePeriod: Duration) -> Bool {
        state.withLockAnnotated { state in
            state.stopping = true
            state.draining = true
            if state.open.isEmpty { return false }
            timer.arm(in: gracePeriod)
            return true
        }
    }

    /// The connections whose handlers have not returned.
    func stillOpen() -> [Connection] {
        state.withLockAnnotated { Array($0.open.values) }
    }
}

extension Listener {
    /// Accepts connections and runs `handler` for each, in a task of a discarding task group
    /// on the connection's own poller executor, until the listener is closed or shut down;
    /// then lets the handlers finish, within `gracePeriod`, and returns once all have.
    ///
    /// ```swift
    /// let shutdown = ServingHandle()
    /// await listener.serve(gracePeriod: .seconds(10), shutdown: shutdown) { connection in
    ///     while let bytes = try? await connection.read(maxBytes: 4096) {
    ///         try? await connection.write(bytes)
    ///     }
    /// }   // shutdown.shutdown() from elsewhere: stops accepting, drains, returns
    /// ```
    ///
    /// Each handler runs on the thread of the poller its connection is registered with
    /// (`connection.executor`: a listener with a `group` spreads them over the group), so its
    /// reads, their wake-ups and the handler stay on one thread. When a handler returns, its
    /// connection is closed (closing it in the handler is fine too).
    ///
    /// The accept loop runs on the listener's poller executor, in the calling task. Accept
    /// errors never end it: it backs off as ``AcceptBackoff`` says, on the poller's timers
    /// (no `Task.sleep`, so it works while the process is out of descriptors), and reports
    /// each error to `onAcceptError` (with the delay before the next accept).
    ///
    /// Stopping, the way swift-service-lifecycle expects a service to stop:
    /// - **Graceful** (``ServingHandle/shutdown()``, or ``close()`` of the listener from
    ///   elsewhere, or the listener's deadline passing): no new connection is accepted (the
    ///   listener is closed, so new clients are refused); the handlers in flight run on for up
    ///   to `gracePeriod`; then the connections still open are closed, so that their blocked
    ///   reads and writes fail with ``NetError/closed`` and their handlers can return. `serve`
    ///   returns once every handler has returned (at once if none was running).
    /// - **Forced** (the task running `serve` is cancelled): the same, but the handlers' tasks
    ///   are cancelled as well, so their blocked reads and writes fail with
    ///   ``NetError/cancelled`` at once (unless a connection's
    ///   ``Connection/observesTaskCancellation`` is off; then the grace period applies to it).
    ///
    /// A handler that neither returns nor touches its connection after the grace period keeps
    /// `serve` from returning: nothing can stop a task that ignores both.
    ///
    /// - Parameters:
    ///   - gracePeriod: how long handlers may run after shutdown begins before their
    ///     connections are closed; zero or less closes them at once. Default 30 s.
    ///   - shutdown: the handle whose ``ServingHandle/shutdown()`` starts a graceful shutdown;
    ///     nil when closing the listener or cancelling the task is enough.
    ///   - onAcceptError: called in the accept loop with each accept error and the delay
    ///     before the next accept (zero when only that connection's set-up failed); keep it
    ///     short. nil ignores them.
    ///   - handler: serves one connection.
    ///
    /// Every ending returns normally, with the listener closed: shutdown, the listener's close
    /// or deadline, cancellation. Starting needs no descriptor, so a serve started while the
    /// process is out of descriptors accepts once one is free.
    public func serve(
        gracePeriod: Duration = .seconds(30),
        shutdown: ServingHandle? = nil,
        onAcceptError: (@Sendable (NetError, Duration) -> Void)? = nil,
        handler: @escaping @Sendable (Connection) async -> Void
    ) async {
        let run = ServeRun(listener: self)
        shutdown?.register(run)
        defer { shutdown?.unregister(run) }
        await withTaskExecutorPreference(netFD.poller.executor) {
            await withDiscardingTaskGroup { handlers in
                var backoff = AcceptBackoff()
                while !run.isStopping {
                    switch await AcceptStep.run(self, &backoff, report: onAcceptError) {
                    case .accepted(let connection):
                        guard run.admit(connection) else {
                            try? await connection.close()
                            break
                        }
                        handlers.addTask(executorPreference: connection.executor) {
                            await handler(connection)
                            try? await connection.close()
                            run.finished(connection)
                        }
                    case .listenerClosed, .failed:
                        run.stop()
                    case .backOff(let delay):
                        if delay > .zero && run.backOff(for: delay) { await run.timer.wait() }
                    }
                }
                try? await close()  // refuse new clients; .closed if closed already
                if run.startDraining(gracePeriod: gracePeriod) { await run.timer.wait() }
                for connection in run.stillOpen() { try? await connection.close() }
                // The group waits for the handlers, whose connections are all closed now.
            }
        }
    }
}
