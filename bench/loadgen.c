/* loadgen: the C load generators of `make bench` (built by bench/run.sh).
 *
 *   loadgen echo [PORT]
 *       Binds 127.0.0.1:PORT (default 0: a free port; SO_REUSEPORT, so that
 *       several echo processes can share one), prints the port on stdout,
 *       then echoes every byte back on every connection (single thread,
 *       epoll) until SIGTERM.
 *
 *   loadgen pingpong HOST PORT CONNS SIZE INTERVAL_MS WARMUP_S DURATION_S
 *       Opens CONNS connections to HOST:PORT (all kept open), then on each
 *       one, again and again: send SIZE bytes, wait until SIZE bytes came
 *       back, pause a random 0.5..1.5 x INTERVAL_MS ("chat-like": many
 *       mostly-idle connections, each exchanging small messages). Round
 *       trips completed in the DURATION_S after a WARMUP_S warm-up are
 *       recorded. Prints one JSON object: p50/p90/p99/p999/max in
 *       microseconds, samples, errors. Single thread, epoll, a timer heap:
 *       it uses a few percent of a core at 1000 connections x 10 msg/s.
 *
 *   loadgen population chat=PORT [tls=PORT] [media=PORT] stages=N[,N...]
 *                      [key=value...]
 *       WhatsApp-like clients on 127.0.0.1 (issue 16).  A share (tls-pct,
 *       default 70) does TLS (OpenSSL, no certificate check, as the app) to
 *       the tls port, the rest plain to the chat port.  Each client connects,
 *       sends one 100-400 byte message and waits for its echo (its intro:
 *       a TLS 1.3 client then holds its session ticket), then sends a
 *       message at exponential intervals of mean `interval` seconds (default
 *       30, cut at 150 s; 0: none after the intro) and waits for each
 *       echo.  One client in
 *       media-every (default 50; 0: none) downloads 200 KiB-2 MiB from the
 *       media port every media-period seconds (default 60; first one at a
 *       random point of the first period), on a new connection, by the
 *       protocol of `tlsclient serve` (the app's own TLS would be opaque
 *       bytes to a relay).  Clients are opened stage by stage (totals of
 *       all generator processes: procs=P proc=I takes clients I, I+P, ...),
 *       at most `inflight` attempts at a time (default 100), each bounded by
 *       attempt-timeout seconds (default 15).  When a stage is up it prints
 *       "ready STAGE UP FAILED"; then a line "window T0 T1" on stdin
 *       (CLOCK_MONOTONIC ns) measures the messages sent in [T0, T1): at T1,
 *       once their echoes are in (at most 5 s more), it prints one JSON
 *       object (latencies in us, media downloads, errors) and opens the
 *       next stage.  "quit" or EOF on stdin ends it; so does `deadline`
 *       seconds (default 600) with status 3.
 *
 *   loadgen storm chat=PORT tls=PORT stages=N [key=value...]
 *       The same clients (no messages after the intro, no media); after
 *       "ready", a line "storm T" resets every connection at T (SO_LINGER 0)
 *       and reconnects each client at a uniform random point of the next
 *       second, TLS clients of even index offering the ticket of their first
 *       handshake.  A client is back when its intro's echo is in; a failed
 *       attempt is counted (refused, reset, timeout, other) and retried
 *       0.5-1.5 s later.  When all are back, or after storm-timeout seconds
 *       (default 60), it prints one JSON object: reconnect times after T and
 *       handshake times (full, resumed, plain), in us.
 *
 * Exit status 0 on success, 1 on setup failure (or when a connection
 * breaks: the count is in "errors" and the status is 1); population and
 * storm report their errors in their JSON and exit 0 unless set up failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <math.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void
on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void
die(const char *what)
{
	fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void
raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		die("fcntl");
}

/* ------------------------------------------------------------------ echo */

static int
run_echo(int port)
{
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (ls < 0)
		die("socket");
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	/* Several echo processes may share a port: the kernel spreads the
	 * connections (and their descriptors) among them. */
	setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	raise_nofile();
	struct sockaddr_in sa = {
	    .sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    listen(ls, 4096) < 0)
		die("bind/listen");
	socklen_t sl = sizeof sa;
	getsockname(ls, (struct sockaddr *)&sa, &sl);
	printf("%u\n", ntohs(sa.sin_port));
	fflush(stdout);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	static char buf[65536];
	struct epoll_event evs[512];
	while (!stop) {
		int n = epoll_wait(ep, evs, 512, 200);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == ls) {
				for (;;) {
					int c = accept4(ls, NULL, NULL,
					    SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (c < 0)
						break;
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY,
					    &one, sizeof one);
					struct epoll_event cev = {
					    .events = EPOLLIN | EPOLLRDHUP,
					    .data.fd = c};
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
				}
				continue;
			}
			ssize_t r = read(fd, buf, sizeof buf);
			if (r == 0 ||
			    (r < 0 && errno != EAGAIN && errno != EINTR)) {
				close(fd);
				continue;
			}
			if (r < 0)
				continue;
			ssize_t off = 0;
			while (off < r) {
				ssize_t w =
				    write(fd, buf + off, (size_t)(r - off));
				if (w > 0) {
					off += w;
				} else if (w < 0 &&
				    (errno == EAGAIN || errno == EINTR)) {
					/* Rare with small messages: wait for
					 * room. */
					struct epoll_event oev = {
					    .events = EPOLLOUT};
					int tmp = epoll_create1(0);
					epoll_ctl(tmp, EPOLL_CTL_ADD, fd, &oev);
					epoll_wait(tmp, &oev, 1, 1000);
					close(tmp);
				} else {
					close(fd);
					break;
				}
			}
		}
	}
	return 0;
}

