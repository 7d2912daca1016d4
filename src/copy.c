/*
 * copy: the copy loop over transports, and the pools of pipes and buffers
 * it draws from.  See copy.h for the model and the invariants.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "copy.h"
#include "invariant.h"

/* Idle pipes kept in reserve, so that relaying goes on when fds run out. */
#define COPY_POOL_RESERVE 2
#define COPY_POOL_MAX 256
#define COPY_BUF_POOL_MAX 64

/* Pools. */

/* Big pipes of the process, idle or in use: all workers draw on them. */
static _Atomic unsigned big_pipes;

unsigned
copy_big_pipes(void)
{
	return atomic_load_explicit(&big_pipes, memory_order_relaxed);
}

/*
 * A new pipe of COPY_PIPE_SIZE, or smaller when the kernel says no: a user
 * without CAP_SYS_RESOURCE past fs.pipe-user-pages-soft (64 MiB of pipes,
 * about 256 of ours) gets 2-page pipes it cannot enlarge.  A pipe smaller
 * than the buffer is worse than the buffer: refused (-1, like running out
 * of descriptors), and the direction goes on through its buffer.
 */
static int
pipe_new(struct copy_pipe *p)
{
	int fds[2], sz;

	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0)
		return -1;
	(void)fcntl(fds[1], F_SETPIPE_SZ, COPY_PIPE_SIZE);
	sz = fcntl(fds[1], F_GETPIPE_SZ);
	if (sz < COPY_BUF) {
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	p->rd = fds[0];
	p->wr = fds[1];
	p->cap = (uint32_t)sz;
	return 0;
}

static void
pipe_close(struct copy_pipe *p)
{
	if (p->cap > COPY_PIPE_SIZE)
		atomic_fetch_sub_explicit(&big_pipes, 1, memory_order_relaxed);
	close(p->rd);
	close(p->wr);
}

/*
 * Grows p to COPY_PIPE_BIG if the process's quota allows.  The kernel may
 * refuse (EPERM past the user's soft limit, or a pipe-max-size below):
 * the pipe stays as it was, and no worker asks again until its next trim.
 */
static void
pipe_grow(struct copy_pool *pool, struct copy_pipe *p)
{
	int sz;

	if (p->cap >= COPY_PIPE_BIG || pool->big_refused)
		return;
	if (atomic_fetch_add_explicit(&big_pipes, 1, memory_order_relaxed) >=
	    COPY_PIPES_BIG) {
		atomic_fetch_sub_explicit(&big_pipes, 1, memory_order_relaxed);
		return;
	}
	sz = fcntl(p->wr, F_SETPIPE_SZ, COPY_PIPE_BIG);
	if (sz <= (int)COPY_PIPE_SIZE) {
		atomic_fetch_sub_explicit(&big_pipes, 1, memory_order_relaxed);
		pool->big_refused = true;
		return;
	}
	p->cap = (uint32_t)sz;
}

/*
 * A pipe for a direction: a big one when it is fast and its worker has
 * one idle or may grow one, else one of the usual size.  Returns 0, or -1
 * when no pipe is to be had.
 */
static int
pipe_take(struct copy_pool *pool, struct copy_pipe *p, bool fast)
{
	if (fast && pool->nidle_big > 0) {
		*p = pool->idle_big[--pool->nidle_big];
		if (pool->nidle_big < pool->low_big)
			pool->low_big = pool->nidle_big;
		return 0;
	}
	if (pool->n > 0) {
		*p = pool->v[--pool->n];
		if (pool->n < pool->low)
			pool->low = pool->n;
	} else if (pipe_new(p) != 0) {
		return -1;
	}
	if (fast)
		pipe_grow(pool, p);
	return 0;
}

