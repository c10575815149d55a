// CPoller: the thin C layer under Poller.
//
// Everything here is a syscall wrapper or a liburing call that Swift cannot make directly
// (static inline helpers, macros, structures Swift must not see). There is no policy: which
// registration is live, when to re-arm, when to wake, what a deadline means: all of that is
// decided in Swift. Every function returns a non-negative result or a negated errno.
//
// This header is opaque on purpose: it never includes <liburing.h>, so Swift's view of glibc
// is not disturbed by liburing's feature macros, and the package builds without liburing-dev
// when the IOUring trait is off (the io_uring functions then return -ENOSYS).
#ifndef CPOLLER_H
#define CPOLLER_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

// MARK: Neutral events

// Readiness bits of a cpoller_event. Hang-up and error count as both directions (as Go maps
// EPOLLHUP/EPOLLERR); CPOLLER_EV_ERROR is set only when the kernel reported an error and
// nothing else (Go's eventErr rule), or when an io_uring poll request failed.
enum {
    CPOLLER_EV_READABLE = 1u << 0,
    CPOLLER_EV_WRITABLE = 1u << 1,
    CPOLLER_EV_ERROR = 1u << 2,
    // io_uring only: the multishot poll behind this token has ended (no IORING_CQE_F_MORE).
    // The Swift backend re-arms it if the registration is still live.
    CPOLLER_EV_ENDED = 1u << 3,
    // The peer hung up its write side (RDHUP) or the whole connection (HUP).
    CPOLLER_EV_HANGUP = 1u << 4,
    // Urgent (out-of-band) data is queued: a read stops at its mark, so a short read no
    // longer proves the receive queue empty.
    CPOLLER_EV_PRIORITY = 1u << 5,
};

typedef struct cpoller_event {
    uint64_t token;
    uint32_t flags;  // CPOLLER_EV_*
    int32_t res;     // raw kernel result (epoll events mask, or io_uring cqe->res)
} cpoller_event;

// MARK: epoll

// epoll_create1(EPOLL_CLOEXEC).
int cpoller_epoll_create(void);
// Registers fd once, edge-triggered, for IN | OUT | RDHUP | PRI, with a 64-bit token.
int cpoller_epoll_add(int epfd, int fd, uint64_t token);
// Registers fd level-triggered for IN only (the wake-up channel).
int cpoller_epoll_add_level_in(int epfd, int fd, uint64_t token);
int cpoller_epoll_del(int epfd, int fd);
// Waits up to timeout_ns (< 0: forever, 0: poll) and fills at most cap events. Returns the
// number of events; EINTR returns 0; any other failure returns -errno. Uses epoll_pwait2
// (nanosecond timeouts) where it is allowed, else epoll_wait with the timeout rounded up to
// whole milliseconds, never down to 0. The first ENOSYS or EPERM from epoll_pwait2 switches
// the process to epoll_wait for good.
int cpoller_epoll_wait(int epfd, cpoller_event *events, int cap, int64_t timeout_ns);
// 1 when epoll_pwait2 is in use, 0 when the millisecond fallback is.
int cpoller_epoll_has_pwait2(void);
// Test hook: force the millisecond epoll_wait fallback (1) or allow epoll_pwait2 again (0).
void cpoller_epoll_force_ms_timeouts(int force);

// MARK: io_uring

typedef struct cpoller_uring cpoller_uring;

// Sets up a ring with SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL | CQSIZE: only the thread
// that calls this may later submit or wait on it. Requires FEAT_NODROP and FEAT_EXT_ARG.
// On failure returns NULL and stores a positive errno in *err.
cpoller_uring *cpoller_uring_create(unsigned sq_entries, unsigned cq_entries, int *err);
void cpoller_uring_destroy(cpoller_uring *ring);
int cpoller_uring_fd(const cpoller_uring *ring);
// Queues one multishot poll for IN | OUT | RDHUP | PRI with user_data = token, to be sent to
// the kernel by the next submit or wait. Returns 0, or -EBUSY when the submission queue is
// full (nothing queued).
int cpoller_uring_arm(cpoller_uring *ring, int fd, uint64_t token);
// Queues a level-triggered-style multishot poll for IN only (the wake-up channel). As above.
int cpoller_uring_arm_in(cpoller_uring *ring, int fd, uint64_t token);
// Queues a cancel of every poll request with user_data = token (never by fd number); its own
// completion is skipped on success and dropped by cpoller_uring_wait on failure (-ENOENT).
// Returns 0, or -EBUSY when the submission queue is full (nothing queued).
int cpoller_uring_queue_cancel(cpoller_uring *ring, uint64_t token);
// Submits everything queued (EINTR is retried). Returns the number submitted or -errno; on
// failure the requests stay queued for the next submit or wait.
int cpoller_uring_submit(cpoller_uring *ring);
// Flushes overflowed completions into the completion ring and runs the ring's deferred task
// work (with DEFER_TASKRUN a cancelled poll completes, and drops its file reference, only
// then). Returns 0 or -errno.
int cpoller_uring_get_events(cpoller_uring *ring);
// Submits what is queued and waits up to timeout_ns (< 0 forever, 0 poll) for at least one
// completion, in one io_uring_enter. Then drains completions in bounded batches (flushing
// overflowed completions and deferred task work) into events, at most cap. Returns the
// number of events; -ETIME and -EINTR return what is there, and so do -EAGAIN and -EBUSY
// unless there was nothing (then they are returned). Other failures return -errno.
int cpoller_uring_wait(cpoller_uring *ring, cpoller_event *events, int cap, int64_t timeout_ns);
// Test hook: how many times the completion queue overflowed (IORING_SQ_CQ_OVERFLOW seen).
uint64_t cpoller_uring_overflow_count(const cpoller_uring *ring);
// Whether io_uring works for this process: a ring can be set up with the flags above and a
// multishot poll on an eventfd completes. Returns 0 or a positive errno naming the reason.
int cpoller_uring_probe(void);
// Test hook, for the calling thread only: makes cpoller_uring_create and cpoller_uring_probe
// fail with errno (0 restores).
void cpoller_uring_inject_setup_failure(int err);
// 1 when the package was built with the IOUring trait (liburing linked), else 0.
int cpoller_uring_compiled(void);

