// c-epoll-echo: raw edge-triggered epoll echo server, the floor of overhead for readiness I/O
// that scripts/bench.sh compares every other server against.
//
//   c-epoll-echo [--host 127.0.0.1] [--port 0] [--threads N]
//
// Prints "c-epoll-echo: listening on HOST:PORT", echoes every byte on every connection and
// exits 0 on SIGINT/SIGTERM. One thread by default; --threads N runs N independent event
// loops (0: one per CPU in the affinity mask), each with its own epoll and its own
// SO_REUSEPORT listener on the same port, so the kernel spreads the connections and no
// state is shared between threads (the all-cores floor). Each connection is registered once for EPOLLIN|EPOLLOUT|EPOLLET;
// on any event it reads until EAGAIN and writes back what it read. A partial write keeps the
// rest in a per-connection buffer and stops reading that connection (back-pressure) until
// EPOLLOUT lets the buffer drain, after which it reads until EAGAIN again.
//
// Build: cc -O2 -pthread -o c-epoll-echo c-epoll-echo.c
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BUF = 64 * 1024, MAX_EVENTS = 512 };

typedef struct {
    int fd;
    uint8_t *pending;  // bytes read but not yet written back (NULL when none)
    size_t off, len, cap;
} conn_t;

static conn_t **conns;  // indexed by fd; a slot is only touched by the thread that owns the fd
static size_t nconns_cap;
static __thread uint8_t buf[BUF];

static void close_conn(conn_t *c) {
    conns[c->fd] = NULL;  // before close: another thread's accept may reuse the number at once
    close(c->fd);
    free(c->pending);
    free(c);
}

// Writes what is pending. Returns 1 when the buffer is empty, 0 on EAGAIN, -1 on error.
static int flush_pending(conn_t *c) {
    while (c->off < c->len) {
        ssize_t w = send(c->fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (w > 0) { c->off += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return 0;
        return -1;
    }
    c->off = c->len = 0;
    return 1;
}

static int keep(conn_t *c, const uint8_t *p, size_t n) {
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : BUF;
        while (cap < c->len + n) cap *= 2;
        uint8_t *q = realloc(c->pending, cap);
        if (!q) return -1;
        c->pending = q, c->cap = cap;
    }
    memcpy(c->pending + c->len, p, n);
    c->len += n;
    return 0;
}

// Edge-triggered: make all the progress the socket allows, then return.
static void serve(conn_t *c) {
    for (;;) {
        int f = flush_pending(c);
        if (f < 0) { close_conn(c); return; }
        if (f == 0) return;  // wait for EPOLLOUT; stop reading meanwhile
        ssize_t r = recv(c->fd, buf, BUF, 0);
        if (r == 0) { close_conn(c); return; }
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            close_conn(c);
            return;
        }
        size_t done = 0;
        while (done < (size_t)r) {
            ssize_t w = send(c->fd, buf + done, (size_t)r - done, MSG_NOSIGNAL);
            if (w > 0) { done += (size_t)w; continue; }
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && errno == EAGAIN) break;
            close_conn(c);
            return;
        }
        if (done < (size_t)r && keep(c, buf + done, (size_t)r - done) < 0) { close_conn(c); return; }
    }
}

static const char *host = "127.0.0.1";

// A listener on host:port with SO_REUSEPORT when `reuseport` (every thread binds its own).
static int make_listener(int port, int reuseport) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport) setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "c-epoll-echo: bad IPv4 address %s\n", host);
        exit(2);
    }
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        perror("c-epoll-echo: bind/listen");
        exit(1);
    }
    return lfd;
}

// One event loop: its listener and its connections, until the process exits.
static void *event_loop(void *arg) {
    int lfd = (int)(intptr_t)arg, one = 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data = {.fd = lfd}};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("c-epoll-echo: epoll_wait");
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED) continue;
                        break;  // EAGAIN, or EMFILE: try again on the next event
                    }
                    if ((size_t)cfd >= nconns_cap) { close(cfd); continue; }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *c = calloc(1, sizeof *c);
                    c->fd = cfd;
                    conns[cfd] = c;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data = {.fd = cfd}};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            conn_t *c = conns[fd];
            if (c) serve(c);  // errors and hang-ups show up as recv/send failures or EOF
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int port = 0, nthreads = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) nthreads = atoi(argv[++i]);
        else nthreads = -1;
        if (nthreads < 0) {
            fprintf(stderr, "usage: c-epoll-echo [--host 127.0.0.1] [--port 0] [--threads N (0: one per CPU)]\n");
            return 2;
        }
    }
    if (nthreads == 0) {
        cpu_set_t set;
        nthreads = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        if (nthreads < 1) nthreads = 1;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    nconns_cap = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 20) ? (1u << 20) : (size_t)rl.rlim_cur;
    conns = calloc(nconns_cap, sizeof *conns);

    // Signals blocked in every thread (the mask is inherited); the main thread reads them.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

    // The first listener picks the port (port 0); the others join it with SO_REUSEPORT.
    int reuseport = nthreads > 1;
    int lfd0 = make_listener(port, reuseport);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(lfd0, (struct sockaddr *)&sa, &sl);
    port = ntohs(sa.sin_port);
    int *lfds = calloc((size_t)nthreads, sizeof *lfds);
    lfds[0] = lfd0;
    for (int t = 1; t < nthreads; t++) lfds[t] = make_listener(port, 1);
    if (nthreads == 1) {
        printf("c-epoll-echo: listening on %s:%d (raw C epoll, edge-triggered)\n", host, port);
    } else {
        printf("c-epoll-echo: listening on %s:%d (raw C epoll, edge-triggered, %d threads, SO_REUSEPORT)\n", host, port,
               nthreads);
    }
    fflush(stdout);
    for (int t = 0; t < nthreads; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, event_loop, (void *)(intptr_t)lfds[t]) != 0) {
            fprintf(stderr, "c-epoll-echo: pthread_create failed\n");
            return 1;
        }
        pthread_detach(th);
    }
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) < 0 && errno == EINTR) {}
    return 0;  // SIGINT or SIGTERM
}
