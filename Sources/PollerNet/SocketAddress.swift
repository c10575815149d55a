import Glibc

/// The address of one end of a connection or listener.
///
/// Hosts are numeric (no DNS): `"127.0.0.1"`, `"::1"`; ``Dialer`` resolves names to these. The description follows Go's
/// `net.JoinHostPort`: `127.0.0.1:8080`, `[::1]:8080`, or the path for Unix sockets.
public enum SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// An IPv4 address in dotted form and a port.
    case ipv4(host: String, port: UInt16)
    /// An IPv6 address in its canonical textual form, with `%zone` (an interface name or
    /// index) for a scoped address such as `fe80::1%eth0`, and a port.
    case ipv6(host: String, port: UInt16)
    /// A Unix domain socket path; empty for an unnamed socket (a dialling client's end).
    case unix(path: String)

    /// Parses a numeric host (IPv4 or IPv6, optionally in brackets, IPv6 with an optional
    /// `%zone`: `"fe80::1%lo"`) and a port. `"localhost"` means `127.0.0.1`; other names are
    /// rejected (no DNS). For a `"host:port"` string see ``init(hostPort:)``.
    ///
    /// - Throws: ``NetError/invalidAddress(_:)`` if `host` is not a numeric address, names
    ///   an unknown zone, contains a NUL or control character, or is longer than
    ///   ``maximumHostLength`` bytes.
    public init(host: String, port: UInt16) throws(NetError) {
        try Self.checkHost(host)
        guard let address = try Self.numeric(host == "localhost" ? "127.0.0.1" : host, port: port) else {
            throw .invalidAddress("host \(Self.quoted(host)) is not a numeric IPv4 or IPv6 address")
        }
        self = address
    }

    /// `host` as a numeric IPv4 or IPv6 address (optionally in brackets, IPv6 with a zone),
    /// or nil when it is not one.
    ///
    /// - Throws: ``NetError/invalidAddress(_:)`` for an IPv6 address with an unknown zone.
    static func numeric(_ host: String, port: UInt16) throws(NetError) -> SocketAddress? {
        var text = host
        if text.hasPrefix("["), text.hasSuffix("]") { text = String(text.dropFirst().dropLast()) }
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return .ipv4(host: format(v4), port: port) }
        guard let v6 = try parseIPv6(text) else { return nil }
        return .ipv6(host: format(v6.address) + (v6.zone.map { "%" + $0 } ?? ""), port: port)
    }

    /// The port, for IP addresses.
    public var port: UInt16? {
        switch self {
        case .ipv4(_, let port), .ipv6(_, let port): port
        case .unix: nil
        }
    }

    public var description: String {
        switch self {
        case .ipv4(let host, let port): "\(host):\(port)"
        case .ipv6(let host, let port): "[\(host)]:\(port)"
        case .unix(let path): path
        }
    }

    /// The socket family: AF_INET, AF_INET6 or AF_UNIX.
    var family: Int32 {
        switch self {
        case .ipv4: AF_INET
        case .ipv6: AF_INET6
        case .unix: AF_UNIX
        }
    }

    // MARK: sockaddr conversion

    /// Calls `body` with this address as a `sockaddr` and its length.
    ///
    /// - Throws: ``NetError/invalidAddress(_:)`` for a Unix path that does not fit in
    ///   `sun_path` (108 bytes with its terminator) or a host that does not parse (a case
    ///   made directly, not through an initializer).
    func withSockaddr<R>(
        _ body: (UnsafePointer<sockaddr>, socklen_t) -> R
    ) throws(NetError) -> R {
        switch self {
        case .ipv4(let host, let port):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            try Self.checkHost(host)  // a NUL would end the C string early
            guard inet_pton(AF_INET, host, &sin.sin_addr) == 1 else { throw .invalidAddress(host) }
            return Self.withSockaddr(of: sin, body)
        case .ipv6(let host, let port):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            try Self.checkHost(host)
            guard let parsed = try Self.parseIPv6(host) else { throw .invalidAddress(host) }
            sin6.sin6_addr = parsed.address
            sin6.sin6_scope_id = parsed.scopeID
            return Self.withSockaddr(of: sin6, body)
        case .unix(let path):
            var sun = sockaddr_un()
            sun.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            let capacity = MemoryLayout.size(ofValue: sun.sun_path)
            guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else {
                throw .invalidAddress("unix socket path '\(path)' must be 1 to \(capacity - 1) bytes")
            }
            withUnsafeMutableBytes(of: &sun.sun_path) { dst in
                dst.copyBytes(from: bytes)
                dst[bytes.count] = 0
            }
            return Self.withSockaddr(of: sun, body)
        }
    }

    /// Calls `body` with `address` (a `sockaddr_in`, `sockaddr_in6` or `sockaddr_un`) as a
    /// `sockaddr` and its full size. The copy into `sockaddr_storage` gives every family the
    /// alignment and size the kernel may read through a `sockaddr` pointer.
    private static func withSockaddr<Address, R>(
        of address: Address, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R
    ) -> R {
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { dst in withUnsafeBytes(of: address) { dst.copyMemory(from: $0) } }
        return withUnsafePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                body($0, socklen_t(MemoryLayout<Address>.size))
            }
        }
    }

    /// Decodes a `sockaddr` filled in by the kernel; nil for an unknown family.
    init?(storage: sockaddr_storage, length: socklen_t) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            let sin = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            self = .ipv4(host: Self.format(sin.sin_addr), port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            self = .ipv6(
                host: Self.format(sin6.sin6_addr) + Self.zoneSuffix(sin6.sin6_scope_id),
                port: UInt16(bigEndian: sin6.sin6_port))
        case AF_UNIX:
            let pathOffset = MemoryLayout<sa_family_t>.size
            let pathLength = max(0, Int(length) - pathOffset)
            let path: String = withUnsafeBytes(of: &storage) { raw in
                let bytes = raw[pathOffset..<(pathOffset + min(pathLength, raw.count - pathOffset))]
                let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
                return String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
            }
            self = .unix(path: path)
        default:
            return nil
        }
    }

    /// `"%name"` (or `"%index"` for an interface without a name) for a scope id; empty for 0.
    private static func zoneSuffix(_ scopeID: UInt32) -> String {
        guard scopeID != 0 else { return "" }
        var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(scopeID, &buffer) != nil else { return "%\(scopeID)" }
        return "%" + String(decoding: buffer.prefix { $0 != 0 }.map(UInt8.init(bitPattern:)), as: UTF8.self)
    }

    private static func format(_ address: in_addr) -> String {
        var address = address
        var buffer = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        inet_ntop(AF_INET, &address, &buffer, socklen_t(buffer.count))
        return String(decoding: buffer.prefix { $0 != 0 }.map(UInt8.init(bitPattern:)), as: UTF8.self)
    }

    private static func format(_ address: in6_addr) -> String {
        var address = address
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count))
        return String(decoding: buffer.prefix { $0 != 0 }.map(UInt8.init(bitPattern:)), as: UTF8.self)
    }
}
