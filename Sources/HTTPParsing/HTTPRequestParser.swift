// A streaming HTTP/1.1 request parser (RFC 9112) over byte buffers, for poller-http.
//
// Feed it whatever bytes arrived, in any split; it consumes them and reports, one at a time,
// the events of the requests they hold: a request's head, pieces of its body (as ranges of
// the bytes fed, never copied), its end, or a framing error with the status to answer. It
// keeps no bytes between calls: every byte is consumed when fed (a head need not be
// contiguous in the caller's buffer), and only a few counters and matchers carry over. With
// `capturesFields` off (the server's mode) it allocates nothing after it is created; with it
// on, the head also carries the method, target and header fields (for tests and diagnostics).

/// Limits a request must stay within; exceeding one is an ``HTTPParseError``.
package struct HTTPLimits: Sendable, Equatable {
    /// Longest request line, CRLF excluded (longer: 414; so is a request line longer than
    /// `maxHeadBytes`).
    package var maxRequestLineBytes: Int
    /// Longest head: request line, header fields and the empty line (longer: 431, answered at
    /// the byte that reaches the limit without ending the head).
    package var maxHeadBytes: Int
    /// Most header fields in a head (more: 431), and in a chunked body's trailer section.
    package var maxHeaderCount: Int
    /// Longest body, by Content-Length or the sum of its chunks (longer: 413).
    package var maxBodyBytes: Int
    /// Longest chunk-size line with its extensions, and longest trailer section (longer: 400).
    package var maxChunkLineBytes: Int

    package init(
        maxRequestLineBytes: Int = 8192, maxHeadBytes: Int = 16384, maxHeaderCount: Int = 100,
        maxBodyBytes: Int = 1 << 20, maxChunkLineBytes: Int = 4096
    ) {
        self.maxRequestLineBytes = maxRequestLineBytes
        self.maxHeadBytes = maxHeadBytes
        self.maxHeaderCount = maxHeaderCount
        self.maxBodyBytes = maxBodyBytes
        self.maxChunkLineBytes = maxChunkLineBytes
    }
}

/// Why a request was refused. Every case names the status to answer (``status``); the
/// connection must be closed after that answer (the framing of what follows is unknown).
package enum HTTPParseError: Error, Sendable, Equatable {
    /// 400: an empty request (bare CRLFs), or a method, target or request line out of syntax.
    case badRequestLine
    /// 505: `HTTP/x.y` other than 1.0 and 1.1.
    case unsupportedVersion
    /// 414: the request line is longer than ``HTTPLimits/maxRequestLineBytes``.
    case requestLineTooLong
    /// 431: the head is longer than ``HTTPLimits/maxHeadBytes``.
    case headTooLarge
    /// 431: more header (or trailer) fields than ``HTTPLimits/maxHeaderCount``.
    case tooManyHeaders
    /// 400: a field line starting with whitespace (obsolete line folding, RFC 9112 §5.2).
    case obsoleteLineFolding
    /// 400: a field name that is not a token, or whitespace before the colon.
    case badHeaderName
    /// 400: a control byte (a bare CR or LF, NUL, ...) in a field value, or a CR not before LF.
    case badHeaderValue
    /// 400: a Content-Length that is not a decimal number, or several that differ.
    case badContentLength
    /// 400: both Content-Length and Transfer-Encoding (RFC 9112 §6.3: a smuggling attempt).
    case contentLengthWithTransferEncoding
    /// 400: Transfer-Encoding whose last coding is not chunked, chunked twice, an empty list,
    /// or Transfer-Encoding in an HTTP/1.0 request.
    case badTransferEncoding
    /// 501: a transfer coding other than chunked (gzip, deflate, ...) before the final chunked.
    case unsupportedTransferEncoding
    /// 413: a body longer than ``HTTPLimits/maxBodyBytes``.
    case bodyTooLarge
    /// 400: a malformed chunk-size line, chunk extension, chunk end or trailer section.
    case badChunk

    /// The status code to answer with.
    package var status: Int {
        switch self {
        case .unsupportedVersion: 505
        case .requestLineTooLong: 414
        case .headTooLarge, .tooManyHeaders: 431
        case .unsupportedTransferEncoding: 501
        case .bodyTooLarge: 413
        default: 400
        }
    }
}

