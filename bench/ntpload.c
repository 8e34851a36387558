/*
 * ntpload: a bounded NTP load generator for loopback benchmarks.
 *
 * Sends NTPv4 mode-3 48-byte requests to HOST PORT at an offered rate for a
 * bounded time, from several UDP sockets (distinct source ports, so that
 * SO_REUSEPORT hashing spreads the load over the server's sockets), and matches
 * every reply by the origin timestamp it echoes. Each request's transmit
 * timestamp is unique: the high 32 bits carry a sequence number, the low 32 bits
 * the send time in microseconds since the run started.
 *
 * Prints one JSON line: sent, received, matched, loss, rates and latency
 * percentiles of matched replies (send to receive, as the client sees it).
 * Replies that say "unsynchronized" (LI=3 or stratum 0) are matched and also
 * counted as unsync.
 * A matched reply that took longer than LATE_MS (default 20 ms) is counted as
 * late; "loss_or_late" is the fraction of requests without an on-time reply.
 * It matters for servers with deep receive buffers, which queue (and answer
 * ever later) rather than drop when they cannot keep up.
 *
 * Safety: the target must be a loopback address (127.0.0.0/8 or ::1), or, with
 * -N, any address when ntpload runs in a network namespace other than the host's
 * (a test namespace joined to another only by a veth pair, as the XDP tests and
 * bench/run.py --xdp make); the
 * duration is capped at 30 s, the rate at 1M/s and the packet count at 20M;
 * an alarm ends the process if it ever overruns by more than a few seconds.
 *
 * Build: gcc -O2 -Wall -pthread -o ntpload ntpload.c
 * Usage: ntpload [-r RATE] [-d SECONDS] [-s SOCKETS] [-t 1|2] [-w DRAIN_MS] [-l LATE_MS] [-N] HOST PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_DURATION_S 30.0
#define MAX_RATE 1000000.0
#define MAX_PACKETS 20000000UL
#define MAX_SOCKETS 64
#define BATCH 64
#define PKT_LEN 48
#define RBUF_LEN 128
#define HIST_US 1000000 /* 1 us buckets up to 1 s; later replies go to the last one */

enum { ST_UNSENT = 0, ST_SENT = 1, ST_REPLIED = 2 };

static struct {
    double rate, duration;
    int nsock, threads, drain_ms, late_ms;
    int fds[MAX_SOCKETS];
    uint64_t start_ns;
    uint64_t max_packets;
    uint8_t *state;            /* per sequence number */
    uint32_t *hist;            /* latency histogram, 1 us buckets */
    /* sender results */
    uint64_t sent, skipped, send_errors;
    uint64_t send_end_ns;
    int sending_done; /* set by the sender thread (atomic builtins) */
    /* receiver results */
    uint64_t received, matched, late, unsync, duplicates, bad;
    uint64_t lat_max_us;
} g;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "ntpload: %s: %s\n", msg, strerror(errno));
    exit(2);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: ntpload [-r RATE] [-d SECONDS] [-s SOCKETS] [-t 1|2] [-w DRAIN_MS] [-l LATE_MS]"
            " [-N] HOST PORT\n"
            "  HOST must be loopback (127.0.0.0/8 or ::1), or with -N any address when run in a\n"
            "  network namespace other than the host's (a test bed's veth pair); SECONDS <= %.0f; RATE <= %.0f\n",
            MAX_DURATION_S, MAX_RATE);
    exit(2);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ---- sending ---------------------------------------------------------- */

static uint8_t sbuf[BATCH][PKT_LEN];
static struct iovec siov[BATCH];
static struct mmsghdr smsg[BATCH];
static unsigned rr_sock;

static void send_setup(void)
{
    memset(sbuf, 0, sizeof(sbuf));
    for (int i = 0; i < BATCH; i++) {
        sbuf[i][0] = 0x23; /* LI 0, version 4, mode 3 (client) */
        siov[i].iov_base = sbuf[i];
        siov[i].iov_len = PKT_LEN;
        memset(&smsg[i], 0, sizeof(smsg[i]));
        smsg[i].msg_hdr.msg_iov = &siov[i];
        smsg[i].msg_hdr.msg_iovlen = 1;
    }
}

