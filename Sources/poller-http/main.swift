// poller-http: a tiny keep-alive HTTP/1.1 "hello" server on PollerNet, for benchmarks beside
// Go's net/http and SwiftNIO's NIOHTTP1. An example, not a framework: it answers every
// well-formed request (any method, any path) with "Hello, World!", honours pipelining and
// "Connection: close" (and HTTP/1.0's keep-alive rules), and reads and discards request
// bodies given by Content-Length.
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
//   - oversized heads: more than --max-header-bytes (16384) without the end of the head → 431
//     and close; bodies beyond --max-body-bytes (1 MiB) → 413 and close; Transfer-Encoding
//     (chunked bodies, which this server does not decode) → 501 and close;
//   - garbage: an empty request (bare CRLFs), a malformed request line or header line → 400
//     and close (never answered as a request);
//   - response amplification by pipelining: at most 32 responses are queued before they are
//     written, and the rest of the buffered requests wait until the peer has taken them;
//   - quadratic parsing: the search for the end of the head resumes where the last one
//     stopped, so a head dripped one byte per read costs linear work;
//   - accept errors: backed off (5 ms doubling to 1 s) and retried, logged at most once a
//     second; accepting ends only when the listener is closed at shutdown.
import Glibc
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
      --max-body-bytes N     longest Content-Length read and discarded (default 1048576); longer: 413
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
let contentTooLarge = reply("413 Content Too Large", close: true)
let headerTooLarge = reply("431 Request Header Fields Too Large", close: true)
let notImplemented = reply("501 Not Implemented", close: true)
let versionNotSupported = reply("505 HTTP Version Not Supported", close: true)
let serviceUnavailable = reply("503 Service Unavailable", close: true)
let longestReply = [okKeepAlive, okKeepAlive10, okClose, badRequest, contentTooLarge, headerTooLarge,
                    notImplemented, versionNotSupported].map(\.count).max()!

/// Responses queued per connection before they are written (pipelining bound): the rest of
/// the buffered requests are parsed only after the peer has taken these.
let maxQueuedResponses = 32

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

// MARK: Parsing (bytes only, no allocation)

let CR: UInt8 = 13, LF: UInt8 = 10, SP: UInt8 = 32, HTAB: UInt8 = 9, COLON: UInt8 = 58

/// Index just past the first "\r\n\r\n" in `buffer[start..<end]`, or nil. Callers resume a
/// failed search at `end - 3` (a terminator may straddle reads), never at the head's start:
/// that is what keeps a head dripped one byte per read linear rather than quadratic.
func endOfHead(_ buffer: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Int? {
    var i = start
    while i + 3 < end {
        let b = buffer[i + 3]
        if b == LF {
            if buffer[i] == CR && buffer[i + 1] == LF && buffer[i + 2] == CR { return i + 4 }
            i += 1
        } else if b == CR {
            i += 1
        } else {
            // Byte i + 3 is neither CR nor LF, so no terminator covers it: none starts at
            // i...i + 3.
            i += 4
        }
    }
    return nil
}

/// RFC 9110 token characters (method and header names).
@inline(__always) func isTokenChar(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true  // DIGIT, ALPHA
    case 0x21, 0x23...0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: true  // !#$%&'*+-.^_`|~
    default: false
    }
}

@inline(__always) func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

/// Whether `bytes` equals the lowercase ASCII `name`, ignoring case.
func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer.SubSequence, _ name: StaticString) -> Bool {
    guard bytes.count == name.utf8CodeUnitCount else { return false }
    let n = name.utf8Start
    var k = 0
    for b in bytes {
        if lower(b) != n[k] { return false }
        k += 1
    }
    return true
}

/// The verdict on one request head.
enum Head {
    /// Answer 200; then discard `bodyLength` bytes; close after the answer unless `keepAlive`.
    case request(keepAlive: Bool, http10: Bool, bodyLength: Int)
    /// Answer with this (a `Connection: close` error reply) and close.
    case reject([UInt8])
}

