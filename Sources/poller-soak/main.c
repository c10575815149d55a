// poller-soak: a reliability soak client for an echo server (poller-echo).
//
// Keeps C concurrent connections (default 10000) to the server. Each runs an echo
// conversation, one message in flight at a time: a random size from 1 B to 64 KiB (skewed:
// most small, some large), a byte pattern derived from (connection id, message seq, offset),
// and every echoed byte verified. Per message, seeded by --seed, a connection may instead:
//   ~1%   close early: send part of the message, then close gracefully (FIN); the unechoed
//         bytes are not lost, the client asked for it;
//   ~1%   reset: send part of the message, then SO_LINGER {1,0} + close (RST to the server);
//   ~0.5% go idle (between messages) for longer than the server's --idle-timeout and expect
//         the server to close it (idle_closed_by_server); idles are only started while they
//         can still resolve inside the active phase.
// A closed slot is reopened, so C connections are kept. Connects are opened in batches with a
// bound on how many are not yet proven served (connecting, or connected without an echoed
// byte), so the server's listen backlog is never overrun; a connect that fails (refused,
// timed out, no port) is retried a bounded number of times and counted.
//
// Phases: active (--duration S) -> drain (in-flight messages finish, idle waits resolve) ->
// sync (every slot reopened, every connection does one 1-byte round trip so the server's read
// deadline restarts) -> idle (--idle-phase S: all C connections open and silent; the server
// must not close any, since its idle timeout is longer) -> close everything.
// Markers on stderr ("poller-soak: ramp complete ...", "poller-soak: idle phase begin" / "...
// end") let a script time its samples; --progress adds a status line every second.
//
// Output: one key=value line on stdout. Exit 1 if any byte was corrupted or lost, the server
// closed a connection it should not have (or did not close an idle one), or a message stalled.
// Single-threaded, edge-triggered epoll; per-connection deadlines (connect timeout 3 s, no
// echo progress for 20 s = stall, idle close due) are swept from the loop every 10 ms
// (epoll_wait timeout <= 20 ms).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state {
    S_EMPTY,       // no socket; reopen at `deadline` (when the phase allows)
    S_CONNECTING,  // non-blocking connect in progress
    S_READY,       // connected, between messages (waiting to start one)
    S_MESSAGE,     // a message in flight
    S_IDLE_WAIT,   // deliberately silent, expecting the server to close it
    S_PARKED,      // open and silent (drain/idle phase), nothing expected from the server
};

enum action { A_NONE, A_EARLY_CLOSE, A_RESET };

typedef struct {
    int fd;
    enum state st;
    uint64_t uid;        // connection id (unique over the run): seeds the pattern
    uint64_t seq;        // message number on this connection
    uint32_t size;       // current message size
    uint32_t sent, recvd;
    enum action act;     // what to do mid-message
    uint32_t act_at;     // ... once this many bytes were sent
    int proven;          // the server has echoed at least one byte on this connection
    int retries;         // consecutive connect failures of this slot
    int64_t deadline;    // ns: meaning depends on the state (connect timeout, stall, idle, reopen)
    int64_t since;       // ns: when S_IDLE_WAIT began
} conn_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint8_t pattern(uint64_t conn, uint64_t seq, size_t i) {
    uint64_t x = (conn * 0x9E3779B97F4A7C15ull) ^ (seq * 0xBF58476D1CE4E5B9ull) ^ (i * 0x94D049BB133111EBull);
    x ^= x >> 31;
    x *= 0xD6E8FEB86659FD93ull;
    return (uint8_t)(x >> 56);
}

