/*
 * Unit tests for relay.c: the connection state machine driven by scripted
 * events, with its system calls on fake sockets (struct relay_sys), a real
 * loop for timers and deferred tasks, and a generation built from a config
 * text (its listening sockets are bound but never used).  Each test checks
 * the actions: FIN or RST toward each peer, what was dialled, what each
 * peer received, servers marked down, counters.  TLS is left to the
 * integration tests (and the copy loop's close_notify to test_copy.c).
 */
#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "config.h"
#include "gen.h"
#include "harness.h"
#include "loop.h"
#include "relay.h"
#include "upstream.h"

#define FD0 1000
#define NFD 32
#define QBUF (1 << 20)

/* A fake socket: what its peer sent us, what we sent it, how it ended. */
struct ffd {
	bool used, upstream;
	uint8_t *in; /* from the peer */
	size_t inlen, inoff;
	bool peer_fin, peer_rst;
	uint8_t *out; /* to the peer */
	size_t outlen, room;
	int outq; /* unacknowledged bytes */
	uint64_t acked_at; /* loop_clock_ms() of the peer's last ACK */
	bool shut_wr, closed, aborted;
	unsigned buffers; /* socket-buffers set on it; 0: none */
	bool connected_after_buffers; /* connect() came after buffers() */
	struct loop_io *io; /* watched */
	struct sockaddr_storage peer;
};

static struct ffd F[NFD];
static int connect_errno[8], nconnect, iconnect; /* scripted results */
static struct loop *L;
static struct relay_counters cnt;
static int gone;

static struct ffd *
fd_of(int fd)
{
	if (fd < FD0 || fd >= FD0 + NFD)
		abort();
	return &F[fd - FD0];
}

static int
fake_new(bool upstream)
{
	for (int i = 0; i < NFD; i++) {
		if (!F[i].used) {
			F[i] = (struct ffd){.used = true, .upstream = upstream};
			F[i].in = calloc(1, QBUF);
			F[i].out = calloc(1, QBUF);
			F[i].room = QBUF;
			return FD0 + i;
		}
	}
	abort();
}

static void
fakes_reset(void)
{
	for (int i = 0; i < NFD; i++) {
		free(F[i].in);
		free(F[i].out);
		F[i] = (struct ffd){0};
	}
	nconnect = iconnect = 0;
}

static int
f_socket(int family)
{
	(void)family;
	return fake_new(true);
}

static void
f_buffers(int fd, unsigned bytes)
{
	fd_of(fd)->buffers = bytes;
}

static int
f_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	int e = iconnect < nconnect ? connect_errno[iconnect] : EINPROGRESS;

	(void)len;
	memcpy(&fd_of(fd)->peer, sa, sizeof(struct sockaddr_in));
	fd_of(fd)->connected_after_buffers = fd_of(fd)->buffers != 0;
	iconnect++;
	if (e == 0)
		return 0;
	errno = e;
	return -1;
}

static ssize_t
f_recv(int fd, void *buf, size_t len, int flags)
{
	struct ffd *f = fd_of(fd);
	size_t n = f->inlen - f->inoff;

	if (f->peer_rst) {
		errno = ECONNRESET;
		return -1;
	}
	if (n == 0) {
		if (f->peer_fin)
			return 0;
		errno = EAGAIN;
		return -1;
	}
	if (n > len)
		n = len;
	if (buf != NULL && !(flags & MSG_TRUNC))
		memcpy(buf, f->in + f->inoff, n);
	if (!(flags & MSG_PEEK))
		f->inoff += n;
	return (ssize_t)n;
}

static ssize_t
f_send(int fd, const void *buf, size_t len, int flags)
{
	struct ffd *f = fd_of(fd);
	size_t n = len < f->room ? len : f->room;

	(void)flags;
	if (f->peer_rst) {
		errno = EPIPE;
		return -1;
	}
	if (n == 0) {
		errno = EAGAIN;
		return -1;
	}
	memcpy(f->out + f->outlen, buf, n);
	f->outlen += n;
	f->room -= n;
	return (ssize_t)n;
}

static ssize_t
f_splice_in(int fd, int pipe_wr, size_t len)
{
	struct ffd *f = fd_of(fd);
	size_t n = f->inlen - f->inoff;
	ssize_t w;

	if (f->peer_rst) {
		errno = ECONNRESET;
		return -1;
	}
	if (n == 0) {
		if (f->peer_fin)
			return 0;
		errno = EAGAIN;
		return -1;
	}
	w = write(pipe_wr, f->in + f->inoff, n < len ? n : len);
	if (w > 0)
		f->inoff += (size_t)w;
	return w;
}

