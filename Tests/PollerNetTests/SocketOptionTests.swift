import Glibc
import Poller
import PollerNet
import Testing

/// An integer option of `connection`, read with getsockopt; -1 (and a recorded issue) on an
/// error.
private func option(
    _ connection: Connection, _ level: Int32, _ name: Int32, sourceLocation: SourceLocation = #_sourceLocation
) -> Int32 {
    do {
        return try connection.getOption(level: level, name: name)
    } catch {
        Issue.record("getOption(\(level), \(name)): \(error)", sourceLocation: sourceLocation)
        return -1
    }
}

/// SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT of `connection`.
private func keepAlive(_ connection: Connection, sourceLocation: SourceLocation = #_sourceLocation) -> [Int32] {
    let tcp = Int32(IPPROTO_TCP)
    return [(SOL_SOCKET, SO_KEEPALIVE), (tcp, TCP_KEEPIDLE), (tcp, TCP_KEEPINTVL), (tcp, TCP_KEEPCNT)].map {
        option(connection, $0.0, $0.1, sourceLocation: sourceLocation)
    }
}

/// SO_LINGER of `fd` as (on, seconds).
private func lingerOf(_ fd: Int32) -> (Int32, Int32) {
    var value = linger()
    var length = socklen_t(MemoryLayout<linger>.size)
    #expect(getsockopt(fd, SOL_SOCKET, SO_LINGER, &value, &length) == 0)
    return (value.l_onoff, value.l_linger)
}

/// A connected Unix domain pair (client, server) and its listener, on `poller`.
private func withUnixPair(
    _ poller: Poller, _ body: (Connection, Connection) async throws -> Void
) async throws {
    let path = temporarySocketPath("opts")
    let listener = try UnixListener.listen(path: path, poller: poller)
    async let accepted = listener.accept()
    let client = try await Connection.dial(unixPath: path, poller: poller)
    let server = try await accepted
    do { try await body(client, server) } catch {
        try? await client.close()
        try? await server.close()
        try? await listener.close()
        throw error
    }
    try await client.close()
    try await server.close()
    try await listener.close()
}

extension PollerNetTests {
    @Suite("Socket options")
    struct SocketOptionTests {
        private static let einval = NetError.system(call: "setsockopt", errno: EINVAL)

