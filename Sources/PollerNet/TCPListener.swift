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
    ///   - reusePort: set SO_REUSEPORT, so that several listeners (of this process or of
    ///     others of the same user) can bind the same address and the kernel spreads the
    ///     incoming connections over them (see
    ///     ``listenOnEveryPoller(host:port:backlog:group:descriptorHeadroom:)``).
    ///   - descriptorHeadroom: how many descriptors below the soft RLIMIT_NOFILE
    ///     ``accept()`` keeps free, shedding connections that would take them (see
    ///     ``Listener/descriptorHeadroom``); 0 never sheds. Negative counts as 0.
    /// - Throws: ``NetError/invalidAddress(_:)``; `.system(call: "bind", errno: EADDRINUSE)`
    ///   and the like. The socket is closed on every failure.
    public static func listen(
        host: String, port: UInt16, backlog: Int32? = nil, poller: Poller? = nil, group: PollerGroup? = nil,
        reusePort: Bool = false, descriptorHeadroom: Int = TCPListener.defaultDescriptorHeadroom
    ) throws(NetError) -> TCPListener {
        try make(
            SocketAddress(host: host, port: port), backlog: backlog, poller: poller ?? group?.next(),
            group: group, reusePort: reusePort, descriptorHeadroom: descriptorHeadroom)
    }

    /// Binds and listens on `address`, a `"host:port"` string as Go's `net.Listen("tcp",
    /// address)` takes it: `":8080"` (every address, IPv4 and IPv6), `"0.0.0.0:0"`,
    /// `"127.0.0.1:80"`, `"[::]:8080"` (IPv6 and, as Go sets it, IPv4-mapped too),
    /// `"[::1]:0"`, `"[fe80::1%eth0]:80"`, `"localhost:8080"`.
    ///
    /// ```swift
    /// let listener = try TCPListener.listen(address: ":8080")
    /// ```
    ///
    /// An empty host binds the IPv6 wildcard with IPv4-mapped addresses allowed (dual
    /// stack), or 0.0.0.0 where the system has no IPv6. Unlike Go, an explicit `0.0.0.0`
    /// stays IPv4 only. The parsing rules and their errors are ``SocketAddress/init(hostPort:)``'s.
    ///
    /// - Parameters: as ``listen(host:port:backlog:poller:group:reusePort:descriptorHeadroom:)``.
    /// - Throws: ``NetError/invalidAddress(_:)`` saying what is wrong with `address` (a
    ///   missing port or `]`, a port above 65535 or negative, a NUL, a host over 255 bytes,
    ///   an empty string); `.system(call: "bind", errno: EADDRINUSE)` and the like.
    public static func listen(
        address: String, backlog: Int32? = nil, poller: Poller? = nil, group: PollerGroup? = nil,
        reusePort: Bool = false, descriptorHeadroom: Int = TCPListener.defaultDescriptorHeadroom
    ) throws(NetError) -> TCPListener {
        let (host, port) = try SocketAddress.parseHostPort(address)
        let target = host.isEmpty ? SocketAddress.ipv6(host: "::", port: port) : try SocketAddress(host: host, port: port)
        let listen = { (address: SocketAddress) throws(NetError) -> TCPListener in
            try make(
                address, backlog: backlog, poller: poller ?? group?.next(), group: group,
                reusePort: reusePort, descriptorHeadroom: descriptorHeadroom)
        }
        do {
            return try listen(target)
        } catch .system("socket", EAFNOSUPPORT) where host.isEmpty {
            return try listen(.ipv4(host: "0.0.0.0", port: port))  // no IPv6 here
        }
    }

    /// One listener per poller of `group`, all on `host:port` with SO_REUSEPORT: the kernel
    /// spreads incoming connections over them (by a hash of the peer's address and port),
    /// and each listener's connections stay on its own poller, so an accept loop run on
    /// each poller's executor serves its connections without handing any to another thread.
    ///
    /// Port 0 picks a free port for the first listener; the others bind to the same one.
    /// Compared with ``listen(host:port:backlog:poller:group:reusePort:descriptorHeadroom:)`` with a
    /// group (one acceptor handing connections out in turn), the spread follows the hash, so
    /// it is even only over many connections, and a poller busy with its connections is
    /// still handed new ones; BENCHMARKS.md measures both.
    ///
    /// - Throws: as ``listen(host:port:backlog:poller:group:reusePort:descriptorHeadroom:)``; on a
    ///   failure the listeners already made are closed.
    public static func listenOnEveryPoller(
        host: String, port: UInt16, backlog: Int32? = nil, group: PollerGroup,
        descriptorHeadroom: Int = TCPListener.defaultDescriptorHeadroom
    ) async throws(NetError) -> [TCPListener] {
        var listeners: [TCPListener] = []
        do throws(NetError) {
            for member in group.pollers {
                let chosenPort = listeners.first?.localAddress.port ?? port
                listeners.append(
                    try make(
                        SocketAddress(host: host, port: chosenPort), backlog: backlog, poller: member,
                        group: nil, reusePort: true, descriptorHeadroom: descriptorHeadroom))
            }
        } catch {
            for listener in listeners { try? await listener.close() }
            throw error
        }
        return listeners
    }

    private static func make(
        _ address: SocketAddress, backlog: Int32?, poller: Poller?, group: PollerGroup?, reusePort: Bool,
        descriptorHeadroom: Int
    ) throws(NetError) -> TCPListener {
        let netFD = try listeningNetFD(address: address, backlog: backlog, poller: poller) { fd throws(NetError) in
            try SocketOptions.set(fd, level: SOL_SOCKET, option: SO_REUSEADDR, value: 1)
            if reusePort { try SocketOptions.set(fd, level: SOL_SOCKET, option: SO_REUSEPORT, value: 1) }
            // The IPv6 wildcard takes IPv4 connections too (as Go sets it), whatever the
            // system's net.ipv6.bindv6only says.
            if address == .ipv6(host: "::", port: address.port ?? 0) {
                try SocketOptions.set(fd, level: Int32(IPPROTO_IPV6), option: IPV6_V6ONLY, value: 0)
            }
        }
        let local = try SocketOptions.localAddress(netFD.fd)
        return TCPListener(
            netFD: netFD, localAddress: local, poller: poller, group: group, descriptorHeadroom: descriptorHeadroom)
    }
}
