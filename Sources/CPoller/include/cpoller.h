// CPoller: the thin C layer under Poller.
//
// Everything here is a syscall wrapper or a liburing call that Swift cannot make directly
// (static inline helpers, macros, structures Swift must not see). There is no policy: which
// events to ask for, how the ring is set up, what an event means, which registration is
// live, when to re-arm or retry, when to wake, what a deadline means: all of that is decided
// in Swift, and the C functions take the kernel's flags and return the kernel's answers.
// Every function returns a non-negative result or a negated errno.
//
// This header is opaque on purpose: it never includes <liburing.h>, so Swift's view of glibc
// is not disturbed by liburing's feature macros, and the package builds without liburing-dev
// when the IOUring trait is off (the io_uring functions then return -ENOSYS).
#ifndef CPOLLER_H
#define CPOLLER_H

#if !defined(__linux__)
#error "Poller needs Linux: its backends are epoll and io_uring. There is no kqueue backend yet (macOS, the BSDs)."
#endif

#include <stdint.h>
#include <stddef.h>
#include <sys/epoll.h>  // EPOLL* bits, which the Swift backends choose and read
#include <sys/types.h>
#include <sys/socket.h>  // struct msghdr (cpoller_uring_sendmsg)
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

// MARK: Events

// One readiness event, as the C layer reads it from the kernel and as the backend hands it to
// the core. C fills `token`, `res` and `cqe_flags` with what the kernel said and leaves
// `flags` 0; the Swift backend's poll sets `flags` (CPOLLER_EV_*) from them before the core
// sees the event. What the bits mean, and the one rule that maps kernel bits to them, are in
// Sources/Poller/Backends/Backend.swift (extension cpoller_event).
enum {
    CPOLLER_EV_READABLE = 1u << 0,
    CPOLLER_EV_WRITABLE = 1u << 1,
    CPOLLER_EV_ERROR = 1u << 2,
    CPOLLER_EV_ENDED = 1u << 3,
    CPOLLER_EV_HANGUP = 1u << 4,
    CPOLLER_EV_PRIORITY = 1u << 5,
    CPOLLER_EV_RECEIVED = 1u << 6,
    CPOLLER_EV_SENT = 1u << 7,
    CPOLLER_EV_ACCEPTED = 1u << 8,
};

typedef struct cpoller_event {
    uint64_t token;
    uint32_t flags;      // CPOLLER_EV_*, set in Swift
    int32_t res;         // raw kernel result: the epoll events mask, or io_uring cqe->res
    uint32_t cqe_flags;  // raw io_uring cqe->flags (IORING_CQE_F_*); 0 for epoll
} cpoller_event;

// MARK: epoll

// epoll_create1(EPOLL_CLOEXEC).
int cpoller_epoll_create(void);
// epoll_ctl(ADD) of fd for `events` (EPOLL* bits, chosen by the caller) with a 64-bit token.
int cpoller_epoll_add(int epfd, int fd, uint32_t events, uint64_t token);
int cpoller_epoll_del(int epfd, int fd);
// The two waits. Both fill at most cap events (any cap: the kernel writes into `events`
// itself, which is then widened in place) and return the number of events or -errno (EINTR
// included). Which to call, and what an error means, is EpollBackend's choice.
// epoll_pwait2 (Linux 5.11): timeout_ns < 0 waits forever, 0 polls. -ENOSYS on older kernels;
// -EPERM where a seccomp filter refuses it.
int cpoller_epoll_pwait2(int epfd, cpoller_event *events, int cap, int64_t timeout_ns);
// epoll_wait: timeout_ms < 0 waits forever, 0 polls.
int cpoller_epoll_wait_ms(int epfd, cpoller_event *events, int cap, int timeout_ms);

// MARK: io_uring

typedef struct cpoller_uring cpoller_uring;

// The kernel's IORING_SETUP_* and IORING_SQ_* values the Swift backend names (checked against
// <liburing.h> at compile time in uring.c), so Swift can choose them without seeing liburing.
enum {
    CPOLLER_URING_SETUP_SUBMIT_ALL = 1u << 7,
    CPOLLER_URING_SETUP_SINGLE_ISSUER = 1u << 12,
    CPOLLER_URING_SETUP_DEFER_TASKRUN = 1u << 13,
    CPOLLER_URING_SQ_CQ_OVERFLOW = 1u << 1,
    CPOLLER_URING_SQ_TASKRUN = 1u << 2,
};
// The raw IORING_CQE_F_MORE bit of cpoller_event.cqe_flags: the multishot request stays armed.
enum { CPOLLER_URING_CQE_F_MORE = 1u << 1 };
// Bit 63 of user_data marks the C layer's own cancel requests; tokens never have it set.
static const uint64_t CPOLLER_URING_CONTROL_BIT = (uint64_t)1 << 63;

