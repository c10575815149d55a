// poller-http: a tiny keep-alive HTTP/1.1 "hello" server on PollerNet, for benchmarks beside
// Go's net/http and SwiftNIO's NIOHTTP1. An example, not a framework: it answers every
// well-formed request (any method, any path) with "Hello, World!". Requests are parsed in full
// by HTTPParsing's streaming parser (RFC 9112): the request line (HTTP/1.0 and 1.1), header
// fields (token names, no obsolete folding), the body framing rules (Content-Length, or
// Transfer-Encoding ending in chunked; both → 400), bodies of either kind read and discarded
// (chunk extensions and trailers included), keep-alive (HTTP/1.1 unless "Connection: close";
// HTTP/1.0 only with "Connection: keep-alive"), pipelining (answers in order) and
// "Expect: 100-continue" (a 100 Continue before the body is read).
//
//   poller-http [--host 127.0.0.1] [--port 0] [--backend epoll|io_uring|auto]
//               [--threads N] [--accept shared|reuseport] [--idle-timeout S] [--read-timeout S] [--write-timeout S]
//               [--max-connections N] [--max-header-bytes N] [--max-body-bytes N]
//
// What it defends against, with the defaults a public server needs (see usageText):
//   - idle connections: a connection waiting for its next request is closed after
//     --idle-timeout (60 s);
//   - slowloris: once a request's first bytes are in, its whole head and body must arrive
//     within --read-timeout (10 s) — a deadline set once per request, not pushed back by each
//     byte;
//   - a peer that never reads: every response write must finish within --write-timeout (10 s);
//   - connection floods: beyond --max-connections new connections get a 503 and are closed;
//   - oversized requests: a request line over 8 KiB (or --max-header-bytes) → 414, a head
//     over --max-header-bytes (16384) or with more than 100 fields → 431, a body (by
//     Content-Length or the sum of its chunks) over --max-body-bytes (1 MiB) → 413; then close;
//   - smuggling and garbage: an empty request (bare CRLFs), a malformed request line, header
//     line, chunk or trailer, Content-Length with Transfer-Encoding, differing Content-Lengths,
//     Transfer-Encoding not ending in chunked → 400; codings other than chunked → 501; HTTP
//     versions other than 1.0 and 1.1 → 505; then close (never answered as a request);
//   - response amplification by pipelining: at most 32 responses are queued before they are
//     written, and the rest of the buffered requests wait until the peer has taken them;
//   - quadratic parsing: the parser consumes each byte once and keeps none, so a head
//     dripped one byte per read costs linear work;
//   - accept errors: backed off (5 ms doubling to 1 s) and retried, logged at most once a
//     second; accepting ends only when the listener is closed at shutdown.
import Glibc
import HTTPParsing
import Poller
import PollerNet
import ServerSupport
import Synchronization

let usageText = """
    usage: poller-http [--host H] [--port P] [--backend epoll|io_uring|auto] [options]
      --threads N            pollers, one thread each (default and 0: one per CPU this process
                             may run on; more is clamped to that)
      --accept MODE          shared: one listener hands connections to the pollers in turn
                             (default); reuseport: one SO_REUSEPORT listener per poller
      --idle-timeout S       close a connection idle between requests for S seconds (default 60; 0 = off)
      --read-timeout S       a request's head and body must arrive within S seconds of its first
                             bytes (default 10; 0 = off, reads then only get the idle timeout)
      --write-timeout S      each response write must finish within S seconds (default 10; 0 = off)
      --max-connections N    answer 503 and close beyond N open connections
                             (default min(16384, RLIMIT_NOFILE - 64); 0 = no cap)
      --max-header-bytes N   longest request head, 256...1048576 (default 16384); longer: 431
                             (a request line longer than 8192 or N: 414)
      --max-body-bytes N     longest request body (Content-Length or chunked), read and
                             discarded (default 1048576); longer: 413
    """

// MARK: Responses (fixed bytes: the response path allocates nothing)

func reply(_ status: String, body: String = "", close: Bool, keepAlive10: Bool = false) -> [UInt8] {
    var head = "HTTP/1.1 \(status)\r\n"
    if !body.isEmpty { head += "Content-Type: text/plain\r\n" }
    head += "Content-Length: \(body.utf8.count)\r\n"
    if close { head += "Connection: close\r\n" } else if keepAlive10 { head += "Connection: keep-alive\r\n" }
    return Array((head + "\r\n" + body).utf8)
}

