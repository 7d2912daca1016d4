/*
 * worker: an event-loop thread: accepts, mailbox, drain, housekeeping.
 */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "worker.h"
#include "util.h"

/* Accepts per wake-up per socket, and the pause after EMFILE/ENFILE. */
#define WORKER_ACCEPT_BATCH 64
#define WORKER_PAUSE_MS 100
#define WORKER_TICK_MS 1000

struct accept_handle {
	struct loop_io io; /* io.fd: borrowed from sock->fds[w->id] */
	struct worker *w; /* borrowed */
	struct listener *ls; /* borrowed from w->gen */
	struct lsock *sock; /* borrowed from w->gen */
};

static void
pause_accepts(struct worker *w)
{
	uint64_t now = loop_now(w->loop);

	if (!w->fd_exhausted) {
		log_warnx("worker %u: out of file descriptors; pausing "
		          "accepts (raise the open files limit or lower "
		          "maxconn)",
		    w->id);
		w->fd_exhausted = true;
	}
	RELAY_CNT_ADD(&w->cnt, accept_pauses, 1);
	if (w->paused)
		return;
	w->paused = true;
	for (size_t i = 0; i < w->nacc; i++)
		(void)loop_io_mod(w->loop, &w->acc[i]->io, 0);
	loop_timer_set(w->loop, &w->pause, now + WORKER_PAUSE_MS);
}

static void
pause_cb(struct loop_timer *t)
{
	struct worker *w = container_of(t, struct worker, pause);

	w->paused = false;
	if (w->draining)
		return;
	for (size_t i = 0; i < w->nacc; i++)
		(void)loop_io_mod(w->loop, &w->acc[i]->io, EPOLLIN);
}

static void
accept_cb(struct loop_io *io, uint32_t events)
{
	struct accept_handle *ah = container_of(io, struct accept_handle, io);
	struct worker *w = ah->w;

	(void)events;
	for (int i = 0; i < WORKER_ACCEPT_BATCH && !w->paused; i++) {
		int fd =
		    accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR || errno == ECONNABORTED ||
			    errno == EPROTO)
				continue;
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				pause_accepts(w);
				return;
			}
			log_warn(
			    "worker %u: accept on %s", w->id, ah->sock->text);
			return;
		}
		if (w->fd_exhausted) {
			log_info("worker %u: file descriptors available "
			         "again; accepting",
			    w->id);
			w->fd_exhausted = false;
		}
		relay_accept(w->relay, w->gen, ah->ls, fd);
	}
}

static void
drop_handle(struct worker *w, struct accept_handle *ah)
{
	(void)loop_io_del(w->loop, &ah->io);
	close(ah->io.fd);
	ah->sock->fds[w->id] = -1;
	free(ah);
}

/*
 * What a worker needs to switch to a generation, all of it allocated on
 * the main thread, so that applying it on the worker cannot fail half-way.
 */
struct worker_plan {
	struct gen *gen; /* reference */
	struct accept_handle **acc; /* owned array of owned handles */
	size_t n;
};

static void
plan_free(struct worker_plan *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n; i++)
		free(p->acc[i]);
	free(p->acc);
	gen_unref(p->gen);
	free(p);
}

/*
 * A handle for each of g's sockets that w has a descriptor of.  Returns
 * the plan (with its own reference to g), or NULL when memory ran out.
 */
static struct worker_plan *
plan_new(struct worker *w, struct gen *g)
{
	struct worker_plan *p = calloc(1, sizeof(*p));
	size_t cap = 0;

	if (p == NULL)
		return NULL;
	gen_ref(g);
	p->gen = g;
	for (size_t i = 0; i < g->nlisteners; i++)
		cap += g->listeners[i].nsocks;
	p->acc = calloc(cap ? cap : 1, sizeof(*p->acc));
	if (p->acc == NULL)
		goto fail;
	for (size_t i = 0; i < g->nlisteners; i++) {
		struct listener *l = &g->listeners[i];

		for (size_t j = 0; j < l->nsocks; j++) {
			struct lsock *s = l->socks[j];
			struct accept_handle *ah;

			if (s->fds[w->id] < 0)
				continue;
			ah = calloc(1, sizeof(*ah));
			if (ah == NULL)
				goto fail;
			ah->io.fd = s->fds[w->id];
			ah->io.cb = accept_cb;
			ah->w = w;
			ah->sock = s;
			ah->ls = l;
			p->acc[p->n++] = ah;
		}
	}
	return p;
fail:
	plan_free(p);
	return NULL;
}

