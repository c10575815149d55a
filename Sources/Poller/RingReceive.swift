import CPoller
import Glibc

// io_uring completion receive, the core's half: a connection's bytes arrive as multishot recv
// completions into provided buffers (Backends/ReceiveBufferRing.swift), wait in the slot's
// `ReceiveQueue` in arrival order, and a reader copies them out under the slot's lock. The
// readiness machinery is reused unchanged for the waiting: a completion latches read
// readiness (or wakes the parked reader) exactly as a readable event does, so deadlines, task
// cancellation and unblock end a read's wait as before, and a completion that arrives after a
// wait ended keeps its bytes in the queue for the next read: none lost, none duplicated.

/// What a read through completion receive found (``PollDescriptor/takeReceived(into:)``).
package enum ReceivedBytes: Equatable, Sendable {
    /// This many bytes were copied into the caller's buffer (at least 1).
    case bytes(Int)
    /// The peer closed its side (and every byte before it has been read).
    case endOfFile
    /// The recv failed with this errno (every byte before it has been read).
    case failed(errno: Int32)
    /// The recv ended for want of buffers (-ENOBUFS) and everything queued has been read:
    /// read the socket directly; on EAGAIN call ``PollDescriptor/resumeReceiving()`` and wait
    /// for `.read`.
    case starved
    /// Nothing queued yet: wait for `.read`, then ask again.
    case empty
}

/// The bytes completion receive delivered to one descriptor and no reader has taken yet.
///
/// Invariants (under the slot's lock): chunks are in arrival order; every chunk's buffer is
/// out of the ring and owned by this queue until it is recycled, which happens when a reader
/// has copied its last byte or the registration closes (`discard`); `end` and `starved` are
/// reported only once the chunks before them have been read.
struct ReceiveQueue {
    struct Chunk {
        var buffer: UInt16
        var start: Int32
        var end: Int32
    }

    /// Whether a multishot recv was started for this registration.
    var isOn = false
    /// Whether a recv is armed (or queued to be): set when one is started or resumed, cleared
    /// by its ENDED completion.
    var armed = false
    /// Stopped for a detach (``PollDescriptor/stopReceiving()``): readers read the socket
    /// directly, on readiness, as after `starved`, and nothing re-arms the recv.
    var stopped = false
    /// The detach waiting for the stopped recv's ENDED completion.
    var stopWaiter: UnsafeContinuation<Void, Never>? = nil
    var chunks: [Chunk] = []
    /// The first chunk not yet fully read.
    var head = 0
    /// Nil while the stream goes on; 0 after end of file; an errno after a failed recv.
    var end: Int32? = nil
    /// The recv ended with -ENOBUFS and has not been resumed.
    var starved = false

    /// Gives every queued buffer back and forgets the stream (close, reopen).
    mutating func discard(into ring: ReceiveBufferRing?) {
        if let ring {
            for chunk in chunks[head...] { ring.recycle(chunk.buffer) }
        }
        chunks.removeAll(keepingCapacity: true)
        head = 0
        end = nil
        starved = false
        isOn = false
        armed = false
        stopped = false
    }

    /// Bytes queued and not yet read.
    var unreadCount: Int { chunks[head...].reduce(0) { $0 + Int($1.end - $1.start) } }
}

extension SlotState {
    /// A recv completion for this slot: queues its bytes, or records end of file, an error or
    /// starvation, and hands read readiness on as a readable event would. Returns whether the
    /// completion's buffer now belongs to the queue; if not (stale), the caller recycles it.
    ///
    /// An ENDED completion also releases a detach waiting in ``PollDescriptor/stopReceiving()``
    /// (`stopWaiter`, for the caller to resume once the lock is released).
    mutating func noteReceive(
        _ event: cpoller_event, woken: inout [(Waiter, WakeReason)], stopWaiter: inout UnsafeContinuation<Void, Never>?
    ) -> Bool {
        guard isCurrent(event.pollToken.generation), received.isOn else { return false }
        var kept = false
        if event.res > 0, let id = event.bufferID {
            received.chunks.append(ReceiveQueue.Chunk(buffer: id, start: 0, end: event.res))
            kept = true
        } else if event.res == -ENOBUFS {
            received.starved = true
        } else if event.res <= 0 && event.res != -ECANCELED && received.end == nil {
            received.end = -event.res
        }
        if event.isEnded {
            received.armed = false
            stopWaiter = received.stopWaiter
            received.stopWaiter = nil
        }
        if let w = takeWaiter(.read, ioReady: true) { woken.append((w, .ready)) }
        return kept
    }

    /// Copies queued bytes into `buffer` (from as many chunks as fit), recycling each buffer
    /// read to its end.
    mutating func takeReceived(into buffer: UnsafeMutableRawBufferPointer, from ring: ReceiveBufferRing) -> ReceivedBytes {
        var copied = 0
        if let base = buffer.baseAddress {
            while copied < buffer.count && received.head < received.chunks.count {
                let chunk = received.chunks[received.head]
                let n = min(Int(chunk.end - chunk.start), buffer.count - copied)
                (base + copied).copyMemory(from: ring.bytes(chunk.buffer) + Int(chunk.start), byteCount: n)
                copied += n
                if Int(chunk.start) + n == Int(chunk.end) {
                    ring.recycle(chunk.buffer)
                    received.head += 1
                } else {
                    received.chunks[received.head].start += Int32(n)
                }
            }
            if received.head > 0 && received.head == received.chunks.count {
                received.chunks.removeAll(keepingCapacity: true)
                received.head = 0
            }
        }
        if copied > 0 { return .bytes(copied) }
        if let end = received.end { return end == 0 ? .endOfFile : .failed(errno: end) }
        return received.starved || received.stopped ? .starved : .empty
    }
}

