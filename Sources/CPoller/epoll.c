// epoll primitives. Which events a descriptor is registered for, and what the events mean, is
// the Swift backend's choice (EpollBackend.swift, Backend.swift).
#include "cpoller.h"
#include "fault.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
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

// The Swift backend names readiness in poll(2) bits for both backends; on Linux the epoll bits
// are the same numbers.
_Static_assert(EPOLLIN == POLLIN && EPOLLPRI == POLLPRI && EPOLLOUT == POLLOUT &&
                   EPOLLERR == POLLERR && EPOLLHUP == POLLHUP && EPOLLRDHUP == POLLRDHUP,
               "epoll and poll bits differ");
// cpoller_epoll_wait lets the kernel write struct epoll_events into the caller's
// cpoller_event buffer and widens them in place.
_Static_assert(sizeof(struct epoll_event) <= sizeof(cpoller_event), "cpoller_event too small");

int cpoller_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int cpoller_epoll_add(int epfd, int fd, uint32_t events, uint64_t token) {
    struct epoll_event ev = {.events = events, .data = {.u64 = token}};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int cpoller_epoll_del(int epfd, int fd) {
    struct epoll_event ev = {0};  // non-NULL for kernels before 2.6.9
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev) < 0 ? -errno : 0;
}

int cpoller_epoll_has_pwait2(void) { return atomic_load(&pwait2_state) >= 0 ? 1 : 0; }

void cpoller_epoll_force_ms_timeouts(int force) { atomic_store(&pwait2_state, force ? -1 : 0); }

int cpoller_epoll_wait(int epfd, cpoller_event *events, int cap, int64_t timeout_ns) {
    if (cap <= 0) return -EINVAL;
    // The kernel fills the front of the caller's buffer with packed struct epoll_events.
    struct epoll_event *raw = (struct epoll_event *)(void *)events;
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
            // 0 -> 1 only: a wait that raced with a switch to -1 (another poller's EPERM, or
            // the test seam) must not switch the process back.
            int unknown = 0;
            atomic_compare_exchange_strong(&pwait2_state, &unknown, 1);
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
    // Widen in place, last first: event i is written at or after where raw event i was read,
    // and only over raw events already read (i' >= i), since sizeof(struct epoll_event) <=
    // sizeof(cpoller_event). memcpy, not a typed load, because the two types alias.
    for (int i = n - 1; i >= 0; i--) {
        struct epoll_event e;
        memcpy(&e, (const char *)events + (size_t)i * sizeof e, sizeof e);
        events[i] = (cpoller_event){.token = e.data.u64, .flags = 0, .res = (int32_t)e.events, .cqe_flags = 0};
    }
    return n;
}
