/*
 * Unit tests for copy.c: the copy loop against a scripted fake transport
 * (no socket): short reads and writes, would-block, FIN, errors, TLS
 * alerts and close_notify, urgent marks, a full pipe, the budget.  Pipes
 * are real kernel pipes.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "copy.h"
#include "harness.h"
#include "util.h"

#define BIG (1 << 20)

/* A scripted end: a source of `len` bytes and a sink with `room`. */
struct fake {
	struct copy_end end; /* what the loop sees */
	/* source */
	uint8_t *data;
	size_t len, cur;
	size_t chunk; /* most bytes per read or splice; 0: no limit */
	bool eof; /* after the data: EOF (else would-block) */
	size_t mark; /* urgent mark: splice stops there; 0: none */
	size_t fail_at; /* reading at this offset fails; 0: never */
	ssize_t fail_code; /* COPY_IO_ERROR or COPY_IO_ALERT */
	/* sink */
	uint8_t *out;
	size_t outlen, room;
	bool write_fails;
	int finish_again; /* finish() says would-block this many times */
	bool finish_fails;
	/* counts */
	int reads, writes, splice_ins, splice_outs, finishes, fins;
};

static size_t
avail(struct fake *f, size_t len, bool splice)
{
	size_t n = f->len - f->cur;

	if (splice && f->mark > f->cur && f->mark - f->cur < n)
		n = f->mark - f->cur;
	if (f->chunk && n > f->chunk)
		n = f->chunk;
	return n < len ? n : len;
}

static ssize_t
f_read(struct copy_end *e, void *buf, size_t len)
{
	struct fake *f = container_of(e, struct fake, end);
	size_t n;

	f->reads++;
	if (f->fail_at && f->cur >= f->fail_at)
		return f->fail_code;
	n = avail(f, len, false);
	if (n == 0)
		return f->eof ? COPY_IO_EOF : COPY_IO_AGAIN;
	memcpy(buf, f->data + f->cur, n);
	f->cur += n;
	if (f->mark && f->cur > f->mark)
		f->mark = 0; /* read past: the mark is gone */
	return (ssize_t)n;
}

static ssize_t
f_write(struct copy_end *e, const void *buf, size_t len)
{
	struct fake *f = container_of(e, struct fake, end);
	size_t n = len < f->room ? len : f->room;

	f->writes++;
	if (f->write_fails)
		return COPY_IO_ERROR;
	if (n == 0)
		return COPY_IO_AGAIN;
	memcpy(f->out + f->outlen, buf, n);
	f->outlen += n;
	f->room -= n;
	return (ssize_t)n;
}

/* Like the kernel: at an urgent mark, would-block, or 0 once FIN is in. */
static ssize_t
f_splice_in(struct copy_end *e, int pipe_wr, size_t len)
{
	struct fake *f = container_of(e, struct fake, end);
	size_t n;
	ssize_t w;

	f->splice_ins++;
	if (f->fail_at && f->cur >= f->fail_at)
		return COPY_IO_ERROR;
	n = avail(f, len, true);
	if (n == 0)
		return f->eof ? COPY_IO_EOF : COPY_IO_AGAIN;
	w = write(pipe_wr, f->data + f->cur, n);
	if (w <= 0)
		return COPY_IO_AGAIN;
	f->cur += (size_t)w;
	return w;
}

static ssize_t
f_splice_out(struct copy_end *e, int pipe_rd, size_t len)
{
	struct fake *f = container_of(e, struct fake, end);
	size_t n = len < f->room ? len : f->room;
	ssize_t r;

	f->splice_outs++;
	if (f->write_fails)
		return COPY_IO_ERROR;
	if (n == 0)
		return COPY_IO_AGAIN;
	r = read(pipe_rd, f->out + f->outlen, n);
	if (r <= 0)
		return COPY_IO_ERROR;
	f->outlen += (size_t)r;
	f->room -= (size_t)r;
	return r;
}

static int
f_finish(struct copy_end *e)
{
	struct fake *f = container_of(e, struct fake, end);

	f->finishes++;
	if (f->finish_fails)
		return COPY_IO_ERROR;
	if (f->finish_again > 0) {
		f->finish_again--;
		return COPY_IO_AGAIN;
	}
	return 0;
}

