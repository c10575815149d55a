import HTTPParsing
import Testing

// Issue 15, item 5: poller-http's streaming HTTP/1.1 request parser (Sources/HTTPParsing).
// Unit tests, one per rule of RFC 9112 it enforces, and a seeded fuzz test. The parser does
// no I/O, so these tests have no backend to vary.

extension PollerNetTests {
    @Suite("HTTP parser")
    struct HTTPParserTests {
        // MARK: Request line

        @Test("a GET request parses into its method, target, version and fields")
        func simpleRequest() {
            let result = parseAll("GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept:  */* \r\n\r\n")
            #expect(result.error == nil && !result.midRequest)
            #expect(result.requests.count == 1)
            let head = result.requests[0].head
            #expect(String(decoding: head.method, as: UTF8.self) == "GET")
            #expect(String(decoding: head.target, as: UTF8.self) == "/index.html?q=1")
            #expect(head.minorVersion == 1 && head.keepAlive && head.body == .none && head.headerCount == 2)
            #expect(head.fields == [field("Host", "example.com"), field("Accept", "*/*")])
        }

        @Test("HTTP/1.0 and HTTP/1.1 are accepted and other versions are refused with 505")
        func versions() {
            #expect(parseAll("GET / HTTP/1.0\r\n\r\n").requests.first?.head.minorVersion == 0)
            #expect(parseAll("GET / HTTP/1.1\r\n\r\n").requests.first?.head.minorVersion == 1)
            for version in ["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "HTTP/3.1"] {
                #expect(parseAll("GET / \(version)\r\n\r\n").error == .unsupportedVersion, "\(version)")
            }
            #expect(HTTPParseError.unsupportedVersion.status == 505)
        }

        @Test(
            "a malformed request line is refused with 400",
            arguments: [
                "GET  / HTTP/1.1", "GET /a b HTTP/1.1", "GET / HTTP/1.1 ", "G(T / HTTP/1.1", " GET / HTTP/1.1",
                "GET / http/1.1", "GET / HTTP/1", "GET / HTTP/1.x", "GET\t/ HTTP/1.1", "GET /\u{7F} HTTP/1.1", "GET /",
                "GET / HTTP/1.1\n",
            ])
        func malformedRequestLine(line: String) {
            let result = parseAll(line + "\r\n\r\n")
            #expect(result.error == .badRequestLine && result.requests.isEmpty, "\(line.debugDescription): \(result)")
            #expect(HTTPParseError.badRequestLine.status == 400)
        }

        @Test("bare CRLFs are refused, though one empty line before a request is ignored")
        func emptyLines() {
            #expect(parseAll("\r\nGET / HTTP/1.1\r\n\r\n").requests.count == 1)
            #expect(parseAll("\r\n\r\nGET / HTTP/1.1\r\n\r\n").error == .badRequestLine)
            #expect(parseAll("\r\n\r\n\r\n\r\n").error == .badRequestLine)
            #expect(parseAll("\n").error == .badRequestLine)
        }

        // MARK: Header fields

        @Test(
            "a field name must be a token with no whitespace before the colon",
            arguments: [
                "Host : a", "Ho st: a", "Host\t: a", ": a", "H(st: a", "Host", "Hóst: a",
            ])
        func badFieldNames(line: String) {
            let result = parseAll("GET / HTTP/1.1\r\n\(line)\r\n\r\n")
            #expect(result.error == .badHeaderName, "\(line.debugDescription): \(result)")
        }

        @Test("obsolete line folding is refused with 400")
        func obsoleteFolding() {
            #expect(parseAll("GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n").error == .obsoleteLineFolding)
            #expect(parseAll("GET / HTTP/1.1\r\nX-A: b\r\n\tc\r\n\r\n").error == .obsoleteLineFolding)
            #expect(parseAll("GET / HTTP/1.1\r\n Host: a\r\n\r\n").error == .obsoleteLineFolding)
            #expect(HTTPParseError.obsoleteLineFolding.status == 400)
        }

