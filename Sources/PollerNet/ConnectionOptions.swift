import Glibc

/// TCP keep-alive settings: Go's `net.KeepAliveConfig` (Go 1.23).
///
/// Dialled and accepted TCP connections start with ``default``, Go's defaults: keep-alive on,
/// the first probe after 15 s idle, then one every 15 s, the connection dropped after 9
/// unanswered probes. Apply another with ``Connection/setKeepAliveConfig(_:)``.
///
/// Durations are rounded up to whole seconds (the kernel's unit). A nil field leaves the
/// socket's current value alone (Go's negative value); Go's zero ("the default") is spelt
/// here by leaving the initializer's default in place.
public struct KeepAliveConfig: Sendable, Hashable {
    /// Whether keep-alive probes are sent at all (SO_KEEPALIVE).
    public var enabled: Bool
    /// How long the connection stays idle before the first probe (TCP_KEEPIDLE); nil leaves
    /// it unchanged.
    public var idle: Duration?
    /// The time between probes (TCP_KEEPINTVL); nil leaves it unchanged.
    public var interval: Duration?
    /// How many unanswered probes drop the connection (TCP_KEEPCNT); nil leaves it unchanged.
    public var count: Int?

    /// A configuration; every argument defaults to Go's value.
    public init(
        enabled: Bool = true, idle: Duration? = .seconds(15), interval: Duration? = .seconds(15), count: Int? = 9
    ) {
        self.enabled = enabled
        self.idle = idle
        self.interval = interval
        self.count = count
    }

    /// Go's defaults: on, 15 s idle, 15 s interval, 9 probes.
    public static let `default` = KeepAliveConfig()
}

extension Connection {
    // MARK: TCP options

    /// Turns TCP keep-alive probes on or off (SO_KEEPALIVE): Go's `TCPConn.SetKeepAlive`.
    /// Dialled and accepted TCP connections have them on (see ``KeepAliveConfig/default``).
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "setsockopt", errno:
    ///   EOPNOTSUPP)` on a Unix domain connection (TCP only).
    public func setKeepAlive(_ enabled: Bool) throws(NetError) {
        try withTCPSocket { fd throws(NetError) in
            try SocketOptions.set(fd, level: SOL_SOCKET, option: SO_KEEPALIVE, value: enabled ? 1 : 0)
        }
    }

    /// Sets the idle time before the first probe and the time between probes to `period`
    /// (rounded up to whole seconds): Go's `TCPConn.SetKeepAlivePeriod`. Keep-alive itself
    /// is not turned on; see ``setKeepAlive(_:)``.
    ///
    /// - Throws: as ``setKeepAliveConfig(_:)``.
    public func setKeepAlivePeriod(_ period: Duration) throws(NetError) {
        try withTCPSocket { fd throws(NetError) in
            let seconds = try SocketOptions.keepAliveSeconds(period)
            try SocketOptions.set(fd, level: Int32(IPPROTO_TCP), option: TCP_KEEPINTVL, value: seconds)
            try SocketOptions.set(fd, level: Int32(IPPROTO_TCP), option: TCP_KEEPIDLE, value: seconds)
        }
    }

    /// Applies `config`: SO_KEEPALIVE, then TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT for
    /// each field that is not nil. Go's `TCPConn.SetKeepAliveConfig`.
    ///
    /// ```swift
    /// try connection.setKeepAliveConfig(KeepAliveConfig(idle: .seconds(60), count: 3))
    /// ```
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "setsockopt", errno:
    ///   EOPNOTSUPP)` on a Unix domain connection; `.system(call: "setsockopt", errno: EINVAL)`
    ///   for a zero or negative duration or count, checked before anything is set, or for a
    ///   value above the kernel's limit (32,767 s, 127 probes).
    public func setKeepAliveConfig(_ config: KeepAliveConfig) throws(NetError) {
        try withTCPSocket { fd throws(NetError) in try SocketOptions.setKeepAlive(fd, config) }
    }

    /// Sets what ``close()`` does with data not yet sent (SO_LINGER): Go's
    /// `TCPConn.SetLinger`.
    ///
    /// - Parameter seconds: nil (the default) sends the remaining data in the background
    ///   after close returns; 0 discards it and resets the connection (RST); a positive
    ///   number lets the kernel try that long to send it (close itself does not wait here:
    ///   the socket is non-blocking).
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "setsockopt", errno:
    ///   EOPNOTSUPP)` on a Unix domain connection; `.system(call: "setsockopt", errno:
    ///   EINVAL)` for a negative number or one above `Int32.max`.
    public func setLinger(_ seconds: Int?) throws(NetError) {
        try withTCPSocket { fd throws(NetError) in
            guard let seconds else { return try SocketOptions.setLinger(fd, on: false, seconds: 0) }
            guard seconds >= 0, let value = Int32(exactly: seconds) else {
                throw .system(call: "setsockopt", errno: EINVAL)
            }
            try SocketOptions.setLinger(fd, on: true, seconds: value)
        }
    }

    /// Turns Nagle's algorithm off (true) or on (false) (TCP_NODELAY): Go's
    /// `TCPConn.SetNoDelay`. Dialled and accepted TCP connections start with no delay, as
    /// in Go.
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "setsockopt", errno:
    ///   EOPNOTSUPP)` on a Unix domain connection.
    public func setNoDelay(_ noDelay: Bool) throws(NetError) {
        try withTCPSocket { fd throws(NetError) in
            try SocketOptions.set(fd, level: Int32(IPPROTO_TCP), option: TCP_NODELAY, value: noDelay ? 1 : 0)
        }
    }

