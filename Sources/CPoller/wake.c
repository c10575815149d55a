// The wake-up channel's primitives (Go's netpollBreak). Which kind of channel to make, and
// what a full channel means, is decided in Swift (WakeChannel.swift).
#include "cpoller.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#ifdef DEBUG
// Thread-local so a test can force the self-pipe without disturbing other tests.
static _Thread_local int inject_eventfd_failure = 0;
void cpoller_wake_inject_eventfd_failure(int fail) { inject_eventfd_failure = fail; }
#else
void cpoller_wake_inject_eventfd_failure(int fail) { (void)fail; }
#endif

int cpoller_eventfd_create(void) {
#ifdef DEBUG
    if (inject_eventfd_failure) return -ENOSYS;
#endif
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int cpoller_wake_signal(int wfd, int is_pipe) {
    for (;;) {
        ssize_t r;
        if (is_pipe) {
            char b = 1;
            r = write(wfd, &b, 1);
        } else {
            uint64_t one = 1;
            r = write(wfd, &one, sizeof one);
        }
        if (r >= 0) return 0;
        if (errno != EINTR) return -errno;
    }
}

int cpoller_wake_drain(int rfd, int is_pipe) {
    for (;;) {
        char buf[64];
        ssize_t r = read(rfd, buf, is_pipe ? sizeof buf : sizeof(uint64_t));
        if (r > 0) {
            if (!is_pipe) return 0;  // one read resets an eventfd counter
            continue;
        }
        if (r == 0) return 0;
        if (errno != EINTR) return -errno;
    }
}