static void
f_fin(struct copy_end *e)
{
	container_of(e, struct fake, end)->fins++;
}

static const struct copy_ops plain = {
    .read = f_read,
    .write = f_write,
    .splice_in = f_splice_in,
    .splice_out = f_splice_out,
    .fin = f_fin,
    .trust_short = true,
};

static const struct copy_ops tlsish = {
    .read = f_read,
    .write = f_write,
    .finish = f_finish,
    .fin = f_fin,
    .trust_short = false,
};

struct rig {
	struct fake a, b; /* source, destination */
	struct copy_dir dir;
	struct copy_pool pool;
	uint64_t moved;
};

static struct rig *
rig_new(size_t len, const struct copy_ops *sops, const struct copy_ops *dops)
{
	struct rig *r = calloc(1, sizeof(*r));

	r->a.data = malloc(len ? len : 1);
	for (size_t i = 0; i < len; i++)
		r->a.data[i] = (uint8_t)(i * 7 + (i >> 9));
	r->a.len = len;
	r->a.fail_code = COPY_IO_ERROR;
	r->b.out = malloc(len ? len : 1);
	r->b.room = BIG * 4;
	r->a.end.ops = sops;
	r->b.end.ops = dops;
	r->a.end.rd_ready = r->b.end.wr_ready = true;
	copy_dir_init(&r->dir);
	r->dir.spliceable = sops->splice_in != NULL && dops->splice_out;
	if (copy_pool_init(&r->pool) != 0)
		abort();
	return r;
}

static void
rig_free(struct rig *r)
{
	copy_dir_release(&r->dir, &r->pool);
	copy_pool_cleanup(&r->pool);
	free(r->a.data);
	free(r->b.out);
	free(r);
}

/* Runs with a budget of n calls; returns the result. */
static enum copy_result
run(struct rig *r, int n)
{
	return copy_run(
	    &r->dir, &r->a.end, &r->b.end, &r->pool, &n, &r->moved, 1);
}

/* Runs until nothing moves (edges re-armed as epoll would). */
static enum copy_result
run_all(struct rig *r)
{
	enum copy_result res = COPY_OK;

	for (int i = 0; i < 10000 && res == COPY_OK && !r->b.end.shut; i++) {
		size_t before = r->b.outlen + r->a.cur;

		r->a.end.rd_ready = r->b.end.wr_ready = true;
		res = run(r, 16);
		if (r->b.outlen + r->a.cur == before && r->dir.pending == 0 &&
		    !r->a.end.eof)
			break;
	}
	return res;
}

static bool
delivered(const struct rig *r)
{
	return r->b.outlen == r->a.len &&
	    memcmp(r->b.out, r->a.data, r->a.len) == 0;
}

static void
test_chat_message(void)
{
	struct rig *r = rig_new(100, &plain, &plain);

	CHECK_INT(run(r, 16), COPY_OK);
	CHECK(delivered(r));
	CHECK_INT(r->moved, 100);
	/* A short read proves a plain socket empty: no would-block call. */
	CHECK_INT(r->a.reads, 1);
	CHECK_INT(r->b.writes, 1);
	CHECK(!r->a.end.rd_ready);
	CHECK_INT(r->a.splice_ins + r->b.splice_outs, 0);
	CHECK(r->dir.buf == NULL && r->dir.p.rd < 0);
	CHECK(!r->b.end.shut && r->b.fins == 0);
	rig_free(r);
}

static void
test_short_read_not_trusted_on_tls(void)
{
	struct rig *r = rig_new(100, &tlsish, &plain);

	CHECK_INT(run(r, 16), COPY_OK);
	CHECK(delivered(r));
	CHECK_INT(r->a.reads, 2); /* the second says would-block */
	CHECK(!r->a.end.rd_ready);
	rig_free(r);
}

static void
test_drain_keeps_reading(void)
{
	struct rig *r = rig_new(100, &plain, &plain);

	r->a.chunk = 10;
	r->a.end.drain =
	    true; /* FIN or urgent data reported: read to the end */
	CHECK_INT(run(r, 64), COPY_OK);
	CHECK(delivered(r));
	CHECK_INT(r->a.reads, 11);
	rig_free(r);
}