        @Test(
            "dialled and accepted TCP connections have Go's keep-alive (on, 15 s idle, 15 s interval, 9 probes) and no delay",
            arguments: BackendKind.allCases)
        func keepAliveByDefault(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                for connection in [pair.client, pair.server] {
                    #expect(keepAlive(connection) == [1, 15, 15, 9])
                    #expect(option(connection, Int32(IPPROTO_TCP), TCP_NODELAY) == 1)
                }
                #expect(
                    KeepAliveConfig.default
                        == KeepAliveConfig(
                            enabled: true, idle: .seconds(15),
                            interval: .seconds(15), count: 9))
            }
        }

        @Test(
            "setKeepAliveConfig sets idle, interval and count, rounds up to whole seconds and leaves nil fields alone",
            arguments: BackendKind.allCases)
        func keepAliveConfig(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try pair.client.setKeepAliveConfig(KeepAliveConfig(idle: .milliseconds(1500), interval: .seconds(3), count: 4))
                #expect(keepAlive(pair.client) == [1, 2, 3, 4])
                try pair.client.setKeepAliveConfig(KeepAliveConfig(enabled: false, idle: nil, interval: .seconds(7), count: nil))
                #expect(keepAlive(pair.client) == [0, 2, 7, 4])
                try pair.client.setKeepAlive(true)
                try pair.client.setKeepAlivePeriod(.seconds(30))
                #expect(keepAlive(pair.client) == [1, 30, 30, 4])
                try pair.client.setKeepAlive(false)
                #expect(option(pair.client, SOL_SOCKET, SO_KEEPALIVE) == 0)
                // The other end keeps its own settings.
                #expect(keepAlive(pair.server) == [1, 15, 15, 9])
            }
        }

        @Test(
            "keep-alive values of zero, negative or beyond the kernel's limit fail with EINVAL",
            arguments: BackendKind.allCases)
        func keepAliveBadValues(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let c = pair.client
                for config in [
                    KeepAliveConfig(idle: .zero), KeepAliveConfig(interval: .seconds(-1)),
                    KeepAliveConfig(count: 0), KeepAliveConfig(count: -3), KeepAliveConfig(enabled: false, idle: .zero),
                ] {
                    await expectNetError(Self.einval) { () throws(NetError) in try c.setKeepAliveConfig(config) }
                }
                // Checked before anything is set: keep-alive is still on with Go's values.
                #expect(keepAlive(c) == [1, 15, 15, 9])
                for config in [
                    KeepAliveConfig(idle: .seconds(Int64.max)), KeepAliveConfig(count: 1_000),
                    KeepAliveConfig(count: Int.max), KeepAliveConfig(interval: .seconds(40_000)),
                ] {
                    await expectNetError(Self.einval) { () throws(NetError) in try c.setKeepAliveConfig(config) }
                }
                await expectNetError(Self.einval) { () throws(NetError) in try c.setKeepAlivePeriod(.zero) }
            }
        }

        @Test(
            "setLinger turns SO_LINGER off, to reset-on-close and to a number of seconds; negative fails with EINVAL",
            arguments: BackendKind.allCases)
        func linger(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                let c = pair.client
                #expect(lingerOf(c.netFD.fd) == (0, 0))
                try c.setLinger(5)
                #expect(lingerOf(c.netFD.fd) == (1, 5))
                try c.setLinger(0)
                #expect(lingerOf(c.netFD.fd) == (1, 0))
                try c.setLinger(nil)
                #expect(lingerOf(c.netFD.fd).0 == 0)
                await expectNetError(Self.einval) { () throws(NetError) in try c.setLinger(-1) }
                await expectNetError(Self.einval) { () throws(NetError) in try c.setLinger(Int(Int32.max) + 1) }
            }
        }

        @Test("setNoDelay turns Nagle's algorithm on and off again", arguments: BackendKind.allCases)
        func noDelay(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try pair.server.setNoDelay(false)
                #expect(option(pair.server, Int32(IPPROTO_TCP), TCP_NODELAY) == 0)
                try pair.server.setNoDelay(true)
                #expect(option(pair.server, Int32(IPPROTO_TCP), TCP_NODELAY) == 1)
            }
        }

        @Test(
            "setReadBuffer and setWriteBuffer set SO_RCVBUF and SO_SNDBUF; a negative size fails with EINVAL",
            arguments: BackendKind.allCases)
        func buffers(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try pair.client.setReadBuffer(32_768)
                try pair.client.setWriteBuffer(40_960)
                // The kernel doubles the size asked for (its bookkeeping).
                #expect(option(pair.client, SOL_SOCKET, SO_RCVBUF) == 65_536)
                #expect(option(pair.client, SOL_SOCKET, SO_SNDBUF) == 81_920)
                await expectNetError(Self.einval) { () throws(NetError) in try pair.client.setReadBuffer(-1) }
                await expectNetError(Self.einval) { () throws(NetError) in try pair.client.setWriteBuffer(Int.max) }
                // The connection still works.
                try await pair.client.write([1, 2, 3])
                #expect(try await pair.server.read(maxBytes: 3) == [1, 2, 3])
            }
        }

        @Test(
            "setOption and getOption reach any integer option and report the kernel's errno",
            arguments: BackendKind.allCases)
        func genericOption(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try pair.client.setOption(level: SOL_SOCKET, name: SO_PRIORITY, value: 5)
                #expect(option(pair.client, SOL_SOCKET, SO_PRIORITY) == 5)
                await expectNetError(.system(call: "setsockopt", errno: ENOPROTOOPT)) { () throws(NetError) in
                    try pair.client.setOption(level: SOL_SOCKET, name: 9_999, value: 1)
                }
                await expectNetError(.system(call: "getsockopt", errno: ENOPROTOOPT)) { () throws(NetError) in
                    try pair.client.getOption(level: SOL_SOCKET, name: 9_999)
                }
            }
        }

        @Test(
            "TCP-only options on a Unix domain connection fail with EOPNOTSUPP; buffers and generic options work",
            arguments: BackendKind.allCases)
        func unixConnection(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                try await withUnixPair(poller) { client, server in
                    let unsupported = NetError.system(call: "setsockopt", errno: EOPNOTSUPP)
                    for c in [client, server] {
                        #expect(option(c, SOL_SOCKET, SO_KEEPALIVE) == 0)
                        await expectNetError(unsupported) { () throws(NetError) in try c.setKeepAlive(true) }
                        await expectNetError(unsupported) { () throws(NetError) in try c.setKeepAliveConfig(.default) }
                        await expectNetError(unsupported) { () throws(NetError) in try c.setKeepAlivePeriod(.seconds(1)) }
                        await expectNetError(unsupported) { () throws(NetError) in try c.setLinger(0) }
                        await expectNetError(unsupported) { () throws(NetError) in try c.setNoDelay(true) }
                        try c.setReadBuffer(16_384)
                        #expect(option(c, SOL_SOCKET, SO_RCVBUF) == 32_768)
                    }
                    try await client.write([7])
                    #expect(try await server.read(maxBytes: 1) == [7])
                }
            }
        }

        @Test("socket options on a closed connection fail with closed", arguments: BackendKind.allCases)
        func afterClose(kind: BackendKind) async throws {
            try await withTCPPair(kind) { _, pair in
                try await pair.client.close()
                let c = pair.client
                await expectNetError(.closed) { () throws(NetError) in try c.setKeepAlive(true) }
                await expectNetError(.closed) { () throws(NetError) in try c.setNoDelay(true) }
                await expectNetError(.closed) { () throws(NetError) in try c.setReadBuffer(4_096) }
                await expectNetError(.closed) { () throws(NetError) in try c.getOption(level: SOL_SOCKET, name: SO_TYPE) }
            }
        }

        @Test("listeners with reusePort set SO_REUSEPORT and share one port", arguments: BackendKind.allCases)
        func reusePort(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let first = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller, reusePort: true)
                let port = first.localAddress.port!
                let second = try TCPListener.listen(address: "127.0.0.1:\(port)", poller: poller, reusePort: true)
                #expect(second.localAddress == first.localAddress)
                var value: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                #expect(getsockopt(second.netFD.fd, SOL_SOCKET, SO_REUSEPORT, &value, &length) == 0 && value == 1)
                // Without it the port is taken.
                let error = await netError { () throws(NetError) in
                    try TCPListener.listen(host: "127.0.0.1", port: port, poller: poller)
                }
                #expect(error == .system(call: "bind", errno: EADDRINUSE))
                try await first.close()
                try await second.close()
            }
        }
    }
}