static ssize_t
f_splice_out(int pipe_rd, int fd, size_t len)
{
	struct ffd *f = fd_of(fd);
	size_t n = len < f->room ? len : f->room;
	ssize_t r;

	if (n == 0) {
		errno = EAGAIN;
		return -1;
	}
	r = read(pipe_rd, f->out + f->outlen, n);
	if (r > 0) {
		f->outlen += (size_t)r;
		f->room -= (size_t)r;
	}
	return r;
}

static int
f_shutdown_wr(int fd)
{
	fd_of(fd)->shut_wr = true;
	return 0;
}

static void
f_close(int fd, bool abort)
{
	struct ffd *f = fd_of(fd);

	f->closed = true;
	f->aborted = abort;
	f->io = NULL;
}

static int
f_outq(int fd, int *bytes)
{
	*bytes = fd_of(fd)->outq;
	return 0;
}

static int
f_last_ack(int fd, uint32_t *ms_ago)
{
	*ms_ago = (uint32_t)(loop_clock_ms() - fd_of(fd)->acked_at);
	return 0;
}

static int
f_inq(int fd, int *bytes)
{
	*bytes = (int)(fd_of(fd)->inlen - fd_of(fd)->inoff);
	return 0;
}

static int
f_sock_error(int fd)
{
	(void)fd;
	return ECONNREFUSED;
}

static void
addr4(struct sockaddr_storage *ss, const char *ip, int port)
{
	struct sockaddr_in *in = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof(*ss));
	in->sin_family = AF_INET;
	in->sin_port = htons((uint16_t)port);
	inet_pton(AF_INET, ip, &in->sin_addr);
}

static int
f_peername(int fd, struct sockaddr_storage *ss)
{
	*ss = fd_of(fd)->peer;
	return 0;
}

static int
f_sockname(int fd, struct sockaddr_storage *ss)
{
	(void)fd;
	addr4(ss, "192.0.2.1", 443);
	return 0;
}

static int
f_watch(struct loop *loop, struct loop_io *io)
{
	(void)loop;
	fd_of(io->fd)->io = io;
	return 0;
}

static const struct relay_sys fake_sys = {
    .socket = f_socket,
    .buffers = f_buffers,
    .connect = f_connect,
    .recv = f_recv,
    .send = f_send,
    .splice_in = f_splice_in,
    .splice_out = f_splice_out,
    .shutdown_wr = f_shutdown_wr,
    .close = f_close,
    .outq = f_outq,
    .last_ack = f_last_ack,
    .inq = f_inq,
    .sock_error = f_sock_error,
    .peername = f_peername,
    .sockname = f_sockname,
    .watch = f_watch,
};

/* Driving. */

static void
on_gone(void *arg)
{
	(void)arg;
	gone++;
}

static void
stop_cb(struct loop_timer *t)
{
	(void)t;
	loop_stop(L);
}

/* Runs the loop (timers, deferred tasks) for ms milliseconds. */
static void
spin(unsigned ms)
{
	struct loop_timer t;

	loop_timer_init(&t, stop_cb);
	loop_timer_set(L, &t, loop_clock_ms() + ms);
	loop_run(L);
	loop_timer_del(L, &t);
}

/* An event on a fake socket, as epoll would report it. */
static void
fire(int fd, uint32_t events)
{
	struct ffd *f = fd_of(fd);

	if (f->io != NULL)
		f->io->cb(f->io, events);
}

static void
peer_sends(int fd, const char *s)
{
	struct ffd *f = fd_of(fd);

	memcpy(f->in + f->inlen, s, strlen(s));
	f->inlen += strlen(s);
	fire(fd, EPOLLIN);
}

static void
peer_sends_n(int fd, const void *buf, size_t n)
{
	struct ffd *f = fd_of(fd);

	memcpy(f->in + f->inlen, buf, n);
	f->inlen += n;
	fire(fd, EPOLLIN);
}

static void
peer_fins(int fd)
{
	fd_of(fd)->peer_fin = true;
	fire(fd, EPOLLIN | EPOLLRDHUP);
}

static bool
got(int fd, const char *s)
{
	struct ffd *f = fd_of(fd);

	return f->outlen == strlen(s) && memcmp(f->out, s, f->outlen) == 0;
}

/* The upstream socket of the n-th dial (0-based). */
static int
dialled(int n)
{
	for (int i = 0, k = 0; i < NFD; i++)
		if (F[i].used && F[i].upstream && k++ == n)
			return FD0 + i;
	return -1;
}

