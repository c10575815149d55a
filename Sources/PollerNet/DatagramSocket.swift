import Glibc
import Poller

/// A datagram socket, UDP (IPv4 or IPv6) or Unix (`SOCK_DGRAM`): Go's `net.UDPConn`,
/// `net.UnixConn` on "unixgram", and `net.PacketConn`.
///
/// One type serves both families; what differs is only how it is made: ``bind(host:port:poller:)``
/// and ``bind(unixPath:poller:)`` for a socket that receives from anyone,
/// ``dial(host:port:poller:)`` and ``dial(unixPath:localPath:poller:)`` for one connected to a
/// single peer, ``pair(poller:)`` for two connected Unix datagram sockets. Descriptors can be
/// passed over Unix datagram sockets (``writeMessage(_:descriptors:to:)-(UnsafeRawBufferPointer,_,_)``,
/// ``readMessage(into:maxDescriptors:)``).
///
/// Every receive reports the datagram's full length and whether it was cut to fit the buffer
/// (``ReceivedDatagram``); an empty datagram is received as 0 bytes, never as end of file.
/// Every send sends the whole datagram or fails.
///
/// Deadlines come from ``DeadlineSetting``, as for ``Connection`` (``setReadDeadline(_:)``,
/// ``setWriteDeadline(_:)``, ``setDeadline(_:)``, and their `in:` forms).
///
/// As for ``Connection``: one reader and one writer may work at once (others queue in order);
/// deadlines fail the operations of their direction with ``NetError/timeout``; cancelling the
/// task of a blocked read or write throws ``NetError/cancelled`` (nothing consumed, nothing
/// sent; the socket stays usable); ``close()`` wakes blocked operations with
/// ``NetError/closed`` and returns once the descriptor is closed. A socket dropped without
/// `close()` is closed when its last reference goes away.
public final class DatagramSocket: DeadlineSetting {
    /// The descriptor and its poller registration.
    public let netFD: NetFD

    /// ``DeadlineSetting``: the deadlines live on ``netFD`` (which throws ``NetError/closed``
    /// once the socket is closed).
    public func deadlineDescriptor() throws(NetError) -> NetFD { netFD }

    /// This end's address (for UDP, with the port the kernel chose when 0 was asked for;
    /// `.unix(path: "")` for an unnamed Unix socket).
    public let localAddress: SocketAddress
    /// The peer a dialled socket is connected to; nil for a bound, unconnected socket.
    public let remoteAddress: SocketAddress?

    /// The poller the socket is registered with.
    public var poller: Poller { netFD.poller }

    /// The executor of the socket's poller (see ``Connection/executor``).
    public var executor: PollerExecutor { netFD.poller.executor }

    private init(netFD: NetFD, remoteAddress: SocketAddress?) throws(NetError) {
        self.localAddress = try SocketOptions.localAddress(netFD.fd)
        self.netFD = netFD
        self.remoteAddress = remoteAddress
    }

    /// Whether task cancellation interrupts a blocked read or write (default true; see
    /// ``NetFD/observesTaskCancellation``).
    public var observesTaskCancellation: Bool {
        get { netFD.observesTaskCancellation }
        set { netFD.observesTaskCancellation = newValue }
    }

    // MARK: Making sockets

    /// A UDP socket bound to `host:port`, receiving from anyone: Go's
    /// `net.ListenPacket("udp", …)` / `ListenUDP`.
    ///
    /// - Parameters:
    ///   - host: a numeric IPv4 or IPv6 address (`"0.0.0.0"`, `"::"` for every interface), or
    ///     `"localhost"` for 127.0.0.1.
    ///   - port: the UDP port; 0 lets the kernel choose (read it from ``localAddress``).
    ///   - poller: the poller to register with; nil for `Poller.shared()`.
    /// - Throws: ``NetError/invalidAddress(_:)`` for a host that is not a numeric address;
    ///   `.system(call: "bind", errno: EADDRINUSE)` when the port is taken. The socket is
    ///   closed on every failure.
    public static func bind(host: String, port: UInt16, poller: Poller? = nil) throws(NetError) -> DatagramSocket {
        try make(bindingTo: SocketAddress(host: host, port: port), connectingTo: nil, poller: poller)
    }

    /// A Unix datagram socket bound to a new socket file at `path`: Go's
    /// `net.ListenUnixgram`. The file is removed when the socket is closed (Go leaves it).
    ///
    /// - Throws: `.system(call: "bind", errno: EADDRINUSE)` if `path` exists (remove stale
    ///   files first); ``NetError/invalidAddress(_:)`` for an empty path or one longer than 107
    ///   bytes.
    public static func bind(unixPath path: String, poller: Poller? = nil) throws(NetError) -> DatagramSocket {
        try make(bindingTo: .unix(path: path), connectingTo: nil, poller: poller)
    }

