import CPoller
import Synchronization

extension Mutex where Value: ~Copyable {
    /// `withLock`, plus ThreadSanitizer annotations of the happens-before edge the lock
    /// provides.
    ///
    /// Why: Synchronization's Mutex takes and releases its futex inside the Swift runtime
    /// library, which is not instrumented, so under `--sanitize=thread` every pair of
    /// accesses made under the same Mutex from two threads is reported as a data race. The
    /// annotations use the Mutex's own address (it is address-only, so a borrow is its real
    /// location) as the synchronisation object; without TSan they are calls to empty
    /// functions. Every critical section in this package goes
    /// through here so the TSan run in CI checks the code, not the toolchain.
    @inlinable @inline(__always)
    package borrowing func withLockAnnotated<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        let address = withUnsafePointer(to: self) { UnsafeMutableRawPointer(mutating: $0) }
        return try withLock { (value: inout sending Value) throws(E) -> sending Result in
            cpoller_tsan_acquire(address)
            defer { cpoller_tsan_release(address) }
            return try body(&value)
        }
    }
}