static int
ndialled(void)
{
	int k = 0;

	for (int i = 0; i < NFD; i++)
		k += F[i].used && F[i].upstream;
	return k;
}

struct rig {
	struct gen *g;
	struct relay_ctx *rc;
};

#define BASE_CONF                                                              \
	"[global]\nworkers = 1\nmaxconn = %s\n"                                \
	"[timeouts]\nconnect = 100ms\nclient = %s\nserver = %s\n"              \
	"client-fin = %s\nserver-fin = %s\nhandshake = 100ms\n"                \
	"[upstream up]\nserver = 192.0.2.7:5222\nserver = 192.0.2.8:5222\n"    \
	"send-proxy = %s\ncheck-interval = 1h\n"                               \
	"[listen l]\nbind = 127.0.0.1:0\nupstream = up\n%s"

static struct rig
rig_new2(const char *maxconn, const char *client, const char *server,
    const char *fin, const char *send_proxy, const char *listen_extra)
{
	char text[2048], err[256];
	struct rig r;
	struct cfg *cfg;

	snprintf(text, sizeof(text), BASE_CONF, maxconn, client, server, fin,
	    fin, send_proxy, listen_extra);
	cfg = cfg_load_string(text, "test", err, sizeof(err));
	if (cfg == NULL) {
		fprintf(stderr, "config: %s\n", err);
		abort();
	}
	r.g = gen_new(cfg, NULL, 1, err, sizeof(err));
	if (r.g == NULL) {
		fprintf(stderr, "gen: %s\n", err);
		abort();
	}
	upstream_resolve(r.g->ups[0], false);
	memset(&cnt, 0, sizeof(cnt));
	gone = 0;
	r.rc = relay_ctx_new(L, 0, &cnt, &fake_sys, on_gone, NULL);
	return r;
}

static struct rig
rig_new(const char *maxconn, const char *idle, const char *fin,
    const char *send_proxy, const char *listen_extra)
{
	return rig_new2(maxconn, idle, idle, fin, send_proxy, listen_extra);
}

static void
rig_free(struct rig *r)
{
	relay_ctx_free(r->rc);
	spin(1); /* the freeing tasks */
	gen_unref(r->g);
	fakes_reset();
}

static uint64_t
closed(struct rig *r, enum relay_result res)
{
	return RELAY_CNT_GET(&r->g->listeners[0].state->cnt[0], closed[res]);
}

/* A client accepted on the listener; returns its fake fd. */
static int
accept_client(struct rig *r, const char *ip)
{
	int fd = fake_new(false);

	addr4(&fd_of(fd)->peer, ip, 40000);
	relay_accept(r->rc, r->g, &r->g->listeners[0], fd);
	return fd;
}

/* Accepted, dialled, connected: returns the client; *up the upstream. */
static int
streaming(struct rig *r, int *up)
{
	int c = accept_client(r, "198.51.100.5");

	*up = dialled(0);
	fire(*up, EPOLLOUT);
	return c;
}

/* The tests: DESIGN.md's table of endings, row by row, and the rest. */

static void
test_both_finished_fin(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(c, "hello");
	CHECK(got(up, "hello"));
	peer_sends(up, "world");
	CHECK(got(c, "world"));
	peer_fins(c);
	CHECK(fd_of(up)->shut_wr && !fd_of(c)->shut_wr);
	peer_fins(up);
	CHECK(fd_of(c)->closed && !fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && !fd_of(up)->aborted);
	CHECK_INT(closed(&r, RELAY_RES_RELAYED), 1);
	CHECK_INT(RELAY_CNT_GET(&r.g->listeners[0].state->cnt[0], bytes_in), 5);
	CHECK_INT(
	    RELAY_CNT_GET(&r.g->listeners[0].state->cnt[0], bytes_out), 5);
	CHECK_INT(gone, 1);
	rig_free(&r);
}

static void
test_idle_timeout_nothing_held_fin(void)
{
	struct rig r = rig_new("100", "50ms", "30s", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(c, "x");
	spin(150);
	CHECK(fd_of(c)->closed && !fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && !fd_of(up)->aborted);
	CHECK_INT(closed(&r, RELAY_RES_TIMEOUT), 1);
	rig_free(&r);
}

static void
test_idle_timeout_unacked_bytes_rst(void)
{
	struct rig r = rig_new("100", "50ms", "30s", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(up, "answer");
	fd_of(c)->outq = 6; /* the client never acknowledged it */
	spin(150);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && fd_of(up)->aborted);
	rig_free(&r);
}

static void
test_backpressure_is_not_idleness(void)
{
	/* client 50ms, server 300ms; the upstream takes nothing. */
	struct rig r = rig_new2("100", "50ms", "300ms", "30s", "none", "");
	int up, c = streaming(&r, &up);

	fd_of(up)->room = 0;
	peer_sends(c, "held");
	CHECK_INT(fd_of(up)->outlen, 0);
	/* The client's bytes wait: it is not idle past its 50 ms. */
	spin(200);
	CHECK(!fd_of(c)->closed && !fd_of(up)->closed);
	/* The upstream's own timeout measures the stall: a cut, RST. */
	spin(250);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && fd_of(up)->aborted);
	CHECK_INT(closed(&r, RELAY_RES_TIMEOUT), 1);
	rig_free(&r);
}