/* Returns p to the pool, or closes it when it holds bytes or is surplus. */
static void
pipe_give(struct copy_pool *pool, struct copy_pipe *p, bool dirty)
{
	if (p->rd < 0)
		return;
	if (dirty)
		pipe_close(p);
	else if (p->cap > COPY_PIPE_SIZE && pool->nidle_big < COPY_PIPES_BIG)
		pool->idle_big[pool->nidle_big++] = *p;
	else if (p->cap <= COPY_PIPE_SIZE && pool->n < pool->cap)
		pool->v[pool->n++] = *p;
	else
		pipe_close(p);
	p->rd = p->wr = -1;
	p->cap = 0;
}

/* Gives dir a buffer from the pool (or a new one); returns 0 or -1. */
static int
buf_take(struct copy_pool *pool, struct copy_dir *dir)
{
	if (dir->buf != NULL)
		return 0;
	if (pool->nbufs > 0)
		dir->buf = pool->bufs[--pool->nbufs];
	else
		dir->buf = malloc(COPY_BUF);
	dir->off = 0;
	return dir->buf != NULL ? 0 : -1;
}

static void
buf_give(struct copy_pool *pool, struct copy_dir *dir)
{
	if (dir->buf == NULL)
		return;
	if (pool->nbufs < COPY_BUF_POOL_MAX)
		pool->bufs[pool->nbufs++] = dir->buf;
	else
		free(dir->buf);
	dir->buf = NULL;
	dir->off = 0;
}

int
copy_pool_init(struct copy_pool *pool)
{
	pool->cap = COPY_POOL_MAX;
	pool->v = calloc(pool->cap, sizeof(*pool->v));
	pool->bufs = calloc(COPY_BUF_POOL_MAX, sizeof(*pool->bufs));
	if (pool->v == NULL || pool->bufs == NULL)
		return -1;
	/* Best effort: without pipes, bulk directions use their buffers. */
	while (pool->n < COPY_POOL_RESERVE) {
		struct copy_pipe p;

		if (pipe_new(&p) != 0)
			break;
		pool->v[pool->n++] = p;
	}
	pool->low = pool->n;
	return 0;
}

void
copy_pool_trim(struct copy_pool *pool)
{
	/* Pipes that stayed idle for a whole period are not needed. */
	while (pool->low > COPY_POOL_RESERVE && pool->n > COPY_POOL_RESERVE) {
		pipe_close(&pool->v[--pool->n]);
		pool->low--;
	}
	pool->low = pool->n;
	/* Big pipes: none is kept idle through a whole period. */
	while (pool->low_big > 0 && pool->nidle_big > 0) {
		pipe_close(&pool->idle_big[--pool->nidle_big]);
		pool->low_big--;
	}
	pool->low_big = pool->nidle_big;
	pool->big_refused = false;
}

void
copy_pool_cleanup(struct copy_pool *pool)
{
	for (size_t i = 0; i < pool->n; i++)
		pipe_close(&pool->v[i]);
	while (pool->nidle_big > 0)
		pipe_close(&pool->idle_big[--pool->nidle_big]);
	pool->low_big = 0;
	free(pool->v);
	pool->v = NULL;
	pool->n = pool->cap = pool->low = 0;
	for (size_t i = 0; i < pool->nbufs; i++)
		free(pool->bufs[i]);
	free(pool->bufs);
	pool->bufs = NULL;
	pool->nbufs = 0;
}

void
copy_dir_init(struct copy_dir *dir)
{
	*dir = (struct copy_dir){.p = {.rd = -1, .wr = -1}};
}

void
copy_dir_release(struct copy_dir *dir, struct copy_pool *pool)
{
	pipe_give(pool, &dir->p, dir->pending > 0);
	buf_give(pool, dir);
	dir->pending = 0;
}

/* The loop. */

/* True when dir's bytes go through its pipe (bulk, buffer drained). */
static bool
piped(const struct copy_dir *dir)
{
	return dir->bulk && dir->buf == NULL;
}

/* Bytes held, in the buffer or the pipe: at most one of them. */
static void
check(const struct copy_dir *dir)
{
	INVARIANT(dir->buf == NULL || dir->p.rd < 0);
	INVARIANT(dir->pending == 0 || dir->buf != NULL || dir->p.rd >= 0);
	INVARIANT(dir->buf == NULL || dir->off + dir->pending <= COPY_BUF);
	INVARIANT(dir->p.rd < 0 || dir->pending <= dir->p.cap);
}

