import CPoller
import Synchronization

/// An io_uring provided-buffer ring: `count` buffers of `size` bytes that the kernel fills
/// for the multishot recvs of one poller's connections (buffer group 0 of its ring).
///
/// Ownership of a buffer moves: the kernel owns it while it is in the ring; a recv completion
/// names it and hands it to the poller thread (`taken`); the completion's bytes then wait in
/// the connection's slot (`ReceiveQueue`) until a reader copies them out, and the buffer goes
/// back to the ring (`recycle`) when the last byte is copied, the connection closes, or the
/// completion turns out stale. Invariants:
/// - A buffer is recycled exactly once per completion that named it (`inUse` counts the
///   difference and is 0 when nothing is queued anywhere: the tests check it).
/// - Producers of the ring (every `recycle`) are serialised by `lock`; any thread may recycle.
/// - The memory is freed only in deinit, after the ring (which held the registration) is gone
///   and no slot can hold a reference: a `Poller` keeps its backend, and every descriptor its
///   `Poller`, so a reader copying out of a buffer keeps the memory alive.
final class ReceiveBufferRing: Sendable {
    /// Buffers and their size: 64 × 16 KiB = 1 MiB per io_uring poller, resident only as
    /// buffers are used; an idle connection holds none. Small on purpose: the kernel hands
    /// buffers out FIFO, so every buffer of the ring is touched in turn, and a ring larger than
    /// the caches costs a cache and TLB miss per arrival (measured here at 512 connections: 64
    /// buffers took ~20% less CPU per round trip than 512); running dry (-ENOBUFS) only sends
    /// a reader to recv(2) once. `POLLER_URING_RECV_BUFFERS` changes it.
    static let defaultCount: UInt32 = 64
    static let defaultSize: UInt32 = 16 << 10
    static let group: UInt32 = 0

    let count: UInt32
    let size: Int
    private nonisolated(unsafe) let buffers: OpaquePointer
    private nonisolated(unsafe) let base: UnsafeMutablePointer<UInt8>
    /// Serialises the ring's producers; the value counts buffers out of the ring.
    private let lock = Mutex<Int>(0)

    /// Registers the ring with `ring`, every buffer given to the kernel. Owner thread.
    init(ring: OpaquePointer, count: UInt32, size: UInt32) throws(PollerError) {
        var err: Int32 = 0
        guard let buffers = cpoller_uring_buffers_create(ring, count, size, Self.group, &err) else {
            throw .system(call: "io_uring_register_buf_ring", errno: err)
        }
        self.buffers = buffers
        base = cpoller_uring_buffers_base(buffers)
        self.count = count
        self.size = Int(size)
    }

    deinit { cpoller_uring_buffers_free(buffers) }

    /// The bytes of buffer `id`.
    @inline(__always)
    func bytes(_ id: UInt16) -> UnsafeMutablePointer<UInt8> { base + Int(id) * size }

    /// A completion handed buffer `id` out of the ring.
    @inline(__always)
    func taken() { lock.withLockAnnotated { $0 += 1 } }

    /// Gives buffer `id` back to the kernel.
    @inline(__always)
    func recycle(_ id: UInt16) {
        lock.withLockAnnotated { inUse in
            cpoller_uring_buffers_recycle(buffers, id)
            inUse -= 1
        }
    }

    /// Buffers out of the ring now (completed, not yet recycled).
    var inUse: Int { lock.withLockAnnotated { $0 } }
}
