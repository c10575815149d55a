import Glibc
import Poller
import PollerNet
import PollerSystem
import SystemPackage
import Testing

@Suite("swift-system at PollerNet's edges")
struct PollerSystemTests {
    @Test("a system error's errno reads as swift-system's Errno; Go's own errors have none")
    func netErrorsGiveErrno() {
        #expect(NetError.system(call: "connect", errno: ECONNREFUSED).systemErrno == .connectionRefused)
        #expect(NetError.tooManyOpenFiles(errno: EMFILE).systemErrno == .tooManyOpenFiles)
        #expect(NetError.connectionReset.systemErrno == .connectionReset)
        #expect(NetError.timeout.systemErrno == nil)
        #expect(NetError.closed.systemErrno == nil)
    }

    @Test(
        "a detached connection's descriptor comes out as an open FileDescriptor the caller owns",
        arguments: backends)
    func detachGivesFileDescriptor(backend: BackendChoice) async throws {
        try await withPoller(backend) { poller in
            let listener = try TCPListener.listen(host: "127.0.0.1", port: 0, poller: poller)
            let client = try await Connection.dial(listener.localAddress, timeout: .seconds(5), poller: poller)
            let server = try await listener.accept()
            let descriptor = try await client.detachFileDescriptor()
            // Still open and connected: a write on it reaches the server.
            let written = try [UInt8]([9]).withUnsafeBytes { try descriptor.write($0) }
            #expect(written == 1)
            #expect(try await server.read(maxBytes: 1) == [9])
            try descriptor.close()
            try await server.close()
            try await listener.close()
        }
    }

    @Test("a RawConnection adopts a FileDescriptor and reads through the poller", arguments: backends)
    func rawConnectionAdoptsFileDescriptor(backend: BackendChoice) async throws {
        try await withPoller(backend) { poller in
            var fds: [Int32] = [-1, -1]
            #expect(pipe(&fds) == 0)
            let reader = try RawConnection(adopting: FileDescriptor(rawValue: fds[0]), poller: poller)
            #expect(Glibc.write(fds[1], [UInt8]([5]), 1) == 1)
            #expect(try await reader.read(maxBytes: 1) == [5])
            try await reader.close()
            Glibc.close(fds[1])
        }
    }
}
