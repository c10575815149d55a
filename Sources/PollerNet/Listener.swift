import Poller

/// What every listening socket offers, whatever its address family: Go's `net.Listener`.
/// ``TCPListener`` and ``UnixListener`` differ only in how they bind.
public protocol Listener: Sendable {
    /// The listening descriptor and its poller registration.
    var netFD: NetFD { get }
    /// The bound address (for TCP, with the port the kernel chose when 0 was asked for).
    var localAddress: SocketAddress { get }
    /// The poller for the listener and the connections it accepts; nil for
    /// `Poller.shared()`.
    var poller: Poller? { get }
}

extension Listener {
    /// Waits for and returns the next connection (TCP_NODELAY on for TCP, registered with
    /// this listener's poller).
    ///
    /// - Throws: ``NetError/tooManyOpenFiles(errno:)`` when out of descriptors (the
    ///   connection stays queued: back off and retry); ``NetError/timeout`` once the deadline
    ///   set by ``setDeadline(_:)`` has passed, even with a connection pending;
    ///   ``NetError/closed`` if the listener is or gets closed; ``NetError/cancelled`` if the
    ///   task is cancelled while waiting (the listener stays usable).
    nonisolated(nonsending) public func accept() async throws(NetError) -> Connection {
        let fd = try await netFD.accept()
        return try Connection(adopting: fd, poller: poller)
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
