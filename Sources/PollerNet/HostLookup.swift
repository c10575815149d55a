import CPoller
import Glibc
import Poller
import Synchronization

/// Host-name resolution for ``Dialer``: `getaddrinfo` on a few plain threads of its own, never
/// on a poller thread or Swift's cooperative pool (a lookup can block for seconds).
///
/// The caller waits without blocking anything: its deadline and task cancellation end the wait
/// at once, with ``NetError/timeout`` or ``NetError/cancelled``; the lookup then finishes in
/// the background and its result is dropped.
enum HostLookup {
    /// Resolves `host` (a name already checked by ``SocketAddress/checkHostName(_:)``) to its
    /// addresses with `port`, in the order the system gives them (RFC 6724 for glibc).
    ///
    /// - Throws: ``NetError/resolution(host:code:message:)``; ``NetError/timeout`` when
    ///   `deadline` passes first; ``NetError/cancelled``.
    static func resolve(
        _ host: String, port: UInt16, deadline: ContinuousClock.Instant?
    ) async throws(NetError) -> [SocketAddress] {
        // RFC 6761, 6.4: "invalid" and its subdomains never resolve; answer without asking.
        let lowered = host.lowercased()
        if lowered == "invalid" || lowered == "invalid." || lowered.hasSuffix(".invalid") || lowered.hasSuffix(".invalid.") {
            throw .resolution(host: host, code: EAI_NONAME, message: String(cString: gai_strerror(EAI_NONAME)))
        }
        if let deadline, deadline <= .now { throw .timeout }
        if Task.isCancelled { throw .cancelled }
        let job = LookupJob(host: host, port: port)
        let timer = deadline.map { deadline in
            Task {
                try? await Task.sleep(until: deadline, clock: .continuous)
                if !Task.isCancelled { job.finish(.failure(.timeout)) }
            }
        }
        defer { timer?.cancel() }
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if job.install(continuation) { LookupPool.shared.submit(job) }
            }
        } onCancel: {
            job.finish(.failure(.cancelled))
        }
        return try result.get()
    }

    /// The blocking lookup, on a pool thread: the test seam's answer in debug builds when one
    /// is installed, else `getaddrinfo`.
    static func blockingLookup(_ host: String, port: UInt16) -> Result<[SocketAddress], NetError> {
        #if DEBUG
        if NetTestHooks.active.load(ordering: .relaxed), let seam = NetTestHooks.current.lookup {
            return seam(host, port)
        }
        #endif
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>?
        let code = getaddrinfo(host, nil, &hints, &list)
        guard code == 0 else {
            let savedErrno = errno
            var message = String(cString: gai_strerror(code))
            if code == EAI_SYSTEM { message += ": " + ErrnoName.describe(savedErrno) }
            return .failure(.resolution(host: host, code: code, message: message))
        }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var entry = list
        while let info = entry?.pointee {
            entry = info.ai_next
            guard let sockaddr = info.ai_addr, info.ai_addrlen <= socklen_t(MemoryLayout<sockaddr_storage>.size) else { continue }
            var storage = sockaddr_storage()
            withUnsafeMutableBytes(of: &storage) {
                $0.copyMemory(from: UnsafeRawBufferPointer(start: sockaddr, count: Int(info.ai_addrlen)))
            }
            guard let address = SocketAddress(storage: storage, length: info.ai_addrlen)?.withPort(port),
                address.family != AF_UNIX, !addresses.contains(address)
            else { continue }
            addresses.append(address)
        }
        guard !addresses.isEmpty else {
            return .failure(.resolution(host: host, code: EAI_NONAME, message: "no addresses"))
        }
        return .success(addresses)
    }
}

/// One lookup: its question, and the waiter its answer goes to (once: the first of the
/// answer, the deadline and cancellation wins; the others are dropped).
final class LookupJob: Sendable {
    let host: String
    let port: UInt16

    private enum State {
        case pending(CheckedContinuation<Result<[SocketAddress], NetError>, Never>?)
        case finished(Result<[SocketAddress], NetError>)  // before the waiter was installed
        case delivered
    }

