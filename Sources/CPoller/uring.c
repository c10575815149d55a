// io_uring primitives (liburing). Readiness only: one multishot POLL_ADD per descriptor for
// IN | OUT | RDHUP | PRI, the io_uring twin of Go's single edge-triggered epoll registration.
// The ring is created with SINGLE_ISSUER | DEFER_TASKRUN, so every function here except
// cpoller_uring_probe must be called on the thread that created the ring.
#include "cpoller.h"
#include "fault.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

// Thread-local so a test can inject a failure without disturbing pollers other tests start.
static _Thread_local int injected_setup_error = 0;

void cpoller_uring_inject_setup_failure(int err) { injected_setup_error = err; }

#if defined(CPOLLER_IOURING)

#include <sys/eventfd.h>
#include <unistd.h>
#include <liburing.h>

// user_data of our own removal requests. Tokens from Swift never have bit 63 set.
#define CONTROL_BIT ((uint64_t)1 << 63)

struct cpoller_uring {
    struct io_uring ring;
    uint64_t overflows;
};

int cpoller_uring_compiled(void) { return 1; }

static int setup(struct io_uring *ring, unsigned sq_entries, unsigned cq_entries) {
    int injected = injected_setup_error;
    if (injected) return -injected;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    // Measured here: without DEFER_TASKRUN (or COOP_TASKRUN) a readiness ring costs twice the
    // CPU per round trip; DEFER_TASKRUN is the best of the three (uring-ring-flags.md).
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
              IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_CQSIZE;
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

cpoller_uring *cpoller_uring_create(unsigned sq_entries, unsigned cq_entries, int *err) {
    cpoller_uring *u = calloc(1, sizeof *u);
    if (!u) {
        *err = ENOMEM;
        return NULL;
    }
    int r = setup(&u->ring, sq_entries, cq_entries);
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

static int arm(cpoller_uring *u, int fd, unsigned mask, uint64_t token) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    if (cpoller_fault_take(CPOLLER_FAULT_POLL_REQUEST, u->ring.ring_fd)) fd = -1;
    io_uring_prep_poll_multishot(sqe, fd, mask);
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int cpoller_uring_arm(cpoller_uring *u, int fd, uint64_t token) {
    return arm(u, fd, POLLIN | POLLOUT | POLLRDHUP | POLLPRI, token);
}

int cpoller_uring_arm_in(cpoller_uring *u, int fd, uint64_t token) {
    return arm(u, fd, POLLIN, token);
}

int cpoller_uring_queue_cancel(cpoller_uring *u, uint64_t token) {
    struct io_uring_sqe *sqe = get_sqe(&u->ring);
    if (!sqe) return -EBUSY;
    // ASYNC_CANCEL, not POLL_REMOVE: POLL_REMOVE fails with -EALREADY while an event's task
    // work for the poll is pending, and the multishot poll then lives on, holding the file.
    // A cancel marks the poll cancelled whoever owns it at that moment.
    io_uring_prep_cancel64(sqe, token, 0);
    io_uring_sqe_set_data64(sqe, token | CONTROL_BIT);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    return 0;
}

int cpoller_uring_get_events(cpoller_uring *u) {
    struct io_uring *ring = &u->ring;
    int r = 0;
    // With DEFER_TASKRUN only a bounded amount of task work runs per enter; go on while the
    // kernel says more is pending (bounded too: never loop on work that keeps arriving).
    for (int pass = 0; pass < 16; pass++) {
        r = io_uring_get_events(ring);
        if (!(IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_TASKRUN)) break;
    }
    return r < 0 ? r : 0;
}

int cpoller_uring_submit(cpoller_uring *u) {
    int injected = cpoller_fault_take(CPOLLER_FAULT_SUBMIT, u->ring.ring_fd);
    if (injected) return -injected;
    int r;
    do {
        r = io_uring_submit(&u->ring);
    } while (r == -EINTR);
    return r;
}

static uint32_t neutral_flags(const struct io_uring_cqe *cqe) {
    uint32_t f = 0;
    int32_t res = cqe->res;
    if (res >= 0) {
        if (res & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) f |= CPOLLER_EV_READABLE;
        if (res & (POLLOUT | POLLHUP | POLLERR)) f |= CPOLLER_EV_WRITABLE;
        if (res == POLLERR) f |= CPOLLER_EV_ERROR;
        if (res & (POLLRDHUP | POLLHUP)) f |= CPOLLER_EV_HANGUP;
        if (res & POLLPRI) f |= CPOLLER_EV_PRIORITY;
    } else if (res != -ECANCELED) {
        // The poll request itself failed: wake both directions so the I/O reports the error.
        f |= CPOLLER_EV_READABLE | CPOLLER_EV_WRITABLE | CPOLLER_EV_ERROR;
    }
    if (!(cqe->flags & IORING_CQE_F_MORE)) f |= CPOLLER_EV_ENDED;
    return f;
}

enum { BATCH = 256, MAX_PASSES = 8 };

int cpoller_uring_wait(cpoller_uring *u, cpoller_event *events, int cap, int64_t timeout_ns) {
    struct io_uring *ring = &u->ring;
    int injected = cpoller_fault_take(CPOLLER_FAULT_WAIT, ring->ring_fd);
    if (injected) return -injected;
    int r;
    if (timeout_ns == 0) {
        r = io_uring_submit_and_get_events(ring);
    } else {
        struct __kernel_timespec ts, *tsp = NULL;
        if (timeout_ns > 0) {
            ts.tv_sec = timeout_ns / 1000000000;
            ts.tv_nsec = timeout_ns % 1000000000;
            tsp = &ts;
        }
        struct io_uring_cqe *cqe = NULL;
        // Submits pending requests and waits in the same io_uring_enter
        // (io_uring_wait_cqe_timeout would not submit).
        r = io_uring_submit_and_wait_timeout(ring, &cqe, 1, tsp, NULL);
    }
    if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY) return r;

    // Drain in bounded batches: never loop on a tail that the kernel keeps moving.
    int n = 0;
    for (int pass = 0; pass < MAX_PASSES && n < cap; pass++) {
        struct io_uring_cqe *cqes[BATCH];
        unsigned want = (unsigned)(cap - n) < BATCH ? (unsigned)(cap - n) : BATCH;
        unsigned got = io_uring_peek_batch_cqe(ring, cqes, want);
        for (unsigned i = 0; i < got; i++) {
            uint64_t data = io_uring_cqe_get_data64(cqes[i]);
            if (data & CONTROL_BIT) continue;  // a failed removal (-ENOENT, -EALREADY)
            events[n].token = data;
            events[n].flags = neutral_flags(cqes[i]);
            events[n].res = cqes[i]->res;
            n++;
        }
        io_uring_cq_advance(ring, got);
        if (got == want) continue;
        // Completions parked in the kernel: overflowed ones (NODROP keeps them) and deferred
        // task work beyond the per-enter cap. Flush them into the ring and drain again.
        unsigned sqflags = IO_URING_READ_ONCE(*ring->sq.kflags);
        if (!(sqflags & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN))) break;
        if (sqflags & IORING_SQ_CQ_OVERFLOW) u->overflows++;
        io_uring_get_events(ring);
    }
    // The kernel refused the enter for want of resources (-EAGAIN) or because completions
    // must be reaped first (-EBUSY), and there was nothing to reap: report it, so the caller
    // backs off instead of calling again at once.
    if (n == 0 && (r == -EAGAIN || r == -EBUSY)) return r;
    return n;
}

