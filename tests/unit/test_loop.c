/* Unit tests for loop.c: timers, tasks and I/O dispatch. */
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "loop.h"

static struct loop *L;
static int order[16], norder;

struct tt {
	struct loop_timer t;
	int id;
};

static void
timer_cb(struct loop_timer *t)
{
	struct tt *x = (struct tt *)(void *)t;

	order[norder++] = x->id;
	if (norder == 3)
		loop_stop(L);
}

static void
test_timers(void)
{
	struct tt a = {.id = 1}, b = {.id = 2}, c = {.id = 3}, d = {.id = 4};
	uint64_t now;

	L = loop_new();
	CHECK(L != NULL);
	now = loop_now(L);
	loop_timer_init(&a.t, timer_cb);
	loop_timer_init(&b.t, timer_cb);
	loop_timer_init(&c.t, timer_cb);
	loop_timer_init(&d.t, timer_cb);
	loop_timer_set(L, &a.t, now + 30);
	loop_timer_set(L, &b.t, now + 10);
	loop_timer_set(L, &c.t, now + 20);
	loop_timer_set(L, &d.t, now + 5);
	CHECK(loop_timer_armed(&d.t));
	loop_timer_del(L, &d.t);
	CHECK(!loop_timer_armed(&d.t));
	/* Re-arming moves a timer: a now fires first. */
	loop_timer_set(L, &a.t, now + 1);
	norder = 0;
	CHECK_INT(loop_run(L), 0);
	CHECK_INT(norder, 3);
	CHECK_INT(order[0], 1);
	CHECK_INT(order[1], 2);
	CHECK_INT(order[2], 3);
	CHECK(loop_now(L) >= now + 20);
	loop_free(L);
}

/* Many timers in random order come out sorted. */
static struct loop_timer many[500];
static uint64_t last_deadline;
static int fired, sorted = 1;

static void
many_cb(struct loop_timer *t)
{
	if (t->deadline < last_deadline)
		sorted = 0;
	last_deadline = t->deadline;
	if (++fired == 400)
		loop_stop(L);
}

static void
test_heap(void)
{
	uint64_t now;
	unsigned seed = 12345;

	L = loop_new();
	now = loop_now(L);
	for (int i = 0; i < 500; i++) {
		seed = seed * 1103515245 + 12345;
		loop_timer_init(&many[i], many_cb);
		loop_timer_set(L, &many[i], now + (seed >> 16) % 40);
	}
	for (int i = 0; i < 100; i++)
		loop_timer_del(L, &many[i * 5]);
	CHECK_INT(loop_run(L), 0);
	CHECK_INT(fired, 400);
	CHECK(sorted);
	loop_free(L);
}

struct task_ctx {
	struct loop_task t;
	int runs;
};

static struct task_ctx t1, t2;

static void
task_cb(struct loop_task *t)
{
	struct task_ctx *x = (struct task_ctx *)(void *)t;

	x->runs++;
	/* Requeueing itself runs it next iteration, not in this one. */
	if (x == &t1 && x->runs < 3)
		loop_task_queue(L, t);
	if (x == &t1 && x->runs == 3)
		loop_stop(L);
}

static void
test_tasks(void)
{
	L = loop_new();
	loop_task_init(&t1.t, task_cb);
	loop_task_init(&t2.t, task_cb);
	loop_task_queue(L, &t1.t);
	loop_task_queue(L, &t1.t); /* twice: runs once */
	loop_task_queue(L, &t2.t);
	loop_task_cancel(L, &t2.t);
	CHECK_INT(loop_run(L), 0);
	CHECK_INT(t1.runs, 3);
	CHECK_INT(t2.runs, 0);
	loop_free(L);
}

static int io_events;

static void
io_cb(struct loop_io *io, uint32_t events)
{
	char buf[8];

	if (events & EPOLLIN) {
		io_events++;
		CHECK_INT(read(io->fd, buf, sizeof(buf)), 3);
		loop_stop(L);
	}
}

static void
test_io(void)
{
	int p[2];
	struct loop_io io;

	L = loop_new();
	CHECK_INT(pipe2(p, O_NONBLOCK), 0);
	io.fd = p[0];
	io.cb = io_cb;
	CHECK_INT(loop_io_add(L, &io, EPOLLIN), 0);
	CHECK_INT(loop_io_add(L, &io, EPOLLIN), -17); /* -EEXIST */
	CHECK_INT(write(p[1], "abc", 3), 3);
	CHECK_INT(loop_run(L), 0);
	CHECK_INT(io_events, 1);
	CHECK_INT(loop_io_del(L, &io), 0);
	close(p[0]);
	close(p[1]);
	loop_free(L);
}

