import Glibc
import Poller

/// The most buffers one writev(2) or sendmsg(2) takes: Linux's IOV_MAX (UIO_MAXIOV), as Go uses.
let maxBuffersPerCall = 1024

/// The largest chunk one sendfile(2) is asked to move (Go's maxSendfileSize).
private let maxSendfileChunk = 4 << 20

/// The buffer of the read-and-write fallback of ``NetFD/sendFile(from:offset:count:)``.
private let fallbackChunk = 64 << 10

extension NetFD {
    // MARK: Gathered writes (Go's FD.Writev)

    /// Writes every byte of every buffer in order, with as few system calls as the kernel
    /// allows: Go's `FD.Writev` (what `net.Buffers.WriteTo` uses).
    ///
    /// Up to 1024 buffers (IOV_MAX) go to the kernel at once, sockets with
    /// `sendmsg(MSG_NOSIGNAL)`, other descriptors with writev(2) while SIGPIPE is blocked in
    /// the calling thread (as ``write(_:)-(UnsafeRawBufferPointer)``). A partial write is resumed where it stopped,
    /// in the middle of a buffer or at a boundary; EAGAIN waits for writability through the
    /// poller, and the write deadline applies. Empty buffers are skipped; no buffers at all
    /// write nothing (once the write lock is had: after ``close()`` that is
    /// ``NetError/closed``). Serialised with other writes under the write lock, so the
    /// buffers are never interleaved with another writer's bytes.
    ///
    /// - Returns: the bytes written and, if not all were, the error that stopped the write
    ///   (as ``write(_:)-(UnsafeRawBufferPointer)``: `.system(call: "sendmsg" or "writev", errno: EPIPE)` after the
    ///   peer has gone; EIO for a call that claims more bytes than it was given).
    nonisolated(nonsending) public func write(buffers: [UnsafeRawBufferPointer]) async -> WriteResult {
        await withWriteLock { (written: inout Int) async throws(NetError) in
            try await writeGathered(buffers, counting: &written)
        }
    }

