import CPoller

/// One thread blocks in `park()` until another calls `unpark()`: the futex under blocking
/// waits and cross-thread hand-offs. A signal given before `park()` is kept, so the order of
/// the two calls does not matter. One parker serves one waiter at a time.
final class ParkerBox: @unchecked Sendable {
    // @unchecked: the futex word is touched only through the C atomics in cpoller_parker_*.
    private let word: UnsafeMutablePointer<cpoller_parker>

    init() {
        word = .allocate(capacity: 1)
        cpoller_parker_init(word)
    }

    deinit { word.deallocate() }

    /// Blocks until unparked. Returns false if `timeoutNanos` (>= 0) passed first.
    @discardableResult
    func park(timeoutNanos: Int64 = -1) -> Bool {
        cpoller_parker_park(word, timeoutNanos) == 1
    }

    func unpark() { cpoller_parker_unpark(word) }
}