        @Test(
            "a control byte or bare CR or LF in a field value is refused with 400",
            arguments: [
                "X: a\u{0}b", "X: a\rb", "X: a\nb", "X: a\u{7F}", "X: a\u{1B}b",
            ])
        func controlBytesInValues(line: String) {
            #expect(parseAll("GET / HTTP/1.1\r\n\(line)\r\n\r\n").error == .badHeaderValue, "\(line.debugDescription)")
        }

        @Test("a field value keeps tabs, spaces inside and bytes above 0x7F and loses its surrounding whitespace")
        func fieldValues() {
            let bytes = Array("GET / HTTP/1.1\r\nX: \t a\tb c \t\r\nY:\r\nZ: ".utf8) + [0xC3, 0xA9] + Array("\r\n\r\n".utf8)
            let result = parse(bytes)
            #expect(
                result.requests.first?.head.fields == [
                    field("X", "a\tb c"), field("Y", ""), HTTPField(name: Array("Z".utf8), value: [0xC3, 0xA9]),
                ])
        }

        // MARK: Body framing (RFC 9112 §6)

        @Test("a Content-Length body is delivered whole and the next request follows it")
        func contentLengthBody() {
            let result = parseAll("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\nGET / HTTP/1.1GET /x HTTP/1.1\r\n\r\n")
            #expect(result.requests.count == 2 && result.error == nil, "\(result)")
            #expect(result.requests[0].head.body == .length(11))
            #expect(result.requests[0].body == Array("GET / HTTP/".utf8))
            #expect(String(decoding: result.requests[1].head.method, as: UTF8.self) == "1.1GET")
            #expect(parseAll("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").requests.first?.head.body == HTTPBodyFraming.none)
        }

        @Test("Content-Length and Transfer-Encoding together are refused with 400")
        func contentLengthWithTransferEncoding() {
            for head in [
                "Content-Length: 5\r\nTransfer-Encoding: chunked", "Transfer-Encoding: chunked\r\nContent-Length: 5",
                "Content-Length: 0\r\nTransfer-Encoding: gzip",
            ] {
                #expect(parseAll("POST / HTTP/1.1\r\n\(head)\r\n\r\n0\r\n\r\n").error == .contentLengthWithTransferEncoding, "\(head)")
            }
        }

        @Test("differing Content-Length values are refused with 400 and identical ones are one length")
        func multipleContentLengths() {
            #expect(parseAll("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").error == .badContentLength)
            #expect(parseAll("POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\nab").error == .badContentLength)
            let same = parseAll("POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2, 2\r\n\r\nab")
            #expect(same.error == nil && same.requests.first?.body == Array("ab".utf8))
        }

        @Test(
            "a Content-Length that is not a decimal number is refused with 400",
            arguments: [
                "", "-1", "+1", "1.0", "0x10", "1 2", "1,", "abc",
            ])
        func badContentLength(value: String) {
            #expect(parseAll("POST / HTTP/1.1\r\nContent-Length: \(value)\r\n\r\n").error == .badContentLength, "\(value)")
        }

        @Test("a chunked body is decoded with its chunk extensions and trailer fields")
        func chunkedBody() {
            let result = parseAll(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + "5\r\nhello\r\nA;name=value;flag\r\n, world!!!\r\n1 ; x=\"q\"\r\n.\r\n0\r\nX-Checksum: 1\r\nX-B: 2\r\n\r\n"
                    + "GET / HTTP/1.1\r\n\r\n")
            #expect(result.error == nil && result.requests.count == 2, "\(result)")
            #expect(result.requests[0].head.body == .chunked)
            #expect(String(decoding: result.requests[0].body, as: UTF8.self) == "hello, world!!!.")
            // Trailers are not header fields.
            #expect(result.requests[0].head.fields == [field("Transfer-Encoding", "chunked")])
            // Upper-case hex and a coding named in any case.
            let upper = parseAll(
                "POST / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n1F\r\n" + String(repeating: "x", count: 31)
                    + "\r\n0\r\n\r\n")
            #expect(upper.requests.first?.body.count == 31)
        }