    /// The loop of ``write(buffers:)``, with the write lock held.
    nonisolated(nonsending) private func writeGathered(
        _ buffers: [UnsafeRawBufferPointer], counting written: inout Int
    ) async throws(NetError) {
        let call = isSocket ? "sendmsg" : "writev"
        let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: min(max(buffers.count, 1), maxBuffersPerCall))
        defer { vectors.deallocate() }
        // From the poller thread with io_uring completion send: sendmsg on the ring, whose
        // header and iovecs must outlive each send (they do: freed when this returns).
        var ringHeader: UnsafeMutablePointer<msghdr>? = nil
        if isSocket && pollDescriptor.sendsThroughRing && ringSend.load(ordering: .relaxed) && !writeCallsAreInjected {
            ringHeader = .allocate(capacity: 1)
        }
        defer { ringHeader?.deallocate() }
        // The next byte to write: buffer `index`, `offset` bytes in.
        var index = 0
        var offset = 0
        while true {
            // Gather the next batch: at most IOV_MAX buffers and, on a stream, at most
            // maxChunk bytes of any one buffer (the rest goes in the next call, as Go does).
            var count = 0
            var total = 0
            var i = index
            var start = offset
            while i < buffers.count && count < maxBuffersPerCall {
                let buffer = buffers[i]
                let length = buffer.count - start
                if length > 0, let base = buffer.baseAddress {
                    let taken = min(length, maxChunk)
                    vectors[count] = iovec(iov_base: UnsafeMutableRawPointer(mutating: base + start), iov_len: taken)
                    count += 1
                    total += taken
                    if taken < length { break }
                }
                i += 1
                start = 0
            }
            if count == 0 { return }
            var injected: Int? = nil
            #if DEBUG  // the test seam exists only where tests run
            if NetTestHooks.active.load(ordering: .relaxed) { injected = NetTestHooks.current.writeCall?(fd, total) }
            #endif
            let n: Int
            var e: Int32 = 0
            if let injected {
                n = injected
            } else if let header = ringHeader {
                let r = await pollDescriptor.sendThroughRing(
                    .message(header: header, vectors: vectors, count: count), cancellable: observesTaskCancellation)
                n = r >= 0 ? Int(r) : -1
                e = r >= 0 ? 0 : -r
            } else {
                n = gatheredWrite(vectors, count: count)
            }
            if n < 0 && e == 0 { e = errno }
            if n > total {
                // Impossible from a sane kernel; trusting it would move past the buffers.
                throw NetError.system(call: call, errno: EIO)
            }
            if n > 0 {
                written += n
                // Advance across buffer boundaries by what the kernel took.
                var left = n
                while left > 0 {
                    let remaining = buffers[index].count - offset
                    if left < remaining {
                        offset += left
                        left = 0
                    } else {
                        left -= remaining
                        index += 1
                        offset = 0
                    }
                }
                continue
            }
            if n == 0 {
                // Bytes offered, none taken, no error: Go's io.ErrUnexpectedEOF.
                throw NetError.system(call: call, errno: EIO)
            }
            switch e {
            case EINTR: continue
            case ECANCELED where ringHeader != nil: try ringSendCancelled()
            case EBUSY where ringHeader != nil:
                // The ring would not take it: the rest by system calls.
                ringHeader?.deallocate()
                ringHeader = nil
            case EAGAIN, EWOULDBLOCK: try await waitReady(.write, call: call)
            default: throw NetError.fromErrno(e, call: call)
            }
        }
    }

    /// One sendmsg(2) (sockets, no SIGPIPE) or writev(2) (others, SIGPIPE blocked).
    private func gatheredWrite(_ vectors: UnsafeMutablePointer<iovec>, count: Int) -> Int {
        if isSocket {
            var message = msghdr()
            message.msg_iov = vectors
            message.msg_iovlen = count
            return sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
        }
        return withSIGPIPEBlocked { writev(fd, vectors, Int32(count)) }
    }

    // MARK: Sending a file (Go's poll.SendFile)

    /// Sends up to `count` bytes of the file `source` with sendfile(2), the kernel copying
    /// them without a trip through user space: Go's `poll.SendFile` (what `TCPConn.ReadFrom`
    /// does with an `*os.File`).
    ///
    /// - `offset` nil reads from `source`'s file position and advances it (Go's way); a
    ///   number reads from that position and leaves the file position alone (pread-like).
    /// - Stops early, without an error, at the end of the file.
    /// - Loops over partial sends (4 MiB per call, as Go), waiting for writability through
    ///   the poller on EAGAIN; the write deadline applies. Serialised with other writes.
    /// - When the kernel cannot sendfile from `source` (EINVAL, ENOSYS: not a regular or
    ///   mmap-able file), falls back to reading 64 KiB at a time (read(2) or pread(2)) and
    ///   writing it as ``write(_:)-(UnsafeRawBufferPointer)`` does. Reads of `source` are plain system calls: meant for
    ///   regular files, where they do not block for long; a non-blocking source that has
    ///   nothing to read ends the send with `.system(call: "read", errno: EAGAIN)`.
    /// - SIGPIPE is blocked in the calling thread around each sendfile(2): a peer that has
    ///   gone gives `.system(call: "sendfile", errno: EPIPE)` (or a reset), never SIGPIPE.
    ///
    /// Bad input: a negative `offset` or `count` is `.system(call: "sendfile", errno: EINVAL)`
    /// before anything is sent; a descriptor that is not open or not readable is
    /// `.system(call: "sendfile", errno: EBADF)`. `count` 0 sends nothing.
    ///
    /// - Returns: the bytes sent and, if the send stopped before `count` bytes for another
    ///   reason than the end of the file, the error.
    nonisolated(nonsending) public func sendFile(from source: Int32, offset: Int64?, count: Int) async -> WriteResult {
        if count < 0 || (offset ?? 0) < 0 {
            return WriteResult(bytesWritten: 0, error: .system(call: "sendfile", errno: EINVAL))
        }
        return await withWriteLock { (written: inout Int) async throws(NetError) in
            try await sendFileLocked(from: source, offset: offset, count: count, counting: &written)
        }
    }

    /// The loop of ``sendFile(from:offset:count:)``, with the write lock held.
    nonisolated(nonsending) private func sendFileLocked(
        from source: Int32, offset: Int64?, count: Int, counting written: inout Int
    ) async throws(NetError) {
        var position = offset
        var remaining = count
        var fallback = false
        while remaining > 0 && !fallback {
            let chunk = min(remaining, maxSendfileChunk)
            let n = withSIGPIPEBlocked {
                guard let start = position else { return Glibc.sendfile(fd, source, nil, chunk) }
                var off = off_t(start)
                let n = Glibc.sendfile(fd, source, &off, chunk)
                position = Int64(off)
                return n
            }
            if n > chunk { throw NetError.system(call: "sendfile", errno: EIO) }
            if n > 0 {
                written += n
                remaining -= n
                continue
            }
            if n == 0 { return }  // end of file
            let e = errno
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: try await waitReady(.write, call: "sendfile")
            case EINVAL, ENOSYS: fallback = true
            default: throw NetError.fromErrno(e, call: "sendfile")
            }
        }
        if fallback {
            try await copyByReading(source, position: position, remaining: remaining, counting: &written)
        }
    }

    /// sendFile's fallback: read(2) (or pread(2) at `position`) and write, until `remaining`
    /// bytes are sent or the file ends. The write lock is held.
    nonisolated(nonsending) private func copyByReading(
        _ source: Int32, position: Int64?, remaining: Int, counting written: inout Int
    ) async throws(NetError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: min(max(remaining, 1), fallbackChunk), alignment: 1)
        defer { buffer.deallocate() }
        var position = position
        var remaining = remaining
        while remaining > 0 {
            let want = min(remaining, buffer.count)
            let n = position.map { pread(source, buffer.baseAddress, want, off_t($0)) } ?? Glibc.read(source, buffer.baseAddress, want)
            if n == 0 { return }  // end of file
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                throw NetError.system(call: position == nil ? "read" : "pread", errno: e)
            }
            try await writeAll(UnsafeRawBufferPointer(rebasing: buffer[..<n]), counting: &written)
            remaining -= n
            position = position.map { $0 + Int64(n) }
        }
    }
}

