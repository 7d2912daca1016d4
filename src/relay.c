/*
 * relay: connection state machine and the copy loops.
 *
 * A direction d copies from side[d] to side[!d].  It starts through a
 * 16 KiB buffer (recv/send: a chat message costs a read and a write); when
 * one read fills the buffer, the direction is bulk and from then on goes
 * through dir[d]'s pipe: socket -> pipe -> socket by splice(2), never
 * through user space.  Buffers and pipes are taken from the worker's pools
 * when bytes arrive and given back as soon as they are empty, so an idle
 * connection holds two sockets and this struct only.  A TLS client's bytes
 * always go through the buffer (OpenSSL must see them).
 *
 * Sockets are registered edge-triggered; rd_ready/wr_ready remember an
 * edge until a syscall says EAGAIN, or until a short recv/send says the
 * socket is empty/full (then the next edge is sure to come; a FIN already
 * reported keeps reading until 0).  Invariants:
 *  - dir[d].pending bytes sit in dir[d]'s buffer, or in its pipe once
 *    bulk, never more than its size;
 *  - side[s].eof: s sent FIN (read returned 0); we never read s again;
 *  - side[s].shut: we sent FIN to s, after dir[!s] was empty and
 *    side[!s].eof; nothing is written to s again;
 *  - both sides shut: the connection is complete and closes cleanly.
 * An error on either socket closes both with RST (SO_LINGER 0), so that
 * neither peer mistakes a cut stream for a complete one.
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

#include "gen.h"
#include "invariant.h"
#include "log.h"
#include "loop.h"
#include "proxyproto.h"
#include "relay.h"
#include "tls.h"
#include "upstream.h"

#define RELAY_PIPE_SIZE (256 * 1024)
#define RELAY_POOL_RESERVE 2
#define RELAY_POOL_MAX 256
/* I/O calls per connection per wake-up, for fairness. */
#define RELAY_BUDGET 16
/* A direction's buffer: one TLS record's worth; a full read turns bulk. */
#define RELAY_BUF 16384
#define RELAY_BUF_POOL_MAX 64
/* How long a connection closed after a TLS alert reads the client's rest. */
#define RELAY_LINGER_MS 1000
/* Bytes thrown away per call while lingering (MSG_TRUNC: not copied). */
#define RELAY_DISCARD (1 << 20)

#define container_of(ptr, type, member)                                        \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/*
 * A connection's states; relay_states[] below holds each one's handlers,
 * relay_next[] the transitions allowed out of it.
 */
enum relay_state {
	RELAY_ST_NEW = 0, /* just accepted */
	RELAY_ST_HEADER, /* waiting for the PROXY header (accept-proxy) */
	RELAY_ST_TLS, /* TLS handshake with the client */
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
	uint64_t last; /* last I/O, loop ms */
	bool rd_ready, wr_ready;
	/*
	 * An event reported a FIN, an error or urgent data: a short read no
	 * longer proves the socket empty (recv stops at the urgent mark), so
	 * reads go on until 0 or EAGAIN.
	 */
	bool drain;
	/*
	 * EPOLLPRI: urgent data is on its way.  splice(2) stops at the urgent
	 * mark for good (EAGAIN while bytes wait); a recv(2) reads through it
	 * (SO_OOBINLINE: the byte stays in the stream) and clears the mark.
	 */
	bool urgent;
	bool eof; /* peer sent FIN, read returned 0 */
	bool shut; /* we sent FIN */
};

struct relay_pipe {
	int rd, wr; /* -1 when none */
	uint32_t cap;
};

/* A worker's idle pipes and buffers. */
struct relay_pool {
	struct relay_pipe *v; /* owned array */
	size_t n, cap;
	size_t low; /* fewest idle pipes since the last trim */
	uint8_t **bufs; /* owned array of owned idle relay buffers */
	size_t nbufs;
};

/*
 * One direction's bytes in flight: in a buffer at buf + off, or in a pipe
 * once the direction is bulk.  A plain direction starts with the buffer
 * (recv/send: a chat message costs two syscalls and no pipe) and turns
 * bulk for good when a read fills the buffer; from then on bytes go
 * socket -> pipe -> socket by splice(2).  A TLS client's bytes always pass
 * through the buffer, to be decrypted or encrypted.
 */
struct relay_dir {
	struct relay_pipe p;
	uint8_t *buf; /* owned, RELAY_BUF bytes, or NULL */
	uint32_t off;
	uint32_t pending; /* in buf, or in the pipe when bulk */
	bool bulk;
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
	unsigned id; /* the worker's: index of per-listener counters */
	struct relay_counters *cnt; /* borrowed: the worker's */
	struct relay_pool pool;
	struct relay_conn *conns; /* owned list of live connections */
	size_t nconns;
	relay_gone_cb gone;
	void *gone_arg; /* borrowed */
};

