// The wake-up channel behind Go's netpollBreak: an eventfd, or a self-pipe where eventfd
// cannot be created. Coalescing (one write per sleep) is the caller's job.
#include "cpoller.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <unistd.h>

// Thread-local so a test can force the self-pipe without disturbing other tests.
static _Thread_local int inject_eventfd_failure = 0;

void cpoller_wake_inject_eventfd_failure(int fail) { inject_eventfd_failure = fail; }

int cpoller_wake_create(int fds[2], int force_pipe) {
    if (!force_pipe && !inject_eventfd_failure) {
        int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (efd >= 0) {
            fds[0] = fds[1] = efd;
            return 0;
        }
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return -errno;
    return 1;
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
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return 0;  // full: a wake-up is pending anyway
        return -errno;
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
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return 0;
        return -errno;
    }
}
