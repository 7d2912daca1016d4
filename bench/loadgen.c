/* loadgen: the two C helpers of `make bench` (built by bench/run.sh).
 *
 *   loadgen echo
 *       Binds 127.0.0.1:0, prints the port on stdout, then echoes every byte
 *       back on every connection (single thread, epoll) until SIGTERM.
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
 * Exit status 0 on success, 1 on setup failure (or when a connection
 * breaks: the count is in "errors" and the status is 1).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
run_echo(void)
{
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (ls < 0)
		die("socket");
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sa = {.sin_family = AF_INET};
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

int
main(int argc, char **argv)
{
	struct sigaction sa = {.sa_handler = on_term};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 2 && strcmp(argv[1], "echo") == 0)
		return run_echo();
	if (argc >= 2 && strcmp(argv[1], "pingpong") == 0)
		return run_pingpong(argc, argv);
	fprintf(stderr,
	    "usage: loadgen echo | loadgen pingpong HOST PORT CONNS SIZE "
	    "INTERVAL_MS WARMUP_S DURATION_S\n");
	return 2;
}