static void
test_bulk_turns_to_splice_and_fins(void)
{
	struct rig *r = rig_new(300000, &plain, &plain);
	size_t idle = r->pool.n;

	r->a.eof = true;
	CHECK_INT(run_all(r), COPY_OK);
	CHECK(delivered(r));
	CHECK_INT(r->moved, 300000);
	CHECK(r->dir.bulk);
	/* One full read, then splice; a read confirms splice's 0 (FIN). */
	CHECK_INT(r->a.reads, 2);
	CHECK(r->a.splice_ins > 0 && r->b.splice_outs > 0);
	CHECK(r->a.end.eof && r->b.end.shut);
	CHECK_INT(r->b.fins, 1);
	/*
	 * The pipes went back: the destination took half a pipe at once, so
	 * the direction went on through a big one (grown from the pool's).
	 */
	CHECK(r->dir.fast);
	CHECK_INT(r->pool.n + r->pool.nidle_big, idle);
	CHECK_INT(r->pool.nidle_big, 1);
	CHECK_INT(copy_big_pipes(), 1);
	CHECK_INT(r->pool.idle_big[0].cap, COPY_PIPE_BIG);
	CHECK(r->dir.buf == NULL && r->dir.p.rd < 0);
	rig_free(r);
	CHECK_INT(copy_big_pipes(), 0); /* closed with the pool */
}

static void
test_not_spliceable_stays_buffered(void)
{
	struct rig *r = rig_new(100000, &plain, &plain);

	r->dir.spliceable = false;
	r->a.eof = true;
	CHECK_INT(run_all(r), COPY_OK);
	CHECK(delivered(r));
	CHECK(!r->dir.bulk);
	CHECK_INT(r->a.splice_ins, 0);
	CHECK_INT(r->b.fins, 1);
	rig_free(r);
}

/*
 * No pipe to be had (descriptors ran out; a user past its pipe pages gets
 * pipes too small, refused the same way): a bulk direction goes on
 * through its buffer, every byte delivered, never cut.
 */
static void
test_no_pipe_falls_back_to_buffer(void)
{
	struct rig *r = rig_new(300000, &plain, &plain);
	struct rlimit old, none;
	int k;

	while (r->pool.n > 0) {
		struct copy_pipe *p = &r->pool.v[--r->pool.n];

		close(p->rd);
		close(p->wr);
	}
	r->pool.low = 0;
	k = dup(0); /* the lowest free descriptor: allow none from here */
	close(k);
	getrlimit(RLIMIT_NOFILE, &old);
	none = old;
	none.rlim_cur = (rlim_t)k;
	CHECK(setrlimit(RLIMIT_NOFILE, &none) == 0);
	r->a.eof = true;
	CHECK_INT(run_all(r), COPY_OK);
	setrlimit(RLIMIT_NOFILE, &old);
	CHECK(delivered(r));
	CHECK_INT(r->a.splice_ins, 0);
	CHECK(!r->dir.bulk && !r->dir.spliceable);
	CHECK(r->a.end.eof && r->b.end.shut);
	CHECK_INT(r->b.fins, 1);
	rig_free(r);
}

static void
test_backpressure(void)
{
	struct rig *r = rig_new(5000, &plain, &plain);

	r->b.room = 1000;
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK_INT(r->b.outlen, 1000);
	CHECK_INT(r->dir.pending, 4000);
	/* A short write proves the socket full: no would-block call. */
	CHECK(!r->b.end.wr_ready);
	CHECK_INT(r->b.writes, 1);
	CHECK_INT(r->a.reads, 1); /* no read while the buffer holds bytes */
	r->b.room = BIG;
	r->b.end.wr_ready = true;
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK(delivered(r));
	CHECK_INT(r->dir.pending, 0);
	rig_free(r);
}

static void
test_fin_only_after_every_byte(void)
{
	struct rig *r = rig_new(10, &plain, &plain);

	r->a.eof = true;
	r->b.room = 5;
	r->a.end.drain = true;
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK(!r->b.end.shut);
	CHECK_INT(r->b.fins, 0);
	r->b.room = 100;
	r->b.end.wr_ready = r->a.end.rd_ready = true;
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK(delivered(r));
	CHECK(r->a.end.eof && r->b.end.shut);
	CHECK_INT(r->b.fins, 1);
	/* Nothing happens on a finished direction. */
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK_INT(r->b.fins, 1);
	rig_free(r);
}

