import Glibc
import Poller
import PollerNet
import Testing

/// Runs `body` on a fresh poller (``withNetPoller(_:sourceLocation:_:)``) with the two sockets
/// `make` returns, closing both after `body`, whether it returns or throws. (If `make` throws
/// after making one, dropping it closes it.)
private func withDatagramSockets(
    _ kind: BackendKind, sourceLocation: SourceLocation,
    make: (Poller) throws -> (DatagramSocket, DatagramSocket),
    _ body: (Poller, DatagramSocket, DatagramSocket) async throws -> Void
) async throws {
    try await withNetPoller(kind, sourceLocation: sourceLocation) { poller in
        let (first, second) = try make(poller)
        do {
            try await body(poller, first, second)
        } catch {
            try? await first.close()
            try? await second.close()
            throw error
        }
        try await first.close()
        try await second.close()
    }
}

/// Two UDP sockets bound to 127.0.0.1:0. On a test's group (`POLLER_THREADS` ≥ 2) the second
/// is registered with another member than the first, so each wake-up between them crosses
/// threads.
private func withUDPSockets(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, DatagramSocket, DatagramSocket) async throws -> Void
) async throws {
    try await withDatagramSockets(
        kind, sourceLocation: sourceLocation,
        make: { poller in
            let other = NetTestGroup.current?.pollers.last ?? poller
            return (
                try DatagramSocket.bind(host: "127.0.0.1", port: 0, poller: poller),
                try DatagramSocket.bind(host: "127.0.0.1", port: 0, poller: other)
            )
        }, body)
}

/// Two connected Unix datagram sockets (`DatagramSocket.pair`).
private func withUnixPair(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, DatagramSocket, DatagramSocket) async throws -> Void
) async throws {
    try await withDatagramSockets(kind, sourceLocation: sourceLocation, make: { try DatagramSocket.pair(poller: $0) }, body)
}

/// Receives one datagram into a buffer of `capacity` bytes: its bytes and what the receive
/// reported.
private func receive(
    _ socket: DatagramSocket, capacity: Int
) async throws(NetError) -> (bytes: [UInt8], datagram: ReceivedDatagram) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 1)
    defer { buffer.deallocate() }
    let datagram = try await socket.readFrom(into: buffer)
    return (Array(buffer[0..<datagram.count]), datagram)
}

/// Starts a read of up to `capacity` bytes on `socket` and waits until it has blocked in the
/// poller; the task's value is the error the read ends with, or nil.
private func startBlockedReceive(
    _ socket: DatagramSocket, capacity: Int, _ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation
) async throws -> Task<NetError?, Never> {
    let reader = Task { await netError { () async throws(NetError) in try await receive(socket, capacity: capacity) } }
    try await waitUntilParked(poller, sourceLocation: sourceLocation)
    return reader
}

/// A UDP port on 127.0.0.1 that nothing is bound to: one the kernel just chose, released.
private func unboundUDPPort(_ poller: Poller) async throws -> UInt16 {
    let probe = try DatagramSocket.bind(host: "127.0.0.1", port: 0, poller: poller)
    try await probe.close()
    return probe.localAddress.port!
}

extension PollerNetTests {
    /// UDP and Unix datagram sockets; Go's tests from net/timeout_test.go, net/net_test.go
    /// and net/udpsock_test.go, numbered as in the digest (go-netpoll.md).
    @Suite("Datagrams")
    struct Datagrams {
        // MARK: Exchanging datagrams

        @Test("bound UDP sockets exchange datagrams with write(to:) and readFrom, which names the sender", arguments: BackendKind.allCases)
        func udpRoundTrip(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { _, a, b in
                #expect(a.localAddress.port != 0)
                #expect(a.remoteAddress == nil)
                try await a.write(Array("ping".utf8), to: b.localAddress)
                let (bytes, datagram) = try await receive(b, capacity: 64)
                #expect(bytes == Array("ping".utf8))
                #expect(datagram.sender == a.localAddress)
                #expect(!datagram.isTruncated)
                try await b.write(Array("pong".utf8), to: datagram.sender)
                #expect(try await receive(a, capacity: 64).bytes == Array("pong".utf8))
            }
        }

