import Glibc
import Poller

/// Options for connecting over TCP, and the dial itself: Go's `net.Dialer`.
///
/// A dial resolves the host (a name goes to `getaddrinfo` on a few threads of the dialer's own,
/// never on a poller thread or Swift's cooperative pool), then tries every address in order.
/// When the addresses are of both families it races them as RFC 8305 ("Happy Eyeballs")
/// describes: the families interleaved, starting with the first address's; each next attempt
/// starts ``fallbackDelay`` after the previous one or as soon as it fails; the first connection
/// wins and the others are closed. When every attempt fails, the first attempt's error is
/// thrown, as Go does.
///
/// ```swift
/// let dialer = Dialer(timeout: .seconds(5), keepAlive: KeepAliveConfig(idle: .seconds(60)))
/// let connection = try await dialer.dial(address: "localhost:8080")
/// ```
public struct Dialer: Sendable {
    /// RFC 8305's recommended connection attempt delay, Go's default `FallbackDelay`: 300 ms.
    public static let defaultFallbackDelay: Duration = .milliseconds(300)

    /// How long the whole dial may take, the host lookup included. Nil or zero: no limit
    /// beyond the kernel's (Go's zero `Timeout`). Negative: every dial fails at once with
    /// ``NetError/timeout`` (Go's `DialTimeout` with a negative timeout). A century or more
    /// counts as no limit.
    ///
    /// As in Go, with several addresses each connect gets a share of the time left (that time
    /// divided by the addresses left, but at least 2 s when that much remains), so one address
    /// that never answers does not use it all.
    public var timeout: Duration?

    /// How long an attempt runs before the next address is tried beside it, when the host has
    /// addresses of both families (Go's `FallbackDelay`). Zero means
    /// ``defaultFallbackDelay``; negative turns the racing off: the addresses are then tried
    /// one after the other, each only after the previous one failed.
    public var fallbackDelay: Duration

    /// The keep-alive settings of the connection (Go's `KeepAliveConfig`); the default is
    /// ``KeepAliveConfig/default``. `KeepAliveConfig(enabled: false)` turns keep-alive off.
    public var keepAlive: KeepAliveConfig

    /// The local address to bind before connecting (Go's `LocalAddr`); nil lets the kernel
    /// choose. Port 0 picks any free port. Only the resolved addresses of its family are
    /// dialled.
    public var localAddress: SocketAddress?

    /// The poller for the connection; nil for `Poller.shared()`.
    public var poller: Poller?

    /// A dialer; every argument defaults to Go's zero `Dialer`'s behaviour.
    public init(
        timeout: Duration? = nil, fallbackDelay: Duration = Dialer.defaultFallbackDelay,
        keepAlive: KeepAliveConfig = .default, localAddress: SocketAddress? = nil, poller: Poller? = nil
    ) {
        self.timeout = timeout
        self.fallbackDelay = fallbackDelay
        self.keepAlive = keepAlive
        self.localAddress = localAddress
        self.poller = poller
    }

    // MARK: Dialing

    /// Connects to `host` and `port` over TCP (Go's `Dialer.DialContext(ctx, "tcp", …)`).
    ///
    /// - Parameters:
    ///   - host: a numeric IPv4 or IPv6 address (`"127.0.0.1"`, `"::1"`, `"[fe80::1%eth0]"`),
    ///     or a host name (`"localhost"`, `"example.com"`), resolved through the system's
    ///     resolver (`/etc/hosts`, DNS). Empty means `"localhost"`, as in Go.
    ///   - port: the TCP port.
    /// - Throws: ``NetError/invalidAddress(_:)`` for a host that is neither an address nor a
    ///   valid name, before anything is looked up: a NUL or control character, a malformed
    ///   IPv4 (`"1.2.3"`, `"999.1.1.1"`) or IPv6 address, a name over
    ///   ``SocketAddress/maximumHostNameLength`` bytes or with a label (between dots) empty,
    ///   over ``SocketAddress/maximumLabelLength`` bytes or starting or ending with `-`, or a
    ///   character other than ASCII letters, digits, `-` and `_` (no IDN); ``NetError/resolution(host:code:message:)`` when the name does not
    ///   resolve; ``NetError/timeout`` when ``timeout`` passes, during the lookup or the
    ///   connects; ``NetError/cancelled`` when the task is cancelled; otherwise the first
    ///   attempt's error, such as `.system(call: "connect", errno: ECONNREFUSED)`. Nothing is
    ///   left open on failure.
    public func dial(host: String, port: UInt16) async throws(NetError) -> Connection {
        let deadline = try startDeadline()
        let addresses = try await resolve(host: host, port: port, deadline: deadline)
        return try await dial(addresses, deadline: deadline)
    }

