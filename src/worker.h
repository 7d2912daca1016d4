/*
 * worker: one event-loop thread with its own listening sockets, pool of
 * pipes, connections and counters.  Nothing on the relaying path is shared
 * with other workers.
 *
 * The main thread talks to a worker through a mailbox (a mutex-guarded
 * slot and an eventfd): a new generation to apply, or a drain to start.
 */
#ifndef LIFELINE_WORKER_H
#define LIFELINE_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "gen.h"
#include "loop.h"
#include "relay.h"

struct accept_handle;
struct worker_plan;

struct worker {
	unsigned id;
	struct loop *loop; /* owned */
	pthread_t thread;
	bool started;
	int notify_fd; /* borrowed: eventfd the main thread polls */
	int efd; /* owned: mailbox doorbell */
	struct loop_io efd_io;
	struct gen *gen; /* reference: the generation in force */
	struct accept_handle **acc; /* owned array of owned handles */
	size_t nacc;
	struct relay_ctx *relay; /* owned: pools and live connections */
	struct relay_counters cnt; /* lent to relay */
	struct loop_timer tick;
	struct loop_timer pause;
	struct loop_timer drain_timer;
	bool paused; /* accepts paused after EMFILE/ENFILE */
	bool fd_exhausted; /* logged for this burst */
	bool draining;
	_Atomic bool done;

	pthread_mutex_t mbox_lock;
	struct worker_plan *mbox_plan; /* owned, or NULL */
	bool mbox_drain;
	uint64_t mbox_deadline; /* monotonic ms */
};

/* Creates worker id on gen (takes its own reference). NULL on failure. */
struct worker *worker_new(unsigned id, struct gen *gen, int notify_fd);
/* Starts its thread; returns 0 or -1. */
int worker_start(struct worker *w);
/*
 * Main thread, on reload: everything w needs to switch to gen, allocated
 * here (the plan holds its own reference to gen).  NULL when memory ran
 * out: the reload is refused before any worker changed.
 */
struct worker_plan *worker_prepare(struct worker *w, struct gen *gen);
void worker_plan_free(struct worker_plan *p);
/* Main thread: hands the plan to w, which applies it without allocating;
 * consumes p. */
void worker_commit(struct worker *w, struct worker_plan *p);
/* Main thread: stop accepting, close what is left at deadline (ms). */
void worker_drain(struct worker *w, uint64_t deadline);
/* Joins the thread (after it is done) and frees w; NULL-safe. */
void worker_free(struct worker *w);
bool worker_done(const struct worker *w);

#endif