/// How a request's body is framed.
package enum HTTPBodyFraming: Sendable, Equatable {
    /// No body (neither Content-Length nor Transfer-Encoding, or Content-Length: 0).
    case none
    /// Exactly this many bytes (Content-Length).
    case length(Int)
    /// Chunked transfer coding, ended by a zero-size chunk and a trailer section.
    case chunked
}

/// A parsed request head.
package struct HTTPRequestHead: Sendable, Equatable {
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    package var minorVersion: Int = 1
    /// Whether the connection stays open after the answer: HTTP/1.1 unless `Connection: close`;
    /// HTTP/1.0 only with `Connection: keep-alive`.
    package var keepAlive = true
    /// The body's framing.
    package var body: HTTPBodyFraming = .none
    /// `Expect: 100-continue` in an HTTP/1.1 request: answer `100 Continue` before reading the body.
    package var expectsContinue = false
    /// The number of header fields.
    package var headerCount = 0
    /// The method's bytes (only when the parser captures fields; else empty).
    package var method: [UInt8] = []
    /// The request target's bytes (only when the parser captures fields; else empty).
    package var target: [UInt8] = []
    /// Header fields as (name, value) with the value's surrounding whitespace removed (only
    /// when the parser captures fields; else empty).
    package var fields: [HTTPField] = []

    package init() {}
}

/// One header or trailer field, as bytes.
package struct HTTPField: Sendable, Equatable {
    package var name: [UInt8]
    package var value: [UInt8]

    package init(name: [UInt8], value: [UInt8]) {
        self.name = name
        self.value = value
    }
}

/// What ``HTTPRequestParser/parse(_:)`` found.
package enum HTTPParseEvent: Sendable, Equatable {
    /// Every byte fed was consumed and more are needed.
    case needMore
    /// A request's head is complete; its body (if any) follows.
    case head(HTTPRequestHead)
    /// Body bytes (decoded: chunk framing removed): this range of the buffer just fed.
    case body(Range<Int>)
    /// The request (head, body and trailers) is complete; the next bytes start a new request.
    case end
    /// The request is refused; the parser stays failed.
    case error(HTTPParseError)
}

