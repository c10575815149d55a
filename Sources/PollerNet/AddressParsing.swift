import Glibc

extension SocketAddress {
    /// The longest host accepted: 255 bytes, DNS's limit for a name.
    public static let maximumHostLength = 255

    /// Splits `"host:port"`, `"[host]:port"` or `"[host%zone]:port"` into host and port,
    /// by Go's `net.SplitHostPort` rules: the port follows the last colon; a host with
    /// colons (IPv6) must be in brackets; the brackets are removed; the port may be empty.
    ///
    /// ```swift
    /// try SocketAddress.splitHostPort("[::1]:8080")  // ("::1", "8080")
    /// try SocketAddress.splitHostPort(":8080")       // ("", "8080")
    /// ```
    ///
    /// - Throws: ``NetError/invalidAddress(_:)`` naming the address and saying what is
    ///   wrong, with Go's words: "missing port in address", "too many colons in address",
    ///   "missing ']' in address", "unexpected '[' in address", "unexpected ']' in address";
    ///   also for a NUL or other control character anywhere in it.
    public static func splitHostPort(_ hostPort: String) throws(NetError) -> (host: String, port: String) {
        let bytes = Array(hostPort.utf8)
        func fail(_ why: String) -> NetError { .invalidAddress("\(quoted(hostPort)): \(why)") }
        if let bad = bytes.first(where: isControl) { throw fail("contains control character \(escape(bad))") }
        guard let lastColon = bytes.lastIndex(of: UInt8(ascii: ":")) else { throw fail("missing port in address") }
        let host: ArraySlice<UInt8>
        var noOpenFrom = 0
        var noCloseFrom = 0  // no '[' (']') may come at or after these
        if bytes.first == UInt8(ascii: "[") {
            guard let end = bytes.firstIndex(of: UInt8(ascii: "]")) else { throw fail("missing ']' in address") }
            switch end + 1 {
            case bytes.count: throw fail("missing port in address")
            case lastColon: break
            default: throw fail(bytes[end + 1] == UInt8(ascii: ":") ? "too many colons in address" : "missing port in address")
            }
            host = bytes[1..<end]
            (noOpenFrom, noCloseFrom) = (1, end + 1)
        } else {
            host = bytes[..<lastColon]
            if host.contains(UInt8(ascii: ":")) { throw fail("too many colons in address") }
        }
        if bytes[noOpenFrom...].contains(UInt8(ascii: "[")) { throw fail("unexpected '[' in address") }
        if bytes[noCloseFrom...].contains(UInt8(ascii: "]")) { throw fail("unexpected ']' in address") }
        return (String(decoding: host, as: UTF8.self), String(decoding: bytes[(lastColon + 1)...], as: UTF8.self))
    }

    /// Parses `"host:port"` (see ``splitHostPort(_:)``): Go's `net.ResolveTCPAddr` for
    /// numeric hosts.
    ///
    /// The host is numeric IPv4 or IPv6 (in brackets, with an optional `%zone`: an interface
    /// name or index, as in `"[fe80::1%eth0]:80"`), `localhost` for 127.0.0.1, or empty for
    /// 0.0.0.0 (`":8080"`; dialling it reaches this machine, as in Go). The port is decimal,
    /// 0 to 65535; empty means 0, as in Go.
    ///
    /// - Throws: ``NetError/invalidAddress(_:)`` for a malformed string (see
    ///   ``splitHostPort(_:)``), a host over ``maximumHostLength`` bytes or not numeric, an
    ///   unknown zone, or a port that is not a number from 0 to 65535 (`"-1"`, `"65536"`,
    ///   `"http"`). Nothing is truncated: a NUL anywhere is an error.
    public init(hostPort: String) throws(NetError) {
        let (host, port) = try Self.parseHostPort(hostPort)
        self = try SocketAddress(host: host.isEmpty ? "0.0.0.0" : host, port: port)
    }

    /// ``splitHostPort(_:)`` with the port as a number.
    static func parseHostPort(_ hostPort: String) throws(NetError) -> (host: String, port: UInt16) {
        let (host, port) = try splitHostPort(hostPort)
        var value = 0
        for byte in port.utf8 {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else {
                throw .invalidAddress("\(quoted(hostPort)): port \(quoted(port)) is not a decimal number from 0 to 65535")
            }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
            guard value <= Int(UInt16.max) else {
                throw .invalidAddress("\(quoted(hostPort)): port \(quoted(port)) is out of range 0 to 65535")
            }
        }
        return (host, UInt16(value))
    }

