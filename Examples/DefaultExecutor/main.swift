// The README's default-executor example, compiled by every build; the test suite runs it
// (PollerNetTests "Plain Task {} on the poller threads") and reads the lines Checks.swift
// prints.
// The lines between the markers are the README's. Usage:
//   example-default-executor [epoll|io_uring|auto] [--control]
import Dispatch
import Glibc
import Poller

let backend = CommandLine.arguments.count > 1 ? BackendChoice(argument: CommandLine.arguments[1]) : .auto

if CommandLine.arguments.contains("--control") {
    // The test's control: the same checks without the install, where the placement ones
    // must fail (so they can).
    let group = try PollerGroup(threads: 2, backend: backend)
    Task { exit(await serve(on: group)) }
    dispatchMain()
}

// README begin
// Synchronous top-level code: install before the first task exists.
let group = try PollerGroup.installAsDefaultExecutor(threads: 2, backend: backend)
Task {
    exit(await serve(on: group))  // plain async code: runs on the poller threads
}
dispatchMain()  // Dispatch serves the main actor
// README end
