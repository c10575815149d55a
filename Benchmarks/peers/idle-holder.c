// idle-holder: opens K connections to a server and holds them, silent, until SIGINT/SIGTERM.
//
//   idle-holder --port P --count K [--host 127.0.0.1] [--batch 256]
//
// scripts/bench.sh uses it for the "10,000 idle connections held while 64 are active" point.
// It dials in batches (each batch waits for its handshakes to complete, <= 10 s), so the
// server's accept queue never overflows and no connection waits out a SYN retransmission,
// then prints "idle-holder: holding K connections to HOST:P" and waits. Every socket has
// SO_LINGER 0, so the exit resets the connections instead of leaving K sockets in TIME_WAIT.
// On exit it reports on stderr how many connections the server had closed meanwhile.
// Exit status: 0 on SIGINT/SIGTERM, 1 if a connection could not be established.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, count = 0, batch = 256;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--host") && v) host = v, i++;
        else if (!strcmp(argv[i], "--port") && v) port = atoi(v), i++;
        else if (!strcmp(argv[i], "--count") && v) count = atoi(v), i++;
        else if (!strcmp(argv[i], "--batch") && v) batch = atoi(v), i++;
        else {
            fprintf(stderr, "usage: idle-holder --port P --count K [--host 127.0.0.1] [--batch 256]\n");
            return 2;
        }
    }
    if (port <= 0 || count <= 0 || batch <= 0) {
        fprintf(stderr, "idle-holder: --port and --count are required\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "idle-holder: bad IPv4 address %s\n", host);
        return 2;
    }
    int *fds = calloc((size_t)count, sizeof *fds);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event evs[256];
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    for (int start = 0; start < count; start += batch) {
        int end = start + batch < count ? start + batch : count, pending = 0;
        for (int i = start; i < end; i++) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                fprintf(stderr, "idle-holder: socket %d: %s\n", i, strerror(errno));
                return 1;
            }
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            fds[i] = fd;
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) continue;
            if (errno != EINPROGRESS) {
                fprintf(stderr, "idle-holder: connect %d: %s\n", i, strerror(errno));
                return 1;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data = {.fd = fd}};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            pending++;
        }
        long long deadline = now_ms() + 10000;
        while (pending > 0) {
            long long left = deadline - now_ms();
            if (left <= 0) {
                fprintf(stderr, "idle-holder: %d connections not established within 10 s\n", pending);
                return 1;
            }
            int n = epoll_wait(ep, evs, 256, (int)left);
            for (int e = 0; e < n; e++) {
                int fd = evs[e].data.fd, err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    fprintf(stderr, "idle-holder: connect: %s\n", strerror(err));
                    return 1;
                }
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                pending--;
            }
        }
    }
    printf("idle-holder: holding %d connections to %s:%d\n", count, host, port);
    fflush(stdout);
    int sig = 0;
    sigwait(&mask, &sig);
    int closed = 0;
    char c;
    for (int i = 0; i < count; i++) {
        ssize_t r = recv(fds[i], &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN)) closed++;
    }
    fprintf(stderr, "idle-holder: %d of %d connections had been closed by the server\n", closed, count);
    return 0;  // the kernel resets every connection (SO_LINGER 0)
}
