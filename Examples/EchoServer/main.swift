// The README's ten-line echo server, compiled by every build (`swift run example-echo-server`
// serves 127.0.0.1:7007 until interrupted). The lines between the markers are the README's.
// README begin
import PollerNet

let listener = try TCPListener.listen(host: "127.0.0.1", port: 7007)
while true {
    let connection = try await listener.accept()
    Task {
        while let bytes = try? await connection.read(maxBytes: 4096) { try await connection.write(bytes) }
        try? await connection.close()
    }
}
// README end
