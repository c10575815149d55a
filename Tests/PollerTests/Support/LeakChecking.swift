import CPoller
import Glibc
import Testing

@testable import Poller

// Descriptor-leak checks for suites that run beside others: a count taken before is compared
// with the count after and, when it is higher, re-sampled for a while: a real leak keeps the
// count high, a parallel test's descriptors come and go.

/// Runs `body` and checks afterwards that the process has no more open descriptors than
/// before (re-sampled for up to two seconds, as parallel suites open descriptors too).
///
/// The concurrency runtime creates a timerfd lazily the first time a task sleeps on a given
/// clock; both clocks are warmed up first so that this is not mistaken for a leak.
func checkingDescriptorLeaks(
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
) async throws {
    try? await Task.sleep(for: .milliseconds(1))
    try? await Task.sleep(until: SuspendingClock.now + .milliseconds(1), clock: .suspending)
    let beforeList = openDescriptorList()
    let before = openFDCount()
    try await body()
    var after = openFDCount()
    if after > before {
        _ = await becomesTrue(within: .seconds(2)) {
            after = openFDCount()
            return after <= before
        }
    }
    if after > before {
        let new = Set(openDescriptorList()).subtracting(beforeList).sorted()
        Issue.record(
            "descriptor leak: \(before) open before, \(after) after; new: \(new)",
            sourceLocation: sourceLocation)
    }
}

/// "fd=target" for the open descriptors below 4096, for leak reports.
private func openDescriptorList() -> [String] {
    (0..<4096).compactMap { fd -> String? in
        var buffer = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fd)", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return "\(fd)=" + String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// `withPoller` inside `checkingDescriptorLeaks`.
func withLeakCheckedPoller(
    _ kind: BackendKind, forcePipeWake: Bool = false, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller) async throws -> Void
) async throws {
    try await checkingDescriptorLeaks(sourceLocation: sourceLocation) {
        try await withPoller(kind, forcePipeWake: forcePipeWake, sourceLocation: sourceLocation, body)
    }
}

/// `withRegisteredPipe` inside `checkingDescriptorLeaks`.
func withLeakCheckedPipe(
    _ kind: BackendKind, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Poller, OwnedPipe, PollDescriptor) async throws -> Void
) async throws {
    try await checkingDescriptorLeaks(sourceLocation: sourceLocation) {
        try await withRegisteredPipe(kind, sourceLocation: sourceLocation, body)
    }
}
