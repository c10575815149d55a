import Glibc
import Poller
import Synchronization

/// One datagram as a receive saw it: how much of it landed in the caller's buffer, how long
/// it really was, and who sent it.
///
/// A datagram longer than the buffer is cut to fit by the kernel, and the rest is discarded;
/// PollerNet never hides that: ``length`` is the datagram's full length (the kernel reports it
/// through `recvmsg(MSG_TRUNC)`), ``count`` what was copied, and ``isTruncated`` says whether
/// bytes were lost. (Go's `ReadFrom` returns the copied count alone and drops the rest
/// without a word; its `ReadMsgUDP` reports `MSG_TRUNC` in its flags.)
public struct ReceivedDatagram: Sendable, Equatable {
    /// Bytes copied into the caller's buffer: `min(length, buffer.count)`. 0 for an empty
    /// datagram, which is a datagram like any other, never end of file.
    public var count: Int
    /// The datagram's full length, which exceeds ``count`` when it did not fit.
    public var length: Int
    /// The sender: `.ipv4`/`.ipv6` for UDP; for Unix datagram sockets the sender's path, or
    /// `.unix(path: "")` when the sender is unnamed (unbound, or one end of
    /// ``DatagramSocket/pair(poller:)``).
    public var sender: SocketAddress

    /// Whether the datagram was longer than the buffer (its tail is lost).
    public var isTruncated: Bool { length > count }

    public init(count: Int, length: Int, sender: SocketAddress) {
        self.count = count
        self.length = length
        self.sender = sender
    }
}

/// A descriptor received in an `SCM_RIGHTS` control message, owned by whoever holds this
/// object until they ``take()`` it.
///
/// Ownership: the kernel installs received descriptors in this process (close-on-exec), and
/// PollerNet wraps each one at once. Call ``take()`` to become the owner of the number (you
/// then close it, or hand it to `NetFD(adopting:)`); a `ReceivedDescriptor` dropped without
/// ``take()`` closes its descriptor, so ignoring a received descriptor never leaks one.
public final class ReceivedDescriptor: Sendable {
    /// The descriptor number, or -1 once taken or closed.
    private let value: Atomic<Int32>

    init(_ fd: Int32) { value = Atomic(fd) }

    deinit { close() }

    /// The descriptor while this object still owns it (nil after ``take()`` or ``close()``).
    /// Use it to inspect the descriptor, not to keep it: it closes with this object.
    public var fd: Int32? {
        let fd = value.load(ordering: .acquiring)
        return fd < 0 ? nil : fd
    }

    /// Transfers ownership to the caller: returns the descriptor (nil if already taken or
    /// closed), which this object will no longer close.
    public func take() -> Int32? {
        let fd = value.exchange(-1, ordering: .acquiringAndReleasing)
        return fd < 0 ? nil : fd
    }

    /// Closes the descriptor now if this object still owns it (idempotent).
    public func close() {
        if let fd = take() { _ = Glibc.close(fd) }
    }
}

/// A datagram read with its control messages: ``DatagramSocket/readMessage(into:maxDescriptors:)``.
public struct ReceivedMessage: Sendable {
    /// The datagram: bytes copied, full length, sender.
    public var datagram: ReceivedDatagram
    /// The descriptors passed with it (`SCM_RIGHTS`), in the order sent, each owned by its
    /// ``ReceivedDescriptor`` until taken.
    public var descriptors: [ReceivedDescriptor]
    /// The control data did not fit (`MSG_CTRUNC`): more descriptors were sent than
    /// `maxDescriptors` had room for. The kernel closed the ones that did not fit; they are
    /// lost, not leaked.
    public var isControlTruncated: Bool
}

/// Control-message layout (`CMSG_*` macros, which Swift cannot import): a `cmsghdr`, then
/// data, each aligned to `size_t`.
enum ControlMessage {
    private static let alignment = MemoryLayout<Int>.size
    private static func align(_ n: Int) -> Int { (n + alignment - 1) & ~(alignment - 1) }
    private static var headerSize: Int { align(MemoryLayout<cmsghdr>.size) }

    /// `CMSG_SPACE(descriptors * 4)`: the buffer room for that many descriptors.
    static func space(descriptors: Int) -> Int {
        headerSize + align(descriptors * MemoryLayout<Int32>.size)
    }

    /// `CMSG_LEN(descriptors * 4)`: a message's length without its trailing padding. Handed
    /// to recvmsg as the control length, it makes the kernel pass at most `descriptors`
    /// (with the padded ``space(descriptors:)`` an odd count would get room for one more).
    static func length(descriptors: Int) -> Int {
        headerSize + descriptors * MemoryLayout<Int32>.size
    }

    /// Writes one `SCM_RIGHTS` message carrying `descriptors` at the start of `buffer`
    /// (sized by ``space(descriptors:)``, zeroed first).
    static func writeRights(_ descriptors: [Int32], into buffer: UnsafeMutableRawBufferPointer) {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        let dataLength = descriptors.count * MemoryLayout<Int32>.size
        var header = cmsghdr()
        header.cmsg_len = headerSize + dataLength
        header.cmsg_level = SOL_SOCKET
        header.cmsg_type = Int32(SCM_RIGHTS)
        buffer.storeBytes(of: header, as: cmsghdr.self)
        for (i, fd) in descriptors.enumerated() {
            buffer.storeBytes(of: fd, toByteOffset: headerSize + i * MemoryLayout<Int32>.size, as: Int32.self)
        }
    }

