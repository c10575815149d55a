import Glibc

/// write(2) that reports EPIPE instead of raising SIGPIPE, for descriptors that are not
/// sockets (pipes, FIFOs), where `send(MSG_NOSIGNAL)` is not available.
///
/// Go ignores SIGPIPE raised by writes to descriptors other than stdout and stderr. A library
/// must not change the process-wide disposition behind its caller's back, so this changes
/// only the calling thread's signal mask, and only for the duration of the call (no
/// suspension point in between, so the thread cannot change):
/// 1. note whether a SIGPIPE is already pending (the caller's, to be left alone);
/// 2. block SIGPIPE in this thread; a SIGPIPE raised by the write is then left pending
///    instead of delivered (the kernel sends it to the writing thread);
/// 3. write;
/// 4. on EPIPE, if no SIGPIPE was pending before, consume the one the write raised with a
///    zero-timeout `sigtimedwait` (if SIGPIPE is ignored, none was queued and this finds
///    nothing);
/// 5. restore the thread's mask.
///
/// The price is three extra system calls per write(2) (a fourth on EPIPE), paid only by
/// non-socket descriptors; sockets use `send(MSG_NOSIGNAL)` and pay nothing.
///
/// - Returns: write(2)'s result, with errno as write(2) left it.
func writeWithoutSIGPIPE(_ fd: Int32, _ base: UnsafeRawPointer, _ count: Int) -> Int {
    withSIGPIPEBlocked { Glibc.write(fd, base, count) }
}

/// Runs `call`, a system call that may raise SIGPIPE (write(2), writev(2), sendfile(2)), with
/// SIGPIPE blocked in the calling thread, consuming a SIGPIPE it raised, as
/// ``writeWithoutSIGPIPE(_:_:_:)`` describes.
///
/// - Returns: `call`'s result, with errno as `call` left it.
func withSIGPIPEBlocked(_ call: () -> Int) -> Int {
    var sigpipe = sigset_t()
    sigemptyset(&sigpipe)
    sigaddset(&sigpipe, SIGPIPE)
    var pending = sigset_t()
    sigemptyset(&pending)
    // If sigpending fails (it cannot with a valid pointer) the set stays empty: we would then
    // consume at most a SIGPIPE that was merged with ours anyway.
    sigpending(&pending)
    let wasPending = sigismember(&pending, SIGPIPE) == 1
    var saved = sigset_t()
    pthread_sigmask(SIG_BLOCK, &sigpipe, &saved)
    let n = call()
    let writeErrno = errno
    if n < 0 && writeErrno == EPIPE && !wasPending {
        var zero = timespec(tv_sec: 0, tv_nsec: 0)
        while sigtimedwait(&sigpipe, nil, &zero) < 0 && errno == EINTR {}
    }
    pthread_sigmask(SIG_SETMASK, &saved, nil)
    errno = writeErrno
    return n
}