    /// Connects to a `"host:port"` string (Go's `Dialer.Dial("tcp", address)`): the forms of
    /// ``SocketAddress/splitHostPort(_:)``, with a host as ``dial(host:port:)`` takes it
    /// (`"localhost:8080"`, `"[::1]:80"`, `":80"` for this machine).
    ///
    /// - Throws: as ``dial(host:port:)``; ``NetError/invalidAddress(_:)`` saying what is wrong
    ///   with `address`.
    public func dial(address: String) async throws(NetError) -> Connection {
        let (host, port) = try SocketAddress.parseHostPort(address)
        return try await dial(host: host, port: port)
    }

    /// Connects to `address`, with no lookup: an IP address or a Unix domain socket.
    ///
    /// - Throws: as ``dial(host:port:)``.
    public func dial(_ address: SocketAddress) async throws(NetError) -> Connection {
        let deadline = try startDeadline()
        return try await dial(try matchingLocalFamily([address], host: address.description), deadline: deadline)
    }

    /// The addresses of `host` with `port`, in the order a dial tries them (Go's
    /// `Resolver.LookupIPAddr`, with ``timeout`` as its deadline). A numeric host gives itself,
    /// without a lookup.
    ///
    /// - Throws: as ``dial(host:port:)``, without the connect errors.
    public func resolve(host: String, port: UInt16) async throws(NetError) -> [SocketAddress] {
        try await resolve(host: host, port: port, deadline: try startDeadline())
    }

    /// The addresses of a `"host:port"` string (Go's `net.ResolveTCPAddr`, which keeps the
    /// first of them), in the order a dial tries them.
    ///
    /// ```swift
    /// let addresses = try await Dialer(timeout: .seconds(2)).resolve(address: "localhost:8080")
    /// ```
    ///
    /// - Throws: as ``dial(address:)``, without the connect errors.
    public func resolve(address: String) async throws(NetError) -> [SocketAddress] {
        let (host, port) = try SocketAddress.parseHostPort(address)
        return try await resolve(host: host, port: port)
    }

    // MARK: The steps

    /// The dial's deadline: nil for none; throws `.timeout` for a negative timeout.
    private func startDeadline() throws(NetError) -> ContinuousClock.Instant? {
        guard let timeout, timeout != .zero else { return nil }
        guard timeout > .zero else { throw .timeout }
        // Beyond a century is forever (Go clamps such deadlines too: TestDialTimeoutMaxDuration).
        guard timeout < .seconds(100 * 365 * 86_400) else { return nil }
        return .now + timeout
    }

    private func resolve(
        host: String, port: UInt16, deadline: ContinuousClock.Instant?
    ) async throws(NetError) -> [SocketAddress] {
        let name = host.isEmpty ? "localhost" : host
        try SocketAddress.checkHost(name)
        if let numeric = try SocketAddress.numeric(name, port: port) {
            return try matchingLocalFamily([numeric], host: name)
        }
        try SocketAddress.checkHostName(name)
        return try matchingLocalFamily(try await HostLookup.resolve(name, port: port, deadline: deadline), host: name)
    }

    /// `addresses` of ``localAddress``'s family (all when there is none).
    private func matchingLocalFamily(_ addresses: [SocketAddress], host: String) throws(NetError) -> [SocketAddress] {
        guard let localAddress else { return addresses }
        let matching = addresses.filter { $0.family == localAddress.family }
        guard !matching.isEmpty else {
            throw .invalidAddress("no address of \(SocketAddress.quoted(host)) is of the local address \(localAddress)'s family")
        }
        return matching
    }

    /// What one attempt or timer of a race reports.
    private enum RaceEvent: Sendable {
        case attempt(Int, Result<Connection, NetError>)
        case delayPassed(Int)
    }

