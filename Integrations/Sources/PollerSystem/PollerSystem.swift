import Poller
import PollerNet
import SystemPackage

// swift-system's types at PollerNet's edges: an errno as `Errno`, a descriptor as
// `FileDescriptor`. PollerNet itself takes and gives plain `Int32`s, so that a package using
// it fetches nothing else; these are the bridges for a service that uses swift-system.

extension NetError {
    /// The system error behind this one, as swift-system's `Errno`: for
    /// ``PollerNet/NetError/system(call:errno:)`` and
    /// ``PollerNet/NetError/tooManyOpenFiles(errno:)``; nil for the errors that are Go's own
    /// (timeout, closed, end of file, cancelled, …).
    public var systemErrno: Errno? {
        switch self {
        case .system(_, let code), .tooManyOpenFiles(let code): Errno(rawValue: code)
        case .connectionReset: .connectionReset
        default: nil
        }
    }
}

extension Connection {
    /// Takes the descriptor out of the poller and hands it over as swift-system's
    /// `FileDescriptor` (``PollerNet/Connection/detach()``): to give a connection accepted
    /// here to another library (SwiftNIO's `withConnectedSocket`, say). The caller owns it and
    /// must close it.
    ///
    /// - Throws: as ``PollerNet/Connection/detach()``.
    public func detachFileDescriptor() async throws(NetError) -> FileDescriptor {
        FileDescriptor(rawValue: try await detach())
    }
}

extension RawConnection {
    /// Adopts `descriptor` (a pipe, timerfd, signalfd, inotify or TTY descriptor the caller
    /// owns) as ``PollerNet/RawConnection/init(adopting:poller:usePoller:)`` does; closing the
    /// connection closes it.
    public convenience init(adopting descriptor: FileDescriptor, poller: Poller? = nil) throws(NetError) {
        try self.init(adopting: descriptor.rawValue, poller: poller)
    }
}
