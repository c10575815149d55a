import Glibc
import Poller
import PollerNet
import Testing

extension PollerNetTests {
    @Suite("Connections")
    struct Connections {
        @Test("a dialled connection echoes bytes and reports both addresses", arguments: BackendKind.allCases)
        func echo(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                #expect(pair.client.remoteAddress == pair.listener.localAddress)
                #expect(pair.server.remoteAddress == pair.client.localAddress)
                #expect(pair.listener.localAddress.description == "127.0.0.1:\(pair.listener.localAddress.port!)")
                // TCP_NODELAY is on by default, as in Go.
                var nodelay: Int32 = 0
                var length = socklen_t(4)
                getsockopt(pair.client.netFD.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &nodelay, &length)
                #expect(nodelay == 1)
                try await pair.client.write(Array("hello".utf8))
                let got = try await pair.server.read(maxBytes: 100)
                #expect(got == Array("hello".utf8))
                try await pair.server.write(Array("world".utf8))
                #expect(try await pair.client.read(maxBytes: 100) == Array("world".utf8))
                // A zero-byte read returns at once, even with nothing pending.
                #expect(try await pair.client.read(into: UnsafeMutableRawBufferPointer(start: nil, count: 0)) == 0)
                try await pair.client.close()
                // The peer sees end of file; a second close reports closed.
                try await expectPeerClosed(pair.server, kind: kind)
                await expectNetError(.closed) { () async throws(NetError) in try await pair.client.close() }
            }
        }