/*
 * Switches w to its plan's generation (consumes the plan); allocates
 * nothing.  A socket w watches already keeps its handle (and its place in
 * the epoll set); new sockets are watched; sockets the generation no longer
 * has are closed.
 */
static void
apply_plan(struct worker *w, struct worker_plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		struct accept_handle *ah = p->acc[i];
		bool kept = false;

		for (size_t k = 0; k < w->nacc && !kept; k++) {
			if (w->acc[k] != NULL && w->acc[k]->sock == ah->sock) {
				w->acc[k]->ls = ah->ls;
				free(ah);
				p->acc[i] = w->acc[k];
				w->acc[k] = NULL;
				kept = true;
			}
		}
		if (!kept &&
		    loop_io_add(w->loop, &ah->io, w->paused ? 0 : EPOLLIN) != 0)
			log_warn("worker %u: cannot watch %s", w->id,
			    ah->sock->text);
	}
	/* Addresses the new generation no longer has. */
	for (size_t k = 0; k < w->nacc; k++) {
		if (w->acc[k] != NULL)
			drop_handle(w, w->acc[k]);
	}
	free(w->acc);
	w->acc = p->acc;
	w->nacc = p->n;
	if (w->gen != NULL)
		gen_unref(w->gen);
	w->gen = p->gen;
	free(p);
}

static void
stop_if_drained(struct worker *w)
{
	if (w->draining && relay_conns(w->relay) == 0)
		loop_stop(w->loop);
}

/* The relay's callback after a connection ended: stops a drained worker. */
static void
conn_gone(void *arg)
{
	stop_if_drained(arg);
}

static void
drain_cb(struct loop_timer *t)
{
	struct worker *w = container_of(t, struct worker, drain_timer);

	size_t n = relay_conns(w->relay);

	if (n > 0)
		log_info("worker %u: drain timeout: closing %zu connection%s",
		    w->id, n, n == 1 ? "" : "s");
	relay_close_all(w->relay);
	loop_stop(w->loop);
}

static void
start_drain(struct worker *w, uint64_t deadline)
{
	for (size_t k = 0; k < w->nacc; k++)
		drop_handle(w, w->acc[k]);
	free(w->acc);
	w->acc = NULL;
	w->nacc = 0;
	w->draining = true;
	loop_timer_set(w->loop, &w->drain_timer, deadline);
	stop_if_drained(w);
}

