import Synchronization

/// Test seams of PollerNet, reached from tests through `@testable import`. Compiled and consulted
/// only in debug builds (where tests run; the call sites are `#if DEBUG`), and inert there unless a
/// test installs a hook: each seam's path pays one relaxed atomic load of ``active`` and a
/// predictable branch, and never touches the mutex behind it.
///
/// The hooks are process-wide; the net-layer tests that use them run serialized and install
/// them with ``with(_:_:)``, which removes them on every path.
#if DEBUG
enum NetTestHooks {
    struct Hooks: Sendable {
        /// Runs in the slow path of `FDMutex.lock(_:)`, after `beginLock(_:)` took a reference
        /// and before the caller queues for the direction: widens the window in which a
        /// `close()` can start and drop its own reference while the caller still holds one.
        var beforeLockQueue: (@Sendable (FDMutex, FDMutex.Direction) async -> Void)?
        /// Stands in for the write system call (`send` or `write(2)`) of `NetFD.write`:
        /// returns what that call would, or nil to make the real call.
        var writeCall: (@Sendable (_ fd: Int32, _ count: Int) -> Int?)?
        /// Stands in for the `accept4` call of `NetFD.accept` on listener `fd` (on io_uring's
        /// multishot accept path, for the take of a queued connection): returns what that call
        /// would (-1 with `errno` set, to inject an error), or nil to make the real call.
        var acceptCall: (@Sendable (_ fd: Int32) -> Int32?)?

        /// Stands in for `getaddrinfo` in a dial's host lookup, on the lookup thread (so it may
        /// block): the addresses (with the port given) or the error.
        var lookup: (@Sendable (_ host: String, _ port: UInt16) -> Result<[SocketAddress], NetError>)?

        init() {}
    }

    /// Whether any hook is installed.
    static let active = Atomic<Bool>(false)
    private static let hooks = Mutex(Hooks())

    /// The installed hooks; only consulted when ``active`` is true.
    static var current: Hooks { hooks.withLockAnnotated { $0 } }

    /// Runs `body` with `installed` in place, then removes every hook.
    static func with<R>(_ installed: Hooks, _ body: () async throws -> R) async rethrows -> R {
        hooks.withLockAnnotated { $0 = installed }
        active.store(true, ordering: .sequentiallyConsistent)
        defer {
            active.store(false, ordering: .sequentiallyConsistent)
            hooks.withLockAnnotated { $0 = Hooks() }
        }
        return try await body()
    }
}
#endif
