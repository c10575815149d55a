// Small system helpers: the futex parker, clocks, thread ids and descriptor checks.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1  // sched_getaffinity, CPU_COUNT
#endif
#include "cpoller.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void cpoller_parker_init(cpoller_parker *p) { __atomic_store_n(&p->state, 0, __ATOMIC_SEQ_CST); }

int cpoller_parker_park(cpoller_parker *p, int64_t timeout_ns) {
    int64_t deadline = timeout_ns >= 0 ? cpoller_now_ns() + timeout_ns : -1;
    for (;;) {
        uint32_t one = 1;
        if (__atomic_compare_exchange_n(&p->state, &one, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return 1;
        struct timespec ts, *tsp = NULL;
        if (deadline >= 0) {
            int64_t left = deadline - cpoller_now_ns();
            if (left <= 0) return 0;
            ts.tv_sec = left / 1000000000;
            ts.tv_nsec = left % 1000000000;
            tsp = &ts;
        }
        // Sleeps only while the word is still 0; an unpark in between makes this return.
        syscall(SYS_futex, &p->state, FUTEX_WAIT_PRIVATE, 0, tsp, NULL, 0);
    }
}

void cpoller_parker_unpark(cpoller_parker *p) {
    __atomic_store_n(&p->state, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &p->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

int64_t cpoller_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t cpoller_thread_id(void) { return (uint64_t)pthread_self(); }

int cpoller_check_pollable(int fd) {
    if (fd < 0) return EBADF;
    struct stat st;
    if (fstat(fd, &st) < 0) return errno;
    if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) return EPERM;
    return 0;
}

int cpoller_holds_address(int fd) {
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return 0;  // not a socket
    if (type != SOCK_STREAM && type != SOCK_SEQPACKET) return 1;  // datagram, raw: bound address
    int listening = 0;
    len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) return 0;
    return listening != 0;
}

int cpoller_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -errno;
    if (flags & O_NONBLOCK) return 0;
    return fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 ? -errno : 0;
}

int cpoller_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

const char *cpoller_errno_name(int code) { return strerrorname_np(code); }

int cpoller_pipe_cloexec_nonblocking(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0 ? -errno : 0; }

int cpoller_timerfd_create(void) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int cpoller_timerfd_arm(int fd, int64_t ns) {
    struct itimerspec spec = {
        .it_interval = {0, 0},
        .it_value = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)},
    };
    return timerfd_settime(fd, 0, &spec, NULL) < 0 ? -errno : 0;
}

int cpoller_count_open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -errno;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') n++;
    }
    closedir(d);
    return n - 1;  // the directory stream's own descriptor
}

int cpoller_thread_start(uint64_t *thread, void *(*fn)(void *), void *arg) {
    pthread_t t;
    int r = pthread_create(&t, NULL, fn, arg);
    if (r == 0) *thread = (uint64_t)t;
    return r;
}

int cpoller_thread_join(uint64_t thread) { return pthread_join((pthread_t)thread, NULL); }

int cpoller_thread_detach(uint64_t thread) { return pthread_detach((pthread_t)thread); }

int64_t cpoller_heap_bytes_in_use(void) {
    struct mallinfo2 m = mallinfo2();
    return (int64_t)(m.uordblks + m.hblkhd);
}

void cpoller_thread_set_name(const char *name) {
    char buf[16];
    size_t i = 0;
    for (; name[i] && i < sizeof buf - 1; i++) buf[i] = name[i];
    buf[i] = 0;
    pthread_setname_np(pthread_self(), buf);
}

// ThreadSanitizer cannot see the toolchain's Synchronization.Mutex lock and unlock (they run
// inside the uninstrumented Swift runtime library), so accesses made under the same Mutex
// from two threads look like races. These tell TSan about the happens-before edge the Mutex
// really provides. Without TSan they do nothing.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CPOLLER_TSAN 1
#endif
#endif
#ifdef CPOLLER_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
void cpoller_tsan_acquire(void *addr) { __tsan_acquire(addr); }
void cpoller_tsan_release(void *addr) { __tsan_release(addr); }
#else
void cpoller_tsan_acquire(void *addr) { (void)addr; }
void cpoller_tsan_release(void *addr) { (void)addr; }
#endif

// Fault injection. A point is armed by a test thread and consumed by the poller thread; the
// fields are atomics, and `left` is written last when arming and first when disarming, so a
// consumer that sees left != 0 sees the fd and err that go with it.
#include "fault.h"

struct fault_point {
    _Atomic int left;  // failures still to deliver; < 0: unlimited; 0: inert
    _Atomic int fd;
    _Atomic int err;
    _Atomic int used;
};

static struct fault_point fault_points[CPOLLER_FAULT_POINTS];

int cpoller_fault_inject(int point, int fd, int err, int count) {
    if (point < 0 || point >= CPOLLER_FAULT_POINTS) return -EINVAL;
    struct fault_point *f = &fault_points[point];
    atomic_store(&f->left, 0);
    int used = atomic_exchange(&f->used, 0);
    atomic_store(&f->fd, fd);
    atomic_store(&f->err, err);
    atomic_store(&f->left, count);
    return used;
}

#ifdef DEBUG
int cpoller_fault_take(int point, int fd) {
    struct fault_point *f = &fault_points[point];
    int left = atomic_load_explicit(&f->left, memory_order_relaxed);
    if (left == 0) return 0;
    if (atomic_load(&f->fd) != fd) return 0;
    while (left > 0 && !atomic_compare_exchange_weak(&f->left, &left, left - 1)) {
    }
    if (left == 0) return 0;
    atomic_fetch_add(&f->used, 1);
    int err = atomic_load(&f->err);
    return err > 0 ? err : EIO;
}
#endif

int cpoller_affinity_cpu_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -errno;
    return CPU_COUNT(&set);
}

static _Thread_local void *current_poller = NULL;
void cpoller_set_current_poller(void *poller) { current_poller = poller; }
void *cpoller_current_poller(void) { return current_poller; }
