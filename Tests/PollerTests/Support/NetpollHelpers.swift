import CPoller
import Glibc
import Synchronization
import Testing

@testable import Poller

// Helpers for the netpoll semantics suites (NetpollSemanticsTests, DeadlineTests, RaceTests,
// ExecutorTests, GoAPITests). Every wait these suites start is bounded: when a bound passes,
// the waiter is cancelled (or its descriptor unblocked) so that a broken poller fails the
// test instead of hanging it.

/// All netpoll semantics suites are nested here and run one test at a time, so that their
/// timing assertions are not disturbed by each other on a small machine.
@Suite(.serialized) struct NetpollSuites {}

/// How a wait ended.
enum WaitOutcome: Equatable, Sendable, CustomStringConvertible {
    case ready
    case failed(PollError)
    /// Still waiting when the test's bound passed (the waiter was then cancelled).
    case hung

    var description: String {
        switch self {
        case .ready: "ready"
        case .failed(let error): "failed(.\(error == .closing ? "closing" : error == .timeout ? "timeout" : "\(error)"))"
        case .hung: "hung"
        }
    }
}

extension PollDescriptor {
    /// `wait(for:)` as a value.
    func outcome(_ mode: PollMode) async -> WaitOutcome {
        do {
            try await wait(for: mode)
            return .ready
        } catch {
            return .failed(error)
        }
    }

    /// A wait bounded by `limit`: `.hung` if it had not ended by then (it is cancelled).
    func boundedOutcome(_ mode: PollMode, within limit: Duration = .seconds(5)) async -> WaitOutcome {
        await startWait(self, mode).outcome(within: limit)
    }

    /// `waitBlocking(for:)` as an error value.
    func blockingResult(_ mode: PollMode) -> PollError? { pollError { () throws(PollError) in try waitBlocking(for: mode) } }

    /// `reset(for:)` as an error value.
    func resetResult(_ mode: PollMode) -> PollError? { pollError { () throws(PollError) in try reset(for: mode) } }

    /// `close()` as an error value.
    func closeResult() -> PollError? { pollError { () throws(PollError) in try close() } }

    /// White-box: readiness is latched (Go's pdReady) for `mode`.
    func isLatched(_ mode: PollMode) -> Bool {
        slot.state.withLockAnnotated { s in
            if case .ready = s[semaphore: mode] { return true }
            return false
        }
    }

    /// White-box: how many times a waiter has taken the park path on this slot.
    var parkAttempts: UInt64 { slot.state.withLockAnnotated { $0.nextWaiterID } }

    /// White-box: the stored deadlines.
    var deadlines: (read: Int64, write: Int64) { slot.state.withLockAnnotated { ($0.readDeadline, $0.writeDeadline) } }

    /// Unblock then close, as every test must before the fd is closed.
    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        unblock()
        let error = closeResult()
        #expect(error == nil, "close after unblock failed", sourceLocation: sourceLocation)
    }
}

extension Poller {
    /// White-box: the number of armed entries in the deadline heap.
    var armedTimerCount: Int { timers.withLockAnnotated { $0.heap.count } }
    /// Writes made to the wake-up channel so far.
    var wakeWrites: Int { backend.wakeChannel.writes.load(ordering: .relaxed) }
}

/// The error `body` throws, or nil.
func pollError(_ body: () throws(PollError) -> Void) -> PollError? {
    do {
        try body()
        return nil
    } catch {
        return error
    }
}

/// A one-shot flag shared with a task or thread.
final class DoneFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}

/// A value shared with a plain thread.
final class SharedBox<T: Sendable>: Sendable {
    private let storage: Mutex<T>
    init(_ value: T) { storage = Mutex(value) }
    var value: T {
        get { storage.withLockAnnotated { $0 } }
        set { storage.withLockAnnotated { $0 = newValue } }
    }
}

/// The value of `task`, waiting at most `limit`. When the limit passes, `onTimeout` runs (it
/// should make the task finish: cancel it, unblock its descriptor, write to it) and the value
/// is awaited 10 s more; `timedOut` tells that it happened, and `value` is nil if even then the
/// task had not finished (it is left behind rather than hanging the test).
func boundedValue<T: Sendable>(
    of task: Task<T, Never>, within limit: Duration, onTimeout: @escaping @Sendable () -> Void
) async -> (value: T?, timedOut: Bool) {
    if let value = await abandoningValue(of: task, within: limit) { return (value, false) }
    onTimeout()
    return (await abandoningValue(of: task, within: .seconds(10)), true)
}