    /// A UDP socket connected to `host:port` (from an ephemeral local port): Go's
    /// `net.Dial("udp", …)`. Nothing is sent: connecting a datagram socket only fixes its
    /// peer, so plain ``read(into:)`` and ``write(_:)-(UnsafeRawBufferPointer)`` work, and
    /// datagrams from anyone else are filtered out by the kernel.
    ///
    /// - Throws: ``NetError/invalidAddress(_:)``; `.system(call: "connect", …)`.
    public static func dial(host: String, port: UInt16, poller: Poller? = nil) throws(NetError) -> DatagramSocket {
        try make(bindingTo: nil, connectingTo: SocketAddress(host: host, port: port), poller: poller)
    }

    /// A Unix datagram socket connected to the socket bound at `path`: Go's
    /// `net.DialUnix("unixgram", …)`.
    ///
    /// - Parameters:
    ///   - path: the peer's socket file.
    ///   - localPath: a socket file to bind this end to first, so that the peer can answer;
    ///     nil leaves this end unnamed (it can send but gets no replies). Removed on close.
    ///   - poller: the poller to register with; nil for `Poller.shared()`.
    /// - Throws: `.system(call: "connect", errno: ENOENT)` or `ECONNREFUSED` when nothing is
    ///   bound at `path`; ``NetError/invalidAddress(_:)`` for a bad path.
    public static func dial(
        unixPath path: String, localPath: String? = nil, poller: Poller? = nil
    ) throws(NetError) -> DatagramSocket {
        try make(bindingTo: localPath.map { .unix(path: $0) }, connectingTo: .unix(path: path), poller: poller)
    }