/*
 * One read from src into dir's empty buffer: the bytes become pending; a
 * short read on a transport that reports edges clears the edge; a full one
 * turns a spliceable direction bulk.  Returns bytes or COPY_IO_*.
 */
static ssize_t
fill(struct copy_dir *dir, struct copy_end *src, struct copy_pool *pool,
    uint64_t now)
{
	ssize_t n;

	INVARIANT(dir->pending == 0 && dir->p.rd < 0);
	if (buf_take(pool, dir) != 0)
		return COPY_IO_ERROR;
	n = src->ops->read(src, dir->buf, COPY_BUF);
	if (n <= 0)
		return n;
	dir->off = 0;
	dir->pending = (uint32_t)n;
	src->last = now;
	if (src->ops->trust_short && n < COPY_BUF && !src->drain)
		src->rd_ready = false;
	if (n == COPY_BUF && dir->spliceable)
		dir->bulk = true;
	return n;
}

ssize_t
copy_fill(struct copy_dir *dir, struct copy_end *src, struct copy_pool *pool,
    uint64_t now)
{
	size_t room;
	ssize_t n;

	if (dir->pending == 0) {
		n = fill(dir, src, pool, now);
		if (n <= 0)
			buf_give(pool, dir);
		return n;
	}
	/* Appending: nothing was consumed yet, and nothing went to a pipe. */
	INVARIANT(dir->buf != NULL && dir->off == 0 && dir->p.rd < 0);
	room = COPY_BUF - dir->pending;
	if (room == 0)
		return COPY_IO_AGAIN;
	n = src->ops->read(src, dir->buf + dir->pending, room);
	if (n <= 0)
		return n;
	dir->pending += (uint32_t)n;
	src->last = now;
	if (src->ops->trust_short && (size_t)n < room && !src->drain)
		src->rd_ready = false;
	return n;
}

/* What a buffered read came to, for copy_run. */
static enum copy_result
took(struct copy_end *src, ssize_t n, uint64_t now, bool *progress)
{
	if (n > 0) {
		*progress = true;
	} else if (n == COPY_IO_EOF) {
		src->eof = true;
		src->last = now;
		*progress = true;
	} else if (n == COPY_IO_AGAIN) {
		src->rd_ready = false;
	} else if (n == COPY_IO_AGAIN_WRITE) {
		src->wr_ready = false;
	} else {
		return n == COPY_IO_ALERT ? COPY_ALERT : COPY_CUT;
	}
	return COPY_OK;
}

/*
 * Reads from src into dir: through the pipe once bulk, else the buffer.
 * splice(2) stops at an urgent mark (would-block, or 0 once a FIN follows
 * it), so 0 is no proof of EOF: once the pipe is empty, one read through
 * the buffer goes on past the mark, or confirms the FIN.
 */
static enum copy_result
take(struct copy_dir *dir, struct copy_end *src, struct copy_pool *pool,
    uint64_t now, bool *progress)
{
	ssize_t n;

	if (!piped(dir))
		return took(src, fill(dir, src, pool, now), now, progress);
	if (dir->p.rd < 0 && pipe_take(pool, &dir->p, dir->fast) != 0) {
		/*
		 * No pipe to be had (descriptors, or the user's pipe pages,
		 * ran out): this direction is relayed through its buffer
		 * from now on, never cut for it.
		 */
		dir->spliceable = false;
		dir->bulk = false;
		return took(src, fill(dir, src, pool, now), now, progress);
	}
	n = src->ops->splice_in(src, dir->p.wr, dir->p.cap - dir->pending);
	if (n > 0) {
		dir->pending += (uint32_t)n;
		src->last = now;
		*progress = true;
		return COPY_OK;
	}
	if (n == COPY_IO_EOF || (n == COPY_IO_AGAIN && src->urgent)) {
		if (dir->pending > 0)
			return COPY_OK; /* again once the pipe has drained */
		pipe_give(pool, &dir->p, false);
		src->urgent = false;
		return took(src, fill(dir, src, pool, now), now, progress);
	}
	if (n != COPY_IO_AGAIN)
		return COPY_CUT;
	/*
	 * With bytes in the pipe, would-block may mean the pipe is out of
	 * slots, not that the end is empty: keep the edge and try again once
	 * the pipe drains.
	 */
	if (dir->pending == 0)
		src->rd_ready = false;
	return COPY_OK;
}