        @Test(
            "a malformed chunk is refused with 400",
            arguments: [
                "x\r\n", "\r\n", "5\r\nhelloX\r\n", "5\r\nhello\r0\r\n\r\n", "5 \r\nhello\r\n", "5;\u{1}\r\n", "-1\r\n",
                "5\nhello\r\n", "0\r\nX : y\r\n\r\n", "0\r\n folded\r\n\r\n", "0\r\nX: y\n\r\n",
            ])
        func malformedChunks(body: String) {
            let result = parseAll("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
            #expect(result.error == .badChunk, "\(body.debugDescription): \(result)")
            #expect(HTTPParseError.badChunk.status == 400)
        }

        @Test(
            "Transfer-Encoding that does not end in chunked is refused with 400",
            arguments: [
                "gzip", "chunked, gzip", "chunked, chunked", "chunked\r\nTransfer-Encoding: chunked", "", " , ",
            ])
        func chunkedNotLast(codings: String) {
            let result = parseAll("POST / HTTP/1.1\r\nTransfer-Encoding: \(codings)\r\n\r\n0\r\n\r\n")
            #expect(result.error == .badTransferEncoding, "\(codings.debugDescription): \(result)")
        }

        @Test("a transfer coding other than chunked before the final chunked is refused with 501")
        func unsupportedCoding() {
            for codings in ["gzip, chunked", "deflate\r\nTransfer-Encoding: chunked"] {
                #expect(parseAll("POST / HTTP/1.1\r\nTransfer-Encoding: \(codings)\r\n\r\n0\r\n\r\n").error == .unsupportedTransferEncoding)
            }
            #expect(HTTPParseError.unsupportedTransferEncoding.status == 501)
        }

        @Test("Transfer-Encoding in an HTTP/1.0 request is refused with 400")
        func transferEncodingInHTTP10() {
            #expect(parseAll("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").error == .badTransferEncoding)
        }

        // MARK: Connections

        @Test("HTTP/1.1 keeps the connection alive unless Connection: close")
        func keepAlive11() {
            #expect(parseAll("GET / HTTP/1.1\r\n\r\n").requests.first?.head.keepAlive == true)
            #expect(parseAll("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").requests.first?.head.keepAlive == false)
            #expect(parseAll("GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n").requests.first?.head.keepAlive == false)
            #expect(parseAll("GET / HTTP/1.1\r\nConnection: closed\r\n\r\n").requests.first?.head.keepAlive == true)
        }

        @Test("HTTP/1.0 closes the connection unless Connection: keep-alive")
        func keepAlive10() {
            #expect(parseAll("GET / HTTP/1.0\r\n\r\n").requests.first?.head.keepAlive == false)
            #expect(parseAll("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").requests.first?.head.keepAlive == true)
            #expect(parseAll("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").requests.first?.head.keepAlive == false)
        }

        @Test("pipelined requests in one buffer are parsed in order")
        func pipelining() {
            let result = parseAll(
                "GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                    + "PUT /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\nGET /4 HTTP/1.0\r\n\r\n")
            #expect(result.error == nil && !result.midRequest)
            #expect(result.requests.map { String(decoding: $0.head.target, as: UTF8.self) } == ["/1", "/2", "/3", "/4"])
            #expect(result.requests.map(\.body) == [[], Array("abc".utf8), Array("de".utf8), []])
        }

        @Test("Expect: 100-continue is reported for an HTTP/1.1 request with a body")
        func expectContinue() {
            #expect(
                parseAll("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx").requests.first?.head.expectsContinue
                    == true)
            #expect(
                parseAll("POST / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                    .requests.first?.head.expectsContinue == true)
            // No body, HTTP/1.0, or another expectation: nothing to continue.
            #expect(parseAll("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").requests.first?.head.expectsContinue == false)
            #expect(
                parseAll("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx").requests.first?.head.expectsContinue
                    == false)
            #expect(
                parseAll("POST / HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx").requests.first?.head.expectsContinue == false)
            // The head is reported before any body byte arrives, so the answer can be sent first.
            var parser = HTTPRequestParser()
            let head = Array("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n".utf8)
            let (event, consumed) = head.withUnsafeBytes { parser.parse($0) }
            #expect(consumed == head.count)
            guard case .head(let parsed) = event else {
                Issue.record("event \(event)")
                return
            }
            #expect(parsed.expectsContinue)
        }