    /// Rejects a host with a NUL or control character (C would stop reading at a NUL) or
    /// longer than ``maximumHostLength`` bytes.
    static func checkHost(_ host: String) throws(NetError) {
        let bytes = host.utf8
        if let bad = bytes.first(where: isControl) {
            throw .invalidAddress("host \(quoted(host)) contains control character \(escape(bad))")
        }
        guard bytes.count <= maximumHostLength else {
            throw .invalidAddress("host \(quoted(host)) is \(bytes.count) bytes, longer than \(maximumHostLength)")
        }
    }

    /// The longest host name a dial resolves: 253 bytes (254 with a final dot), DNS's limit.
    public static let maximumHostNameLength = 253
    /// The longest label (the text between dots) of a host name: 63 bytes.
    public static let maximumLabelLength = 63

    /// Rejects a host name DNS could not carry, by Go's `isDomainName` rules: at most
    /// ``maximumHostNameLength`` bytes (one final dot allowed beyond), labels of 1 to
    /// ``maximumLabelLength`` ASCII letters, digits, `-` and `_`, no label starting or ending
    /// with `-`, and not all digits (that would be a malformed IPv4 address).
    static func checkHostName(_ host: String) throws(NetError) {
        try checkHost(host)
        func fail(_ why: String) -> NetError { .invalidAddress("host \(quoted(host)) \(why)") }
        var bytes = Array(host.utf8)
        if bytes.last == UInt8(ascii: "."), bytes.count > 1 { bytes.removeLast() }
        guard bytes.count <= maximumHostNameLength else {
            throw fail("is \(bytes.count) bytes, longer than the \(maximumHostNameLength) of a host name")
        }
        if bytes.contains(UInt8(ascii: ":")) { throw fail("is not a valid IPv6 address") }
        var nonNumeric = false
        for label in bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard !label.isEmpty else { throw fail("has an empty label") }
            guard label.count <= maximumLabelLength else {
                throw fail("has a label of \(label.count) bytes, longer than \(maximumLabelLength)")
            }
            if label.first == UInt8(ascii: "-") || label.last == UInt8(ascii: "-") {
                throw fail("has a label starting or ending with '-'")
            }
            for byte in label {
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): continue
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                    UInt8(ascii: "-"), UInt8(ascii: "_"):
                    nonNumeric = true
                default:
                    throw fail(
                        "contains \(byte < 0x80 ? quoted(String(UnicodeScalar(byte))) : "a non-ASCII byte"), not a valid host name character"
                    )
                }
            }
        }
        guard nonNumeric else { throw fail("is not a valid IPv4 address or host name") }
    }

    /// Parses an IPv6 address with an optional `%zone`: nil when `text` is not IPv6 at all.
    ///
    /// - Throws: ``NetError/invalidAddress(_:)`` for an empty or unknown zone.
    static func parseIPv6(_ text: String) throws(NetError) -> (address: in6_addr, zone: String?, scopeID: UInt32)? {
        let parts = text.split(separator: "%", maxSplits: 1, omittingEmptySubsequences: false)
        var address = in6_addr()
        guard inet_pton(AF_INET6, String(parts[0]), &address) == 1 else { return nil }
        guard parts.count == 2 else { return (address, nil, 0) }
        let zone = String(parts[1])
        if let index = UInt32(zone), index > 0 { return (address, zone, index) }
        let index = zone.isEmpty ? 0 : if_nametoindex(zone)
        guard index != 0 else {
            throw .invalidAddress("\(quoted(text)): no network interface \(quoted(zone)) for the zone")
        }
        return (address, zone, index)
    }

    /// `text` quoted and escaped for an error message, clipped to 80 characters (with its
    /// full length said) so a hostile string cannot flood a log.
    static func quoted(_ text: String) -> String {
        guard text.count > 80 else { return text.debugDescription }
        return "\(String(text.prefix(80)).debugDescription)… (\(text.utf8.count) bytes)"
    }

    private static func isControl(_ byte: UInt8) -> Bool { byte < 0x20 || byte == 0x7F }

    private static func escape(_ byte: UInt8) -> String {
        byte == 0 ? "NUL" : "0x" + String(byte, radix: 16, uppercase: true)
    }
}
