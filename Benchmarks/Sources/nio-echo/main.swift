// nio-echo: SwiftNIO echo server, the NIO peer of poller-echo: ONE event loop by default.
//
//   nio-echo [--host 127.0.0.1] [--port 0] [--idle-timeout SECONDS] [--threads N]
//
// --threads N: N event loops (0: System.coreCount, one per CPU); the server channel accepts on
// one of them and hands the connections to the group's loops in turn (NIO's usual set-up).
//
// Prints "nio-echo: listening on HOST:PORT", echoes every byte on every connection (write on
// channelRead, flush on channelReadComplete) and exits 0 on SIGINT/SIGTERM. With
// --idle-timeout, NIO's IdleStateHandler closes a connection that has read nothing for that
// long (NIO's idiom for a read deadline).
import Dispatch
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// Writes straight to a file descriptor: Swift 6 rejects Glibc's `stdout`/`stderr` globals.
func say(_ fd: Int32, _ line: String) {
    var line = line + "\n"
    line.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
}

func usage() -> Never {
    say(2, "usage: nio-echo [--host 127.0.0.1] [--port 0] [--idle-timeout SECONDS] [--threads N (0: one per CPU)]")
    exit(2)
}

func parseArguments() -> (host: String, port: Int, idleTimeout: Double, threads: Int) {
    var host = "127.0.0.1"
    var port = 0
    var idleTimeout = 0.0
    var threads = 1
    var args = CommandLine.arguments.dropFirst()
    while let a = args.popFirst() {
        switch a {
        case "--host": host = args.popFirst() ?? host
        case "--port": port = Int(args.popFirst() ?? "") ?? port
        case "--idle-timeout": idleTimeout = Double(args.popFirst() ?? "") ?? idleTimeout
        case "--threads":
            guard let n = Int(args.popFirst() ?? ""), n >= 0 else { usage() }
            threads = n == 0 ? System.coreCount : n
        default: usage()
        }
    }
    return (host, port, idleTimeout, threads)
}

/// Everything runs here, not in top-level code: top-level code in main.swift is MainActor
/// code under Swift 6, and a signal handler set up there crashed when SIGTERM arrived.
nonisolated func runServer() throws {
    let (host, port, idleTimeout, threads) = parseArguments()
    let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)

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
                if idleTimeout > 0 {
                    try channel.pipeline.syncOperations.addHandler(
                        IdleStateHandler(readTimeout: .nanoseconds(Int64(idleTimeout * 1e9))))
                }
                try channel.pipeline.syncOperations.addHandler(EchoHandler())
            }
        }
    let channel = try bootstrap.bind(host: host, port: port).wait()
    let bound = channel.localAddress?.port ?? port
    say(1, "nio-echo: listening on \(host):\(bound) (SwiftNIO, \(threads) event loop\(threads == 1 ? "" : "s"))")
    try channel.closeFuture.wait()
    withExtendedLifetime(sources) {}
    try group.syncShutdownGracefully()
}

do {
    try runServer()
} catch {
    say(2, "nio-echo: \(error)")
    exit(1)
}
