// io_uring primitives (liburing) for readiness: multishot POLL_ADD and cancel requests, one
// enter, and copying completions out. The ring's set-up flags, the poll masks, what a
// completion means and every retry are the Swift backend's (URingBackend.swift). Rings set up
// with SINGLE_ISSUER may only be used from the thread that created them.
#include "cpoller.h"
#include "fault.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

// Thread-local so a test can inject a failure without disturbing pollers other tests start.
// Debug builds only (where tests run): a release build's set-up reads no injection.
#ifdef DEBUG
static _Thread_local int injected_setup_error = 0;
void cpoller_uring_inject_setup_failure(int err) { injected_setup_error = err; }
#else
static const int injected_setup_error = 0;
void cpoller_uring_inject_setup_failure(int err) { (void)err; }
#endif

#if defined(CPOLLER_IOURING)

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <liburing.h>

_Static_assert(CPOLLER_URING_SETUP_SUBMIT_ALL == IORING_SETUP_SUBMIT_ALL &&
                   CPOLLER_URING_SETUP_SINGLE_ISSUER == IORING_SETUP_SINGLE_ISSUER &&
                   CPOLLER_URING_SETUP_DEFER_TASKRUN == IORING_SETUP_DEFER_TASKRUN &&
                   CPOLLER_URING_SQ_CQ_OVERFLOW == IORING_SQ_CQ_OVERFLOW &&
                   CPOLLER_URING_SQ_TASKRUN == IORING_SQ_TASKRUN &&
                   CPOLLER_URING_CQE_F_MORE == IORING_CQE_F_MORE &&
                   CPOLLER_URING_CQE_F_BUFFER == IORING_CQE_F_BUFFER &&
                   CPOLLER_URING_CQE_BUFFER_SHIFT == IORING_CQE_BUFFER_SHIFT,
               "cpoller.h's io_uring constants differ from the kernel's");

struct cpoller_uring {
    struct io_uring ring;
};

int cpoller_uring_compiled(void) { return 1; }

static int setup(struct io_uring *ring, unsigned sq_entries, unsigned cq_entries, unsigned flags) {
    int injected = injected_setup_error;
    if (injected) return -injected;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    // The caller's choice, plus what this file relies on: CQSIZE (honour cq_entries) and
    // TASKRUN_FLAG (IORING_SQ_TASKRUN is reported, see cpoller_uring_sq_flags).
    p.flags = flags | IORING_SETUP_CQSIZE | IORING_SETUP_TASKRUN_FLAG;
    p.cq_entries = cq_entries;
    int r = io_uring_queue_init_params(sq_entries, ring, &p);
    if (r < 0) return r;
    // NODROP: overflowed completions are kept, not lost. EXT_ARG: a wait with a timeout
    // happens in the same io_uring_enter that submits.
    if (!(p.features & IORING_FEAT_NODROP) || !(p.features & IORING_FEAT_EXT_ARG)) {
        io_uring_queue_exit(ring);
        return -EOPNOTSUPP;
    }
    return 0;
}

cpoller_uring *cpoller_uring_create(unsigned sq_entries, unsigned cq_entries, unsigned flags, int *err) {
    cpoller_uring *u = calloc(1, sizeof *u);
    if (!u) {
        *err = ENOMEM;
        return NULL;
    }
    int r = setup(&u->ring, sq_entries, cq_entries, flags);
    if (r < 0) {
        free(u);
        *err = -r;
        return NULL;
    }
    *err = 0;
    return u;
}

void cpoller_uring_destroy(cpoller_uring *u) {
    if (!u) return;
    io_uring_queue_exit(&u->ring);
    free(u);
}

int cpoller_uring_fd(const cpoller_uring *u) { return u->ring.ring_fd; }

// A free submission-queue entry, or NULL when the queue is full. What to do then (submit and
// retry, back off, give up) is the caller's policy.
static struct io_uring_sqe *get_sqe(struct io_uring *ring) {
    if (cpoller_fault_take(CPOLLER_FAULT_GET_SQE, ring->ring_fd)) return NULL;
    return io_uring_get_sqe(ring);
}

int cpoller_uring_arm(cpoller_uring *u, int fd, uint32_t mask, uint64_t token) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    if (cpoller_fault_take(CPOLLER_FAULT_POLL_REQUEST, u->ring.ring_fd)) fd = -1;
    io_uring_prep_poll_multishot(sqe, fd, mask);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int cpoller_uring_queue_cancel(cpoller_uring *u, uint64_t token) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    // ASYNC_CANCEL, not POLL_REMOVE: POLL_REMOVE fails with -EALREADY while an event's task
    // work for the poll is pending, and the multishot poll then lives on, holding the file.
    // A cancel marks the poll cancelled whoever owns it at that moment.
    io_uring_prep_cancel64(sqe, token, 0);
    io_uring_sqe_set_data64(sqe, token | CPOLLER_URING_CONTROL_BIT);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    return 0;
}

