// The README's Swift-API example, compiled by every build and run by the test script
// (`swift run example-swift-style`). The lines between the markers are the README's.
import Glibc
import Poller

var pair: [Int32] = [-1, -1]
guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &pair) == 0 else {
    fatalError("socketpair: errno \(errno)")
}
let fd = pair[0]

// README begin
let poller = try Poller(backend: .auto)  // or Poller.shared()
let pd = try poller.register(fd)  // throws PollError.registrationFailed(errno:)
pd.setDeadline(in: .milliseconds(50), for: .read)  // or an absolute ContinuousClock.Instant
do {
    try await pd.wait(for: .read)  // cancellable: throws .cancelled
} catch PollError.timeout { print("i/o timeout") }
// Run the waiting task on the poller thread itself (no thread hop on wake-up):
try await Task(executorPreference: poller.executor) { try await pd.wait(for: .write) }.value
pd.unblock()
try pd.close()  // then close(fd)
// README end

print("writable")
poller.shutdown()
close(pair[0])
close(pair[1])