// Sets up a ring with the caller's IORING_SETUP_* `flags`, plus the two this layer relies on
// itself: CQSIZE (cq_entries is honoured) and TASKRUN_FLAG (cpoller_uring_sq_flags reports
// pending task work). Requires FEAT_NODROP (overflowed completions are kept, never lost) and
// FEAT_EXT_ARG (cpoller_uring_enter submits and waits with a timeout in one call), else fails
// with EOPNOTSUPP. With SINGLE_ISSUER only the calling thread may later submit or wait.
// On failure returns NULL and stores a positive errno in *err.
cpoller_uring *cpoller_uring_create(unsigned sq_entries, unsigned cq_entries, unsigned flags, int *err);
void cpoller_uring_destroy(cpoller_uring *ring);
int cpoller_uring_fd(const cpoller_uring *ring);
// Queues one multishot poll for the poll(2) bits `mask` with user_data = token, to be sent to
// the kernel by the next submit or enter. Returns 0, or -EBUSY when the submission queue is
// full (nothing queued).
int cpoller_uring_arm(cpoller_uring *ring, int fd, uint32_t mask, uint64_t token);
// Queues a cancel of every poll request with user_data = token (never by fd number). The
// cancel itself carries user_data = token | CPOLLER_URING_CONTROL_BIT and
// IOSQE_CQE_SKIP_SUCCESS: only a failed cancel (-ENOENT, -EALREADY) completes. Returns 0, or
// -EBUSY when the submission queue is full (nothing queued).
int cpoller_uring_queue_cancel(cpoller_uring *ring, uint64_t token);
// Submits everything queued (EINTR is retried). Returns the number submitted or -errno; on
// failure the requests stay queued for the next submit or enter.
int cpoller_uring_submit(cpoller_uring *ring);
// One io_uring_get_events: flushes overflowed completions into the completion ring and runs a
// bounded amount of the ring's deferred task work (with DEFER_TASKRUN a cancelled poll
// completes, and drops its file reference, only then). Returns 0 or -errno.
int cpoller_uring_get_events(cpoller_uring *ring);
// The ring's IORING_SQ_* flags as the kernel last set them (CPOLLER_URING_SQ_*): whether
// completions overflowed or task work is pending.
uint32_t cpoller_uring_sq_flags(const cpoller_uring *ring);
// Submits what is queued and waits up to timeout_ns (< 0 forever, 0 do not wait) for at least
// one completion, in one io_uring_enter. Returns what the kernel returned (>= 0, or -errno such
// as -ETIME, -EINTR, -EAGAIN, -EBUSY): what each means is the caller's business.
int cpoller_uring_enter(cpoller_uring *ring, int64_t timeout_ns);
// Copies at most cap completions from the completion ring into events (token = user_data,
// res, cqe_flags) and consumes them. Returns the number copied; fewer than cap means the ring
// is empty now (overflowed completions and deferred task work may still be parked in the
// kernel: see cpoller_uring_sq_flags).
int cpoller_uring_reap(cpoller_uring *ring, cpoller_event *events, int cap);
// Whether io_uring works for this process: a ring can be set up with `flags` (as
// cpoller_uring_create) and a multishot poll on an eventfd completes. Returns 0 or a positive
// errno naming the reason.
int cpoller_uring_probe(unsigned flags);
// 1 when the package was built with the IOUring trait (liburing linked), else 0.
int cpoller_uring_compiled(void);

// MARK: io_uring completion receive (multishot recv from a provided-buffer ring)

// Bit 62 of user_data marks a multishot recv; the poll for the same registration carries the
// token without it. (Tokens keep bits 62 and 63 clear.)
static const uint64_t CPOLLER_URING_RECV_BIT = (uint64_t)1 << 62;
// The raw IORING_CQE_F_BUFFER bit of cqe_flags (a buffer id is in the upper 16 bits), and the
// shift to that id.
enum { CPOLLER_URING_CQE_F_BUFFER = 1u << 0, CPOLLER_URING_CQE_BUFFER_SHIFT = 16 };