int cpoller_uring_get_events(cpoller_uring *u) {
    int r = io_uring_get_events(&u->ring);
    return r < 0 ? r : 0;
}

uint32_t cpoller_uring_sq_flags(const cpoller_uring *u) { return IO_URING_READ_ONCE(*u->ring.sq.kflags); }

int cpoller_uring_submit(cpoller_uring *u) {
    int injected = cpoller_fault_take(CPOLLER_FAULT_SUBMIT, u->ring.ring_fd);
    if (injected) return -injected;
    int r;
    do {
        r = io_uring_submit(&u->ring);
    } while (r == -EINTR);
    return r;
}

int cpoller_uring_enter(cpoller_uring *u, int64_t timeout_ns) {
    struct io_uring *ring = &u->ring;
    int injected = cpoller_fault_take(CPOLLER_FAULT_WAIT, ring->ring_fd);
    if (injected) return -injected;
    // Completions already in the ring (left by a reap that filled its batch, or posted
    // inline by a submit made to free queue space) end the call at once, but liburing then
    // enters without IORING_ENTER_GETEVENTS, or not at all, and with DEFER_TASKRUN the
    // deferred task work (poll wake-ups, recv completions) runs only with GETEVENTS: a loop
    // that always finds a completion waiting would never run it again. So enter with
    // GETEVENTS and no wait: it submits, runs the task work and returns.
    if (timeout_ns == 0 || io_uring_cq_ready(ring) > 0) return io_uring_submit_and_get_events(ring);
    struct __kernel_timespec ts, *tsp = NULL;
    if (timeout_ns > 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        tsp = &ts;
    }
    struct io_uring_cqe *cqe = NULL;
    // Submits pending requests and waits in the same io_uring_enter
    // (io_uring_wait_cqe_timeout would not submit).
    return io_uring_submit_and_wait_timeout(ring, &cqe, 1, tsp, NULL);
}

int cpoller_uring_reap(cpoller_uring *u, cpoller_event *events, int cap) {
    struct io_uring *ring = &u->ring;
    struct io_uring_cqe *cqe;
    unsigned head;
    int n = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
        if (n == cap) break;
        events[n] = (cpoller_event){
            .token = io_uring_cqe_get_data64(cqe), .flags = 0, .res = cqe->res, .cqe_flags = cqe->flags};
        n++;
    }
    io_uring_cq_advance(ring, (unsigned)n);
    return n;
}

int cpoller_uring_probe(unsigned flags) {
    struct io_uring ring;
    int r = setup(&ring, 8, 16, flags);
    if (r < 0) return -r;
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) {
        int e = errno;
        io_uring_queue_exit(&ring);
        return e;
    }
    int result = EOPNOTSUPP;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_poll_multishot(sqe, efd, POLLIN);
    io_uring_sqe_set_data64(sqe, 1);
    if (io_uring_submit(&ring) == 1 && eventfd_write(efd, 1) == 0) {
        struct io_uring_cqe *cqe = NULL;
        struct __kernel_timespec ts = {.tv_sec = 1, .tv_nsec = 0};
        r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
        if (r < 0) {
            result = -r;
        } else if (cqe->user_data == 1 && cqe->res > 0 && (cqe->flags & IORING_CQE_F_MORE)) {
            result = 0;  // a multishot poll completed and stays armed
        } else if (cqe->res < 0) {
            result = -cqe->res;
        }
    }
    close(efd);
    io_uring_queue_exit(&ring);
    return result;
}


// MARK: Completion receive

struct cpoller_uring_buffers {
    struct io_uring_buf_ring *br;  // the ring the kernel takes buffers from (page-aligned)
    size_t ring_bytes;
    unsigned char *memory;  // count * size bytes
    unsigned count, size;
};

cpoller_uring_buffers *cpoller_uring_buffers_create(cpoller_uring *u, unsigned count, unsigned size,
                                                    unsigned group, int *err) {
    if (count == 0 || count > 32768 || (count & (count - 1)) || size == 0) {
        *err = EINVAL;
        return NULL;
    }
    cpoller_uring_buffers *b = calloc(1, sizeof *b);
    if (!b) {
        *err = ENOMEM;
        return NULL;
    }
    b->count = count, b->size = size;
    b->ring_bytes = (size_t)count * sizeof(struct io_uring_buf);
    b->br = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    b->memory = malloc((size_t)count * size);
    if (b->br == MAP_FAILED || !b->memory) {
        if (b->br != MAP_FAILED) munmap(b->br, b->ring_bytes);
        free(b->memory);
        free(b);
        *err = ENOMEM;
        return NULL;
    }
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)b->br, .ring_entries = count, .bgid = (uint16_t)group};
    int r = io_uring_register_buf_ring(&u->ring, &reg, 0);
    if (r < 0) {
        munmap(b->br, b->ring_bytes);
        free(b->memory);
        free(b);
        *err = -r;
        return NULL;
    }
    io_uring_buf_ring_init(b->br);
    for (unsigned i = 0; i < count; i++) {
        io_uring_buf_ring_add(b->br, b->memory + (size_t)i * size, size, (unsigned short)i, io_uring_buf_ring_mask(count),
                              (int)i);
    }
    io_uring_buf_ring_advance(b->br, (int)count);
    *err = 0;
    return b;
}

