// The Getting Started article's server (Sources/PollerNet/PollerNet.docc/GettingStarted.md),
// compiled by every build: `swift run example-getting-started` serves :7007 until SIGINT or
// SIGTERM. The lines between the markers are the article's.
import Poller
// README begin
import PollerNet

let listener = try TCPListener.listen(address: ":7007")
let shutdown = ServingHandle()
try TerminationSignal.install()
let signals = Task {
    try await TerminationSignal.wait(poller: Poller.shared())  // SIGINT or SIGTERM
    shutdown.shutdown()
}
await listener.serve(gracePeriod: .seconds(10), shutdown: shutdown) { connection in
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 << 10, alignment: 1)
    defer { buffer.deallocate() }
    do {
        while true {
            try connection.setReadDeadline(in: .seconds(60))  // idle clients go
            let n = try await connection.read(into: buffer)  // no allocation per read
            try connection.setWriteDeadline(in: .seconds(10))  // so do clients that never read
            try await connection.write(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
    } catch {}  // .endOfFile, .timeout, .connectionReset, .closed at shutdown
}
signals.cancel()
// README end