static void
test_no_fin_syscall_when_other_way_done(void)
{
	struct rig *r = rig_new(10, &plain, &plain);

	r->a.eof = true;
	r->a.end.shut = true; /* the other direction already finished */
	r->a.end.drain = true;
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK(delivered(r) && r->b.end.shut);
	CHECK_INT(r->b.fins, 0); /* close(2) sends it */
	rig_free(r);
}

static void
test_errors_cut(void)
{
	struct rig *r = rig_new(100, &plain, &plain);

	r->b.write_fails = true;
	CHECK_INT(run(r, 16), COPY_CUT);
	rig_free(r);

	r = rig_new(100, &plain, &plain);
	r->a.fail_at = 1;
	r->a.chunk = 50;
	r->a.end.drain = true;
	CHECK_INT(run(r, 16), COPY_CUT);
	CHECK_INT(r->b.outlen, 50); /* what came before was delivered */
	rig_free(r);

	r = rig_new(300000, &plain, &plain); /* on the spliced path */
	r->a.fail_at = 100000;
	CHECK_INT(run_all(r), COPY_CUT);
	CHECK(r->dir.bulk);
	rig_free(r);
}

static void
test_tls_alert(void)
{
	struct rig *r = rig_new(100, &tlsish, &plain);

	r->a.fail_at = 1;
	r->a.fail_code = COPY_IO_ALERT;
	r->a.chunk = 40;
	CHECK_INT(run(r, 16), COPY_ALERT);
	CHECK_INT(r->b.outlen, 40);
	rig_free(r);
}

static void
test_close_notify_then_fin(void)
{
	struct rig *r = rig_new(100, &plain, &tlsish);

	r->a.eof = true;
	r->a.end.drain = true;
	r->b.finish_again = 1;
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK(delivered(r));
	CHECK_INT(r->b.finishes, 1);
	CHECK(!r->b.end.shut && !r->b.end.wr_ready); /* waits for room */
	CHECK_INT(r->b.fins, 0);
	r->b.end.wr_ready = true;
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK_INT(r->b.finishes, 2);
	CHECK(r->b.end.shut);
	CHECK_INT(r->b.fins, 1);
	rig_free(r);

	r = rig_new(10, &plain, &tlsish);
	r->a.eof = true;
	r->a.end.drain = true;
	r->b.finish_fails = true;
	CHECK_INT(run(r, 16), COPY_CUT);
	CHECK_INT(r->b.fins, 0);
	rig_free(r);
}

static void
test_urgent_mark_on_spliced_path(void)
{
	struct rig *r = rig_new(200000, &plain, &plain);

	r->a.mark = 100000;
	r->a.end.urgent = true;
	CHECK_INT(run_all(r), COPY_OK);
	/* One read through the buffer goes past the mark; splice resumes. */
	CHECK(delivered(r));
	CHECK_INT(r->a.reads, 2);
	CHECK(!r->a.end.urgent);
	CHECK(r->a.splice_ins > 2);
	rig_free(r);
}

static void
test_splice_zero_is_no_proof_of_eof(void)
{
	struct rig *r = rig_new(150000, &plain, &plain);

	/* The peer's FIN follows data after a mark whose event is unseen. */
	r->a.mark = 100000;
	r->a.eof = true;
	CHECK_INT(run_all(r), COPY_OK);
	CHECK(delivered(r));
	CHECK(r->b.end.shut);
	CHECK_INT(r->b.fins, 1);
	rig_free(r);
}

static void
test_full_pipe_keeps_the_edge(void)
{
	struct rig *r = rig_new(300000, &plain, &plain);

	r->a.eof = true;
	CHECK_INT(run(r, 3), COPY_OK); /* read, write: bulk */
	r->b.room = 0; /* the destination stops taking */
	r->b.end.wr_ready = true;
	CHECK_INT(run(r, 64), COPY_OK);
	CHECK(r->dir.pending > 0);
	CHECK(r->dir.pending <= r->dir.p.cap);
	CHECK(r->a.end.rd_ready || r->a.cur == r->a.len); /* edge kept */
	r->b.room = BIG;
	CHECK_INT(run_all(r), COPY_OK);
	CHECK(delivered(r) && r->b.end.shut);
	rig_free(r);
}

