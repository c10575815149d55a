import CPoller
import Glibc
import Testing

@testable import Poller

// The runtime_poll* surface (go-netpoll.md §2): exact numeric codes and modes. Every function
// but runtime_pollOpen and runtime_isPollServerDescriptor acts on the descriptor's own poller,
// so those are tested per backend on private pollers; the two that use the process-wide
// poller are tested once, on whatever backend POLLER_BACKEND selects.

extension NetpollSuites {
    @Suite("Go runtime_poll* API") struct GoAPITests {
        @Test("the error codes are Go's: pollNoError 0, pollErrClosing 1, pollErrTimeout 2, pollErrNotPollable 3")
        func codeValues() {
            #expect(pollNoError == 0)
            #expect(pollErrClosing == 1)
            #expect(pollErrTimeout == 2)
            #expect(pollErrNotPollable == 3)
            #expect(PollError.closing.goCode == 1)
            #expect(PollError.timeout.goCode == 2)
            #expect(PollError.notPollable.goCode == 3)
            #expect(PollError.invalidMode.goCode == pollErrInvalidArgument)
            #expect(Set([pollErrDoubleWait, pollErrInvalidArgument, pollErrCancelled]).isDisjoint(with: [0, 1, 2, 3]))
        }

        @Test(
            "modes are 'r' 114, 'w' 119 and 'r'+'w' 233; anything else is an invalid argument",
            arguments: BackendKind.allCases)
        func modes(kind: BackendKind) async throws {
            #expect(PollMode(goMode: 114) == .read)
            #expect(PollMode(goMode: 119) == .write)
            #expect(PollMode(goMode: 233) == .readWrite)
            #expect(PollMode(goMode: 0) == nil)
            #expect(PollMode(goMode: 115) == nil)
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                #expect(await goWait(pd, 233) == pollErrInvalidArgument, "a wait needs one direction")
                #expect(await goWait(pd, 0) == pollErrInvalidArgument)
                #expect(await goWait(pd, 120) == pollErrInvalidArgument)
                #expect(runtime_pollReset(pd, 233) == pollNoError)
                #expect(runtime_pollReset(pd, 7) == pollErrInvalidArgument)
                runtime_pollSetDeadline(pd, -1, 7)  // ignored
                #expect(runtime_pollReset(pd, 114) == pollNoError)
                #expect(runtime_pollReset(pd, 119) == pollNoError)
                runtime_pollSetDeadline(pd, -1, 119)
                #expect(runtime_pollReset(pd, 114) == pollNoError)
                #expect(runtime_pollReset(pd, 119) == pollErrTimeout)
                runtime_pollSetDeadline(pd, -1, 233)
                #expect(runtime_pollReset(pd, 114) == pollErrTimeout)
                goUnblockAndClose(pd, poller)
            }
        }