        @Test("1 MiB echoed through a server task arrives exactly", arguments: BackendKind.allCases)
        func bigEcho(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let size = 1 << 20
                var payload = [UInt8](repeating: 0, count: size)
                var state: UInt32 = 12345
                for i in 0..<size {
                    state = state &* 1_103_515_245 &+ 12345
                    payload[i] = UInt8(truncatingIfNeeded: state >> 16)
                }
                let server = pair.server
                let echo = Task {
                    // Echo until end of file, then close our write side.
                    while true {
                        do throws(NetError) {
                            let chunk = try await server.read(maxBytes: 64 * 1024)
                            try await server.write(chunk)
                        } catch .endOfFile {
                            try server.closeWrite()
                            return
                        }
                    }
                }
                let client = pair.client
                let sent = payload
                let writer = Task {
                    try await client.write(sent)
                    try client.closeWrite()
                }
                var received: [UInt8] = []
                received.reserveCapacity(size)
                while true {
                    do throws(NetError) {
                        received += try await client.read(maxBytes: 100_000)
                    } catch .endOfFile {
                        break
                    }
                }
                try await writer.value
                try await echo.value
                #expect(received.count == size)
                #expect(checksum(received) == checksum(payload))
            }
        }

        @Test("200 connections at once each echo their own message", arguments: BackendKind.allCases)
        func manyConnections(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                try await expectEveryConnectionEchoes(poller, count: 200)
            }
        }

        @Test("closeWrite: the peer reads end of file and can still write back", arguments: BackendKind.allCases)
        func halfClose(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await pair.client.write(Array("request".utf8))
                try pair.client.closeWrite()
                var got: [UInt8] = []
                while true {
                    do throws(NetError) { got += try await pair.server.read(maxBytes: 100) } catch .endOfFile { break }
                }
                #expect(got == Array("request".utf8))
                try await pair.server.write(Array("reply".utf8))
                #expect(try await pair.client.read(maxBytes: 100) == Array("reply".utf8))
                // Writing after our own closeWrite fails with EPIPE (and never raises SIGPIPE).
                let error = await netError { () async throws(NetError) in try await pair.client.write([1]) }
                #expect(error == .system(call: "send", errno: EPIPE))
                try await pair.server.close()
                try await expectPeerClosed(pair.client, kind: kind)
            }
        }

        @Test("closeRead makes later reads return end of file", arguments: BackendKind.allCases)
        func closeRead(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try pair.client.closeRead()
                await expectNetError(.endOfFile) { () async throws(NetError) in try await pair.client.read(maxBytes: 1) }
            }
        }

        @Test("a peer's reset mid-stream is an error, not a crash", arguments: BackendKind.allCases)
        func peerReset(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await pair.client.write(Array("ping".utf8))
                #expect(try await pair.server.read(maxBytes: 10) == Array("ping".utf8))
                setLingerZero(pair.server.netFD.fd)
                try await pair.server.close()
                await expectNetError(.connectionReset) { () async throws(NetError) in
                    try await pair.client.read(maxBytes: 10)
                }
                // Writing to the dead connection keeps failing cleanly (EPIPE once the reset
                // has been reported), never with SIGPIPE.
                for _ in 0..<3 {
                    let error = await netError { () async throws(NetError) in try await pair.client.write([1, 2, 3]) }
                    #expect(error == .system(call: "send", errno: EPIPE) || error == .connectionReset)
                }
            }
        }

        @Test("IPv6 loopback: listen on ::1, dial, echo", arguments: BackendKind.allCases)
        func ipv6(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let listener: TCPListener
                do throws(NetError) {
                    listener = try TCPListener.listen(host: "::1", port: 0, poller: poller)
                } catch {
                    guard case .system(_, let e) = error, e == EADDRNOTAVAIL || e == EAFNOSUPPORT else { throw error }
                    try Test.cancel("IPv6 loopback unavailable: \(error)")
                }
                let port = listener.localAddress.port!
                #expect(listener.localAddress.description == "[::1]:\(port)")
                async let accepted = listener.accept()
                let client = try await Connection.dial(host: "::1", port: port, poller: poller)
                let server = try await accepted
                #expect(client.remoteAddress == .ipv6(host: "::1", port: port))
                try await client.write(Array("v6".utf8))
                #expect(try await server.read(maxBytes: 10) == Array("v6".utf8))
                try await client.close()
                try await server.close()
                try await listener.close()
            }
        }

        @Test("Unix domain sockets: listen, dial, echo, unlink on close", arguments: BackendKind.allCases)
        func unix(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                let path = temporarySocketPath("echo")
                let listener = try UnixListener.listen(path: path, poller: poller)
                #expect(listener.localAddress == .unix(path: path))
                async let accepted = listener.accept()
                let client = try await Connection.dial(unixPath: path, poller: poller)
                let server = try await accepted
                #expect(client.remoteAddress == .unix(path: path))
                #expect(server.localAddress == .unix(path: path))
                try await client.write(Array("over unix".utf8))
                #expect(try await server.read(maxBytes: 100) == Array("over unix".utf8))
                try client.closeWrite()
                await expectNetError(.endOfFile) { () async throws(NetError) in try await server.read(maxBytes: 1) }
                try await client.close()
                try await server.close()
                try await listener.close()
                #expect(access(path, F_OK) != 0, "the socket file should be unlinked")
                // Dialling a path nobody listens on fails cleanly.
                let error = await netError { () async throws(NetError) in
                    try await Connection.dial(unixPath: path, poller: poller)
                }
                #expect(error == .system(call: "connect", errno: ENOENT))
            }
        }

        @Test("cancelling a blocked read throws cancelled and leaves the connection usable", arguments: BackendKind.allCases)
        func cancelRead(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let reader = Task { () async throws(NetError) -> [UInt8] in try await client.read(maxBytes: 10) }
                try await waitUntilParked(poller)
                reader.cancel()
                let result = await reader.result
                #expect(throws: NetError.cancelled) { try result.get() }
                #expect(parkedWaiters(poller) == 0)
                try await pair.server.write(Array("after".utf8))
                #expect(try await client.read(maxBytes: 10) == Array("after".utf8))
            }
        }

        @Test(
            "with task cancellation not observed, a cancelled read stays blocked until data arrives, and close still wakes one",
            arguments: BackendKind.allCases)
        func cancellationNotObserved(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                client.observesTaskCancellation = false
                let reader = Task { () async throws(NetError) -> [UInt8] in try await client.read(maxBytes: 10) }
                try await waitUntilParked(poller)
                reader.cancel()
                await sleep(ms: 50)
                #expect(parkedWaiters(poller) == 1, "the cancelled read stopped waiting")
                try await pair.server.write(Array("data".utf8))
                #expect(try await reader.value == Array("data".utf8))
                // Go's way to interrupt such a read: close the connection.
                let second = Task { await netError { () async throws(NetError) in try await client.read(maxBytes: 10) } }
                try await waitUntilParked(poller)
                second.cancel()
                try await client.close()
                #expect(await second.value == .closed)
            }
        }

        @Test("two blocked readers: one gets the byte, close wakes the other with closed", arguments: BackendKind.allCases)
        func queuedReaders(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let readers = (0..<2).map { _ in
                    Task { () async throws(NetError) -> [UInt8] in try await client.read(maxBytes: 1) }
                }
                await sleep(ms: 50)
                try await pair.server.write([7])
                await sleep(ms: 50)
                try await client.close()
                var outcomes: [Result<[UInt8], NetError>] = []
                for reader in readers { outcomes.append(await reader.result.mapError { $0 as! NetError }) }
                #expect(outcomes.filter { (try? $0.get()) == [7] }.count == 1)
                #expect(outcomes.filter { if case .failure(.closed) = $0 { true } else { false } }.count == 1)
            }
        }

        @Test("readers queued behind a blocked read are served in the order they arrived", arguments: BackendKind.allCases)
        func queuedReadersInOrder(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let readers = await startReadersOneByOne(pair.client, count: 5)
                try await pair.server.write([0, 1, 2, 3, 4])
                for (i, reader) in readers.enumerated() {
                    #expect(try await reader.value == [UInt8(i)])
                }
            }
        }

        @Test(
            "cancelling a reader queued for the read lock throws cancelled; the queue moves on past it",
            arguments: BackendKind.allCases)
        func cancelQueuedReader(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let readers = await startReadersOneByOne(client, count: 3)
                readers[1].cancel()
                await #expect(throws: NetError.cancelled) { try await readers[1].value }
                try await pair.server.write([10, 11])
                #expect(try await readers[0].value == [10])
                #expect(try await readers[2].value == [11])
                // Nothing was consumed by the cancelled reader, and no reference leaked:
                // close completes.
                try await client.close()
            }
        }

        @Test("closing a connection is seen by the peer at once (FIN), 50 times in a row", arguments: BackendKind.allCases)
        func closeSendsFIN(kind: BackendKind) async throws {
            try await withNetPoller(kind) { poller in
                for _ in 0..<50 {
                    let pair = try await TCPPair.make(poller)
                    try await pair.server.write([1])
                    #expect(try await pair.client.read(maxBytes: 1) == [1])
                    try await pair.server.close()
                    try await expectPeerClosed(pair.client, kind: kind)
                    await pair.close()
                }
            }
        }
    }
}
