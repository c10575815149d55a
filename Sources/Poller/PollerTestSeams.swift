import Synchronization

// Every seam for tests and benchmarks, in one place. None is on a production path: the test
// hooks exist only in debug builds (where tests run) and are nil unless a test sets them; the
// benchmark entry points are SPI.

// MARK: Tests

#if DEBUG
extension Poller {
    /// Seams that widen race windows which are otherwise a few instructions wide, so tests
    /// can force the interleavings the code must survive. Inert (nil) outside tests.
    struct TestHooks: Sendable {
        /// In `register`, after the shutdown check and before the slot is opened.
        var registerAfterShutdownCheck: (@Sendable () -> Void)?
        /// On the poller thread during shutdown, after the backend is closed and before the
        /// open descriptors are unblocked.
        var shutdownBeforeSweep: (@Sendable () -> Void)?
        /// On a new poller thread (named `threadName`) before it makes its backend: a non-nil
        /// result fails the set-up with that error, as a backend that cannot start would.
        var beforeBackendSetup: (@Sendable (_ threadName: String) -> PollerError?)?
    }
}

extension PollerGroup {
    /// Test seam (debug builds): the jobs enqueued on the members' run queues so far. A task
    /// that hops between executors shows up as extra enqueues.
    @_spi(Testing) public var _enqueuedJobCountForTesting: Int {
        pollers.reduce(0) { $0 + $1.runQueue.enqueued.load(ordering: .relaxed) }
    }
}

#endif

// MARK: Benchmarks (SPI)

extension PollDescriptor {
    /// Benchmark seam: latches readiness for `mode` exactly as a kernel event would, so a
    /// micro-benchmark can time the wait fast path alone. Not for production use.
    @_spi(Benchmarks) public func _latchReadinessForBenchmark(_ mode: PollMode) {
        var woken: [(Waiter, WakeReason)] = []
        slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation) else { return }
            if mode.contains(.read), let w = s.takeWaiter(.read, ioReady: true) { woken.append((w, .ready)) }
            if mode.contains(.write), let w = s.takeWaiter(.write, ioReady: true) { woken.append((w, .ready)) }
        }
        poller.resume(&woken)
    }

    /// Benchmark seam: the number of armed deadline timers of this descriptor's poller.
    @_spi(Benchmarks) public var _armedTimerCountForBenchmark: Int { poller.timers.withLockAnnotated { $0.heap.count } }
}

extension Poller {
    /// Benchmark seam: opens a descriptor slot for `fd` without registering `fd` with the
    /// kernel, so a benchmark can hold more deadlines than RLIMIT_NOFILE allows descriptors.
    /// Deadlines and waits work on it as usual; no readiness will ever arrive.
    @_spi(Benchmarks) public func _openWithoutKernelRegistrationForBenchmark(fd: Int32) -> PollDescriptor {
        let (slot, generation) = openSlot(fd: fd)
        return PollDescriptor(poller: self, slot: slot, generation: generation, fd: fd)
    }
}