        @Test(
            "runtime_pollReset and runtime_pollWait return 0 on readiness, 2 on an expired deadline, 1 after unblock",
            arguments: BackendKind.allCases)
        func resetAndWaitCodes(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                #expect(runtime_pollReset(pd, 114) == pollNoError)
                writeBytes(pipe.writeFD)
                #expect(await becomesTrue { pd.isLatched(.read) })
                #expect(await goWait(pd, 114) == pollNoError)
                runtime_pollSetDeadline(pd, -1, 233)
                #expect(runtime_pollReset(pd, 114) == pollErrTimeout)
                #expect(runtime_pollReset(pd, 119) == pollErrTimeout)
                #expect(await goWait(pd, 114) == pollErrTimeout)
                #expect(await goWait(pd, 119) == pollErrTimeout)
                runtime_pollSetDeadline(pd, 0, 233)
                #expect(runtime_pollReset(pd, 233) == pollNoError)
                runtime_pollUnblock(pd)
                #expect(runtime_pollReset(pd, 114) == pollErrClosing)
                #expect(await goWait(pd, 119) == pollErrClosing)
                // A second unblock is harmless here (fatal in Go).
                goUnblockAndClose(pd, poller)
            }
        }

        @Test(
            "a blocked runtime_pollWait returns 2 when its deadline passes and 1 when unblocked",
            arguments: BackendKind.allCases)
        func blockedWaitCodes(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                runtime_pollSetDeadline(pd, 20_000_000, 114)
                let timed = Task { await runtime_pollWait(pd, 114) }
                let (code, timedOut) = await boundedValue(of: timed, within: .seconds(5)) { runtime_pollUnblock(pd) }
                #expect(!timedOut)
                #expect(code == pollErrTimeout)
                runtime_pollSetDeadline(pd, 0, 114)
                let blocked = Task { await runtime_pollWait(pd, 114) }
                #expect(await waitersParked(poller, 1))
                runtime_pollUnblock(pd)
                let (closing, hung) = await boundedValue(of: blocked, within: .seconds(5)) { writeBytes(pipe.writeFD) }
                #expect(!hung)
                #expect(closing == pollErrClosing)
                runtime_pollClose(pd)
                #expect(poller.openDescriptorCount == 0)
            }
        }

        @Test("runtime_pollWait ignores task cancellation, as Go has none", arguments: BackendKind.allCases)
        func waitIgnoresCancellation(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                let waiter = Task { await runtime_pollWait(pd, 114) }
                #expect(await waitersParked(poller, 1))
                waiter.cancel()
                try await Task.sleep(for: .milliseconds(30))
                #expect(poller.parkedWaiterCount == 1, "cancellation ended runtime_pollWait")
                writeBytes(pipe.writeFD)
                let (code, timedOut) = await boundedValue(of: waiter, within: .seconds(5)) { runtime_pollUnblock(pd) }
                #expect(!timedOut)
                #expect(code == pollNoError)
                runtime_pollUnblock(pd)
                runtime_pollClose(pd)
            }
        }

        @Test(
            "runtime_pollWait returns pollErrNotPollable for reads after an exact EPOLLERR, 0 for writes",
            arguments: BackendKind.allCases)
        func notPollableCode(kind: BackendKind) async throws {
            try await withFullPipeWriter(kind) { poller, pd, closeReader in
                closeReader()
                #expect(await becomesTrue { runtime_pollReset(pd, 114) == pollErrNotPollable })
                #expect(await goWait(pd, 114) == pollErrNotPollable)
                #expect(runtime_pollReset(pd, 119) == pollNoError)
                goUnblockAndClose(pd, poller)
            }
        }

        @Test(
            "runtime_pollClose without runtime_pollUnblock is refused and leaves the descriptor registered",
            arguments: BackendKind.allCases)
        func closeWithoutUnblock(kind: BackendKind) async throws {
            try await withRegisteredPipe(kind) { poller, pipe, pd in
                runtime_pollClose(pd)
                #expect(poller.openDescriptorCount == 1)
                #expect(runtime_pollReset(pd, 114) == pollNoError)
                goUnblockAndClose(pd, poller)
            }
        }

        // MARK: The process-wide poller

        @Test("runtime_pollOpen registers with the process-wide group and returns Go's errnos, EEXIST and EINVAL across members too")
        func pollOpen() throws {
            runtime_pollServerInit()
            guard let group = try? PollerGroup.shared() else {
                try Test.cancel("the process-wide group cannot start here")
            }
            let pipe = Pipe()
            let (pd, errno0) = runtime_pollOpen(pipe.readFD)
            #expect(errno0 == 0)
            let opened = try #require(pd)
            #expect(group.contains(opened.poller))
            #expect(opened.fd == pipe.readFD)
            // Asked again, from any thread, the same member answers: EEXIST, as Go's epoll_ctl.
            for _ in 0..<(2 * group.count) {
                let again = runtime_pollOpen(pipe.readFD)
                #expect(again.0 == nil && again.1 == EEXIST)
            }
            let bad = runtime_pollOpen(-1)
            #expect(bad.0 == nil && bad.1 == EBADF)
            var template = Array("/tmp/netpoll-regular-XXXXXX".utf8CString)
            let fileFD = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            try #require(fileFD >= 0)
            defer {
                close(fileFD)
                template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
            }
            let file = runtime_pollOpen(fileFD)
            #expect(file.0 == nil && file.1 == EPERM)
            // Every member's own descriptors are refused, whichever member the fd maps to.
            for own in group.pollers.flatMap(sharedBackendFDs) {
                let ownResult = runtime_pollOpen(own)
                #expect(ownResult.0 == nil && ownResult.1 == EINVAL)
            }
            runtime_pollUnblock(opened)
            runtime_pollClose(opened)
            #expect(opened.resetResult(.read) == .closing)
        }

        @Test("runtime_isPollServerDescriptor is true for every member's own descriptors of the process-wide group and false for others")
        func isPollServerDescriptor() throws {
            runtime_pollServerInit()
            guard let group = try? PollerGroup.shared() else {
                try Test.cancel("the process-wide group cannot start here")
            }
            let own = group.pollers.flatMap(sharedBackendFDs)
            #expect(own.count >= 2 * group.count, "expected the backend descriptor and the wake-up channel of each")
            for fd in own {
                #expect(runtime_isPollServerDescriptor(fd), "fd \(fd) belongs to the poller")
            }
            let pipe = Pipe()
            #expect(!runtime_isPollServerDescriptor(pipe.readFD))
            #expect(!runtime_isPollServerDescriptor(pipe.writeFD))
            #expect(!runtime_isPollServerDescriptor(-1))
        }

        private func sharedBackendFDs(_ poller: Poller) -> [Int32] {
            var fds: [Int32] = []
            if let epoll = poller.backend as? EpollBackend { fds.append(epoll.epollFD) }
            if let uring = poller.backend as? URingBackend { fds.append(uring.ringFD) }
            fds.append(poller.backend.wakeChannel.readFD)
            if poller.backend.wakeChannel.writeFD != poller.backend.wakeChannel.readFD {
                fds.append(poller.backend.wakeChannel.writeFD)
            }
            return fds
        }
    }
}

/// `runtime_pollUnblock` then `runtime_pollClose`, which must leave nothing registered.
private func goUnblockAndClose(
    _ pd: PollDescriptor, _ poller: Poller, sourceLocation: SourceLocation = #_sourceLocation
) {
    runtime_pollUnblock(pd)
    runtime_pollClose(pd)
    #expect(poller.openDescriptorCount == 0, sourceLocation: sourceLocation)
}