    /// Dials `addresses`: in the order of ``attemptOrder(_:)``, racing when that has a delay.
    private func dial(_ addresses: [SocketAddress], deadline: ContinuousClock.Instant?) async throws(NetError) -> Connection {
        let (order, delay) = attemptOrder(addresses)
        let outcome: Result<Connection, NetError> = await withTaskGroup(of: RaceEvent.self) { group in
            var launched = 0
            var running = 0
            var winner: Connection?
            var firstError: NetError?
            func launch() {
                let index = launched
                let attemptDeadline = Self.partialDeadline(deadline, attemptsLeft: order.count - index)
                launched += 1
                running += 1
                group.addTask { [self] in
                    do throws(NetError) {
                        return .attempt(index, .success(try await attempt(order[index], deadline: attemptDeadline)))
                    } catch {
                        return .attempt(index, .failure(error))
                    }
                }
                if let delay, launched < order.count {
                    group.addTask {
                        try? await Task.sleep(for: delay)
                        return .delayPassed(index)
                    }
                }
            }
            launch()
            while let event = await group.next() {
                switch event {
                case .attempt(_, .success(let connection)):
                    running -= 1
                    if winner == nil {
                        winner = connection
                        group.cancelAll()  // the other attempts close their sockets
                    } else {
                        try? await connection.close()
                    }
                case .attempt(let index, .failure(let error)):
                    running -= 1
                    if index == 0 { firstError = error }
                    if winner == nil, !Task.isCancelled, launched < order.count { launch() }
                case .delayPassed(let index):
                    if winner == nil, !Task.isCancelled, index == launched - 1, launched < order.count { launch() }
                }
                if running == 0, winner != nil || launched == order.count || Task.isCancelled {
                    group.cancelAll()  // only timers are left
                }
            }
            if let winner { return .success(winner) }
            return .failure(Task.isCancelled ? .cancelled : firstError ?? .timeout)
        }
        return try outcome.get()
    }

    /// The order to try `addresses` in, and the delay between starts: RFC 8305's interleaving
    /// of the families (the first address's family first) with ``fallbackDelay`` when both
    /// families are there and racing is on; else the given order, one at a time (nil).
    func attemptOrder(_ addresses: [SocketAddress]) -> ([SocketAddress], Duration?) {
        guard fallbackDelay >= .zero, let first = addresses.first else { return (addresses, nil) }
        let primaries = addresses.filter { $0.family == first.family }
        let fallbacks = addresses.filter { $0.family != first.family }
        guard !fallbacks.isEmpty else { return (addresses, nil) }
        var order: [SocketAddress] = []
        for i in 0..<max(primaries.count, fallbacks.count) {
            if i < primaries.count { order.append(primaries[i]) }
            if i < fallbacks.count { order.append(fallbacks[i]) }
        }
        // A day or more is as good as never (and keeps the timer's arithmetic small).
        let delay = fallbackDelay == .zero ? Self.defaultFallbackDelay : min(fallbackDelay, .seconds(86_400))
        return (order, delay)
    }

    /// Go's `partialDeadline`: the time left shared among the attempts left, each getting at
    /// least 2 s (or all that is left, when less).
    static func partialDeadline(_ deadline: ContinuousClock.Instant?, attemptsLeft: Int) -> ContinuousClock.Instant? {
        guard let deadline else { return nil }
        let now = ContinuousClock.now
        let left = deadline - now
        guard left > .zero, attemptsLeft > 1 else { return deadline }
        let saneMinimum = Duration.seconds(2)
        let share = left / attemptsLeft
        return now + (share >= saneMinimum ? share : min(saneMinimum, left))
    }

    /// One connect, with the local address bound and the keep-alive settings applied.
    private func attempt(_ address: SocketAddress, deadline: ContinuousClock.Instant?) async throws(NetError) -> Connection {
        let connection = try await Connection.connect(to: address, deadline: deadline, localAddress: localAddress, poller: poller)
        guard keepAlive != .default, address.family != AF_UNIX else { return connection }
        do throws(NetError) {
            try connection.setKeepAliveConfig(keepAlive)
        } catch {
            try? await connection.close()
            throw error
        }
        return connection
    }
}