typedef struct cpoller_uring_buffers cpoller_uring_buffers;
// Registers a provided-buffer ring of `count` buffers (a power of two, at most 32768) of `size`
// bytes each as buffer group `group` of `ring`, every buffer given to the kernel. The memory
// outlives the ring: free it with cpoller_uring_buffers_free after the ring is destroyed (or
// after cpoller_uring_buffers_unregister). Returns NULL and a positive errno in *err (EINVAL:
// the kernel has no buffer rings, Linux < 5.19).
cpoller_uring_buffers *cpoller_uring_buffers_create(cpoller_uring *ring, unsigned count, unsigned size,
                                                    unsigned group, int *err);
// The first byte of buffer 0; buffer `id` starts at base + id * size.
unsigned char *cpoller_uring_buffers_base(const cpoller_uring_buffers *buffers);
// Gives buffer `id` back to the kernel. Producers must be serialised by the caller (any
// thread; the kernel reads the ring tail with acquire semantics).
void cpoller_uring_buffers_recycle(cpoller_uring_buffers *buffers, unsigned short id);
void cpoller_uring_buffers_free(cpoller_uring_buffers *buffers);
// Queues one multishot recv on fd selecting buffers from `group`, user_data = token (which
// should carry CPOLLER_URING_RECV_BIT). Returns 0, or -EBUSY when the submission queue is full.
int cpoller_uring_arm_recv(cpoller_uring *ring, int fd, unsigned group, uint64_t token);
// Queues an update of the multishot poll with user_data = token to the poll(2) bits `mask`
// (it stays multishot and keeps its token). The update carries token |
// CPOLLER_URING_CONTROL_BIT | CPOLLER_URING_UPDATE_TAG and IOSQE_CQE_SKIP_SUCCESS: only a
// failed update completes (-ENOENT: no poll armed now; -EALREADY: the poll is completing, try
// again after its completion has been reaped). Returns 0, or -EBUSY when the submission queue
// is full.
int cpoller_uring_update_mask(cpoller_uring *ring, uint64_t token, uint32_t mask);
// Whether completion receive works here: a ring set up with `flags` can register a
// provided-buffer ring, and a multishot recv on a socket pair completes with a selected
// buffer and stays armed. Returns 0 or a positive errno (EINVAL: no buffer rings;
// EOPNOTSUPP: no multishot recv, Linux < 6.0).
int cpoller_uring_probe_recv(unsigned flags);

// MARK: io_uring completion send

// Bit 61 of user_data marks a send (the token of the registration it writes to, with this bit).
static const uint64_t CPOLLER_URING_SEND_BIT = (uint64_t)1 << 61;
// Queues one send(2) of `len` bytes at `base` on fd with MSG_NOSIGNAL, user_data = token (which
// should carry CPOLLER_URING_SEND_BIT). The bytes must stay valid and unchanged until its
// completion. Returns 0, or -EBUSY when the submission queue is full.
int cpoller_uring_send(cpoller_uring *ring, int fd, const void *base, size_t len, uint64_t token);
// Queues one sendmsg(2) of the `count` iovecs at `iov` (which, and the bytes they point to,
// must stay valid until its completion: the kernel reads them when it issues the request) with
// MSG_NOSIGNAL. `msg` is caller-owned storage for the header, valid as long. Returns 0 or -EBUSY.
int cpoller_uring_sendmsg(cpoller_uring *ring, int fd, struct msghdr *msg, const struct iovec *iov, int count,
                          uint64_t token);
// MARK: io_uring multishot accept

// Bit 60 of user_data marks a listener's multishot accept; the poll for the same registration
// carries the token without it. (Tokens keep bits 60 to 63 clear.)
static const uint64_t CPOLLER_URING_ACCEPT_BIT = (uint64_t)1 << 60;
// Bits 60 and 61 together (no request kind has both) mark, with CPOLLER_URING_CONTROL_BIT, a
// poll mask update (cpoller_uring_update_mask).
static const uint64_t CPOLLER_URING_UPDATE_TAG = ((uint64_t)1 << 60) | ((uint64_t)1 << 61);
// Queues one multishot accept on the listening socket fd (accept4 flags SOCK_NONBLOCK |
// SOCK_CLOEXEC), user_data = token (which should carry CPOLLER_URING_ACCEPT_BIT): each
// completion's res is an accepted descriptor, now the process's, or -errno. Returns 0, or
// -EBUSY when the submission queue is full. The kernel reads RLIMIT_NOFILE when the request is
// armed, not at each accept.
int cpoller_uring_arm_accept(cpoller_uring *ring, int fd, uint64_t token);
// Whether multishot accept works here: on a ring of its own set up with `flags`, a listening
// TCP socket on 127.0.0.1 accepts a client through a multishot accept that completes with a
// descriptor and stays armed. Closes everything it opened. Returns 0 or a positive errno
// (EINVAL or EOPNOTSUPP: no multishot accept, Linux < 5.19).
int cpoller_uring_probe_accept(unsigned flags);