        @Test("a dialled UDP socket reads and writes its peer with plain read and write", arguments: BackendKind.allCases)
        func udpConnected(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { poller, server, _ in
                let client = try DatagramSocket.dial(host: "127.0.0.1", port: server.localAddress.port!, poller: poller)
                #expect(client.remoteAddress == server.localAddress)
                try await client.write([1, 2, 3])
                let (bytes, datagram) = try await receive(server, capacity: 16)
                #expect(bytes == [1, 2, 3])
                try await server.write([4, 5], to: datagram.sender)
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
                defer { buffer.deallocate() }
                let reply = try await client.read(into: buffer)
                #expect(Array(buffer[0..<reply.count]) == [4, 5])
                #expect(reply.sender == server.localAddress)
                try await client.close()
            }
        }

        @Test("Unix datagram sockets bound to paths exchange datagrams and remove their files on close", arguments: BackendKind.allCases)
        func unixPaths(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let serverPath = temporarySocketPath("dgram-server")
                let clientPath = temporarySocketPath("dgram-client")
                let server = try DatagramSocket.bind(unixPath: serverPath, poller: poller)
                let client = try DatagramSocket.dial(unixPath: serverPath, localPath: clientPath, poller: poller)
                #expect(client.remoteAddress == .unix(path: serverPath))
                try await client.write(Array("hello".utf8))
                let (bytes, datagram) = try await receive(server, capacity: 64)
                #expect(bytes == Array("hello".utf8))
                #expect(datagram.sender == .unix(path: clientPath))
                try await server.write(Array("back".utf8), to: datagram.sender)
                #expect(try await receive(client, capacity: 64).bytes == Array("back".utf8))
                try await client.close()
                try await server.close()
                #expect(access(serverPath, F_OK) != 0)
                #expect(access(clientPath, F_OK) != 0)
            }
        }

        // MARK: Sizes

        @Test(
            "an oversized datagram fills the buffer and is reported truncated with its full length; the next one is intact",
            arguments: BackendKind.allCases)
        func truncation(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { _, a, b in
                let big = (0..<100).map { UInt8($0) }
                try await a.write(big, to: b.localAddress)
                try await a.write([7, 7], to: b.localAddress)
                let (bytes, datagram) = try await receive(b, capacity: 10)
                #expect(bytes == Array(big[0..<10]))
                #expect(datagram.count == 10)
                #expect(datagram.length == 100)
                #expect(datagram.isTruncated)
                // The tail of the first datagram is gone; the second arrives whole.
                let (next, nextDatagram) = try await receive(b, capacity: 10)
                #expect(next == [7, 7])
                #expect(!nextDatagram.isTruncated)
            }
        }

        @Test("a zero-length datagram is received as 0 bytes, not end of file, on UDP and Unix sockets", arguments: BackendKind.allCases)
        func zeroLengthDatagram(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { _, a, b in
                try await a.write([], to: b.localAddress)
                try await a.write([9], to: b.localAddress)
                let (empty, datagram) = try await receive(b, capacity: 8)
                #expect(empty.isEmpty)
                #expect(datagram.length == 0)
                #expect(!datagram.isTruncated)
                #expect(datagram.sender == a.localAddress)
                #expect(try await receive(b, capacity: 8).bytes == [9])
            }
            try await withUnixPair(kind) { _, a, b in
                try await a.write([])
                let datagram = try await receive(b, capacity: 8).datagram
                #expect(datagram.count == 0 && datagram.length == 0)
                #expect(datagram.sender == .unix(path: ""))
            }
        }

        // MARK: Deadlines (Go's net/timeout_test.go)

        // Digest 21.
        @Test(
            "TestReadFromTimeout: a past read deadline fails reads despite a queued datagram; a future one lets reads through until it passes",
            arguments: BackendKind.allCases)
        func readFromTimeout(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { _, server, client in
                try await server.write(Array("READFROM TIMEOUT TEST".utf8), to: client.localAddress)
                await sleep(ms: 20)
                // Go's readFromTimeoutTests: the timeout and the expected error of two reads
                // in turn (nil: reads succeed until one fails).
                let table: [(timeout: Duration, errors: [NetError?])] = [
                    (.seconds(-5), [.timeout, .timeout]),
                    (.milliseconds(50), [nil, .timeout]),
                ]
                for (timeout, expected) in table {
                    try client.setReadDeadline(in: timeout)
                    for expectedError in expected {
                        while true {
                            let result: (bytes: [UInt8], datagram: ReceivedDatagram)
                            do throws(NetError) {
                                result = try await receive(client, capacity: 1)
                            } catch {
                                #expect(error == .timeout)
                                break
                            }
                            #expect(expectedError == nil, "read succeeded past a deadline")
                            if expectedError != nil { break }
                            // A one-byte buffer: the datagram is cut, and says so.
                            #expect(result.bytes == Array("R".utf8))
                            #expect(result.datagram.isTruncated && result.datagram.length == 21)
                            await sleep(ms: Int(timeout / .milliseconds(1)) / 3)
                        }
                    }
                }
            }
        }