extension Connection {
    // MARK: Gathered writes and files

    /// Writes every byte of every buffer, in order, with writev: Go's `net.Buffers.WriteTo`
    /// on a `TCPConn` or `UnixConn`.
    ///
    /// Up to 1024 buffers (IOV_MAX) go to the kernel per system call; a partial write resumes
    /// where it stopped, across buffer boundaries, after waiting for space through the poller.
    /// The write deadline applies, and the write is serialised with other writes (no other
    /// writer's bytes come between the buffers). Empty buffers are skipped. The buffers must
    /// stay valid until the call returns.
    ///
    /// ```swift
    /// // Buffers the caller owns, valid until the write returns.
    /// let head = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)
    /// let body = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
    /// defer { head.deallocate(); body.deallocate() }
    /// // … fill them …
    /// try await connection.write(buffers: [UnsafeRawBufferPointer(head), UnsafeRawBufferPointer(body)])  // one sendmsg(2)
    /// ```
    ///
    /// - Throws: as ``write(_:)-(UnsafeRawBufferPointer)``, with call "sendmsg" for system
    ///   errors. Part of the bytes may have been sent:
    ///   ``writeReportingProgress(buffers:)`` says how many.
    nonisolated(nonsending) public func write(buffers: [UnsafeRawBufferPointer]) async throws(NetError) {
        if let error = await netFD.write(buffers: buffers).error { throw error }
    }

    /// ``write(buffers:)``, Go-style: how many bytes were written and, if not all, the error
    /// that stopped the write.
    nonisolated(nonsending) public func writeReportingProgress(buffers: [UnsafeRawBufferPointer]) async -> WriteResult {
        await netFD.write(buffers: buffers)
    }

    /// Sends up to `count` bytes of the open file `source` with sendfile(2): Go's
    /// `TCPConn.ReadFrom(*os.File)` (`io.Copy(conn, file)`). The kernel moves the bytes; none
    /// pass through this process.
    ///
    /// `offset` nil starts at the file's position and advances it, as Go does; a number
    /// starts there and leaves the file's position alone. Stops early at the end of the file.
    /// Partial sends are resumed after waiting for space through the poller; the write
    /// deadline applies; the send is serialised with other writes. Where the kernel cannot
    /// sendfile from `source` (EINVAL or ENOSYS: not a regular or mmap-able file) it falls
    /// back to reading 64 KiB at a time and writing it. `source` is read with plain system
    /// calls, so it should be a regular file; it stays the caller's (not closed).
    ///
    /// ```swift
    /// let file = open("/srv/index.html", O_RDONLY | O_CLOEXEC)
    /// defer { close(file) }
    /// let sent = try await connection.sendFile(file)           // the whole file
    /// ```
    ///
    /// - Parameters:
    ///   - source: a descriptor open for reading.
    ///   - offset: where to start in the file; nil for its current position.
    ///   - count: the most bytes to send; the default sends up to the end of the file.
    /// - Returns: the bytes sent (fewer than `count` when the file ended first).
    /// - Throws: `.system(call: "sendfile", errno: EINVAL)` for a negative `offset` or
    ///   `count` (nothing sent); `.system(call: "sendfile", errno: EBADF)` when `source` is
    ///   not open for reading; otherwise as ``write(_:)-(UnsafeRawBufferPointer)`` (a timeout,
    ///   ``NetError/closed``, ``NetError/cancelled``, EPIPE after the peer has gone, never
    ///   SIGPIPE). Part of the file may have been sent: ``sendFileReportingProgress(_:offset:count:)``
    ///   says how much.
    nonisolated(nonsending) public func sendFile(_ source: Int32, offset: Int64? = nil, count: Int = .max) async throws(NetError) -> Int {
        let result = await netFD.sendFile(from: source, offset: offset, count: count)
        if let error = result.error { throw error }
        return result.bytesWritten
    }

    /// ``sendFile(_:offset:count:)``, Go-style: the bytes sent and, if the send stopped
    /// before `count` bytes for another reason than the end of the file, the error.
    nonisolated(nonsending) public func sendFileReportingProgress(_ source: Int32, offset: Int64? = nil, count: Int = .max) async
        -> WriteResult
    {
        await netFD.sendFile(from: source, offset: offset, count: count)
    }
}