static void
test_half_closed_timeout_rst(void)
{
	/* The client sends FIN; the upstream stays silent past server-fin. */
	struct rig r = rig_new("100", "30s", "50ms", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(c, "GET");
	peer_fins(c);
	CHECK(fd_of(up)->shut_wr);
	spin(150);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && fd_of(up)->aborted);
	rig_free(&r);
}

/* The peer acknowledged our bytes down to q unacknowledged, now. */
static void
acked(int fd, int q)
{
	fd_of(fd)->outq = q;
	fd_of(fd)->acked_at = loop_clock_ms();
}

/*
 * No TCP_NOTSENT_LOWAT: the answer waits in the kernel, and the relay sees
 * no progress of its own.  A queue that shrinks by 64 KiB between two
 * looks is a reader taking bytes, not an idle one.
 */
static void
test_queue_taken_is_not_idleness(void)
{
	/* client 100ms; the kernel holds 1 MiB for the client. */
	struct rig r = rig_new2("100", "100ms", "30s", "30s", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(up, "answer");
	acked(c, 1 << 20);
	spin(60); /* looked at a quarter of the way */
	acked(c, (1 << 20) - (64 << 10)); /* the client takes some at 60 */
	spin(80); /* 140: busy at 60, not idle since its last byte */
	CHECK(!fd_of(c)->closed && !fd_of(up)->closed);
	/* It stops taking them: its own timeout cuts, with RST (at 160). */
	spin(60);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && fd_of(up)->aborted);
	CHECK_INT(closed(&r, RELAY_RES_TIMEOUT), 1);
	rig_free(&r);
}

