/*
 * relay: the connection state machine.  A connection reads the PROXY
 * header (accept-proxy listeners), does the TLS handshake (tls listeners),
 * dials the upstream group with failover, then streams: direction d copies
 * from side[d] to side[!d] through copy.c's loop, over the plain-socket or
 * TLS transport below.  relay_states[] holds every state's handlers.
 *
 * How a connection ends (DESIGN.md): both directions finished: FIN (TLS:
 * close_notify first); an error or RST on either socket: RST to both
 * (SO_LINGER 0), so that neither peer mistakes a cut stream for a complete
 * one; a timeout: FIN only when nothing is held and nothing half-finished,
 * else RST; a TLS protocol error: the alert, FIN, a bounded linger.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "copy.h"
#include "gen.h"
#include "hello.h"
#include "intro.h"
#include "invariant.h"
#include "log.h"
#include "loop.h"
#include "proxyproto.h"
#include "relay.h"
#include "tls.h"
#include "upstream.h"
#include "util.h"

/* I/O calls per connection per wake-up, for fairness. */
#define RELAY_BUDGET 16
/*
 * SNIFF: how long the rest of an intro may take once a prefix is in.  A
 * client writes its intro and first frame at once (one segment, one TLS
 * record); a prober's few bytes that could begin one ("ED\0") go to the
 * decoy this soon, so that its answer comes as fast as the web server's
 * own (nginx rejects such bytes at once).
 */
#define RELAY_INTRO_GRACE_MS 250
/* How long a connection closed after a TLS alert reads the client's rest. */
#define RELAY_LINGER_MS 1000
/* Bytes thrown away per call while lingering (MSG_TRUNC: not copied). */
#define RELAY_DISCARD (1 << 20)
/*
 * Bytes queued in a socket (written, not yet acknowledged by the peer)
 * beyond this count as held, like bytes in the relay's own pipe: about what
 * the kernel keeps in flight for a reader that keeps up.  A socket queues
 * as much as the kernel lets it (TCP_NOTSENT_LOWAT would keep the rest in
 * the relay, at the cost of a wake-up per 64 KiB: a quarter more CPU per
 * byte); the relay reads the queue (SIOCOUTQ) at its timer, never on the
 * way of the bytes.  See side_deadline() and conn_timeout().
 */
#define RELAY_QUEUE_SLACK (128 * 1024)
/*
 * How much a side's queue must shrink to count as activity: less may be
 * the kernel making room in a paused reader's buffer.  (After our FIN,
 * any shrinking counts: the side has nothing else to do.)
 */
#define RELAY_QUEUE_PROGRESS (64 * 1024)

/*
 * A connection's states; relay_states[] below holds each one's handlers,
 * relay_next[] the transitions allowed out of it.
 */
enum relay_state {
	RELAY_ST_NEW = 0, /* just accepted */
	RELAY_ST_HEADER, /* waiting for the PROXY header (accept-proxy) */
	/*
	 * A TLS listener with passthrough or decoy-tls: the ClientHello is
	 * peeked at, not read, until it says where the raw bytes go (or that
	 * our own TLS answers them).
	 */
	RELAY_ST_HELLO,
	RELAY_ST_TLS, /* TLS handshake with the client */
	/*
	 * Camouflage (a listener with a decoy): the decoy is being dialled or
	 * is connected, and the client's first bytes are read until they say
	 * whether they are WhatsApp's (intro.h).  Nothing is relayed yet.
	 */
	RELAY_ST_SNIFF,
	RELAY_ST_CONNECTING, /* dialing the upstream group, with failover */
	RELAY_ST_STREAMING, /* copying both ways */
	/*
	 * After a TLS protocol error: the alert is out and our FIN follows it;
	 * the client's bytes are read and thrown away for at most
	 * RELAY_LINGER_MS or until its FIN, so that no RST destroys the alert
	 * before the client has read it.  The upstream is gone already.
	 */
	RELAY_ST_LINGER,
	RELAY_ST_CLOSED, /* sockets closed, memory freed after this iteration */
	RELAY_ST_MAX,
};

enum {
	CLIENT = 0,
	SERVER = 1,
};

struct relay_side {
	struct loop_io io;
	struct relay_conn *c; /* borrowed: back pointer */
	struct copy_end end; /* readiness, FIN state, transport */
	union {
		/*
		 * From CONNECTING on: its socket's queue (SIOCOUTQ: bytes we
		 * wrote that it has not yet acknowledged), as the timer (or
		 * our FIN) found it; -1: never looked at.  A write makes it
		 * stale (end.wrote).  Kept until the queue shrinks (after our
		 * FIN, until the next look): a queue that shrinks is a peer
		 * taking our bytes, not an idle one.
		 */
		int outq;
		/* HELLO, the client's side: the bytes the ClientHello parser
		 * needs before it can tell more. */
		int hello_need;
	};
	uint32_t outq_at; /* when taken: loop time, ms, low 32 bits */
};

/* The original connection's addresses, from an inbound PROXY header. */
union relay_sa {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
};

struct relay_origin {
	union relay_sa src, dst;
};

struct relay_ctx {
	struct loop *loop; /* borrowed: the worker's */
	const struct relay_sys *sys; /* borrowed */
	unsigned id; /* the worker's: index of per-listener counters */
	struct relay_counters *cnt; /* borrowed: the worker's */
	struct copy_pool pool;
	struct relay_conn *conns; /* owned list of live connections */
	size_t nconns;
	relay_gone_cb gone;
	void *gone_arg; /* borrowed */
};

struct relay_conn {
	struct relay_side side[2];
	struct copy_dir dir[2]; /* indexed by source side */
	struct relay_ctx *rc; /* borrowed */
	struct gen *gen; /* reference */
	struct listener *ls; /* borrowed from gen */
	struct upstream_server *srv; /* borrowed: current attempt */
	struct upstream_cursor cur;
	struct relay_lcounters *lc; /* borrowed: listener's, this worker's */
	struct relay_origin *origin; /* owned; NULL: the socket's addresses */
	struct tls_conn *tls; /* owned; NULL on a plain listener */
	struct loop_timer timer;
	struct loop_task task; /* continue relaying, or free */
	uint64_t deadline; /* header or connect attempt */
	uint64_t attempt_start_us; /* of the connect attempt */
	/* An enum relay_state in one byte: with src, no hole. */
	uint8_t state;
	uint8_t attempts;
	uint8_t turn; /* the direction conn_run serves first */
	uint8_t flags; /* CONN_F_* */
	struct srclimit_ticket src; /* held in gen->src while it lives */
	struct relay_conn *prev, *next; /* rc's list */
};

/* c->flags */
enum {
	CONN_F_DECOY = 1 << 0, /* the server side is the listener's decoy */
	CONN_F_UP = 1 << 1, /* SNIFF: the decoy's connect completed */
	CONN_F_PASS = 1 << 2, /* the server side is the passthrough group */
	CONN_F_DECOY_TLS = 1 << 3, /* ... the decoy-tls group */
};

static _Atomic unsigned relay_active_total;

const char *
relay_result_str(enum relay_result r)
{
	switch (r) {
	case RELAY_RES_RELAYED:
		return "relayed";
	case RELAY_RES_REFUSED_MAXCONN:
		return "refused_maxconn";
	case RELAY_RES_REFUSED_SOURCE:
		return "refused_source";
	case RELAY_RES_UPSTREAM_FAILED:
		return "upstream_failed";
	case RELAY_RES_TIMEOUT:
		return "timeout";
	case RELAY_RES_TLS_FAILED:
		return "tls_failed";
	case RELAY_RES_PROXY_REJECTED:
		return "proxy_rejected";
	case RELAY_RES_ERROR:
		return "error";
	case RELAY_RES_MAX:
		break;
	}
	return "?";
}

unsigned
relay_total_active(void)
{
	return atomic_load_explicit(&relay_active_total, memory_order_relaxed);
}