uint64_t cpoller_uring_overflow_count(const cpoller_uring *u) { return u->overflows; }

int cpoller_uring_probe(void) {
    struct io_uring ring;
    int r = setup(&ring, 8, 16);
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

#else  // io_uring not compiled in (the IOUring trait is off)

int cpoller_uring_compiled(void) { return 0; }
cpoller_uring *cpoller_uring_create(unsigned sq_entries, unsigned cq_entries, int *err) {
    (void)sq_entries;
    (void)cq_entries;
    *err = ENOSYS;
    return NULL;
}
void cpoller_uring_destroy(cpoller_uring *u) { (void)u; }
int cpoller_uring_fd(const cpoller_uring *u) { (void)u; return -1; }
int cpoller_uring_arm(cpoller_uring *u, int fd, uint64_t t) { (void)u; (void)fd; (void)t; return -ENOSYS; }
int cpoller_uring_arm_in(cpoller_uring *u, int fd, uint64_t t) { (void)u; (void)fd; (void)t; return -ENOSYS; }
int cpoller_uring_queue_cancel(cpoller_uring *u, uint64_t t) { (void)u; (void)t; return -ENOSYS; }
int cpoller_uring_get_events(cpoller_uring *u) { (void)u; return -ENOSYS; }
int cpoller_uring_submit(cpoller_uring *u) { (void)u; return -ENOSYS; }
int cpoller_uring_wait(cpoller_uring *u, cpoller_event *e, int c, int64_t t) {
    (void)u; (void)e; (void)c; (void)t;
    return -ENOSYS;
}
uint64_t cpoller_uring_overflow_count(const cpoller_uring *u) { (void)u; return 0; }
int cpoller_uring_probe(void) {
    int injected = injected_setup_error;
    return injected ? injected : ENOSYS;
}

#endif