/*
 * Two readable ios in one batch: whichever callback runs first closes the
 * other (as a reload drops a listener whose accept is pending, or a
 * connection closes its decoy socket): the other's event, returned in the
 * same batch, must not be dispatched.
 */
struct pair_io {
	struct loop_io io;
	struct pair_io *other;
	int calls;
	bool del; /* drop the other with loop_io_del, else forget + close */
};

static void
pair_cb(struct loop_io *io, uint32_t events)
{
	struct pair_io *me = (struct pair_io *)(void *)io;

	(void)events;
	me->calls++;
	if (me->other->io.fd >= 0) {
		if (me->del)
			CHECK_INT(loop_io_del(L, &me->other->io), 0);
		else
			loop_io_forget(L, &me->other->io);
		close(me->other->io.fd);
		me->other->io.fd = -1;
	}
	loop_stop(L);
}

static void
test_closed_in_batch(bool del)
{
	int p[2], q[2];
	struct pair_io a = {.del = del}, b = {.del = del};

	L = loop_new();
	CHECK_INT(pipe2(p, O_NONBLOCK), 0);
	CHECK_INT(pipe2(q, O_NONBLOCK), 0);
	a.io.fd = p[0];
	b.io.fd = q[0];
	a.io.cb = b.io.cb = pair_cb;
	a.other = &b;
	b.other = &a;
	CHECK_INT(loop_io_add(L, &a.io, EPOLLIN), 0);
	CHECK_INT(loop_io_add(L, &b.io, EPOLLIN), 0);
	CHECK_INT(write(p[1], "x", 1), 1);
	CHECK_INT(write(q[1], "y", 1), 1);
	CHECK_INT(loop_run(L), 0);
	/* Exactly one ran; the one it closed was never called. */
	CHECK_INT(a.calls + b.calls, 1);
	CHECK(a.io.fd < 0 || b.io.fd < 0);
	/* Outside dispatch, forgetting is a no-op. */
	loop_io_forget(L, a.io.fd >= 0 ? &a.io : &b.io);
	if (a.io.fd >= 0)
		close(a.io.fd);
	if (b.io.fd >= 0)
		close(b.io.fd);
	close(p[1]);
	close(q[1]);
	loop_free(L);
}

/*
 * The clock moves between the callbacks of one batch: a callback that
 * takes 30 ms makes the next one see a `now` 30 ms later, so deadlines it
 * sets (an accepted connection's handshake timeout) are not early.
 */
static uint64_t seen[2];
static int nseen;

static void
slow_cb(struct loop_io *io, uint32_t events)
{
	char c;
	struct timespec ts = {.tv_nsec = 30 * 1000 * 1000};

	(void)events;
	CHECK_INT(read(io->fd, &c, 1), 1);
	seen[nseen++] = loop_now(L);
	nanosleep(&ts, NULL);
	if (nseen == 2)
		loop_stop(L);
}

static void
test_clock_moves_within_batch(void)
{
	int p[2], q[2];
	struct loop_io a = {.cb = slow_cb}, b = {.cb = slow_cb};

	L = loop_new();
	CHECK_INT(pipe2(p, O_NONBLOCK), 0);
	CHECK_INT(pipe2(q, O_NONBLOCK), 0);
	a.fd = p[0];
	b.fd = q[0];
	CHECK_INT(loop_io_add(L, &a, EPOLLIN), 0);
	CHECK_INT(loop_io_add(L, &b, EPOLLIN), 0);
	CHECK_INT(write(p[1], "x", 1), 1);
	CHECK_INT(write(q[1], "y", 1), 1);
	CHECK_INT(loop_run(L), 0);
	CHECK_INT(nseen, 2);
	CHECK(seen[1] >= seen[0] + 29);
	/* And the loop's clock is no later than the real one. */
	CHECK(loop_now(L) <= loop_clock_ms());
	for (int i = 0; i < 2; i++) {
		close(p[i]);
		close(q[i]);
	}
	loop_free(L);
}

int
main(void)
{
	test_timers();
	test_heap();
	test_tasks();
	test_io();
	test_closed_in_batch(true);
	test_closed_in_batch(false);
	test_clock_moves_within_batch();
	return h_report("test_loop");
}
