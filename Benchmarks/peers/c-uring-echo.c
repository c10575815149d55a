// c-uring-echo: raw io_uring completion echo server, the io_uring ceiling that scripts/bench.sh
// sets beside raw C epoll (issue 16; shared/reference/uring-completion-ceiling.md describes
// the kind of server measured there; this one is our own).
//
//   c-uring-echo [--host 127.0.0.1] [--port 0] [--threads N] [--buffers N] [--buffer-size BYTES]
//
// Prints "c-uring-echo: listening on HOST:PORT (...)", echoes every byte on every connection
// and exits 0 on SIGINT/SIGTERM. One thread by default; --threads N runs N independent rings
// (0: one per CPU in the affinity mask), each with its own SO_REUSEPORT listener.
//
// How it works (one ring per thread, no readiness anywhere):
// - The ring asks for SINGLE_ISSUER | DEFER_TASKRUN (then COOP_TASKRUN, then nothing, as the
//   kernel allows): without deferred task work the same server costs about twice the CPU per
//   round trip (uring-ring-flags.md).
// - One multishot accept on the listener.
// - Per connection one multishot recv that picks its buffer from one provided-buffer ring
//   (--buffers of --buffer-size bytes, one group per thread). A recv completion without
//   IORING_CQE_F_MORE is re-armed; -ENOBUFS (the ring is empty) parks the connection until a
//   buffer comes back.
// - Received buffers queue per connection and are sent in order, one send in flight per
//   connection (MSG_WAITALL, so the kernel finishes a short send itself; a short one left is
//   sent again from where it stopped); a buffer returns to the ring when its send completes.
// - Closing cancels what is in flight (ASYNC_CANCEL by fd) and closes the descriptor only
//   when every operation on it has completed, so a completion never names a descriptor
//   number that was reused. user_data still carries a generation, as a guard.
//
// Build: cc -O2 -pthread -o c-uring-echo c-uring-echo.c -luring
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum { KIND_ACCEPT = 1, KIND_RECV = 2, KIND_SEND = 3, KIND_CANCEL = 4 };
enum { GROUP = 0, RING_ENTRIES = 4096 };

typedef struct {
    uint16_t bid;
    uint32_t len, off;
} chunk_t;

typedef struct conn {
    int fd;
    uint32_t gen;
    int inflight;       // operations submitted whose last completion has not come
    int recv_armed;     // a multishot recv is in flight
    int send_inflight;  // the head chunk is being sent
    int closing;
    int starved;        // its recv ended with -ENOBUFS: re-arm when a buffer comes back
    chunk_t *queue;     // received chunks not yet sent back, in order
    size_t head, count, cap;
    struct conn *next_starved;
} conn_t;

typedef struct {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    uint8_t *buffers;
    unsigned nbuffers, bufsize;
    int lfd;
    conn_t **conns;  // by descriptor number; each thread sees only its own descriptors
    conn_t *starved;
    uint32_t next_gen;
} loop_t;

static const char *host = "127.0.0.1";
static unsigned nbuffers = 2048, bufsize = 16 * 1024;
static size_t nconns_cap;

static uint64_t tag(int kind, uint32_t gen, int fd) {
    return ((uint64_t)kind << 56) | ((uint64_t)(gen & 0xFFFFFF) << 32) | (uint32_t)fd;
}

static struct io_uring_sqe *sqe_for(loop_t *l) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
    if (!sqe) {  // the submission queue is full: hand it to the kernel and take a fresh entry
        io_uring_submit(&l->ring);
        sqe = io_uring_get_sqe(&l->ring);
    }
    return sqe;
}

static void arm_accept(loop_t *l) {
    struct io_uring_sqe *sqe = sqe_for(l);
    io_uring_prep_multishot_accept(sqe, l->lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, tag(KIND_ACCEPT, 0, l->lfd));
}

static void arm_recv(loop_t *l, conn_t *c) {
    struct io_uring_sqe *sqe = sqe_for(l);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = GROUP;
    io_uring_sqe_set_data64(sqe, tag(KIND_RECV, c->gen, c->fd));
    c->recv_armed = 1;
    c->inflight++;
}

static void send_head(loop_t *l, conn_t *c) {
    chunk_t *ch = &c->queue[c->head];
    struct io_uring_sqe *sqe = sqe_for(l);
    io_uring_prep_send(sqe, c->fd, l->buffers + (size_t)ch->bid * l->bufsize + ch->off, ch->len - ch->off,
                       MSG_WAITALL | MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, tag(KIND_SEND, c->gen, c->fd));
    c->send_inflight = 1;
    c->inflight++;
}

