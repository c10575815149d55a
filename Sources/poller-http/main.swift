// poller-http: a tiny keep-alive HTTP/1.1 "hello" server on PollerNet, for benchmarks beside
// Go's net/http and SwiftNIO's NIOHTTP1. An example, not a framework: it answers every
// request (any method, any path) with "Hello, World!", honours pipelining and
// "Connection: close", and ignores request bodies (benchmark clients send none).
//
//   poller-http [--host 127.0.0.1] [--port 0] [--backend epoll|io_uring|auto]
import Glibc
import Poller
import PollerNet

let response = Array(
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!".utf8)

struct Options {
    var host = "127.0.0.1"
    var port: UInt16 = 0
    var backend: BackendChoice = .auto
}

func parse() -> Options {
    var options = Options()
    var args = CommandLine.arguments.dropFirst()
    while let arg = args.popFirst() {
        guard let value = args.popFirst() else { usage() }
        switch arg {
        case "--host": options.host = value
        case "--port": options.port = UInt16(value) ?? { usage() }()
        case "--backend": options.backend = (try? BackendChoice(parsing: value)) ?? { usage() }()
        default: usage()
        }
    }
    return options
}

func usage() -> Never {
    print("usage: poller-http [--host H] [--port P] [--backend epoll|io_uring|auto]")
    exit(2)
}

/// Index just past the first "\r\n\r\n" at or after `start`, or nil.
func endOfHeaders(_ buffer: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Int? {
    var i = start
    while i + 3 < end {
        if buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 { return i + 4 }
        i += 1
    }
    return nil
}

/// Whether the request head in `buffer[start..<end]` asks to close the connection.
func asksToClose(_ buffer: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> Bool {
    let head = String(decoding: buffer[start..<end], as: UTF8.self).lowercased()
    return head.contains("\r\nconnection: close")
}

func serve(_ connection: Connection) async {
    // Connections end by close (peer, error or process exit), never by task cancellation.
    connection.observesTaskCancellation = false
    let capacity = 16384
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
    defer { buffer.deallocate() }
    var out: [UInt8] = []
    var used = 0
    while true {
        guard used < capacity else { return }  // a request head larger than 16 KiB: give up
        let n: Int
        do {
            n = try await connection.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[used...]))
        } catch {
            return
        }
        used += n
        var start = 0
        var close = false
        out.removeAll(keepingCapacity: true)
        while let end = endOfHeaders(UnsafeRawBufferPointer(buffer), from: start, to: used) {
            out.append(contentsOf: response)
            close = close || asksToClose(UnsafeRawBufferPointer(buffer), start, end)
            start = end
        }
        if start > 0 {
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[start..<used]))
            used -= start
        }
        if !out.isEmpty {
            do { try await connection.write(out) } catch { return }
        }
        if close { return }
    }
}

nonisolated func run() async {
    let options = parse()
    do {
        try TerminationSignal.install()
        let poller = try Poller(backend: options.backend)
        let listener = try TCPListener.listen(host: options.host, port: options.port, poller: poller)
        print("poller-http: listening on \(listener.localAddress) (backend \(poller.backendKind))")
        fflush(nil)
        let server = Task(executorPreference: poller.executor) {
            while true {
                do {
                    let connection = try await listener.accept()
                    Task(executorPreference: poller.executor) {
                        await serve(connection)
                        try? await connection.close()
                    }
                } catch let error as NetError {
                    guard case .tooManyOpenFiles = error else { return }
                    try? await Task.sleep(for: .milliseconds(10))  // out of fds: back off
                } catch {
                    return
                }
            }
        }
        // SIGINT/SIGTERM: stop accepting and exit 0 (open connections end with the process).
        try? await TerminationSignal.wait(poller: poller)
        try? await listener.close()
        await server.value
        poller.shutdown()
        exit(0)
    } catch {
        print("poller-http: \(error)")
        exit(1)
    }
}

await run()
