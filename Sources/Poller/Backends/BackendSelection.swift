import CPoller
import Glibc

/// The readiness mechanism under a ``Poller``.
public enum BackendKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Edge-triggered epoll (Go's netpoll_epoll.go).
    case epoll
    /// An io_uring: multishot POLL_ADD for readiness, and (where the kernel has multishot recv
    /// and provided-buffer rings) connections' reads through multishot recv.
    case ioUring = "io_uring"

    public var description: String { rawValue }
}

extension BackendKind {
    /// Creates the backend of this kind on the calling thread: the one place a backend is
    /// made (the poller thread's start-up and the backend tests both call it).
    ///
    /// For io_uring the calling thread becomes the ring's owner, the only thread that may
    /// poll it, so call this on the thread that will poll. `forcePipeWake` makes the wake-up
    /// channel a self-pipe instead of an eventfd (``Poller/Options/forcePipeWake``). Throws
    /// ``PollerError/backendUnavailable(_:reason:)`` when io_uring cannot be set up here, and
    /// ``PollerError/system(call:errno:)`` when a descriptor cannot be created.
    func makeBackend(
        forcePipeWake: Bool = false, receive: URingBackend.ReceiveSettings = .fromEnvironment(),
        send: URingBackend.SendSettings = .fromEnvironment(), accept: URingBackend.AcceptSettings = .fromEnvironment(),
        uringEntries: (submission: UInt32, completion: UInt32) = (512, 16384)
    ) throws(PollerError) -> any PollerBackend {
        switch self {
        case .epoll: try EpollBackend(forcePipeWake: forcePipeWake)
        case .ioUring:
            try URingBackend(
                forcePipeWake: forcePipeWake, receive: receive, send: send, accept: accept,
                submissionEntries: uringEntries.submission,
                completionEntries: uringEntries.completion)
        }
    }
}

/// Which backend to start with: chosen at start-up, never at compile time.
public enum BackendChoice: Sendable, Equatable, CustomStringConvertible {
    case epoll
    case ioUring
    /// io_uring where it works here and is preferred (see ``BackendChoice/autoPrefersIOUring``),
    /// else epoll.
    case auto

    /// The environment variable read by ``fromEnvironment()``: `epoll`, `io_uring` or `auto`.
    public static let environmentVariable = "POLLER_BACKEND"

    /// Whether `auto` picks io_uring where it works.
    ///
    /// False: on this project's benchmark machine readiness-only io_uring measured at parity
    /// with epoll at 64 connections and 3% slower at 512 (docs: uring-ring-flags), so `auto`
    /// takes epoll, the cheaper and more widely permitted mechanism, until a benchmark shows
    /// io_uring ahead.
    public static let autoPrefersIOUring = false

    /// Parses `epoll`, `io_uring` (also `uring`, `io-uring`) or `auto`.
    public init(parsing name: String) throws(PollerError) {
        switch name.lowercased() {
        case "epoll": self = .epoll
        case "io_uring", "uring", "io-uring", "iouring": self = .ioUring
        case "auto", "": self = .auto
        default: throw .invalidBackendName(name)
        }
    }

    /// The choice named by `POLLER_BACKEND`, or `.auto` when it is unset.
    public static func fromEnvironment() throws(PollerError) -> BackendChoice {
        guard let value = getenv(environmentVariable) else { return .auto }
        return try BackendChoice(parsing: String(cString: value))
    }

    public var description: String {
        switch self {
        case .epoll: "epoll"
        case .ioUring: "io_uring"
        case .auto: "auto"
        }
    }

    /// The backend this choice resolves to here, with a sentence saying why. Forcing
    /// io_uring where it cannot work is an error naming the reason, never a silent fallback.
    func resolve(autoPrefersIOUring: Bool = BackendChoice.autoPrefersIOUring)
        throws(PollerError) -> (kind: BackendKind, reason: String)
    {
        switch self {
        case .epoll:
            return (.epoll, "epoll requested")
        case .ioUring:
            if case .failure(let error) = URingBackend.probe() { throw error }
            return (.ioUring, "io_uring requested")
        case .auto:
            guard autoPrefersIOUring else {
                return (.epoll, "auto: epoll (readiness-only io_uring is not faster here)")
            }
            switch URingBackend.probe() {
            case .success: return (.ioUring, "auto: io_uring works here")
            case .failure(let error): return (.epoll, "auto: epoll, because \(error)")
            }
        }
    }
}
