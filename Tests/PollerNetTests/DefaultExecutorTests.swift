import Glibc
import Testing

@testable import Poller

// The group installed as Swift's default executor (PollerGroup.installAsDefaultExecutor)
// can only be chosen before a process's first task, and this test process has long had its
// executors; so the behaviour is pinned in a process of its own: example-default-executor
// (Examples/DefaultExecutor) prints one "ok:"/"FAIL:" line per behaviour, and these tests
// read them.

extension PollerNetTests {
    @Suite("Plain Task {} on the poller threads")
    struct DefaultExecutor {
        /// Runs the example on `kind` (skipping where io_uring cannot run): status and lines.
        static func run(_ kind: BackendKind, _ extra: [String] = []) throws -> (ExitStatus, [Substring], String) {
            if kind == .ioUring, let reason = ioUringUnavailableReason {
                try Test.cancel("io_uring unavailable: \(reason)")
            }
            if PollerGroup.availableCPUs < 2 {
                try Test.cancel("one CPU in this process's affinity mask: the example's group of 2 would be 1")
            }
            let (status, out, err) = try ServerProcess.runToExit(
                named: "example-default-executor", [kind == .epoll ? "epoll" : "io_uring"] + extra, waitingMs: 20_000)
            return (status, out.split(separator: "\n"), err)
        }

        @Test(
            "Installed as the default executor, plain tasks, async let, Task.sleep, a wait's wake-up and the main actor all behave, and tasks go on after shutdown",
            arguments: BackendKind.allCases)
        func installedGroupRunsPlainTasks(kind: BackendKind) throws {
            let (status, lines, err) = try Self.run(kind)
            let failed = lines.filter { $0.hasPrefix("FAIL") }
            #expect(failed.isEmpty, "\(failed)")
            #expect(status == .exited(0), "\(status): \(err)")
            // Every behaviour was checked (a crash half-way would leave fewer lines).
            #expect(lines.filter { $0.hasPrefix("ok:") }.count == 14, "\(lines)")
            #expect(lines.contains { $0 == "ok: a plain Task {} runs on a poller thread" })
            #expect(lines.contains { $0 == "ok: a wait's wake-up resumes the task on the descriptor's poller" })
            // Regression: plain tasks hopped at every nonisolated async call (18 enqueues per
            // round trip in a debug build instead of 2); the example counts them.
            #expect(lines.contains { $0.hasPrefix("ok: a park-and-wake round trip between plain tasks costs") }, "\(lines)")
        }

        @Test(
            "Without the install the same placement checks fail (the checks can fail)",
            arguments: BackendKind.allCases)
        func placementChecksFailWithoutTheInstall(kind: BackendKind) throws {
            let (status, lines, _) = try Self.run(kind, ["--control"])
            #expect(status == .exited(1))
            #expect(lines.contains { $0 == "FAIL: a plain Task {} runs on a poller thread" }, "\(lines)")
            #expect(lines.contains { $0 == "FAIL: a wait's wake-up resumes the task on the descriptor's poller" }, "\(lines)")
        }
    }
}
