import Glibc
import PollerNet
import Testing

@testable import Poller

/// A TCP read that comes back short has drained the receive queue, so the next read waits
/// for fresh readiness before its system call instead of after a read(2) that fails with
/// EAGAIN. These tests pin the cases where a short read does not prove the queue empty: each
/// would leave the next read parked until its deadline if the shortcut ignored them. Every
/// read carries a 2 s deadline, so a regression fails with `.timeout` instead of hanging.
extension PollerNetTests {
    @Suite("Reads after a short read")
    struct ShortReads {
        @Test(
            "a FIN queued behind data is reported by the read after the one that took the data",
            arguments: BackendKind.allCases)
        func finBehindData(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await pair.client.write(Array("abc".utf8))
                try pair.client.closeWrite()
                // Let the poller take the data-and-FIN edge before the first read resets it.
                await sleep(ms: 50)
                try pair.server.setReadDeadline(in: .seconds(2))
                #expect(try await pair.server.read(maxBytes: 16) == Array("abc".utf8))
                await expectNetError(.endOfFile) { () async throws(NetError) in
                    try await pair.server.read(maxBytes: 16)
                }
            }
        }

        @Test(
            "a reset queued behind data is reported by the read after the one that took the data",
            arguments: BackendKind.allCases)
        func resetBehindData(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await pair.client.write(Array("abc".utf8))
                setLingerZero(pair.client.netFD.fd)
                try await pair.client.close()
                await sleep(ms: 50)
                try pair.server.setReadDeadline(in: .seconds(2))
                #expect(try await pair.server.read(maxBytes: 16) == Array("abc".utf8))
                await expectNetError(.connectionReset) { () async throws(NetError) in
                    try await pair.server.read(maxBytes: 16)
                }
            }
        }

        @Test("bytes behind an urgent-data mark are read, not stranded", arguments: BackendKind.allCases)
        func bytesBehindUrgentMark(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let fd = pair.client.netFD.fd
                // "abc", then "X" as urgent data, then "def": a read stops at the mark.
                for (text, flags) in [("abc", Int32(0)), ("X", Int32(MSG_OOB)), ("def", Int32(0))] {
                    let sent = Array(text.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, flags) }
                    #expect(sent == text.utf8.count)
                }
                await sleep(ms: 50)
                try pair.server.setReadDeadline(in: .seconds(2))
                var received: [UInt8] = []
                while received.count < 6 {
                    received += try await pair.server.read(maxBytes: 16)
                }
                // Without SO_OOBINLINE the urgent byte is out of band: the stream is the rest.
                #expect(received == Array("abcdef".utf8))
            }
        }

        @Test(
            "a read after a short read still fails at an expired deadline with data waiting",
            arguments: BackendKind.allCases)
        func deadlineAfterShortRead(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await expectShortRead(pair)
                try await pair.client.write(Array("def".utf8))
                await sleep(ms: 20)
                try pair.server.setReadDeadline(in: .zero)
                await expectNetError(.timeout) { () async throws(NetError) in
                    try await pair.server.read(maxBytes: 16)
                }
                // Clearing the deadline makes the waiting bytes readable again.
                try pair.server.setReadDeadline(nil)
                #expect(try await pair.server.read(maxBytes: 16) == Array("def".utf8))
            }
        }

        @Test(
            "a read after a short read wakes with closed when the connection is closed",
            arguments: BackendKind.allCases)
        func closeAfterShortRead(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                try await expectShortRead(pair)
                let server = pair.server
                let reader = try await startBlockedRead(server, poller)
                try await server.close()
                #expect(await reader.value == .closed)
            }
        }

        @Test(
            "small messages sent one at a time all arrive, each read taking what has come",
            arguments: BackendKind.allCases)
        func manyShortReads(kind: BackendKind) async throws {
            try await withTCPPair(kind) { poller, pair in
                let client = pair.client
                let writer = Task {
                    for i in 0..<2000 { try await client.write([UInt8(truncatingIfNeeded: i)]) }
                    try client.closeWrite()
                }
                try pair.server.setReadDeadline(in: .seconds(20))
                var received: [UInt8] = []
                while true {
                    let error = await netError { () async throws(NetError) in
                        received += try await pair.server.read(maxBytes: 64)
                    }
                    if error == .endOfFile { break }
                    if let error {
                        Issue.record("read failed: \(error)")
                        break
                    }
                }
                try await writer.value
                #expect(received == (0..<2000).map { UInt8(truncatingIfNeeded: $0) })
            }
        }
    }
}

/// A short read: "abc" sent by the client is read whole by the server with room to spare.
private func expectShortRead(_ pair: TCPPair, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    try await pair.client.write(Array("abc".utf8))
    #expect(try await pair.server.read(maxBytes: 16) == Array("abc".utf8), sourceLocation: sourceLocation)
}