// Gives buffer `bid` back to the kernel, and re-arms the connections that ran out.
static void return_buffer(loop_t *l, uint16_t bid) {
    io_uring_buf_ring_add(l->br, l->buffers + (size_t)bid * l->bufsize, l->bufsize, bid,
                          io_uring_buf_ring_mask(l->nbuffers), 0);
    io_uring_buf_ring_advance(l->br, 1);
    while (l->starved) {
        conn_t *c = l->starved;
        l->starved = c->next_starved;
        c->starved = 0;
        if (!c->closing && !c->recv_armed) arm_recv(l, c);
    }
}

static void free_if_done(loop_t *l, conn_t *c) {
    if (!c->closing || c->inflight > 0) return;
    for (size_t i = 0; i < c->count; i++) return_buffer(l, c->queue[(c->head + i) % c->cap].bid);
    l->conns[c->fd] = NULL;
    close(c->fd);
    free(c->queue);
    free(c);
}

// Marks `c` closing and cancels what is in flight on it; it is freed, and its descriptor
// closed, by free_if_done once the last completion has come.
static void start_close(loop_t *l, conn_t *c) {
    if (c->closing) return;
    c->closing = 1;
    if (c->starved) {  // unlink from the starved list
        for (conn_t **p = &l->starved; *p; p = &(*p)->next_starved) {
            if (*p == c) { *p = c->next_starved; break; }
        }
        c->starved = 0;
    }
    if (c->inflight > 0) {
        struct io_uring_sqe *sqe = sqe_for(l);
        io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, tag(KIND_CANCEL, c->gen, c->fd));
    }
    // The caller frees it (free_if_done) once it is done with it.
}

static int enqueue(conn_t *c, uint16_t bid, uint32_t len) {
    if (c->count == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 4;
        chunk_t *q = malloc(cap * sizeof *q);
        if (!q) return -1;
        for (size_t i = 0; i < c->count; i++) q[i] = c->queue[(c->head + i) % c->cap];
        free(c->queue);
        c->queue = q, c->cap = cap, c->head = 0;
    }
    c->queue[(c->head + c->count) % c->cap] = (chunk_t){.bid = bid, .len = len, .off = 0};
    c->count++;
    return 0;
}

static void on_accept(loop_t *l, struct io_uring_cqe *cqe) {
    if (!(cqe->flags & IORING_CQE_F_MORE)) arm_accept(l);
    int fd = cqe->res;
    if (fd < 0) return;  // EMFILE and friends: the multishot accept goes on (or was re-armed)
    if ((size_t)fd >= nconns_cap) { close(fd); return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn_t *c = calloc(1, sizeof *c);
    if (!c) { close(fd); return; }
    c->fd = fd;
    c->gen = ++l->next_gen;
    l->conns[fd] = c;
    arm_recv(l, c);
}

static void on_recv(loop_t *l, conn_t *c, struct io_uring_cqe *cqe) {
    int more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        c->recv_armed = 0;
        c->inflight--;
    }
    if (cqe->res > 0) {
        uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        if (c->closing || enqueue(c, bid, (uint32_t)cqe->res) < 0) {
            return_buffer(l, bid);
            start_close(l, c);
        } else {
            if (!c->send_inflight) send_head(l, c);
            if (!more && !c->recv_armed) arm_recv(l, c);
        }
    } else if (cqe->res == -ENOBUFS && !c->closing) {
        if (!c->recv_armed && !c->starved) {
            c->starved = 1;
            c->next_starved = l->starved;
            l->starved = c;
        }
    } else if (cqe->res != -ECANCELED || !c->closing) {
        start_close(l, c);  // end of file, a reset, or an error
    }
    free_if_done(l, c);
}

static void on_send(loop_t *l, conn_t *c, struct io_uring_cqe *cqe) {
    c->send_inflight = 0;
    c->inflight--;
    if (cqe->res <= 0 || c->closing) {
        start_close(l, c);
        free_if_done(l, c);
        return;
    }
    chunk_t *ch = &c->queue[c->head];
    ch->off += (uint32_t)cqe->res;
    if (ch->off == ch->len) {
        uint16_t bid = ch->bid;
        c->head = (c->head + 1) % c->cap;
        c->count--;
        return_buffer(l, bid);
    }
    if (c->count > 0) send_head(l, c);
}

static int make_listener(int port, int reuseport) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport) setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "c-uring-echo: bad IPv4 address %s\n", host);
        exit(2);
    }
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        perror("c-uring-echo: bind/listen");
        exit(1);
    }
    return lfd;
}

static const char *ring_mode = "none";

// The ring with the flags this kernel takes, best first; 0 or -errno.
static int setup_ring(struct io_uring *ring) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    if (io_uring_queue_init_params(RING_ENTRIES, ring, &p) == 0) { ring_mode = "DEFER_TASKRUN"; return 0; }
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    if (io_uring_queue_init_params(RING_ENTRIES, ring, &p) == 0) { ring_mode = "COOP_TASKRUN"; return 0; }
    memset(&p, 0, sizeof p);
    return io_uring_queue_init_params(RING_ENTRIES, ring, &p);
}