let okKeepAlive = reply("200 OK", body: "Hello, World!", close: false)
let okKeepAlive10 = reply("200 OK", body: "Hello, World!", close: false, keepAlive10: true)
let okClose = reply("200 OK", body: "Hello, World!", close: true)
let badRequest = reply("400 Bad Request", close: true)
let uriTooLong = reply("414 URI Too Long", close: true)
let contentTooLarge = reply("413 Content Too Large", close: true)
let headerTooLarge = reply("431 Request Header Fields Too Large", close: true)
let notImplemented = reply("501 Not Implemented", close: true)
let versionNotSupported = reply("505 HTTP Version Not Supported", close: true)
let serviceUnavailable = reply("503 Service Unavailable", close: true)
let continue100 = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
let longestReply = [
    okKeepAlive, okKeepAlive10, okClose, badRequest, uriTooLong, contentTooLarge, headerTooLarge,
    notImplemented, versionNotSupported, continue100,
].map(\.count).max()!

/// Responses queued per connection before they are written (pipelining bound): the rest of
/// the buffered requests are parsed only after the peer has taken these.
let maxQueuedResponses = 32

/// Most header fields in a request head (and in a chunked body's trailers); more: 431.
let maxHeaderCount = 100

/// Bytes read at a time per connection (heads and bodies stream through the parser).
let readBufferBytes = 16384

// MARK: Options

/// The shared server flags (`options.host`, `options.idleTimeout`, ...) and HTTP's own.
@dynamicMemberLookup
struct Options: Sendable {
    var server = ServerOptions(idleTimeout: .seconds(60), writeTimeout: .seconds(10))
    var readTimeout: Duration? = .seconds(10)
    var maxHeaderBytes = 16384
    var maxBodyBytes = 1 << 20

    subscript<T>(dynamicMember path: WritableKeyPath<ServerOptions, T>) -> T {
        get { server[keyPath: path] }
        set { server[keyPath: path] = newValue }
    }
}

func parse() -> Options {
    var options = Options()
    var flags = FlagReader()
    while let flag = flags.next() {
        if options.server.read(flag, from: &flags) { continue }
        switch flag {
        case "--read-timeout": options.readTimeout = parseTimeout(flag, flags.value(of: flag))
        case "--max-header-bytes": options.maxHeaderBytes = flags.integer(of: flag, in: 256...(1 << 20))
        case "--max-body-bytes": options.maxBodyBytes = flags.integer(of: flag, in: 0...(1 << 40))
        default: flags.unknown(flag, usage: usageText)
        }
    }
    return options
}

// MARK: Serving

/// The reply to a refused request (`Connection: close`).
func refusal(_ error: HTTPParseError) -> [UInt8] {
    switch error.status {
    case 413: contentTooLarge
    case 414: uriTooLong
    case 431: headerTooLarge
    case 501: notImplemented
    case 505: versionNotSupported
    default: badRequest
    }
}

/// The parser's limits for `options`: the request line may take at most 8 KiB of the head.
func limits(_ options: Options) -> HTTPLimits {
    HTTPLimits(
        maxRequestLineBytes: min(8192, options.maxHeaderBytes), maxHeadBytes: options.maxHeaderBytes,
        maxHeaderCount: maxHeaderCount, maxBodyBytes: options.maxBodyBytes)
}