unsigned char *cpoller_uring_buffers_base(const cpoller_uring_buffers *b) { return b->memory; }

void cpoller_uring_buffers_recycle(cpoller_uring_buffers *b, unsigned short id) {
    io_uring_buf_ring_add(b->br, b->memory + (size_t)id * b->size, b->size, id, io_uring_buf_ring_mask(b->count), 0);
    io_uring_buf_ring_advance(b->br, 1);
}

void cpoller_uring_buffers_free(cpoller_uring_buffers *b) {
    if (!b) return;
    munmap(b->br, b->ring_bytes);
    free(b->memory);
    free(b);
}

int cpoller_uring_arm_recv(cpoller_uring *u, int fd, unsigned group, uint64_t token) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = (uint16_t)group;
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int cpoller_uring_send(cpoller_uring *u, int fd, const void *base, size_t len, uint64_t token) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_send(sqe, fd, base, len, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int cpoller_uring_sendmsg(cpoller_uring *u, int fd, struct msghdr *msg, const struct iovec *iov, int count,
                          uint64_t token) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    memset(msg, 0, sizeof *msg);
    msg->msg_iov = (struct iovec *)iov;
    msg->msg_iovlen = (size_t)count;
    io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int cpoller_uring_update_mask(cpoller_uring *u, uint64_t token, uint32_t mask) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    // new_user_data 0: the kernel refuses (EINVAL) a new user_data without
    // IORING_POLL_UPDATE_USER_DATA. The poll keeps its multishot flag and its user_data.
    io_uring_prep_poll_update(sqe, token, 0, mask, IORING_POLL_UPDATE_EVENTS);
    io_uring_sqe_set_data64(sqe, token | CPOLLER_URING_CONTROL_BIT | CPOLLER_URING_UPDATE_TAG);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    return 0;
}

int cpoller_uring_probe_recv(unsigned flags) {
    cpoller_uring u;
    int r = setup(&u.ring, 8, 16, flags);
    if (r < 0) return -r;
    int err = 0;
    cpoller_uring_buffers *b = cpoller_uring_buffers_create(&u, 2, 64, 0, &err);
    if (!b) {
        io_uring_queue_exit(&u.ring);
        return err;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        int e = errno;
        io_uring_queue_exit(&u.ring);
        cpoller_uring_buffers_free(b);
        return e;
    }
    int result = EOPNOTSUPP;
    cpoller_uring_arm_recv(&u, sv[0], 0, 1);
    if (io_uring_submit(&u.ring) == 1 && write(sv[1], "x", 1) == 1) {
        struct io_uring_cqe *cqe = NULL;
        struct __kernel_timespec ts = {.tv_sec = 1, .tv_nsec = 0};
        r = io_uring_wait_cqe_timeout(&u.ring, &cqe, &ts);
        if (r < 0) {
            result = -r;
        } else if (cqe->res == 1 && (cqe->flags & IORING_CQE_F_BUFFER) && (cqe->flags & IORING_CQE_F_MORE)) {
            result = 0;  // a buffer was selected and the recv stays armed
        } else if (cqe->res < 0 && cqe->res != -EINVAL) {
            result = -cqe->res;
        }
    }
    close(sv[0]);
    close(sv[1]);
    io_uring_queue_exit(&u.ring);
    cpoller_uring_buffers_free(b);
    return result;
}

// MARK: Multishot accept

int cpoller_uring_arm_accept(cpoller_uring *u, int fd, uint64_t token) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

// A listening TCP socket on 127.0.0.1 (port chosen by the kernel) and a client connecting to
// it (non-blocking: the handshake completes into the backlog). Returns 0 or a positive errno;
// on failure nothing stays open.
static int probe_listener_and_client(int *listener, int *client) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l < 0) return errno;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(l, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(l, 4) < 0 ||
        getsockname(l, (struct sockaddr *)&addr, &len) < 0) {
        int e = errno;
        close(l);
        return e;
    }
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c < 0 || (connect(c, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)) {
        int e = errno;
        if (c >= 0) close(c);
        close(l);
        return e;
    }
    *listener = l;
    *client = c;
    return 0;
}