static uint64_t rng_state;
static uint64_t rnd(void) {  // splitmix64
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rnd01(void) { return (double)(rnd() >> 11) * (1.0 / 9007199254740992.0); }
static uint32_t rnd_range(uint32_t lo, uint32_t hi) { return lo + (uint32_t)(rnd() % (uint64_t)(hi - lo + 1)); }

// Skewed sizes: 60% 1..512, 30% 513..8 KiB, 8% 8..32 KiB, 2% 32..64 KiB.
static uint32_t random_size(void) {
    double r = rnd01();
    if (r < 0.60) return rnd_range(1, 512);
    if (r < 0.90) return rnd_range(513, 8192);
    if (r < 0.98) return rnd_range(8193, 32768);
    return rnd_range(32769, 65536);
}

// ---- configuration and counters ---------------------------------------------------------
static const char *host = "127.0.0.1";
static int port = 0, nconn = 10000, batch = 500, max_pending = 2000, max_retries = 8;
static double duration = 60, idle_timeout = 8, idle_phase = 5;
static double p_early = 0.01, p_reset = 0.01, p_idle = 0.005;
static int verbose = 0, progress = 0;

static uint64_t connections_opened, conversations, bytes_echoed, bytes_corrupted, bytes_lost, early_closes,
    resets, idle_started, idle_closed_by_server, idle_not_closed, connect_failures, connect_abandoned,
    unexpected_server_closes, stalls, messages_started, idle_phase_connections, bytes_sent;
static uint64_t next_uid = 1;

static int ep;
static conn_t *conns;
static int pending;  // connecting, or connected without an echoed byte yet
static struct sockaddr_in server_addr;
static uint8_t outbuf[65536], inbuf[65536];

#define SEC(x) ((int64_t)((x) * 1e9))
static const int64_t CONNECT_TIMEOUT = SEC(3);
static const int64_t STALL_TIMEOUT = SEC(20);

enum phase { P_ACTIVE, P_DRAIN, P_SYNC, P_IDLE };
static enum phase phase = P_ACTIVE;
static int64_t t_start, active_end, idle_allowed_until;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    if (!verbose) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "poller-soak: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void usage(void) {
    fprintf(stderr,
            "usage: poller-soak --port P [--host 127.0.0.1] [--connections N] [--duration S]\n"
            "                   [--idle-timeout S] [--idle-phase S] [--seed N] [--batch N]\n"
            "                   [--max-pending N] [--p-early F] [--p-reset F] [--p-idle F]\n"
            "                   [--progress] [--verbose]\n");
    exit(2);
}

// ---- connection life cycle --------------------------------------------------------------
static void drop_pending(conn_t *c) {
    if ((c->st == S_CONNECTING || !c->proven) && c->fd >= 0) {
        pending--;
        c->proven = 1;  // do not decrement twice
    }
}

// Closes the socket; the slot reopens (if the phase allows) after `delay` ns.
static void release(conn_t *c, int rst, int64_t delay) {
    if (c->fd >= 0) {
        drop_pending(c);
        if (rst) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(c->fd);  // also removes it from the epoll set
        c->fd = -1;
    }
    c->st = S_EMPTY;
    c->deadline = now_ns() + delay;
}

static void open_slot(conn_t *c, uint32_t idx) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "poller-soak: socket: %s\n", strerror(errno));
        c->deadline = now_ns() + SEC(0.1);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->uid = next_uid++;
    c->seq = 0;
    c->proven = 0;
    c->st = S_CONNECTING;
    c->deadline = now_ns() + CONNECT_TIMEOUT;
    pending++;
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 && errno != EINPROGRESS) {
        int e = errno;
        connect_failures++;
        logf_("connect slot %u: %s", idx, strerror(e));
        c->retries++;
        release(c, 0, SEC(0.05) * c->retries);
        if (c->retries > max_retries) connect_abandoned++, c->deadline = INT64_MAX;
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data = {.u32 = idx}};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        perror("poller-soak: epoll_ctl");
        exit(1);
    }
}

static void connect_failed(conn_t *c, uint32_t idx, int err) {
    connect_failures++;
    logf_("connect slot %u failed: %s", idx, strerror(err));
    c->retries++;
    release(c, 1, SEC(0.05) * c->retries);
    if (c->retries > max_retries) {
        fprintf(stderr, "poller-soak: slot %u: giving up after %d connect failures (%s)\n", idx, c->retries,
                strerror(err));
        connect_abandoned++;
        c->deadline = INT64_MAX;
    }
}

static void start_message(conn_t *c, uint32_t size) {
    c->size = size;
    c->sent = c->recvd = 0;
    c->act = A_NONE;
    c->act_at = 0;
    c->st = S_MESSAGE;
    c->deadline = now_ns() + STALL_TIMEOUT;
    messages_started++;
}