// MARK: Wake-up channel (Go's netpollBreak)

// Creates an eventfd (EFD_NONBLOCK | EFD_CLOEXEC); both fds[0] (read) and fds[1] (write) are
// that eventfd. If eventfd fails, or force_pipe is set, creates a non-blocking close-on-exec
// pipe instead. Returns 0 (eventfd) or 1 (pipe), or -errno.
int cpoller_wake_create(int fds[2], int force_pipe);
// Writes one token. EAGAIN (counter or pipe full) counts as success: a wake is pending.
int cpoller_wake_signal(int wfd, int is_pipe);
// Reads every pending token. Returns 0 or -errno (EAGAIN is not an error).
int cpoller_wake_drain(int rfd, int is_pipe);
// Test hook, for the calling thread only: cpoller_wake_create behaves as if eventfd failed (1).
void cpoller_wake_inject_eventfd_failure(int fail);

// MARK: Parker (one blocked thread, woken by another)

// A futex word: 0 = not signalled, 1 = signalled. Park consumes the signal.
typedef struct cpoller_parker {
    uint32_t state;
} cpoller_parker;

void cpoller_parker_init(cpoller_parker *p);
// Blocks until signalled or timeout_ns passes (< 0: forever). Returns 1 if it consumed a
// signal, 0 on timeout.
int cpoller_parker_park(cpoller_parker *p, int64_t timeout_ns);
void cpoller_parker_unpark(cpoller_parker *p);

// MARK: Fault injection (tests)

// Where a test can make a primitive fail. Each point is inert (one relaxed atomic load) until
// armed with cpoller_fault_inject.
enum {
    // cpoller_epoll_wait / cpoller_uring_wait fail with err before reaching the kernel.
    CPOLLER_FAULT_WAIT = 0,
    // The epoll_pwait2 system call answers err (as a seccomp filter would); the
    // millisecond epoll_wait fallback is not affected.
    CPOLLER_FAULT_PWAIT2 = 1,
    // The ring's submission queue has no free entry (io_uring_get_sqe returns NULL); err unused.
    CPOLLER_FAULT_GET_SQE = 2,
    // cpoller_uring_submit fails with err (EBUSY, EAGAIN, ENOMEM, ...) before the kernel.
    CPOLLER_FAULT_SUBMIT = 3,
    // The poll request queued by cpoller_uring_arm / cpoller_uring_arm_in names descriptor
    // -1, so the kernel itself fails it (a completion with -EBADF and no IORING_CQE_F_MORE),
    // as it fails a poll request it cannot serve; err unused.
    CPOLLER_FAULT_POLL_REQUEST = 4,
    CPOLLER_FAULT_POINTS = 5,
};

// Arms fault `point` for the epoll or ring descriptor `fd` only (so pollers other tests run
// are undisturbed): the next `count` calls fail with the positive errno `err`; count < 0 means
// every call until re-armed; count 0 disarms. Returns how many failures the previous setting
// of this point delivered.
int cpoller_fault_inject(int point, int fd, int err, int count);

// MARK: Small system helpers

// CLOCK_MONOTONIC in nanoseconds.
int64_t cpoller_now_ns(void);
// The calling thread's id. Out of line on purpose: pthread_self() is declared const, and in
// async Swift code the optimiser may reuse a value read on another thread.
uint64_t cpoller_thread_id(void);
// 0 for a descriptor the poller can watch, EBADF if fd is not open, EPERM for a regular file
// or a directory (epoll refuses those; io_uring would report them always ready).
int cpoller_check_pollable(int fd);
int cpoller_set_nonblocking(int fd);
// accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC): the new descriptor, or -1 with errno
// set (Swift's Glibc module hides accept4).
int cpoller_accept_nonblocking(int fd);
// pipe2(fds, O_CLOEXEC | O_NONBLOCK): 0, or -errno (Swift's Glibc module hides pipe2).
int cpoller_pipe_cloexec_nonblocking(int fds[2]);
// The number of open descriptors of this process (entries in /proc/self/fd), or -errno.
int cpoller_count_open_fds(void);
// Starts a detached-free (joinable) pthread running fn(arg). Returns 0 or errno.
int cpoller_thread_start(uint64_t *thread, void *(*fn)(void *), void *arg);
int cpoller_thread_join(uint64_t thread);
int cpoller_thread_detach(uint64_t thread);
// ThreadSanitizer happens-before annotations for a lock at addr (no-ops without TSan).
void cpoller_tsan_acquire(void *addr);
void cpoller_tsan_release(void *addr);
// Bytes of heap in use by malloc (glibc mallinfo2: arenas plus mmapped blocks), for the
// memory-per-descriptor benchmark.
int64_t cpoller_heap_bytes_in_use(void);
// Names the calling thread (best effort; at most 15 bytes are kept).
void cpoller_thread_set_name(const char *name);

#ifdef __cplusplus
}
#endif

#endif