    private let state = Mutex(State.pending(nil))

    init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Whether nobody waits for the answer any more (the pool skips such a job).
    var isSettled: Bool {
        state.withLockAnnotated { if case .pending = $0 { false } else { true } }
    }

    /// Installs the waiter; false (and the waiter resumed) if the job already finished.
    func install(_ continuation: CheckedContinuation<Result<[SocketAddress], NetError>, Never>) -> Bool {
        let early: Result<[SocketAddress], NetError>? = state.withLockAnnotated { state in
            guard case .finished(let result) = state else {
                state = .pending(continuation)
                return nil
            }
            state = .delivered
            return result
        }
        guard let early else { return true }
        continuation.resume(returning: early)
        return false
    }

    /// Delivers `result` unless something was delivered already.
    func finish(_ result: Result<[SocketAddress], NetError>) {
        let waiter: CheckedContinuation<Result<[SocketAddress], NetError>, Never>? = state.withLockAnnotated { state in
            guard case .pending(let waiter) = state else { return nil }
            state = waiter == nil ? .finished(result) : .delivered
            return waiter
        }
        waiter?.resume(returning: result)
    }
}

/// At most ``maximumThreads`` plain threads running lookups. A thread starts when a job is
/// queued and fewer are running, takes jobs until the queue is empty, then exits: an idle
/// pool holds no thread.
final class LookupPool: Sendable {
    /// The pool every dial uses.
    static let shared = LookupPool(maximumThreads: 4)

    let maximumThreads: Int

    private struct State {
        var queue: [LookupJob] = []
        var head = 0
        var threads = 0
    }

    private let state = Mutex(State())

    init(maximumThreads: Int) {
        self.maximumThreads = maximumThreads
    }

    /// The threads running now (for tests).
    var threadCount: Int { state.withLockAnnotated { $0.threads } }

    /// Queues `job`, starting a thread if fewer than ``maximumThreads`` run.
    func submit(_ job: LookupJob) {
        let startThread = state.withLockAnnotated { state in
            state.queue.append(job)
            guard state.threads < maximumThreads else { return false }
            state.threads += 1
            return true
        }
        guard startThread else { return }
        var thread: UInt64 = 0
        let context = Unmanaged.passRetained(self).toOpaque()
        let err = cpoller_thread_start(&thread, lookupThreadMain, context)
        if err == 0 {
            _ = cpoller_thread_detach(thread)
            return
        }
        Unmanaged<LookupPool>.fromOpaque(context).release()
        // No thread: if none runs at all, nobody will take the queue; fail what is in it.
        let orphans: [LookupJob] = state.withLockAnnotated { state in
            state.threads -= 1
            guard state.threads == 0 else { return [] }
            defer { (state.queue, state.head) = ([], 0) }
            return Array(state.queue[state.head...])
        }
        for orphan in orphans { orphan.finish(.failure(.system(call: "pthread_create", errno: err))) }
    }

    /// A pool thread's life: take jobs until there are none, then exit.
    fileprivate func work() {
        cpoller_thread_set_name("poller-lookup")
        while let job = next() {
            guard !job.isSettled else { continue }
            job.finish(HostLookup.blockingLookup(job.host, port: job.port))
        }
    }

    private func next() -> LookupJob? {
        state.withLockAnnotated { state in
            guard state.head < state.queue.count else {
                state.threads -= 1
                (state.queue, state.head) = ([], 0)
                return nil
            }
            defer { state.head += 1 }
            return state.queue[state.head]
        }
    }
}

private func lookupThreadMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    Unmanaged<LookupPool>.fromOpaque(context!).takeRetainedValue().work()
    return nil
}

extension SocketAddress {
    /// This IP address with `port`; a Unix address unchanged.
    func withPort(_ port: UInt16) -> SocketAddress {
        switch self {
        case .ipv4(let host, _): .ipv4(host: host, port: port)
        case .ipv6(let host, _): .ipv6(host: host, port: port)
        case .unix: self
        }
    }
}