/* Send up to n requests in one sendmmsg on the next socket; returns how many went out. */
static int send_batch(int n)
{
    uint64_t seq0 = g.sent;
    uint32_t t_us = (uint32_t)((now_ns() - g.start_ns) / 1000);
    for (int i = 0; i < n; i++) {
        uint32_t seq = (uint32_t)(seq0 + (uint64_t)i);
        put_be32(&sbuf[i][40], seq);
        put_be32(&sbuf[i][44], t_us);
        __atomic_store_n(&g.state[seq], ST_SENT, __ATOMIC_RELEASE);
    }
    int fd = g.fds[rr_sock++ % (unsigned)g.nsock];
    int r = sendmmsg(fd, smsg, (unsigned)n, MSG_DONTWAIT);
    if (r < 0) {
        g.send_errors++;
        r = 0;
    }
    for (int i = r; i < n; i++) /* not sent: those sequence numbers are reused */
        __atomic_store_n(&g.state[(uint32_t)(seq0 + (uint64_t)i)], ST_UNSENT, __ATOMIC_RELAXED);
    __atomic_store_n(&g.sent, g.sent + (uint64_t)r, __ATOMIC_RELEASE);
    return r;
}

/*
 * One pacing step. Returns the time (ns) when the next request is due, or 0
 * when sending is over. A sender that has fallen behind (descheduled on a busy
 * machine) catches up in full batches; a backlog beyond 20 ms is dropped
 * (counted as skipped) rather than sent as one long burst. The achieved send
 * rate is reported, so a caller can tell when the offered load was not met.
 */
static uint64_t send_step(uint64_t now)
{
    uint64_t end = g.start_ns + (uint64_t)(g.duration * 1e9);
    if (now >= end || g.sent >= g.max_packets)
        return 0;
    double elapsed = (double)(now - g.start_ns) / 1e9;
    uint64_t due = (uint64_t)(g.rate * elapsed) + 1;
    if (due > g.max_packets + g.skipped)
        due = g.max_packets + g.skipped;
    uint64_t done = g.sent + g.skipped;
    uint64_t backlog_cap = (uint64_t)(g.rate * 0.020);
    if (backlog_cap < BATCH)
        backlog_cap = BATCH;
    if (due > done + backlog_cap) {
        g.skipped += due - done - backlog_cap;
        done = g.sent + g.skipped;
    }
    if (due > done) {
        uint64_t n = due - done;
        if (n > BATCH)
            n = BATCH;
        if (g.sent + n > g.max_packets)
            n = g.max_packets - g.sent;
        if (send_batch((int)n) < (int)n)
            return now + 20000; /* socket buffer full: back off 20 us */
        done = g.sent + g.skipped;
    }
    return g.start_ns + (uint64_t)((double)done / g.rate * 1e9);
}

/* ---- receiving -------------------------------------------------------- */

static uint8_t rbuf[BATCH][RBUF_LEN];
static struct iovec riov[BATCH];
static struct mmsghdr rmsg[BATCH];

static void recv_setup(void)
{
    for (int i = 0; i < BATCH; i++) {
        riov[i].iov_base = rbuf[i];
        riov[i].iov_len = RBUF_LEN;
        memset(&rmsg[i], 0, sizeof(rmsg[i]));
        rmsg[i].msg_hdr.msg_iov = &riov[i];
        rmsg[i].msg_hdr.msg_iovlen = 1;
    }
}

static void account(const uint8_t *p, unsigned len, uint64_t t_ns)
{
    g.received++;
    if (len < PKT_LEN || (p[0] & 7) != 4) {
        g.bad++;
        return;
    }
    uint32_t seq = get_be32(p + 24); /* origin timestamp = our transmit timestamp */
    uint32_t t_us = get_be32(p + 28);
    if (seq >= g.max_packets) {
        g.bad++;
        return;
    }
    uint8_t st = __atomic_load_n(&g.state[seq], __ATOMIC_ACQUIRE);
    if (st == ST_REPLIED) {
        g.duplicates++;
        return;
    }
    if (st != ST_SENT) {
        g.bad++;
        return;
    }
    g.state[seq] = ST_REPLIED;
    g.matched++;
    if ((p[0] >> 6) == 3 || p[1] == 0) /* LI=3 or stratum 0: the server says unsynchronized */
        g.unsync++;
    uint32_t now_us = (uint32_t)((t_ns - g.start_ns) / 1000);
    uint64_t lat = (uint32_t)(now_us - t_us);
    if (lat > g.lat_max_us)
        g.lat_max_us = lat;
    if (lat > (uint64_t)g.late_ms * 1000)
        g.late++;
    g.hist[lat < HIST_US ? lat : HIST_US]++;
}

static int epfd = -1;

static uint64_t drain_fd(int fd)
{
    uint64_t got = 0;
    for (;;) {
        int r = recvmmsg(fd, rmsg, BATCH, MSG_DONTWAIT, NULL);
        if (r <= 0)
            break; /* EAGAIN, or ECONNREFUSED from an ICMP error: move on */
        uint64_t t = now_ns();
        for (int i = 0; i < r; i++)
            account(rbuf[i], rmsg[i].msg_len, t);
        got += (uint64_t)r;
        if (r < BATCH)
            break;
    }
    return got;
}