/* Writes what dir holds to dst.  Returns bytes or COPY_IO_*. */
static ssize_t
put(struct copy_dir *dir, struct copy_end *dst)
{
	uint32_t want = dir->pending;
	ssize_t n;

	if (dir->buf == NULL)
		return dst->ops->splice_out(dst, dir->p.rd, want);
	n = dst->ops->write(dst, dir->buf + dir->off, want);
	if (n > 0) {
		dir->off += (uint32_t)n;
		if ((uint32_t)n < want && dst->ops->trust_short)
			dst->wr_ready = false;
	}
	return n;
}

/*
 * The source finished and everything was delivered: finish (TLS:
 * close_notify) and FIN toward dst.  When src is shut already, the
 * connection closes right away and close(2) sends the FIN itself.
 */
static enum copy_result
finish(struct copy_dir *dir, struct copy_end *src, struct copy_end *dst,
    struct copy_pool *pool)
{
	INVARIANT(src->eof && dir->pending == 0);
	buf_give(pool, dir);
	pipe_give(pool, &dir->p, false);
	if (dst->ops->finish != NULL) {
		int r;

		if (!dst->wr_ready)
			return COPY_OK;
		r = dst->ops->finish(dst);
		if (r == COPY_IO_AGAIN) {
			dst->wr_ready = false;
			return COPY_OK;
		}
		if (r != 0)
			return COPY_CUT;
	}
	if (!src->shut)
		dst->ops->fin(dst);
	dst->shut = true;
	return COPY_OK;
}

enum copy_result
copy_run(struct copy_dir *dir, struct copy_end *src, struct copy_end *dst,
    struct copy_pool *pool, int *budget, uint64_t *moved, uint64_t now)
{
	enum copy_result r;

	if (dst->shut)
		return COPY_OK;
	while (*budget > 0) {
		bool progress = false;
		ssize_t n;

		if (dir->pending > 0 && dst->wr_ready) {
			(*budget)--;
			n = put(dir, dst);
			if (n > 0) {
				dir->pending -= (uint32_t)n;
				if (dir->buf == NULL && !dir->fast &&
				    (uint32_t)n >= COPY_PIPE_SIZE / 2) {
					/* A big pipe from the next take. */
					dir->fast = true;
					if (dir->pending == 0)
						pipe_give(pool, &dir->p, false);
				}
				*moved += (uint64_t)n;
				/* Both ends of a moving direction are busy. */
				src->last = dst->last = now;
				dst->wrote = true;
				progress = true;
			} else if (n == COPY_IO_AGAIN) {
				dst->wr_ready = false;
			} else {
				return n == COPY_IO_ALERT ? COPY_ALERT
				                          : COPY_CUT;
			}
		}
		if (dir->pending == 0 && src->eof)
			return finish(dir, src, dst, pool);
		/* A bulk direction's buffer has drained: the pipe from now. */
		if (dir->pending == 0 && dir->bulk)
			buf_give(pool, dir);
		if (!src->eof && src->rd_ready && *budget > 0 &&
		    (piped(dir) ? dir->p.rd < 0 || dir->pending < dir->p.cap
		                : dir->pending == 0)) {
			(*budget)--;
			r = take(dir, src, pool, now, &progress);
			if (r != COPY_OK)
				return r;
		}
		check(dir);
		if (!progress)
			break;
	}
	if (dir->pending == 0) {
		buf_give(pool, dir);
		pipe_give(pool, &dir->p, false);
	}
	return COPY_OK;
}