        // Digest 24.
        @Test(
            "TestWriteToTimeout: a past write deadline fails sends though the buffer has room; a future one lets sends through until it passes",
            arguments: BackendKind.allCases)
        func writeToTimeout(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { poller, target, _ in
                for timeout: Duration in [.seconds(-5), .milliseconds(10)] {
                    let sender = try DatagramSocket.bind(host: "127.0.0.1", port: 0, poller: poller)
                    try sender.setWriteDeadline(in: timeout)
                    var backoff = 1
                    var timeouts = 0
                    while timeouts < 2 {
                        let error = await netError { () async throws(NetError) in
                            try await sender.write(Array("WRITETO TIMEOUT TEST".utf8), to: target.localAddress)
                        }
                        if error == nil && timeout >= .zero && timeouts == 0 {
                            await sleep(ms: 10 / 3)
                            continue
                        }
                        if error == .system(call: "sendmsg", errno: ENOBUFS) {
                            // Go #49930: the kernel's buffers are saturated; let them drain.
                            await sleep(ms: backoff)
                            backoff *= 2
                            continue
                        }
                        #expect(error == .timeout)
                        timeouts += 1
                    }
                    try await sender.close()
                }
            }
        }

        // Digest 26.
        @Test(
            "TestReadFromTimeoutFluctuation: a read deadline never fires early and fires close to on time", arguments: BackendKind.allCases)
        func readFromTimeoutFluctuation(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { _, server, _ in
                let client = try DatagramSocket.dial(host: "127.0.0.1", port: server.localAddress.port!, poller: server.poller)
                var timeout = Duration.milliseconds(1)
                while true {
                    let start = ContinuousClock.now
                    let deadline = start + timeout
                    try client.setReadDeadline(deadline)
                    let error = await netError { () async throws(NetError) in try await receive(client, capacity: 256) }
                    let end = ContinuousClock.now
                    #expect(error == .timeout)
                    #expect(end >= deadline, "the read returned before its deadline")
                    let took = end - start
                    if took > timeout * 11 / 10 {
                        // A slow or loaded machine: try again with a longer timeout (Go's nextTimeout).
                        #expect(took < .seconds(4), "a read deadline took \(took)")
                        if took >= .seconds(4) { break }
                        timeout = min(took * 5 / 4, .seconds(4))
                        continue
                    }
                    break
                }
                try await client.close()
            }
        }

        @Test(
            "a read deadline extended while a datagram read is blocked keeps it waiting until a datagram arrives",
            arguments: BackendKind.allCases)
        func deadlineExtendedWhileBlocked(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { poller, a, b in
                try b.setReadDeadline(in: .milliseconds(100))
                let reader = Task { () async throws(NetError) -> [UInt8] in try await receive(b, capacity: 8).bytes }
                try await waitUntilParked(poller)
                try b.setReadDeadline(in: .seconds(10))
                await sleep(ms: 200)  // past the first deadline
                try await a.write([42], to: b.localAddress)
                #expect(try await reader.value == [42])
                // Cleared, then moved to the past while blocked: the read wakes with a timeout.
                try b.setReadDeadline(nil)
                let blocked = try await startBlockedReceive(b, capacity: 8, poller)
                try b.setReadDeadline(.now - .seconds(1))
                #expect(await blocked.value == .timeout)
            }
        }

        // MARK: Close and cancellation