/* ... and less than 64 KiB taken in a whole period is idleness. */
static void
test_queue_barely_taken_is_idleness(void)
{
	struct rig r = rig_new2("100", "100ms", "30s", "30s", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(up, "answer");
	acked(c, 1 << 20);
	spin(60);
	acked(c, (1 << 20) - (16 << 10));
	spin(120);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	rig_free(&r);
}

/* Bytes queued beyond 128 KiB in a socket are held, like the relay's. */
static void
test_queued_bytes_excuse_their_source(void)
{
	/* client 50ms, server 300ms; 1 MiB waits in the upstream's socket. */
	struct rig r = rig_new2("100", "50ms", "300ms", "30s", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(c, "held");
	CHECK(got(up, "held"));
	fd_of(up)->outq = 1 << 20;
	spin(200);
	CHECK(!fd_of(c)->closed && !fd_of(up)->closed);
	/* The upstream's own timeout measures the stall: a cut, RST. */
	spin(300);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && fd_of(up)->aborted);
	rig_free(&r);
}

/* Our FIN behind more than 128 KiB: the full timeout, not the -fin one. */
static void
test_fin_behind_queued_bytes_full_timeout(void)
{
	/* server-fin 50ms, server 300ms; our FIN waits behind 1 MiB. */
	struct rig r = rig_new2("100", "30s", "300ms", "50ms", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(c, "GET");
	fd_of(up)->outq = 1 << 20;
	peer_fins(c);
	CHECK(fd_of(up)->shut_wr);
	spin(150);
	CHECK(!fd_of(c)->closed && !fd_of(up)->closed);
	spin(300);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && fd_of(up)->aborted);
	rig_free(&r);
}

/*
 * Our FIN went to a client still taking our last bytes: each shrink of its
 * send queue, down to empty, restarts client-fin from the ACK that made it,
 * so after its last byte it has a whole period to answer with its FIN.
 */
static void
test_fin_period_restarts_when_queue_drains(void)
{
	struct rig r = rig_new("100", "30s", "100ms", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(up, "answer");
	acked(c, 6);
	peer_fins(up);
	CHECK(fd_of(c)->shut_wr);
	spin(50);
	acked(c, 3); /* progress at 50, before the first deadline (100) */
	spin(60);
	CHECK(!fd_of(c)->closed);
	spin(20);
	acked(c, 0); /* drained at 130, before the next deadline (150) */
	spin(60); /* 190: the drain restarted the period, to 230 */
	CHECK(!fd_of(c)->closed);
	peer_fins(c);
	CHECK(fd_of(c)->closed && !fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && !fd_of(up)->aborted);
	CHECK_INT(closed(&r, RELAY_RES_RELAYED), 1);
	rig_free(&r);
}

/*
 * ... and a client that never answers is cut one period after its last
 * ACK, not one period after the check that saw it.
 */
static void
test_fin_period_counts_from_the_last_ack(void)
{
	struct rig r = rig_new("100", "30s", "100ms", "none", "");
	int up, c = streaming(&r, &up);
	uint64_t t0;

	peer_sends(up, "answer");
	acked(c, 6);
	peer_fins(up);
	t0 = loop_clock_ms();
	spin(20);
	acked(c, 0); /* all acknowledged at 20 */
	while (!fd_of(c)->closed && loop_clock_ms() - t0 < 1000)
		spin(5);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(up)->closed && fd_of(up)->aborted);
	/* 120 (20 + 100) at the earliest; 200 is what a check's time gives */
	CHECK(loop_clock_ms() - t0 >= 115 && loop_clock_ms() - t0 < 170);
	rig_free(&r);
}

/* Camouflage: a listener whose decoy is [upstream web] on port 80. */
#define DECOY_EXTRA                                                            \
	"decoy = web\n[upstream web]\nserver = 192.0.2.9:80\n"                 \
	"check-interval = 1h\n"

static const uint8_t wa_intro[] = {
    'E', 'D', 0, 1, 0, 0, 1, 0x08, 'W', 'A', 6, 3, 0, 0, 2, 0x12, 0x01};

static struct rig
decoy_rig(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", DECOY_EXTRA);

	upstream_resolve(r.g->ups[1], false);
	return r;
}

static int
port_of(int fd)
{
	return ntohs(((struct sockaddr_in *)&fd_of(fd)->peer)->sin_port);
}

static uint64_t
camo(struct rig *r, bool whatsapp)
{
	struct relay_lcounters *l = &r->g->listeners[0].state->cnt[0];

	return whatsapp ? RELAY_CNT_GET(l, camo_whatsapp)
	                : RELAY_CNT_GET(l, camo_decoy);
}

static void
test_sniff_intro_goes_upstream(void)
{
	struct rig r = decoy_rig();
	int c = accept_client(&r, "198.51.100.5");
	int web = dialled(0), up;

	CHECK_INT(port_of(web), 80); /* the decoy, at once */
	fire(web, EPOLLOUT);
	peer_sends_n(c, wa_intro, 9); /* ED prologue and 'W' */
	CHECK_INT(ndialled(), 1);
	CHECK(!fd_of(web)->closed);
	peer_sends_n(c, wa_intro + 9, sizeof(wa_intro) - 9);
	CHECK(fd_of(web)->closed && !fd_of(web)->aborted);
	CHECK_INT(fd_of(web)->outlen, 0);
	CHECK_INT(ndialled(), 2);
	up = dialled(1);
	CHECK_INT(port_of(up), 5222);
	fire(up, EPOLLOUT);
	CHECK_INT(fd_of(up)->outlen, sizeof(wa_intro));
	CHECK_MEM(fd_of(up)->out, wa_intro, sizeof(wa_intro));
	CHECK_INT(camo(&r, true), 1);
	CHECK_INT(camo(&r, false), 0);
	rig_free(&r);
}

static void
test_sniff_other_goes_to_decoy(void)
{
	struct rig r = decoy_rig();
	int c = accept_client(&r, "198.51.100.5");
	int web = dialled(0);

	peer_sends(c, "GET / HTTP/1.1\r\n");
	/* Decided, but the decoy's connect is still under way. */
	CHECK_INT(fd_of(web)->outlen, 0);
	fire(web, EPOLLOUT);
	CHECK(got(web, "GET / HTTP/1.1\r\n"));
	peer_sends(web, "HTTP/1.1 400 Bad Request\r\n");
	CHECK(got(c, "HTTP/1.1 400 Bad Request\r\n"));
	CHECK_INT(ndialled(), 1);
	CHECK_INT(camo(&r, false), 1);
	rig_free(&r);
}

static void
test_sniff_decoy_speaks_or_closes_first(void)
{
	struct rig r = decoy_rig();
	int c = accept_client(&r, "198.51.100.5");
	int web = dialled(0);

	fire(web, EPOLLOUT);
	peer_sends(c, "WA"); /* a prefix: still waiting */
	CHECK_INT(fd_of(web)->outlen, 0);
	peer_fins(web); /* the decoy gave up on the connection */
	CHECK(got(web, "WA"));
	CHECK(fd_of(c)->shut_wr);
	CHECK_INT(camo(&r, false), 1);
	rig_free(&r);
}

static void
test_sniff_window_ends_at_the_decoy(void)
{
	struct rig r = decoy_rig(); /* handshake = 100ms */
	int c = accept_client(&r, "198.51.100.5");
	int web = dialled(0);

	fire(web, EPOLLOUT);
	peer_sends(c, "WA");
	spin(60);
	CHECK_INT(fd_of(web)->outlen, 0);
	spin(80);
	CHECK(got(web, "WA"));
	CHECK(!fd_of(c)->closed);
	rig_free(&r);
}

static void
test_sniff_decoy_down_chat_works(void)
{
	struct rig r = decoy_rig();
	int c, c2, up;

	connect_errno[nconnect++] = ECONNREFUSED; /* the decoy, at once */
	c = accept_client(&r, "198.51.100.5");
	CHECK_INT(ndialled(), 1);
	peer_sends_n(c, wa_intro, sizeof(wa_intro));
	up = dialled(1);
	CHECK_INT(port_of(up), 5222);
	fire(up, EPOLLOUT);
	CHECK_MEM(fd_of(up)->out, wa_intro, sizeof(wa_intro));
	/* Another client, not WhatsApp: closed with FIN, as by a server. */
	nconnect = iconnect;
	connect_errno[nconnect++] = ECONNREFUSED;
	c2 = accept_client(&r, "198.51.100.6");
	peer_sends(c2, "GET /");
	CHECK(fd_of(c2)->closed && !fd_of(c2)->aborted);
	CHECK_INT(closed(&r, RELAY_RES_UPSTREAM_FAILED), 1);
	rig_free(&r);
}

/* A ClientHello as OpenSSL's client sends it; *len set (free it). */
static uint8_t *
client_hello(const char *sni, size_t *len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = SSL_new(ctx);
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
	uint8_t *out;
	char *data;
	long n;

	SSL_set_bio(ssl, rb, wb);
	SSL_set_tlsext_host_name(ssl, sni);
	SSL_set_connect_state(ssl);
	(void)SSL_do_handshake(ssl);
	n = BIO_get_mem_data(wb, &data);
	out = malloc((size_t)n);
	memcpy(out, data, (size_t)n);
	*len = (size_t)n;
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	return out;
}

#define HELLO_EXTRA                                                            \
	"tls = on\npassthrough = media\ndecoy-tls = webtls\n"                  \
	"[upstream media]\nserver = 192.0.2.10:443\ncheck-interval = 1h\n"     \
	"[upstream webtls]\nserver = 192.0.2.11:8443\ncheck-interval = 1h\n"

static struct rig
hello_rig(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", HELLO_EXTRA);

	upstream_resolve(r.g->ups[1], false);
	upstream_resolve(r.g->ups[2], false);
	return r;
}

/* A media ClientHello in two pieces: peeked, then passed through whole. */
static void
test_hello_media_passes_through(void)
{
	struct rig r = hello_rig();
	size_t len;
	uint8_t *hello = client_hello("mmg.whatsapp.net", &len);
	int c = accept_client(&r, "198.51.100.5"), up;

	peer_sends_n(c, hello, 10);
	CHECK_INT(ndialled(), 0);
	CHECK_INT(fd_of(c)->inoff, 0); /* peeked, not read */
	peer_sends_n(c, hello + 10, len - 10);
	CHECK_INT(ndialled(), 1);
	up = dialled(0);
	CHECK_INT(port_of(up), 443);
	fire(up, EPOLLOUT);
	CHECK_INT(fd_of(up)->outlen, len);
	CHECK_MEM(fd_of(up)->out, hello, len);
	CHECK_INT(
	    RELAY_CNT_GET(&r.g->listeners[0].state->cnt[0], camo_passthrough),
	    1);
	free(hello);
	rig_free(&r);
}

/* Plain bytes on the TLS listener: raw to decoy-tls. */
static void
test_hello_plain_bytes_to_decoy_tls(void)
{
	struct rig r = hello_rig();
	int c = accept_client(&r, "198.51.100.5"), up;

	peer_sends(c, "GET / HTTP/1.1\r\n");
	CHECK_INT(ndialled(), 1);
	up = dialled(0);
	CHECK_INT(port_of(up), 8443);
	fire(up, EPOLLOUT);
	CHECK(got(up, "GET / HTTP/1.1\r\n"));
	CHECK_INT(
	    RELAY_CNT_GET(&r.g->listeners[0].state->cnt[0], camo_decoy_tls), 1);
	rig_free(&r);
}

/* Another name: nothing passes, nothing is dialled before our TLS. */
static void
test_hello_other_name_is_ours(void)
{
	struct rig r = hello_rig();
	size_t len;
	uint8_t *hello = client_hello("example.org", &len);
	int c = accept_client(&r, "198.51.100.5");

	peer_sends_n(c, hello, len);
	CHECK_INT(ndialled(), 0);
	CHECK_INT(
	    RELAY_CNT_GET(&r.g->listeners[0].state->cnt[0], camo_passthrough),
	    0);
	free(hello);
	rig_free(&r);
}

static void
test_peer_rst_propagates(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", "");
	int up, c = streaming(&r, &up);

	peer_sends(c, "hi");
	fd_of(up)->peer_rst = true;
	fire(up, EPOLLIN | EPOLLERR | EPOLLHUP);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(up)->closed);
	CHECK_INT(RELAY_CNT_GET(&cnt, errors), 1);
	CHECK_INT(closed(&r, RELAY_RES_RELAYED), 1);
	rig_free(&r);
}

