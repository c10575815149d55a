/// Go's three deadline setters (`SetDeadline`, `SetReadDeadline`, `SetWriteDeadline`), written
/// once for every PollerNet type that reads and writes through the poller: ``Connection``,
/// ``DatagramSocket`` and ``RawConnection``.
///
/// A deadline applies to operations already blocked as well as later ones. An instant in the
/// past (or now) makes operations of its direction fail with ``NetError/timeout`` at once, even
/// when they could proceed; clearing it (nil) or moving it later makes them work again.
/// Every setter throws ``NetError/closed`` after the socket is closed, and
/// ``NetError/noDeadline`` for a descriptor the poller does not watch (a ``RawConnection`` whose
/// ``RawConnection/isPollable`` is false).
///
/// ```swift
/// try socket.setReadDeadline(in: .seconds(5))   // the next reads give up after 5 s
/// try socket.setReadDeadline(nil)               // and now never
/// ```
public protocol DeadlineSetting: Sendable {
    /// The descriptor whose poller registration holds the deadlines, or the error every setter
    /// throws instead (``NetError/closed``, ``NetError/noDeadline``).
    func deadlineDescriptor() throws(NetError) -> NetFD
}

extension DeadlineSetting {
    /// Sets (nil clears) the read and write deadlines together: Go's `SetDeadline`.
    ///
    /// - Throws: ``NetError/closed`` after the socket is closed; ``NetError/noDeadline`` when
    ///   the poller does not watch the descriptor.
    public func setDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) {
        try deadlineDescriptor().setDeadline(deadline, for: .readWrite)
    }

    /// Sets (nil clears) the read deadline: Go's `SetReadDeadline`.
    public func setReadDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) {
        try deadlineDescriptor().setDeadline(deadline, for: .read)
    }

    /// Sets (nil clears) the write deadline: Go's `SetWriteDeadline`.
    public func setWriteDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) {
        try deadlineDescriptor().setDeadline(deadline, for: .write)
    }

    /// Sets both deadlines to `duration` from now (zero or negative: already expired).
    public func setDeadline(in duration: Duration) throws(NetError) {
        try deadlineDescriptor().setDeadline(in: duration, for: .readWrite)
    }

    /// Sets the read deadline to `duration` from now.
    public func setReadDeadline(in duration: Duration) throws(NetError) {
        try deadlineDescriptor().setDeadline(in: duration, for: .read)
    }

    /// Sets the write deadline to `duration` from now.
    public func setWriteDeadline(in duration: Duration) throws(NetError) {
        try deadlineDescriptor().setDeadline(in: duration, for: .write)
    }
}

/// For a type that is both (``Connection``, ``RawConnection``): ``DeadlineSetting``'s setters, which set both
/// directions in one call on the descriptor (one combined timer when the deadlines are equal,
/// as Go's `SetDeadline`), win over ``NetConnection``'s defaults, which wrappers use.
extension NetConnection where Self: DeadlineSetting {
    public func setDeadline(_ deadline: ContinuousClock.Instant?) throws(NetError) {
        try deadlineDescriptor().setDeadline(deadline, for: .readWrite)
    }
    public func setDeadline(in duration: Duration) throws(NetError) { try deadlineDescriptor().setDeadline(in: duration, for: .readWrite) }
    public func setReadDeadline(in duration: Duration) throws(NetError) { try deadlineDescriptor().setDeadline(in: duration, for: .read) }
    public func setWriteDeadline(in duration: Duration) throws(NetError) { try deadlineDescriptor().setDeadline(in: duration, for: .write) }
}