/// A streaming HTTP/1.1 request parser; see the file's comment. One per connection.
package struct HTTPRequestParser: Sendable {
    private enum State: Sendable {
        case start, leadingLF, method, target, version, requestLineLF
        case lineStart, name, value, valueLF, headEndLF
        case bodyLength
        case chunkSize, chunkExtension, chunkSizeLF, chunkData, chunkDataCR, chunkDataLF
        case headEnd, end, failed
    }

    /// Header names whose values matter (bit index in `candidates`).
    private static let known: [StaticString] = ["content-length", "transfer-encoding", "connection", "expect"]
    private static let contentLength = 0, transferEncoding = 1, connection = 2, expect = 3

    package let limits: HTTPLimits
    package let capturesFields: Bool
    private var state = State.start
    private var error = HTTPParseError.badRequestLine
    private var head = HTTPRequestHead()
    /// Bytes of the current head (or chunk line, or trailer section) so far.
    private var lineBytes = 0, headBytes = 0, trailerBytes = 0
    /// Position in "HTTP/1.x" while matching the version.
    private var versionIndex = 0
    /// Which of `known` the current field name may still be (bit set), and its length so far.
    private var candidates: UInt8 = 0
    private var nameLength = 0
    /// Which known field the current value belongs to (-1: none, or a trailer).
    private var knownField = -1
    /// The current known field's value (or, when capturing, every field's), reused.
    private var valueBytes: [UInt8] = []
    private var nameBytes: [UInt8] = []
    private var inTrailers = false
    private var contentLength: Int?
    private var sawTransferEncoding = false, chunkedLast = false, chunkedCount = 0, otherCoding = false
    private var connectionClose = false, connectionKeepAlive = false
    /// Body bytes left (Content-Length) or left in the current chunk; body bytes so far.
    private var remaining = 0, bodyTotal = 0
    private var chunkDigits = 0

    package init(limits: HTTPLimits = HTTPLimits(), capturesFields: Bool = false) {
        self.limits = limits
        self.capturesFields = capturesFields
        valueBytes.reserveCapacity(64)
    }

    /// Whether no byte of a request has been consumed since the last one ended (or since the
    /// start): the connection is between requests.
    package var isBetweenRequests: Bool {
        switch state {
        case .start: true
        default: false
        }
    }

    /// Consumes a prefix of `input` and reports what it completed: `consumed` is how many
    /// bytes were used (all of them for ``HTTPParseEvent/needMore``; body ranges lie within
    /// them). Call again with the rest after handling each event. After an error every call
    /// returns it again and consumes nothing.
    package mutating func parse(_ input: UnsafeRawBufferPointer) -> (event: HTTPParseEvent, consumed: Int) {
        let n = input.count
        var i = 0
        while true {
            switch state {
            case .failed:
                return (.error(error), 0)
            case .headEnd:
                // The head was completed: report it, then move to its body.
                if let failure = finishHead() { return fail(failure, i) }
                switch head.body {
                case .none: state = .end
                case .length(let length):
                    remaining = length
                    state = .bodyLength
                case .chunked:
                    inTrailers = false
                    lineBytes = 0
                    chunkDigits = 0
                    remaining = 0
                    state = .chunkSize
                }
                let reported = head
                if capturesFields { head.fields = [] }
                return (.head(reported), i)
            case .end:
                resetForNextRequest()
                return (.end, i)
            case .bodyLength, .chunkData:
                // Body bytes are reported where they lie, as many as are in and due.
                if remaining == 0 {
                    state = state == .bodyLength ? .end : .chunkDataCR
                    continue
                }
                if i == n { return (.needMore, n) }
                let take = min(remaining, n - i)
                remaining -= take
                return (.body(i..<i + take), i + take)
            default:
                break
            }
            if i == n { return (.needMore, n) }
            let b = input[i]
            i += 1
            if let failure = step(b) { return fail(failure, i) }
        }
    }

    private mutating func fail(_ failure: HTTPParseError, _ consumed: Int) -> (event: HTTPParseEvent, consumed: Int) {
        error = failure
        state = .failed
        return (.error(failure), consumed)
    }

    /// Advances the head, chunk-line or trailer state machine by one byte.
    @inline(__always)
    private mutating func step(_ b: UInt8) -> HTTPParseError? {
        // Size limits first: every head byte counts towards the head, every request-line
        // byte towards the request line.
        switch state {
        case .start, .leadingLF, .method, .target, .version, .requestLineLF:
            headBytes += 1
            if state != .requestLineLF && state != .leadingLF {
                lineBytes += 1
                // The count includes the line's CR: a line of L bytes counts L + 1 at its CR.
                if lineBytes > limits.maxRequestLineBytes + 1 { return .requestLineTooLong }
            }
            // A request line that alone fills the head limit is a request line too long (the
            // head cannot end at this byte).
            if headBytes >= limits.maxHeadBytes { return .requestLineTooLong }
        case .lineStart, .name, .value, .valueLF, .headEndLF:
            if inTrailers {
                trailerBytes += 1
                if trailerBytes > limits.maxChunkLineBytes { return .badChunk }
            } else {
                headBytes += 1
                // Refused as soon as the limit is reached by a byte that does not end the head,
                // so a head of exactly the limit passes and a longer one is never buffered.
                if headBytes >= limits.maxHeadBytes && !(headBytes == limits.maxHeadBytes && state == .headEndLF && b == LF) {
                    return .headTooLarge
                }
            }
        case .chunkSize, .chunkExtension, .chunkSizeLF:
            lineBytes += 1
            if lineBytes > limits.maxChunkLineBytes { return .badChunk }
        default:
            break
        }
        switch state {
        case .start:
            if b == CR && headBytes == 1 {
                // One empty line before a request line is ignored (RFC 9112 §2.2).
                state = .leadingLF
                lineBytes = 0
                return nil
            }
            guard isTokenChar(b) else { return .badRequestLine }
            if capturesFields { head.method.append(b) }
            state = .method
        case .leadingLF:
            guard b == LF else { return .badRequestLine }
            state = .start
        case .method:
            if b == SP {
                state = .target
            } else {
                guard isTokenChar(b) else { return .badRequestLine }
                if capturesFields { head.method.append(b) }
            }
        case .target:
            if b == SP {
                guard versionIndex == 1 else { return .badRequestLine }  // an empty target
                versionIndex = 0
                state = .version
            } else {
                guard b > SP && b < 0x7F else { return .badRequestLine }
                versionIndex = 1  // marks the target non-empty
                if capturesFields { head.target.append(b) }
            }
        case .version:
            // "HTTP/" DIGIT "." DIGIT, then CR.
            switch versionIndex {
            case 0...4:
                guard b == httpPrefix[versionIndex] else { return .badRequestLine }
            case 5, 7:
                guard b >= 0x30 && b <= 0x39 else { return .badRequestLine }
                if versionIndex == 5 && b != 0x31 { unsupportedVersion = true }  // refused at CR
                if versionIndex == 7 {
                    if b > 0x31 { unsupportedVersion = true }
                    head.minorVersion = Int(b - 0x30)
                }
            case 6:
                guard b == 0x2E else { return .badRequestLine }
            default:
                guard b == CR else { return .badRequestLine }
                if unsupportedVersion { return .unsupportedVersion }
                state = .requestLineLF
            }
            versionIndex += 1
        case .requestLineLF:
            guard b == LF else { return .badRequestLine }
            head.keepAlive = head.minorVersion == 1
            state = .lineStart
        case .lineStart:
            if b == CR {
                state = .headEndLF
            } else if b == SP || b == HTAB {
                return inTrailers ? .badChunk : .obsoleteLineFolding
            } else {
                guard isTokenChar(b) else { return inTrailers ? .badChunk : .badHeaderName }
                if inTrailers {
                    // Trailer fields are counted, not interpreted.
                    trailerCount += 1
                    if trailerCount > limits.maxHeaderCount { return .tooManyHeaders }
                } else {
                    head.headerCount += 1
                    if head.headerCount > limits.maxHeaderCount { return .tooManyHeaders }
                }
                candidates = inTrailers ? 0 : 0b1111
                nameLength = 0
                if capturesFields {
                    nameBytes.removeAll(keepingCapacity: true)
                }
                matchName(b)
                state = .name
            }
        case .name:
            if b == COLON {
                knownField = -1
                for k in 0..<Self.known.count
                where candidates & (1 << k) != 0 && Self.known[k].utf8CodeUnitCount == nameLength {
                    knownField = k
                }
                valueBytes.removeAll(keepingCapacity: true)
                state = .value
            } else {
                guard isTokenChar(b) else { return inTrailers ? .badChunk : .badHeaderName }
                matchName(b)
            }
        case .value:
            if b == CR {
                state = .valueLF
            } else {
                guard b == HTAB || (b >= SP && b != 0x7F) else { return inTrailers ? .badChunk : .badHeaderValue }
                if knownField >= 0 || capturesFields { valueBytes.append(b) }
            }
        case .valueLF:
            guard b == LF else { return inTrailers ? .badChunk : .badHeaderValue }
            if let failure = finishField() { return failure }
            state = .lineStart
        case .headEndLF:
            guard b == LF else { return inTrailers ? .badChunk : .badHeaderName }
            state = inTrailers ? .end : .headEnd
        case .chunkSize:
            if let digit = hexValue(b) {
                chunkDigits += 1
                remaining = remaining << 4 | digit
                // Checked per digit, so the size cannot overflow (the limit is at most 2^40).
                guard bodyTotal + remaining <= limits.maxBodyBytes else { return .bodyTooLarge }
            } else {
                guard chunkDigits > 0 else { return .badChunk }
                if b == CR {
                    state = .chunkSizeLF
                } else if b == SEMICOLON || b == SP || b == HTAB {
                    sawSemicolon = b == SEMICOLON
                    state = .chunkExtension
                } else {
                    return .badChunk
                }
            }
        case .chunkExtension:
            // BWS ";" name ["=" value] ...: any visible bytes, spaces and tabs up to CRLF
            // (extensions are ignored; their length is bounded by maxChunkLineBytes).
            if b == CR {
                guard sawSemicolon else { return .badChunk }  // whitespace after the size, no extension
                state = .chunkSizeLF
            } else if !sawSemicolon {
                // Only whitespace may come between the size and the first ';'.
                if b == SEMICOLON { sawSemicolon = true } else if b != SP && b != HTAB { return .badChunk }
            } else {
                guard b == HTAB || (b >= SP && b != 0x7F) else { return .badChunk }
            }
        case .chunkSizeLF:
            guard b == LF else { return .badChunk }
            bodyTotal += remaining
            guard bodyTotal <= limits.maxBodyBytes else { return .bodyTooLarge }
            lineBytes = 0
            chunkDigits = 0
            if remaining == 0 {
                // The last chunk: the trailer section follows.
                inTrailers = true
                trailerBytes = 0
                trailerCount = 0
                state = .lineStart
            } else {
                state = .chunkData
            }
        case .chunkDataCR:
            guard b == CR else { return .badChunk }
            state = .chunkDataLF
        case .chunkDataLF:
            guard b == LF else { return .badChunk }
            state = .chunkSize
        case .headEnd, .end, .failed, .bodyLength, .chunkData:
            break  // handled by parse
        }
        return nil
    }

    private var trailerCount = 0
    private var unsupportedVersion = false
    private var sawSemicolon = false

    /// Narrows the known names the current field name may be to those with `b` at its position.
    @inline(__always)
    private mutating func matchName(_ b: UInt8) {
        if capturesFields { nameBytes.append(b) }
        if candidates != 0 {
            let lowered = lower(b)
            for k in 0..<Self.known.count where candidates & (1 << k) != 0 {
                let name = Self.known[k]
                if nameLength >= name.utf8CodeUnitCount || name.utf8Start[nameLength] != lowered {
                    candidates &= ~(1 << k)
                }
            }
        }
        nameLength += 1
    }

    /// Interprets a completed field line's value (known fields only).
    private mutating func finishField() -> HTTPParseError? {
        if capturesFields && !inTrailers {
            head.fields.append(HTTPField(name: nameBytes, value: Array(trimmed(valueBytes[...]))))
        }
        guard !inTrailers else { return nil }
        let value = trimmed(valueBytes[...])
        switch knownField {
        case Self.contentLength:
            // A list of identical values is one value (RFC 9110 §8.6); anything else is refused.
            var any = false
            for element in value.split(separator: COMMA, omittingEmptySubsequences: false) {
                let digits = trimmed(element)
                guard !digits.isEmpty else { return .badContentLength }
                var length = 0
                for d in digits {
                    guard d >= 0x30 && d <= 0x39 else { return .badContentLength }
                    // Saturate: anything this large is over the limit anyway.
                    length = length > (1 << 50) ? length : length * 10 + Int(d - 0x30)
                }
                if let previous = contentLength, previous != length { return .badContentLength }
                contentLength = length
                any = true
            }
            if !any { return .badContentLength }
        case Self.transferEncoding:
            sawTransferEncoding = true
            for element in value.split(separator: COMMA, omittingEmptySubsequences: true) {
                let coding = trimmed(element)
                if coding.isEmpty { continue }
                if chunkedLast { return .badTransferEncoding }  // a coding after chunked
                if equalsIgnoringCase(coding, "chunked") {
                    chunkedCount += 1
                    chunkedLast = true
                } else {
                    otherCoding = true
                }
            }
        case Self.connection:
            for element in value.split(separator: COMMA, omittingEmptySubsequences: true) {
                let option = trimmed(element)
                if equalsIgnoringCase(option, "close") { connectionClose = true }
                if equalsIgnoringCase(option, "keep-alive") { connectionKeepAlive = true }
            }
        case Self.expect:
            if equalsIgnoringCase(value, "100-continue") { head.expectsContinue = true }
        default:
            break
        }
        return nil
    }

    /// Applies the framing rules of RFC 9112 §6 to the completed head.
    private mutating func finishHead() -> HTTPParseError? {
        let http10 = head.minorVersion == 0
        head.keepAlive = !connectionClose && (!http10 || connectionKeepAlive)
        if http10 { head.expectsContinue = false }
        if sawTransferEncoding {
            guard contentLength == nil else { return .contentLengthWithTransferEncoding }
            guard !http10 else { return .badTransferEncoding }
            guard chunkedLast, chunkedCount == 1 else { return .badTransferEncoding }
            guard !otherCoding else { return .unsupportedTransferEncoding }
            head.body = .chunked
        } else if let length = contentLength {
            guard length <= limits.maxBodyBytes else { return .bodyTooLarge }
            head.body = length == 0 ? .none : .length(length)
        } else {
            head.body = .none
        }
        if head.body == .none { head.expectsContinue = false }
        return nil
    }

    private mutating func resetForNextRequest() {
        state = .start
        head.minorVersion = 1
        head.keepAlive = true
        head.body = .none
        head.expectsContinue = false
        head.headerCount = 0
        if capturesFields {
            head.method = []
            head.target = []
            head.fields = []
        }
        lineBytes = 0
        headBytes = 0
        versionIndex = 0
        inTrailers = false
        contentLength = nil
        sawTransferEncoding = false
        chunkedLast = false
        chunkedCount = 0
        otherCoding = false
        connectionClose = false
        connectionKeepAlive = false
        remaining = 0
        bodyTotal = 0
        unsupportedVersion = false
    }
}