static void
test_connect_refused_fails_over_and_marks_down(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", "");
	struct upstream_server *s0 = r.g->ups[0]->servers[0];
	int up, c;

	/* Three clients: each first dial is refused at once. */
	for (int i = 0; i < 3; i++) {
		connect_errno[nconnect++] = ECONNREFUSED;
		connect_errno[nconnect++] = EINPROGRESS;
	}
	for (int i = 0; i < 3; i++) {
		c = accept_client(&r, "198.51.100.5");
		up = dialled(2 * i + 1);
		CHECK(fd_of(dialled(2 * i))->closed);
		fire(up, EPOLLOUT);
		peer_sends(c, "x");
		CHECK(got(up, "x"));
	}
	CHECK_INT(RELAY_CNT_GET(&cnt, connect_retries), 3);
	CHECK(upstream_server_down(s0, loop_now(L)));
	/* The next client goes to the second server first. */
	c = accept_client(&r, "198.51.100.5");
	up = dialled(6);
	CHECK_INT(((struct sockaddr_in *)&fd_of(up)->peer)->sin_addr.s_addr,
	    htonl(0xc0000208)); /* 192.0.2.8 */
	rig_free(&r);
}

static void
test_connect_timeout_next_server(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", "");
	int c = accept_client(&r, "198.51.100.5");

	CHECK_INT(ndialled(), 1);
	spin(150); /* connect = 100ms */
	CHECK(fd_of(dialled(0))->closed);
	CHECK_INT(ndialled(), 2);
	fire(dialled(1), EPOLLOUT);
	peer_sends(c, "late");
	CHECK(got(dialled(1), "late"));
	rig_free(&r);
}