        // Digest 36.
        @Test("TestPacketConnClose: reading a closed UDP or Unix datagram socket fails with closed", arguments: BackendKind.allCases)
        func packetConnClose(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let path = temporarySocketPath("dgram-close")
                for socket in [
                    try DatagramSocket.bind(host: "127.0.0.1", port: 0, poller: poller),
                    try DatagramSocket.bind(unixPath: path, poller: poller),
                ] {
                    try await socket.close()
                    await expectNetError(.closed) { () async throws(NetError) in try await receive(socket, capacity: 1) }
                    await expectNetError(.closed) { () async throws(NetError) in try await socket.close() }
                    await expectNetError(.closed) { () async throws(NetError) in try socket.setReadDeadline(nil) }
                }
                #expect(access(path, F_OK) != 0)
            }
        }

        // Digest 42 (Go #72770).
        @Test(
            "TestCloseUnblocksReadUDP: close wakes a zero-length datagram read blocked in the poller with closed",
            arguments: BackendKind.allCases)
        func closeUnblocksReadUDP(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let socket = try DatagramSocket.bind(host: "127.0.0.1", port: 0, poller: poller)
                let reader = try await startBlockedReceive(socket, capacity: 0, poller)
                await sleep(ms: 250)
                try await socket.close()
                #expect(await reader.value == .closed)
            }
        }

        @Test(
            "cancelling the task of a blocked datagram read throws cancelled and leaves the socket usable", arguments: BackendKind.allCases)
        func cancelBlockedRead(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { poller, a, b in
                let reader = try await startBlockedReceive(b, capacity: 8, poller)
                reader.cancel()
                #expect(await reader.value == .cancelled)
                try await a.write([5], to: b.localAddress)
                #expect(try await receive(b, capacity: 8).bytes == [5])
            }
        }

        @Test("a zero-length read consumes one datagram and reports its length", arguments: BackendKind.allCases)
        func zeroLengthRead(kind: BackendKind) async throws {
            try await withUnixPair(kind) { _, a, b in
                try await a.write([1, 2, 3])
                try await a.write([4])
                let datagram = try await receive(b, capacity: 0).datagram
                #expect(datagram.count == 0 && datagram.length == 3 && datagram.isTruncated)
                #expect(try await receive(b, capacity: 8).bytes == [4])
            }
        }

        @Test(
            "a connected UDP socket whose datagram met a closed port reads ECONNREFUSED, then works once the port is bound",
            arguments: BackendKind.allCases)
        func connectionRefused(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let port = try await unboundUDPPort(poller)
                let client = try DatagramSocket.dial(host: "127.0.0.1", port: port, poller: poller)
                try client.setReadDeadline(in: .seconds(5))
                try await client.write([1])
                // The ICMP port-unreachable wakes the blocked read with the socket's error.
                await expectNetError(.system(call: "recvmsg", errno: ECONNREFUSED)) { () async throws(NetError) in
                    try await receive(client, capacity: 8)
                }
                let server = try DatagramSocket.bind(host: "127.0.0.1", port: port, poller: poller)
                try await client.write([2])
                let (bytes, datagram) = try await receive(server, capacity: 8)
                #expect(bytes == [2])
                try await server.write([3], to: datagram.sender)
                #expect(try await receive(client, capacity: 8).bytes == [3])
                try await server.close()
                try await client.close()
            }
        }

        @Test(
            "after one end of a Unix datagram pair closes, the other's blocked read is not woken (Linux) but its writes fail with ECONNREFUSED",
            arguments: BackendKind.allCases)
        func pairPeerClosed(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let (a, b) = try DatagramSocket.pair(poller: poller)
                try b.setReadDeadline(in: .milliseconds(300))
                let reader = try await startBlockedReceive(b, capacity: 8, poller)
                try await a.close()
                // Unlike a stream, a datagram socket gets no hang-up when its peer goes: only
                // the deadline ends the read.
                #expect(await reader.value == .timeout)
                await expectNetError(.system(call: "sendmsg", errno: ECONNREFUSED)) { () async throws(NetError) in
                    try await b.write([1])
                }
                try await b.close()
            }
        }

        // MARK: Passing descriptors

        @Test(
            "SCM_RIGHTS: a descriptor sent over a Unix datagram socket arrives as a working descriptor the receiver owns",
            arguments: BackendKind.allCases)
        func passDescriptor(kind: BackendKind) async throws {
            try await withUnixPair(kind) { _, a, b in
                var pipeEnds: [Int32] = [-1, -1]
                #expect(pipe(&pipeEnds) == 0)
                defer { close(pipeEnds[0]) }
                try await a.writeMessage(Array("fd".utf8), descriptors: [pipeEnds[1]])
                close(pipeEnds[1])  // the sender's copy: the receiver has its own
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
                defer { buffer.deallocate() }
                let message = try await b.readMessage(into: buffer, maxDescriptors: 4)
                #expect(Array(buffer[0..<message.datagram.count]) == Array("fd".utf8))
                #expect(message.descriptors.count == 1)
                #expect(!message.isControlTruncated)
                let received = try #require(message.descriptors.first?.take())
                #expect(message.descriptors.first?.fd == nil)
                #expect(fcntl(received, F_GETFD) & FD_CLOEXEC != 0)
                var byte: UInt8 = 33
                #expect(write(received, &byte, 1) == 1)
                close(received)
                byte = 0
                #expect(read(pipeEnds[0], &byte, 1) == 1)
                #expect(byte == 33)
                // Every write end is closed now: the pipe reads end of file.
                #expect(read(pipeEnds[0], &byte, 1) == 0)
            }
        }

        @Test(
            "SCM_RIGHTS: received descriptors that are dropped, or that do not fit, are closed rather than leaked",
            arguments: BackendKind.allCases)
        func droppedDescriptorsClose(kind: BackendKind) async throws {
            try await withUnixPair(kind) { _, a, b in
                let before = openFDCount()
                // Descriptors sent to a plain read are closed by the kernel.
                try await a.writeMessage([1], descriptors: [0])
                #expect(try await receive(b, capacity: 8).bytes == [1])
                #expect(openFDCount() == before)
                // Three descriptors (one sent three times), room for one: two are lost.
                let whileHeld = try await { () async throws -> Int in
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)
                    defer { buffer.deallocate() }
                    try await a.writeMessage([], descriptors: [0, 0, 0])
                    let message = try await b.readMessage(into: buffer, maxDescriptors: 1)
                    #expect(message.descriptors.count == 1)
                    #expect(message.isControlTruncated)
                    return withExtendedLifetime(message) { openFDCount() }
                }()
                #expect(whileHeld == before + 1)
                // The one received, dropped untaken: closed with its wrapper.
                #expect(openFDCount() == before)
            }
        }

        // MARK: Bad input

        @Test("bad addresses and arguments fail with clear errors and leak nothing", arguments: BackendKind.allCases)
        func badInput(kind: BackendKind) async throws {
            try await withUDPSockets(kind) { poller, a, _ in
                await expectNetError(.invalidAddress("host \"example.com\" is not a numeric IPv4 or IPv6 address")) {
                    () async throws(NetError) in
                    try DatagramSocket.bind(host: "example.com", port: 0, poller: poller)
                }
                let longPath = "/tmp/" + String(repeating: "x", count: 200)
                let pathError = await netError { () async throws(NetError) in try DatagramSocket.bind(unixPath: longPath, poller: poller) }
                #expect(pathError?.description.hasPrefix("invalid address: unix socket path") == true)
                let dialError = await netError { () async throws(NetError) in
                    try DatagramSocket.dial(unixPath: temporarySocketPath("nobody"), poller: poller)
                }
                #expect(dialError == .system(call: "connect", errno: ENOENT))
                // Destinations of another family.
                let v6 = try SocketAddress(host: "::1", port: 9)
                await expectNetError(.invalidAddress("'[::1]:9' cannot be reached from a UDP/IPv4 socket")) { () async throws(NetError) in
                    try await a.write([1], to: v6)
                }
                await expectNetError(.invalidAddress("'/tmp/x' cannot be reached from a UDP/IPv4 socket")) { () async throws(NetError) in
                    try await a.write([1], to: .unix(path: "/tmp/x"))
                }
                // No destination on an unconnected socket; descriptors on UDP; bad counts.
                await expectNetError(.system(call: "sendmsg", errno: EDESTADDRREQ)) { () async throws(NetError) in
                    try await a.write([1])
                }
                await expectNetError(.system(call: "sendmsg", errno: EINVAL)) { () async throws(NetError) in
                    try await a.writeMessage([1], descriptors: [0], to: a.localAddress)
                }
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
                defer { buffer.deallocate() }
                await expectNetError(.system(call: "recvmsg", errno: EINVAL)) { () async throws(NetError) in
                    try await a.readMessage(into: buffer, maxDescriptors: -1)
                }
                // Too large for UDP over IPv4.
                await expectNetError(.system(call: "sendmsg", errno: EMSGSIZE)) { () async throws(NetError) in
                    try await a.write([UInt8](repeating: 0, count: 70_000), to: a.localAddress)
                }
            }
            try await withUnixPair(kind) { _, a, _ in
                await expectNetError(.system(call: "sendmsg", errno: EBADF)) { () async throws(NetError) in
                    try await a.writeMessage([1], descriptors: [-1])
                }
            }
        }
    }
}