/* Wait until a socket is readable or until_ns passes (0: do not wait); drain the ready ones. */
static uint64_t poll_and_drain(uint64_t until_ns)
{
    struct epoll_event ev[MAX_SOCKETS];
    struct timespec ts = {0, 0};
    uint64_t now = now_ns();
    if (until_ns > now) {
        uint64_t d = until_ns - now;
        ts.tv_sec = (time_t)(d / 1000000000ULL);
        ts.tv_nsec = (long)(d % 1000000000ULL);
    }
    int n = epoll_pwait2(epfd, ev, MAX_SOCKETS, &ts, NULL);
    uint64_t got = 0;
    for (int i = 0; i < n; i++)
        got += drain_fd(ev[i].data.fd);
    return got;
}

static int all_answered(uint64_t sent)
{
    return g.matched + g.bad >= sent;
}

/* ---- drivers ---------------------------------------------------------- */

/*
 * Pacing quantum: requests due within 50 us go out in one sendmmsg, as a busy
 * server's clients would arrive in small clumps; it keeps the generator cheap.
 */
#define QUANTUM_NS 50000ULL

static void run_single_thread(void)
{
    uint64_t drain_end = 0, next_send = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (drain_end == 0 && now >= next_send) {
            uint64_t next = send_step(now);
            if (next == 0) {
                g.send_end_ns = now;
                drain_end = now + (uint64_t)g.drain_ms * 1000000ULL;
            } else {
                next_send = next > now + QUANTUM_NS ? next : now + QUANTUM_NS;
                if (next <= now) /* still behind: a full batch went out, send again */
                    next_send = now;
            }
        }
        if (drain_end != 0 && (now >= drain_end || all_answered(g.sent)))
            break;
        uint64_t until = drain_end != 0 ? drain_end : next_send;
        if (until > now + 1000000ULL) /* wake at least every 1 ms */
            until = now + 1000000ULL;
        poll_and_drain(until);
    }
}

static void *sender_thread(void *arg)
{
    (void)arg;
    for (;;) {
        uint64_t now = now_ns();
        uint64_t next = send_step(now);
        if (next == 0) {
            g.send_end_ns = now;
            __atomic_store_n(&g.sending_done, 1, __ATOMIC_RELEASE);
            return NULL;
        }
        if (next > now) {
            if (next < now + QUANTUM_NS)
                next = now + QUANTUM_NS;
            struct timespec ts = {.tv_sec = (time_t)(next / 1000000000ULL),
                                  .tv_nsec = (long)(next % 1000000000ULL)};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        }
    }
}

static void run_two_threads(void)
{
    pthread_t th;
    if (pthread_create(&th, NULL, sender_thread, NULL) != 0)
        die("pthread_create");
    uint64_t drain_end = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (drain_end == 0 && __atomic_load_n(&g.sending_done, __ATOMIC_ACQUIRE))
            drain_end = now + (uint64_t)g.drain_ms * 1000000ULL;
        if (drain_end != 0 && (now >= drain_end ||
                               all_answered(__atomic_load_n(&g.sent, __ATOMIC_ACQUIRE))))
            break;
        poll_and_drain(drain_end != 0 && drain_end < now + 1000000ULL ? drain_end
                                                                       : now + 1000000ULL);
    }
    pthread_join(th, NULL);
}

static uint64_t percentile_us(double q)
{
    if (g.matched == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)g.matched);
    if (want >= g.matched)
        want = g.matched - 1;
    uint64_t acc = 0;
    for (uint64_t i = 0; i <= HIST_US; i++) {
        acc += g.hist[i];
        if (acc > want)
            return i;
    }
    return HIST_US;
}

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
    return IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
}

/* The initial network namespace has a fixed inode number (PROC_NET_INIT_INO in the kernel's
 * proc_ns.h, stable since Linux 3.8); stat() of PID 1's namespace may be denied, this never is. */
#define PROC_NET_INIT_INO 0xEFFFFFF9U

/* True when this process runs outside the host's network namespace, in one a test bed made. */
static int in_own_netns(void)
{
    struct stat mine;
    if (stat("/proc/self/ns/net", &mine) != 0)
        return 0;
    return mine.st_ino != PROC_NET_INIT_INO;
}

