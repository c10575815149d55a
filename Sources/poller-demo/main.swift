// poller-demo: registers a socket pair with a poller on each backend, waits on it the way Go's
// net package would, and prints the backend chosen and the events seen.
//
//   poller-demo              both backends (io_uring is reported as skipped where it cannot run)
//   poller-demo epoll        one backend
//   POLLER_BACKEND=auto poller-demo shared   the process-wide poller, as runtime_poll* use it
import Glibc
import Poller

@main
struct PollerDemo {
    static func main() async {
        let args = CommandLine.arguments.dropFirst()
        var failed = false
        if args.first == "shared" {
            failed = await demoShared()
        } else {
            var choices: [BackendChoice] = [.epoll, .ioUring]
            if let name = args.first {
                do {
                    choices = [try BackendChoice(parsing: name)]
                } catch {
                    print("poller-demo: \(error)")
                    exit(2)
                }
            }
            for choice in choices {
                failed = await demo(choice) || failed
            }
        }
        exit(failed ? 1 : 0)
    }

    /// Returns true on failure.
    static func demo(_ choice: BackendChoice) async -> Bool {
        let poller: Poller
        do {
            poller = try Poller(backend: choice)
        } catch {
            print("[\(choice)] skipped: \(error)")
            // Forcing a backend that cannot run is an error only when asked for by name.
            return choice != .ioUring
        }
        defer { poller.shutdown() }
        print("[\(choice)] backend \(poller.backendKind): \(poller.backendReason)")
        do {
            try await exchange(on: poller, label: "[\(poller.backendKind)]")
            return false
        } catch {
            print("[\(poller.backendKind)] FAILED: \(error)")
            return true
        }
    }

    static func demoShared() async -> Bool {
        runtime_pollServerInit()
        do {
            let poller = try Poller.shared()
            print("[shared] backend \(poller.backendKind): \(poller.backendReason)")
            try await exchange(on: poller, label: "[shared]")
            return false
        } catch {
            print("[shared] FAILED: \(error)")
            return true
        }
    }

    static func exchange(on poller: Poller, label: String) async throws {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else {
            throw DemoError("socketpair: errno \(errno)")
        }
        defer {
            close(fds[0])
            close(fds[1])
        }
        let pd = try poller.register(fds[0])
        var unblocked = false
        defer {
            if !unblocked { pd.unblock() }
            try? pd.close()
        }

        let start = ContinuousClock.now
        func stamp() -> String {
            let us = (ContinuousClock.now - start) / .microseconds(1)
            return format6(Int64(us)) + " us"
        }

        try await pd.wait(for: .write)
        print("\(label) \(stamp()): writable (an empty socket buffer is ready at registration)")

        pd.setDeadline(in: .milliseconds(20), for: .read)
        do {
            try await pd.wait(for: .read)
            throw DemoError("read wait returned with nothing to read")
        } catch PollError.timeout {
            print("\(label) \(stamp()): read wait timed out after its 20 ms deadline")
        }
        pd.setDeadline(nil, for: .read)

        let message = Array("hello from the peer".utf8)
        async let waited: Void = pd.wait(for: .read)
        try await Task.sleep(for: .milliseconds(5))
        _ = message.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
        try await waited
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
        print("\(label) \(stamp()): readable, read \(n) bytes: \"\(String(decoding: buffer.prefix(max(n, 0)), as: UTF8.self))\"")

        shutdown(fds[1], Int32(SHUT_WR))
        try await pd.wait(for: .read)
        let eof = buffer.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
        print("\(label) \(stamp()): readable after the peer's shutdown, read returned \(eof) (end of file)")

        pd.unblock()
        unblocked = true
        do {
            try await pd.wait(for: .read)
        } catch PollError.closing {
            print("\(label) \(stamp()): after unblock, wait reports closing, as Go's pollErrClosing")
        }
        print("\(label) parked waiters: \(poller.parkedWaiterCount)")
    }

    static func format6(_ v: Int64) -> String {
        let s = String(v)
        return String(repeating: " ", count: max(0, 6 - s.count)) + s
    }
}

struct DemoError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