static void *event_loop(void *arg) {
    loop_t *l = calloc(1, sizeof *l);
    l->lfd = (int)(intptr_t)arg;
    l->nbuffers = nbuffers, l->bufsize = bufsize;
    l->conns = calloc(nconns_cap, sizeof *l->conns);
    int r = setup_ring(&l->ring);
    if (r < 0) {
        fprintf(stderr, "c-uring-echo: io_uring_queue_init: %s\n", strerror(-r));
        exit(1);
    }
    // The provided-buffer ring: page-aligned, registered as group GROUP, every buffer in it.
    size_t ring_bytes = (size_t)l->nbuffers * sizeof(struct io_uring_buf);
    l->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    l->buffers = malloc((size_t)l->nbuffers * l->bufsize);
    if (l->br == MAP_FAILED || !l->buffers) {
        fprintf(stderr, "c-uring-echo: out of memory for the buffers\n");
        exit(1);
    }
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)l->br, .ring_entries = l->nbuffers, .bgid = GROUP};
    r = io_uring_register_buf_ring(&l->ring, &reg, 0);
    if (r < 0) {
        fprintf(stderr, "c-uring-echo: io_uring_register_buf_ring: %s\n", strerror(-r));
        exit(1);
    }
    io_uring_buf_ring_init(l->br);
    for (unsigned i = 0; i < l->nbuffers; i++) {
        io_uring_buf_ring_add(l->br, l->buffers + (size_t)i * l->bufsize, l->bufsize, (unsigned short)i,
                              io_uring_buf_ring_mask(l->nbuffers), (int)i);
    }
    io_uring_buf_ring_advance(l->br, (int)l->nbuffers);
    arm_accept(l);
    for (;;) {
        r = io_uring_submit_and_wait(&l->ring, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
            fprintf(stderr, "c-uring-echo: io_uring_submit_and_wait: %s\n", strerror(-r));
            exit(1);
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&l->ring, head, cqe) {
            seen++;
            uint64_t data = io_uring_cqe_get_data64(cqe);
            int kind = (int)(data >> 56);
            uint32_t gen = (uint32_t)(data >> 32) & 0xFFFFFF;
            int fd = (int)(uint32_t)data;
            if (kind == KIND_ACCEPT) { on_accept(l, cqe); continue; }
            if (kind == KIND_CANCEL || fd < 0 || (size_t)fd >= nconns_cap) continue;
            conn_t *c = l->conns[fd];
            if (!c || (c->gen & 0xFFFFFF) != gen) continue;  // a stale completion (guard)
            if (kind == KIND_RECV) on_recv(l, c, cqe);
            else if (kind == KIND_SEND) on_send(l, c, cqe);
        }
        io_uring_cq_advance(&l->ring, seen);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int port = 0, nthreads = 1, bad = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) nthreads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--buffers") && i + 1 < argc) nbuffers = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--buffer-size") && i + 1 < argc) bufsize = (unsigned)atoi(argv[++i]);
        else bad = 1;
    }
    // The buffer ring's size must be a power of two of at most 32768 entries.
    if (bad || nthreads < 0 || nbuffers == 0 || nbuffers > 32768 || (nbuffers & (nbuffers - 1)) || bufsize == 0) {
        fprintf(stderr, "usage: c-uring-echo [--host 127.0.0.1] [--port 0] [--threads N (0: one per CPU)] "
                        "[--buffers N (power of two, <= 32768)] [--buffer-size BYTES]\n");
        return 2;
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

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

    int reuseport = nthreads > 1;
    int lfd0 = make_listener(port, reuseport);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(lfd0, (struct sockaddr *)&sa, &sl);
    port = ntohs(sa.sin_port);
    for (int t = 0; t < nthreads; t++) {
        pthread_t th;
        int lfd = t == 0 ? lfd0 : make_listener(port, 1);
        if (pthread_create(&th, NULL, event_loop, (void *)(intptr_t)lfd) != 0) {
            fprintf(stderr, "c-uring-echo: pthread_create failed\n");
            return 1;
        }
        pthread_detach(th);
    }
    usleep(100000);  // let the rings come up (or fail) before saying we listen
    printf("c-uring-echo: listening on %s:%d (raw C io_uring completion: multishot accept and recv, "
           "provided buffers %ux%u, ring %s, %d thread%s%s)\n",
           host, port, nbuffers, bufsize, ring_mode, nthreads, nthreads == 1 ? "" : "s",
           nthreads == 1 ? "" : ", SO_REUSEPORT");
    fflush(stdout);
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) < 0 && errno == EINTR) {}
    return 0;
}