int main(int argc, char **argv)
{
    g.rate = 10000;
    g.duration = 2;
    g.nsock = 16;
    g.threads = 1;
    g.drain_ms = 300;
    g.late_ms = 20;
    int opt;
    int netns_target = 0;
    while ((opt = getopt(argc, argv, "r:d:s:t:w:l:Nh")) != -1) {
        switch (opt) {
        case 'r': g.rate = atof(optarg); break;
        case 'd': g.duration = atof(optarg); break;
        case 's': g.nsock = atoi(optarg); break;
        case 't': g.threads = atoi(optarg); break;
        case 'w': g.drain_ms = atoi(optarg); break;
        case 'l': g.late_ms = atoi(optarg); break;
        case 'N': netns_target = 1; break;
        default: usage();
        }
    }
    if (argc - optind != 2)
        usage();
    if (!(g.rate > 0 && g.rate <= MAX_RATE) || !(g.duration > 0 && g.duration <= MAX_DURATION_S) ||
        g.nsock < 1 || g.nsock > MAX_SOCKETS || (g.threads != 1 && g.threads != 2) ||
        g.drain_ms < 0 || g.drain_ms > 2000 || g.late_ms < 1)
        usage();

    struct sockaddr_storage dst;
    memset(&dst, 0, sizeof(dst));
    socklen_t dlen;
    int port = atoi(argv[optind + 1]);
    if (port <= 0 || port > 65535)
        usage();
    struct sockaddr_in *d4 = (struct sockaddr_in *)&dst;
    struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)&dst;
    if (inet_pton(AF_INET, argv[optind], &d4->sin_addr) == 1) {
        d4->sin_family = AF_INET;
        d4->sin_port = htons((uint16_t)port);
        dlen = sizeof(*d4);
    } else if (inet_pton(AF_INET6, argv[optind], &d6->sin6_addr) == 1) {
        d6->sin6_family = AF_INET6;
        d6->sin6_port = htons((uint16_t)port);
        dlen = sizeof(*d6);
    } else {
        usage();
    }
    if (!is_loopback(&dst) && !(netns_target && in_own_netns())) {
        fprintf(stderr, "ntpload: refusing a non-loopback target outside a test namespace\n");
        return 2;
    }

    /* Hard stop: even if something goes wrong, the process ends by itself. */
    alarm((unsigned)(g.duration + 5 + g.drain_ms / 1000));

    double want = g.rate * g.duration;
    g.max_packets = want < (double)MAX_PACKETS ? (uint64_t)want + 1 : MAX_PACKETS;
    g.state = calloc(g.max_packets, 1);
    g.hist = calloc(HIST_US + 1, sizeof(uint32_t));
    if (!g.state || !g.hist)
        die("calloc");

    epfd = epoll_create1(0);
    if (epfd < 0)
        die("epoll_create1");
    for (int i = 0; i < g.nsock; i++) {
        int fd = socket(dst.ss_family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            die("socket");
        int sz = 4 << 20;
        /* Big client buffers, so that losses are the server's, not ours. */
        if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) < 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
        if (connect(fd, (struct sockaddr *)&dst, dlen) < 0)
            die("connect");
        g.fds[i] = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl");
    }
    send_setup();
    recv_setup();

    g.start_ns = now_ns();
    if (g.threads == 1)
        run_single_thread();
    else
        run_two_threads();
    uint64_t end_ns = now_ns();

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double send_s = (double)(g.send_end_ns - g.start_ns) / 1e9;
    if (send_s <= 0)
        send_s = 1e-9;
    double loss = g.sent ? 1.0 - (double)g.matched / (double)g.sent : 1.0;
    double loss_late = g.sent ? 1.0 - (double)(g.matched - g.late) / (double)g.sent : 1.0;
    printf("{\"target_rate\": %.0f, \"duration_s\": %.3f, \"sockets\": %d, \"threads\": %d, "
           "\"sent\": %lu, \"skipped\": %lu, \"send_errors\": %lu, \"received\": %lu, "
           "\"matched\": %lu, \"unsync\": %lu, \"late\": %lu, \"late_ms\": %d, \"duplicates\": %lu, \"bad\": %lu, "
           "\"loss\": %.6f, \"loss_or_late\": %.6f, "
           "\"send_rate\": %.1f, \"reply_rate\": %.1f, \"p50_us\": %lu, \"p99_us\": %lu, "
           "\"max_us\": %lu, \"gen_cpu_s\": %.3f, \"wall_s\": %.3f}\n",
           g.rate, send_s, g.nsock, g.threads, (unsigned long)g.sent, (unsigned long)g.skipped,
           (unsigned long)g.send_errors, (unsigned long)g.received, (unsigned long)g.matched,
           (unsigned long)g.unsync, (unsigned long)g.late, g.late_ms, (unsigned long)g.duplicates, (unsigned long)g.bad, loss,
           loss_late, (double)g.sent / send_s,
           (double)g.matched / send_s, (unsigned long)percentile_us(0.50),
           (unsigned long)percentile_us(0.99), (unsigned long)g.lat_max_us, cpu,
           (double)(end_ns - g.start_ns) / 1e9);
    for (int i = 0; i < g.nsock; i++)
        close(g.fds[i]);
    return 0;
}
