import CPoller
import Glibc
import Synchronization

/// Several pollers, one thread each: Go's netpoll on every core, SwiftNIO's event-loop group.
///
/// Each member is a complete ``Poller`` with its own backend instance (an io_uring ring stays
/// owned by its thread), its own deadline timers and its own run queue, so members share no
/// lock on any path: a descriptor lives on one member, and a read, its wake-up and the resumed
/// task stay on that member's thread when the task runs on the member's ``Poller/executor``.
///
/// ```swift
/// let group = try PollerGroup()                  // one poller per CPU this process may use
/// let listener = try TCPListener.listen(host: "0.0.0.0", port: 8080, group: group)
/// ```
///
/// The process-wide group (``shared()``) is what ``Poller/shared()`` and the `runtime_poll*`
/// functions use; its size comes from `POLLER_THREADS`.
public final class PollerGroup: Sendable {
    /// The members, each with its own thread. Never empty.
    public let pollers: [Poller]
    /// The thread count asked for (before the clamp to ``availableCPUs``).
    public let requestedThreads: Int
    /// Round-robin cursor of ``next()``.
    private let cursor = Atomic<Int>(0)

    /// The environment variable read by ``init()`` and ``shared()``: the number of pollers
    /// (unset: one per CPU this process may run on).
    public static let threadsEnvironmentVariable = "POLLER_THREADS"

    /// The CPUs in this process's affinity mask (`sched_getaffinity`: `taskset` and container
    /// cpusets are honoured), at least 1.
    public static var availableCPUs: Int { max(1, Int(cpoller_affinity_cpu_count())) }

    /// Starts `threads` pollers on `backend`.
    ///
    /// - Parameters:
    ///   - threads: how many pollers; nil for ``availableCPUs``. More than ``availableCPUs``
    ///     is clamped to it (a poller thread that has no CPU of its own only adds hand-offs);
    ///     ``requestedThreads`` keeps what was asked.
    ///   - backend: the backend of every member. `.auto` is resolved once, so every member
    ///     runs the same backend.
    /// - Throws: ``PollerError/invalidThreadCount(_:)`` for fewer than 1 thread. If any member
    ///   cannot start (io_uring refused for one ring, say), the members already started are
    ///   shut down and joined and that member's error is thrown: a group is never
    ///   half-started.
    public convenience init(threads: Int? = nil, backend: BackendChoice) throws(PollerError) {
        try self.init(threads: threads, backend: backend, options: Poller.Options())
    }

    /// Starts a group sized by `POLLER_THREADS` (one poller per CPU when unset) on the
    /// backend named by `POLLER_BACKEND` (`auto` when unset).
    public convenience init() throws(PollerError) {
        try self.init(threads: try Self.threadsFromEnvironment(), backend: try BackendChoice.fromEnvironment())
    }

    init(threads: Int?, backend choice: BackendChoice, options: Poller.Options) throws(PollerError) {
        let asked = threads ?? Self.availableCPUs
        guard asked >= 1 else { throw .invalidThreadCount(String(asked)) }
        let count = min(asked, Self.availableCPUs)
        let (kind, reason) = try choice.resolve(autoPrefersIOUring: options.autoPrefersIOUring)
        var started: [Poller] = []
        started.reserveCapacity(count)
        for index in 0..<count {
            var memberOptions = options
            memberOptions.threadName = count == 1 ? options.threadName : "\(options.threadName)-\(index)"
            do {
                started.append(try Poller(kind: kind, reason: reason, options: memberOptions))
            } catch {
                for poller in started { poller.shutdown() }
                throw error
            }
        }
        pollers = started
        requestedThreads = asked
    }

    /// The number of pollers.
    public var count: Int { pollers.count }

    /// The backend every member runs.
    public var backendKind: BackendKind { pollers[0].backendKind }

    /// Why that backend was chosen.
    public var backendReason: String { pollers[0].backendReason }

