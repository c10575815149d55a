import CPoller
import Glibc
import Poller

/// A pipe whose ends wait through the poller and take deadlines: Go's `os.Pipe`.
///
/// ```swift
/// let pipe = try Pipe.make(poller: poller)
/// try await pipe.writeEnd.write(Array("hello".utf8))
/// try pipe.readEnd.setReadDeadline(in: .seconds(1))
/// let bytes = try await pipe.readEnd.read(maxBytes: 64)     // "hello"
/// try await pipe.writeEnd.close()                            // the reader then gets .endOfFile
/// try await pipe.readEnd.close()
/// ```
///
/// Each end is a ``RawConnection`` that owns its descriptor (close-on-exec, non-blocking,
/// registered with the poller): ``RawConnection/read(into:)`` on the read end,
/// ``RawConnection/write(_:)-(UnsafeRawBufferPointer)`` on the write end, deadlines, and
/// ``RawConnection/close()``, which wakes an operation blocked on that end with
/// ``NetError/closed``. A read after every write end has closed throws
/// ``NetError/endOfFile``; a write after every read end has closed throws
/// `.system(call: "write", errno: EPIPE)` and never raises SIGPIPE, whatever the process's
/// SIGPIPE disposition.
///
/// (Code that also imports Foundation names this type `PollerNet.Pipe`.)
public struct Pipe: Sendable {
    /// The end to read from.
    public let readEnd: RawConnection
    /// The end to write to.
    public let writeEnd: RawConnection

    /// Opens a pipe (`pipe2(O_CLOEXEC | O_NONBLOCK)`) and registers both ends with `poller`
    /// (nil: `Poller.shared()`).
    ///
    /// - Throws: `.system(call: "pipe2", errno:)` (EMFILE, ENFILE when out of descriptors);
    ///   the registration errors of ``RawConnection/init(adopting:poller:usePoller:)``. No
    ///   descriptor is left open when it throws.
    public static func make(poller: Poller? = nil) throws(NetError) -> Pipe {
        var fds: (Int32, Int32) = (-1, -1)
        let result = withUnsafeMutableBytes(of: &fds) { raw in
            cpoller_pipe_cloexec_nonblocking(raw.baseAddress!.assumingMemoryBound(to: Int32.self))
        }
        if result != 0 { throw .system(call: "pipe2", errno: -result) }
        let readEnd: RawConnection
        do {
            readEnd = try RawConnection(adopting: fds.0, poller: poller)
        } catch {
            Glibc.close(fds.1)
            throw error
        }
        // On failure this closes fds.1, and dropping readEnd closes fds.0.
        let writeEnd = try RawConnection(adopting: fds.1, poller: poller)
        return Pipe(readEnd: readEnd, writeEnd: writeEnd)
    }
}