/*
 * Drives r until the destination has `upto` bytes or nothing moves, the
 * destination taking at most `room` bytes a wake-up.
 */
static enum copy_result
run_upto(struct rig *r, size_t upto, size_t room)
{
	enum copy_result res = COPY_OK;

	for (int i = 0; i < 100000 && res == COPY_OK && r->b.outlen < upto;
	     i++) {
		size_t before = r->b.outlen + r->a.cur;

		r->b.room = room;
		r->a.end.rd_ready = r->b.end.wr_ready = true;
		res = run(r, 16);
		if (r->b.outlen + r->a.cur == before)
			break;
	}
	return res;
}

/*
 * A rig whose direction went fast, then stalled: it holds a full pipe,
 * big if the quota allowed.
 */
static struct rig *
rig_fast_and_stalled(void)
{
	struct rig *r = rig_new(4 * BIG, &plain, &plain);

	/* A full read, its write, a splice in, a splice out of 256 KiB. */
	CHECK_INT(run(r, 4), COPY_OK);
	CHECK(r->dir.fast && r->dir.p.rd < 0);
	r->b.room = 0;
	r->a.end.rd_ready = r->b.end.wr_ready = true;
	CHECK_INT(run(r, 16), COPY_OK);
	return r;
}

/*
 * Big pipes: a direction whose destination takes half a pipe or more in
 * one splice gets one (grown from a usual pipe, or an idle big one), at
 * most COPY_PIPES_BIG in the process; a direction whose destination takes
 * a little at a time (a slow reader) never does, however full its pipe;
 * an idle big pipe is closed after a period unused, a full one when its
 * connection goes.
 */
static void
test_big_pipes_for_fast_directions_only(void)
{
	struct rig *r = rig_new(8 * BIG, &plain, &plain);
	struct rig *held[COPY_PIPES_BIG];
	size_t idle = r->pool.n;

	/* Slow: 8 KiB a wake-up.  The pipe fills, it never grows. */
	CHECK_INT(run_upto(r, 2 * BIG, 8192), COPY_OK);
	CHECK(!r->dir.fast);
	CHECK(r->dir.p.rd >= 0 && r->dir.p.cap == COPY_PIPE_SIZE);
	CHECK_INT(r->dir.pending, COPY_PIPE_SIZE);
	CHECK_INT(copy_big_pipes(), 0);

	/* The reader speeds up: the next pipe is big, and fills to 1 MiB. */
	CHECK_INT(run_upto(r, 3 * BIG, 4 * BIG), COPY_OK);
	CHECK(r->dir.fast);
	r->b.room = 0;
	r->a.end.rd_ready = r->b.end.wr_ready = true;
	CHECK_INT(run(r, 16), COPY_OK);
	CHECK_INT(r->dir.p.cap, COPY_PIPE_BIG);
	CHECK_INT(r->dir.pending, COPY_PIPE_BIG);
	CHECK_INT(copy_big_pipes(), 1);
	r->a.eof = true;
	r->b.room = 8 * BIG;
	CHECK_INT(run_all(r), COPY_OK);
	CHECK(delivered(r) && r->b.end.shut);
	CHECK_INT(r->pool.nidle_big, 1);
	CHECK_INT(r->pool.n + r->pool.nidle_big, idle);

	/* Unused for a whole period: closed (the first trim only marks). */
	copy_pool_trim(&r->pool);
	CHECK_INT(r->pool.nidle_big, 1);
	copy_pool_trim(&r->pool);
	CHECK_INT(r->pool.nidle_big, 0);
	CHECK_INT(copy_big_pipes(), 0);
	rig_free(r);

	/* A full one goes when its connection does (closed: it holds bytes). */
	r = rig_fast_and_stalled();
	CHECK_INT(r->dir.pending, COPY_PIPE_BIG);
	CHECK_INT(copy_big_pipes(), 1);
	copy_dir_release(&r->dir, &r->pool);
	CHECK_INT(r->pool.nidle_big, 0);
	CHECK_INT(copy_big_pipes(), 0);
	rig_free(r);

	/* The process's quota spent (other workers' transfers): 256 KiB. */
	for (int i = 0; i < COPY_PIPES_BIG; i++)
		held[i] = rig_fast_and_stalled();
	CHECK_INT(copy_big_pipes(), COPY_PIPES_BIG);
	r = rig_fast_and_stalled();
	CHECK_INT(r->dir.p.cap, COPY_PIPE_SIZE);
	CHECK_INT(r->dir.pending, COPY_PIPE_SIZE);
	CHECK_INT(copy_big_pipes(), COPY_PIPES_BIG);
	r->a.eof = true;
	r->b.room = 8 * BIG;
	CHECK_INT(run_all(r), COPY_OK);
	CHECK(delivered(r) && r->b.end.shut);
	rig_free(r);
	for (int i = 0; i < COPY_PIPES_BIG; i++)
		rig_free(held[i]);
	CHECK_INT(copy_big_pipes(), 0);
}

