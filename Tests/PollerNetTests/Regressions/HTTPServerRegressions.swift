import Glibc
import Poller
import Testing

// Issue 15, item 5: poller-http parses requests in full (Sources/HTTPParsing). These tests run
// the real binary, like the hostile-client tests (ServerProcess, Client), on both backends.

extension PollerNetTests {
    @Suite("Regressions: poller-http's HTTP/1.1")
    struct HTTPServerRegressions {
        @Test("pipelined requests in one write are answered in order", arguments: BackendKind.allCases)
        func pipelining(backend: BackendKind) throws {
            try withHTTPClient(backend, []) { client in
                // Three requests whose answers differ: plain, HTTP/1.0 keep-alive, close; a body between.
                client.sendAllowingClose(
                    Array(
                        ("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                            + "POST /2 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nbody"
                            + "GET /3 HTTP/1.1\r\nConnection: close\r\n\r\n").utf8))
                let reply = String(decoding: client.readUntilClosed(), as: UTF8.self)
                let answers = reply.split(separator: "HTTP/1.1 ", omittingEmptySubsequences: true)
                #expect(answers.count == 3, "reply: \(reply)")
                guard answers.count == 3 else { return }
                #expect(answers[0].hasPrefix("200 OK") && !answers[0].contains("Connection:"), "\(answers[0])")
                #expect(answers[1].hasPrefix("200 OK") && answers[1].contains("Connection: keep-alive"), "\(answers[1])")
                #expect(answers[2].hasPrefix("200 OK") && answers[2].contains("Connection: close"), "\(answers[2])")
            }
        }

        @Test(
            "a chunked upload sent in pieces is read and answered and the connection stays open",
            arguments: BackendKind.allCases)
        func chunkedUpload(backend: BackendKind) throws {
            try withHTTPClient(backend, ["--max-body-bytes", "4096"]) { client in
                // The chunk data holds a request's bytes: it must be discarded, not answered.
                let upload =
                    "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + "13;name=x\r\nGET /x HTTP/1.1\r\n\r\n\r\n" + "400\r\n" + String(repeating: "z", count: 1024) + "\r\n"
                    + "0\r\nX-Trailer: done\r\n\r\n"
                for piece in chunks(Array(upload.utf8), size: 97) {
                    client.sendAllowingClose(piece)
                    usleep(1000)
                }
                #expect(String(decoding: client.receive(count: 15, waitingMs: 2000), as: UTF8.self) == "HTTP/1.1 200 OK")
                client.sendAllowingClose(Array("GET / HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))
                let rest = String(decoding: client.readUntilClosed(), as: UTF8.self)
                #expect(rest.ranges(of: "HTTP/1.1 200 OK").count == 1 && rest.contains("Connection: close"), "reply: \(rest)")
            }
        }

        @Test("Expect: 100-continue is answered with 100 Continue before the body is sent", arguments: BackendKind.allCases)
        func expectContinue(backend: BackendKind) throws {
            try withHTTPClient(backend, []) { client in
                client.sendAllowingClose(Array("PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n".utf8))
                let interim = "HTTP/1.1 100 Continue\r\n\r\n"
                #expect(String(decoding: client.receive(count: interim.utf8.count, waitingMs: 2000), as: UTF8.self) == interim)
                #expect(!client.hasData(), "the final answer came before the body")
                client.sendAllowingClose(Array("hello".utf8))
                #expect(String(decoding: client.receive(count: 15, waitingMs: 2000), as: UTF8.self) == "HTTP/1.1 200 OK")
            }
        }

        @Test(
            "over-limit requests get 431, 414 or 413 and conflicting framing 400, then close",
            arguments: BackendKind.allCases)
        func limitAnswers(backend: BackendKind) throws {
            let server = try ServerProcess.start(.http, backend: backend, ["--max-header-bytes", "2048", "--max-body-bytes", "100"])
            defer { server.stop() }
            let next = "GET / HTTP/1.1\r\n\r\n"
            let cases: [(String, String)] = [
                ("GET / HTTP/1.1\r\nX-Big: \(String(repeating: "b", count: 3000))\r\n\r\n", "431"),
                ("GET / HTTP/1.1\r\n" + String(repeating: "X: y\r\n", count: 101) + "\r\n", "431"),
                ("GET /\(String(repeating: "p", count: 2100)) HTTP/1.1\r\n\r\n", "414"),
                ("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", "413"),
                ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n\(String(repeating: "c", count: 64))\r\n40\r\n", "413"),
                ("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
            ]
            for (request, status) in cases {
                let client = try Client(port: server.port)
                defer { client.close() }
                client.sendAllowingClose(Array((request + next).utf8))
                let answer = String(decoding: client.readUntilClosed(), as: UTF8.self)
                #expect(
                    answer.hasPrefix("HTTP/1.1 \(status) ") && answer.contains("Connection: close") && !answer.contains("200 OK"),
                    "\(request.prefix(60).debugDescription): \(answer)")
            }
        }
    }
}

/// Runs `body` with a client connected to a poller-http started with `backend` and `arguments`.
private func withHTTPClient(_ backend: BackendKind, _ arguments: [String], _ body: (Client) throws -> Void) throws {
    let server = try ServerProcess.start(.http, backend: backend, arguments)
    defer { server.stop() }
    let client = try Client(port: server.port)
    defer { client.close() }
    try body(client)
}
