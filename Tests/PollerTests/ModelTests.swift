import CPoller
import Glibc
import Testing

@testable import Poller

// A randomized, seeded model test of the runtime_poll*-level API (register, wait, reset,
// setDeadline, unblock, close) against a small reference model of Go's pollDesc states.
//
// Each sequence opens pipes (registering the read end), writes to and drains them, sets
// deadlines, resets, waits, unblocks and closes, and keeps closed handles around to check
// that they stay inert when their slot and fd number are reused. The model predicts every
// result; waits predicted to block are started in a task, shown to park, then ended by an
// event (a peer write, an expired or short deadline, unblock or cancellation) whose outcome
// the model predicts too.
//
// Readiness is edge-triggered and delivered asynchronously by the poller thread. After every
// peer write the test therefore runs a barrier (two consecutive jobs on the poller's
// executor, so that at least one full loop iteration, poll and dispatch included, starts
// after the write), after which the readiness the write caused is latched. A write into an
// empty pipe must cause an edge; whether a write into a non-empty pipe does is the kernel's
// business (Linux wakes pollers on every write once the pipe has been polled), so the model
// takes the latch state observed after the barrier in that case.
//
// Environment:
//   POLLER_MODEL_SEQUENCES  number of sequences per backend (default 3000)
//   POLLER_MODEL_LENGTH     operations per sequence (default 20)
//   POLLER_MODEL_SEED       run only this sequence seed (decimal or 0x-hex), as printed by a
//                           failure
//
// Every failure message names the backend, the sequence seed, the operation index and the
// trace of the sequence so far.

@Suite("Model", .serialized)
struct ModelTests {
    @Test(
        "random operation sequences agree with a reference model of Go's pollDesc states",
        arguments: BackendKind.allCases)
    func randomSequences(kind: BackendKind) async throws {
        let config = ModelConfig.fromEnvironment()
        let start = ContinuousClock.now
        let (ran, failed, summary) = try await withPoller(kind) { poller in
            var runner = ModelRunner(poller: poller, kind: kind, length: config.length)
            var ran = 0
            var failed = 0
            for seed in config.seeds {
                ran += 1
                if await !runner.run(seed: seed) {
                    failed += 1
                    if failed >= 5 { break }  // enough to replay; the rest would only add noise
                }
            }
            return (ran, failed, runner.summary)
        }
        let elapsed = ContinuousClock.now - start
        print("model(\(kind)): \(ran) sequences of \(config.length) operations, \(failed) failed, in \(elapsed): \(summary)")
    }

    @Test("the SplitMix64 generator reproduces its reference outputs")
    func splitMix() {
        // Reference values of SplitMix64 seeded with 1234567 (from the published C code).
        var g = SplitMix64(seed: 1_234_567)
        #expect(g.next() == 6_457_827_717_110_365_317)
        #expect(g.next() == 3_203_168_211_198_807_973)
        #expect(g.next() == 9_817_491_932_198_370_423)
    }
}

// MARK: Configuration

private struct ModelConfig {
    var seeds: [UInt64]
    var length: Int

    static let defaultSequences = 3000
    static let defaultLength = 20

    static func fromEnvironment() -> ModelConfig {
        let length = environment("POLLER_MODEL_LENGTH").flatMap { Int($0) }.map { max(1, $0) } ?? defaultLength
        if let text = environment("POLLER_MODEL_SEED"), let seed = parseSeed(text) {
            return ModelConfig(seeds: [seed], length: length)
        }
        let count = environment("POLLER_MODEL_SEQUENCES").flatMap { Int($0) }.map { max(0, $0) } ?? defaultSequences
        let seeds = (0..<count).map { i -> UInt64 in
            var g = SplitMix64(seed: 0x0DDB_A115_EED0_0000 &+ UInt64(i))
            return g.next()
        }
        return ModelConfig(seeds: seeds, length: length)
    }