    /// Two Unix datagram sockets connected to each other (`socketpair(AF_UNIX, SOCK_DGRAM)`),
    /// both unnamed: what one writes the other reads. Handy for passing descriptors between
    /// parts of a process, or to a child process that inherits one end.
    ///
    /// When one end closes, Linux does not wake the other's blocked read (datagram sockets get
    /// no hang-up; only a deadline, task cancellation or its own close ends it), and the other
    /// end's writes fail with `.system(call: "sendmsg", errno: ECONNREFUSED)`.
    public static func pair(poller: Poller? = nil) throws(NetError) -> (DatagramSocket, DatagramSocket) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw .system(call: "socketpair", errno: errno)
        }
        let first: DatagramSocket
        do {
            first = try adopt(fds[0], remoteAddress: .unix(path: ""), poller: poller, afterClose: nil)
        } catch {
            Glibc.close(fds[1])
            throw error
        }
        return (first, try adopt(fds[1], remoteAddress: .unix(path: ""), poller: poller, afterClose: nil))
    }

    /// The one construction path: a datagram socket of the address's family, bound to
    /// `local` and/or connected to `remote`. Closed (and a created socket file removed) on
    /// every failure.
    private static func make(
        bindingTo local: SocketAddress?, connectingTo remote: SocketAddress?, poller: Poller?
    ) throws(NetError) -> DatagramSocket {
        let family = (local ?? remote)?.family ?? AF_INET
        if let local, let remote, local.family != remote.family {
            throw .invalidAddress("'\(local)' and '\(remote)' are of different families")
        }
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        // A socket file exists once bind succeeds; remove it with the socket.
        var afterClose: (@Sendable () -> Void)? = nil
        do throws(NetError) {
            if let local {
                let bound = try local.withSockaddr { Glibc.bind(fd, $0, $1) == 0 ? 0 : errno }
                if bound != 0 { throw .system(call: "bind", errno: bound) }
                if case .unix(let path) = local { afterClose = { _ = unlink(path) } }
            }
            if let remote {
                // A datagram connect completes at once: it only records the peer.
                let connected = try remote.withSockaddr { connect(fd, $0, $1) == 0 ? 0 : errno }
                if connected != 0 { throw NetError.fromErrno(connected, call: "connect") }
            }
        } catch {
            Glibc.close(fd)
            afterClose?()
            throw error
        }
        let peer = remote.map { (try? SocketOptions.remoteAddress(fd)) ?? $0 }
        return try adopt(fd, remoteAddress: peer, poller: poller, afterClose: afterClose)
    }

    /// Wraps `fd`, taking ownership (closed on failure).
    private static func adopt(
        _ fd: Int32, remoteAddress: SocketAddress?, poller: Poller?, afterClose: (@Sendable () -> Void)?
    ) throws(NetError) -> DatagramSocket {
        // From here on NetFD owns the fd (and on failure has closed it and run afterClose).
        let netFD = try NetFD(adopting: fd, poller: poller, isStream: false, isSocket: true, afterClose: afterClose)
        // On failure, dropping netFD closes the descriptor.
        return try DatagramSocket(netFD: netFD, remoteAddress: remoteAddress)
    }

    // MARK: Reading

    /// Receives one datagram into `buffer`: Go's `ReadFrom`.
    ///
    /// Waits until a datagram arrives. A datagram longer than `buffer` fills it and the rest
    /// is discarded: the result's ``ReceivedDatagram/isTruncated`` and
    /// ``ReceivedDatagram/length`` say so. An empty datagram gives a count of 0 (not end of
    /// file). An empty `buffer` still waits for a datagram and consumes it (reporting its
    /// length), as Go's `ReadFrom` with an empty slice does. Descriptors passed with the
    /// datagram are closed by the kernel (use ``readMessage(into:maxDescriptors:)`` to get
    /// them).
    ///
    /// - Throws: ``NetError/timeout`` once the read deadline has passed (even with datagrams
    ///   waiting); ``NetError/closed`` if the socket is or gets closed;
    ///   ``NetError/cancelled`` if the task is cancelled while waiting (nothing consumed);
    ///   ``NetError/system(call:errno:)`` with call "recvmsg" (on a connected UDP socket,
    ///   ECONNREFUSED after an earlier datagram met a closed port).
    nonisolated(nonsending) public func readFrom(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> ReceivedDatagram {
        try await netFD.receiveDatagram(into: buffer, control: nil).datagram
    }

    /// Receives one datagram on a connected socket: Go's `Read`. The same as
    /// ``readFrom(into:)`` (the sender is the connected peer, for which the kernel filters);
    /// on an unconnected socket it receives from anyone.
    nonisolated(nonsending) public func read(into buffer: UnsafeMutableRawBufferPointer) async throws(NetError) -> ReceivedDatagram {
        try await readFrom(into: buffer)
    }

    /// Receives one datagram and the descriptors passed with it (`SCM_RIGHTS`): Go's
    /// `ReadMsgUnix` with `syscall.ParseUnixRights`.
    ///
    /// Received descriptors are close-on-exec and owned by the returned
    /// ``ReceivedDescriptor`` objects: ``ReceivedDescriptor/take()`` makes them yours;
    /// dropped, they are closed. Descriptors beyond `maxDescriptors` are closed by the kernel
    /// and reported with ``ReceivedMessage/isControlTruncated``.
    ///
    /// - Parameters:
    ///   - buffer: where the datagram's bytes go (truncation is reported as by
    ///     ``readFrom(into:)``).
    ///   - maxDescriptors: how many descriptors to make room for (0 through 253, the
    ///     kernel's `SCM_MAX_FD`).
    /// - Throws: `.system(call: "recvmsg", errno: EINVAL)` for `maxDescriptors` outside
    ///   0…253, and the errors of ``readFrom(into:)``.
    nonisolated(nonsending) public func readMessage(
        into buffer: UnsafeMutableRawBufferPointer, maxDescriptors: Int = 16
    ) async throws(NetError) -> ReceivedMessage {
        guard (0...Self.maxDescriptors).contains(maxDescriptors) else {
            throw .system(call: "recvmsg", errno: EINVAL)
        }
        let space = ControlMessage.space(descriptors: maxDescriptors)
        let control = UnsafeMutableRawBufferPointer.allocate(byteCount: space, alignment: MemoryLayout<Int>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0)
        let room = UnsafeMutableRawBufferPointer(rebasing: control[..<ControlMessage.length(descriptors: maxDescriptors)])
        let received = try await netFD.receiveDatagram(into: buffer, control: maxDescriptors == 0 ? nil : room)
        let descriptors = ControlMessage.receivedDescriptors(
            in: UnsafeRawBufferPointer(control), length: maxDescriptors == 0 ? 0 : received.controlLength)
        return ReceivedMessage(
            datagram: received.datagram, descriptors: descriptors,
            isControlTruncated: received.flags & Int32(MSG_CTRUNC) != 0)
    }

    /// The most descriptors one message can carry (Linux's `SCM_MAX_FD`).
    public static let maxDescriptors = 253

    // MARK: Writing

    /// Sends `buffer` as one datagram to `address`: Go's `WriteTo`.
    ///
    /// Sends all of it or nothing. An empty buffer sends an empty datagram.
    ///
    /// - Throws: ``NetError/invalidAddress(_:)`` when `address` is not of this socket's
    ///   family (an IPv6 address on an IPv4 socket, a path on a UDP socket) or cannot be
    ///   encoded; ``NetError/timeout`` once the write deadline has passed;
    ///   ``NetError/closed``; ``NetError/cancelled``; `.system(call: "sendmsg", errno:
    ///   EMSGSIZE)` for a datagram too large for the socket (over 65,507 bytes for UDP over
    ///   IPv4); `EISCONN` when a connected Unix socket is given another address;
    ///   ECONNREFUSED or ENOENT when nothing is bound at a Unix path.
    nonisolated(nonsending) public func write(_ buffer: UnsafeRawBufferPointer, to address: SocketAddress) async throws(NetError) {
        try await send(buffer, to: address, descriptors: [])
    }

    /// Sends `bytes` as one datagram to `address`; see ``write(_:to:)-(UnsafeRawBufferPointer,_)``.
    nonisolated(nonsending) public func write(_ bytes: [UInt8], to address: SocketAddress) async throws(NetError) {
        try await send(bytes, to: address, descriptors: [])
    }

    /// Sends `buffer` as one datagram to the connected peer: Go's `Write`.
    ///
    /// - Throws: as ``write(_:to:)-(UnsafeRawBufferPointer,_)``; on an unconnected socket
    ///   `.system(call: "sendmsg", errno: EDESTADDRREQ)` (UDP) or `ENOTCONN` (Unix).
    nonisolated(nonsending) public func write(_ buffer: UnsafeRawBufferPointer) async throws(NetError) {
        try await send(buffer, to: nil, descriptors: [])
    }

    /// Sends `bytes` as one datagram to the connected peer; see ``write(_:)-(UnsafeRawBufferPointer)``.
    nonisolated(nonsending) public func write(_ bytes: [UInt8]) async throws(NetError) {
        try await send(bytes, to: nil, descriptors: [])
    }

    /// Sends one datagram with descriptors attached (`SCM_RIGHTS`): Go's `WriteMsgUnix` with
    /// `syscall.UnixRights`. Unix datagram sockets only.
    ///
    /// The descriptors stay yours: the kernel gives the receiver its own copies (as `dup`
    /// would), so close yours whenever you like after the call returns. A datagram with
    /// descriptors may be empty.
    ///
    /// - Parameters:
    ///   - buffer: the datagram's bytes.
    ///   - descriptors: open descriptors to pass (at most ``maxDescriptors``).
    ///   - address: the destination; nil for the connected peer.
    /// - Throws: `.system(call: "sendmsg", errno: EINVAL)` for more than ``maxDescriptors``
    ///   descriptors, or descriptors on a UDP socket; `EBADF` when one is not open; and the
    ///   errors of ``write(_:to:)-(UnsafeRawBufferPointer,_)``.
    nonisolated(nonsending) public func writeMessage(
        _ buffer: UnsafeRawBufferPointer, descriptors: [Int32], to address: SocketAddress? = nil
    ) async throws(NetError) {
        try await send(buffer, to: address, descriptors: descriptors)
    }

    /// ``writeMessage(_:descriptors:to:)-(UnsafeRawBufferPointer,_,_)`` for an array of bytes.
    nonisolated(nonsending) public func writeMessage(
        _ bytes: [UInt8], descriptors: [Int32], to address: SocketAddress? = nil
    ) async throws(NetError) {
        try await send(bytes, to: address, descriptors: descriptors)
    }

    /// Copies `bytes` to a buffer that stays put across suspensions, then sends it.
    nonisolated(nonsending) private func send(
        _ bytes: [UInt8], to address: SocketAddress?, descriptors: [Int32]
    ) async throws(NetError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes)
        try await send(UnsafeRawBufferPointer(buffer), to: address, descriptors: descriptors)
    }

    /// Checks the destination and descriptors, builds the control data, sends.
    nonisolated(nonsending) private func send(
        _ buffer: UnsafeRawBufferPointer, to address: SocketAddress?, descriptors: [Int32]
    ) async throws(NetError) {
        if let address, address.family != localAddress.family {
            throw .invalidAddress("'\(address)' cannot be reached from a \(Self.familyName(localAddress.family)) socket")
        }
        guard !descriptors.isEmpty else {
            return try await netFD.sendDatagram(buffer, to: address, control: nil)
        }
        guard descriptors.count <= Self.maxDescriptors, localAddress.family == AF_UNIX else {
            throw .system(call: "sendmsg", errno: EINVAL)
        }
        let space = ControlMessage.space(descriptors: descriptors.count)
        let control = UnsafeMutableRawBufferPointer.allocate(byteCount: space, alignment: MemoryLayout<Int>.alignment)
        defer { control.deallocate() }
        ControlMessage.writeRights(descriptors, into: control)
        try await netFD.sendDatagram(buffer, to: address, control: control)
    }

    private static func familyName(_ family: Int32) -> String {
        switch family {
        case AF_INET: "UDP/IPv4"
        case AF_INET6: "UDP/IPv6"
        default: "Unix datagram"
        }
    }

    // MARK: Close

    /// Closes the socket: blocked reads and writes return ``NetError/closed``; returns once
    /// the descriptor is closed (and a socket file this socket created is removed).
    ///
    /// - Throws: ``NetError/closed`` when called again (the first call did the work).
    public func close() async throws(NetError) {
        try await netFD.close()
    }
}