/// Resumes a continuation once, from whichever side comes first.
private final class ResumeOnce<T: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<T?, Never>?>
    init(_ continuation: CheckedContinuation<T?, Never>) { self.continuation = Mutex(continuation) }
    func resume(_ value: T?) { continuation.withLockAnnotated { $0.take() }?.resume(returning: value) }
}

/// The value of `task`, or nil if it has not finished within `limit`; then the task is left
/// running (for tasks that nothing can end, such as a job a broken executor never runs).
func abandoningValue<T: Sendable>(of task: Task<T, Never>, within limit: Duration) async -> T? {
    await withCheckedContinuation { (continuation: CheckedContinuation<T?, Never>) in
        let once = ResumeOnce(continuation)
        let timer = Task {
            try? await Task.sleep(for: limit)
            once.resume(nil)
        }
        Task {
            let value = await task.value
            once.resume(value)
            timer.cancel()
        }
    }
}

/// `runtime_pollWait(pd, mode)` bounded by `limit`: nil if it had not returned by then (the
/// descriptor is then unblocked to release it).
func goWait(_ pd: PollDescriptor, _ mode: Int, within limit: Duration = .seconds(5)) async -> Int? {
    let task = Task { await runtime_pollWait(pd, mode) }
    let (code, timedOut) = await boundedValue(of: task, within: limit) { pd.unblock() }
    return timedOut ? nil : code
}

/// A wait running in its own task.
struct StartedWait: Sendable {
    let task: Task<WaitOutcome, Never>
    let done: DoneFlag

    var isFinished: Bool { done.isSet }

    /// The outcome, or `.hung` if the wait had not ended within `limit`.
    func outcome(within limit: Duration = .seconds(5)) async -> WaitOutcome {
        let task = self.task
        let (result, timedOut) = await boundedValue(of: task, within: limit) { task.cancel() }
        guard let result else { return .hung }
        return timedOut && result == .failed(.cancelled) ? .hung : result
    }
}

/// Starts `pd.wait(for: mode)` in a new task (on `executor` if given).
func startWait(_ pd: PollDescriptor, _ mode: PollMode, on executor: (any TaskExecutor)? = nil) -> StartedWait {
    let done = DoneFlag()
    let task = Task(executorPreference: executor) {
        let result = await pd.outcome(mode)
        done.set()
        return result
    }
    return StartedWait(task: task, done: done)
}

/// Polls `condition` every millisecond until it holds or `limit` passes.
func becomesTrue(within limit: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + limit
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return true
}

/// Waits until `poller` has exactly `count` parked waiters (bounded).
func waitersParked(_ poller: Poller, _ count: Int, within limit: Duration = .seconds(5)) async -> Bool {
    await becomesTrue(within: limit) { poller.parkedWaiterCount == count }
}

/// Starts a read wait on `pd` and expects it to park (and, given `pendingFor`, to be still
/// pending that much later), then to end ready once a byte is written to `writer`.
func expectReadWaitEndsReady(
    _ poller: Poller, _ pd: PollDescriptor, writer: Int32, parked: Comment? = nil,
    pendingFor: Duration? = nil, pending: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let waiter = startWait(pd, .read)
    #expect(await waitersParked(poller, 1), parked, sourceLocation: sourceLocation)
    if let pendingFor {
        try await Task.sleep(for: pendingFor)
        #expect(!waiter.isFinished, pending, sourceLocation: sourceLocation)
    }
    writeBytes(writer)
    #expect(await waiter.outcome() == .ready, sourceLocation: sourceLocation)
}

/// Busy-waits for `nanoseconds` (sub-microsecond jitter for races).
func spinWait(nanoseconds: Int64) {
    guard nanoseconds > 0 else { return }
    let end = cpoller_now_ns() + nanoseconds
    while cpoller_now_ns() < end {}
}