static void
test_no_server_left_closes_client(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", "");
	int c;

	connect_errno[nconnect++] = ECONNREFUSED;
	connect_errno[nconnect++] = ECONNREFUSED;
	c = accept_client(&r, "198.51.100.5");
	CHECK(fd_of(c)->closed && !fd_of(c)->aborted);
	CHECK_INT(closed(&r, RELAY_RES_UPSTREAM_FAILED), 1);
	rig_free(&r);
}

static void
test_client_gone_while_connecting(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", "");
	int c = accept_client(&r, "198.51.100.5");

	fire(c, EPOLLHUP | EPOLLERR);
	CHECK(fd_of(c)->closed && fd_of(c)->aborted);
	CHECK(fd_of(dialled(0))->closed);
	rig_free(&r);
}

static void
test_header_timeout_fin_nothing_dialled(void)
{
	struct rig r =
	    rig_new("100", "30s", "30s", "none", "accept-proxy = on\n");
	int c = accept_client(&r, "198.51.100.5");

	peer_sends(c, "PROXY TCP4 ");
	spin(200); /* handshake = 100ms */
	CHECK(fd_of(c)->closed && !fd_of(c)->aborted);
	CHECK_INT(fd_of(c)->inoff, fd_of(c)->inlen); /* dropped, read: FIN */
	CHECK_INT(ndialled(), 0);
	CHECK_INT(closed(&r, RELAY_RES_TIMEOUT), 1);
	rig_free(&r);
}