static void
mailbox_cb(struct loop_io *io, uint32_t events)
{
	struct worker *w = container_of(io, struct worker, efd_io);
	struct worker_plan *plan;
	bool drain;
	uint64_t deadline, v;

	(void)events;
	if (read(w->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_warn("worker %u: mailbox", w->id);
	pthread_mutex_lock(&w->mbox_lock);
	plan = w->mbox_plan;
	w->mbox_plan = NULL;
	drain = w->mbox_drain;
	deadline = w->mbox_deadline;
	pthread_mutex_unlock(&w->mbox_lock);
	if (plan != NULL) {
		if (w->draining)
			plan_free(plan);
		else
			apply_plan(w, plan);
	}
	if (drain) {
		if (!w->draining)
			start_drain(w, deadline);
		else if (deadline < w->drain_timer.deadline)
			loop_timer_set(w->loop, &w->drain_timer, deadline);
	}
}

/* Ticks between two malloc_trim() calls (worker 0's). */
#define WORKER_TRIM_TICKS 10

static void
tick_cb(struct loop_timer *t)
{
	struct worker *w = container_of(t, struct worker, tick);
	static unsigned trim_ticks; /* worker 0's only */

	relay_pool_trim(w->relay);
	/*
	 * Give the pages a burst of connections left free back to the
	 * system (inside the heap too, not only at its top): resident memory
	 * then follows what is live, not the highest peak since the start.
	 */
	if (w->id == 0 && ++trim_ticks % WORKER_TRIM_TICKS == 0)
		(void)malloc_trim(0);
	loop_timer_set(w->loop, &w->tick, loop_now(w->loop) + WORKER_TICK_MS);
}

struct worker *
worker_new(unsigned id, struct gen *gen, int notify_fd)
{
	struct worker *w = calloc(1, sizeof(*w));
	struct worker_plan *plan;

	if (w == NULL)
		return NULL;
	w->id = id;
	w->notify_fd = notify_fd;
	w->efd = -1;
	pthread_mutex_init(&w->mbox_lock, NULL);
	w->loop = loop_new();
	if (w->loop == NULL)
		goto fail;
	w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->efd < 0)
		goto fail;
	w->efd_io.fd = w->efd;
	w->efd_io.cb = mailbox_cb;
	if (loop_io_add(w->loop, &w->efd_io, EPOLLIN) != 0)
		goto fail;
	w->relay = relay_ctx_new(
	    w->loop, id, &w->cnt, &relay_sys_kernel, conn_gone, w);
	if (w->relay == NULL)
		goto fail;
	loop_timer_init(&w->tick, tick_cb);
	loop_timer_init(&w->pause, pause_cb);
	loop_timer_init(&w->drain_timer, drain_cb);
	loop_timer_set(w->loop, &w->tick, loop_now(w->loop) + WORKER_TICK_MS);
	plan = plan_new(w, gen);
	if (plan == NULL)
		goto fail;
	apply_plan(w, plan);
	return w;
fail:
	worker_free(w);
	return NULL;
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t one = 1;
	int r;

	r = loop_run(w->loop);
	if (r < 0)
		log_errorx(
		    "worker %u: event loop failed: %s", w->id, strerror(-r));
	relay_close_all(w->relay);
	atomic_store(&w->done, true);
	if (write(w->notify_fd, &one, sizeof(one)) < 0)
		log_warn("worker %u: cannot notify the main thread", w->id);
	return NULL;
}

int
worker_start(struct worker *w)
{
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
		return -1;
	w->started = true;
	return 0;
}

static void
mailbox_ring(struct worker *w)
{
	uint64_t one = 1;

	if (write(w->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("worker %u: mailbox write", w->id);
}

struct worker_plan *
worker_prepare(struct worker *w, struct gen *gen)
{
	return plan_new(w, gen);
}

void
worker_plan_free(struct worker_plan *p)
{
	plan_free(p);
}

void
worker_commit(struct worker *w, struct worker_plan *p)
{
	struct worker_plan *old;

	pthread_mutex_lock(&w->mbox_lock);
	old = w->mbox_plan;
	w->mbox_plan = p;
	pthread_mutex_unlock(&w->mbox_lock);
	/* A generation never applied: its new sockets close with it. */
	plan_free(old);
	mailbox_ring(w);
}

void
worker_drain(struct worker *w, uint64_t deadline)
{
	pthread_mutex_lock(&w->mbox_lock);
	if (!w->mbox_drain || deadline < w->mbox_deadline)
		w->mbox_deadline = deadline;
	w->mbox_drain = true;
	pthread_mutex_unlock(&w->mbox_lock);
	mailbox_ring(w);
}

bool
worker_done(const struct worker *w)
{
	return atomic_load(&w->done);
}

void
worker_free(struct worker *w)
{
	if (w == NULL)
		return;
	if (w->started)
		pthread_join(w->thread, NULL);
	for (size_t k = 0; k < w->nacc; k++)
		drop_handle(w, w->acc[k]);
	free(w->acc);
	relay_ctx_free(w->relay);
	plan_free(w->mbox_plan);
	gen_unref(w->gen);
	if (w->efd >= 0)
		close(w->efd);
	loop_free(w->loop);
	pthread_mutex_destroy(&w->mbox_lock);
	free(w);
}
