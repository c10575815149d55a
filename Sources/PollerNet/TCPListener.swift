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
    ///     `Poller.shared()` (or, with `group`, the group's next poller).
    ///   - group: spread the accepted connections over this group's pollers, in turn (one
    ///     acceptor hands them out; see ``listenOnEveryPoller(host:port:backlog:group:descriptorHeadroom:)``
    ///     for one listener per poller instead); nil for `poller`.
    ///   - descriptorHeadroom: how many descriptors below the soft RLIMIT_NOFILE
    ///     ``accept()`` keeps free, shedding connections that would take them (see
    ///     ``Listener/descriptorHeadroom``); 0 never sheds. Negative counts as 0.
    /// - Throws: ``NetError/invalidAddress(_:)``; `.system(call: "bind", errno: EADDRINUSE)`
    ///   and the like. The socket is closed on every failure.
    public static func listen(
        host: String, port: UInt16, backlog: Int32? = nil, poller: Poller? = nil, group: PollerGroup? = nil,
        descriptorHeadroom: Int = TCPListener.defaultDescriptorHeadroom
    ) throws(NetError) -> TCPListener {
        try listen(host: host, port: port, backlog: backlog, poller: poller ?? group?.next(), group: group,
                   reusePort: false, descriptorHeadroom: descriptorHeadroom)
    }

    /// One listener per poller of `group`, all on `host:port` with SO_REUSEPORT: the kernel
    /// spreads incoming connections over them (by a hash of the peer's address and port),
    /// and each listener's connections stay on its own poller, so an accept loop run on
    /// each poller's executor serves its connections without handing any to another thread.
    ///
    /// Port 0 picks a free port for the first listener; the others bind to the same one.
    /// Compared with ``listen(host:port:backlog:poller:group:descriptorHeadroom:)`` with a
    /// group (one acceptor handing connections out in turn), the spread follows the hash, so
    /// it is even only over many connections, and a poller busy with its connections is
    /// still handed new ones; BENCHMARKS.md measures both.
    ///
    /// - Throws: as ``listen(host:port:backlog:poller:group:descriptorHeadroom:)``; on a
    ///   failure the listeners already made are closed.
    public static func listenOnEveryPoller(
        host: String, port: UInt16, backlog: Int32? = nil, group: PollerGroup,
        descriptorHeadroom: Int = TCPListener.defaultDescriptorHeadroom
    ) async throws(NetError) -> [TCPListener] {
        var listeners: [TCPListener] = []
        do throws(NetError) {
            for member in group.pollers {
                let chosenPort = listeners.first?.localAddress.port ?? port
                listeners.append(try listen(host: host, port: chosenPort, backlog: backlog, poller: member,
                                            group: nil, reusePort: true, descriptorHeadroom: descriptorHeadroom))
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            throw error
        }
        return listeners
    }

    private static func listen(
        host: String, port: UInt16, backlog: Int32?, poller: Poller?, group: PollerGroup?, reusePort: Bool,
        descriptorHeadroom: Int
    ) throws(NetError) -> TCPListener {
        let address = try SocketAddress(host: host, port: port)
        let netFD = try listeningNetFD(address: address, backlog: backlog, poller: poller) { fd throws(NetError) in
            try SocketOptions.set(fd, level: SOL_SOCKET, option: SO_REUSEADDR, value: 1)
            if reusePort { try SocketOptions.set(fd, level: SOL_SOCKET, option: SO_REUSEPORT, value: 1) }
        }
        let local = try SocketOptions.localAddress(netFD.fd)
        return TCPListener(
            netFD: netFD, localAddress: local, poller: poller, group: group, descriptorHeadroom: descriptorHeadroom)
    }
}