/// A non-blocking pipe that can be shared with tasks (closed on deinit).
final class OwnedPipe: Sendable {
    private let pipe = Pipe()
    var readFD: Int32 { pipe.readFD }
    var writeFD: Int32 { pipe.writeFD }
}

/// Reads one byte, waiting on `pd` while the descriptor has nothing (Go's read loop).
func readOneByte(_ fd: Int32, _ pd: PollDescriptor) async throws(PollError) {
    var byte: UInt8 = 0
    while true {
        let n = read(fd, &byte, 1)
        if n == 1 { return }
        precondition(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "read failed")
        try await pd.wait(for: .read)
    }
}

/// A plain pthread (not a cooperative-pool thread) running `body`.
final class BlockingThread: Sendable {
    private let id: UInt64
    let done = DoneFlag()

    init(_ body: @escaping @Sendable () -> Void) {
        let done = self.done
        id = startThread {
            body()
            done.set()
        }
    }

    /// Waits (bounded) for the thread to finish, then joins it. On timeout `onTimeout` runs
    /// (it must make the thread finish) before the join; returns false in that case.
    func finish(within limit: Duration = .seconds(5), onTimeout: () -> Void) async -> Bool {
        let inTime = await becomesTrue(within: limit) { done.isSet }
        if !inTime { onTimeout() }
        // A thread that still does not finish is left behind rather than hanging the test.
        if await becomesTrue(within: .seconds(10), { done.isSet }) { _ = cpoller_thread_join(id) }
        return inTime
    }
}

/// The kernel thread id of the poller thread (asked from a task running on it, through
/// /proc/thread-self, which links to "<pid>/task/<tid>").
func pollerTID(_ poller: Poller) async -> Int32? {
    let task = Task(executorPreference: poller.executor) { currentTID() }
    return await abandoningValue(of: task, within: .seconds(5)) ?? nil
}

/// The calling thread's kernel id.
func currentTID() -> Int32? {
    var buffer = [CChar](repeating: 0, count: 64)
    let n = readlink("/proc/thread-self", &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    let link = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard let last = link.split(separator: "/").last else { return nil }
    return Int32(last)
}

/// Voluntary plus involuntary context switches of thread `tid` of this process.
func contextSwitches(tid: Int32) -> Int? {
    let fd = open("/proc/self/task/\(tid)/status", O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 16384)
    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard n > 0 else { return nil }
    let text = String(decoding: buffer[0..<n], as: UTF8.self)
    var total = 0
    var found = 0
    for line in text.split(separator: "\n")
    where line.hasPrefix("voluntary_ctxt_switches:")
        || line.hasPrefix("nonvoluntary_ctxt_switches:")
    {
        guard let value = Int(String(line.drop(while: { $0 != ":" }).dropFirst().filter(\.isNumber))) else {
            return nil
        }
        total += value
        found += 1
    }
    return found == 2 ? total : nil
}

/// After a poll failed and was re-armed: the writer retries, gets EAGAIN (`writeEnd` is full),
/// and parks, and only a live poll can wake it: draining `peer` must. Then `pd` is unblocked
/// and closed.
func expectWriterWokenByNextEdgeThenClose(
    _ poller: Poller, _ pd: PollDescriptor, writeEnd: Int32, peer: Int32, sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    #expect(pd.resetResult(.write) == nil, sourceLocation: sourceLocation)
    #expect(writeBytes(writeEnd) < 0, sourceLocation: sourceLocation)
    let writer = startWait(pd, .write)
    #expect(await waitersParked(poller, 1), sourceLocation: sourceLocation)
    drain(peer)
    #expect(await writer.outcome() == .ready, sourceLocation: sourceLocation)
    pd.unblock()
    try pd.close()
}

/// Every submission-queue entry of the ring `ringFD` is refused and every submission fails
/// with `error`, until the test disarms both points (`CPOLLER_FAULT_GET_SQE`, `..._SUBMIT`).
func refuseRingSubmissions(ringFD: Int32, error: Int32) {
    _ = cpoller_fault_inject(Int32(CPOLLER_FAULT_GET_SQE), ringFD, 0, -1)
    _ = cpoller_fault_inject(Int32(CPOLLER_FAULT_SUBMIT), ringFD, error, -1)
}
