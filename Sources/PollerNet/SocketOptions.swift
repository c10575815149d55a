import CPoller
import Glibc

/// Thin, policy-free socket system-call helpers shared by listeners, dial and connections.
enum SocketOptions {
    /// A new non-blocking, close-on-exec stream socket of `family`.
    static func makeStreamSocket(family: Int32) throws(NetError) -> Int32 {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = socket(family, type, 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        return fd
    }

    /// `accept4(fd, nil, nil, SOCK_NONBLOCK | SOCK_CLOEXEC)`: the new descriptor, or -1 with
    /// `errno` set.
    ///
    /// Swift's Glibc module is imported without `_GNU_SOURCE`, which hides `accept4`, so the
    /// call goes through CPoller.
    static func acceptNonBlocking(_ fd: Int32) -> Int32 {
        cpoller_accept_nonblocking(fd)
    }

    /// Sets an integer socket option.
    static func set(_ fd: Int32, level: Int32, option: Int32, value: Int32) throws(NetError) {
        var v = value
        guard setsockopt(fd, level, option, &v, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw .system(call: "setsockopt", errno: errno)
        }
    }

    /// The socket's pending error (SO_ERROR), clearing it; nil if getsockopt itself failed.
    static func pendingError(_ fd: Int32) -> Int32? {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length) == 0 else { return nil }
        return value
    }

    /// The local address (getsockname).
    static func localAddress(_ fd: Int32) throws(NetError) -> SocketAddress {
        try address(fd, call: "getsockname", getsockname)
    }

    /// The peer's address (getpeername); ENOTCONN while a connect is still in progress.
    static func remoteAddress(_ fd: Int32) throws(NetError) -> SocketAddress {
        try address(fd, call: "getpeername", getpeername)
    }

    private static func address(
        _ fd: Int32, call: String,
        _ get: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) throws(NetError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { get(fd, $0, &length) }
        }
        guard r == 0 else { throw .system(call: call, errno: errno) }
        guard let address = SocketAddress(storage: storage, length: length) else {
            throw .system(call: call, errno: EAFNOSUPPORT)
        }
        return address
    }

    /// The listen backlog Go uses: the kernel's `net.core.somaxconn`, or 4096 (the default
    /// since Linux 5.4) when it cannot be read. Read once.
    static let systemBacklog: Int32 = {
        guard let file = fopen("/proc/sys/net/core/somaxconn", "r") else { return 4096 }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 32)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { return 4096 }
        let text = String(decoding: buffer.prefix { $0 != 0 }.map(UInt8.init(bitPattern:)), as: UTF8.self)
        guard let value = Int32(text.filter { $0.isASCII && $0.isNumber }), value > 0 else { return 4096 }
        return value
    }()
}