        // MARK: Limits

        @Test("a request line over the limit is refused with 414")
        func requestLineTooLong() {
            let limits = HTTPLimits(maxRequestLineBytes: 64, maxHeadBytes: 1024)
            let fits = "GET /" + String(repeating: "a", count: 64 - 14) + " HTTP/1.1"
            #expect(fits.utf8.count == 64)
            #expect(parseAll(fits + "\r\n\r\n", limits: limits).requests.count == 1)
            let result = parseAll("GET /" + String(repeating: "a", count: 64 - 13) + " HTTP/1.1\r\n\r\n", limits: limits)
            #expect(result.error == .requestLineTooLong)
            #expect(HTTPParseError.requestLineTooLong.status == 414)
            // Refused as soon as the line is too long, without waiting for its end.
            #expect(parseAll("GET /" + String(repeating: "a", count: 100), limits: limits).error == .requestLineTooLong)
        }

        @Test("a head over the limit is refused with 431")
        func headTooLarge() {
            let limits = HTTPLimits(maxRequestLineBytes: 64, maxHeadBytes: 256)
            let prefix = "GET / HTTP/1.1\r\nX: "
            let fits = prefix + String(repeating: "v", count: 256 - prefix.utf8.count - 4) + "\r\n\r\n"
            #expect(fits.utf8.count == 256)
            #expect(parseAll(fits, limits: limits).requests.count == 1)
            #expect(
                parseAll(prefix + String(repeating: "v", count: 256 - prefix.utf8.count - 3) + "\r\n\r\n", limits: limits).error
                    == .headTooLarge)
            #expect(parseAll(prefix + String(repeating: "v", count: 1000), limits: limits).error == .headTooLarge)
            // Refused at the byte that reaches the limit without ending the head, not later.
            var parser = HTTPRequestParser(limits: limits)
            let full = Array((prefix + String(repeating: "v", count: 256 - prefix.utf8.count)).utf8)
            #expect(full.count == 256)
            #expect(full.withUnsafeBytes { parser.parse(UnsafeRawBufferPointer(rebasing: $0[..<255])) }.event == .needMore)
            let last = full.withUnsafeBytes { parser.parse(UnsafeRawBufferPointer(rebasing: $0[255...])) }
            #expect(last.event == .error(.headTooLarge) && last.consumed == 1)
            #expect(HTTPParseError.headTooLarge.status == 431)
        }

        @Test("more header fields than the limit are refused with 431")
        func tooManyFields() {
            let limits = HTTPLimits(maxHeaderCount: 10)
            #expect(parseAll("GET / HTTP/1.1\r\n" + String(repeating: "X: y\r\n", count: 10) + "\r\n", limits: limits).requests.count == 1)
            #expect(
                parseAll("GET / HTTP/1.1\r\n" + String(repeating: "X: y\r\n", count: 11) + "\r\n", limits: limits).error
                    == .tooManyHeaders)
            #expect(
                parseAll(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + String(repeating: "X: y\r\n", count: 11)
                        + "\r\n", limits: limits
                ).error == .tooManyHeaders)
            #expect(HTTPParseError.tooManyHeaders.status == 431)
        }

        @Test("a body over the limit is refused with 413, by Content-Length or by the sum of its chunks")
        func bodyTooLarge() {
            let limits = HTTPLimits(maxBodyBytes: 10)
            #expect(parseAll("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", limits: limits).requests.count == 1)
            #expect(parseAll("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", limits: limits).error == .bodyTooLarge)
            #expect(parseAll("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", limits: limits).error == .bodyTooLarge)
            let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n"
            #expect(parseAll(chunked + "5\r\n56789\r\n0\r\n\r\n", limits: limits).requests.count == 1)
            #expect(parseAll(chunked + "6\r\n", limits: limits).error == .bodyTooLarge)
            #expect(parseAll(chunked + "FFFFFFFFFFFFFFFFFFFFFFFF\r\n", limits: limits).error == .bodyTooLarge)
            // Leading zeros are not a large size.
            #expect(parseAll(chunked + "0000000000000000000000005\r\n56789\r\n0\r\n\r\n", limits: limits).requests.count == 1)
            #expect(HTTPParseError.bodyTooLarge.status == 413)
        }

        @Test("after an error the parser stays failed and consumes nothing")
        func staysFailed() {
            var parser = HTTPRequestParser()
            let bad = Array("GET / HTTP/1.1\r\nA : b\r\n\r\nGET / HTTP/1.1\r\n\r\n".utf8)
            let first = bad.withUnsafeBytes { parser.parse($0) }
            #expect(first.event == .error(.badHeaderName))
            let again = bad.withUnsafeBytes { parser.parse($0) }
            #expect(again.event == .error(.badHeaderName) && again.consumed == 0)
        }

        @Test("without captured fields a head carries its meaning but no bytes")
        func noCapture() {
            let result = parse(Array("POST /x HTTP/1.1\r\nContent-Length: 2\r\nA: b\r\n\r\nab".utf8), capturesFields: false)
            let head = result.requests.first?.head
            #expect(head?.body == .length(2) && head?.headerCount == 2)
            #expect(head?.method == [] && head?.target == [] && head?.fields == [])
        }

        // MARK: Fuzzing

        @Test("random and mutated requests fed at random split points end as requests or a clear error, whatever the split")
        func fuzz() {
            let seed = UInt64.random(in: 0...UInt64.max)
            var random = SeededGenerator(seed: seed)
            let statuses: Set<Int> = [400, 413, 414, 431, 501, 505]
            let limits = HTTPLimits(maxRequestLineBytes: 256, maxHeadBytes: 1024, maxHeaderCount: 12, maxBodyBytes: 512)
            for round in 0..<2000 {
                var (bytes, expected) = randomRequests(&random)
                let mutated = round % 2 == 1
                if mutated { mutate(&bytes, &random) }
                let whole = parse(bytes, limits: limits)
                let split = parse(bytes, splits: randomSplits(bytes.count, &random), limits: limits)
                if !mutated {
                    #expect(
                        whole.error == nil && !whole.midRequest && whole.requests == expected,
                        "seed \(seed), round \(round): \(String(decoding: bytes, as: UTF8.self).debugDescription): \(whole)")
                }
                #expect(
                    split == whole,
                    "seed \(seed), round \(round): split parse differs for \(String(decoding: bytes, as: UTF8.self).debugDescription)")
                if let error = whole.error { #expect(statuses.contains(error.status), "seed \(seed): \(error)") }
                if split != whole || (!mutated && whole.requests != expected) { return }  // one report per seed
            }
        }

        @Test("a valid request split at every point parses the same as whole")
        func everySplit() {
            let request = Array(
                ("\r\nPOST /upload?x=1 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + "3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").utf8)
            let whole = parse(request)
            #expect(whole.requests.count == 2 && whole.error == nil)
            for a in 0...request.count {
                #expect(parse(request, splits: [a]) == whole, "split at \(a)")
                for b in stride(from: a, through: request.count, by: 7) {
                    #expect(parse(request, splits: [a, b]) == whole, "split at \(a), \(b)")
                }
            }
        }
    }
}