    // MARK: Buffers and other options

    /// Asks for a receive buffer of `bytes` (SO_RCVBUF): Go's `SetReadBuffer`. The kernel
    /// doubles the value for its bookkeeping and caps it at `net.core.rmem_max`.
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "setsockopt", errno:
    ///   EINVAL)` for a negative size or one above `Int32.max`.
    public func setReadBuffer(_ bytes: Int) throws(NetError) {
        try setBufferSize(bytes, option: SO_RCVBUF)
    }

    /// Asks for a send buffer of `bytes` (SO_SNDBUF): Go's `SetWriteBuffer`. The kernel
    /// doubles the value and caps it at `net.core.wmem_max`.
    ///
    /// - Throws: as ``setReadBuffer(_:)``.
    public func setWriteBuffer(_ bytes: Int) throws(NetError) {
        try setBufferSize(bytes, option: SO_SNDBUF)
    }

    /// Sets an integer socket option: `setsockopt(fd, level, name, &value, 4)`, for options
    /// this type has no method for (Go's `syscall.RawConn.Control` with `SetsockoptInt`).
    ///
    /// ```swift
    /// try connection.setOption(level: SOL_SOCKET, name: SO_PRIORITY, value: 6)
    /// ```
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "setsockopt", errno:)`
    ///   with the kernel's reason (ENOPROTOOPT for an unknown option, EINVAL for a bad value).
    public func setOption(level: Int32, name: Int32, value: Int32) throws(NetError) {
        try netFD.withReference { () throws(NetError) in
            try SocketOptions.set(netFD.fd, level: level, option: name, value: value)
        }
    }

    /// Reads an integer socket option (getsockopt): for SO_RCVBUF and SO_SNDBUF the size the
    /// kernel really uses (twice the size asked for).
    ///
    /// - Throws: ``NetError/closed`` after ``close()``; `.system(call: "getsockopt", errno:)`.
    public func getOption(level: Int32, name: Int32) throws(NetError) -> Int32 {
        try netFD.withReference { () throws(NetError) in try SocketOptions.get(netFD.fd, level: level, option: name) }
    }

    private func setBufferSize(_ bytes: Int, option: Int32) throws(NetError) {
        guard bytes >= 0, let value = Int32(exactly: bytes) else { throw .system(call: "setsockopt", errno: EINVAL) }
        try setOption(level: SOL_SOCKET, name: option, value: value)
    }

    /// Runs `body` with the descriptor of a TCP connection, holding a reference; a Unix
    /// domain connection gets EOPNOTSUPP.
    private func withTCPSocket(_ body: (Int32) throws(NetError) -> Void) throws(NetError) {
        try netFD.withReference { () throws(NetError) in
            guard localAddress.family != AF_UNIX else { throw .system(call: "setsockopt", errno: EOPNOTSUPP) }
            try body(netFD.fd)
        }
    }
}

extension SocketOptions {
    /// Reads an integer socket option.
    static func get(_ fd: Int32, level: Int32, option: Int32) throws(NetError) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, level, option, &value, &length) == 0 else {
            throw .system(call: "getsockopt", errno: errno)
        }
        return value
    }

    /// Sets SO_LINGER.
    static func setLinger(_ fd: Int32, on: Bool, seconds: Int32) throws(NetError) {
        var value = linger(l_onoff: on ? 1 : 0, l_linger: seconds)
        guard setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size)) == 0 else {
            throw .system(call: "setsockopt", errno: errno)
        }
    }

    /// `duration` in whole seconds, rounded up (Go's `roundDurationUp`); EINVAL for zero or
    /// less. Values beyond `Int32.max` become `Int32.max`, which the kernel refuses.
    static func keepAliveSeconds(_ duration: Duration) throws(NetError) -> Int32 {
        guard duration > .zero else { throw .system(call: "setsockopt", errno: EINVAL) }
        let (seconds, attoseconds) = duration.components
        let rounded = seconds.addingReportingOverflow(attoseconds > 0 ? 1 : 0)
        return rounded.overflow ? .max : Int32(clamping: rounded.partialValue)
    }

    /// Applies a keep-alive configuration, checking every value before setting any.
    static func setKeepAlive(_ fd: Int32, _ config: KeepAliveConfig) throws(NetError) {
        let idle = try config.idle.map { d throws(NetError) in try keepAliveSeconds(d) }
        let interval = try config.interval.map { d throws(NetError) in try keepAliveSeconds(d) }
        if let count = config.count, count <= 0 { throw .system(call: "setsockopt", errno: EINVAL) }
        let tcp = Int32(IPPROTO_TCP)
        try set(fd, level: SOL_SOCKET, option: SO_KEEPALIVE, value: config.enabled ? 1 : 0)
        if let idle { try set(fd, level: tcp, option: TCP_KEEPIDLE, value: idle) }
        if let interval { try set(fd, level: tcp, option: TCP_KEEPINTVL, value: interval) }
        if let count = config.count { try set(fd, level: tcp, option: TCP_KEEPCNT, value: Int32(clamping: count)) }
    }
}
