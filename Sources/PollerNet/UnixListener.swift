import Glibc
import Poller

/// A Unix domain stream listening socket: Go's `net.UnixListener`.
///
/// The socket file is created by ``listen(path:backlog:poller:descriptorHeadroom:)`` and unlinked when the
/// listener is closed (Go's default `SetUnlinkOnClose(true)` for listeners it created).
public final class UnixListener: Listener {
    /// The listening descriptor and its poller registration.
    public let netFD: NetFD
    /// The socket's path.
    public let localAddress: SocketAddress
    /// The poller for the listener and its connections; nil for `Poller.shared()`.
    public let poller: Poller?
    /// The descriptors ``accept()`` keeps free below the soft RLIMIT_NOFILE, shedding
    /// connections that would take them (see ``Listener/descriptorHeadroom``).
    public let descriptorHeadroom: Int

    private init(netFD: NetFD, localAddress: SocketAddress, poller: Poller?, descriptorHeadroom: Int) {
        self.netFD = netFD
        self.localAddress = localAddress
        self.poller = poller
        self.descriptorHeadroom = max(0, descriptorHeadroom)
    }

    /// Creates the socket file at `path` and listens on it.
    ///
    /// - Parameters:
    ///   - path: the socket file to create (at most 107 bytes).
    ///   - backlog: the accept queue length; nil for the system's `net.core.somaxconn`.
    ///   - poller: the poller for the listener and the connections it accepts; nil for
    ///     `Poller.shared()`.
    ///   - descriptorHeadroom: how many descriptors below the soft RLIMIT_NOFILE
    ///     ``accept()`` keeps free, shedding connections that would take them (see
    ///     ``Listener/descriptorHeadroom``); 0 never sheds. Negative counts as 0.
    /// - Throws: `.system(call: "bind", errno: EADDRINUSE)` if `path` exists (remove stale
    ///   files first); ``NetError/invalidAddress(_:)`` if the path is longer than 107 bytes.
    ///   The socket is closed on every failure.
    public static func listen(
        path: String, backlog: Int32? = nil, poller: Poller? = nil,
        descriptorHeadroom: Int = UnixListener.defaultDescriptorHeadroom
    ) throws(NetError) -> UnixListener {
        let address = SocketAddress.unix(path: path)
        let netFD = try listeningNetFD(
            address: address, backlog: backlog, poller: poller, afterClose: { _ = unlink(path) })
        return UnixListener(
            netFD: netFD, localAddress: address, poller: poller, descriptorHeadroom: descriptorHeadroom)
    }
}
