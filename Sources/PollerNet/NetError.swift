import Glibc
import Poller

/// Why a network operation failed: the Swift form of the errors Go's `net` package returns.
///
/// Every operation in PollerNet throws exactly this type, so callers can `switch` over it.
/// The descriptions keep Go's wording where programs are known to match on it ("i/o timeout",
/// "use of closed network connection").
public enum NetError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The deadline for the operation's direction has passed (Go's `os.ErrDeadlineExceeded`,
    /// "i/o timeout"). The connection stays usable: clear or extend the deadline and retry.
    case timeout
    /// The connection or listener was closed, before or during the operation (Go's
    /// `net.ErrClosed`, "use of closed network connection"). Also what a second `close()`
    /// throws.
    case closed
    /// The peer closed its side of a stream: a read returned no bytes (Go's `io.EOF`).
    case endOfFile
    /// The task performing the operation was cancelled while it waited. Nothing was consumed
    /// and the connection stays usable. Go has no counterpart (it uses deadlines).
    case cancelled
    /// The peer reset the connection (ECONNRESET).
    case connectionReset
    /// `accept` ran out of descriptors (EMFILE for the process, ENFILE for the system), or a
    /// listener shed a connection to keep its ``Listener/descriptorHeadroom`` free (EMFILE;
    /// that connection has been closed). Otherwise the pending connection stays queued. Back
    /// off (or do other work) and retry, as Go's servers do.
    case tooManyOpenFiles(errno: Int32)
    /// A system call failed: `call` names it ("connect", "read", "send", …) and `errno` says
    /// why. ECONNREFUSED from a dial and EPIPE from a write after the peer left arrive here.
    case system(call: String, errno: Int32)
    /// A host, port or path could not be turned into a socket address; the text says which.
    case invalidAddress(String)
    /// A host name could not be resolved (Go's `*net.DNSError`, "lookup example.invalid: no such
    /// host"): `code` is `getaddrinfo`'s result (`EAI_NONAME` for a name that does not exist,
    /// `EAI_AGAIN` when no name server answered, …) and `message` its `gai_strerror` text (with
    /// the errno's name for `EAI_SYSTEM`). See ``isHostNotFound``.
    case resolution(host: String, code: Int32, message: String)
    /// ``BufferedReader/readSlice(through:maxLength:)`` found no delimiter in the first
    /// `limit` bytes (Go's `bufio.ErrBufferFull`). Nothing was consumed; the connection is
    /// usable, but a line that long usually means the peer should be told so and closed.
    case delimiterNotFound(limit: Int)
    /// The descriptor cannot take a deadline because the poller does not watch it (Go's
    /// `os.ErrNoDeadline`, "file type does not support deadline"): a regular file, a
    /// directory or another file epoll refuses (EPERM), or a ``RawConnection`` adopted with
    /// `usePoller: false`. Its reads and writes still work, as blocking system calls.
    case noDeadline

    /// True only for ``timeout``: the one error that means "the deadline passed", as Go's
    /// `Timeout()` on `os.ErrDeadlineExceeded`.
    public var isTimeout: Bool { self == .timeout }

    /// True for a ``resolution(host:code:message:)`` error saying the name does not exist
    /// (`EAI_NONAME`; Go's `DNSError.IsNotFound`), rather than that the lookup failed.
    public var isHostNotFound: Bool {
        if case .resolution(_, EAI_NONAME, _) = self { true } else { false }
    }

    public var description: String {
        switch self {
        case .timeout: "i/o timeout"
        case .closed: "use of closed network connection"
        case .endOfFile: "end of file"
        case .cancelled: "operation cancelled"
        case .connectionReset: "connection reset by peer"
        case .tooManyOpenFiles(let errno): "accept4: \(ErrnoName.describe(errno))"
        case .system(let call, let errno): "\(call): \(ErrnoName.describe(errno))"
        case .invalidAddress(let text): "invalid address: \(text)"
        case .resolution(let host, _, let message): "lookup \(SocketAddress.quoted(host)): \(message)"
        case .delimiterNotFound(let limit): "bufio: buffer full (no delimiter in \(limit) bytes)"
        case .noDeadline: "file type does not support deadline"
        }
    }

    /// The error for a failed system call. ECONNRESET maps to ``connectionReset`` whatever
    /// the call, so a peer's reset reads the same from `read`, `send` and `connect`.
    static func fromErrno(_ errno: Int32, call: String) -> NetError {
        switch errno {
        case ECONNRESET: .connectionReset
        default: .system(call: call, errno: errno)
        }
    }

    /// The net-level meaning of a poller error. `.notPollable` is handled by the I/O loops
    /// (they ask the socket for its pending error) and only lands here as a fallback.
    init(_ error: PollError) {
        switch error {
        case .closing: self = .closed
        case .timeout: self = .timeout
        case .cancelled: self = .cancelled
        case .notPollable: self = .system(call: "poll", errno: EIO)
        case .registrationFailed(let errno): self = .system(call: "poll register", errno: errno)
        case .doubleWait, .invalidMode, .notUnblocked, .waiterParked, .wouldBlockPollerThread:
            // The fd's locks make these impossible; report them rather than trap.
            self = .system(call: "poll (\(error))", errno: EINVAL)
        }
    }
}