static void
test_budget_bounds_the_run(void)
{
	struct rig *r = rig_new(100000, &plain, &plain);
	int budget = 4;

	r->a.end.drain = true;
	r->a.chunk = 100;
	CHECK_INT(copy_run(&r->dir, &r->a.end, &r->b.end, &r->pool, &budget,
	              &r->moved, 1),
	    COPY_OK);
	CHECK_INT(budget, 0);
	CHECK_INT(r->a.reads + r->b.writes, 4);
	CHECK_INT(r->b.outlen, 200);
	rig_free(r);
}

static void
test_copy_fill(void)
{
	struct rig *r = rig_new(0, &tlsish, &plain);
	size_t bufs = r->pool.nbufs;
	ssize_t n;

	n = copy_fill(&r->dir, &r->a.end, &r->pool, 1);
	CHECK_INT(n, COPY_IO_AGAIN);
	CHECK(r->dir.buf == NULL); /* given back */
	CHECK_INT(r->pool.nbufs, bufs + 1);
	r->a.eof = true;
	CHECK_INT(copy_fill(&r->dir, &r->a.end, &r->pool, 1), COPY_IO_EOF);
	rig_free(r);
}

/* Reads appended to what is pending, in order, until the buffer is full. */
static void
test_copy_fill_appends(void)
{
	struct rig *r = rig_new(COPY_BUF + 100, &plain, &plain);
	size_t got = 0;
	int budget = 100;
	uint64_t moved = 0;

	r->a.chunk = 3;
	r->dir.spliceable = true;
	for (int i = 0; i < 5; i++)
		got += (size_t)copy_fill(&r->dir, &r->a.end, &r->pool, 1);
	CHECK_INT(got, 15);
	CHECK_INT(r->dir.pending, 15);
	CHECK_MEM(r->dir.buf, r->a.data, 15);
	r->a.chunk = 0;
	CHECK_INT(copy_fill(&r->dir, &r->a.end, &r->pool, 2), COPY_BUF - 15);
	CHECK_INT(r->dir.pending, COPY_BUF);
	CHECK(!r->dir.bulk); /* no splice before the buffer is delivered */
	CHECK_INT(copy_fill(&r->dir, &r->a.end, &r->pool, 3), COPY_IO_AGAIN);
	CHECK_INT(r->a.end.last, 2);
	/* copy_run delivers them all, then the rest. */
	r->a.eof = true;
	r->a.end.rd_ready = r->b.end.wr_ready = true;
	CHECK_INT(copy_run(&r->dir, &r->a.end, &r->b.end, &r->pool, &budget,
	              &moved, 4),
	    COPY_OK);
	CHECK_INT(r->b.outlen, COPY_BUF + 100);
	CHECK_MEM(r->b.out, r->a.data, COPY_BUF + 100);
	rig_free(r);
}

int
main(void)
{
	test_chat_message();
	test_short_read_not_trusted_on_tls();
	test_drain_keeps_reading();
	test_bulk_turns_to_splice_and_fins();
	test_not_spliceable_stays_buffered();
	test_no_pipe_falls_back_to_buffer();
	test_backpressure();
	test_fin_only_after_every_byte();
	test_no_fin_syscall_when_other_way_done();
	test_errors_cut();
	test_tls_alert();
	test_close_notify_then_fin();
	test_urgent_mark_on_spliced_path();
	test_splice_zero_is_no_proof_of_eof();
	test_full_pipe_keeps_the_edge();
	test_big_pipes_for_fast_directions_only();
	test_budget_bounds_the_run();
	test_copy_fill();
	test_copy_fill_appends();
	return h_report("test_copy");
}