struct relay_conn {
	struct relay_side side[2];
	struct relay_dir dir[2]; /* indexed by source side */
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
	enum relay_state state;
	uint8_t attempts;
	uint8_t turn; /* the direction conn_run serves first */
	struct relay_conn *prev, *next; /* rc's list */
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
    [RELAY_ST_NEW] = ST(HEADER) | ST(TLS) | ST(CONNECTING) | ST(CLOSED),
    [RELAY_ST_HEADER] = ST(TLS) | ST(CONNECTING) | ST(CLOSED),
    [RELAY_ST_TLS] = ST(CONNECTING) | ST(LINGER) | ST(CLOSED),
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

/* Pipe pool. */

static int
pipe_new(struct relay_pipe *p)
{
	int fds[2], sz;

	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
		return -1;
	/* Failure (a user over pipe-user-pages-soft) keeps the default. */
	(void)fcntl(fds[1], F_SETPIPE_SZ, RELAY_PIPE_SIZE);
	sz = fcntl(fds[1], F_GETPIPE_SZ);
	p->rd = fds[0];
	p->wr = fds[1];
	p->cap = sz > 0 ? (uint32_t)sz : 65536;
	return 0;
}

static int
pipe_take(struct relay_ctx *rc, struct relay_pipe *p)
{
	struct relay_pool *pool = &rc->pool;

	if (pool->n > 0) {
		*p = pool->v[--pool->n];
		if (pool->n < pool->low)
			pool->low = pool->n;
		return 0;
	}
	return pipe_new(p);
}

/* Returns p to the pool, or closes it when it holds bytes or is surplus. */
static void
pipe_give(struct relay_ctx *rc, struct relay_pipe *p, bool dirty)
{
	struct relay_pool *pool = &rc->pool;

	if (p->rd < 0)
		return;
	if (!dirty && pool->n < pool->cap) {
		pool->v[pool->n++] = *p;
	} else {
		close(p->rd);
		close(p->wr);
	}
	p->rd = p->wr = -1;
	p->cap = 0;
}

/* Gives dir a buffer from the pool (or a new one); returns 0 or -1. */
static int
buf_take(struct relay_ctx *rc, struct relay_dir *dir)
{
	struct relay_pool *pool = &rc->pool;

	if (dir->buf != NULL)
		return 0;
	if (pool->nbufs > 0)
		dir->buf = pool->bufs[--pool->nbufs];
	else
		dir->buf = malloc(RELAY_BUF);
	dir->off = 0;
	return dir->buf != NULL ? 0 : -1;
}

static void
buf_give(struct relay_ctx *rc, struct relay_dir *dir)
{
	struct relay_pool *pool = &rc->pool;

	if (dir->buf == NULL)
		return;
	if (pool->nbufs < RELAY_BUF_POOL_MAX)
		pool->bufs[pool->nbufs++] = dir->buf;
	else
		free(dir->buf);
	dir->buf = NULL;
	dir->off = 0;
}

static int
pool_init(struct relay_ctx *rc)
{
	struct relay_pool *pool = &rc->pool;

	pool->cap = RELAY_POOL_MAX;
	pool->v = calloc(pool->cap, sizeof(*pool->v));
	pool->bufs = calloc(RELAY_BUF_POOL_MAX, sizeof(*pool->bufs));
	if (pool->v == NULL || pool->bufs == NULL)
		return -1;
	/* A reserve, so that relaying goes on when fds run out. */
	while (pool->n < RELAY_POOL_RESERVE) {
		struct relay_pipe p;

		if (pipe_new(&p) != 0)
			return -1;
		pool->v[pool->n++] = p;
	}
	pool->low = pool->n;
	return 0;
}

void
relay_pool_trim(struct relay_ctx *rc)
{
	struct relay_pool *pool = &rc->pool;

	/* Pipes that stayed idle for a whole period are not needed. */
	while (pool->low > RELAY_POOL_RESERVE && pool->n > RELAY_POOL_RESERVE) {
		struct relay_pipe *p = &pool->v[--pool->n];

		close(p->rd);
		close(p->wr);
		pool->low--;
	}
	pool->low = pool->n;
}

static void
pool_cleanup(struct relay_ctx *rc)
{
	struct relay_pool *pool = &rc->pool;

	for (size_t i = 0; i < pool->n; i++) {
		close(pool->v[i].rd);
		close(pool->v[i].wr);
	}
	free(pool->v);
	pool->v = NULL;
	pool->n = pool->cap = pool->low = 0;
	for (size_t i = 0; i < pool->nbufs; i++)
		free(pool->bufs[i]);
	free(pool->bufs);
	pool->bufs = NULL;
	pool->nbufs = 0;
}

/* What a read or write through a side's transport did, when not bytes. */
enum {
	IO_EOF = 0, /* reads only: the peer finished */
	IO_WANT_READ = -1, /* retry when the socket is readable */
	IO_WANT_WRITE = -2, /* retry when the socket is writable */
	IO_ERROR = -3, /* the connection must be aborted */
	IO_ALERT = -4, /* TLS protocol error: an alert went to the client */
};

/* What moving a direction's bytes came to. */
enum {
	PUMP_OK = 0, /* moved what it could; the connection goes on */
	PUMP_CUT = -1, /* a socket failed: RST to both peers */
	PUMP_ALERT = -2, /* TLS protocol error: linger, RST upstream */
};

/* Connection life. */

static void conn_free_task(struct loop_task *t);
static void conn_continue_task(struct loop_task *t);
static void conn_timer_cb(struct loop_timer *t);
static void side_cb(struct loop_io *io, uint32_t events);
static void conn_connect(struct relay_conn *c);
static void conn_close(
    struct relay_conn *c, bool abort_peers, enum relay_result result);
static ssize_t dir_fill(struct relay_conn *c, int d, uint64_t now);
static void linger_read(struct relay_conn *c);

/*
 * Client sockets inherit TCP_NODELAY, keep-alive and SO_OOBINLINE from
 * their listening socket (gen.c).  An upstream socket needs Nagle off (its
 * idle time is bounded by the `server` timeout) and urgent data inline, so
 * that an urgent byte is relayed in its place instead of dropped.
 */
static void
upstream_sockopts(int fd)
{
	int on = 1;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
	(void)setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on));
}