// Chooses what a connection between messages does next.
static void next_step(conn_t *c, int64_t now) {
    if (phase == P_ACTIVE) {
        double r = rnd01();
        if (r < p_idle && now < idle_allowed_until) {
            c->st = S_IDLE_WAIT;
            c->since = now;
            c->deadline = now + SEC(idle_timeout + 3);  // the server's close must come by then
            idle_started++;
            return;
        }
        start_message(c, random_size());
        r = rnd01();
        if (r < p_early) c->act = A_EARLY_CLOSE;
        else if (r < p_early + p_reset) c->act = A_RESET;
        if (c->act != A_NONE) c->act_at = c->size > 1 ? rnd_range(1, c->size - 1) : 0;
    } else if (phase == P_SYNC && c->seq == 0) {
        start_message(c, 1);  // one round trip: restarts the server's read deadline
    } else {
        c->st = S_PARKED;
        c->deadline = INT64_MAX;
    }
}

// The server closed or reset the connection (EOF, ECONNRESET, EPIPE, HUP).
static void server_closed(conn_t *c, uint32_t idx, int64_t now, const char *how) {
    if (c->st == S_IDLE_WAIT) {
        double waited = (double)(now - c->since) / 1e9;
        if (waited >= idle_timeout - 1.0) {
            idle_closed_by_server++;
        } else {
            unexpected_server_closes++;
            fprintf(stderr, "poller-soak: conn %llu (slot %u) closed by the server after %.2f s idle (< %.1f s)\n",
                    (unsigned long long)c->uid, idx, waited, idle_timeout);
        }
    } else {
        unexpected_server_closes++;
        uint64_t lost = c->st == S_MESSAGE ? c->sent - c->recvd : 0;
        bytes_lost += lost;
        if (unexpected_server_closes <= 20)
            fprintf(stderr,
                    "poller-soak: conn %llu (slot %u) %s by the server, state %d phase %d msg %llu size %u sent %u "
                    "echoed %u\n",
                    (unsigned long long)c->uid, idx, how, c->st, phase, (unsigned long long)c->seq, c->size, c->sent,
                    c->recvd);
    }
    release(c, 0, 0);
}

// Reads whatever is there, verifying it. Returns 0 while the connection lives, -1 if the
// server closed it (the slot was released).
static int drain_input(conn_t *c, uint32_t idx, int64_t now, int *progressed) {
    for (;;) {
        ssize_t r = recv(c->fd, inbuf, sizeof inbuf, 0);
        if (r > 0) {
            *progressed = 1;
            if (!c->proven) {
                c->proven = 1;
                pending--;
            }
            for (ssize_t i = 0; i < r; i++) {
                if (c->st == S_MESSAGE && c->recvd < c->sent) {
                    if (inbuf[i] != pattern(c->uid, c->seq, c->recvd)) bytes_corrupted++;
                    else bytes_echoed++;
                    c->recvd++;
                } else {
                    bytes_corrupted++;  // bytes nobody sent (or sent in no message in flight)
                }
            }
            if (c->st == S_MESSAGE) {
                c->deadline = now + STALL_TIMEOUT;
                if (c->recvd == c->size) {
                    conversations++;
                    c->seq++;
                    c->st = S_READY;
                    return 0;  // the caller chooses the next step
                }
            }
            continue;
        }
        if (r == 0) {
            server_closed(c, idx, now, "closed");
            return -1;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        if (errno == EINTR) continue;
        server_closed(c, idx, now, errno == ECONNRESET ? "reset" : "failed");
        return -1;
    }
}

static void handle(uint32_t idx, uint32_t events, int64_t now) {
    conn_t *c = &conns[idx];
    if (c->fd < 0) return;
    if (c->st == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            connect_failed(c, idx, err ? err : ECONNREFUSED);
            return;
        }
        if (!(events & EPOLLOUT)) return;
        connections_opened++;
        c->retries = 0;
        c->st = S_READY;
        if (phase == P_ACTIVE) start_message(c, random_size());  // the first message is plain
        else next_step(c, now);
    }
    for (;;) {
        int progressed = 0;
        if (c->st == S_READY) {
            next_step(c, now);
            progressed = 1;
        }
        if (c->st == S_MESSAGE) {
            uint32_t limit = c->act != A_NONE ? c->act_at : c->size;
            while (c->sent < limit) {
                uint32_t chunk = limit - c->sent;
                for (uint32_t i = 0; i < chunk; i++) outbuf[i] = pattern(c->uid, c->seq, c->sent + i);
                ssize_t w = send(c->fd, outbuf, chunk, MSG_NOSIGNAL);
                if (w > 0) {
                    c->sent += (uint32_t)w;
                    bytes_sent += (uint64_t)w;
                    progressed = 1;
                    continue;
                }
                if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (w < 0 && errno == EINTR) continue;
                server_closed(c, idx, now, errno == EPIPE ? "closed (EPIPE)" : "reset (send)");
                return;
            }
            if (c->act != A_NONE && c->sent >= c->act_at) {
                // Mid-message: read what has been echoed so far (verified), then let go.
                if (drain_input(c, idx, now, &progressed) < 0) return;
                if (c->act == A_EARLY_CLOSE) {
                    early_closes++;
                    release(c, 0, 0);  // FIN (the receive queue was just emptied)
                } else {
                    resets++;
                    release(c, 1, 0);  // RST
                }
                return;
            }
        }
        if (drain_input(c, idx, now, &progressed) < 0) return;
        if ((events & (EPOLLHUP | EPOLLERR)) && c->fd >= 0) {
            // The read side reported no EOF and yet the socket is hung up: an error.
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            server_closed(c, idx, now, err == ECONNRESET ? "reset" : "hung up");
            return;
        }
        if (!progressed) break;
    }
}

