// poller-loadgen: an echo load generator that is never the bottleneck.
//
// Opens N connections to an echo server and, for D seconds after a warm-up, keeps one S-byte
// message in flight per connection (ping-pong), verifying every echoed byte against the
// pattern it sent. Edge-triggered epoll, one thread by default; --threads T splits the
// connections over T threads (each its own epoll and its own share, i*T.. round-robin), for
// servers that use more than one CPU. Reports round trips per second and latency percentiles
// (every round trip is recorded; percentiles come from the sorted samples of all threads).
// With --stream, each connection writes continuously and reads back, reporting MB/s. --idle K
// opens K more connections that stay silent (to measure a server holding idle connections).
// --busy-poll never sleeps in epoll_wait (for one-connection latency, where a sleeping load
// generator's own wake-up would dominate).
//
// Output: one line of key=value pairs; exit status 1 if any byte was wrong or lost.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    uint64_t seq;        // ping-pong: message number, seeds the byte pattern
    size_t sent, recvd;  // ping-pong: bytes of the current message
    int64_t started;     // ping-pong: ns when the current message was first written
    uint64_t wpos, rpos; // stream: bytes written and read back so far
} conn_t;

enum { STREAM_WINDOW = 256 * 1024 };  // bytes in flight per connection in stream mode

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint8_t pattern(uint64_t conn, uint64_t seq, size_t i) {
    uint64_t x = (conn * 0x9E3779B97F4A7C15ull) ^ (seq * 0xBF58476D1CE4E5B9ull) ^ (i * 0x94D049BB133111EBull);
    return (uint8_t)(x >> 56);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void) {
    fprintf(stderr,
            "usage: poller-loadgen --port P [--host 127.0.0.1] [--connections N] [--size S]\n"
            "                      [--duration SEC] [--warmup SEC] [--idle K] [--busy-poll] [--stream]\n"
            "                      [--threads T]   (T client threads; 0 = one per CPU in the affinity mask)\n");
    exit(2);
}