    private static func environment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        let text = String(cString: value)
        return text.isEmpty ? nil : text
    }

    private static func parseSeed(_ text: String) -> UInt64? {
        let lower = text.lowercased()
        if lower.hasPrefix("0x") { return UInt64(lower.dropFirst(2), radix: 16) }
        return UInt64(lower)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and the same on every platform and
/// Swift version, unlike the standard library's generators.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: The model

/// One direction's deadline as Go sees it: none (0), pending (> 0), expired (< 0).
private enum DeadlineState: CustomStringConvertible {
    case none, future, expired

    var description: String {
        switch self {
        case .none: "none"
        case .future: "future"
        case .expired: "expired"
        }
    }

    /// Whether the poller's stored deadline value is in this state.
    func matches(_ value: Int64) -> Bool {
        switch self {
        case .none: value == 0
        case .future: value > 0
        case .expired: value < 0
        }
    }
}

/// Go's pollDesc for one registered pipe read end, as the model sees it.
private struct ModelDescriptor {
    let pd: PollDescriptor
    let readFD: Int32
    let writeFD: Int32
    /// Set by unblock (Go's pd.closing).
    var closing = false
    var readDeadline = DeadlineState.none
    var writeDeadline = DeadlineState.none
    /// Readiness latched for reads (Go's rg == pdReady). A pipe's read end never reports
    /// writability, so the write direction never latches.
    var readLatched = false
    /// The pipe holds unread bytes.
    var hasData = false

    /// Go's netpollcheckerr order: closing, then the deadline of the direction(s) asked for.
    func pendingError(_ mode: PollMode) -> PollError? {
        if closing { return .closing }
        if mode.contains(.read) && readDeadline == .expired { return .timeout }
        if mode.contains(.write) && writeDeadline == .expired { return .timeout }
        return nil
    }

    /// Go's pollSetDeadline: ignored once closing.
    mutating func setDeadline(_ state: DeadlineState, for mode: PollMode) {
        guard !closing else { return }
        if mode.contains(.read) { readDeadline = state }
        if mode.contains(.write) { writeDeadline = state }
    }

    var summary: String {
        "fd \(readFD) slot \(pd.slot.index) gen \(pd.generation): closing \(closing), deadlines r=\(readDeadline) "
            + "w=\(writeDeadline), readLatched \(readLatched), hasData \(hasData)"
    }
}

/// The random values one operation consumes. Always drawn in full, whatever the operation,
/// so that the sequence of operations depends on the seed alone.
private struct Draw {
    let op: UInt64, target: UInt64, mode: UInt64, variant: UInt64, ending: UInt64, extra: UInt64

    init(_ g: inout SplitMix64) {
        op = g.next()
        target = g.next()
        mode = g.next()
        variant = g.next()
        ending = g.next()
        extra = g.next()
    }
}

/// `.closing`, `.timeout`, ...: the case name, for traces (the descriptions are sentences).
private func caseName(_ error: PollError?) -> String {
    guard let error else { return "nil" }
    return switch error {
    case .closing: ".closing"
    case .timeout: ".timeout"
    case .notPollable: ".notPollable"
    case .cancelled: ".cancelled"
    case .doubleWait: ".doubleWait"
    case .invalidMode: ".invalidMode"
    case .notUnblocked: ".notUnblocked"
    case .waiterParked: ".waiterParked"
    case .wouldBlockPollerThread: ".wouldBlockPollerThread"
    case .registrationFailed(let errno): ".registrationFailed(errno: \(errno))"
    }
}

private func pick<T>(_ values: [T], _ r: UInt64) -> T { values[Int(r % UInt64(values.count))] }

private let goCodes: [PollMode: Int] = [.read: 114, .write: 119, .readWrite: 233]

// MARK: The runner

private struct ModelRunner {
    let poller: Poller
    let kind: BackendKind
    let length: Int

    static let maxLive = 4
    static let maxStale = 8
    /// The bound on anything that should end at once or promptly.
    static let bound: Duration = .seconds(2)

    var live: [ModelDescriptor] = []
    /// Handles of closed registrations, kept across sequences.
    var stale: [PollDescriptor] = []
    var trace: [String] = []
    var seed: UInt64 = 0
    var failed = false
    var index = 0
    /// How often each kind of operation ran, for the summary line.
    var counts: [String: Int] = [:]

    init(poller: Poller, kind: BackendKind, length: Int) {
        self.poller = poller
        self.kind = kind
        self.length = length
    }

    /// Runs one sequence; false if it found a mismatch (already recorded as an issue).
    mutating func run(seed: UInt64) async -> Bool {
        self.seed = seed
        var g = SplitMix64(seed: seed)
        live = []
        trace = []
        failed = false
        for i in 0..<length {
            index = i
            let draw = Draw(&g)
            await step(draw)
            if failed { break }
            checkInvariants()
            if failed { break }
        }
        index = length
        await cleanUp()
        if poller.parkedWaiterCount != 0 { mismatch("\(poller.parkedWaiterCount) waiter(s) parked after the sequence") }
        if poller.openDescriptorCount != 0 {
            mismatch("\(poller.openDescriptorCount) descriptor(s) registered after the sequence")
        }
        return !failed
    }

    // MARK: Reporting

    mutating func log(_ line: String) { trace.append("  #\(index) \(line)") }

    mutating func count(_ what: String) { counts[what, default: 0] += 1 }

    var summary: String { counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") }

    mutating func mismatch(_ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
        failed = true
        let hex = "0x" + String(seed, radix: 16)
        Issue.record(
            """
            model mismatch on \(kind), seed \(hex), operation #\(index): \(message)
            replay: POLLER_MODEL_SEED=\(hex) swift test --filter ModelTests
            state: \(live.map(\.summary).joined(separator: "; "))
            trace:
            \(trace.joined(separator: "\n"))
            """, sourceLocation: sourceLocation)
    }

    mutating func expect<T: Equatable>(
        _ actual: T, _ expected: T, _ what: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        if actual != expected {
            mismatch("\(what): expected \(expected), got \(actual)", sourceLocation: sourceLocation)
        }
    }

    mutating func expect(
        _ actual: PollError?, _ expected: PollError?, _ what: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        if actual != expected {
            mismatch("\(what): expected \(caseName(expected)), got \(caseName(actual))", sourceLocation: sourceLocation)
        }
    }

    // MARK: Operations

    mutating func step(_ d: Draw) async {
        let roll = d.op % 100
        if live.isEmpty || (roll < 10 && live.count < Self.maxLive) {
            open()
            return
        }
        let t = Int(d.target % UInt64(live.count))
        switch roll {
        case 0..<28: await peerWrite(t, d)
        case 28..<35: drainPipe(t)
        case 35..<50: setDeadline(t, d)
        case 50..<62: reset(t, d)
        case 62..<84: await wait(t, d)
        case 84..<88: unblock(t, d)
        case 88..<95: close(t, d)
        default:
            if stale.isEmpty { reset(t, d) } else { await staleOperation(d) }
        }
    }

    mutating func open() {
        let (r, w) = makePipeFDs()
        do {
            let pd = try poller.register(r)
            expect(pd.fd, r, "the registered descriptor's fd")
            live.append(ModelDescriptor(pd: pd, readFD: r, writeFD: w))
            count("open")
            log("open fd \(r) -> slot \(pd.slot.index) gen \(pd.generation)")
        } catch {
            Glibc.close(r)
            Glibc.close(w)
            mismatch("register of a fresh pipe failed with \(error)")
        }
    }

    mutating func peerWrite(_ t: Int, _ d: Draw) async {
        let count = 1 + Int(d.variant % 64)
        let wasEmpty = !live[t].hasData
        let written = writeBytes(live[t].writeFD, count: count)
        self.count(wasEmpty ? "write (empty pipe)" : "write (non-empty pipe)")
        log("peer write \(count) to fd \(live[t].readFD) (pipe \(wasEmpty ? "empty" : "not empty"))")
        guard written == count else {
            mismatch("write to the pipe returned \(written)")
            return
        }
        live[t].hasData = true
        await barrier()
        let observed = live[t].pd.isLatched(.read)
        if wasEmpty {
            // Edge-triggered readiness: a write into an empty pipe is an edge.
            if !observed { mismatch("a write into an empty pipe did not latch read readiness") }
            live[t].readLatched = true
        } else {
            if live[t].readLatched && !observed { mismatch("latched read readiness vanished after a write") }
            live[t].readLatched = live[t].readLatched || observed
        }
    }

    mutating func drainPipe(_ t: Int) {
        let n = drain(live[t].readFD)
        count("drain")
        log("drain fd \(live[t].readFD): \(n) bytes")
        live[t].hasData = false
    }

    mutating func setDeadline(_ t: Int, _ d: Draw) {
        let mode = pick([PollMode.read, .write, .readWrite], d.mode)
        let state = pick([DeadlineState.expired, .none, .future, .none, .future], d.variant)
        let how = applyDeadline(live[t].pd, state, mode, variant: d.variant / 5, extra: d.extra)
        count("setDeadline \(state)")
        log("setDeadline \(mode) \(state) via \(how) on fd \(live[t].readFD)")
        live[t].setDeadline(state, for: mode)
    }

    mutating func reset(_ t: Int, _ d: Draw) {
        let valid = d.mode % 12 != 11
        let mode =
            valid ? pick([PollMode.read, .write, .readWrite], d.mode) : pick([PollMode(rawValue: 0), PollMode(rawValue: 4)], d.extra)
        let expected: PollError? = valid ? live[t].pendingError(mode) : .invalidMode
        let viaGo = d.variant % 2 == 0
        count(expected == nil ? "reset ok" : "reset error")
        log("reset \(mode)\(viaGo ? " via runtime_pollReset" : "") on fd \(live[t].readFD), expecting \(caseName(expected))")
        if viaGo {
            let code = runtime_pollReset(live[t].pd, valid ? goCodes[mode]! : 7)
            expect(code, expected?.goCode ?? pollNoError, "runtime_pollReset(\(mode))")
        } else {
            expect(live[t].pd.resetResult(mode), expected, "reset(\(mode))")
        }
        if expected == nil && mode.contains(.read) { live[t].readLatched = false }
    }

    mutating func wait(_ t: Int, _ d: Draw) async {
        let roll = d.mode % 16
        let mode: PollMode = roll < 9 ? .read : roll < 15 ? .write : .readWrite
        let m = live[t]
        // The prediction: at once with an error, at once ready (consuming the latch), or blocks.
        let immediate: WaitOutcome?
        if mode == .readWrite {
            immediate = .failed(.invalidMode)
        } else if let error = m.pendingError(mode) {
            immediate = .failed(error)
        } else if mode == .read && m.readLatched {
            immediate = .ready
        } else {
            immediate = nil
        }
        if let immediate {
            count(immediate == .ready ? "wait ready at once" : "wait error at once")
            if immediate == .ready { live[t].readLatched = false }
            if d.variant % 4 == 0 {
                log("runtime_pollWait \(mode) on fd \(m.readFD), expecting \(immediate) at once")
                let pd = m.pd
                let code = goCodes[mode]!
                let task = Task { await runtime_pollWait(pd, code) }
                let (result, timedOut) = await boundedValue(of: task, within: Self.bound) { pd.unblock() }
                if timedOut {
                    mismatch("runtime_pollWait(\(mode)) blocked; expected \(immediate) at once")
                    return
                }
                let expectedCode: Int =
                    switch immediate {
                    case .ready: pollNoError
                    case .failed(let error): error.goCode
                    case .hung: -1
                    }
                expect(result, expectedCode, "runtime_pollWait(\(mode))")
            } else {
                log("wait \(mode) on fd \(m.readFD), expecting \(immediate) at once")
                let outcome = await m.pd.boundedOutcome(mode, within: Self.bound)
                expect(outcome, immediate, "wait(\(mode))")
            }
            return
        }
        await blockedWait(t, mode, d)
    }

    /// A wait the model says blocks: show it parks, poke it with operations that must not end
    /// it, then end it with an event and check how.
    mutating func blockedWait(_ t: Int, _ mode: PollMode, _ d: Draw) async {
        let pd = live[t].pd
        count("wait blocks")
        log("wait \(mode) on fd \(live[t].readFD), expecting it to block")
        let started = startWait(pd, mode)
        guard await parkedOrFinished(started) else {
            mismatch("the wait neither parked nor returned within \(Self.bound)")
            pd.unblock()
            live[t].closing = true
            _ = await started.outcome(within: .seconds(10))
            return
        }
        if started.isFinished {
            let outcome = await started.outcome(within: Self.bound)
            mismatch("wait(\(mode)) returned \(outcome) at once; expected it to block")
            return
        }

        // Operations that must leave the waiter parked.
        let other: PollMode = mode == .read ? .write : .read
        switch d.extra % 10 {
        case 0:
            log("  second wait \(mode) while parked, expecting doubleWait")
            let second = await pd.boundedOutcome(mode, within: Self.bound)
            expect(second, .failed(.doubleWait), "second wait(\(mode))")
        case 1:
            log("  close while parked and not unblocked, expecting notUnblocked")
            expect(pd.closeResult(), .notUnblocked, "close() while a waiter is parked")
        case 2:
            log("  reset \(mode) while parked, expecting nil")
            expect(pd.resetResult(mode), nil, "reset(\(mode)) while parked")
        case 3:
            log("  setDeadline \(mode) future while parked")
            pd.setDeadline(in: .seconds(3600), for: mode)
            live[t].setDeadline(.future, for: mode)
        case 4:
            log("  setDeadline \(mode) none while parked")
            pd.setDeadline(nil, for: mode)
            live[t].setDeadline(.none, for: mode)
        case 5:
            log("  setDeadline \(other) expired while parked")
            pd.setDeadline(in: .zero, for: other)
            live[t].setDeadline(.expired, for: other)
        case 6:
            if let s = stale.last {
                log("  stale handle slot \(s.slot.index) gen \(s.generation): unblock, expire deadlines, close")
                s.unblock()
                s.setDeadline(in: .zero)
                expect(s.closeResult(), .closing, "close() of a stale handle")
            }
        default:
            break
        }
        if started.isFinished || poller.parkedWaiterCount != 1 {
            let outcome = await started.outcome(within: Self.bound)
            mismatch("the parked wait(\(mode)) ended with \(outcome) after an operation that must not end it")
            return
        }

        // The event that ends the wait.
        enum Ending {
            case write
            case expire(PollMode)
            case shortDeadline(PollMode, Duration)
            case unblock, cancel
        }
        var endings: [Ending] = []
        if mode == .read && !live[t].hasData { endings += Array(repeating: .write, count: 6) }
        endings += Array(repeating: .expire(pick([mode, .readWrite], d.variant)), count: 4)
        endings += Array(repeating: .unblock, count: 3)
        endings += Array(repeating: .cancel, count: 2)
        endings.append(.shortDeadline(pick([mode, .readWrite], d.variant >> 8), .milliseconds(1 + Int64(d.variant >> 16) % 3)))
        let expected: WaitOutcome
        switch pick(endings, d.ending) {
        case .write:
            count("end by write")
            log("  end: peer write to fd \(live[t].readFD), expecting ready")
            writeBytes(live[t].writeFD)
            live[t].hasData = true  // the waiter takes the edge: nothing is latched
            expected = .ready
        case .expire(let which):
            count("end by expired deadline")
            log("  end: setDeadline \(which) expired, expecting timeout")
            pd.setDeadline(ContinuousClock.now - .milliseconds(1), for: which)
            live[t].setDeadline(.expired, for: which)
            expected = .failed(.timeout)
        case .shortDeadline(let which, let duration):
            count("end by short deadline")
            log("  end: setDeadline \(which) in \(duration), expecting timeout")
            pd.setDeadline(in: duration, for: which)
            live[t].setDeadline(.expired, for: which)  // once the wait has returned
            expected = .failed(.timeout)
        case .unblock:
            count("end by unblock")
            log("  end: unblock, expecting closing")
            pd.unblock()
            live[t].closing = true
            expected = .failed(.closing)
        case .cancel:
            count("end by cancel")
            log("  end: cancel the waiting task, expecting cancelled")
            started.task.cancel()
            expected = .failed(.cancelled)
        }
        let outcome = await started.outcome(within: Self.bound)
        expect(outcome, expected, "the parked wait(\(mode))")
        if outcome == .hung {
            pd.unblock()
            live[t].closing = true
        }
    }

    mutating func unblock(_ t: Int, _ d: Draw) {
        count("unblock")
        log("unblock fd \(live[t].readFD)\(live[t].closing ? " (again)" : "")")
        if d.variant % 2 == 0 { live[t].pd.unblock() } else { runtime_pollUnblock(live[t].pd) }
        live[t].closing = true
    }

    mutating func close(_ t: Int, _ d: Draw) {
        let m = live[t]
        if !m.closing && d.variant % 3 == 0 {
            count("close refused")
            log("close fd \(m.readFD) without unblock, expecting notUnblocked")
            expect(m.pd.closeResult(), .notUnblocked, "close() without unblock")
            return
        }
        count("close")
        log("close fd \(m.readFD)\(m.closing ? "" : " after unblock")")
        if !m.closing { m.pd.unblock() }
        expect(m.pd.closeResult(), nil, "close() after unblock")
        if d.extra % 2 == 0 { expect(m.pd.closeResult(), .closing, "a second close()") }
        Glibc.close(m.readFD)
        Glibc.close(m.writeFD)
        live.remove(at: t)
        stale.append(m.pd)
        if stale.count > Self.maxStale { stale.removeFirst() }
    }

    mutating func staleOperation(_ d: Draw) async {
        let s = pick(stale, d.target)
        count("stale handle op")
        let name = "stale slot \(s.slot.index) gen \(s.generation) (fd \(s.fd))"
        switch d.variant % 6 {
        case 0:
            let mode = pick([PollMode.read, .write], d.mode)
            log("\(name): wait \(mode), expecting closing")
            let outcome = await s.boundedOutcome(mode, within: Self.bound)
            expect(outcome, .failed(.closing), "wait(\(mode)) on a stale handle")
        case 1:
            let mode = pick([PollMode.read, .write, .readWrite, PollMode(rawValue: 4)], d.mode)
            let expected: PollError = mode.rawValue == 4 ? .invalidMode : .closing
            log("\(name): reset \(mode), expecting \(caseName(expected))")
            expect(s.resetResult(mode), expected, "reset(\(mode)) on a stale handle")
        case 2:
            let mode = pick([PollMode.read, .write, .readWrite], d.mode)
            let state = pick([DeadlineState.expired, .none, .future], d.extra)
            let how = applyDeadline(s, state, mode, variant: d.extra / 3, extra: d.extra)
            log("\(name): setDeadline \(mode) \(state) via \(how), expecting no effect")
        case 3:
            log("\(name): unblock, expecting no effect")
            s.unblock()
        case 4:
            log("\(name): close, expecting closing")
            expect(s.closeResult(), .closing, "close() on a stale handle")
        default:
            let mode = pick([PollMode.read, .write], d.mode)
            log("\(name): runtime_pollWait \(mode), expecting pollErrClosing")
            let task = Task { await runtime_pollWait(s, goCodes[mode]!) }
            let (code, timedOut) = await boundedValue(of: task, within: Self.bound) { s.unblock() }
            if timedOut {
                mismatch("runtime_pollWait on a stale handle blocked")
            } else {
                expect(code, pollErrClosing, "runtime_pollWait(\(mode)) on a stale handle")
            }
        }
    }

    /// Sets a deadline in `state` through one of the API's spellings; returns which.
    func applyDeadline(_ pd: PollDescriptor, _ state: DeadlineState, _ mode: PollMode, variant: UInt64, extra: UInt64)
        -> String
    {
        switch (state, variant % 3) {
        case (.expired, 0):
            let ms = -Int64(extra % 1000)
            pd.setDeadline(in: .milliseconds(ms), for: mode)
            return "in: \(ms) ms"
        case (.expired, 1):
            let d: Int64 = extra % 2 == 0 ? -1 : .min
            pd.setDeadline(goRelative: d, for: mode)
            return "goRelative: \(d)"
        case (.expired, _):
            pd.setDeadline(ContinuousClock.now - .seconds(1), for: mode)
            return "instant now - 1 s"
        case (.none, 1):
            pd.setDeadline(goRelative: 0, for: mode)
            return "goRelative: 0"
        case (.none, _):
            pd.setDeadline(nil, for: mode)
            return "nil"
        case (.future, 0):
            pd.setDeadline(in: .seconds(3600), for: mode)
            return "in: 3600 s"
        case (.future, 1):
            pd.setDeadline(goRelative: .max, for: mode)
            return "goRelative: Int64.max"
        case (.future, _):
            pd.setDeadline(ContinuousClock.now + .seconds(7200), for: mode)
            return "instant now + 7200 s"
        }
    }

    // MARK: Synchronisation and checks

    /// Returns once at least one full poller loop iteration (poll, dispatch, jobs) has
    /// started after this call: the second job is enqueued after the first ran, that is
    /// after the iteration that ran it had already polled.
    func barrier() async {
        await Task(executorPreference: poller.executor) {}.value
        await Task(executorPreference: poller.executor) {}.value
    }

    /// Waits until the wait has parked or returned (bounded).
    func parkedOrFinished(_ started: StartedWait) async -> Bool {
        let deadline = ContinuousClock.now + Self.bound
        var spins = 0
        while poller.parkedWaiterCount == 0 && !started.isFinished {
            if ContinuousClock.now >= deadline { return false }
            spins += 1
            if spins < 200 {
                await Task.yield()
            } else {
                try? await Task.sleep(for: .microseconds(100))
            }
        }
        return true
    }

    /// After every operation: nobody parked, the registrations the model holds, and (white
    /// box) the stored deadlines and latches agree with the model.
    mutating func checkInvariants() {
        if poller.parkedWaiterCount != 0 { mismatch("\(poller.parkedWaiterCount) waiter(s) parked between operations") }
        expect(poller.openDescriptorCount, live.count, "registered descriptors")
        for m in live {
            let (rd, wd) = m.pd.deadlines
            if !m.readDeadline.matches(rd) { mismatch("fd \(m.readFD): read deadline \(rd), model \(m.readDeadline)") }
            if !m.writeDeadline.matches(wd) { mismatch("fd \(m.readFD): write deadline \(wd), model \(m.writeDeadline)") }
            expect(m.pd.isLatched(.read), m.readLatched, "fd \(m.readFD): read readiness latched")
            expect(m.pd.isLatched(.write), false, "fd \(m.readFD): write readiness latched on a pipe's read end")
        }
    }

    /// Unblocks and closes whatever the sequence left open, then closes the pipes.
    mutating func cleanUp() async {
        for m in live {
            m.pd.unblock()
            var result = m.pd.closeResult()
            let deadline = ContinuousClock.now + .seconds(5)
            while result == .waiterParked && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(1))
                result = m.pd.closeResult()
            }
            if result != nil { mismatch("clean-up close() of fd \(m.readFD) failed with \(result!)") }
            Glibc.close(m.readFD)
            Glibc.close(m.writeFD)
            stale.append(m.pd)
        }
        live = []
        if stale.count > Self.maxStale { stale.removeFirst(stale.count - Self.maxStale) }
    }
}