// MARK: - Helpers

/// What a byte stream parsed into.
struct ParseResult: Equatable, CustomStringConvertible {
    struct Request: Equatable {
        var head: HTTPRequestHead
        var body: [UInt8]
    }
    var requests: [Request] = []
    var error: HTTPParseError?
    /// Whether the stream ended inside a request.
    var midRequest = false

    var description: String { "\(requests.count) requests, error \(String(describing: error)), mid-request \(midRequest)" }
}

func field(_ name: String, _ value: String) -> HTTPField { HTTPField(name: Array(name.utf8), value: Array(value.utf8)) }

func parseAll(_ text: String, limits: HTTPLimits = HTTPLimits()) -> ParseResult { parse(Array(text.utf8), limits: limits) }

/// Feeds `bytes` to one parser in pieces cut at `splits`, checking the event protocol.
func parse(_ bytes: [UInt8], splits: [Int] = [], limits: HTTPLimits = HTTPLimits(), capturesFields: Bool = true) -> ParseResult {
    var parser = HTTPRequestParser(limits: limits, capturesFields: capturesFields)
    var result = ParseResult()
    var current: ParseResult.Request?
    let cuts = [0] + splits.sorted().filter { $0 > 0 && $0 < bytes.count } + [bytes.count]
    for (from, to) in zip(cuts, cuts.dropFirst()) {
        var offset = from
        while true {
            let (event, consumed) = bytes[offset..<to].withUnsafeBytes { parser.parse($0) }
            precondition(consumed >= 0 && consumed <= to - offset, "consumed \(consumed) of \(to - offset)")
            switch event {
            case .needMore:
                precondition(consumed == to - offset, "needMore left bytes")
            case .head(let head):
                precondition(current == nil, "a head inside a request")
                current = .init(head: head, body: [])
            case .body(let range):
                precondition(current != nil && range.lowerBound >= 0 && range.upperBound <= consumed && !range.isEmpty)
                current!.body += bytes[(offset + range.lowerBound)..<(offset + range.upperBound)]
            case .end:
                result.requests.append(current!)
                current = nil
            case .error(let error):
                result.error = error
                return result
            }
            offset += consumed
            if case .needMore = event { break }
        }
    }
    result.midRequest = !parser.isBetweenRequests
    return result
}