/* The states each state may go to. */
#define ST(x) (1u << RELAY_ST_##x)
static const unsigned relay_next[RELAY_ST_MAX] = {
    [RELAY_ST_NEW] = ST(HEADER) | ST(HELLO) | ST(TLS) | ST(SNIFF) |
        ST(CONNECTING) | ST(CLOSED),
    [RELAY_ST_HEADER] =
        ST(HELLO) | ST(TLS) | ST(SNIFF) | ST(CONNECTING) | ST(CLOSED),
    [RELAY_ST_HELLO] = ST(TLS) | ST(CONNECTING) | ST(CLOSED),
    [RELAY_ST_TLS] = ST(SNIFF) | ST(CONNECTING) | ST(LINGER) | ST(CLOSED),
    [RELAY_ST_SNIFF] = ST(CONNECTING) | ST(STREAMING) | ST(LINGER) | ST(CLOSED),
    [RELAY_ST_CONNECTING] = ST(STREAMING) | ST(LINGER) | ST(CLOSED),
    [RELAY_ST_STREAMING] = ST(LINGER) | ST(CLOSED),
    [RELAY_ST_LINGER] = ST(CLOSED),
    [RELAY_ST_CLOSED] = 0,
};
#undef ST

/* Moves c to state st, a transition relay_next[] allows. */
static void
conn_enter(struct relay_conn *c, enum relay_state st)
{
	INVARIANT(st < RELAY_ST_MAX && (relay_next[c->state] & (1u << st)));
	c->state = st;
}

/* Connection life. */

static void conn_free_task(struct loop_task *t);
static void conn_continue_task(struct loop_task *t);
static void conn_timer_cb(struct loop_timer *t);
static void side_cb(struct loop_io *io, uint32_t events);
static void conn_connect(struct relay_conn *c);
static void conn_close(
    struct relay_conn *c, bool abort_peers, enum relay_result result);
static void linger_read(struct relay_conn *c);

/*
 * The kernel's system calls.  Client sockets inherit TCP_NODELAY,
 * keep-alive and SO_OOBINLINE from their listening socket (gen.c).  An
 * upstream socket needs Nagle off (its idle time is bounded by the
 * `server` timeout) and urgent data inline, so that an urgent byte is
 * relayed in its place instead of dropped.
 */
static int
k_socket(int family)
{
	int on = 1;
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
	(void)setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on));
	return fd;
}

