// The README's Go-style example, compiled by every build and run by the test script
// (`swift run example-go-style`). The lines between the markers are the README's.
import Glibc
import Poller

var pair: [Int32] = [-1, -1]
guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &pair) == 0 else {
    fatalError("socketpair: errno \(errno)")
}
let fd = pair[0]

// README begin
runtime_pollServerInit()  // idempotent
let (pd, errno) = runtime_pollOpen(fd)  // fd: a non-blocking socket
guard let pd else { fatalError("pollOpen: errno \(errno)") }
runtime_pollSetDeadline(pd, 50_000_000, 114)  // read deadline 50 ms from now
_ = runtime_pollReset(pd, 114)
switch await runtime_pollWait(pd, 114) {
case pollNoError: print("readable")  // a hint: retry read(2)
case pollErrTimeout: print("i/o timeout")
default: print("closing")
}
runtime_pollUnblock(pd)
runtime_pollClose(pd)  // then close(fd)
// README end

close(pair[0])
close(pair[1])