int cpoller_uring_probe_accept(unsigned flags) {
    cpoller_uring u;
    int r = setup(&u.ring, 8, 16, flags);
    if (r < 0) return -r;
    int listener = -1, client = -1;
    int result = probe_listener_and_client(&listener, &client);
    if (result != 0) {
        io_uring_queue_exit(&u.ring);
        return result;
    }
    result = EOPNOTSUPP;
    cpoller_uring_arm_accept(&u, listener, 1);
    if (io_uring_submit(&u.ring) == 1) {
        struct io_uring_cqe *cqe = NULL;
        struct __kernel_timespec ts = {.tv_sec = 1, .tv_nsec = 0};
        r = io_uring_wait_cqe_timeout(&u.ring, &cqe, &ts);
        if (r < 0) {
            result = -r;
        } else if (cqe->res >= 0) {
            close(cqe->res);
            if (cqe->flags & IORING_CQE_F_MORE) result = 0;  // accepted, and the accept stays armed
        } else {
            result = -cqe->res;
        }
    }
    // Exiting the ring cancels the armed accept; it accepts nothing more (the one client is in).
    close(client);
    close(listener);
    io_uring_queue_exit(&u.ring);
    return result;
}

#else  // io_uring not compiled in (the IOUring trait is off)

int cpoller_uring_compiled(void) { return 0; }
cpoller_uring *cpoller_uring_create(unsigned sq_entries, unsigned cq_entries, unsigned flags, int *err) {
    (void)sq_entries;
    (void)cq_entries;
    (void)flags;
    *err = ENOSYS;
    return NULL;
}
void cpoller_uring_destroy(cpoller_uring *u) { (void)u; }
int cpoller_uring_fd(const cpoller_uring *u) { (void)u; return -1; }
int cpoller_uring_arm(cpoller_uring *u, int fd, uint32_t m, uint64_t t) { (void)u; (void)fd; (void)m; (void)t; return -ENOSYS; }
int cpoller_uring_queue_cancel(cpoller_uring *u, uint64_t t) { (void)u; (void)t; return -ENOSYS; }
int cpoller_uring_get_events(cpoller_uring *u) { (void)u; return -ENOSYS; }
uint32_t cpoller_uring_sq_flags(const cpoller_uring *u) { (void)u; return 0; }
int cpoller_uring_submit(cpoller_uring *u) { (void)u; return -ENOSYS; }
int cpoller_uring_enter(cpoller_uring *u, int64_t t) { (void)u; (void)t; return -ENOSYS; }
int cpoller_uring_reap(cpoller_uring *u, cpoller_event *e, int c) { (void)u; (void)e; (void)c; return 0; }
cpoller_uring_buffers *cpoller_uring_buffers_create(cpoller_uring *u, unsigned c, unsigned s, unsigned g, int *err) {
    (void)u; (void)c; (void)s; (void)g;
    *err = ENOSYS;
    return NULL;
}
unsigned char *cpoller_uring_buffers_base(const cpoller_uring_buffers *b) { (void)b; return NULL; }
void cpoller_uring_buffers_recycle(cpoller_uring_buffers *b, unsigned short id) { (void)b; (void)id; }
void cpoller_uring_buffers_free(cpoller_uring_buffers *b) { (void)b; }
int cpoller_uring_arm_recv(cpoller_uring *u, int fd, unsigned g, uint64_t t) { (void)u; (void)fd; (void)g; (void)t; return -ENOSYS; }
int cpoller_uring_update_mask(cpoller_uring *u, uint64_t t, uint32_t m) { (void)u; (void)t; (void)m; return -ENOSYS; }
int cpoller_uring_probe_recv(unsigned flags) { (void)flags; return ENOSYS; }
int cpoller_uring_send(cpoller_uring *u, int fd, const void *b, size_t n, uint64_t t) {
    (void)u; (void)fd; (void)b; (void)n; (void)t;
    return -ENOSYS;
}
int cpoller_uring_sendmsg(cpoller_uring *u, int fd, struct msghdr *m, const struct iovec *v, int c, uint64_t t) {
    (void)u; (void)fd; (void)m; (void)v; (void)c; (void)t;
    return -ENOSYS;
}
int cpoller_uring_arm_accept(cpoller_uring *u, int fd, uint64_t t) { (void)u; (void)fd; (void)t; return -ENOSYS; }
int cpoller_uring_probe_accept(unsigned flags) { (void)flags; return ENOSYS; }
int cpoller_uring_probe(unsigned flags) {
    (void)flags;
    int injected = injected_setup_error;
    return injected ? injected : ENOSYS;
}

#endif
