// The README's echo server, compiled by every build (`swift run example-echo-server`
// serves 127.0.0.1:7007 until interrupted). The lines between the markers are the README's.
// README begin
import PollerNet

let listener = try TCPListener.listen(host: "127.0.0.1", port: 7007)
while true {
    let connection: Connection
    do {
        connection = try await listener.accept()
    } catch {
        guard case .tooManyOpenFiles = error else { throw error }
        try await Task.sleep(for: .milliseconds(10))  // out of descriptors: back off, go on
        continue
    }
    Task {
        while let bytes = try? await connection.read(maxBytes: 4096) { try await connection.write(bytes) }
        try? await connection.close()
    }
}
// README end