// One send(2) of up to len bytes: the bytes sent, 0 when the socket takes nothing now (or the
// connect is still under way), -1 on any other error (reported).
static ssize_t send_some(int fd, const uint8_t *p, size_t len) {
    ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
    if (w > 0) return w;
    if (w < 0 && errno != EAGAIN && errno != ENOTCONN) {
        fprintf(stderr, "loadgen: send: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

// One recv(2) of up to len bytes on connection idx: the bytes read, 0 when nothing is there
// yet, -1 when the server closed the connection or on any other error (reported).
static ssize_t recv_some(int fd, uint8_t *buf, size_t len, uint32_t idx) {
    ssize_t r = recv(fd, buf, len, 0);
    if (r > 0) return r;
    if (r == 0) {
        fprintf(stderr, "loadgen: server closed connection %u\n", idx);
        return -1;
    }
    if (errno != EAGAIN && errno != ENOTCONN) {
        fprintf(stderr, "loadgen: recv: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

static int dial(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad IPv4 address %s\n", host);
        exit(2);
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

// One client thread: its own epoll over its share of the connections (the ones whose index
// is its number modulo the thread count), its own buffers and latency samples. A failure
// ends the whole process (exit status 1), as it did when the load generator had one thread.
typedef struct {
    int ep;
    conn_t *conns;  // all connections (indexed as the server sees them: the pattern uses it)
    pthread_t thread;
    int64_t *samples;
    size_t nsamples;
    uint64_t roundtrips, bad, bytes_verified, stream_bytes;
    int64_t stopped;  // ns when this thread's loop ended
} worker_t;

static size_t g_size;
static int g_stream, g_busy;
static int64_t g_measure_from, g_end;

static void *run_worker(void *arg) {
    worker_t *w = arg;
    conn_t *conns = w->conns;
    const size_t size = g_size;
    const int stream = g_stream, busy = g_busy;
    const int64_t measure_from = g_measure_from, end = g_end;
    uint8_t *buf = malloc(size > 65536 ? size : 65536);  // >= the 16 KiB stream chunk
    uint8_t *out = malloc(size);
    size_t cap = 1 << 16, nsamples = 0;
    int64_t *samples = malloc(cap * sizeof *samples);
    uint64_t roundtrips = 0, bad = 0, bytes_verified = 0, stream_bytes = 0;
    int measuring = 0;
    struct epoll_event events[512];

    // Kick every connection: write its first message (connect completes asynchronously).
    for (;;) {
        int64_t now = now_ns();
        if (now >= end) break;
        if (!measuring && now >= measure_from) {
            measuring = 1;
            roundtrips = 0;
            nsamples = 0;
            stream_bytes = 0;
        }
        int n = epoll_wait(w->ep, events, 512, busy ? 0 : 50);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            exit(1);
        }
        for (int e = 0; e < n; e++) {
            conn_t *c = &conns[events[e].data.u32];
            uint32_t idx = events[e].data.u32;
            if (events[e].events & (EPOLLERR | EPOLLHUP)) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                fprintf(stderr, "loadgen: connection %u failed: %s\n", idx, strerror(err ? err : ECONNRESET));
                exit(1);
            }
            // Progress as far as the socket allows (edge-triggered: until EAGAIN).
            for (;;) {
                int progressed = 0;
                if (stream) {
                    // Write ahead up to a window; the pattern is a function of the position.
                    while (c->wpos - c->rpos < STREAM_WINDOW) {
                        size_t chunk = 16384;
                        for (size_t i = 0; i < chunk; i++) {
                            uint64_t p = c->wpos + i;
                            buf[i] = pattern(idx, p / size, (size_t)(p % size));
                        }
                        ssize_t w = send_some(c->fd, buf, chunk);
                        if (w < 0) exit(1);
                        if (w == 0) break;
                        c->wpos += (uint64_t)w;
                        progressed = 1;
                    }
                    ssize_t r = recv_some(c->fd, buf, 65536, idx);
                    if (r < 0) exit(1);
                    if (r > 0) {
                        progressed = 1;
                        for (ssize_t i = 0; i < r; i++, c->rpos++) {
                            if (buf[i] != pattern(idx, c->rpos / size, (size_t)(c->rpos % size))) bad++;
                        }
                        bytes_verified += (uint64_t)r;
                        if (measuring) stream_bytes += (uint64_t)r;
                    }
                    if (!progressed) break;
                    continue;
                }
                if (c->sent < size) {
                    if (c->sent == 0 && c->recvd == 0) c->started = now_ns();
                    for (size_t i = c->sent; i < size; i++) out[i] = pattern(idx, c->seq, i);
                    ssize_t w = send_some(c->fd, out + c->sent, size - c->sent);
                    if (w < 0) exit(1);
                    if (w > 0) c->sent += (size_t)w, progressed = 1;
                }
                ssize_t r = recv_some(c->fd, buf, size - c->recvd, idx);
                if (r < 0) exit(1);
                if (r > 0) {
                    progressed = 1;
                    for (ssize_t i = 0; i < r; i++, c->recvd++) {
                        if (buf[i] != pattern(idx, c->seq, c->recvd)) bad++;
                    }
                    bytes_verified += (uint64_t)r;
                    if (c->recvd == size) {
                        int64_t t = now_ns();
                        if (measuring) {
                            if (nsamples == cap) samples = realloc(samples, (cap *= 2) * sizeof *samples);
                            samples[nsamples++] = t - c->started;
                            roundtrips++;
                        }
                        c->seq++;
                        c->sent = c->recvd = 0;
                    }
                }
                if (!progressed) break;
            }
        }
    }
    w->stopped = now_ns();
    w->samples = samples, w->nsamples = nsamples, w->roundtrips = roundtrips, w->bad = bad;
    w->bytes_verified = bytes_verified, w->stream_bytes = stream_bytes;
    free(buf);
    free(out);
    return NULL;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, nconn = 1, idle = 0, busy = 0, stream = 0, nthreads = 1;
    size_t size = 64;
    double duration = 5, warmup = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--host") && v) host = v, i++;
        else if (!strcmp(a, "--port") && v) port = atoi(v), i++;
        else if (!strcmp(a, "--connections") && v) nconn = atoi(v), i++;
        else if (!strcmp(a, "--size") && v) size = (size_t)atol(v), i++;
        else if (!strcmp(a, "--duration") && v) duration = atof(v), i++;
        else if (!strcmp(a, "--warmup") && v) warmup = atof(v), i++;
        else if (!strcmp(a, "--idle") && v) idle = atoi(v), i++;
        else if (!strcmp(a, "--busy-poll")) busy = 1;
        else if (!strcmp(a, "--stream")) stream = 1;
        else if (!strcmp(a, "--threads") && v) nthreads = atoi(v), i++;
        else usage();
    }
    if (port <= 0 || nconn <= 0 || size == 0 || duration <= 0 || nthreads < 0) usage();
    if (nthreads == 0) {
        cpu_set_t set;
        nthreads = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        if (nthreads < 1) nthreads = 1;
    }
    if (nthreads > nconn) nthreads = nconn;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    worker_t *workers = calloc((size_t)nthreads, sizeof *workers);
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    for (int t = 0; t < nthreads; t++) {
        workers[t].ep = epoll_create1(EPOLL_CLOEXEC);
        workers[t].conns = conns;
    }
    int *idle_fds = calloc((size_t)(idle > 0 ? idle : 1), sizeof(int));
    for (int i = 0; i < idle; i++) {
        idle_fds[i] = dial(host, port);
        if (idle_fds[i] < 0) {
            fprintf(stderr, "loadgen: idle connection %d failed: %s\n", i, strerror(errno));
            return 1;
        }
    }
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = dial(host, port);
        if (conns[i].fd < 0) {
            fprintf(stderr, "loadgen: connection %d failed: %s\n", i, strerror(errno));
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data = {.u32 = (uint32_t)i}};
        epoll_ctl(workers[i % nthreads].ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }

    g_size = size, g_stream = stream, g_busy = busy;
    int64_t t0 = now_ns();
    int64_t measure_from = t0 + (int64_t)(warmup * 1e9);
    g_measure_from = measure_from;
    g_end = measure_from + (int64_t)(duration * 1e9);
    // One thread runs on the main thread itself (as before --threads existed).
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&workers[t].thread, NULL, run_worker, &workers[t]) != 0) {
            fprintf(stderr, "loadgen: pthread_create failed\n");
            return 1;
        }
    }
    run_worker(&workers[0]);
    for (int t = 1; t < nthreads; t++) pthread_join(workers[t].thread, NULL);
    size_t nsamples = 0;
    uint64_t roundtrips = 0, bad = 0, bytes_verified = 0, stream_bytes = 0;
    int64_t stopped = 0;
    for (int t = 0; t < nthreads; t++) {
        nsamples += workers[t].nsamples;
        roundtrips += workers[t].roundtrips, bad += workers[t].bad;
        bytes_verified += workers[t].bytes_verified, stream_bytes += workers[t].stream_bytes;
        if (workers[t].stopped > stopped) stopped = workers[t].stopped;
    }
    int64_t *samples = malloc((nsamples ? nsamples : 1) * sizeof *samples);
    for (size_t t = 0, k = 0; t < (size_t)nthreads; t++) {
        memcpy(samples + k, workers[t].samples, workers[t].nsamples * sizeof *samples);
        k += workers[t].nsamples;
    }
    double secs = (double)(stopped - measure_from) / 1e9;
    if (secs <= 0) secs = duration;
    qsort(samples, nsamples, sizeof *samples, cmp_i64);
#define PCT(p) (nsamples ? (double)samples[(size_t)((double)(nsamples - 1) * (p))] / 1000.0 : 0.0)
    if (stream) {
        printf("mode=stream connections=%d size=%zu seconds=%.2f mb_per_s=%.1f verified_bytes=%llu bad_bytes=%llu\n",
               nconn, size, secs, (double)stream_bytes / secs / 1e6, (unsigned long long)bytes_verified,
               (unsigned long long)bad);
    } else {
        printf("mode=pingpong connections=%d threads=%d idle=%d size=%zu seconds=%.2f roundtrips=%llu rt_per_s=%.0f "
               "p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f verified_bytes=%llu bad_bytes=%llu\n",
               nconn, nthreads, idle, size, secs, (unsigned long long)roundtrips, (double)roundtrips / secs, PCT(0.50),
               PCT(0.90), PCT(0.99), PCT(0.999), (unsigned long long)bytes_verified, (unsigned long long)bad);
    }
    for (int i = 0; i < nconn; i++) close(conns[i].fd);
    for (int i = 0; i < idle; i++) close(idle_fds[i]);
    // Everything freed, so that a build under AddressSanitizer (the tests run this program
    // as a client) exits 0 rather than for leaks.
    for (int t = 0; t < nthreads; t++) free(workers[t].samples);
    free(samples);
    free(workers);
    free(conns);
    free(idle_fds);
    return bad ? 1 : 0;
}