/* -------------------------------------------------------------- pingpong */

struct conn {
	int fd;
	size_t sent, got; /* progress of the current message */
	uint64_t t_send; /* when its first byte was written */
	int busy; /* a message is in flight */
};

struct tev {
	uint64_t at;
	int idx;
};

static struct tev *heap;
static int heap_n;

static void
heap_push(uint64_t at, int idx)
{
	int i = heap_n++;
	while (i > 0) {
		int p = (i - 1) / 2;
		if (heap[p].at <= at)
			break;
		heap[i] = heap[p];
		i = p;
	}
	heap[i].at = at;
	heap[i].idx = idx;
}

static struct tev
heap_pop(void)
{
	struct tev top = heap[0], last = heap[--heap_n];
	int i = 0;
	for (;;) {
		int c = 2 * i + 1;
		if (c >= heap_n)
			break;
		if (c + 1 < heap_n && heap[c + 1].at < heap[c].at)
			c++;
		if (last.at <= heap[c].at)
			break;
		heap[i] = heap[c];
		i = c;
	}
	if (heap_n > 0)
		heap[i] = last;
	return top;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t
rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

static int
run_pingpong(int argc, char **argv)
{
	if (argc != 9) {
		fprintf(stderr,
		    "usage: loadgen pingpong HOST PORT CONNS SIZE INTERVAL_MS "
		    "WARMUP_S DURATION_S\n");
		return 2;
	}
	const char *host = argv[2];
	int port = atoi(argv[3]), nconn = atoi(argv[4]);
	size_t size = (size_t)atoi(argv[5]);
	double interval_ms = atof(argv[6]), warmup_s = atof(argv[7]),
	       dur_s = atof(argv[8]);
	if (nconn <= 0 || size == 0 || size > 65536 || interval_ms < 0)
		return 2;
	raise_nofile();
	rnd_state ^= (uint64_t)getpid() * 0x2545f4914f6cdd1dull;

	struct sockaddr_in sa = {
	    .sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "loadgen: bad host %s\n", host);
		return 2;
	}
	struct conn *cs = calloc((size_t)nconn, sizeof *cs);
	heap = calloc((size_t)nconn + 1, sizeof *heap);
	char *msg = malloc(size), *rbuf = malloc(65536);
	if (!cs || !heap || !msg || !rbuf)
		die("malloc");
	for (size_t i = 0; i < size; i++)
		msg[i] = (char)('a' + i % 26);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	int one = 1;
	for (int i = 0; i < nconn; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			die("socket");
		/* Blocking connect: on loopback it completes at the relay's
		 * accept queue; slow relays only delay the start, never the
		 * timings. */
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
			die("connect");
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		set_nonblock(fd);
		cs[i].fd = fd;
		struct epoll_event ev = {
		    .events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
			die("epoll_ctl");
	}

	uint64_t interval_ns = (uint64_t)(interval_ms * 1e6);
	uint64_t t0 = now_ns();
	uint64_t t_meas = t0 + (uint64_t)(warmup_s * 1e9);
	uint64_t t_end = t_meas + (uint64_t)(dur_s * 1e9);
	/* Spread the first messages over one interval. */
	for (int i = 0; i < nconn; i++)
		heap_push(t0 + (interval_ns ? rnd() % interval_ns : 0), i);

	size_t cap = 1 << 20, nsamp = 0;
	uint32_t *samp = malloc(cap * sizeof *samp);
	long errors = 0, completed = 0;
	struct epoll_event evs[1024];

	for (;;) {
		uint64_t now = now_ns();
		if (now >= t_end)
			break;
		/* Send every message that is due. */
		while (heap_n > 0 && heap[0].at <= now) {
			struct tev t = heap_pop();
			struct conn *c = &cs[t.idx];
			if (c->fd < 0 || c->busy)
				continue;
			c->busy = 1;
			c->sent = c->got = 0;
			c->t_send = now_ns();
			ssize_t w = write(c->fd, msg, size);
			if (w < 0 && errno != EAGAIN) {
				errors++;
				close(c->fd);
				c->fd = -1;
				continue;
			}
			c->sent = w > 0 ? (size_t)w : 0;
			if (c->sent < size) {
				struct epoll_event ev = {
				    .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP,
				    .data.u32 = (uint32_t)t.idx};
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
			}
		}
		int timeout_ms = 100;
		if (heap_n > 0) {
			uint64_t now2 = now_ns();
			int64_t d = (int64_t)(heap[0].at - now2);
			timeout_ms = d <= 0 ? 0 : (int)((d + 999999) / 1000000);
			if (timeout_ms > 100)
				timeout_ms = 100;
		}
		int n = epoll_wait(ep, evs, 1024, timeout_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int k = 0; k < n; k++) {
			int i = (int)evs[k].data.u32;
			struct conn *c = &cs[i];
			if (c->fd < 0)
				continue;
			if ((evs[k].events & EPOLLOUT) && c->busy &&
			    c->sent < size) {
				ssize_t w =
				    write(c->fd, msg + c->sent, size - c->sent);
				if (w > 0)
					c->sent += (size_t)w;
				if (c->sent == size) {
					struct epoll_event ev = {
					    .events = EPOLLIN | EPOLLRDHUP,
					    .data.u32 = (uint32_t)i};
					epoll_ctl(
					    ep, EPOLL_CTL_MOD, c->fd, &ev);
				}
			}
			if (!(evs[k].events &
			        (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)))
				continue;
			ssize_t r = read(c->fd, rbuf, 65536);
			if (r <= 0) {
				if (r < 0 &&
				    (errno == EAGAIN || errno == EINTR))
					continue;
				errors++;
				close(c->fd);
				c->fd = -1;
				continue;
			}
			c->got += (size_t)r;
			if (c->busy && c->got >= size) {
				uint64_t t = now_ns();
				c->busy = 0;
				completed++;
				if (c->t_send >= t_meas && t <= t_end) {
					if (nsamp == cap) {
						cap *= 2;
						samp = realloc(
						    samp, cap * sizeof *samp);
						if (!samp)
							die("realloc");
					}
					uint64_t us = (t - c->t_send) / 1000;
					samp[nsamp++] = us > UINT32_MAX
					    ? UINT32_MAX
					    : (uint32_t)us;
				}
				uint64_t pause = interval_ns
				    ? interval_ns / 2 + rnd() % interval_ns
				    : 0;
				heap_push(t + pause, i);
			}
		}
	}
	/* Messages still in flight at the end that have waited past the whole
	 * window are a sign of trouble: count them as errors. */
	uint64_t tend = now_ns();
	long stuck = 0;
	for (int i = 0; i < nconn; i++) {
		if (cs[i].fd >= 0 && cs[i].busy &&
		    tend - cs[i].t_send > 5000000000ull)
			stuck++;
		if (cs[i].fd >= 0)
			close(cs[i].fd);
	}
	errors += stuck;
	qsort(samp, nsamp, sizeof *samp, cmp_u32);
#define PCT(p) (nsamp ? samp[(size_t)((double)(nsamp - 1) * (p))] : 0)
	printf("{\"conns\": %d, \"size\": %zu, \"interval_ms\": %g, "
	       "\"samples\": %zu, "
	       "\"completed\": %ld, \"rate\": %.1f, \"errors\": %ld, "
	       "\"p50_us\": %u, "
	       "\"p90_us\": %u, \"p99_us\": %u, \"p999_us\": %u, \"max_us\": "
	       "%u}\n",
	    nconn, size, interval_ms, nsamp, completed,
	    dur_s > 0 ? (double)nsamp / dur_s : 0.0, errors, PCT(0.50),
	    PCT(0.90), PCT(0.99), PCT(0.999), nsamp ? samp[nsamp - 1] : 0);
	return errors ? 1 : 0;
}

/* ------------------------------------------------- population and storm */

/* Clients of `loadgen population` and `loadgen storm`.  A chat client
 * connects (TLS or plain), sends one message and waits for its echo (the
 * "intro": after it a TLS 1.3 client holds its session ticket), then, in a
 * population, sends a message at exponential intervals and waits for each
 * echo.  A media client (one in media-every) also downloads a file through
 * the media listener every media-period, on a connection of its own. */

enum cl_state {
	CL_NONE, /* not opened yet, or given up */
	CL_CONNECTING,
	CL_HANDSHAKE,
	CL_INTRO, /* first message out, waiting for its echo */
	CL_IDLE,
	CL_MSG, /* a message out, waiting for its echo */
	CL_WAIT, /* storm: waiting to reconnect */
};

struct client {
	int fd;
	SSL *ssl;
	SSL_SESSION *sess; /* owned: the ticket of the first handshake */
	uint8_t state, tls, media, offer, mask;
	uint8_t counted; /* counted as established in this stage */
	uint32_t g; /* global index across the generator processes */
	uint32_t len, sent, got;
	uint64_t t_send, t_conn, t_hs;
	int mdl; /* its media download in progress, or -1 */
};

struct download {
	int fd, owner, hdr_done;
	uint64_t t0, want, got;
	uint32_t mask;
};

/* epoll data: kind in the top bits, index below. */
#define TAG_CLIENT 0ull
#define TAG_MEDIA 1ull
#define TAG_STDIN 2ull
#define TAG(k, i) ((k) << 32 | (uint64_t)(uint32_t)(i))

/* timer kinds, in the index's top bits */
#define TM_MSG 0u
#define TM_MEDIA 1u
#define TM_RECONNECT 2u
#define TM_SHIFT 28

enum fail_kind { F_REFUSED, F_RESET, F_TIMEOUT, F_OTHER, F_N };
static const char *const fail_name[F_N] = {
    "refused", "reset", "timeout", "other"};

struct pop {
	int storm_mode;
	struct sockaddr_in chat, tls, media;
	int nstage, stage;
	int stage_total[8]; /* clients of this process at each stage */
	int nproc, proc;
	int tls_pct, media_every;
	double interval_s, media_period_s;
	int max_inflight;
	uint64_t attempt_ns; /* connect + handshake + intro must fit */
	uint64_t deadline;

	struct client *cl;
	int ncl; /* clients in cl[] (all stages) */
	int opened, established, failed; /* in this stage */
	int ready_sent;

	struct download *dl;
	int ndl;

	SSL_CTX *ctx;
	int ep;
	char rbuf[65536], msg[512];

	/* measurement window (CLOCK_MONOTONIC ns), 0 when none */
	uint64_t win0, win1;
	uint32_t *lat;
	size_t nlat, caplat;
	long sent_in_win, broken, fails[F_N];
	long media_done, media_failed, media_skipped;
	uint64_t media_bytes;
	double *mbps;
	size_t nmbps, capmbps;

	/* storm */
	uint64_t storm_at, storm_t, storm_end;
	int storming, storm_done;
	int reconnected;
	uint32_t *up_us; /* reconnect times after the reset */
	size_t nup, capup;
	uint32_t *hs_full, *hs_res, *hs_plain; /* handshake times, us */
	size_t nfull, capfull, nres, capres, nplain, capplain;
	long offered, resumed;
};

static struct pop P;

static double
rnd01(void)
{
	return (double)(rnd() >> 11) / 9007199254740992.0;
}

static uint64_t
exp_ns(double mean_s)
{
	double u = rnd01();
	if (u < 1e-12)
		u = 1e-12;
	return (uint64_t)(-log(u) * mean_s * 1e9);
}

static void
push_u32(uint32_t **v, size_t *n, size_t *cap, uint32_t x)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 1024;
		*v = realloc(*v, *cap * sizeof **v);
		if (*v == NULL)
			die("realloc");
	}
	(*v)[(*n)++] = x;
}