/// A deterministic generator (xorshift64*), so a failing seed can be replayed.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed | 1 }  // never zero
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

private let tokenBytes = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~".utf8)

private func randomToken(_ random: inout SeededGenerator, _ lengths: ClosedRange<Int>) -> [UInt8] {
    (0..<Int.random(in: lengths, using: &random)).map { _ in tokenBytes.randomElement(using: &random)! }
}

/// One to three valid requests (within the fuzz test's limits) and what they parse into.
private func randomRequests(_ random: inout SeededGenerator) -> ([UInt8], [ParseResult.Request]) {
    var bytes: [UInt8] = []
    var requests: [ParseResult.Request] = []
    for _ in 0..<Int.random(in: 1...3, using: &random) {
        var head = HTTPRequestHead()
        head.method = ["GET", "POST", "PUT", "DELETE", "PATCH", "X-CUSTOM"].randomElement(using: &random).map { Array($0.utf8) }!
        head.target =
            Array("/".utf8) + (0..<Int.random(in: 0...40, using: &random)).map { _ in UInt8.random(in: 0x21...0x7E, using: &random) }
        head.minorVersion = Int.random(in: 0...1, using: &random)
        var body: [UInt8] = []
        var close = false
        var keepAlive10 = false
        var framing: [UInt8] = []
        var fields: [HTTPField] = []
        for _ in 0..<Int.random(in: 0...5, using: &random) {
            let value = (0..<Int.random(in: 0...30, using: &random)).map { _ in UInt8.random(in: 0x21...0xFF, using: &random) }
            fields.append(HTTPField(name: Array("X-".utf8) + randomToken(&random, 1...10), value: value.filter { $0 != 0x7F }))
        }
        if Bool.random(using: &random) {
            let option = ["close", "keep-alive", "Upgrade"].randomElement(using: &random)!
            fields.append(field("Connection", option))
            close = option == "close"
            keepAlive10 = option == "keep-alive"
        }
        body = (0..<Int.random(in: 0...100, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
        let chunked = head.minorVersion == 1 && Bool.random(using: &random)
        if chunked {
            fields.append(field("Transfer-Encoding", "chunked"))
            var rest = body[...]
            while !rest.isEmpty {
                let size = Int.random(in: 1...rest.count, using: &random)
                framing += Array(String(size, radix: 16, uppercase: Bool.random(using: &random)).utf8)
                if Bool.random(using: &random) { framing += Array(";ext=\(size)".utf8) }
                framing += Array("\r\n".utf8) + rest.prefix(size) + Array("\r\n".utf8)
                rest = rest.dropFirst(size)
            }
            framing += Array("0\r\n".utf8)
            if Bool.random(using: &random) { framing += Array("Trailer-A: b\r\n".utf8) }
            framing += Array("\r\n".utf8)
            head.body = .chunked
        } else if !body.isEmpty || Bool.random(using: &random) {
            fields.append(field("Content-Length", "\(body.count)"))
            framing = body
            head.body = body.isEmpty ? .none : .length(body.count)
        } else {
            head.body = .none
        }
        if head.body != .none && head.minorVersion == 1 && Bool.random(using: &random) {
            fields.append(field("Expect", "100-continue"))
            head.expectsContinue = true
        }
        fields.shuffle(using: &random)
        head.fields = fields
        head.headerCount = fields.count
        head.keepAlive = !close && (head.minorVersion == 1 || keepAlive10)
        bytes += head.method + [SPACE] + head.target + Array(" HTTP/1.\(head.minorVersion)\r\n".utf8)
        for f in fields { bytes += f.name + Array(":".utf8) + (Bool.random(using: &random) ? [SPACE] : []) + f.value + Array("\r\n".utf8) }
        bytes += Array("\r\n".utf8) + framing
        requests.append(.init(head: head, body: body))
    }
    return (bytes, requests)
}

private let SPACE: UInt8 = 0x20

/// One to three random edits: a byte changed, inserted or deleted, a run duplicated, CR/LF/NUL/SP injected.
private func mutate(_ bytes: inout [UInt8], _ random: inout SeededGenerator) {
    for _ in 0..<Int.random(in: 1...3, using: &random) {
        let at = Int.random(in: 0...bytes.count, using: &random)
        let special: [UInt8] = [13, 10, 0, 0x20, 0x09, 0x3A, 0x3B, 0x2C, 0x30, 0x46, 0x7F]
        let byte = Bool.random(using: &random) ? special.randomElement(using: &random)! : UInt8.random(in: 0...255, using: &random)
        switch Int.random(in: 0...3, using: &random) {
        case 0 where at < bytes.count: bytes[at] = byte
        case 1: bytes.insert(byte, at: at)
        case 2 where at < bytes.count: bytes.remove(at: at)
        default:
            let end = min(bytes.count, at + Int.random(in: 1...20, using: &random))
            bytes.insert(contentsOf: bytes[at..<end], at: at)
        }
    }
}

private func randomSplits(_ count: Int, _ random: inout SeededGenerator) -> [Int] {
    guard count > 1 else { return [] }
    return (0..<Int.random(in: 1...8, using: &random)).map { _ in Int.random(in: 1..<count, using: &random) }
}