    /// The members in turn: where to put the next descriptor.
    public func next() -> Poller {
        pollers.count == 1 ? pollers[0] : pollers[cursor.wrappingAdd(1, ordering: .relaxed).oldValue % pollers.count]
    }

    /// The member whose thread is calling, if any; else ``next()``. Registering from a task
    /// that runs on a member keeps the descriptor on the caller's thread.
    public func poller() -> Poller {
        if let current = Poller.current, contains(current) { return current }
        return next()
    }

    /// The member that `fd` maps to by its number: the same member every time, so two
    /// registrations of one descriptor meet on one backend (which refuses the second with
    /// EEXIST). The number is hashed (Fibonacci hashing) rather than taken modulo the count,
    /// because descriptors often come in pairs (pipes, a socket and a file), which would put
    /// every registered end on the same member.
    public func member(forDescriptor fd: Int32) -> Poller {
        let hash = (UInt64(UInt32(bitPattern: fd)) &* 0x9E37_79B9_7F4A_7C15) >> 32
        return pollers[Int(hash % UInt64(pollers.count))]
    }

    /// Whether `poller` is a member.
    public func contains(_ poller: Poller) -> Bool { pollers.contains { $0 === poller } }

    /// Whether `fd` is one of any member's own descriptors (Go's
    /// `runtime_isPollServerDescriptor` over the group).
    public func isPollerDescriptor(_ fd: Int32) -> Bool { pollers.contains { $0.isPollerDescriptor(fd) } }

    /// The waiters parked on all members' descriptors.
    public var parkedWaiterCount: Int { pollers.reduce(0) { $0 + $1.parkedWaiterCount } }

    /// The descriptors registered with all members.
    public var openDescriptorCount: Int { pollers.reduce(0) { $0 + $1.openDescriptorCount } }

    /// Shuts every member down (``Poller/shutdown()``) and joins every thread, except the
    /// calling member's own when called from a member's executor (it ends when the calling
    /// job returns). Idempotent.
    public func shutdown() {
        for poller in pollers { poller.shutdown() }
    }

    /// The number named by `POLLER_THREADS`, or nil when it is unset or empty.
    ///
    /// - Throws: ``PollerError/invalidThreadCount(_:)`` when it is not a whole number ≥ 1.
    public static func threadsFromEnvironment() throws(PollerError) -> Int? {
        guard let raw = getenv(threadsEnvironmentVariable) else { return nil }
        let text = String(cString: raw)
        if text.isEmpty { return nil }
        guard let n = Int(text), n >= 1 else { throw .invalidThreadCount(text) }
        return n
    }

    /// The process-wide group, started on first use as ``init()`` does. Thread-safe; every
    /// call returns the same group or the same error.
    public static func shared() throws(PollerError) -> PollerGroup {
        try startShared(threads: nil, backend: nil)
    }

    /// The shared group; if this call starts it, with `threads` and `backend` (nil: from the
    /// environment, as ``init()``).
    static func startShared(threads: Int?, backend: BackendChoice?) throws(PollerError) -> PollerGroup {
        try sharedGroup.withLockAnnotated { result throws(PollerError) -> PollerGroup in
            if result == nil {
                do throws(PollerError) {
                    var count = threads
                    if count == nil { count = try threadsFromEnvironment() }
                    var choice = backend
                    if choice == nil { choice = try BackendChoice.fromEnvironment() }
                    result = .success(try PollerGroup(threads: count, backend: choice!, options: Poller.Options()))
                } catch {
                    result = .failure(error)
                }
            }
            return try result!.get()
        }
    }

    /// The shared group if it has been started.
    static var sharedIfStarted: PollerGroup? {
        sharedGroup.withLockAnnotated { result in
            if case .success(let group)? = result { return group }
            return nil
        }
    }
}

/// The process-wide group, started on first use.
private let sharedGroup = Mutex<Result<PollerGroup, PollerError>?>(nil)
