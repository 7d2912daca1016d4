/*
 * loop: epoll, a binary min-heap of timers, and a list of deferred tasks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

#define LOOP_MAX_EVENTS 256

struct loop {
	int epfd;
	uint64_t now;
	bool stop;
	struct loop_timer **heap; /* owned array of borrowed timers */
	size_t nheap, capheap;
	struct loop_task *head, *tail; /* borrowed: queued tasks */
	uint64_t task_seq; /* bumped at each run_tasks() */
	/*
	 * The batch loop_run is dispatching: events [next, n) are still to
	 * come; loop_io_forget() clears those of an io being closed.
	 */
	struct epoll_event *batch;
	int next, n;
};

uint64_t
loop_clock_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t
loop_clock_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

struct loop *
loop_new(void)
{
	struct loop *loop = calloc(1, sizeof(*loop));

	if (loop == NULL)
		return NULL;
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0) {
		int saved = errno;

		free(loop);
		errno = saved;
		return NULL;
	}
	loop->now = loop_clock_ms();
	return loop;
}

void
loop_free(struct loop *loop)
{
	if (loop == NULL)
		return;
	if (loop->epfd >= 0)
		close(loop->epfd);
	free(loop->heap);
	free(loop);
}

uint64_t
loop_now(const struct loop *loop)
{
	return loop->now;
}

static int
io_ctl(struct loop *loop, int op, struct loop_io *io, uint32_t events)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.events = events;
	ev.data.ptr = io;
	if (epoll_ctl(loop->epfd, op, io->fd, &ev) != 0)
		return -errno;
	return 0;
}

int
loop_io_add(struct loop *loop, struct loop_io *io, uint32_t events)
{
	return io_ctl(loop, EPOLL_CTL_ADD, io, events);
}

int
loop_io_mod(struct loop *loop, struct loop_io *io, uint32_t events)
{
	return io_ctl(loop, EPOLL_CTL_MOD, io, events);
}

int
loop_io_del(struct loop *loop, struct loop_io *io)
{
	loop_io_forget(loop, io);
	return io_ctl(loop, EPOLL_CTL_DEL, io, 0);
}

void
loop_io_forget(struct loop *loop, struct loop_io *io)
{
	for (int i = loop->next; i < loop->n; i++) {
		if (loop->batch[i].data.ptr == io)
			loop->batch[i].data.ptr = NULL;
	}
}

/* Heap helpers: the timer with the smallest deadline sits at index 0. */

static void
heap_place(struct loop *loop, size_t i, struct loop_timer *t)
{
	loop->heap[i] = t;
	t->idx = i;
}

static void
heap_up(struct loop *loop, size_t i)
{
	struct loop_timer *t = loop->heap[i];

	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (loop->heap[parent]->deadline <= t->deadline)
			break;
		heap_place(loop, i, loop->heap[parent]);
		i = parent;
	}
	heap_place(loop, i, t);
}

static void
heap_down(struct loop *loop, size_t i)
{
	struct loop_timer *t = loop->heap[i];

	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		uint64_t md = t->deadline;

		if (l < loop->nheap && loop->heap[l]->deadline < md) {
			m = l;
			md = loop->heap[l]->deadline;
		}
		if (r < loop->nheap && loop->heap[r]->deadline < md)
			m = r;
		if (m == i)
			break;
		heap_place(loop, i, loop->heap[m]);
		i = m;
	}
	heap_place(loop, i, t);
}

void
loop_timer_init(struct loop_timer *t, loop_timer_cb cb)
{
	t->deadline = 0;
	t->idx = SIZE_MAX;
	t->cb = cb;
}

bool
loop_timer_armed(const struct loop_timer *t)
{
	return t->idx != SIZE_MAX;
}

void
loop_timer_del(struct loop *loop, struct loop_timer *t)
{
	size_t i = t->idx;
	struct loop_timer *last;

	if (i == SIZE_MAX)
		return;
	t->idx = SIZE_MAX;
	last = loop->heap[--loop->nheap];
	if (last == t)
		return;
	heap_place(loop, i, last);
	heap_up(loop, i);
	heap_down(loop, last->idx);
}

