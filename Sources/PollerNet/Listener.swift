import Glibc
import Poller

/// What every listening socket offers, whatever its address family: Go's `net.Listener`.
/// ``TCPListener`` and ``UnixListener`` differ only in how they bind.
public protocol Listener: Sendable {
    /// The listening descriptor and its poller registration.
    var netFD: NetFD { get }
    /// The bound address (for TCP, with the port the kernel chose when 0 was asked for).
    var localAddress: SocketAddress { get }
    /// The poller for the listener (and for the connections it accepts, unless ``group``
    /// is set); nil for `Poller.shared()`.
    var poller: Poller? { get }
    /// The group whose pollers take the accepted connections in turn, or nil for the
    /// listener's own ``poller``. Conformers that do not say have none.
    var group: PollerGroup? { get }
    /// How many descriptors below the soft RLIMIT_NOFILE ``accept()`` leaves free for the
    /// rest of the process: a connection that would take one of them is closed at once
    /// (shed) and ``accept()`` throws ``NetError/tooManyOpenFiles(errno:)``. 0 turns shedding
    /// off. Conformers that do not say take ``defaultDescriptorHeadroom``.
    ///
    /// Why: a process sitting at its descriptor limit can be killed by code it does not
    /// control. libdispatch (under Swift's global executor) aborts with SIGILL when its worker
    /// monitor cannot open `/proc/<tid>/stat`, so a flood of connections that fills the table
    /// would crash the server whatever it does with the error.
    var descriptorHeadroom: Int { get }
}

extension Listener {
    /// The headroom listeners keep unless told otherwise: 16 descriptors.
    ///
    /// Enough for what the runtime opens on its own (libdispatch's monitor opens one file at
    /// a time, its timers a few descriptors once) with room to spare; small beside common
    /// limits (1,024 and up), a quarter of a 64-descriptor limit.
    public static var defaultDescriptorHeadroom: Int { 16 }

    /// A stream socket bound to `address` and listening, owned by a new `NetFD` on `poller`:
    /// the one construction path of ``TCPListener`` and ``UnixListener``.
    ///
    /// `beforeBind` sets socket options that must precede bind(2). `afterClose` undoes what a
    /// successful bind created outside the socket (a Unix socket's file): it runs when
    /// listen(2) fails and, through the `NetFD`, after the socket is closed, but never after a
    /// failed bind, which created nothing. The socket is closed on every failure.
    static func listeningNetFD(
        address: SocketAddress, backlog: Int32?, poller: Poller?,
        beforeBind: (Int32) throws(NetError) -> Void = { _ in },
        afterClose: (@Sendable () -> Void)? = nil
    ) throws(NetError) -> NetFD {
        let fd = try SocketOptions.makeStreamSocket(family: address.family)
        do throws(NetError) {
            try beforeBind(fd)
            let bound = try address.withSockaddr { bind(fd, $0, $1) == 0 ? 0 : errno }
            if bound != 0 { throw .system(call: "bind", errno: bound) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        if Glibc.listen(fd, backlog ?? SocketOptions.systemBacklog) != 0 {
            let e = errno
            Glibc.close(fd)
            afterClose?()
            throw .system(call: "listen", errno: e)
        }
        // NetFD owns fd from here, closing it (and running afterClose) itself on failure.
        let netFD = try NetFD(adopting: fd, poller: poller, isStream: true, isSocket: true, afterClose: afterClose)
        netFD.allowRingAccept()
        return netFD
    }

    /// No group, for conformers that keep none: connections go to ``poller``.
    public var group: PollerGroup? { nil }

    /// ``defaultDescriptorHeadroom``, for conformers that keep no value of their own.
    public var descriptorHeadroom: Int { Self.defaultDescriptorHeadroom }

    /// Waits for and returns the next connection (TCP_NODELAY and Go's keep-alive on for TCP,
    /// registered with the next poller of ``group`` in turn, else with this listener's
    /// ``poller``), keeping ``descriptorHeadroom`` descriptors free. Serve it from a task on its poller's executor
    /// (`Task(executorPreference: connection.executor)`) so its reads, their wake-ups and the
    /// task stay on one thread.
    ///
    /// A connection is never returned in the top ``descriptorHeadroom`` descriptor slots below
    /// the soft RLIMIT_NOFILE (the kernel hands out the lowest free number, so such a number
    /// means the lower slots are full): it is closed at once, its client sees end of file (or
    /// a reset if it had sent data), and this throws `tooManyOpenFiles(errno: EMFILE)`. Each
    /// call sheds at most one connection; accepting again at once is safe (the shed
    /// connection is gone, so there is nothing to spin on), and backing off as Go's servers
    /// do is fine too. Connections are served again as soon as descriptors below the
    /// headroom free up.
    ///
    /// On io_uring (where the kernel has it, unless `POLLER_URING_ACCEPT=off`) the first call
    /// arms a multishot accept and connections are taken from a queue of at most 16 the
    /// kernel filled (see `Poller.acceptsThroughCompletions` and <doc:ServingConnections>);
    /// the behaviour described here is the same.
    ///
    /// - Throws: ``NetError/tooManyOpenFiles(errno:)`` when a connection was shed to keep the
    ///   headroom (EMFILE), or when no descriptor at all is free (EMFILE, or ENFILE for the
    ///   whole system; the connection then stays queued); in both cases back off or do other
    ///   work and retry. ``NetError/timeout`` once the deadline set by ``setDeadline(_:)``
    ///   has passed, even with a connection pending; ``NetError/closed`` if the listener is
    ///   or gets closed; ``NetError/cancelled`` if the task is cancelled while waiting (the
    ///   listener stays usable).
    nonisolated(nonsending) public func accept() async throws(NetError) -> Connection {
        let fd = try await netFD.accept(keepingFree: max(0, descriptorHeadroom))
        return try Connection(adopting: fd, poller: group?.next() ?? poller)
    }

    /// Sets (nil clears) the deadline for ``accept()``: Go's `SetDeadline` on a listener.
    ///
    /// - Throws: ``NetError/closed`` after ``close()``.
    public func setDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) {
        try netFD.setDeadline(deadline, for: .readWrite)
    }

    /// Sets the accept deadline to `duration` from now (zero or negative: already expired).
    public func setDeadline(in duration: Duration) throws(NetError) {
        try netFD.setDeadline(in: duration, for: .readWrite)
    }

    /// Stops listening: a blocked ``accept()`` returns ``NetError/closed``. When this returns
    /// the socket is closed (a Unix socket's file unlinked) and the address can be reused.
    ///
    /// - Throws: ``NetError/closed`` when called again.
    public func close() async throws(NetError) {
        try await netFD.close()
    }
}