// MARK: Bytes

let CR: UInt8 = 13
let LF: UInt8 = 10
let SP: UInt8 = 32
let HTAB: UInt8 = 9
let COLON: UInt8 = 58
let COMMA: UInt8 = 44
let SEMICOLON: UInt8 = 59
let httpPrefix: [UInt8] = Array("HTTP/".utf8)

/// RFC 9110 token characters (methods, field names, codings).
@inline(__always) func isTokenChar(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true  // DIGIT, ALPHA
    case 0x21, 0x23...0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: true  // !#$%&'*+-.^_`|~
    default: false
    }
}

@inline(__always) func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

@inline(__always) func hexValue(_ b: UInt8) -> Int? {
    switch b {
    case 0x30...0x39: Int(b - 0x30)
    case 0x41...0x46: Int(b - 0x41 + 10)
    case 0x61...0x66: Int(b - 0x61 + 10)
    default: nil
    }
}

/// `bytes` without leading and trailing spaces and tabs.
func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
    var s = bytes.startIndex
    var e = bytes.endIndex
    while s < e && (bytes[s] == SP || bytes[s] == HTAB) { s += 1 }
    while e > s && (bytes[e - 1] == SP || bytes[e - 1] == HTAB) { e -= 1 }
    return bytes[s..<e]
}

/// Whether `bytes` equals the lowercase ASCII `name`, ignoring case.
func equalsIgnoringCase(_ bytes: ArraySlice<UInt8>, _ name: StaticString) -> Bool {
    guard bytes.count == name.utf8CodeUnitCount else { return false }
    let n = name.utf8Start
    var k = 0
    for b in bytes {
        if lower(b) != n[k] { return false }
        k += 1
    }
    return true
}
