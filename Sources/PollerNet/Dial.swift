import Glibc
import Poller

extension Connection {
    /// Connects to `host:port` over TCP (Go's `net.DialTimeout("tcp", …)`): a
    /// ``Dialer`` with `timeout` and `poller`, so names are resolved and the addresses of a
    /// dual-stack host are raced (see ``Dialer/dial(host:port:)``).
    ///
    /// The connect is non-blocking and completed through the poller: on EINPROGRESS it waits
    /// for write readiness, then reads SO_ERROR and confirms with getpeername, because
    /// readiness is only a hint.
    ///
    /// - Parameters:
    ///   - host: a numeric IPv4 or IPv6 address, or a host name (`"localhost"`); empty means
    ///     `"localhost"`.
    ///   - port: the TCP port.
    ///   - timeout: how long the dial, lookup included, may take; nil or zero waits as long as
    ///     the kernel does (zero means no timeout, as in Go); negative fails with
    ///     ``NetError/timeout`` at once, without connecting.
    ///   - poller: the poller for the connection; nil for `Poller.shared()`.
    /// - Throws: ``NetError/timeout``; ``NetError/cancelled`` if the task is cancelled while
    ///   dialling; `.system(call: "connect", errno: ECONNREFUSED)` when nobody listens;
    ///   ``NetError/invalidAddress(_:)``; ``NetError/resolution(host:code:message:)`` for a
    ///   name that does not resolve. On every failure the sockets are closed.
    public static func dial(
        host: String, port: UInt16, timeout: Duration? = nil, poller: Poller? = nil
    ) async throws(NetError) -> Connection {
        try await Dialer(timeout: timeout, poller: poller).dial(host: host, port: port)
    }

    /// Connects to `address`, a `"host:port"` string as Go's `net.Dial("tcp", address)` takes
    /// it: `"127.0.0.1:8080"`, `"[::1]:8080"`, `"[fe80::1%eth0]:80"`, `"localhost:8080"`,
    /// `"example.com:80"`, or `":8080"` for this machine. The rules and their errors are
    /// ``SocketAddress/splitHostPort(_:)``'s and ``Dialer/dial(host:port:)``'s.
    ///
    /// - Throws: as ``dial(host:port:timeout:poller:)``; ``NetError/invalidAddress(_:)``
    ///   saying what is wrong with `address`, before any socket is made.
    public static func dial(
        address: String, timeout: Duration? = nil, poller: Poller? = nil
    ) async throws(NetError) -> Connection {
        try await Dialer(timeout: timeout, poller: poller).dial(address: address)
    }

    /// Connects to the Unix domain stream socket at `path` (Go's `net.Dial("unix", path)`).
    ///
    /// - Throws: as ``dial(host:port:timeout:poller:)``; ENOENT or ECONNREFUSED as
    ///   `.system(call: "connect", …)` when nothing listens at `path`, EAGAIN when the
    ///   listener's backlog is full.
    public static func dial(
        unixPath path: String, timeout: Duration? = nil, poller: Poller? = nil
    ) async throws(NetError) -> Connection {
        try await dial(.unix(path: path), timeout: timeout, poller: poller)
    }

    /// Connects to `address`, with no lookup: Go's `netFD.connect`. `timeout` as in
    /// ``dial(host:port:timeout:poller:)``.
    public static func dial(
        _ address: SocketAddress, timeout: Duration? = nil, poller: Poller? = nil
    ) async throws(NetError) -> Connection {
        try await Dialer(timeout: timeout, poller: poller).dial(address)
    }

    /// One connect to `address`, bound first to `localAddress` when given, finished by
    /// `deadline`. Every failure closes the socket.
    static func connect(
        to address: SocketAddress, deadline: ContinuousClock.Instant?, localAddress: SocketAddress?, poller: Poller?
    ) async throws(NetError) -> Connection {
        if let deadline, deadline <= .now { throw .timeout }
        if Task.isCancelled { throw .cancelled }
        let fd = try SocketOptions.makeStreamSocket(family: address.family)
        let r: Int32
        do throws(NetError) {
            if let localAddress {
                let bound = try localAddress.withSockaddr { bind(fd, $0, $1) == 0 ? 0 : errno }
                guard bound == 0 else { throw .system(call: "bind", errno: bound) }
            }
            r = try address.withSockaddr { Glibc.connect(fd, $0, $1) == 0 ? 0 : errno }
        } catch {
            Glibc.close(fd)
            throw error
        }
        switch r {
        case 0, EISCONN:
            return try Connection(adopting: fd, poller: poller)
        case EINPROGRESS, EALREADY, EINTR:
            break
        default:
            Glibc.close(fd)
            throw NetError.fromErrno(r, call: "connect")
        }
        // In progress: from here the NetFD owns fd, and every failure path closes it.
        let netFD = try NetFD(adopting: fd, poller: poller, isStream: true, isSocket: true)
        do throws(NetError) {
            try await netFD.awaitConnect(deadline: deadline)
        } catch {
            try? await netFD.close()
            throw error
        }
        do throws(NetError) {
            return try Connection(connected: netFD)
        } catch {
            try? await netFD.close()
            throw error
        }
    }
}

extension NetFD {
    /// Waits for an in-progress connect to finish (Go's loop in `netFD.connect`).
    ///
    /// Uses the write deadline for the timeout and clears it on return. Nothing else can
    /// use this NetFD yet, so the write direction is ours without the lock.
    func awaitConnect(deadline: ContinuousClock.Instant?) async throws(NetError) {
        try fdMutex.incref()
        defer { fdMutex.decref() }
        if let deadline { pollDescriptor.setDeadline(deadline, for: .write) }
        defer { if deadline != nil { pollDescriptor.setDeadline(nil, for: .write) } }
        while true {
            do {
                try await pollDescriptor.wait(for: .write)
            } catch {
                throw NetError(error)
            }
            guard let pending = SocketOptions.pendingError(fd) else {
                throw .system(call: "getsockopt", errno: errno)
            }
            switch pending {
            case EINPROGRESS, EALREADY, EINTR:
                continue
            case EISCONN:
                return
            case 0:
                // Readiness can be spurious (Go #14548, #19289): connected only if the peer
                // has a name.
                do {
                    _ = try SocketOptions.remoteAddress(fd)
                    return
                } catch .system(_, ENOTCONN) {
                    continue
                } catch {
                    throw error
                }
            default:
                throw NetError.fromErrno(pending, call: "connect")
            }
        }
    }
}