void
loop_timer_set(struct loop *loop, struct loop_timer *t, uint64_t deadline)
{
	if (t->idx != SIZE_MAX) {
		uint64_t old = t->deadline;

		t->deadline = deadline;
		if (deadline < old)
			heap_up(loop, t->idx);
		else
			heap_down(loop, t->idx);
		return;
	}
	if (loop->nheap == loop->capheap) {
		size_t ncap = loop->capheap ? loop->capheap * 2 : 64;
		struct loop_timer **n =
		    reallocarray(loop->heap, ncap, sizeof(*n));

		/*
		 * Out of memory for a timer: fire it at the next iteration
		 * instead of losing it would need the heap too; there is no
		 * safe degraded mode, so treat it as a broken invariant.
		 */
		if (n == NULL)
			abort();
		loop->heap = n;
		loop->capheap = ncap;
	}
	t->deadline = deadline;
	heap_place(loop, loop->nheap++, t);
	heap_up(loop, t->idx);
}

void
loop_task_init(struct loop_task *t, loop_task_cb cb)
{
	t->prev = t->next = NULL;
	t->cb = cb;
}

/* True when t is in loop's queue (no flag: a connection is smaller). */
static bool
queued(const struct loop *loop, const struct loop_task *t)
{
	return t->prev != NULL || loop->head == t;
}

void
loop_task_queue(struct loop *loop, struct loop_task *t)
{
	if (queued(loop, t))
		return;
	t->seq = loop->task_seq;
	t->next = NULL;
	t->prev = loop->tail;
	if (loop->tail != NULL)
		loop->tail->next = t;
	else
		loop->head = t;
	loop->tail = t;
}

void
loop_task_cancel(struct loop *loop, struct loop_task *t)
{
	if (!queued(loop, t))
		return;
	if (t->prev != NULL)
		t->prev->next = t->next;
	else
		loop->head = t->next;
	if (t->next != NULL)
		t->next->prev = t->prev;
	else
		loop->tail = t->prev;
	t->prev = t->next = NULL;
}

void
loop_stop(struct loop *loop)
{
	loop->stop = true;
}

static int
next_wait(const struct loop *loop)
{
	uint64_t d;

	if (loop->head != NULL)
		return 0;
	if (loop->nheap == 0)
		return 1000;
	d = loop->heap[0]->deadline;
	if (d <= loop->now)
		return 0;
	d -= loop->now;
	return d > 1000 ? 1000 : (int)d;
}

static void
run_timers(struct loop *loop)
{
	while (loop->nheap > 0 && loop->heap[0]->deadline <= loop->now) {
		struct loop_timer *t = loop->heap[0];

		loop_timer_del(loop, t);
		t->cb(t);
	}
}

static void
run_tasks(struct loop *loop)
{
	/* Tasks queued while these run wait for the next iteration. */
	uint64_t cur = ++loop->task_seq;

	while (loop->head != NULL && loop->head->seq < cur) {
		struct loop_task *t = loop->head;

		loop_task_cancel(loop, t);
		t->cb(t);
	}
}

int
loop_run(struct loop *loop)
{
	struct epoll_event evs[LOOP_MAX_EVENTS];

	while (!loop->stop) {
		int n = epoll_wait(
		    loop->epfd, evs, LOOP_MAX_EVENTS, next_wait(loop));

		if (n < 0 && errno != EINTR)
			return -errno;
		loop->now = loop_clock_ms();
		loop->batch = evs;
		loop->n = n;
		for (int i = 0; i < n; i++) {
			struct loop_io *io = evs[i].data.ptr;

			loop->next = i + 1;
			/* NULL: its io was closed by an earlier callback. */
			if (io == NULL)
				continue;
			io->cb(io, evs[i].events);
			/*
			 * A long batch (a burst of accepts or closes on a
			 * loaded machine) must not date the next callback's
			 * deadlines from its start (early timeouts), nor the
			 * timers' run.
			 */
			loop->now = loop_clock_ms();
		}
		loop->n = loop->next = 0;
		run_timers(loop);
		run_tasks(loop);
	}
	/* Stopped: it may run again (the unit tests run it in slices). */
	loop->stop = false;
	return 0;
}
