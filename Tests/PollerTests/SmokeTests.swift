import Glibc
import Testing
@testable import Poller

@Suite("Smoke")
struct SmokeTests {
    @Test("a pipe becomes readable after a write", arguments: BackendKind.allCases)
    func pipeReadable(kind: BackendKind) async throws {
        let poller = try Poller(backend: kind == .epoll ? .epoll : .ioUring)
        defer { poller.shutdown() }
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        let pd = try poller.register(fds[0])
        async let waited: Void = pd.wait(for: .read)
        try await Task.sleep(for: .milliseconds(10))
        var b: UInt8 = 1
        #expect(write(fds[1], &b, 1) == 1)
        try await waited
        pd.setDeadline(in: .milliseconds(20), for: .read)
        let start = ContinuousClock.now
        await #expect(throws: PollError.timeout) { try await pd.wait(for: .read) }
        #expect(ContinuousClock.now - start >= .milliseconds(19))
        pd.unblock()
        try pd.close()
        close(fds[0]); close(fds[1])
        #expect(poller.parkedWaiterCount == 0)
    }
}
