// The README's echo server, compiled by every build (`swift run example-echo-server`
// serves 127.0.0.1:7007 until interrupted). The lines between the markers are the README's.
// README begin
import PollerNet

let listener = try TCPListener.listen(host: "127.0.0.1", port: 7007)
// A task per connection, on its poller's thread; accept errors (out of descriptors) back off.
await listener.serve { connection in
    do {
        while true { try await connection.write(try await connection.read(maxBytes: 4096)) }
    } catch {}  // end of file, a reset, a timeout: serve closes the connection
}
// README end
