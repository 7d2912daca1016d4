/*
 * loop: one event loop per thread: epoll, timers, deferred tasks.
 *
 * The only module that calls epoll_*.  Callbacks run on the loop's thread.
 * Order of one iteration (loop_run): wait for I/O (no longer than the next
 * timer or at once when tasks are queued), run I/O callbacks, run expired
 * timers, run deferred tasks.  Deferred tasks run after every I/O callback
 * of the batch, so an object closed by one callback can be freed by a task
 * while later events of the same batch still see it (marked closed); or
 * the callback drops those events (loop_io_forget, loop_io_del) and frees
 * or reuses the io at once.
 */
#ifndef LIFELINE_LOOP_H
#define LIFELINE_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

struct loop;
struct loop_io;
struct loop_timer;
struct loop_task;

typedef void (*loop_io_cb)(struct loop_io *io, uint32_t events);
typedef void (*loop_timer_cb)(struct loop_timer *t);
typedef void (*loop_task_cb)(struct loop_task *t);

struct loop_io {
	int fd;
	loop_io_cb cb;
};

struct loop_timer {
	uint64_t deadline; /* ms, monotonic */
	size_t idx; /* position in the heap; SIZE_MAX when disarmed */
	loop_timer_cb cb;
};

struct loop_task {
	/* Both NULL when not queued (or alone in the queue: see queued()). */
	struct loop_task *prev, *next;
	uint64_t seq; /* loop's task round when queued */
	loop_task_cb cb;
};

/* Returns a new loop or NULL (errno set). */
struct loop *loop_new(void);
void loop_free(struct loop *loop);

/*
 * Monotonic milliseconds, read after the wait and after each I/O callback
 * (constant within a callback, timer or task run).
 */
uint64_t loop_now(const struct loop *loop);
/* Monotonic milliseconds, read from the clock now. */
uint64_t loop_clock_ms(void);
/* Monotonic microseconds, read from the clock now. */
uint64_t loop_clock_us(void);

/* epoll wrappers: return 0 or -errno.  io->fd and io->cb must be set. */
int loop_io_add(struct loop *loop, struct loop_io *io, uint32_t events);
int loop_io_mod(struct loop *loop, struct loop_io *io, uint32_t events);
/*
 * loop_io_del also forgets io's events still to come in the batch being
 * dispatched (loop_io_forget): a callback may close or free another io
 * whose event comes later in the same batch.
 */
int loop_io_del(struct loop *loop, struct loop_io *io);
/*
 * Drops io's events still to come in this iteration's batch; call it
 * before closing io's descriptor (close(2) takes it out of the epoll set,
 * not out of a batch already returned) or before reusing io for another
 * descriptor.  A no-op outside dispatch.
 */
void loop_io_forget(struct loop *loop, struct loop_io *io);

void loop_timer_init(struct loop_timer *t, loop_timer_cb cb);
/* Arms (or re-arms) t to fire at deadline (loop_now() based). */
void loop_timer_set(struct loop *loop, struct loop_timer *t, uint64_t deadline);
void loop_timer_del(struct loop *loop, struct loop_timer *t);
bool loop_timer_armed(const struct loop_timer *t);

void loop_task_init(struct loop_task *t, loop_task_cb cb);
/* Queues t to run at the end of this iteration (once, however often). */
void loop_task_queue(struct loop *loop, struct loop_task *t);
void loop_task_cancel(struct loop *loop, struct loop_task *t);

/*
 * Runs until loop_stop() (which may come first); returns 0, or -errno if
 * epoll_wait fails.  It may be run again after it returned.
 */
int loop_run(struct loop *loop);
void loop_stop(struct loop *loop);

#endif
