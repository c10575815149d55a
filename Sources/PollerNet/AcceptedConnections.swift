import Glibc
import Poller

/// What to do after an accept error: Go's servers' policy (`net/http.Server.Serve`), used by
/// ``Listener/connections`` and ``Listener/serve(gracePeriod:shutdown:onAcceptError:handler:)``.
///
/// A failure of accept4 itself (out of descriptors or memory, a firewall's EPERM, an EPROTO,
/// anything new) may last, so accepting backs off: 5 ms, doubling to 1 s, reset by the next
/// accepted connection. A connection whose set-up failed after accept4 succeeded (the peer
/// reset it at once) is already closed: accepting goes on at once. Nothing here ends
/// accepting, and nothing lets it spin.
public struct AcceptBackoff: Sendable {
    /// The first delay: 5 ms.
    public static let initialDelay: Duration = .milliseconds(5)
    /// The longest delay: 1 s.
    public static let maximumDelay: Duration = .seconds(1)

    /// The delay the last failure asked for; zero after a success.
    public private(set) var delay: Duration = .zero

    public init() {}

    /// Call after each accepted connection: the next failure starts at ``initialDelay``.
    public mutating func reset() { delay = .zero }

    /// How long to wait before accepting again after `error`: zero when only one connection's
    /// set-up failed, else the next delay of the back-off. Not meant for the errors that end
    /// accepting (``NetError/closed``, and ``NetError/timeout`` or ``NetError/cancelled``
    /// unless the caller wants to go on after them).
    public mutating func delay(after error: NetError) -> Duration {
        guard Self.isAcceptFailure(error) else { return .zero }
        delay = delay == .zero ? Self.initialDelay : min(delay * 2, Self.maximumDelay)
        return delay
    }

    /// Whether `error` came from accept4 itself (the listener's condition) rather than from
    /// setting up one accepted connection.
    public static func isAcceptFailure(_ error: NetError) -> Bool {
        switch error {
        case .tooManyOpenFiles: true
        case .system(let call, _): call.hasPrefix("accept")
        case .connectionReset, .endOfFile: false  // the new peer went away during set-up
        default: true  // anything new: treat it as the listener's
        }
    }
}

/// The connections a listener accepts, as an async sequence: ``Listener/connections``.
///
/// ```swift
/// for try await connection in listener.connections {
///     Task(executorPreference: connection.executor) { await handle(connection) }
/// }
/// ```
///
/// The sequence ends (returns nil) when the listener is closed, from anywhere. Accept errors
/// do not end it: it backs off (``AcceptBackoff``: 5 ms doubling to 1 s) on the listener's
/// poller's own timers, which work while the process is out of descriptors, and accepts
/// again; ``onAcceptError(_:)`` reports them. A listener closed during a back-off ends the
/// sequence when the back-off is over (at most 1 s).
///
/// - Throws (from `next()`): ``NetError/timeout`` once the listener's deadline
///   (``Listener/setDeadline(_:)``) has passed; ``NetError/cancelled`` if the iterating task
///   is cancelled (the listener stays open). After a throw the iterator is finished: `next()`
///   returns nil.
public struct AcceptedConnections: AsyncSequence, Sendable {
    public typealias Element = Connection
    public typealias Failure = NetError

    let listener: any Listener
    let report: (@Sendable (NetError, Duration) -> Void)?

    /// The same sequence, calling `report` with each accept error and the delay before the
    /// next accept (zero when only that connection's set-up failed). `report` runs in the
    /// iterating task; keep it short (a rate-limited log line).
    public func onAcceptError(_ report: @escaping @Sendable (NetError, Duration) -> Void) -> AcceptedConnections {
        AcceptedConnections(listener: listener, report: report)
    }

    public func makeAsyncIterator() -> Iterator {
        Iterator(listener: listener, report: report)
    }

    /// Accepts with the back-off of ``AcceptBackoff``.
    public struct Iterator: AsyncIteratorProtocol {
        let listener: any Listener
        let report: (@Sendable (NetError, Duration) -> Void)?
        var backoff = AcceptBackoff()
        var timer: PollerAlarm?
        var finished = false

        init(listener: any Listener, report: (@Sendable (NetError, Duration) -> Void)?) {
            self.listener = listener
            self.report = report
        }

        /// The next connection, or nil once the listener is closed.
        public mutating func next() async throws(NetError) -> Connection? {
            try await next(isolation: nil)
        }

        /// The next connection, or nil once the listener is closed.
        public mutating func next(isolation actor: isolated (any Actor)?) async throws(NetError) -> Connection? {
            guard !finished else { return nil }
            do {
                return try await accept()
            } catch {
                finished = true
                throw error
            }
        }

        private nonisolated(nonsending) mutating func accept() async throws(NetError) -> Connection? {
            let timer: PollerAlarm
            if let made = self.timer {
                timer = made
            } else {
                timer = PollerAlarm(poller: listener.netFD.poller)
                self.timer = timer
            }
            while true {
                let outcome = await AcceptStep.run(listener, &backoff, report: report)
                switch outcome {
                case .accepted(let connection): return connection
                case .listenerClosed:
                    finished = true
                    return nil
                case .failed(let error): throw error
                case .backOff(let delay):
                    timer.arm(in: delay)
                    await timer.wait()
                }
            }
        }
    }
}

/// One accept and what the policy makes of its outcome; shared by the sequence and `serve`.
enum AcceptStep {
    case accepted(Connection)
    case listenerClosed
    /// An error that ends accepting: timeout, cancellation.
    case failed(NetError)
    /// Wait this long (zero: not at all) before the next accept.
    case backOff(Duration)

    nonisolated(nonsending) static func run(
        _ listener: any Listener, _ backoff: inout AcceptBackoff, report: (@Sendable (NetError, Duration) -> Void)?
    ) async -> AcceptStep {
        do {
            let connection = try await listener.accept()
            backoff.reset()
            return .accepted(connection)
        } catch .closed {
            return .listenerClosed
        } catch .timeout {
            return .failed(.timeout)
        } catch .cancelled {
            return .failed(.cancelled)
        } catch {
            let delay = backoff.delay(after: error)
            report?(error, delay)
            return .backOff(delay)
        }
    }
}

extension Listener {
    /// The connections this listener accepts, until it is closed; accept errors back off and
    /// accepting goes on (see ``AcceptedConnections``).
    ///
    /// ```swift
    /// for try await connection in listener.connections { … }   // ends when listener.close() is called
    /// ```
    public var connections: AcceptedConnections {
        AcceptedConnections(listener: self, report: nil)
    }
}