// MARK: Wake-up channel (Go's netpollBreak)

// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC): the descriptor, or -errno. (The self-pipe is
// cpoller_pipe_cloexec_nonblocking.)
int cpoller_eventfd_create(void);
// Writes one token (8 bytes to an eventfd, 1 byte to a pipe), retrying EINTR. Returns 0 or
// -errno (-EAGAIN: the counter or pipe is full).
int cpoller_wake_signal(int wfd, int is_pipe);
// Reads tokens until none is left (one read empties an eventfd), retrying EINTR. Returns 0
// when it read to the end of a pipe, else -errno (-EAGAIN: nothing, or nothing more, to read).
int cpoller_wake_drain(int rfd, int is_pipe);

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

// MARK: Test seams
//
// Used by tests only, and live only in debug builds (SwiftPM defines DEBUG there; the tests
// build in debug): in a release build the injections do nothing and the paths they would
// reach carry no check.

// For the calling thread only: makes cpoller_uring_create and cpoller_uring_probe fail with
// errno (0 restores).
void cpoller_uring_inject_setup_failure(int err);
// For the calling thread only: cpoller_eventfd_create fails with ENOSYS (1), as where eventfd is
// missing, so the self-pipe is made.
void cpoller_wake_inject_eventfd_failure(int fail);


// Where a test can make a primitive fail. Each point is inert (one relaxed atomic load) until
// armed with cpoller_fault_inject.
enum {
    // cpoller_epoll_pwait2, cpoller_epoll_wait_ms and cpoller_uring_enter fail with err before
    // reaching the kernel.
    CPOLLER_FAULT_WAIT = 0,
    // The epoll_pwait2 system call answers err (as a seccomp filter would); the
    // millisecond epoll_wait fallback is not affected.
    CPOLLER_FAULT_PWAIT2 = 1,
    // The ring's submission queue has no free entry (io_uring_get_sqe returns NULL); err unused.
    CPOLLER_FAULT_GET_SQE = 2,
    // cpoller_uring_submit fails with err (EBUSY, EAGAIN, ENOMEM, ...) before the kernel.
    CPOLLER_FAULT_SUBMIT = 3,
    // The poll request queued by cpoller_uring_arm names descriptor
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
// 1 for a socket whose close must free an address someone may bind again at once: a listening
// stream socket, or a datagram (or raw) socket; 0 for a connection, a pipe, an eventfd...
int cpoller_holds_address(int fd);
int cpoller_set_nonblocking(int fd);
// accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC): the new descriptor, or -1 with errno
// set (Swift's Glibc module hides accept4).
int cpoller_accept_nonblocking(int fd);
// pipe2(fds, O_CLOEXEC | O_NONBLOCK): 0, or -errno (Swift's Glibc module hides pipe2).
int cpoller_pipe_cloexec_nonblocking(int fds[2]);
// strerrorname_np(code): the errno's symbolic name ("EMFILE"), or NULL for an unknown code
// (Swift's Glibc module hides it; glibc 2.32 and later).
const char *cpoller_errno_name(int code);
// timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC): the descriptor, or -errno
// (Swift's Glibc module hides timerfd). For the tests of PollerNet's RawConnection.
int cpoller_timerfd_create(void);
// timerfd_settime(fd, 0, one expiry `ns` nanoseconds from now, no interval): 0, or -errno.
int cpoller_timerfd_arm(int fd, int64_t ns);
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
// The number of CPUs in the calling thread's affinity mask (sched_getaffinity: taskset and
// cgroup cpusets count), or -errno.
int cpoller_affinity_cpu_count(void);
// A thread-local pointer: the poller whose thread this is (NULL on other threads). Swift's
// own thread-locals are not available to a library without Foundation.
void cpoller_set_current_poller(void *poller);
void *cpoller_current_poller(void);

#ifdef __cplusplus
}
#endif

#endif