extension Poller {
    /// Whether this poller's connections can read through io_uring completion receive
    /// (multishot recv into a provided-buffer ring): io_uring, a kernel with both, and not
    /// turned off (`POLLER_URING_RECV=off`). ``backendReason`` says which, and why.
    public var receivesThroughCompletions: Bool { backend.receiveBuffers != nil }

    /// Buffers of the provided-buffer ring out of the kernel's hands now (queued for readers,
    /// or being copied); nil without completion receive. Zero once every connection has been
    /// read to the end or closed: what the tests check.
    package var receiveBuffersInUse: Int? { backend.receiveBuffers?.inUse }

    /// Dispatch of one recv completion (PollerLoop.swift).
    func dispatchReceive(_ event: cpoller_event, slot: DescriptorSlot?, woken: inout [(Waiter, WakeReason)]) {
        var stopWaiter: UnsafeContinuation<Void, Never>? = nil
        let kept = slot?.state.withLockAnnotated { s in s.noteReceive(event, woken: &woken, stopWaiter: &stopWaiter) } ?? false
        if !kept, event.res > 0, let id = event.bufferID { backend.receiveBuffers?.recycle(id) }
        stopWaiter?.resume()
    }

    // Start, resume, stop and restart call the backend with the slot's lock held (lock order:
    // slot, then the backend's state), so that the backend sees a reader's re-arm and a
    // detach's cancel in the order the slot's state changed.

    func startReceiving(_ slot: DescriptorSlot, generation: UInt32) -> Bool {
        guard backend.receiveBuffers != nil else { return false }
        return slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation), !s.closing, !s.received.isOn else { return false }
            s.received.isOn = true
            s.received.armed = true
            backend.armReceive(fd: s.fd, token: PollToken(slot: slot.index, generation: generation))
            return true
        }
    }

    func resumeReceiving(_ slot: DescriptorSlot, generation: UInt32) {
        slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation), s.received.starved, !s.received.stopped else { return }
            s.received.starved = false
            s.received.armed = true
            backend.armReceive(fd: s.fd, token: PollToken(slot: slot.index, generation: generation))
        }
    }

    /// Stops the recv and waits for its last completion; returns the bytes then queued.
    nonisolated(nonsending) func stopReceiving(_ slot: DescriptorSlot, generation: UInt32) async -> Int {
        await withUnsafeContinuation { (c: UnsafeContinuation<Void, Never>) in
            let waits = slot.state.withLockAnnotated { s in
                guard s.isCurrent(generation), s.received.isOn, !s.received.stopped else { return false }
                s.received.stopped = true
                guard s.received.armed, !s.closing else { return false }
                s.received.stopWaiter = c
                backend.cancelReceive(token: PollToken(slot: slot.index, generation: generation))
                return true
            }
            if !waits { c.resume() }
        }
        return slot.state.withLockAnnotated { s in s.isCurrent(generation) ? s.received.unreadCount : 0 }
    }

    func restartReceiving(_ slot: DescriptorSlot, generation: UInt32) {
        slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation), s.received.stopped else { return }
            s.received.stopped = false
            guard !s.received.armed, !s.received.starved, s.received.end == nil, !s.closing else { return }
            s.received.armed = true
            backend.armReceive(fd: s.fd, token: PollToken(slot: slot.index, generation: generation))
        }
    }

    func takeReceived(_ slot: DescriptorSlot, generation: UInt32, into buffer: UnsafeMutableRawBufferPointer) -> ReceivedBytes {
        guard let ring = backend.receiveBuffers else { return .empty }
        return slot.state.withLockAnnotated { s in
            guard s.isCurrent(generation) else { return .empty }
            return s.takeReceived(into: buffer, from: ring)
        }
    }
}

extension PollDescriptor {
    /// Starts io_uring completion receive for this descriptor, a connected stream socket:
    /// from here on its bytes arrive in a queue that ``takeReceived(into:)`` reads, never by
    /// recv(2) of the caller's (except after ``ReceivedBytes/starved``). False when the poller
    /// cannot (epoll, no kernel support, turned off) or the descriptor is closing; then read
    /// as usual. Call it once, from the reader.
    package func startReceiving() -> Bool { poller.startReceiving(slot, generation: generation) }

    /// Copies what completion receive has queued into `buffer`; see ``ReceivedBytes``.
    package func takeReceived(into buffer: UnsafeMutableRawBufferPointer) -> ReceivedBytes {
        poller.takeReceived(slot, generation: generation, into: buffer)
    }

    /// Arms the recv again after ``ReceivedBytes/starved`` and a direct recv(2) that found
    /// nothing (EAGAIN): its next completion wakes the reader.
    package func resumeReceiving() { poller.resumeReceiving(slot, generation: generation) }

    /// Stops completion receive before the descriptor is handed to someone else (a detach):
    /// cancels the recv and waits until its last completion has been queued, so that no byte
    /// the kernel delivered is missed. Returns the bytes queued and unread: if not 0, the
    /// caller must not hand the descriptor over (and may ``restartReceiving()``). Readers
    /// meanwhile read the socket directly. Returns at once when no recv runs, or once the
    /// descriptor is closing (unblock releases a waiting stop).
    package nonisolated(nonsending) func stopReceiving() async -> Int {
        await poller.stopReceiving(slot, generation: generation)
    }

    /// Undoes ``stopReceiving()``.
    package func restartReceiving() { poller.restartReceiving(slot, generation: generation) }
}
