import Glibc
import Poller

/// A Unix domain stream listening socket: Go's `net.UnixListener`.
///
/// The socket file is created by ``listen(path:backlog:poller:group:descriptorHeadroom:)`` and unlinked when the
/// listener is closed (Go's default `SetUnlinkOnClose(true)` for listeners it created).
public final class UnixListener: Listener {
    /// The listening descriptor and its poller registration.
    public let netFD: NetFD
    /// The socket's path.
    public let localAddress: SocketAddress
    /// The poller for the listener (and its connections when ``group`` is nil); nil for
    /// `Poller.shared()`.
    public let poller: Poller?
    /// The group whose pollers take the accepted connections in turn; nil for ``poller``.
    public let group: PollerGroup?
    /// The descriptors ``accept()`` keeps free below the soft RLIMIT_NOFILE, shedding
    /// connections that would take them (see ``Listener/descriptorHeadroom``).
    public let descriptorHeadroom: Int

    private init(
        netFD: NetFD, localAddress: SocketAddress, poller: Poller?, group: PollerGroup?, descriptorHeadroom: Int
    ) {
        self.netFD = netFD
        self.localAddress = localAddress
        self.poller = poller
        self.group = group
        self.descriptorHeadroom = max(0, descriptorHeadroom)
    }

    /// Creates the socket file at `path` and listens on it.
    ///
    /// - Parameters:
    ///   - path: the socket file to create (at most 107 bytes).
    ///   - backlog: the accept queue length; nil for the system's `net.core.somaxconn`.
    ///   - poller: the poller for the listener and the connections it accepts; nil for
    ///     `Poller.shared()` (or, with `group`, the group's next poller).
    ///   - group: spread the accepted connections over this group's pollers, in turn (one
    ///     acceptor hands them out; see ``TCPListener/listenOnEveryPoller(host:port:backlog:group:descriptorHeadroom:)``
    ///     for one listener per poller instead); nil for `poller`.
    ///   - descriptorHeadroom: how many descriptors below the soft RLIMIT_NOFILE
    ///     ``accept()`` keeps free, shedding connections that would take them (see
    ///     ``Listener/descriptorHeadroom``); 0 never sheds. Negative counts as 0.
    /// - Throws: `.system(call: "bind", errno: EADDRINUSE)` if `path` exists (remove stale
    ///   files first); ``NetError/invalidAddress(_:)`` if the path is longer than 107 bytes.
    ///   The socket is closed on every failure.
    public static func listen(
        path: String, backlog: Int32? = nil, poller: Poller? = nil, group: PollerGroup? = nil,
        descriptorHeadroom: Int = UnixListener.defaultDescriptorHeadroom
    ) throws(NetError) -> UnixListener {
        let address = SocketAddress.unix(path: path)
        let poller = poller ?? group?.next()
        let netFD = try listeningNetFD(
            address: address, backlog: backlog, poller: poller, afterClose: { _ = unlink(path) })
        return UnixListener(
            netFD: netFD, localAddress: address, poller: poller, group: group, descriptorHeadroom: descriptorHeadroom)
    }
}
