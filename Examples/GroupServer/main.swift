// The README's PollerGroup example, compiled by every build (it listens on port 8080, so the
// test script does not run it; `swift run example-group-server` does): the accept loop between
// the markers is the README's; the rest dials it twice and checks the echoes, then exits.
import Glibc
import Poller
import PollerNet

/// Echoes what arrives until the peer closes.
func serve(_ connection: Connection) async {
    while let bytes = try? await connection.read(maxBytes: 4096) {
        do { try await connection.write(bytes) } catch { break }
    }
    try? await connection.close()
}

func acceptForever() async throws {
    // README begin
    let group = try PollerGroup()  // every CPU
    let listener = try TCPListener.listen(host: "0.0.0.0", port: 8080, group: group)
    while true {
        let connection = try await listener.accept()  // on the group's pollers in turn
        Task(executorPreference: connection.executor) {  // its own poller's thread
            await serve(connection)
        }
    }
    // README end
}

let server = Task { try await acceptForever() }
var echoed = 0
for attempt in 0..<50 where echoed < 2 {
    guard let client = try? await Connection.dial(host: "127.0.0.1", port: 8080) else {
        try await Task.sleep(for: .milliseconds(20))  // the listener is not up yet
        continue
    }
    try await client.write(Array("hello \(attempt)".utf8))
    let reply = try await client.read(maxBytes: 64)
    if reply == Array("hello \(attempt)".utf8) { echoed += 1 }
    try await client.close()
}
guard echoed == 2 else {
    print("example-group-server: the echo did not come back (is port 8080 taken?)")
    exit(1)
}
print("echoed twice through a group of \(PollerGroup.availableCPUs) pollers")
exit(0)
