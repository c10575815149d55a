// epoll primitives. Which events a descriptor is registered for, what the events mean, and
// which wait call to use with what timeout are the Swift backend's choices
// (EpollBackend.swift, Backend.swift).
#include "cpoller.h"
#include "fault.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_epoll_pwait2
#define SYS_epoll_pwait2 441
#endif

// The Swift backend names readiness in poll(2) bits for both backends; on Linux the epoll bits
// are the same numbers.
_Static_assert(EPOLLIN == POLLIN && EPOLLPRI == POLLPRI && EPOLLOUT == POLLOUT &&
                   EPOLLERR == POLLERR && EPOLLHUP == POLLHUP && EPOLLRDHUP == POLLRDHUP,
               "epoll and poll bits differ");
// The waits let the kernel write struct epoll_events into the caller's cpoller_event buffer
// and widen them in place.
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

// Widens the n packed struct epoll_events at the front of `events` in place, last first:
// event i is written at or after where raw event i was read, and only over raw events already
// read (i' >= i), since sizeof(struct epoll_event) <= sizeof(cpoller_event). memcpy, not a
// typed load, because the two types alias.
static int widen(cpoller_event *events, int n) {
    if (n < 0) return -errno;
    for (int i = n - 1; i >= 0; i--) {
        struct epoll_event e;
        memcpy(&e, (const char *)events + (size_t)i * sizeof e, sizeof e);
        events[i] = (cpoller_event){.token = e.data.u64, .flags = 0, .res = (int32_t)e.events, .cqe_flags = 0};
    }
    return n;
}

int cpoller_epoll_pwait2(int epfd, cpoller_event *events, int cap, int64_t timeout_ns) {
    if (cap <= 0) return -EINVAL;
    int injected = cpoller_fault_take(CPOLLER_FAULT_WAIT, epfd);
    if (injected) return -injected;
    int refused = cpoller_fault_take(CPOLLER_FAULT_PWAIT2, epfd);
    if (refused) return -refused;
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        tsp = &ts;
    }
    int n = (int)syscall(SYS_epoll_pwait2, epfd, (struct epoll_event *)(void *)events, cap, tsp, NULL, (size_t)0);
    return widen(events, n);
}

int cpoller_epoll_wait_ms(int epfd, cpoller_event *events, int cap, int timeout_ms) {
    if (cap <= 0) return -EINVAL;
    int injected = cpoller_fault_take(CPOLLER_FAULT_WAIT, epfd);
    if (injected) return -injected;
    int n = epoll_wait(epfd, (struct epoll_event *)(void *)events, cap, timeout_ms);
    return widen(events, n);
}