/// Parses a request head, `head` ending with CRLF CRLF (as found by `endOfHead`). Strict
/// where laxness lets requests be smuggled or garbage be answered: one optional empty line
/// before the request line (RFC 9112 §2.2), then `method SP target SP HTTP/1.x`, then
/// `name: value` lines with no whitespace before the colon, no obsolete line folding, no bare
/// CR or LF or other control bytes in values.
func parseHead(_ head: UnsafeRawBufferPointer, maxBodyBytes: Int) -> Head {
    let n = head.count
    var i = 0
    if n >= 2 && head[0] == CR && head[1] == LF { i = 2 }  // one leading empty line is ignored
    /// The index of the next CRLF at or after `from` (one exists: the head ends with CRLF CRLF).
    func lineEnd(_ from: Int) -> Int {
        var k = from
        while !(head[k] == CR && head[k + 1] == LF) { k += 1 }
        return k
    }
    // Request line.
    let requestLineEnd = lineEnd(i)
    var j = i
    while j < requestLineEnd && isTokenChar(head[j]) { j += 1 }
    guard j > i, j < requestLineEnd, head[j] == SP else { return .reject(badRequest) }  // also: empty request
    j += 1
    let target = j
    while j < requestLineEnd && head[j] > SP && head[j] < 0x7F { j += 1 }
    guard j > target, j < requestLineEnd, head[j] == SP else { return .reject(badRequest) }
    j += 1
    // "HTTP/" DIGIT "." DIGIT, and only 1.0 and 1.1 are served.
    guard requestLineEnd - j == 8, head[j] == 0x48, head[j + 1] == 0x54, head[j + 2] == 0x54, head[j + 3] == 0x50,
          head[j + 4] == 0x2F, (0x30...0x39).contains(head[j + 5]), head[j + 6] == 0x2E,
          (0x30...0x39).contains(head[j + 7])
    else { return .reject(badRequest) }
    guard head[j + 5] == 0x31, head[j + 7] <= 0x31 else { return .reject(versionNotSupported) }
    let http10 = head[j + 7] == 0x30
    var keepAlive = !http10  // HTTP/1.0 closes unless asked to keep alive
    var contentLength: Int?
    // Header lines, up to the empty line.
    var p = requestLineEnd + 2
    while true {
        let e = lineEnd(p)
        if e == p { break }
        var k = p
        while k < e && isTokenChar(head[k]) { k += 1 }
        // An empty name covers obsolete folding (a line starting with SP/HTAB); a byte other
        // than ':' after the name covers whitespace before the colon: both are rejected.
        guard k > p, k < e, head[k] == COLON else { return .reject(badRequest) }
        let name = head[p..<k]
        var vs = k + 1, ve = e
        for v in vs..<ve where head[v] != HTAB && (head[v] < SP || head[v] == 0x7F) {
            return .reject(badRequest)  // control bytes, including a bare CR or LF
        }
        while vs < ve && (head[vs] == SP || head[vs] == HTAB) { vs += 1 }
        while ve > vs && (head[ve - 1] == SP || head[ve - 1] == HTAB) { ve -= 1 }
        if equalsIgnoringCase(name, "content-length") {
            guard ve > vs else { return .reject(badRequest) }
            var length = 0
            for v in vs..<ve {
                guard (0x30...0x39).contains(head[v]) else { return .reject(badRequest) }
                // Saturate instead of overflowing: anything this large is refused anyway.
                length = length > (1 << 50) ? length : length * 10 + Int(head[v] - 0x30)
            }
            if let previous = contentLength, previous != length { return .reject(badRequest) }
            contentLength = length
        } else if equalsIgnoringCase(name, "transfer-encoding") {
            // Chunked bodies are not decoded here; answering without reading them would let
            // the body be parsed as requests. Refuse (RFC 9112 §6.1: 501).
            return .reject(notImplemented)
        } else if equalsIgnoringCase(name, "connection") {
            // Comma-separated tokens: "close" ends the connection, "keep-alive" keeps HTTP/1.0's.
            var t = vs
            while t < ve {
                var u = t
                while u < ve && head[u] != 0x2C { u += 1 }
                var a = t, b = u
                while a < b && (head[a] == SP || head[a] == HTAB) { a += 1 }
                while b > a && (head[b - 1] == SP || head[b - 1] == HTAB) { b -= 1 }
                if equalsIgnoringCase(head[a..<b], "close") { keepAlive = false }
                if equalsIgnoringCase(head[a..<b], "keep-alive") && http10 { keepAlive = true }
                t = u + 1
            }
        }
        p = e + 2
    }
    let bodyLength = contentLength ?? 0
    guard bodyLength <= maxBodyBytes else { return .reject(contentTooLarge) }
    return .request(keepAlive: keepAlive, http10: http10, bodyLength: bodyLength)
}