static void
test_proxy_header_forwarded(void)
{
	struct rig r = rig_new("100", "30s", "30s", "v1",
	    "accept-proxy = on\ntrusted-proxies = 10.0.0.0/8\n");
	int c, up;

	/* Untrusted source: closed before anything is read or dialled. */
	c = accept_client(&r, "198.51.100.5");
	CHECK(fd_of(c)->closed);
	CHECK_INT(closed(&r, RELAY_RES_PROXY_REJECTED), 1);
	CHECK_INT(ndialled(), 0);
	/* Trusted: the header is consumed, its payload stays in order. */
	c = accept_client(&r, "10.1.2.3");
	peer_sends(c, "PROXY TCP4 203.0.113.9 192.0.2.1 5555 443\r\npay");
	up = dialled(0);
	fire(up, EPOLLOUT);
	CHECK(got(up, "PROXY TCP4 203.0.113.9 192.0.2.1 5555 443\r\npay"));
	rig_free(&r);
}

static void
test_proxy_header_after_retry(void)
{
	struct rig r = rig_new("100", "30s", "30s", "v1", "");
	int c, up;

	connect_errno[nconnect++] = ECONNREFUSED;
	c = accept_client(&r, "198.51.100.5");
	up = dialled(1);
	fire(up, EPOLLOUT);
	peer_sends(c, "x");
	CHECK(got(up, "PROXY TCP4 198.51.100.5 192.0.2.1 40000 443\r\nx"));
	rig_free(&r);
}

static void
test_maxconn(void)
{
	struct rig r = rig_new("2", "30s", "30s", "none", "");
	int a = accept_client(&r, "198.51.100.5");
	int b = accept_client(&r, "198.51.100.6");
	int c = accept_client(&r, "198.51.100.7");

	CHECK(!fd_of(a)->closed && !fd_of(b)->closed);
	CHECK(fd_of(c)->closed); /* the third: over maxconn = 2 */
	CHECK_INT(closed(&r, RELAY_RES_REFUSED_MAXCONN), 1);
	CHECK_INT(relay_conns(r.rc), 2);
	CHECK_INT(relay_total_active(), 2);
	rig_free(&r);
	CHECK_INT(relay_total_active(), 0);
}

/* socket-buffers: on the client's socket and the upstream's, before its
 * connect (the window scale follows the buffer); auto: neither touched. */
static void
test_socket_buffers(void)
{
	struct rig r =
	    rig_new("100\nsocket-buffers = 64k", "30s", "30s", "none", "");
	int up, c = streaming(&r, &up);

	CHECK_INT(fd_of(c)->buffers, 65536);
	CHECK_INT(fd_of(up)->buffers, 65536);
	CHECK(fd_of(up)->connected_after_buffers);
	rig_free(&r);

	r = rig_new("100", "30s", "30s", "none", "");
	c = streaming(&r, &up);
	CHECK_INT(fd_of(c)->buffers, 0);
	CHECK_INT(fd_of(up)->buffers, 0);
	rig_free(&r);
}

static void
test_close_all_resets(void)
{
	struct rig r = rig_new("100", "30s", "30s", "none", "");
	int up, c = streaming(&r, &up);

	relay_close_all(r.rc);
	CHECK(fd_of(c)->aborted && fd_of(up)->aborted);
	CHECK_INT(relay_conns(r.rc), 0);
	rig_free(&r);
}

int
main(void)
{
	L = loop_new();
	if (L == NULL)
		return 1;
	test_both_finished_fin();
	test_idle_timeout_nothing_held_fin();
	test_idle_timeout_unacked_bytes_rst();
	test_backpressure_is_not_idleness();
	test_half_closed_timeout_rst();
	test_sniff_intro_goes_upstream();
	test_sniff_other_goes_to_decoy();
	test_sniff_decoy_speaks_or_closes_first();
	test_sniff_window_ends_at_the_decoy();
	test_sniff_decoy_down_chat_works();
	test_hello_media_passes_through();
	test_hello_plain_bytes_to_decoy_tls();
	test_hello_other_name_is_ours();
	test_fin_period_restarts_when_queue_drains();
	test_fin_period_counts_from_the_last_ack();
	test_queue_taken_is_not_idleness();
	test_queue_barely_taken_is_idleness();
	test_queued_bytes_excuse_their_source();
	test_fin_behind_queued_bytes_full_timeout();
	test_peer_rst_propagates();
	test_connect_refused_fails_over_and_marks_down();
	test_connect_timeout_next_server();
	test_no_server_left_closes_client();
	test_client_gone_while_connecting();
	test_header_timeout_fin_nothing_dialled();
	test_proxy_header_forwarded();
	test_proxy_header_after_retry();
	test_maxconn();
	test_socket_buffers();
	test_close_all_resets();
	loop_free(L);
	return h_report("test_relay");
}