// Deadlines and reopening; called every ~10 ms.
static void sweep(int64_t now, int *opened_this_tick) {
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        switch (c->st) {
        case S_EMPTY:
            if (phase == P_DRAIN || phase == P_IDLE) break;
            if (now >= c->deadline && *opened_this_tick < batch && pending < max_pending) {
                open_slot(c, (uint32_t)i);
                ++*opened_this_tick;
            }
            break;
        case S_CONNECTING:
            if (now >= c->deadline) connect_failed(c, (uint32_t)i, ETIMEDOUT);
            break;
        case S_MESSAGE:
            if (now >= c->deadline) {
                stalls++;
                bytes_lost += c->sent - c->recvd;
                fprintf(stderr, "poller-soak: conn %llu (slot %d) stalled: msg %llu size %u sent %u echoed %u\n",
                        (unsigned long long)c->uid, i, (unsigned long long)c->seq, c->size, c->sent, c->recvd);
                release(c, 1, 0);
            }
            break;
        case S_IDLE_WAIT:
            if (now >= c->deadline) {
                idle_not_closed++;
                fprintf(stderr, "poller-soak: conn %llu (slot %d) idle %.1f s and the server did not close it\n",
                        (unsigned long long)c->uid, i, (double)(now - c->since) / 1e9);
                release(c, 0, 0);
            }
            break;
        default:
            break;
        }
    }
}

static int count_state(enum state s) {
    int n = 0;
    for (int i = 0; i < nconn; i++) n += conns[i].st == s;
    return n;
}

static int count_state(enum state s);
static int ramped = 0;
static int64_t next_progress = 0;

static void report_progress(int64_t now) {
    if (!ramped && phase == P_ACTIVE && connections_opened >= (uint64_t)nconn) {
        ramped = 1;
        fprintf(stderr, "poller-soak: ramp complete (%d connections) after %.2f s\n", nconn,
                (double)(now - t_start) / 1e9);
        fflush(stderr);
    }
    if (progress && now >= next_progress) {
        next_progress = now + SEC(1);
        fprintf(stderr,
                "poller-soak: progress t=%.1f phase=%d open=%d connecting=%d pending=%d in_flight=%d idle_wait=%d "
                "conversations=%llu opened=%llu\n",
                (double)(now - t_start) / 1e9, phase, nconn - count_state(S_EMPTY), count_state(S_CONNECTING), pending,
                count_state(S_MESSAGE), count_state(S_IDLE_WAIT), (unsigned long long)conversations,
                (unsigned long long)connections_opened);
        fflush(stderr);
    }
}

