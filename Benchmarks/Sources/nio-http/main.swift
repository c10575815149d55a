// nio-http: SwiftNIO HTTP/1.1 keep-alive "hello" server on ONE event loop.
//
//   nio-http [--host 127.0.0.1] [--port 0]
//
// Prints "nio-http: listening on HOST:PORT", answers every request with 200 and the body
// "hello" (keep-alive unless the client asks to close) and exits 0 on SIGINT/SIGTERM.
import Dispatch
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

final class HelloHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private var keepAlive = true
    private let body = ByteBuffer(string: "hello")

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/plain")
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)
            context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            if keepAlive {
                context.write(Self.wrapOutboundOut(.end(nil)), promise: nil)
            } else {
                let channel = context.channel
                context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in
                    channel.close(promise: nil)
                }
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Writes straight to a file descriptor: Swift 6 rejects Glibc's `stdout`/`stderr` globals.
func say(_ fd: Int32, _ line: String) {
    var line = line + "\n"
    line.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
}

func parseArguments() -> (host: String, port: Int) {
    var host = "127.0.0.1"
    var port = 0
    var args = CommandLine.arguments.dropFirst()
    while let a = args.popFirst() {
        switch a {
        case "--host": host = args.popFirst() ?? host
        case "--port": port = Int(args.popFirst() ?? "") ?? port
        default:
            say(2, "usage: nio-http [--host 127.0.0.1] [--port 0]")
            exit(2)
        }
    }
    return (host, port)
}

/// Set-up lives in a nonisolated function, not in top-level (MainActor) code: see nio-echo.
nonisolated func runServer() throws {
    let (host, port) = parseArguments()
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    var sources: [DispatchSourceSignal] = []
    for sig in [SIGINT, SIGTERM] {
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            exit(0)
        }
        source.resume()
        sources.append(source)
    }

    let bootstrap = ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 4096)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                try channel.pipeline.syncOperations.addHandler(HelloHandler())
            }
        }
    let channel = try bootstrap.bind(host: host, port: port).wait()
    let bound = channel.localAddress?.port ?? port
    say(1, "nio-http: listening on \(host):\(bound) (SwiftNIO HTTP/1.1, 1 event loop)")
    try channel.closeFuture.wait()
    withExtendedLifetime(sources) {}
    try group.syncShutdownGracefully()
}

do {
    try runServer()
} catch {
    say(2, "nio-http: \(error)")
    exit(1)
}