static void
set_mask(struct client *c, int i, uint8_t want_out)
{
	uint8_t m = want_out ? 2 : 1;
	if (c->mask == m)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
	    .data.u64 = TAG(TAG_CLIENT, i)};
	if (epoll_ctl(
	        P.ep, c->mask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
		die("epoll_ctl");
	c->mask = m;
}

/* Closes c's connection; with rst, by a reset (SO_LINGER 0). */
static void
cl_close(struct client *c, int rst)
{
	if (c->ssl) {
		/* Marked as shut down, so that SSL_free() keeps the session
		 * resumable (no close_notify is sent). */
		SSL_set_shutdown(
		    c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0) {
		if (rst) {
			struct linger lg = {.l_onoff = 1, .l_linger = 0};
			setsockopt(
			    c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		}
		close(c->fd); /* also leaves the epoll set */
		c->fd = -1;
	}
	c->mask = 0;
}

static void cl_open(int i);

/* A connection attempt or an established connection failed. */
static void
cl_fail(int i, enum fail_kind k)
{
	struct client *c = &P.cl[i];
	int was_up = c->state == CL_IDLE || c->state == CL_MSG ||
	    (c->state == CL_INTRO && c->counted);
	cl_close(c, 0);
	P.fails[k]++;
	if (P.storming && !P.storm_done) {
		/* A client retries after a pause, as the app does. */
		c->state = CL_WAIT;
		heap_push(now_ns() + 500000000ull + rnd() % 1000000000ull,
		    (int)(TM_RECONNECT << TM_SHIFT | (uint32_t)i));
		return;
	}
	c->state = CL_NONE;
	if (was_up)
		P.broken++;
	else if (!c->counted)
		P.failed++;
}

static int
cl_write(struct client *c)
{
	while (c->sent < c->len) {
		ssize_t w;
		if (c->ssl) {
			ERR_clear_error();
			int r = SSL_write(
			    c->ssl, P.msg + c->sent, (int)(c->len - c->sent));
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_WRITE)
					return 1;
				if (e == SSL_ERROR_WANT_READ)
					return 0;
				return -1;
			}
			w = r;
		} else {
			w = send(c->fd, P.msg + c->sent, c->len - c->sent,
			    MSG_NOSIGNAL);
			if (w < 0 && (errno == EAGAIN || errno == EINTR))
				return 1;
			if (w < 0)
				return -1;
		}
		c->sent += (uint32_t)w;
	}
	return 0;
}

/* Sends one chat message of 100-400 bytes; the echo ends it. */
static void
cl_send(int i, int state)
{
	struct client *c = &P.cl[i];
	c->state = (uint8_t)state;
	c->len = 100 + (uint32_t)(rnd() % 301);
	c->sent = c->got = 0;
	c->t_send = now_ns();
	if (P.win0 && c->t_send >= P.win0 && c->t_send < P.win1)
		P.sent_in_win++;
	int r = cl_write(c);
	if (r < 0) {
		cl_fail(i, F_RESET);
		return;
	}
	set_mask(c, i, r > 0);
}

static void media_start(int i);

/* The echo of c's message came back whole. */
static void
cl_echoed(int i)
{
	struct client *c = &P.cl[i];
	uint64_t t = now_ns();
	if (c->state == CL_INTRO) {
		if (c->tls && c->sess == NULL)
			c->sess = SSL_get1_session(c->ssl);
		if (P.storming) {
			if (!c->counted) {
				c->counted = 1;
				P.reconnected++;
				push_u32(&P.up_us, &P.nup, &P.capup,
				    (uint32_t)((t - P.storm_t) / 1000));
			}
		} else if (!c->counted) {
			c->counted = 1;
			P.established++;
			if (c->media && P.media_period_s > 0)
				heap_push(t +
				        (uint64_t)(rnd01() * P.media_period_s *
				            1e9),
				    (int)(TM_MEDIA << TM_SHIFT | (uint32_t)i));
		}
	} else if (c->state == CL_MSG) {
		if (P.win0 && c->t_send >= P.win0 && c->t_send < P.win1) {
			uint64_t us = (t - c->t_send) / 1000;
			push_u32(&P.lat, &P.nlat, &P.caplat,
			    us > UINT32_MAX ? UINT32_MAX : (uint32_t)us);
		}
	}
	c->state = CL_IDLE;
	/* At most 150 s apart, as the app pings well within the relays' 200 s
	 * idle timeout (with a mean of 30 s the cut moves it by 0.2 s). */
	if (P.interval_s > 0 && !P.storm_mode) {
		uint64_t d = exp_ns(P.interval_s);
		heap_push(t + (d < 150000000000ull ? d : 150000000000ull),
		    (int)(TM_MSG << TM_SHIFT | (uint32_t)i));
	}
}

/* The TCP connection (and the TLS handshake, if any) is up. */
static void
cl_up(int i)
{
	struct client *c = &P.cl[i];
	uint64_t us = (now_ns() - c->t_conn) / 1000;
	c->t_hs = now_ns();
	if (P.storming) {
		if (!c->tls)
			push_u32(
			    &P.hs_plain, &P.nplain, &P.capplain, (uint32_t)us);
		else if (SSL_session_reused(c->ssl)) {
			P.resumed++;
			push_u32(&P.hs_res, &P.nres, &P.capres, (uint32_t)us);
		} else
			push_u32(
			    &P.hs_full, &P.nfull, &P.capfull, (uint32_t)us);
	}
	cl_send(i, CL_INTRO);
}

static void
cl_handshake(int i)
{
	struct client *c = &P.cl[i];
	ERR_clear_error();
	int r = SSL_connect(c->ssl);
	if (r == 1) {
		cl_up(i);
		return;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ)
		set_mask(c, i, 0);
	else if (e == SSL_ERROR_WANT_WRITE)
		set_mask(c, i, 1);
	else
		cl_fail(i,
		    e == SSL_ERROR_SYSCALL && errno == ECONNREFUSED ? F_REFUSED
		                                                    : F_RESET);
}

/* Opens client i's connection (again, in a storm). */
static void
cl_open(int i)
{
	struct client *c = &P.cl[i];
	const struct sockaddr_in *to = c->tls ? &P.tls : &P.chat;
	int one = 1;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		die("socket");
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->t_conn = now_ns();
	c->state = CL_CONNECTING;
	c->mask = 0;
	if (connect(c->fd, (const struct sockaddr *)to, sizeof *to) < 0 &&
	    errno != EINPROGRESS) {
		cl_fail(i, errno == ECONNREFUSED ? F_REFUSED : F_OTHER);
		return;
	}
	set_mask(c, i, 1);
}

static void
cl_connected(int i)
{
	struct client *c = &P.cl[i];
	int err = 0;
	socklen_t el = sizeof err;
	getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
	if (err) {
		cl_fail(i,
		    err == ECONNREFUSED    ? F_REFUSED
		        : err == ETIMEDOUT ? F_TIMEOUT
		                           : F_RESET);
		return;
	}
	if (!c->tls) {
		cl_up(i);
		return;
	}
	c->ssl = SSL_new(P.ctx);
	if (c->ssl == NULL)
		die("SSL_new");
	SSL_set_fd(c->ssl, c->fd);
	if (c->offer && c->sess) {
		SSL_set_session(c->ssl, c->sess);
		if (P.storming)
			P.offered++;
	}
	c->state = CL_HANDSHAKE;
	cl_handshake(i);
}

static void
cl_readable(int i)
{
	struct client *c = &P.cl[i];
	for (;;) {
		ssize_t r;
		if (c->ssl) {
			ERR_clear_error();
			int n = SSL_read(c->ssl, P.rbuf, sizeof P.rbuf);
			if (n <= 0) {
				int e = SSL_get_error(c->ssl, n);
				if (e == SSL_ERROR_WANT_READ)
					break;
				if (e == SSL_ERROR_WANT_WRITE) {
					set_mask(c, i, 1);
					break;
				}
				cl_fail(i, F_RESET);
				return;
			}
			r = n;
		} else {
			r = recv(c->fd, P.rbuf, sizeof P.rbuf, 0);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				break;
			if (r <= 0) {
				cl_fail(i, F_RESET);
				return;
			}
		}
		c->got += (uint32_t)r;
	}
	if ((c->state == CL_INTRO || c->state == CL_MSG) && c->sent == c->len &&
	    c->got >= c->len)
		cl_echoed(i);
}

static void
cl_event(int i, uint32_t ev)
{
	struct client *c = &P.cl[i];
	if (c->fd < 0)
		return;
	switch (c->state) {
	case CL_CONNECTING:
		if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			cl_connected(i);
		return;
	case CL_HANDSHAKE:
		cl_handshake(i);
		return;
	default:
		break;
	}
	if ((ev & EPOLLOUT) && c->sent < c->len) {
		int r = cl_write(c);
		if (r < 0) {
			cl_fail(i, F_RESET);
			return;
		}
		set_mask(c, i, r > 0);
	} else if ((ev & EPOLLOUT) && c->mask == 2) {
		set_mask(c, i, 0);
	}
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
		cl_readable(i);
}

/* ---- media downloads: 'D' and a 64-bit size to `tlsclient serve` */

static void
dl_end(int k, int ok)
{
	struct download *d = &P.dl[k];
	uint64_t t = now_ns();
	close(d->fd);
	d->fd = -1;
	P.cl[d->owner].mdl = -1;
	if (!ok) {
		P.media_failed++;
		return;
	}
	if (P.win0 && d->t0 >= P.win0 && t <= P.win1) {
		P.media_done++;
		P.media_bytes += d->got;
		if (P.nmbps == P.capmbps) {
			P.capmbps = P.capmbps ? 2 * P.capmbps : 256;
			P.mbps = realloc(P.mbps, P.capmbps * sizeof *P.mbps);
			if (P.mbps == NULL)
				die("realloc");
		}
		P.mbps[P.nmbps++] =
		    (double)d->got * 8 / ((double)(t - d->t0) / 1e3);
	}
}

static void
media_start(int i)
{
	struct client *c = &P.cl[i];
	int k, one = 1;
	heap_push(now_ns() + (uint64_t)(P.media_period_s * 1e9),
	    (int)(TM_MEDIA << TM_SHIFT | (uint32_t)i));
	if (c->mdl >= 0) { /* the last one is still running */
		P.media_skipped++;
		return;
	}
	for (k = 0; k < P.ndl && P.dl[k].fd >= 0; k++)
		;
	if (k == P.ndl) {
		P.dl = realloc(P.dl, (size_t)++P.ndl * sizeof *P.dl);
		if (P.dl == NULL)
			die("realloc");
	}
	struct download *d = &P.dl[k];
	memset(d, 0, sizeof *d);
	d->owner = i;
	d->t0 = now_ns();
	d->want = 200 * 1024 + rnd() % (2 * 1024 * 1024 - 200 * 1024 + 1);
	d->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (d->fd < 0)
		die("socket");
	setsockopt(d->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->mdl = k;
	if (connect(d->fd, (struct sockaddr *)&P.media, sizeof P.media) < 0 &&
	    errno != EINPROGRESS) {
		dl_end(k, 0);
		return;
	}
	struct epoll_event ev = {
	    .events = EPOLLOUT | EPOLLIN, .data.u64 = TAG(TAG_MEDIA, k)};
	if (epoll_ctl(P.ep, EPOLL_CTL_ADD, d->fd, &ev) < 0)
		die("epoll_ctl");
}

static void
dl_event(int k, uint32_t ev)
{
	struct download *d = &P.dl[k];
	if (d->fd < 0)
		return;
	if (!d->hdr_done && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
		unsigned char h[9];
		h[0] = 'D';
		for (int b = 0; b < 8; b++)
			h[8 - b] = (unsigned char)(d->want >> (8 * b));
		if (send(d->fd, h, sizeof h, MSG_NOSIGNAL) != sizeof h) {
			dl_end(k, 0);
			return;
		}
		d->hdr_done = 1;
		struct epoll_event e2 = {
		    .events = EPOLLIN, .data.u64 = TAG(TAG_MEDIA, k)};
		epoll_ctl(P.ep, EPOLL_CTL_MOD, d->fd, &e2);
		return;
	}
	for (;;) {
		ssize_t r = recv(d->fd, P.rbuf, sizeof P.rbuf, 0);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (r <= 0) {
			dl_end(k, 0);
			return;
		}
		d->got += (uint64_t)r;
		if (d->got >= d->want) {
			dl_end(k, 1);
			return;
		}
	}
}

/* ---- stages, windows, the storm */

static int
cmp_u32p(const void *a, const void *b)
{
	return cmp_u32(a, b);
}

static void
print_u32s(const char *name, uint32_t *v, size_t n)
{
	printf("\"%s\": [", name);
	for (size_t i = 0; i < n; i++)
		printf(i ? ",%u" : "%u", v[i]);
	printf("]");
}

/* Clients of this process among the first `total` of all processes. */
static int
share(int total)
{
	return total > P.proc ? (total - P.proc + P.nproc - 1) / P.nproc : 0;
}

static void
report_window(void)
{
	long lost = 0;
	for (int i = 0; i < P.ncl; i++) {
		struct client *c = &P.cl[i];
		if (c->state == CL_MSG && c->t_send >= P.win0 &&
		    c->t_send < P.win1)
			lost++;
	}
	qsort(P.lat, P.nlat, sizeof *P.lat, cmp_u32p);
	printf("{\"stage\": %d, \"clients\": %d, \"sent\": %ld, \"lost\": %ld, "
	       "\"broken\": %ld, \"failed\": %d, \"media_done\": %ld, "
	       "\"media_failed\": %ld, \"media_skipped\": %ld, "
	       "\"media_bytes\": %llu, \"media_mbps\": [",
	    P.stage, P.established, P.sent_in_win, lost, P.broken, P.failed,
	    P.media_done, P.media_failed, P.media_skipped,
	    (unsigned long long)P.media_bytes);
	for (size_t i = 0; i < P.nmbps; i++)
		printf(i ? ",%.1f" : "%.1f", P.mbps[i]);
	printf("], ");
	print_u32s("lat_us", P.lat, P.nlat);
	printf("}\n");
	fflush(stdout);
	P.nlat = P.nmbps = 0;
	P.sent_in_win = P.media_done = 0;
	P.media_bytes = 0;
	P.win0 = P.win1 = 0;
}

static void
report_storm(void)
{
	qsort(P.up_us, P.nup, sizeof *P.up_us, cmp_u32p);
	printf("{\"storm\": 1, \"clients\": %d, \"reconnected\": %d, "
	       "\"offered\": %ld, \"resumed\": %ld",
	    P.established, P.reconnected, P.offered, P.resumed);
	for (int k = 0; k < F_N; k++)
		printf(", \"%s\": %ld", fail_name[k], P.fails[k]);
	printf(", ");
	print_u32s("up_us", P.up_us, P.nup);
	printf(", ");
	print_u32s("hs_full_us", P.hs_full, P.nfull);
	printf(", ");
	print_u32s("hs_resumed_us", P.hs_res, P.nres);
	printf(", ");
	print_u32s("hs_plain_us", P.hs_plain, P.nplain);
	printf("}\n");
	fflush(stdout);
}

/* Every client resets its connection at once and reconnects within 1 s. */
static void
storm_begin(void)
{
	P.storming = 1;
	P.storm_t = now_ns();
	P.reconnected = 0;
	memset(P.fails, 0, sizeof P.fails);
	for (int i = 0; i < P.ncl; i++) {
		struct client *c = &P.cl[i];
		if (c->state == CL_NONE)
			continue;
		cl_close(c, 1);
		c->counted = 0;
		c->state = CL_WAIT;
		heap_push(P.storm_t + rnd() % 1000000000ull,
		    (int)(TM_RECONNECT << TM_SHIFT | (uint32_t)i));
	}
}

static void
on_timer(struct tev t)
{
	unsigned kind = (unsigned)t.idx >> TM_SHIFT;
	int i = t.idx & ((1 << TM_SHIFT) - 1);
	struct client *c = &P.cl[i];
	if (kind == TM_MSG && c->state == CL_IDLE)
		cl_send(i, CL_MSG);
	else if (kind == TM_MEDIA && c->state != CL_NONE && !P.storm_mode)
		media_start(i);
	else if (kind == TM_RECONNECT && c->state == CL_WAIT && !P.storm_done)
		cl_open(i);
}

/* One command per line on stdin: "window T0 T1" (CLOCK_MONOTONIC ns: the
 * messages sent in [T0, T1) are measured, then the next stage begins),
 * "storm T" (reset everything at T), "quit". */
static int
on_stdin(void)
{
	static char line[256];
	static size_t have;
	ssize_t r = read(0, line + have, sizeof line - 1 - have);
	if (r <= 0)
		return -1;
	have += (size_t)r;
	char *nl;
	while ((nl = memchr(line, '\n', have)) != NULL) {
		*nl = 0;
		unsigned long long a, b;
		if (sscanf(line, "window %llu %llu", &a, &b) == 2) {
			P.win0 = a;
			P.win1 = b;
		} else if (sscanf(line, "storm %llu", &a) == 1) {
			P.storm_at = a;
		} else if (strcmp(line, "quit") == 0) {
			return -1;
		}
		size_t used = (size_t)(nl + 1 - line);
		memmove(line, nl + 1, have - used);
		have -= used;
	}
	if (have == sizeof line - 1)
		have = 0;
	return 0;
}

static int
parse_addr(struct sockaddr_in *sa, const char *port)
{
	memset(sa, 0, sizeof *sa);
	sa->sin_family = AF_INET;
	sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa->sin_port = htons((uint16_t)atoi(port));
	return 0;
}

static uint32_t
mix32(uint32_t x)
{
	x ^= x >> 16;
	x *= 0x7feb352d;
	x ^= x >> 15;
	x *= 0x846ca68b;
	x ^= x >> 16;
	return x;
}

static const char *
opt(int argc, char **argv, const char *key, const char *dflt)
{
	size_t k = strlen(key);
	for (int i = 2; i < argc; i++)
		if (strncmp(argv[i], key, k) == 0 && argv[i][k] == '=')
			return argv[i] + k + 1;
	return dflt;
}

static int
run_population(int argc, char **argv, int storm)
{
	const char *stages = opt(argc, argv, "stages", NULL);
	if (stages == NULL || opt(argc, argv, "chat", NULL) == NULL) {
		fprintf(stderr,
		    "usage: loadgen population|storm chat=PORT "
		    "[tls=PORT] [media=PORT] stages=N[,N...] "
		    "[key=value...]: see the top of loadgen.c\n");
		return 2;
	}
	P.storm_mode = storm;
	parse_addr(&P.chat, opt(argc, argv, "chat", "0"));
	parse_addr(&P.tls, opt(argc, argv, "tls", "0"));
	parse_addr(&P.media, opt(argc, argv, "media", "0"));
	P.nproc = atoi(opt(argc, argv, "procs", "1"));
	P.proc = atoi(opt(argc, argv, "proc", "0"));
	P.tls_pct = atoi(opt(argc, argv, "tls-pct", "70"));
	P.interval_s = atof(opt(argc, argv, "interval", "30"));
	P.media_every = atoi(opt(argc, argv, "media-every", "50"));
	P.media_period_s = atof(opt(argc, argv, "media-period", "60"));
	P.max_inflight = atoi(opt(argc, argv, "inflight", "100"));
	P.attempt_ns =
	    (uint64_t)(atof(opt(argc, argv, "attempt-timeout", "15")) * 1e9);
	double deadline_s = atof(opt(argc, argv, "deadline", "600"));
	double storm_s = atof(opt(argc, argv, "storm-timeout", "60"));
	rnd_state ^= (uint64_t)atoll(opt(argc, argv, "seed", "1")) *
	    0x2545f4914f6cdd1dull;
	if (P.tls.sin_port == 0)
		P.tls_pct = 0;
	if (P.media.sin_port == 0 || storm)
		P.media_every = 0;
	if (P.nproc < 1 || P.proc < 0 || P.proc >= P.nproc || P.tls_pct < 0 ||
	    P.tls_pct > 100 || P.max_inflight < 1 || deadline_s <= 0 ||
	    deadline_s > 3600) {
		fprintf(stderr, "loadgen: bad option\n");
		return 2;
	}
	for (const char *s = stages; *s && P.nstage < 8; P.nstage++) {
		P.stage_total[P.nstage] = atoi(s);
		if (P.stage_total[P.nstage] <= 0 ||
		    P.stage_total[P.nstage] > 100000 ||
		    (P.nstage &&
		        P.stage_total[P.nstage] <
		            P.stage_total[P.nstage - 1])) {
			fprintf(stderr, "loadgen: bad stages %s\n", stages);
			return 2;
		}
		s = strchr(s, ',');
		if (s == NULL)
			break;
		s++;
	}
	P.nstage++;
	P.ncl = share(P.stage_total[P.nstage - 1]);
	raise_nofile();
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if ((rlim_t)P.ncl + 1000 > rl.rlim_cur) {
		fprintf(stderr, "loadgen: %d clients need more than %llu fds\n",
		    P.ncl, (unsigned long long)rl.rlim_cur);
		return 2;
	}
	uint64_t t_start = now_ns();
	P.deadline = t_start + (uint64_t)(deadline_s * 1e9);
	P.cl = calloc((size_t)P.ncl, sizeof *P.cl);
	heap = calloc((size_t)P.ncl * 3 + 16, sizeof *heap);
	if (P.cl == NULL || heap == NULL)
		die("calloc");
	for (int i = 0; i < P.ncl; i++) {
		struct client *c = &P.cl[i];
		c->fd = -1;
		c->mdl = -1;
		c->g = (uint32_t)(P.proc + i * P.nproc);
		c->tls = (int)(mix32(c->g) % 100) < P.tls_pct;
		c->media =
		    P.media_every > 0 && c->g % (uint32_t)P.media_every == 0;
		c->offer = c->g % 2 == 0; /* storm: half offer their ticket */
	}
	for (size_t i = 0; i < sizeof P.msg; i++)
		P.msg[i] = (char)('a' + i % 26);
	P.ctx = SSL_CTX_new(TLS_client_method());
	if (P.ctx == NULL)
		die("SSL_CTX_new");
	SSL_CTX_set_verify(P.ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_session_cache_mode(P.ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(P.ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	P.ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event sev = {
	    .events = EPOLLIN, .data.u64 = TAG(TAG_STDIN, 0)};
	if (P.ep < 0 || epoll_ctl(P.ep, EPOLL_CTL_ADD, 0, &sev) < 0)
		die("epoll stdin");

	struct epoll_event evs[1024];
	uint64_t next_scan = 0;
	int target = share(P.stage_total[0]);
	for (;;) {
		uint64_t now = now_ns();
		if (now >= P.deadline) {
			fprintf(stderr,
			    "loadgen %s: deadline of %.0f s reached (stage %d: "
			    "%d of %d up, %d failed)\n",
			    argv[1], deadline_s, P.stage, P.established, target,
			    P.failed);
			return 3;
		}
		while (heap_n > 0 && heap[0].at <= now)
			on_timer(heap_pop());
		/* Ramp up, a bounded number of attempts at a time. */
		while (!P.storming && P.opened < target &&
		    P.opened - P.established - P.failed < P.max_inflight)
			cl_open(P.opened++);
		if (!P.ready_sent && !P.storming &&
		    P.established + P.failed >= target) {
			printf("ready %d %d %d\n", P.stage, P.established,
			    P.failed);
			fflush(stdout);
			P.ready_sent = 1;
		}
		if (P.storm_at && !P.storming && now >= P.storm_at)
			storm_begin();
		if (P.storming && !P.storm_done &&
		    (P.reconnected >= P.established ||
		        now >= P.storm_t + (uint64_t)(storm_s * 1e9))) {
			P.storm_done = 1;
			report_storm();
		}
		if (now >= next_scan) {
			next_scan = now + 50000000ull;
			int pending = 0;
			for (int i = 0; i < P.opened; i++) {
				struct client *c = &P.cl[i];
				int attempt = c->state == CL_CONNECTING ||
				    c->state == CL_HANDSHAKE ||
				    (c->state == CL_INTRO && !c->counted);
				if (attempt && now > c->t_conn + P.attempt_ns &&
				    !P.storm_done)
					cl_fail(i, F_TIMEOUT);
				else if (P.win1 && c->state == CL_MSG &&
				    c->t_send >= P.win0 && c->t_send < P.win1)
					pending++;
			}
			if (P.win1 && now >= P.win1 &&
			    (pending == 0 || now >= P.win1 + 5000000000ull)) {
				report_window();
				if (P.stage + 1 < P.nstage) {
					target =
					    share(P.stage_total[++P.stage]);
					P.ready_sent = 0;
				}
			}
		}
		int timeout_ms = 20;
		if (heap_n > 0) {
			int64_t d = (int64_t)(heap[0].at - now_ns());
			if (d < 20000000)
				timeout_ms = d <= 0 ? 0 : (int)(d / 1000000);
		}
		int n = epoll_wait(P.ep, evs, 1024, timeout_ms);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		if (stop)
			break;
		for (int k = 0; k < n; k++) {
			uint64_t tag = evs[k].data.u64;
			int i = (int)(uint32_t)tag;
			switch (tag >> 32) {
			case TAG_CLIENT:
				cl_event(i, evs[k].events);
				break;
			case TAG_MEDIA:
				dl_event(i, evs[k].events);
				break;
			default:
				if (on_stdin() < 0)
					goto out;
			}
		}
	}
out:
	for (int i = 0; i < P.ncl; i++) {
		cl_close(&P.cl[i], 0);
		if (P.cl[i].sess)
			SSL_SESSION_free(P.cl[i].sess);
	}
	for (int k = 0; k < P.ndl; k++)
		if (P.dl[k].fd >= 0)
			close(P.dl[k].fd);
	SSL_CTX_free(P.ctx);
	return 0;
}

int
main(int argc, char **argv)
{
	struct sigaction sa = {.sa_handler = on_term};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 2 && strcmp(argv[1], "echo") == 0)
		return run_echo(argc >= 3 ? atoi(argv[2]) : 0);
	if (argc >= 2 && strcmp(argv[1], "pingpong") == 0)
		return run_pingpong(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "population") == 0)
		return run_population(argc, argv, 0);
	if (argc >= 2 && strcmp(argv[1], "storm") == 0)
		return run_population(argc, argv, 1);
	fprintf(stderr,
	    "usage: loadgen echo [PORT] | loadgen pingpong HOST PORT CONNS "
	    "SIZE "
	    "INTERVAL_MS WARMUP_S DURATION_S | loadgen population|storm "
	    "chat=PORT stages=N... [key=value...]\n");
	return 2;
}