static void run_loop(int64_t until, int (*done)(void)) {
    struct epoll_event events[1024];
    int64_t next_sweep = 0;
    for (;;) {
        int64_t now = now_ns();
        if (now >= next_sweep) {
            int opened = 0;
            sweep(now, &opened);
            report_progress(now);
            next_sweep = now + SEC(0.01);
            if (done && done()) return;
        }
        if (now >= until) return;
        int64_t wait_ms = (next_sweep - now) / 1000000 + 1;
        if (wait_ms > 20) wait_ms = 20;
        int n = epoll_wait(ep, events, 1024, (int)wait_ms);
        if (n < 0 && errno != EINTR) {
            perror("poller-soak: epoll_wait");
            exit(1);
        }
        now = now_ns();
        for (int e = 0; e < n; e++) handle(events[e].data.u32, events[e].events, now);
    }
}

static int drain_done(void) {
    for (int i = 0; i < nconn; i++) {
        enum state s = conns[i].st;
        if (s == S_MESSAGE || s == S_IDLE_WAIT || s == S_CONNECTING) return 0;
    }
    return 1;
}

static int sync_done(void) {
    for (int i = 0; i < nconn; i++) {
        const conn_t *c = &conns[i];
        if (c->st == S_PARKED) continue;
        if (c->st == S_EMPTY && c->deadline == INT64_MAX) continue;  // abandoned
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--host") && v) host = v, i++;
        else if (!strcmp(a, "--port") && v) port = atoi(v), i++;
        else if (!strcmp(a, "--connections") && v) nconn = atoi(v), i++;
        else if (!strcmp(a, "--duration") && v) duration = atof(v), i++;
        else if (!strcmp(a, "--idle-timeout") && v) idle_timeout = atof(v), i++;
        else if (!strcmp(a, "--idle-phase") && v) idle_phase = atof(v), i++;
        else if (!strcmp(a, "--seed") && v) seed = strtoull(v, NULL, 0), i++;
        else if (!strcmp(a, "--batch") && v) batch = atoi(v), i++;
        else if (!strcmp(a, "--p-early") && v) p_early = atof(v), i++;
        else if (!strcmp(a, "--p-reset") && v) p_reset = atof(v), i++;
        else if (!strcmp(a, "--p-idle") && v) p_idle = atof(v), i++;
        else if (!strcmp(a, "--max-pending") && v) max_pending = atoi(v), i++;
        else if (!strcmp(a, "--verbose")) verbose = 1;
        else if (!strcmp(a, "--progress")) progress = 1;
        else usage();
    }
    if (port <= 0 || port > 65535 || nconn <= 0 || duration <= 0 || idle_timeout <= 0 || idle_phase < 0 || batch <= 0 ||
        max_pending <= 0)
        usage();
    if (idle_phase >= idle_timeout)
        fprintf(stderr, "poller-soak: warning: --idle-phase %.1f >= --idle-timeout %.1f: the server will close them\n",
                idle_phase, idle_timeout);
    rng_state = seed;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nconn + 16) {
        fprintf(stderr, "poller-soak: RLIMIT_NOFILE %llu is too low for %d connections\n",
                (unsigned long long)rl.rlim_cur, nconn);
        return 2;
    }
    server_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &server_addr.sin_addr) != 1) {
        fprintf(stderr, "poller-soak: bad IPv4 address %s\n", host);
        return 2;
    }

    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)nconn, sizeof *conns);
    for (int i = 0; i < nconn; i++) conns[i].fd = -1, conns[i].st = S_EMPTY;

    // Active phase.
    t_start = now_ns();
    active_end = t_start + SEC(duration);
    // An idle must resolve inside the active phase: the server closes it idle_timeout after
    // its last read began, and a second of slack is left for a loaded server's timers.
    idle_allowed_until = active_end - SEC(idle_timeout + 1);
    if (idle_allowed_until < t_start + SEC(0.5) && p_idle > 0)
        fprintf(stderr, "poller-soak: note: --duration %.1f leaves no room for idles of %.1f s\n", duration,
                idle_timeout);
    run_loop(active_end, NULL);
    double active_secs = (double)(now_ns() - t_start) / 1e9;
    int open_at_end = nconn - count_state(S_EMPTY);

    // Drain: in-flight messages finish, idle waits resolve; nothing new starts.
    phase = P_DRAIN;
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (c->st == S_READY) c->st = S_PARKED, c->deadline = INT64_MAX;
        if (c->st == S_CONNECTING) release(c, 0, 0);
    }
    run_loop(now_ns() + SEC(idle_timeout + 4), drain_done);
    int64_t t_drain = now_ns();
    for (int i = 0; i < nconn; i++) {  // whatever is still in flight now has stalled
        conn_t *c = &conns[i];
        if (c->st == S_MESSAGE) {
            stalls++;
            bytes_lost += c->sent - c->recvd;
            release(c, 1, 0);
        } else if (c->st == S_IDLE_WAIT) {
            idle_not_closed++;
            release(c, 0, 0);
        }
    }

    // Sync: reopen every slot; every connection does one 1-byte round trip.
    phase = P_SYNC;
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (c->st == S_PARKED) {
            c->seq = 0;  // marks "needs its sync round trip"; the uid keeps patterns distinct
            c->uid = next_uid++;
            c->st = S_READY;
            next_step(c, now_ns());
            handle((uint32_t)i, EPOLLOUT, now_ns());
        } else if (c->st == S_EMPTY && c->deadline != INT64_MAX) {
            c->deadline = 0;
        }
    }
    run_loop(now_ns() + SEC(30), sync_done);
    int64_t t_sync = now_ns();

    // Idle phase: every connection open and silent; the server holds a read deadline on each.
    phase = P_IDLE;
    idle_phase_connections = (uint64_t)count_state(S_PARKED);
    uint64_t closes_before_idle = unexpected_server_closes;
    fprintf(stderr, "poller-soak: idle phase begin (%llu connections, %.1f s)\n",
            (unsigned long long)idle_phase_connections, idle_phase);
    fflush(stderr);
    run_loop(now_ns() + SEC(idle_phase), NULL);
    fprintf(stderr, "poller-soak: idle phase end (%llu closed by the server during it)\n",
            (unsigned long long)(unexpected_server_closes - closes_before_idle));
    fflush(stderr);
    int open_after_idle = nconn - count_state(S_EMPTY);

    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        if (c->fd >= 0) close(c->fd), c->fd = -1;
    }
    close(ep);

    printf("connections=%d seconds=%.1f drain_s=%.2f sync_s=%.2f connections_opened=%llu conversations=%llu "
           "messages_started=%llu bytes_sent=%llu bytes_echoed=%llu bytes_corrupted=%llu bytes_lost=%llu "
           "early_closes=%llu resets=%llu idles_started=%llu idle_closed_by_server=%llu idle_not_closed=%llu "
           "connect_failures=%llu connect_abandoned=%llu stalls=%llu unexpected_server_closes=%llu "
           "open_at_active_end=%d idle_phase_connections=%llu open_after_idle=%d\n",
           nconn, active_secs, (double)(t_drain - active_end) / 1e9, (double)(t_sync - t_drain) / 1e9,
           (unsigned long long)connections_opened, (unsigned long long)conversations,
           (unsigned long long)messages_started, (unsigned long long)bytes_sent, (unsigned long long)bytes_echoed,
           (unsigned long long)bytes_corrupted, (unsigned long long)bytes_lost, (unsigned long long)early_closes,
           (unsigned long long)resets, (unsigned long long)idle_started, (unsigned long long)idle_closed_by_server,
           (unsigned long long)idle_not_closed, (unsigned long long)connect_failures,
           (unsigned long long)connect_abandoned, (unsigned long long)stalls,
           (unsigned long long)unexpected_server_closes, open_at_end, (unsigned long long)idle_phase_connections,
           open_after_idle);
    fflush(stdout);
    int failed = bytes_corrupted || bytes_lost || unexpected_server_closes || idle_not_closed || stalls ||
                 connect_abandoned || idle_phase_connections < (uint64_t)nconn;
    return failed ? 1 : 0;
}
