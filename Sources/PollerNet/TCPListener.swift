import Glibc
import Poller

/// A TCP listening socket over IPv4 or IPv6: Go's `net.TCPListener`.
///
/// ```swift
/// let listener = try TCPListener.listen(host: "127.0.0.1", port: 0)
/// let connection = try await listener.accept()
/// ```
public final class TCPListener: Listener {
    /// The listening descriptor and its poller registration.
    public let netFD: NetFD
    /// The bound address, with the port the kernel chose when 0 was asked for.
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

    /// Binds and listens on `host:port`.
    ///
    /// `host` is numeric: `"127.0.0.1"`, `"0.0.0.0"`, `"::1"`, `"::"` (or `"localhost"` for
    /// 127.0.0.1). Port 0 picks a free port (see ``localAddress``). SO_REUSEADDR is set, as
    /// Go does, so a port can be reused right after its listener closes.
    ///
    /// - Parameters:
    ///   - host: the numeric address to bind (see above).
    ///   - port: the TCP port; 0 for one the kernel picks.
    ///   - backlog: the accept queue length; nil for the system's `net.core.somaxconn`
    ///     (4096 if unreadable), as Go uses.
    ///   - poller: the poller for the listener and the connections it accepts; nil for
    ///     `Poller.shared()`.
    ///   - descriptorHeadroom: how many descriptors below the soft RLIMIT_NOFILE
    ///     ``accept()`` keeps free, shedding connections that would take them (see
    ///     ``Listener/descriptorHeadroom``); 0 never sheds. Negative counts as 0.
    /// - Throws: ``NetError/invalidAddress(_:)``; `.system(call: "bind", errno: EADDRINUSE)`
    ///   and the like. The socket is closed on every failure.
    public static func listen(
        host: String, port: UInt16, backlog: Int32? = nil, poller: Poller? = nil,
        descriptorHeadroom: Int = TCPListener.defaultDescriptorHeadroom
    ) throws(NetError) -> TCPListener {
        let address = try SocketAddress(host: host, port: port)
        let netFD = try listeningNetFD(address: address, backlog: backlog, poller: poller) { fd throws(NetError) in
            try SocketOptions.set(fd, level: SOL_SOCKET, option: SO_REUSEADDR, value: 1)
        }
        let local = try SocketOptions.localAddress(netFD.fd)
        return TCPListener(
            netFD: netFD, localAddress: local, poller: poller, descriptorHeadroom: descriptorHeadroom)
    }
}