/// Serves one connection until the peer closes, a deadline passes, an error, or a reply that
/// closes. Invariants: `buffer[start..<used]` holds bytes not yet fed to `parser`;
/// `out[0..<queued]` holds `queuedCount` ≤ 32 replies (a `100 Continue` counts as one).
func serve(_ connection: Connection, _ options: Options) async {
    // Connections end by close (peer, error or process exit), never by task cancellation.
    connection.observesTaskCancellation = false
    // One allocation per connection: the read buffer, then the reply queue. The parser keeps
    // no bytes (a head need not fit the buffer: the head cap is the parser's). Untouched
    // pages of an idle connection's buffer cost no resident memory.
    let capacity = readBufferBytes
    let storage = UnsafeMutableRawBufferPointer.allocate(
        byteCount: capacity + maxQueuedResponses * longestReply, alignment: 16)
    defer { storage.deallocate() }
    let buffer = UnsafeMutableRawBufferPointer(rebasing: storage[0..<capacity])
    let out = UnsafeMutableRawBufferPointer(rebasing: storage[capacity...])
    var parser = HTTPRequestParser(limits: limits(options))
    var start = 0
    var used = 0
    var queued = 0
    var queuedCount = 0
    // The current request's answer (known from its head, sent at its end).
    var keepAlive = true
    var http10 = false
    // Requests completed so far, and the request whose --read-timeout deadline is in force
    // (nil: the read deadline is the idle one or none). The request deadline is set once per
    // request so that a drip of bytes cannot push it back.
    var completedRequests = 0
    var deadlineRequest: Int?

    func enqueue(_ reply: [UInt8]) {
        reply.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[queued...]).copyMemory(from: $0) }
        queued += reply.count
        queuedCount += 1
    }

    while true {
        // 1. Answer what is buffered, up to the queue bound (one reply slot is kept for a
        //    request's 100 Continue and its answer).
        var close = false
        var needBytes = false
        parsing: while !close && queuedCount < maxQueuedResponses - 1 {
            let (event, consumed) = parser.parse(UnsafeRawBufferPointer(rebasing: buffer[start..<used]))
            start += consumed
            switch event {
            case .needMore:
                needBytes = true
                break parsing
            case .head(let head):
                keepAlive = head.keepAlive
                http10 = head.minorVersion == 0
                // RFC 9110 §10.1.1: the client may wait for this before sending the body.
                if head.expectsContinue { enqueue(continue100) }
            case .body:
                continue  // read and discarded
            case .end:
                enqueue(!keepAlive ? okClose : http10 ? okKeepAlive10 : okKeepAlive)
                close = !keepAlive
                completedRequests += 1
            case .error(let error):
                enqueue(refusal(error))
                close = true
            }
        }
        // 2. Write the replies (all of them before waiting for more requests).
        if queued > 0 {
            do {
                if let writeTimeout = options.writeTimeout { try connection.setWriteDeadline(in: writeTimeout) }
                try await connection.write(UnsafeRawBufferPointer(rebasing: out[0..<queued]))
            } catch {
                return
            }
            queued = 0
            queuedCount = 0
        }
        if close {
            await lingeringClose(connection, buffer)
            return
        }
        if !needBytes { continue }  // the queue bound stopped parsing: more requests are buffered
        // 3. Read more: every buffered byte has been fed to the parser.
        start = 0
        used = 0
        do {
            if !parser.isBetweenRequests, let readTimeout = options.readTimeout {
                // Mid-request: its head and body must arrive by this deadline, set once.
                if deadlineRequest != completedRequests {
                    try connection.setReadDeadline(in: readTimeout)
                    deadlineRequest = completedRequests
                }
            } else if let idleTimeout = options.idleTimeout {
                // Waiting for a request (or no read timeout): pushed back on every read, which
                // costs no heap operation once the timer is pending.
                try connection.setReadDeadline(in: idleTimeout)
                deadlineRequest = nil
            } else if deadlineRequest != nil {
                // Idle timeout off: no deadline between requests.
                try connection.setReadDeadline(nil)
                deadlineRequest = nil
            }
            used = try await connection.read(into: buffer)
        } catch {
            return  // end of file, reset, a deadline: close silently
        }
    }
}

/// After a reply that closes the connection: send FIN after it, then read and discard what the
/// peer still sends (at most 64 KiB, for at most 1 s) before the caller closes. Closing with
/// unread input would send a reset, which can destroy the reply before the peer has read it
/// (Go's closeWriteAndWait does the same). Bounded, so it cannot be used to hold a connection.
func lingeringClose(_ connection: Connection, _ buffer: UnsafeMutableRawBufferPointer) async {
    do {
        try connection.closeWrite()
        try connection.setReadDeadline(in: .seconds(1))
        var discarded = 0
        while discarded < 65536 { discarded += try await connection.read(into: buffer) }
    } catch {
        // End of file (the peer closed too), the deadline, or a reset: done either way.
    }
}

// MARK: Accepting

/// The connections being served (shed ones excluded), shared by every listener's handlers,
/// and the rate-limited log of shedding.
final class Admission: Sendable {
    let open = Atomic<Int>(0)
    let shedLog = Mutex(RateLimitedLog())
}

/// The handler `serve` runs for each connection, on its poller's thread: a 503 over the cap,
/// else the connection's requests. `serve` closes the connection when this returns.
func handle(_ connection: Connection, _ admission: Admission, _ options: Options) async {
    // Reserve a place first, so that listeners on several pollers cannot overshoot the cap.
    if admission.open.add(1, ordering: .relaxed).newValue > options.maxConnections {
        admission.open.subtract(1, ordering: .relaxed)
        // Shed: a 503 (into an empty send buffer, so it does not block; the deadline makes
        // sure) and close, keeping the listen queue moving and the descriptors for the
        // connections already served.
        admission.shedLog.withLockAnnotated { $0("at the connection cap (\(options.maxConnections)): answering 503 to new connections") }
        try? connection.setWriteDeadline(in: .milliseconds(100))
        try? await connection.write(serviceUnavailable)
        return
    }
    await serve(connection, options)
    admission.open.subtract(1, ordering: .relaxed)
}

nonisolated func run() async {
    let options = parse()
    do {
        try TerminationSignal.install()
    } catch {
        fail("signal handlers: \(error)")
    }
    let serving = await ServingGroup(options.server)
    print("poller-http: listening on \(serving.listeners[0].localAddress) (\(serving.summary))")
    fflush(nil)
    let admission = Admission()
    // Accept errors back off (5 ms doubling to 1 s) and never end a serve. SIGINT/SIGTERM:
    // stop accepting, close the open connections, exit 0.
    await serving.serveUntilTerminated(gracePeriod: .zero) { connection in await handle(connection, admission, options) }
    serving.group.shutdown()
    exit(0)
}

await run()