    /// Every descriptor in the `SCM_RIGHTS` messages among the first `length` bytes of
    /// `buffer`, each wrapped at once so that none can leak. Other messages are skipped.
    static func receivedDescriptors(in buffer: UnsafeRawBufferPointer, length: Int) -> [ReceivedDescriptor] {
        var result: [ReceivedDescriptor] = []
        var offset = 0
        let end = min(length, buffer.count)
        while offset + MemoryLayout<cmsghdr>.size <= end {
            let header = buffer.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
            let messageLength = Int(header.cmsg_len)
            guard messageLength >= headerSize, offset + messageLength <= end else { break }
            if header.cmsg_level == SOL_SOCKET && header.cmsg_type == Int32(SCM_RIGHTS) {
                let count = (messageLength - headerSize) / MemoryLayout<Int32>.size
                for i in 0..<count {
                    let at = offset + headerSize + i * MemoryLayout<Int32>.size
                    result.append(ReceivedDescriptor(buffer.loadUnaligned(fromByteOffset: at, as: Int32.self)))
                }
            }
            offset += align(messageLength)
        }
        return result
    }
}

extension NetFD {
    /// Go's datagram loop (`FD.ReadFrom`, `ReadMsg`, `WriteTo`, `WriteMsg`): takes the lock for
    /// `direction`, prepares (closed or expired deadline fail at once, even with data
    /// waiting), then calls `attempt` until it succeeds, retrying EINTR and waiting in the
    /// poller on EAGAIN (with the deadline, close and task cancellation as for stream reads).
    ///
    /// No zero-length shortcut: an empty buffer still waits for a datagram, as Go's
    /// `ReadFrom` does (close unblocks it, Go #72770).
    ///
    /// - Returns: what `attempt` returned (≥ 0).
    nonisolated(nonsending) func datagramIO(
        _ mode: PollMode, call: String, _ attempt: () -> Int
    ) async throws(NetError) -> Int {
        let direction: FDMutex.Direction = mode == .read ? .read : .write
        _ = try await fdMutex.lock(direction)
        defer { fdMutex.unlock(direction) }
        try prepare(mode)
        while true {
            let n = attempt()
            if n >= 0 { return n }
            let e = errno
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: try await waitReady(mode, call: call)
            default: throw NetError.fromErrno(e, call: call)
            }
        }
    }

    /// One datagram received with `recvmsg(MSG_TRUNC | MSG_CMSG_CLOEXEC)`, into `buffer`
    /// and, when `control` has room, its control messages.
    nonisolated(nonsending) func receiveDatagram(
        into buffer: UnsafeMutableRawBufferPointer, control: UnsafeMutableRawBufferPointer?
    ) async throws(NetError) -> (datagram: ReceivedDatagram, controlLength: Int, flags: Int32) {
        let header = MessageHeader()
        let n = try await datagramIO(.read, call: "recvmsg") {
            header.name.initialize(to: sockaddr_storage())
            let message = header.prepare(
                buffer.baseAddress, count: buffer.count, nameLength: socklen_t(MemoryLayout<sockaddr_storage>.size),
                control: control)
            return recvmsg(fd, message, Int32(MSG_TRUNC) | Int32(MSG_CMSG_CLOEXEC))
        }
        let message = header.message.pointee
        let sender = message.msg_namelen == 0 ? nil : SocketAddress(storage: header.name.pointee, length: message.msg_namelen)
        let datagram = ReceivedDatagram(
            count: min(n, buffer.count), length: n, sender: sender ?? .unix(path: ""))
        return (datagram, message.msg_controllen, message.msg_flags)
    }

    /// Sends `buffer` as one datagram with `sendmsg(MSG_NOSIGNAL)`, to `address` (nil: the
    /// connected peer), with `control` as its control data.
    nonisolated(nonsending) func sendDatagram(
        _ buffer: UnsafeRawBufferPointer, to address: SocketAddress?,
        control: UnsafeMutableRawBufferPointer?
    ) async throws(NetError) {
        let header = MessageHeader()
        // The destination is copied to the heap: the send may retry after a suspension.
        header.name.initialize(to: sockaddr_storage())
        let nameLength: socklen_t =
            try address?.withSockaddr { pointer, length in
                UnsafeMutableRawPointer(header.name).copyMemory(from: pointer, byteCount: Int(length))
                return length
            } ?? 0
        let n = try await datagramIO(.write, call: "sendmsg") {
            let message = header.prepare(
                UnsafeMutableRawPointer(mutating: buffer.baseAddress), count: buffer.count, nameLength: nameLength,
                control: control)
            return sendmsg(fd, message, Int32(MSG_NOSIGNAL))
        }
        // A datagram goes out whole or not at all; anything else is a kernel or shim bug.
        if n != buffer.count { throw .system(call: "sendmsg", errno: EIO) }
    }
}

/// A `msghdr` with its one `iovec` and its address buffer, on the heap so that they stay put
/// while an operation waits in the poller; freed with the object.
private final class MessageHeader {
    let name = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: 1)
    let message = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)
    let vector = UnsafeMutablePointer<iovec>.allocate(capacity: 1)

    deinit {
        name.deallocate()
        message.deallocate()
        vector.deallocate()
    }

    /// Fills the header for one system call: `count` bytes at `base`, the first `nameLength`
    /// bytes of ``name`` as the address (none when 0), `control` as the control buffer.
    func prepare(
        _ base: UnsafeMutableRawPointer?, count: Int, nameLength: socklen_t, control: UnsafeMutableRawBufferPointer?
    ) -> UnsafeMutablePointer<msghdr> {
        vector.initialize(to: iovec(iov_base: base, iov_len: count))
        message.initialize(
            to: msghdr(
                msg_name: nameLength == 0 ? nil : UnsafeMutableRawPointer(name), msg_namelen: nameLength,
                msg_iov: vector, msg_iovlen: 1,
                msg_control: control?.baseAddress, msg_controllen: control?.count ?? 0, msg_flags: 0))
        return message
    }
}