// MARK: Serving

/// Serves one connection until the peer closes, a deadline passes, an error, or a reply that
/// closes. Invariants: `buffer[start..<used]` holds unparsed bytes; `buffer[start..<scanned]`
/// (when `scanned > start`) holds no end of head; `bodyLeft` bytes of the current request's
/// body are still to be discarded; `out[0..<queued]` holds `queuedCount` ≤ 32 replies.
func serve(_ connection: Connection, _ options: Options) async {
    // Connections end by close (peer, error or process exit), never by task cancellation.
    connection.observesTaskCancellation = false
    // One allocation per connection: the read buffer (a whole head must fit), then the reply
    // queue. Untouched pages of an idle connection's buffer cost no resident memory.
    let capacity = options.maxHeaderBytes
    let storage = UnsafeMutableRawBufferPointer.allocate(
        byteCount: capacity + maxQueuedResponses * longestReply, alignment: 16)
    defer { storage.deallocate() }
    let buffer = UnsafeMutableRawBufferPointer(rebasing: storage[0..<capacity])
    let out = UnsafeMutableRawBufferPointer(rebasing: storage[capacity...])
    var start = 0, used = 0, scanned = 0, bodyLeft = 0
    var queued = 0, queuedCount = 0
    // Requests completed so far (head read and body discarded), and the request whose
    // --read-timeout deadline is in force (nil: the read deadline is the idle one or none).
    // The request deadline is set once per request so that a drip of bytes cannot push it back.
    var completedRequests = 0
    var deadlineRequest: Int?

    func enqueue(_ reply: [UInt8]) {
        reply.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[queued...]).copyMemory(from: $0) }
        queued += reply.count
        queuedCount += 1
    }

    while true {
        // 1. Answer what is buffered, up to the queue bound.
        var close = false
        var needBytes = false
        while !close && queuedCount < maxQueuedResponses {
            if bodyLeft > 0 {
                let skip = min(bodyLeft, used - start)
                start += skip
                bodyLeft -= skip
                if bodyLeft > 0 {
                    needBytes = true
                    break
                }
                completedRequests += 1
            }
            guard start < used else {
                needBytes = true
                break
            }
            guard let end = endOfHead(UnsafeRawBufferPointer(buffer), from: max(start, scanned - 3), to: used) else {
                scanned = used
                if used - start >= capacity {
                    enqueue(headerTooLarge)
                    close = true
                }
                needBytes = true
                break
            }
            switch parseHead(UnsafeRawBufferPointer(rebasing: buffer[start..<end]), maxBodyBytes: options.maxBodyBytes) {
            case .request(let keepAlive, let http10, let bodyLength):
                enqueue(!keepAlive ? okClose : http10 ? okKeepAlive10 : okKeepAlive)
                close = !keepAlive
                bodyLeft = bodyLength
            case .reject(let reply):
                enqueue(reply)
                close = true
            }
            start = end
            scanned = end
            if bodyLeft == 0 { completedRequests += 1 }
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
        // 3. Read more. Keep the unparsed bytes at the front so a head can use the whole buffer.
        if start > 0 {
            if start < used {
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[start..<used]))
            }
            used -= start
            scanned = max(0, scanned - start)
            start = 0
        }
        guard used < capacity else { return }  // cannot happen (a full head was answered 431); never read 0 bytes
        do {
            if (used > 0 || bodyLeft > 0), let readTimeout = options.readTimeout {
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
            used += try await connection.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[used...]))
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
