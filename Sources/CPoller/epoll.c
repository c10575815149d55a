// epoll primitives. Edge-triggered registration for IN | OUT | RDHUP | PRI, done once per
// descriptor (Go's netpollopen); a level-triggered registration for the wake-up channel.
#include "cpoller.h"
#include "fault.h"

#include <errno.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441
#endif

// 1: epoll_pwait2 works, 0: not yet known, -1: unavailable (the kernel lacks it, a seccomp
// filter refuses it, or a test forced ms). Once -1, it stays so: the answer is the process's.
static _Atomic int pwait2_state = 0;

int cpoller_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int ctl_add(int epfd, int fd, uint32_t events, uint64_t token) {
    struct epoll_event ev = {.events = events, .data = {.u64 = token}};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int cpoller_epoll_add(int epfd, int fd, uint64_t token) {
    return ctl_add(epfd, fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET, token);
}

int cpoller_epoll_add_level_in(int epfd, int fd, uint64_t token) {
    return ctl_add(epfd, fd, EPOLLIN, token);
}

int cpoller_epoll_del(int epfd, int fd) {
    struct epoll_event ev = {0};  // non-NULL for kernels before 2.6.9
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev) < 0 ? -errno : 0;
}

int cpoller_epoll_has_pwait2(void) { return atomic_load(&pwait2_state) >= 0 ? 1 : 0; }

void cpoller_epoll_force_ms_timeouts(int force) { atomic_store(&pwait2_state, force ? -1 : 0); }

static uint32_t neutral_flags(uint32_t e) {
    uint32_t f = 0;
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) f |= CPOLLER_EV_READABLE;
    if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) f |= CPOLLER_EV_WRITABLE;
    if (e == EPOLLERR) f |= CPOLLER_EV_ERROR;
    if (e & (EPOLLRDHUP | EPOLLHUP)) f |= CPOLLER_EV_HANGUP;
    if (e & EPOLLPRI) f |= CPOLLER_EV_PRIORITY;
    return f;
}

enum { BATCH = 256 };

int cpoller_epoll_wait(int epfd, cpoller_event *events, int cap, int64_t timeout_ns) {
    struct epoll_event raw[BATCH];
    if (cap > BATCH) cap = BATCH;
    if (cap <= 0) return -EINVAL;
    int injected = cpoller_fault_take(CPOLLER_FAULT_WAIT, epfd);
    if (injected) return -injected;
    int n = -1;
    if (atomic_load(&pwait2_state) >= 0) {
        struct timespec ts, *tsp = NULL;
        if (timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000;
            ts.tv_nsec = timeout_ns % 1000000000;
            tsp = &ts;
        }
        int refused = cpoller_fault_take(CPOLLER_FAULT_PWAIT2, epfd);
        if (refused) {
            errno = refused;
        } else {
            n = (int)syscall(SYS_epoll_pwait2, epfd, raw, cap, tsp, NULL, (size_t)0);
        }
        // ENOSYS: the kernel predates 5.11. EPERM: a seccomp profile that denies system calls
        // it does not know (older container runtimes' defaults, many sandboxes) refuses it;
        // epoll_wait is on every such list. epoll_pwait2 never fails with EPERM otherwise.
        if (n < 0 && (errno == ENOSYS || errno == EPERM)) {
            atomic_store(&pwait2_state, -1);
        } else if (n >= 0) {
            atomic_store(&pwait2_state, 1);
        }
    }
    if (n < 0 && atomic_load(&pwait2_state) < 0) {
        int ms;
        if (timeout_ns < 0) {
            ms = -1;
        } else if (timeout_ns == 0) {
            ms = 0;
        } else if (timeout_ns >= (int64_t)1000000000 * 1000000) {
            ms = 1000000000;  // about 11.5 days, Go's cap
        } else {
            // Round up: a positive timeout never becomes 0, which would spin.
            ms = (int)((timeout_ns + 999999) / 1000000);
        }
        n = epoll_wait(epfd, raw, cap, ms);
    }
    if (n < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        events[i].token = raw[i].data.u64;
        events[i].flags = neutral_flags(raw[i].events);
        events[i].res = (int32_t)raw[i].events;
    }
    return n;
}