/* Closes a side's socket; with RST instead of FIN when abort. */
static void
side_close(struct relay_side *side, bool abort)
{
	if (side->io.fd < 0)
		return;
	if (abort) {
		struct linger lg = {.l_onoff = 1, .l_linger = 0};

		(void)setsockopt(
		    side->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	/* close(2) also removes the fd from the epoll set. */
	close(side->io.fd);
	side->io.fd = -1;
}

/* Gives back c's pipes, buffers and TLS state. */
static void
conn_release(struct relay_conn *c)
{
	for (int d = 0; d < 2; d++) {
		pipe_give(c->rc, &c->dir[d].p, c->dir[d].pending > 0);
		buf_give(c->rc, &c->dir[d]);
		c->dir[d].pending = 0;
	}
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

/*
 * True when side s cannot be idle: bytes it sent wait in the relay for
 * the other side, and nothing waits for s.
 */
static bool
conn_excused(const struct relay_conn *c, int s)
{
	return c->dir[s].pending > 0 && c->dir[!s].pending == 0;
}

/* The earliest moment a timeout ends this connection. */
static uint64_t
conn_deadline(const struct relay_conn *c)
{
	const struct cfg_timeouts *t = &c->gen->cfg->timeouts;
	uint64_t dl[2];

	if (c->state != RELAY_ST_STREAMING)
		return c->deadline;
	for (int s = 0; s < 2; s++) {
		const struct relay_side *side = &c->side[s];
		/*
		 * Once we sent FIN to a side, it only has to acknowledge and
		 * finish: the shorter "fin" timeout applies (FIN_WAIT).
		 */
		bool half = side->shut;
		uint64_t to = s == CLIENT
		    ? (half ? t->client_fin_ms : t->client_ms)
		    : (half ? t->server_fin_ms : t->server_ms);

		/*
		 * Backpressure is not idleness: while s's bytes wait for the
		 * other side, s's clock stops and the other side's own clock
		 * (which only runs on what it takes) measures the stall.
		 * Unless both ways are stuck: then both clocks run.
		 */
		if (conn_excused(c, s))
			dl[s] = UINT64_MAX;
		else
			dl[s] = side->last + to;
	}
	return dl[0] < dl[1] ? dl[0] : dl[1];
}

static void
conn_arm(struct relay_conn *c)
{
	loop_timer_set(c->rc->loop, &c->timer, conn_deadline(c));
}

/* Counts n bytes of direction d delivered to its destination at now. */
static void
dir_sent(struct relay_conn *c, int d, size_t n, uint64_t now)
{
	/* Both ends of a moving direction are busy, not idle. */
	c->side[d].last = now;
	c->side[!d].last = now;
	if (d == CLIENT)
		RELAY_CNT_ADD(c->lc, bytes_in, (uint64_t)n);
	else
		RELAY_CNT_ADD(c->lc, bytes_out, (uint64_t)n);
}

/*
 * Direction d is done (its source sent FIN, all of it delivered): FIN to
 * its destination.  When the other way is done too, close(2) follows at
 * once and sends the FIN itself.  ENOTCONN when the peer is gone: the next
 * write says.
 */
static void
dir_finish(struct relay_conn *c, int d)
{
	INVARIANT(c->side[d].eof && c->dir[d].pending == 0);
	if (!c->side[d].shut)
		(void)shutdown(c->side[!d].io.fd, SHUT_WR);
	c->side[!d].shut = true;
}

/*
 * splice(2) never reads past an urgent mark: one recv(2) into dir[d]'s
 * buffer takes the urgent byte (inline) and what follows, and clears the
 * mark; the buffer drains before splicing resumes.  Or it confirms a FIN.
 * Returns PUMP_*.
 */
static int
pump_recv(struct relay_conn *c, int d, uint64_t now)
{
	struct relay_side *src = &c->side[d];
	ssize_t n;

	src->urgent = false;
	n = dir_fill(c, d, now);
	if (n > 0)
		return PUMP_OK;
	buf_give(c->rc, &c->dir[d]);
	if (n == IO_EOF) {
		src->eof = true;
		src->last = now;
		return PUMP_OK;
	}
	if (n == IO_WANT_READ) {
		src->rd_ready = false;
		return PUMP_OK;
	}
	return PUMP_CUT;
}

/*
 * Moves what it can in direction d through its pipe.  Returns PUMP_*.
 * Spends *budget.
 */
static int
pump(struct relay_conn *c, int d, int *budget)
{
	struct relay_ctx *rc = c->rc;
	struct relay_side *src = &c->side[d], *dst = &c->side[!d];
	struct relay_dir *dir = &c->dir[d];
	uint64_t now = loop_now(rc->loop);

	if (dst->shut)
		return PUMP_OK;
	while (*budget > 0) {
		bool progress = false;
		ssize_t n;

		if (dir->pending > 0 && dst->wr_ready) {
			n = splice(dir->p.rd, NULL, dst->io.fd, NULL,
			    dir->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				dir->pending -= (uint32_t)n;
				dir_sent(c, d, (size_t)n, now);
				progress = true;
			} else if (n < 0 && errno == EAGAIN) {
				dst->wr_ready = false;
			} else if (n < 0 && errno != EINTR) {
				return PUMP_CUT;
			}
			(*budget)--;
		}
		if (dir->pending == 0 && src->eof) {
			pipe_give(rc, &dir->p, false);
			dir_finish(c, d);
			return PUMP_OK;
		}
		if (!src->eof && src->rd_ready &&
		    (dir->p.rd < 0 || dir->pending < dir->p.cap)) {
			if (dir->p.rd < 0 && pipe_take(rc, &dir->p) != 0) {
				log_debug(
				    "no pipe for a relay: %s", strerror(errno));
				return PUMP_CUT;
			}
			n = splice(src->io.fd, NULL, dir->p.wr, NULL,
			    dir->p.cap - dir->pending,
			    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				dir->pending += (uint32_t)n;
				src->last = now;
				progress = true;
			} else if (n == 0 || (errno == EAGAIN && src->urgent)) {
				/*
				 * splice stops at an urgent mark: EAGAIN, or 0
				 * once the peer's FIN is in too, so 0 is no
				 * proof of EOF.  Once the pipe is empty, one
				 * recv(2) reads on, or confirms the FIN.
				 */
				int r;

				if (dir->pending > 0)
					goto next;
				pipe_give(rc, &dir->p, false);
				r = pump_recv(c, d, now);
				if (r != PUMP_OK || dir->buf != NULL)
					return r;
				progress = true; /* a FIN, or nothing */
			} else if (errno == EAGAIN) {
				/*
				 * With bytes in the pipe, EAGAIN may mean the
				 * pipe is out of slots (or splice stopped at an
				 * urgent mark), not that the socket is empty:
				 * keep the edge and try again once the pipe
				 * drains.
				 */
				if (dir->pending == 0)
					src->rd_ready = false;
			} else if (errno != EINTR) {
				return PUMP_CUT;
			}
		next:
			(*budget)--;
		}
		if (!progress)
			break;
	}
	if (dir->pending == 0)
		pipe_give(rc, &dir->p, false);
	return PUMP_OK;
}

static ssize_t
tls_io_result(size_t n, enum tls_status st)
{
	if (n > 0)
		return (ssize_t)n;
	switch (st) {
	case TLS_EOF:
		return IO_EOF;
	case TLS_WANT_READ:
		return IO_WANT_READ;
	case TLS_WANT_WRITE:
		return IO_WANT_WRITE;
	case TLS_ALERT:
		return IO_ALERT;
	default:
		return IO_ERROR;
	}
}

/*
 * The buffered transports: the client side of a TLS listener goes through
 * OpenSSL, the other side through recv/send.  Return bytes (> 0) or IO_*.
 */
static ssize_t
side_read(struct relay_conn *c, int s, void *buf, size_t len)
{
	enum tls_status st = TLS_FAIL;
	ssize_t n;

	if (s == CLIENT && c->tls != NULL) {
		size_t got = tls_read(c->tls, buf, len, &st);

		return tls_io_result(got, st);
	}
	n = recv(c->side[s].io.fd, buf, len, 0);
	if (n >= 0)
		return n;
	/* Workers block every signal: no EINTR here. */
	if (errno == EAGAIN)
		return IO_WANT_READ;
	return IO_ERROR;
}

static ssize_t
side_write(struct relay_conn *c, int s, const void *buf, size_t len)
{
	enum tls_status st = TLS_FAIL;
	ssize_t n;

	if (s == CLIENT && c->tls != NULL) {
		size_t put = tls_write(c->tls, buf, len, &st);

		n = tls_io_result(put, st);
		/* A write waits for writability, whatever TLS asked for. */
		return n == IO_WANT_READ ? IO_WANT_WRITE : n;
	}
	n = send(c->side[s].io.fd, buf, len, MSG_NOSIGNAL);
	if (n > 0)
		return n;
	if (n < 0 && errno == EAGAIN)
		return IO_WANT_WRITE;
	return IO_ERROR;
}

/* True when side s's bytes go through OpenSSL, not straight to the socket. */
static bool
side_tls(const struct relay_conn *c, int s)
{
	return s == CLIENT && c->tls != NULL;
}

/*
 * One read from side[d] into dir[d]'s buffer (taken from the pool): the
 * bytes become pending, a short read on a plain socket clears its edge,
 * and a full one turns a plain direction bulk.  Returns what side_read
 * returned, or IO_ERROR when no buffer could be had.
 */
static ssize_t
dir_fill(struct relay_conn *c, int d, uint64_t now)
{
	struct relay_side *src = &c->side[d];
	struct relay_dir *dir = &c->dir[d];
	ssize_t n;

	if (buf_take(c->rc, dir) != 0)
		return IO_ERROR;
	n = side_read(c, d, dir->buf, RELAY_BUF);
	if (n <= 0)
		return n;
	dir->off = 0;
	dir->pending = (uint32_t)n;
	src->last = now;
	if (!side_tls(c, d) && n < RELAY_BUF && !src->drain)
		src->rd_ready = false;
	/* A full read: a bulk transfer, for splice. */
	if (n == RELAY_BUF && c->tls == NULL)
		dir->bulk = true;
	return n;
}

/*
 * Direction d through its buffer: read from side[d] into dir[d].buf, write
 * it to side[!d].  Returns PUMP_*.  Spends *budget.  Stops, the buffer given
 * back, when the direction has turned bulk.
 *
 * On a plain socket a short read means it is empty and a short write that
 * it is full (edge-triggered epoll reports the next arrival or the next
 * room): the EAGAIN call that would only say so is skipped.  Unless a FIN
 * was reported: then reading goes on until it returns 0.
 */
static int
pump_buf(struct relay_conn *c, int d, int *budget)
{
	struct relay_ctx *rc = c->rc;
	struct relay_side *src = &c->side[d], *dst = &c->side[!d];
	struct relay_dir *dir = &c->dir[d];
	uint64_t now = loop_now(rc->loop);

	if (dst->shut)
		return PUMP_OK;
	while (*budget > 0) {
		bool progress = false;
		ssize_t n;

		if (dir->pending > 0 && dst->wr_ready) {
			uint32_t want = dir->pending;

			n = side_write(c, !d, dir->buf + dir->off, want);
			if (n > 0) {
				dir->off += (uint32_t)n;
				dir->pending -= (uint32_t)n;
				dir_sent(c, d, (size_t)n, now);
				progress = true;
				if ((uint32_t)n < want && !side_tls(c, !d))
					dst->wr_ready = false;
			} else if (n == IO_WANT_WRITE) {
				dst->wr_ready = false;
			} else {
				return n == IO_ALERT ? PUMP_ALERT : PUMP_CUT;
			}
			(*budget)--;
		}
		if (dir->pending == 0 && src->eof) {
			buf_give(rc, dir);
			/* Toward a TLS client: close_notify before the FIN. */
			if (d == SERVER && c->tls != NULL) {
				enum tls_status st;

				if (!dst->wr_ready)
					return PUMP_OK;
				st = tls_close_notify(c->tls);
				if (st == TLS_WANT_WRITE) {
					dst->wr_ready = false;
					return PUMP_OK;
				}
				if (st != TLS_DONE)
					return PUMP_CUT;
			}
			dir_finish(c, d);
			return PUMP_OK;
		}
		if (dir->pending == 0 && dir->bulk)
			break;
		if (dir->pending == 0 && !src->eof && src->rd_ready) {
			n = dir_fill(c, d, now);
			if (n > 0) {
				progress = true;
			} else if (n == IO_EOF) {
				src->eof = true;
				src->last = now;
				progress = true;
			} else if (n == IO_WANT_READ) {
				src->rd_ready = false;
			} else if (n == IO_WANT_WRITE) {
				src->wr_ready = false;
			} else {
				return n == IO_ALERT ? PUMP_ALERT : PUMP_CUT;
			}
			(*budget)--;
		}
		if (!progress)
			break;
	}
	if (dir->pending == 0)
		buf_give(rc, dir);
	return PUMP_OK;
}

/*
 * Direction d through its buffer, or its pipe once bulk (and the buffer,
 * if any, has drained).  A bulk direction goes back to the buffer for one
 * read at an urgent mark.  Returns PUMP_*.
 */
static int
pump_dir(struct relay_conn *c, int d, int *budget)
{
	struct relay_dir *dir = &c->dir[d];
	int r;

	for (;;) {
		if (!dir->bulk || dir->buf != NULL) {
			r = pump_buf(c, d, budget);
			if (r != PUMP_OK || !dir->bulk || dir->buf != NULL)
				return r;
		}
		r = pump(c, d, budget);
		if (r != PUMP_OK || dir->buf == NULL || *budget <= 0)
			return r;
	}
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
		ssize_t n =
		    recv(fd, NULL, RELAY_DISCARD, MSG_TRUNC | MSG_DONTWAIT);

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
	if (shutdown(c->side[CLIENT].io.fd, SHUT_WR) != 0) {
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
conn_idle_clean(const struct relay_conn *c)
{
	for (int s = 0; s < 2; s++) {
		const struct relay_side *side = &c->side[s];
		int q = 0;

		if (c->dir[s].pending > 0 || side->eof || side->shut)
			return false;
		if (ioctl(side->io.fd, SIOCOUTQ, &q) != 0 || q > 0)
			return false;
	}
	return true;
}

/* Reads and drops what a client sent before we close it with FIN. */
static void
discard_input(int fd)
{
	(void)recv(fd, NULL, RELAY_DISCARD, MSG_TRUNC | MSG_DONTWAIT);
}

/* The `client` or `server` timeout ended a streaming connection. */
static void
conn_timeout(struct relay_conn *c)
{
	if (!conn_idle_clean(c)) {
		conn_close(c, true, RELAY_RES_TIMEOUT);
		return;
	}
	/* Toward a TLS client, close_notify first (best effort). */
	if (c->tls != NULL)
		(void)tls_close_notify(c->tls);
	conn_close(c, false, RELAY_RES_TIMEOUT);
}

/*
 * The invariants of the header comment, checked after each run (in
 * sanitized and DEBUG=1 builds only).
 */
static void
conn_check(const struct relay_conn *c)
{
	INVARIANT(c->state == RELAY_ST_STREAMING);
	for (int d = 0; d < 2; d++) {
		const struct relay_dir *dir = &c->dir[d];

		/* Bytes in flight sit in the buffer or in the pipe, not both.
		 */
		INVARIANT(dir->buf == NULL || dir->p.rd < 0);
		INVARIANT(
		    dir->pending == 0 || dir->buf != NULL || dir->p.rd >= 0);
		INVARIANT(
		    dir->buf == NULL || dir->off + dir->pending <= RELAY_BUF);
		INVARIANT(dir->p.rd < 0 || dir->pending <= dir->p.cap);
		/* A TLS client's bytes always pass through the buffer. */
		INVARIANT(c->tls == NULL || !dir->bulk);
		/* FIN only after the source's FIN and every byte delivered. */
		INVARIANT(
		    !c->side[!d].shut || (c->side[d].eof && dir->pending == 0));
		INVARIANT(c->side[d].io.fd >= 0);
	}
	INVARIANT(!(c->side[CLIENT].shut && c->side[SERVER].shut));
	INVARIANT(c->rc->nconns > 0);
}

static void
conn_run(struct relay_conn *c)
{
	int budget = RELAY_BUDGET;
	bool shut_before = c->side[0].shut || c->side[1].shut;
	/* Each direction goes first in turn: neither starves the other. */
	int first = c->turn;
	int r;

	c->turn = (uint8_t)!c->turn;
	r = pump_dir(c, first, &budget);
	if (r == PUMP_OK)
		r = pump_dir(c, !first, &budget);
	if (r == PUMP_ALERT) {
		RELAY_CNT_ADD(c->rc->cnt, errors, 1);
		conn_linger(c, RELAY_RES_ERROR);
		return;
	}
	if (r != PUMP_OK) {
		RELAY_CNT_ADD(c->rc->cnt, errors, 1);
		conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	if (c->side[CLIENT].shut && c->side[SERVER].shut) {
		conn_close(c, false, RELAY_RES_RELAYED);
		return;
	}
	conn_check(c);
	if (budget <= 0)
		loop_task_queue(c->rc->loop, &c->task);
	/* A side just got a FIN from us: its shorter timeout starts. */
	if (shut_before != (c->side[0].shut || c->side[1].shut))
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
	enum cfg_send_proxy sp = c->ls->up->cfg->send_proxy;
	struct sockaddr_storage peer, local;
	socklen_t plen = sizeof(peer), llen = sizeof(local);
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
	known = getpeername(c->side[CLIENT].io.fd, (struct sockaddr *)&peer,
	            &plen) == 0 &&
	    getsockname(
	        c->side[CLIENT].io.fd, (struct sockaddr *)&local, &llen) == 0;
	n = pp_build(sp == CFG_SEND_PROXY_V1 ? PP_V1 : PP_V2,
	    known ? (struct sockaddr *)&peer : NULL,
	    known ? (struct sockaddr *)&local : NULL, 0, hdr, sizeof(hdr));
send:
	/* A fresh socket's send buffer always takes a header this small. */
	if (n < 0 || write(fd, hdr, (size_t)n) != n)
		c->side[SERVER].wr_ready = false, c->side[SERVER].eof = true;
}

static void
conn_connected(struct relay_conn *c)
{
	struct relay_ctx *rc = c->rc;
	uint64_t now = loop_now(rc->loop);
	int fd = c->side[SERVER].io.fd;

	upstream_report(
	    c->srv, true, now, loop_clock_us() - c->attempt_start_us);
	conn_enter(c, RELAY_ST_STREAMING);
	/*
	 * The client's edge may have been spent before streaming (by the
	 * PROXY header or TLS handshake reads): try it once.  The upstream's
	 * flags came from its own events since the connect began.
	 */
	c->side[CLIENT].rd_ready = true;
	c->side[CLIENT].wr_ready = true;
	c->side[SERVER].wr_ready = true;
	c->side[CLIENT].last = c->side[SERVER].last = now;
	send_proxy_header(c, fd);
	if (c->side[SERVER].eof) {
		RELAY_CNT_ADD(rc->cnt, errors, 1);
		conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	conn_arm(c);
	conn_run(c);
}

static void
conn_attempt_failed(struct relay_conn *c)
{
	struct relay_ctx *rc = c->rc;

	upstream_report(c->srv, false, loop_now(rc->loop), 0);
	close(c->side[SERVER].io.fd);
	c->side[SERVER].io.fd = -1;
	conn_connect(c);
}

/* Starts the next connection attempt, or closes the client when none is left.
 */
static void
conn_connect(struct relay_conn *c)
{
	struct relay_ctx *rc = c->rc;
	struct upstream *up = c->ls->up;

	for (;;) {
		struct sockaddr_storage ss;
		uint64_t now = loop_now(rc->loop);
		int fd, r;

		c->srv = upstream_next(up, &c->cur, now, &ss);
		if (c->srv == NULL) {
			log_debug("[listen %s]: no upstream server of '%s' "
			          "reachable",
			    c->ls->cfg->name, up->cfg->name);
			conn_close(c, false, RELAY_RES_UPSTREAM_FAILED);
			return;
		}
		if (c->attempts++ > 0)
			RELAY_CNT_ADD(rc->cnt, connect_retries, 1);
		fd = socket(ss.ss_family,
		    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			/* Our own shortage, not the server's fault. */
			log_debug("upstream socket: %s", strerror(errno));
			RELAY_CNT_ADD(rc->cnt, errors, 1);
			conn_close(c, true, RELAY_RES_ERROR);
			return;
		}
		upstream_sockopts(fd);
		r = connect(fd, (struct sockaddr *)&ss,
		    addr_len((struct sockaddr *)&ss));
		if (r == 0 || errno == EINPROGRESS) {
			c->side[SERVER].io.fd = fd;
			/* Nothing carries over from a failed attempt. */
			c->side[SERVER].rd_ready = c->side[SERVER].wr_ready =
			    false;
			c->side[SERVER].drain = c->side[SERVER].eof = false;
			c->side[SERVER].urgent = false;
			if (loop_io_add(rc->loop, &c->side[SERVER].io,
			        EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI |
			            EPOLLET) != 0) {
				RELAY_CNT_ADD(rc->cnt, errors, 1);
				conn_close(c, true, RELAY_RES_ERROR);
				return;
			}
			c->attempt_start_us = loop_clock_us();
			c->deadline = now + c->gen->cfg->timeouts.connect_ms;
			conn_arm(c);
			return;
		}
		if (log_enabled(LOG_DEBUG))
			log_debug("connect to upstream %s: %s", c->srv->label,
			    strerror(errno));
		close(fd);
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
	ssize_t n = dir_fill(c, CLIENT, loop_now(c->rc->loop));

	if (n > 0)
		return 0;
	buf_give(c->rc, &c->dir[CLIENT]);
	if (n == IO_WANT_READ || n == IO_WANT_WRITE)
		return 0;
	if (n == IO_ALERT)
		conn_linger(c, RELAY_RES_ERROR);
	else
		conn_close(c, n == IO_ERROR, RELAY_RES_ERROR);
	return -1;
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
	conn_enter(c, RELAY_ST_CONNECTING);
	if (tls_first_read(c) == 0)
		conn_connect(c);
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
	conn_enter(c, RELAY_ST_TLS);
	c->deadline = loop_now(rc->loop) + c->gen->cfg->timeouts.handshake_ms;
	conn_arm(c);
	/* The ClientHello may be in already (edge-triggered: no new event). */
	tls_step(c);
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

	n = recv(c->side[CLIENT].io.fd, buf, sizeof(buf), MSG_PEEK);
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
	if (recv(c->side[CLIENT].io.fd, buf, hdr.len, 0) != (ssize_t)hdr.len) {
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
	}
	if (c->ls->tls != NULL) {
		tls_start(c);
		return;
	}
	conn_enter(c, RELAY_ST_CONNECTING);
	conn_connect(c);
}

/* True when the peer of fd may send a PROXY header to listener ls. */
static bool
proxy_trusted(const struct listener *ls, int fd)
{
	const struct cfg_listen *cl = ls->cfg;
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);

	if (cl->trusted_text.n == 0)
		return true;
	if (getpeername(fd, (struct sockaddr *)&peer, &len) != 0)
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
		int err = 0;
		socklen_t len = sizeof(err);

		if (log_enabled(LOG_DEBUG)) {
			if (getsockopt(c->side[SERVER].io.fd, SOL_SOCKET,
			        SO_ERROR, &err, &len) != 0)
				err = errno;
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
	discard_input(c->side[CLIENT].io.fd);
	conn_close(c, false, RELAY_RES_TIMEOUT);
}

static void
tls_timeout(struct relay_conn *c)
{
	discard_input(c->side[CLIENT].io.fd);
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
    [RELAY_ST_TLS] = {"tls", tls_io, tls_timeout},
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
		side->rd_ready = true;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI))
		side->drain = true;
	if (events & EPOLLPRI)
		side->urgent = true;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		side->wr_ready = true;
	/* TLS may need to read to write and the reverse: retry both ways. */
	if (side == &c->side[CLIENT] && c->ls->tls != NULL)
		side->rd_ready = side->wr_ready = true;
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
    relay_gone_cb gone, void *arg)
{
	struct relay_ctx *rc = calloc(1, sizeof(*rc));

	if (rc == NULL)
		return NULL;
	rc->loop = loop;
	rc->id = id;
	rc->cnt = cnt;
	rc->gone = gone;
	rc->gone_arg = arg;
	if (pool_init(rc) != 0) {
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
	pool_cleanup(rc);
	free(rc);
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
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		atomic_fetch_sub_explicit(
		    &ls->state->active, 1, memory_order_relaxed);
		atomic_fetch_sub_explicit(
		    &relay_active_total, 1, memory_order_relaxed);
		RELAY_CNT_ADD(
		    &ls->state->cnt[rc->id], closed[RELAY_RES_ERROR], 1);
		close(fd);
		return;
	}
	c->rc = rc;
	c->gen = g;
	gen_ref(c->gen);
	c->ls = ls;
	c->lc = &ls->state->cnt[rc->id];
	c->state = RELAY_ST_NEW;
	for (int s = 0; s < 2; s++) {
		c->side[s].c = c;
		c->side[s].io.fd = -1;
		c->side[s].io.cb = side_cb;
		c->dir[s].p.rd = c->dir[s].p.wr = -1;
	}
	c->side[CLIENT].io.fd = fd;
	loop_timer_init(&c->timer, conn_timer_cb);
	loop_task_init(&c->task, conn_continue_task);
	c->next = rc->conns;
	if (rc->conns != NULL)
		rc->conns->prev = c;
	rc->conns = c;
	rc->nconns++;
	RELAY_CNT_ADD(rc->cnt, active, 1);
	if (loop_io_add(rc->loop, &c->side[CLIENT].io,
	        EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET) != 0) {
		RELAY_CNT_ADD(rc->cnt, errors, 1);
		conn_close(c, true, RELAY_RES_ERROR);
		return;
	}
	if (ls->cfg->accept_proxy) {
		conn_enter(c, RELAY_ST_HEADER);
		if (!proxy_trusted(ls, fd)) {
			conn_close(c, false, RELAY_RES_PROXY_REJECTED);
			return;
		}
		c->deadline =
		    loop_now(rc->loop) + g->cfg->timeouts.handshake_ms;
		conn_arm(c);
		return;
	}
	if (ls->tls != NULL) {
		tls_start(c);
		return;
	}
	conn_enter(c, RELAY_ST_CONNECTING);
	conn_connect(c);
	return;
refuse:
	RELAY_CNT_ADD(
	    &ls->state->cnt[rc->id], closed[RELAY_RES_REFUSED_MAXCONN], 1);
	close(fd);
}