static void
k_buffers(int fd, unsigned bytes)
{
	int v = (int)bytes;

	(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
}

static ssize_t
k_splice_in(int fd, int pipe_wr, size_t len)
{
	return splice(
	    fd, NULL, pipe_wr, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

static ssize_t
k_splice_out(int pipe_rd, int fd, size_t len)
{
	return splice(
	    pipe_rd, NULL, fd, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

static int
k_shutdown_wr(int fd)
{
	return shutdown(fd, SHUT_WR);
}

static void
k_close(int fd, bool abort)
{
	if (abort) {
		struct linger lg = {.l_onoff = 1, .l_linger = 0};

		(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	/* close(2) also removes the fd from the epoll set. */
	close(fd);
}

static int
k_outq(int fd, int *bytes)
{
	return ioctl(fd, SIOCOUTQ, bytes);
}

static int
k_last_ack(int fd, uint32_t *ms_ago)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
		return -1;
	*ms_ago = ti.tcpi_last_ack_recv;
	return 0;
}

static int
k_inq(int fd, int *bytes)
{
	return ioctl(fd, FIONREAD, bytes);
}

static int
k_sock_error(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		return errno;
	return err;
}

static int
k_peername(int fd, struct sockaddr_storage *ss)
{
	socklen_t len = sizeof(*ss);

	return getpeername(fd, (struct sockaddr *)ss, &len);
}

static int
k_sockname(int fd, struct sockaddr_storage *ss)
{
	socklen_t len = sizeof(*ss);

	return getsockname(fd, (struct sockaddr *)ss, &len);
}

static int
k_watch(struct loop *loop, struct loop_io *io)
{
	return loop_io_add(
	    loop, io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET);
}

const struct relay_sys relay_sys_kernel = {
    .socket = k_socket,
    .buffers = k_buffers,
    .connect = connect,
    .recv = recv,
    .send = send,
    .splice_in = k_splice_in,
    .splice_out = k_splice_out,
    .shutdown_wr = k_shutdown_wr,
    .close = k_close,
    .outq = k_outq,
    .last_ack = k_last_ack,
    .inq = k_inq,
    .sock_error = k_sock_error,
    .peername = k_peername,
    .sockname = k_sockname,
    .watch = k_watch,
};

/* Closes a side's socket; with RST instead of FIN when abort. */
static void
side_close(struct relay_side *side, bool abort)
{
	if (side->io.fd < 0)
		return;
	/* The side's io may be reused for another socket (the decoy's). */
	loop_io_forget(side->c->rc->loop, &side->io);
	side->c->rc->sys->close(side->io.fd, abort);
	side->io.fd = -1;
}

/* Gives back c's pipes, buffers and TLS state. */
static void
conn_release(struct relay_conn *c)
{
	for (int d = 0; d < 2; d++)
		copy_dir_release(&c->dir[d], &c->rc->pool);
	tls_conn_free(c->tls);
	c->tls = NULL;
}

/* Counts how c ended, once. */
static void
conn_count(struct relay_conn *c, enum relay_result result)
{
	/* A connection that reached upstream was relayed, however it ended. */
	if (c->state == RELAY_ST_STREAMING && result == RELAY_RES_ERROR)
		result = RELAY_RES_RELAYED;
	RELAY_CNT_ADD(c->lc, closed[result], 1);
}

/*
 * Ends c: closes both sockets (with RST when abort_peers), gives back its
 * pipes and buffers, counts it under result (unless a linger counted it
 * already), and queues its memory to be freed after this loop iteration.
 */
static void
conn_close(struct relay_conn *c, bool abort_peers, enum relay_result result)
{
	struct relay_ctx *rc = c->rc;

	if (c->state == RELAY_ST_CLOSED)
		return;
	if (c->state != RELAY_ST_LINGER)
		conn_count(c, result);
	conn_enter(c, RELAY_ST_CLOSED);
	INVARIANT(rc->nconns > 0);
	for (int s = 0; s < 2; s++)
		side_close(&c->side[s], abort_peers);
	conn_release(c);
	loop_timer_del(rc->loop, &c->timer);
	loop_task_cancel(rc->loop, &c->task);

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		rc->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	rc->nconns--;
	srclimit_release(c->gen->src, &c->src);
	RELAY_CNT_ADD(rc->cnt, active, -1);
	atomic_fetch_sub_explicit(&relay_active_total, 1, memory_order_relaxed);
	atomic_fetch_sub_explicit(
	    &c->ls->state->active, 1, memory_order_relaxed);

	/* Freed after this loop iteration: events may still name it. */
	loop_task_init(&c->task, conn_free_task);
	loop_task_queue(rc->loop, &c->task);
	rc->gone(rc->gone_arg);
}

static void
conn_free_task(struct loop_task *t)
{
	struct relay_conn *c = container_of(t, struct relay_conn, task);

	gen_unref(c->gen);
	free(c->origin);
	free(c);
}

void
relay_close_all(struct relay_ctx *rc)
{
	while (rc->conns != NULL)
		conn_close(rc->conns, true, RELAY_RES_ERROR);
}

/* Bytes held for side s: in the relay, or queued beyond the slack. */
static inline bool
conn_holds(const struct relay_conn *c, int s)
{
	return c->dir[!s].pending > 0 || c->side[s].outq > RELAY_QUEUE_SLACK;
}

/*
 * True when side s cannot be idle: bytes it sent wait for the other side
 * (in the relay or in the other side's socket), and nothing waits for s.
 */
static inline bool
conn_excused(const struct relay_conn *c, int s)
{
	return conn_holds(c, !s) && !conn_holds(c, s);
}

/* outq_at widened to 64 bits (it lies in the past). */
static uint64_t
side_outq_at(const struct relay_conn *c, const struct relay_side *side)
{
	uint64_t now = loop_now(c->rc->loop);

	return now - (uint32_t)((uint32_t)now - side->outq_at);
}

/* True when side s's queue was not looked at since it was last written. */
static inline bool
side_stale(const struct relay_side *side)
{
	return side->outq < 0 || side->end.wrote;
}

/*
 * Once we sent FIN to side s, it only has to acknowledge and finish: the
 * shorter "fin" timeout applies (FIN_WAIT), once our FIN is near the head
 * of its queue.
 */
static inline bool
side_half(const struct relay_side *side)
{
	return side->end.shut && side->outq <= RELAY_QUEUE_SLACK;
}

/* Side s's idle timeout (its -fin one once half-closed). */
static inline uint64_t
side_timeout(const struct relay_conn *c, int s)
{
	const struct cfg_timeouts *t = &c->gen->cfg->timeouts;
	bool half = side_half(&c->side[s]);

	return s == CLIENT ? (half ? t->client_fin_ms : t->client_ms)
	                   : (half ? t->server_fin_ms : t->server_ms);
}

/*
 * When the timer must next look at side s of a streaming connection: its
 * idle deadline, or earlier to read its socket's queue.
 */
static inline uint64_t
side_deadline(const struct relay_conn *c, int s)
{
	const struct cfg_timeouts *t = &c->gen->cfg->timeouts;
	const struct relay_side *side = &c->side[s];
	uint64_t to, dl, look;

	/*
	 * Backpressure is not idleness: while s's bytes wait for the other
	 * side, s's clock stops and the other side's own clock (which only
	 * runs on what it takes) measures the stall.  Unless both ways are
	 * stuck: then both clocks run.
	 */
	if (conn_excused(c, s))
		return UINT64_MAX;
	to = side_timeout(c, s);
	dl = side->end.last + to;
	/*
	 * Written to: its queue is read a quarter of the way, once the bytes
	 * had time to leave, so that the deadline can tell a side that takes
	 * them from one that does not.
	 */
	if (side_stale(side))
		return side->end.last + to / 4;
	if (!side->end.shut || side_half(side))
		return dl;
	/*
	 * Our FIN waits behind more than the slack: as far as timeouts go,
	 * the side is still taking our bytes, under its own timeout; its
	 * queue is read every -fin period.
	 */
	look = side_outq_at(c, side) +
	    (s == CLIENT ? t->client_fin_ms : t->server_fin_ms);
	return look < dl ? look : dl;
}

/* The group c dials: the listener's upstream, or its decoy. */
static struct upstream *
conn_group(const struct relay_conn *c)
{
	if (c->flags & CONN_F_PASS)
		return c->ls->passthrough;
	if (c->flags & CONN_F_DECOY_TLS)
		return c->ls->decoy_tls;
	return (c->flags & CONN_F_DECOY) ? c->ls->decoy : c->ls->up;
}

/* SNIFF: the decoy's connect is under way (not done, not given up). */
static bool
decoy_connecting(const struct relay_conn *c)
{
	return c->side[SERVER].io.fd >= 0 && !(c->flags & CONN_F_UP);
}

/* When the connect attempt under way times out. */
static uint64_t
attempt_deadline(const struct relay_conn *c)
{
	return c->attempt_start_us / 1000 + c->gen->cfg->timeouts.connect_ms;
}

/* The earliest moment a timeout ends this connection. */
static uint64_t
conn_deadline(const struct relay_conn *c)
{
	uint64_t a, b;

	if (c->state == RELAY_ST_SNIFF) {
		/*
		 * The window for the first bytes, the rest of an intro once
		 * a prefix is in, and the decoy's connect.
		 */
		a = c->deadline;
		if (c->dir[CLIENT].pending > 0 &&
		    c->side[CLIENT].end.last + RELAY_INTRO_GRACE_MS < a)
			a = c->side[CLIENT].end.last + RELAY_INTRO_GRACE_MS;
		b = decoy_connecting(c) ? attempt_deadline(c) : UINT64_MAX;
		return a < b ? a : b;
	}
	if (c->state != RELAY_ST_STREAMING)
		return c->deadline;
	a = side_deadline(c, CLIENT);
	b = side_deadline(c, SERVER);
	return a < b ? a : b;
}

static void
conn_arm(struct relay_conn *c)
{
	loop_timer_set(c->rc->loop, &c->timer, conn_deadline(c));
}

/*
 * The transports copy.c moves bytes through: a plain socket, and the
 * client side of a TLS listener (OpenSSL).  The end is a relay_side's.
 */

static struct relay_side *
side_of(struct copy_end *e)
{
	return container_of(e, struct relay_side, end);
}

static ssize_t
plain_read(struct copy_end *e, void *buf, size_t len)
{
	struct relay_side *side = side_of(e);
	ssize_t n = side->c->rc->sys->recv(side->io.fd, buf, len, 0);

	if (n >= 0)
		return n;
	/* Workers block every signal: no EINTR here. */
	return errno == EAGAIN ? COPY_IO_AGAIN : COPY_IO_ERROR;
}

static ssize_t
plain_write(struct copy_end *e, const void *buf, size_t len)
{
	struct relay_side *side = side_of(e);
	ssize_t n = side->c->rc->sys->send(side->io.fd, buf, len, MSG_NOSIGNAL);

	if (n > 0)
		return n;
	return n < 0 && errno == EAGAIN ? COPY_IO_AGAIN : COPY_IO_ERROR;
}

static ssize_t
plain_splice_in(struct copy_end *e, int pipe_wr, size_t len)
{
	struct relay_side *side = side_of(e);
	ssize_t n = side->c->rc->sys->splice_in(side->io.fd, pipe_wr, len);

	if (n >= 0)
		return n;
	return errno == EAGAIN ? COPY_IO_AGAIN : COPY_IO_ERROR;
}

static ssize_t
plain_splice_out(struct copy_end *e, int pipe_rd, size_t len)
{
	struct relay_side *side = side_of(e);
	ssize_t n = side->c->rc->sys->splice_out(pipe_rd, side->io.fd, len);

	if (n > 0)
		return n;
	return n < 0 && errno == EAGAIN ? COPY_IO_AGAIN : COPY_IO_ERROR;
}

/* ENOTCONN when the peer is gone: the next write says. */
static void
plain_fin(struct copy_end *e)
{
	struct relay_side *side = side_of(e);

	(void)side->c->rc->sys->shutdown_wr(side->io.fd);
}

static const struct copy_ops plain_ops = {
    .read = plain_read,
    .write = plain_write,
    .splice_in = plain_splice_in,
    .splice_out = plain_splice_out,
    .fin = plain_fin,
    .trust_short = true,
};

static ssize_t
tls_result(size_t n, enum tls_status st)
{
	if (n > 0)
		return (ssize_t)n;
	switch (st) {
	case TLS_EOF:
		return COPY_IO_EOF;
	case TLS_WANT_READ:
		return COPY_IO_AGAIN;
	case TLS_WANT_WRITE:
		return COPY_IO_AGAIN_WRITE;
	case TLS_ALERT:
		return COPY_IO_ALERT;
	default:
		return COPY_IO_ERROR;
	}
}

static ssize_t
tls_xread(struct copy_end *e, void *buf, size_t len)
{
	struct relay_side *side = side_of(e);
	enum tls_status st = TLS_FAIL;
	size_t n = tls_read(side->c->tls, buf, len, &st);

	return tls_result(n, st);
}

static ssize_t
tls_xwrite(struct copy_end *e, const void *buf, size_t len)
{
	struct relay_side *side = side_of(e);
	enum tls_status st = TLS_FAIL;
	size_t n = tls_write(side->c->tls, buf, len, &st);
	ssize_t r = tls_result(n, st);

	/* A write waits for writability, whatever TLS asked for. */
	return r == COPY_IO_AGAIN_WRITE ? COPY_IO_AGAIN : r;
}

/* close_notify before the FIN. */
static int
tls_xfinish(struct copy_end *e)
{
	struct relay_side *side = side_of(e);
	enum tls_status st = tls_close_notify(side->c->tls);

	if (st == TLS_DONE)
		return 0;
	return st == TLS_WANT_WRITE ? COPY_IO_AGAIN : COPY_IO_ERROR;
}

/*
 * OpenSSL may read to write and the reverse, and buffers: a short read or
 * write proves nothing about the socket.
 */
static const struct copy_ops tls_ops = {
    .read = tls_xread,
    .write = tls_xwrite,
    .finish = tls_xfinish,
    .fin = plain_fin,
    .trust_short = false,
};

/* Direction d, as far as it goes now; counts its bytes.  COPY_*. */
static inline enum copy_result
dir_run(struct relay_conn *c, int d, int *budget, uint64_t now)
{
	uint64_t moved = 0;
	enum copy_result r = copy_run(&c->dir[d], &c->side[d].end,
	    &c->side[!d].end, &c->rc->pool, budget, &moved, now);

	if (moved == 0)
		return r;
	if (d == CLIENT)
		RELAY_CNT_ADD(c->lc, bytes_in, moved);
	else
		RELAY_CNT_ADD(c->lc, bytes_out, moved);
	return r;
}
/*
 * Throws away what the client sends while lingering; closes at its FIN or
 * error.  Reading to EAGAIN keeps the kernel from answering with RST.
 */
static void
linger_read(struct relay_conn *c)
{
	int fd = c->side[CLIENT].io.fd;

	for (int i = 0; i < RELAY_BUDGET; i++) {
		ssize_t n = c->rc->sys->recv(
		    fd, NULL, RELAY_DISCARD, MSG_TRUNC | MSG_DONTWAIT);

		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			conn_close(c, false, RELAY_RES_ERROR);
			return;
		}
	}
	loop_task_queue(c->rc->loop, &c->task);
}

/*
 * After a TLS protocol error (OpenSSL has written its alert): RST to the
 * upstream, whose stream was cut; FIN to the client after the alert, then
 * its rest is read and dropped for at most RELAY_LINGER_MS, so that it can
 * read the alert instead of a reset.  Counts c under result now.
 */
static void
conn_linger(struct relay_conn *c, enum relay_result result)
{
	struct relay_ctx *rc = c->rc;

	conn_count(c, result);
	conn_enter(c, RELAY_ST_LINGER);
	side_close(&c->side[SERVER], true);
	conn_release(c);
	loop_task_cancel(rc->loop, &c->task);
	if (rc->sys->shutdown_wr(c->side[CLIENT].io.fd) != 0) {
		conn_close(c, false, result);
		return;
	}
	c->deadline = loop_now(rc->loop) + RELAY_LINGER_MS;
	conn_arm(c);
	linger_read(c);
}

/*
 * True when a timeout may end c with FIN: no byte held in the relay or
 * unsent in a socket, and neither direction half-finished.  Anything else
 * is a cut stream, and ends with RST.
 */
static bool
conn_idle_clean(const struct relay_conn *c, const int q[2])
{
	for (int s = 0; s < 2; s++) {
		const struct relay_side *side = &c->side[s];

		if (c->dir[s].pending > 0 || side->end.eof || side->end.shut)
			return false;
		if (q[s] != 0)
			return false;
	}
	return true;
}

/*
 * Reads and drops what the client sent before we close it with FIN (bytes
 * left unread would make close(2) send RST).  A read stops at an urgent
 * mark and the next one goes past it: a few reads, not one.
 */
static void
discard_input(struct relay_conn *c)
{
	for (int i = 0; i < 4; i++) {
		if (c->rc->sys->recv(c->side[CLIENT].io.fd, NULL, RELAY_DISCARD,
		        MSG_TRUNC | MSG_DONTWAIT) <= 0)
			break;
	}
}

/* When side s last made progress: its last ACK, else now. */
static uint64_t
progress_at(
    const struct relay_conn *c, const struct relay_side *side, uint64_t now)
{
	uint32_t ago;

	if (c->rc->sys->last_ack(side->io.fd, &ago) != 0 || ago > now)
		return now;
	return now - ago;
}

/* Side s's socket queue now: bytes it has not acknowledged; -1: error. */
static int
side_queue(const struct relay_conn *c, int s)
{
	int q = 0;

	if (c->rc->sys->outq(c->side[s].io.fd, &q) != 0 || q < 0)
		return -1;
	return q;
}

/* The queue of side s is q (clamped at 0), taken now. */
static void
side_took(struct relay_side *side, int q, uint64_t now)
{
	side->outq = q > 0 ? q : 0;
	side->outq_at = (uint32_t)now;
	side->end.wrote = false;
}

/*
 * The timer reads side s's queue, q, now.  A queue that shrank since it
 * was taken (and not written to since) is a side taking our bytes: as when
 * the relay delivers them, both ends of that direction were busy, until
 * the peer's last ACK (not before the queue was taken).  After our FIN any
 * shrinking counts, and a period restarts from that ACK: after its last
 * byte the peer has a whole period to answer with its FIN.  Returns true
 * when the side's bytes are in doubt: it holds some, and its queue was
 * taken too recently (or only now) to tell.
 */
static bool
side_look(struct relay_conn *c, int s, int q, uint64_t now)
{
	struct relay_side *side = &c->side[s];
	uint64_t to = side_timeout(c, s), taken = side_outq_at(c, side);
	bool stale = side_stale(side), shrank;
	uint64_t age = stale ? 0 : now - taken;
	int took = side->end.shut ? 1 : RELAY_QUEUE_PROGRESS;

	if (q < 0)
		q = 0;
	shrank = !stale && q <= side->outq - took;
	if (shrank) {
		uint64_t busy = progress_at(c, side, now);

		if (busy < taken)
			busy = taken;
		for (int e = 0; e < 2; e++) {
			if (c->side[e].end.last < busy)
				c->side[e].end.last = busy;
		}
	}
	/* After our FIN, the window is from one look to the next. */
	if (stale || shrank || side->end.shut)
		side_took(side, q, now);
	return q > 0 && !side->end.shut && age < to / 4;
}

/*
 * The timer found a side of c due: the `client` or `server` timeout (or
 * its -fin one) ends c, unless the sockets' queues say otherwise.
 */
static void
conn_timeout(struct relay_conn *c)
{
	uint64_t now = loop_now(c->rc->loop);
	int q[2] = {side_queue(c, CLIENT), side_queue(c, SERVER)};
	bool doubt[2], expired = false;

	for (int s = 0; s < 2; s++)
		doubt[s] = side_look(c, s, q[s], now);
	for (int s = 0; s < 2; s++) {
		struct relay_side *side = &c->side[s];
		uint64_t to, at;

		if (side_deadline(c, s) > now)
			continue;
		if (doubt[s]) {
			/* Decide once its queue is a quarter timeout old. */
			to = side_timeout(c, s);
			at = side_outq_at(c, side) + to / 4;
			side->end.last = at > to ? at - to : 0;
			continue;
		}
		expired = true;
	}
	if (!expired) {
		conn_arm(c);
		return;
	}
	/*
	 * A decoy that closed, its answer delivered whole, while the client
	 * stays: the web server sent its last packet with its FIN, and so do
	 * we (close(2) after our FIN sends nothing; bytes the client sends
	 * later meet the kernel's RST, as they would the web server's).  An
	 * RST here would tell a relay from the web server it imitates.
	 */
	if ((c->flags & (CONN_F_DECOY | CONN_F_DECOY_TLS)) &&
	    c->side[SERVER].end.eof && c->side[CLIENT].end.shut &&
	    c->dir[SERVER].pending == 0 && c->dir[CLIENT].pending == 0) {
		conn_close(c, false, RELAY_RES_TIMEOUT);
		return;
	}
	if (!conn_idle_clean(c, q)) {
		conn_close(c, true, RELAY_RES_TIMEOUT);
		return;
	}
	/* Toward a TLS client, close_notify first (best effort). */
	if (c->tls != NULL)
		(void)tls_close_notify(c->tls);
	conn_close(c, false, RELAY_RES_TIMEOUT);
}

/*
 * The connection-level invariants, checked after each run (copy.c checks
 * the per-direction ones; sanitized and DEBUG=1 builds only).
 */
static void
conn_check(const struct relay_conn *c)
{
	INVARIANT(c->state == RELAY_ST_STREAMING);
	for (int d = 0; d < 2; d++) {
		const struct copy_dir *dir = &c->dir[d];

		/* A TLS client's bytes always pass through the buffer. */
		INVARIANT(c->tls == NULL || !dir->bulk);
		/* FIN only after the source's FIN and every byte delivered. */
		INVARIANT(!c->side[!d].end.shut ||
		    (c->side[d].end.eof && dir->pending == 0));
		INVARIANT(c->side[d].io.fd >= 0);
	}
	INVARIANT(!(c->side[CLIENT].end.shut && c->side[SERVER].end.shut));
	INVARIANT(c->rc->nconns > 0);
}

static void
conn_run(struct relay_conn *c)
{
	uint64_t now = loop_now(c->rc->loop);
	int budget = RELAY_BUDGET;
	bool shut_before[2] = {c->side[0].end.shut, c->side[1].end.shut};
	/* Only a side excused now can get an earlier deadline below. */
	bool excused_before =
	    conn_excused(c, CLIENT) || conn_excused(c, SERVER);
	/* Each direction goes first in turn: neither starves the other. */
	int first = c->turn;
	int r;

	c->turn = (uint8_t)!c->turn;
	r = dir_run(c, first, &budget, now);
	if (r == COPY_OK)
		r = dir_run(c, !first, &budget, now);
	if (r == COPY_ALERT) {
		RELAY_CNT_ADD(c->rc->cnt, errors, 1);
		conn_linger(c, RELAY_RES_ERROR);
		return;
	}
	if (r != COPY_OK) {
		RELAY_CNT_ADD(c->rc->cnt, errors, 1);
		conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	if (c->side[CLIENT].end.shut && c->side[SERVER].end.shut) {
		conn_close(c, false, RELAY_RES_RELAYED);
		return;
	}
	conn_check(c);
	if (budget <= 0)
		loop_task_queue(c->rc->loop, &c->task);
	/* A side just got a FIN from us: its shorter timeout starts. */
	if (shut_before[0] != c->side[0].end.shut ||
	    shut_before[1] != c->side[1].end.shut) {
		for (int s = 0; s < 2; s++) {
			struct relay_side *side = &c->side[s];

			if (!side->end.shut || shut_before[s])
				continue;
			/*
			 * Its -fin timeout counts from our FIN, once at most
			 * the slack is before it (its queue, read now).
			 */
			side->end.last = now;
			side_took(side, side_queue(c, s), now);
		}
		conn_arm(c);
		return;
	}
	/*
	 * The timer may be later than the deadline when a side stopped being
	 * excused (its held bytes went out): never let a timeout slip.  Any
	 * other run only moves deadlines later (the timer catches up when it
	 * fires), so the common case computes nothing.
	 */
	if (excused_before && conn_deadline(c) < c->timer.deadline)
		conn_arm(c);
}

static void
conn_continue_task(struct loop_task *t)
{
	struct relay_conn *c = container_of(t, struct relay_conn, task);

	if (c->state == RELAY_ST_STREAMING)
		conn_run(c);
	else if (c->state == RELAY_ST_LINGER)
		linger_read(c);
}

static void
send_proxy_header(struct relay_conn *c, int fd)
{
	enum cfg_send_proxy sp = conn_group(c)->cfg->send_proxy;
	struct sockaddr_storage peer, local;
	uint8_t hdr[PP_BUILD_MAX];
	bool known;
	ssize_t n;

	if (sp == CFG_SEND_PROXY_NONE)
		return;
	if (c->origin != NULL) {
		n = pp_build(sp == CFG_SEND_PROXY_V1 ? PP_V1 : PP_V2,
		    &c->origin->src.sa, &c->origin->dst.sa, 0, hdr,
		    sizeof(hdr));
		goto send;
	}
	known = c->rc->sys->peername(c->side[CLIENT].io.fd, &peer) == 0 &&
	    c->rc->sys->sockname(c->side[CLIENT].io.fd, &local) == 0;
	n = pp_build(sp == CFG_SEND_PROXY_V1 ? PP_V1 : PP_V2,
	    known ? (struct sockaddr *)&peer : NULL,
	    known ? (struct sockaddr *)&local : NULL, 0, hdr, sizeof(hdr));
send:
	/* A fresh socket's send buffer always takes a header this small. */
	if (n < 0 || c->rc->sys->send(fd, hdr, (size_t)n, MSG_NOSIGNAL) != n)
		c->side[SERVER].end.wr_ready = false,
		c->side[SERVER].end.eof = true;
}

/* The upstream socket is connected: relaying starts. */
static void
conn_stream(struct relay_conn *c)
{
	struct relay_ctx *rc = c->rc;
	uint64_t now = loop_now(rc->loop);
	int fd = c->side[SERVER].io.fd;

	conn_enter(c, RELAY_ST_STREAMING);
	/*
	 * The client's edge may have been spent before streaming (by the
	 * PROXY header or TLS handshake reads): try it once.  The upstream's
	 * flags came from its own events since the connect began.
	 */
	c->side[CLIENT].end.rd_ready = true;
	c->side[CLIENT].end.wr_ready = true;
	c->side[SERVER].end.wr_ready = true;
	c->side[CLIENT].end.last = c->side[SERVER].end.last = now;
	send_proxy_header(c, fd);
	if (c->side[SERVER].end.eof) {
		RELAY_CNT_ADD(rc->cnt, errors, 1);
		conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	/* The connect deadline is armed: a later one waits for it to fire. */
	if (conn_deadline(c) < c->timer.deadline)
		conn_arm(c);
	conn_run(c);
}

static void
conn_connected(struct relay_conn *c)
{
	upstream_report(c->srv, true, loop_now(c->rc->loop),
	    loop_clock_us() - c->attempt_start_us);
	conn_stream(c);
}

static void
conn_attempt_failed(struct relay_conn *c)
{
	struct relay_ctx *rc = c->rc;

	upstream_report(c->srv, false, loop_now(rc->loop), 0);
	side_close(&c->side[SERVER], false);
	conn_connect(c);
}

/*
 * Starts the next connection attempt, or closes the client when none is
 * left: with FIN when nothing of its was taken, with RST when the relay
 * holds bytes it read (a TLS client's first bytes, an intro), which can
 * never be delivered now (bytes still in the socket draw the kernel's RST
 * anyway); but a decoy that cannot be reached closes with FIN, like a web
 * server that is down.  While sniffing, a decoy that cannot be reached is
 * only noted (no server side): WhatsApp's clients must not depend on it.
 */
static void
conn_connect(struct relay_conn *c)
{
	struct relay_ctx *rc = c->rc;
	struct upstream *up = conn_group(c);

	for (;;) {
		struct sockaddr_storage ss;
		uint64_t now = loop_now(rc->loop);
		int fd, r;

		c->srv = upstream_next(up, &c->cur, now, &ss);
		if (c->srv == NULL) {
			log_debug("[listen %s]: no upstream server of '%s' "
			          "reachable",
			    c->ls->cfg->name, up->cfg->name);
			if (c->state == RELAY_ST_SNIFF) {
				conn_arm(c);
				return;
			}
			conn_close(c,
			    c->dir[CLIENT].pending > 0 &&
			        !(c->flags & (CONN_F_DECOY | CONN_F_DECOY_TLS)),
			    RELAY_RES_UPSTREAM_FAILED);
			return;
		}
		if (c->attempts++ > 0)
			RELAY_CNT_ADD(rc->cnt, connect_retries, 1);
		fd = rc->sys->socket(ss.ss_family);
		if (fd < 0) {
			/* Our own shortage, not the server's fault. */
			log_debug("upstream socket: %s", strerror(errno));
			RELAY_CNT_ADD(rc->cnt, errors, 1);
			conn_close(c, true, RELAY_RES_ERROR);
			return;
		}
		/* Before connect: the window scale follows the buffer. */
		if (c->gen->cfg->socket_buffers != 0)
			rc->sys->buffers(fd, c->gen->cfg->socket_buffers);
		r = rc->sys->connect(fd, (struct sockaddr *)&ss,
		    addr_len((struct sockaddr *)&ss));
		if (r == 0 || errno == EINPROGRESS) {
			c->side[SERVER].io.fd = fd;
			/* Nothing carries over from a failed attempt. */
			c->side[SERVER].end.rd_ready =
			    c->side[SERVER].end.wr_ready = false;
			c->side[SERVER].end.drain = c->side[SERVER].end.eof =
			    false;
			c->side[SERVER].end.urgent = false;
			if (rc->sys->watch(rc->loop, &c->side[SERVER].io) !=
			    0) {
				RELAY_CNT_ADD(rc->cnt, errors, 1);
				conn_close(c, true, RELAY_RES_ERROR);
				return;
			}
			c->attempt_start_us = loop_clock_us();
			/* SNIFF keeps its own deadline: conn_deadline. */
			if (c->state != RELAY_ST_SNIFF)
				c->deadline = attempt_deadline(c);
			conn_arm(c);
			return;
		}
		if (log_enabled(LOG_DEBUG))
			log_debug("connect to upstream %s: %s", c->srv->label,
			    strerror(errno));
		rc->sys->close(fd, false);
		upstream_report(c->srv, false, now, 0);
	}
}

static void
origin_set(union relay_sa *dst, const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		memcpy(&dst->in, ss, sizeof(dst->in));
	else
		memcpy(&dst->in6, ss, sizeof(dst->in6));
}

/*
 * Takes what the client sent along with its Finished before dialing.  A
 * client that has already hung up without sending a byte (a scanner, a
 * probe, a phone that changed its mind) is closed here, and no upstream is
 * dialed for nothing.  Bytes read wait in the buffer for the upstream.
 * Returns 0 to go on, -1 when the connection was closed.
 */
static int
tls_first_read(struct relay_conn *c)
{
	ssize_t n = copy_fill(&c->dir[CLIENT], &c->side[CLIENT].end,
	    &c->rc->pool, loop_now(c->rc->loop));

	if (n > 0)
		return 0;
	if (n == COPY_IO_AGAIN || n == COPY_IO_AGAIN_WRITE)
		return 0;
	if (n == COPY_IO_ALERT)
		conn_linger(c, RELAY_RES_ERROR);
	else
		conn_close(c, n != COPY_IO_EOF, RELAY_RES_ERROR);
	return -1;
}

/*
 * Camouflage.  On a listener with a decoy, every connection first dials
 * the decoy (the operator's web server) while its first bytes are read:
 * the decoy's own clock runs from the start, so an empty connection, a
 * probe's junk or a browser's request get exactly the decoy's answer,
 * timing and close.  Bytes that are WhatsApp's intro (intro.h) go to the
 * upstream instead, and the decoy sees an empty connection closed.
 */

static void sniff_decide(struct relay_conn *c, enum intro_verdict v);

/* Reads the client's first bytes until they decide, or would block. */
static void
sniff_read(struct relay_conn *c)
{
	struct copy_dir *d = &c->dir[CLIENT];
	struct copy_end *e = &c->side[CLIENT].end;

	for (;;) {
		ssize_t n =
		    copy_fill(d, e, &c->rc->pool, loop_now(c->rc->loop));
		enum intro_verdict v;

		if (n == COPY_IO_AGAIN || n == COPY_IO_AGAIN_WRITE) {
			/* A prefix is in: the rest has RELAY_INTRO_GRACE_MS. */
			if (d->pending > 0 &&
			    conn_deadline(c) < c->timer.deadline)
				conn_arm(c);
			return;
		}
		if (n == COPY_IO_ALERT) {
			conn_linger(c, RELAY_RES_ERROR);
			return;
		}
		if (n < 0 && n != COPY_IO_EOF) {
			conn_close(c, true, RELAY_RES_ERROR);
			return;
		}
		v = d->pending > 0 ? intro_classify(d->buf, d->pending)
		                   : INTRO_MORE;
		/* Never more than INTRO_MAX bytes before a verdict. */
		INVARIANT(v != INTRO_MORE || d->pending < INTRO_MAX);
		if (n == COPY_IO_EOF) {
			/* The FIN follows what came before it, wherever. */
			e->eof = true;
			sniff_decide(c, v == INTRO_WHATSAPP ? v : INTRO_OTHER);
			return;
		}
		if (v != INTRO_MORE) {
			sniff_decide(c, v);
			return;
		}
	}
}

/* The first bytes decided, the window closed, or the decoy spoke first. */
static void
sniff_decide(struct relay_conn *c, enum intro_verdict v)
{
	if (v == INTRO_WHATSAPP) {
		RELAY_CNT_ADD(c->lc, camo_whatsapp, 1);
		side_close(&c->side[SERVER], false);
		c->flags = 0;
		memset(&c->cur, 0, sizeof(c->cur));
		c->attempts = 0;
		conn_enter(c, RELAY_ST_CONNECTING);
		conn_connect(c);
		return;
	}
	RELAY_CNT_ADD(c->lc, camo_decoy, 1);
	if (c->side[SERVER].io.fd < 0) {
		/* Like a web server that is down, at the earliest moment. */
		conn_close(c, false, RELAY_RES_UPSTREAM_FAILED);
		return;
	}
	if (c->flags & CONN_F_UP) {
		conn_stream(c);
		return;
	}
	conn_enter(c, RELAY_ST_CONNECTING);
	c->deadline = attempt_deadline(c);
	conn_arm(c);
}

/* The client is ready for relaying: camouflage, or straight upstream. */
static void
conn_ready(struct relay_conn *c)
{
	if (c->ls->decoy == NULL) {
		conn_enter(c, RELAY_ST_CONNECTING);
		if (c->tls == NULL || tls_first_read(c) == 0)
			conn_connect(c);
		return;
	}
	conn_enter(c, RELAY_ST_SNIFF);
	c->flags = CONN_F_DECOY;
	c->deadline =
	    loop_now(c->rc->loop) + c->gen->cfg->timeouts.handshake_ms;
	conn_connect(c);
	if (c->state == RELAY_ST_SNIFF)
		sniff_read(c);
}

static void
sniff_io(struct relay_conn *c, int s, uint32_t events)
{
	if (s == CLIENT) {
		sniff_read(c);
		return;
	}
	if (!(c->flags & CONN_F_UP)) {
		if (events & (EPOLLHUP | EPOLLERR)) {
			if (log_enabled(LOG_DEBUG)) {
				int err = c->rc->sys->sock_error(
				    c->side[SERVER].io.fd);

				log_debug("connect to decoy %s: %s",
				    c->srv->label,
				    strerror(err ? err : ECONNRESET));
			}
			conn_attempt_failed(c);
			return;
		}
		if (!(events & EPOLLOUT))
			return;
		upstream_report(c->srv, true, loop_now(c->rc->loop),
		    loop_clock_us() - c->attempt_start_us);
		c->flags |= CONN_F_UP;
	}
	/* The decoy spoke or hung up first: the connection is its. */
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		sniff_decide(c, INTRO_OTHER);
}

static void
sniff_timeout(struct relay_conn *c)
{
	uint64_t now = loop_now(c->rc->loop);

	if (decoy_connecting(c) && attempt_deadline(c) <= now) {
		log_debug("connect to decoy %s timed out", c->srv->label);
		conn_attempt_failed(c);
		return;
	}
	/* Not WhatsApp's within the window: the decoy answers the rest. */
	sniff_decide(c, INTRO_OTHER);
}

/* Advances the TLS handshake; on success, goes on to connect upstream. */
static void
tls_step(struct relay_conn *c)
{
	enum tls_status st = tls_handshake(c->tls);

	if (st == TLS_WANT_READ || st == TLS_WANT_WRITE)
		return;
	if (st != TLS_DONE) {
		log_debug("[listen %s]: TLS handshake failed: %s",
		    c->ls->cfg->name, tls_status_str(st));
		/* An alert went out: let the client read it. */
		if (st == TLS_ALERT)
			conn_linger(c, RELAY_RES_TLS_FAILED);
		else
			conn_close(c, false, RELAY_RES_TLS_FAILED);
		return;
	}
	RELAY_CNT_ADD(c->lc, tls_handshakes, 1);
	if (tls_conn_resumed(c->tls))
		RELAY_CNT_ADD(c->lc, tls_resumed, 1);
	conn_ready(c);
}

/* Starts the TLS handshake, with its own `handshake` deadline. */
static void
tls_start(struct relay_conn *c)
{
	struct relay_ctx *rc = c->rc;

	c->tls = tls_conn_new(c->ls->tls, c->side[CLIENT].io.fd);
	if (c->tls == NULL) {
		RELAY_CNT_ADD(rc->cnt, errors, 1);
		conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	c->side[CLIENT].end.ops = &tls_ops;
	/* After HELLO, one `handshake` still bounds both. */
	if (c->state != RELAY_ST_HELLO)
		c->deadline =
		    loop_now(rc->loop) + c->gen->cfg->timeouts.handshake_ms;
	conn_enter(c, RELAY_ST_TLS);
	conn_arm(c);
	/* The ClientHello may be in already (edge-triggered: no new event). */
	tls_step(c);
}

/*
 * HELLO.  The ClientHello is only peeked at (MSG_PEEK), so that the bytes
 * stay in the socket for whoever gets them: OpenSSL, or the passthrough
 * or decoy-tls group, untouched.  The parser says how many bytes it needs
 * to tell more, and FIONREAD says how many are in: a peek happens only
 * when they are, not at every segment of a ClientHello sent in pieces.
 * side[CLIENT].hello_need holds that need meanwhile; leaving HELLO gives
 * the field back to outq (-1: never looked at).
 */

/* The peek buffer: one per worker thread, only used within a call. */
static _Thread_local uint8_t hello_buf[HELLO_READ_MAX];

/* The raw bytes go to group flag's (passthrough or decoy-tls). */
static void
hello_raw(struct relay_conn *c, uint8_t flag)
{
	c->flags = flag;
	c->side[CLIENT].outq = -1;
	c->dir[CLIENT].spliceable = c->dir[SERVER].spliceable = true;
	conn_enter(c, RELAY_ST_CONNECTING);
	conn_connect(c);
}

static bool
sni_passes(const struct relay_conn *c, const struct hello_info *info)
{
	const struct cfg_strlist *pats = &c->ls->cfg->passthrough_sni;

	if (c->ls->passthrough == NULL || !info->has_sni)
		return false;
	for (size_t i = 0; i < pats->n; i++) {
		if (hello_name_match(pats->v[i], info->sni))
			return true;
	}
	return false;
}

static void
hello_read(struct relay_conn *c, uint32_t events)
{
	int fd = c->side[CLIENT].io.fd, avail = 0;
	bool closed = events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
	struct hello_info info;
	enum hello_result r;
	size_t need;
	ssize_t n;

	if (c->rc->sys->inq(fd, &avail) != 0 || avail < 0)
		avail = 0;
	if (avail < c->side[CLIENT].hello_need && !closed)
		return;
	if (avail > HELLO_READ_MAX)
		avail = HELLO_READ_MAX;
	n = c->rc->sys->recv(fd, hello_buf, (size_t)avail, MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	r = hello_parse(hello_buf, n > 0 ? (size_t)n : 0, &info, &need);
	if (r == HELLO_MORE && !closed && n >= 0) {
		c->side[CLIENT].hello_need = (int)need;
		return;
	}
	if (r == HELLO_NOT_TLS && c->ls->decoy_tls != NULL) {
		RELAY_CNT_ADD(c->lc, camo_decoy_tls, 1);
		hello_raw(c, CONN_F_DECOY_TLS);
		return;
	}
	if (r == HELLO_OK && sni_passes(c, &info)) {
		RELAY_CNT_ADD(c->lc, camo_passthrough, 1);
		hello_raw(c, CONN_F_PASS);
		return;
	}
	/*
	 * Ours: a ClientHello for another name, or none, or bytes OpenSSL
	 * answers as it always does (an alert for junk, a close for a hello
	 * cut short by FIN or RST).
	 */
	c->side[CLIENT].outq = -1;
	tls_start(c);
}

/* The client is ready for TLS: peek at its hello first, or handshake. */
static void
tls_begin(struct relay_conn *c)
{
	if (c->ls->passthrough == NULL && c->ls->decoy_tls == NULL) {
		tls_start(c);
		return;
	}
	conn_enter(c, RELAY_ST_HELLO);
	c->deadline =
	    loop_now(c->rc->loop) + c->gen->cfg->timeouts.handshake_ms;
	c->side[CLIENT].hello_need = 1;
	conn_arm(c);
	/* The ClientHello may be in already (edge-triggered: no new event). */
	hello_read(c, 0);
}

/*
 * Per-source limits (srclimit.h): admits a new connection of listener ls
 * from sa.  True when admitted (tk set if counted); false when refused,
 * counted under the limit that refused it.
 */
static bool
source_admit(struct relay_ctx *rc, struct gen *g, struct listener *ls,
    const struct sockaddr *sa, struct srclimit_ticket *tk)
{
	enum srclimit_verdict v;

	srclimit_ticket_init(tk);
	if (g->src == NULL)
		return true;
	v = srclimit_admit(g->src, &ls->src_rule, sa, loop_now(rc->loop), tk);
	if (v == SRCLIMIT_REFUSE_CONN)
		RELAY_CNT_ADD(&ls->state->cnt[rc->id], source_refused_conn, 1);
	else if (v == SRCLIMIT_REFUSE_RATE)
		RELAY_CNT_ADD(&ls->state->cnt[rc->id], source_refused_rate, 1);
	return v == SRCLIMIT_ADMIT || v == SRCLIMIT_ADMIT_FULL;
}

/* True when listener ls has a per-source limit in generation g. */
static bool
source_limited(const struct gen *g, const struct listener *ls)
{
	return g->src != NULL &&
	    (ls->src_rule.max_conn != 0 || ls->src_rule.rate != 0);
}

/*
 * Reads the inbound PROXY header.  The bytes are peeked, not taken, until
 * the header is whole: then exactly the header is consumed, and whatever
 * came with it stays in the socket as payload for the relay.
 */
static void
header_read(struct relay_conn *c, uint32_t events)
{
	struct relay_ctx *rc = c->rc;
	uint8_t buf[PP_MAX_HEADER];
	struct pp_header hdr;
	enum pp_result r;
	ssize_t n;

	n = c->rc->sys->recv(c->side[CLIENT].io.fd, buf, sizeof(buf), MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		/* Gone before saying who it is. */
		conn_close(c, n < 0, RELAY_RES_ERROR);
		return;
	}
	r = pp_parse(buf, (size_t)n, &hdr);
	if (r == PP_NEED_MORE) {
		/* The client shut its side: the header can never complete. */
		if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
			conn_close(c, false, RELAY_RES_PROXY_REJECTED);
		return;
	}
	if (r != PP_OK) {
		log_debug("[listen %s]: bad PROXY header: %s", c->ls->cfg->name,
		    pp_result_str(r));
		conn_close(c, false, RELAY_RES_PROXY_REJECTED);
		return;
	}
	if (c->rc->sys->recv(c->side[CLIENT].io.fd, buf, hdr.len, 0) !=
	    (ssize_t)hdr.len) {
		RELAY_CNT_ADD(rc->cnt, errors, 1);
		conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	if (hdr.has_addr) {
		c->origin = calloc(1, sizeof(*c->origin));
		if (c->origin == NULL) {
			RELAY_CNT_ADD(rc->cnt, errors, 1);
			conn_close(c, true, RELAY_RES_ERROR);
			return;
		}
		origin_set(&c->origin->src, &hdr.src);
		origin_set(&c->origin->dst, &hdr.dst);
		/*
		 * The source is the client the header names.  A header
		 * without addresses (LOCAL: the balancer's own checks) is
		 * not limited: its peer is the balancer, shared by all.
		 */
		if (source_limited(c->gen, c->ls) &&
		    !source_admit(
		        rc, c->gen, c->ls, &c->origin->src.sa, &c->src)) {
			conn_close(c, false, RELAY_RES_REFUSED_SOURCE);
			return;
		}
	}
	if (c->ls->tls != NULL) {
		tls_begin(c);
		return;
	}
	conn_ready(c);
}

/* True when the peer of fd may send a PROXY header to listener ls. */
static bool
proxy_trusted(const struct relay_ctx *rc, const struct listener *ls, int fd)
{
	const struct cfg_listen *cl = ls->cfg;
	struct sockaddr_storage peer;

	if (cl->trusted_text.n == 0)
		return true;
	if (rc->sys->peername(fd, &peer) != 0)
		return false;
	for (size_t i = 0; i < cl->trusted_text.n; i++) {
		if (addr_cidr_match(&cl->trusted[i], (struct sockaddr *)&peer))
			return true;
	}
	return false;
}

/* CONNECTING: the upstream socket connected or failed; the client left. */
static void
connecting_io(struct relay_conn *c, int s, uint32_t events)
{
	if (s == CLIENT) {
		/* The client gave up before we reached upstream. */
		if (events & (EPOLLHUP | EPOLLERR))
			conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	/* A failed connect reports EPOLLERR: SO_ERROR says why. */
	if (events & (EPOLLHUP | EPOLLERR)) {
		if (log_enabled(LOG_DEBUG)) {
			int err = c->rc->sys->sock_error(c->side[SERVER].io.fd);

			log_debug("connect to upstream %s: %s", c->srv->label,
			    strerror(err ? err : ECONNRESET));
		}
		conn_attempt_failed(c);
	} else if (events & EPOLLOUT) {
		conn_connected(c);
	}
}

static void
header_io(struct relay_conn *c, int s, uint32_t events)
{
	(void)s;
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		header_read(c, events);
}

static void
hello_io(struct relay_conn *c, int s, uint32_t events)
{
	if (s == CLIENT)
		hello_read(c, events);
}

static void
tls_io(struct relay_conn *c, int s, uint32_t events)
{
	(void)events;
	if (s == CLIENT)
		tls_step(c);
}

static void
streaming_io(struct relay_conn *c, int s, uint32_t events)
{
	(void)s;
	(void)events;
	conn_run(c);
}

static void
linger_io(struct relay_conn *c, int s, uint32_t events)
{
	(void)s;
	(void)events;
	linger_read(c);
}

/* Nothing relayed yet: FIN, like an ordinary server. */
static void
header_timeout(struct relay_conn *c)
{
	discard_input(c);
	conn_close(c, false, RELAY_RES_TIMEOUT);
}

/* Nothing answered yet: FIN, like an ordinary server. */
static void
hello_timeout(struct relay_conn *c)
{
	c->side[CLIENT].outq = -1;
	discard_input(c);
	conn_close(c, false, RELAY_RES_TLS_FAILED);
}

static void
tls_timeout(struct relay_conn *c)
{
	discard_input(c);
	conn_close(c, false, RELAY_RES_TLS_FAILED);
}

static void
connecting_timeout(struct relay_conn *c)
{
	log_debug("connect to upstream %s timed out", c->srv->label);
	conn_attempt_failed(c);
}

static void
linger_timeout(struct relay_conn *c)
{
	conn_close(c, false, RELAY_RES_ERROR);
}

/*
 * The state machine in one place: each state's handler for a side's
 * readiness and for its deadline.  Every state change goes through
 * conn_enter(), which checks it against relay_next[].
 */
static const struct relay_state_ops {
	const char *name;
	void (*io)(struct relay_conn *c, int s, uint32_t events);
	void (*timeout)(struct relay_conn *c);
} relay_states[RELAY_ST_MAX] = {
    [RELAY_ST_NEW] = {"new", NULL, NULL},
    [RELAY_ST_HEADER] = {"header", header_io, header_timeout},
    [RELAY_ST_HELLO] = {"hello", hello_io, hello_timeout},
    [RELAY_ST_TLS] = {"tls", tls_io, tls_timeout},
    [RELAY_ST_SNIFF] = {"sniff", sniff_io, sniff_timeout},
    [RELAY_ST_CONNECTING] = {"connecting", connecting_io, connecting_timeout},
    [RELAY_ST_STREAMING] = {"streaming", streaming_io, conn_timeout},
    [RELAY_ST_LINGER] = {"linger", linger_io, linger_timeout},
    [RELAY_ST_CLOSED] = {"closed", NULL, NULL},
};

static void
side_cb(struct loop_io *io, uint32_t events)
{
	struct relay_side *side = container_of(io, struct relay_side, io);
	struct relay_conn *c = side->c;
	const struct relay_state_ops *st = &relay_states[c->state];

	if (st->io == NULL)
		return;
	if (events & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		side->end.rd_ready = true;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI))
		side->end.drain = true;
	if (events & EPOLLPRI)
		side->end.urgent = true;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		side->end.wr_ready = true;
	/* TLS may need to read to write and the reverse: retry both ways. */
	if (side == &c->side[CLIENT] && c->ls->tls != NULL)
		side->end.rd_ready = side->end.wr_ready = true;
	st->io(c, side == &c->side[CLIENT] ? CLIENT : SERVER, events);
}

static void
conn_timer_cb(struct loop_timer *t)
{
	struct relay_conn *c = container_of(t, struct relay_conn, timer);
	uint64_t now = loop_now(c->rc->loop);
	uint64_t dl = conn_deadline(c);

	if (dl > now) {
		loop_timer_set(c->rc->loop, &c->timer, dl);
		return;
	}
	INVARIANT(relay_states[c->state].timeout != NULL);
	relay_states[c->state].timeout(c);
}

struct relay_ctx *
relay_ctx_new(struct loop *loop, unsigned id, struct relay_counters *cnt,
    const struct relay_sys *sys, relay_gone_cb gone, void *arg)
{
	struct relay_ctx *rc = calloc(1, sizeof(*rc));

	if (rc == NULL)
		return NULL;
	rc->loop = loop;
	rc->id = id;
	rc->cnt = cnt;
	rc->sys = sys;
	rc->gone = gone;
	rc->gone_arg = arg;
	if (copy_pool_init(&rc->pool) != 0) {
		relay_ctx_free(rc);
		return NULL;
	}
	return rc;
}

void
relay_ctx_free(struct relay_ctx *rc)
{
	if (rc == NULL)
		return;
	relay_close_all(rc);
	copy_pool_cleanup(&rc->pool);
	free(rc);
}

void
relay_pool_trim(struct relay_ctx *rc)
{
	copy_pool_trim(&rc->pool);
}

size_t
relay_conns(const struct relay_ctx *rc)
{
	return rc->nconns;
}

void
relay_accept(struct relay_ctx *rc, struct gen *g, struct listener *ls, int fd)
{
	const struct cfg *cfg = g->cfg;
	unsigned lmax = ls->cfg->maxconn;
	struct srclimit_ticket tk;
	struct relay_conn *c;

	RELAY_CNT_ADD(rc->cnt, accepted, 1);
	if (atomic_fetch_add_explicit(
	        &relay_active_total, 1, memory_order_relaxed) >= cfg->maxconn) {
		atomic_fetch_sub_explicit(
		    &relay_active_total, 1, memory_order_relaxed);
		goto refuse;
	}
	if (atomic_fetch_add_explicit(&ls->state->active, 1,
	        memory_order_relaxed) >= (lmax ? lmax : UINT32_MAX)) {
		atomic_fetch_sub_explicit(
		    &ls->state->active, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(
		    &relay_active_total, 1, memory_order_relaxed);
		goto refuse;
	}
	srclimit_ticket_init(&tk);
	/* On accept-proxy listeners the source comes with the header. */
	if (!ls->cfg->accept_proxy && source_limited(g, ls)) {
		struct sockaddr_storage peer;

		if (rc->sys->peername(fd, &peer) == 0 &&
		    !source_admit(rc, g, ls, (struct sockaddr *)&peer, &tk)) {
			atomic_fetch_sub_explicit(
			    &ls->state->active, 1, memory_order_relaxed);
			atomic_fetch_sub_explicit(
			    &relay_active_total, 1, memory_order_relaxed);
			RELAY_CNT_ADD(&ls->state->cnt[rc->id],
			    closed[RELAY_RES_REFUSED_SOURCE], 1);
			rc->sys->close(fd, false);
			return;
		}
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		srclimit_release(g->src, &tk);
		atomic_fetch_sub_explicit(
		    &ls->state->active, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(
		    &relay_active_total, 1, memory_order_relaxed);
		RELAY_CNT_ADD(
		    &ls->state->cnt[rc->id], closed[RELAY_RES_ERROR], 1);
		rc->sys->close(fd, false);
		return;
	}
	c->rc = rc;
	c->gen = g;
	gen_ref(c->gen);
	c->src = tk;
	c->ls = ls;
	c->lc = &ls->state->cnt[rc->id];
	c->state = RELAY_ST_NEW;
	for (int s = 0; s < 2; s++) {
		c->side[s].c = c;
		c->side[s].io.fd = -1;
		c->side[s].io.cb = side_cb;
		c->side[s].outq = -1;
		c->side[s].end.ops = &plain_ops;
		copy_dir_init(&c->dir[s]);
		/* OpenSSL must see a TLS client's bytes: no splice. */
		c->dir[s].spliceable = ls->tls == NULL;
	}
	c->side[CLIENT].io.fd = fd;
	/* The handshake is over: this bounds the queues, not the scale. */
	if (cfg->socket_buffers != 0)
		rc->sys->buffers(fd, cfg->socket_buffers);
	loop_timer_init(&c->timer, conn_timer_cb);
	loop_task_init(&c->task, conn_continue_task);
	c->next = rc->conns;
	if (rc->conns != NULL)
		rc->conns->prev = c;
	rc->conns = c;
	rc->nconns++;
	RELAY_CNT_ADD(rc->cnt, active, 1);
	if (rc->sys->watch(rc->loop, &c->side[CLIENT].io) != 0) {
		RELAY_CNT_ADD(rc->cnt, errors, 1);
		conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	if (ls->cfg->accept_proxy) {
		conn_enter(c, RELAY_ST_HEADER);
		if (!proxy_trusted(rc, ls, fd)) {
			conn_close(c, false, RELAY_RES_PROXY_REJECTED);
			return;
		}
		c->deadline =
		    loop_now(rc->loop) + g->cfg->timeouts.handshake_ms;
		conn_arm(c);
		return;
	}
	if (ls->tls != NULL) {
		tls_begin(c);
		return;
	}
	conn_ready(c);
	return;
refuse:
	RELAY_CNT_ADD(
	    &ls->state->cnt[rc->id], closed[RELAY_RES_REFUSED_MAXCONN], 1);
	rc->sys->close(fd, false);
}
