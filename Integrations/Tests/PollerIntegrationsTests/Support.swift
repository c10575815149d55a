import Logging
import Poller
import PollerNet
import Synchronization
import Testing

/// The backends every behavioural test runs on.
let backends: [BackendChoice] = [.epoll, .ioUring]

/// A fresh poller of `choice` for `body`, shut down afterwards; io_uring cases are skipped
/// with the reason when the ring cannot be set up here.
func withPoller<R>(_ choice: BackendChoice, _ body: (Poller) async throws -> R) async throws -> R {
    let poller: Poller
    do {
        poller = try Poller(backend: choice)
    } catch {
        if choice == .ioUring { try Test.cancel("io_uring unavailable: \(error)") }
        throw error
    }
    defer { poller.shutdown() }
    return try await body(poller)
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

/// A swift-log handler that keeps every record, for tests that read what was logged.
struct RecordingLogHandler: LogHandler {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }

    final class Store: Sendable {
        let records = Mutex<[Record]>([])
        var all: [Record] { records.withLock { $0 } }
    }

    let store: Store
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let record = Record(level: event.level, message: event.message.description, metadata: merged)
        store.records.withLock { $0.append(record) }
    }

    /// A logger writing into a new store.
    static func logger() -> (Logger, Store) {
        let store = Store()
        return (Logger(label: "test") { _ in RecordingLogHandler(store: store) }, store)
    }
}
