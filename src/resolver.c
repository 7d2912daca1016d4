/*
 * resolver: periodic re-resolution of upstream names in its own thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "log.h"
#include "resolver.h"

static struct {
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* wakes the thread, and waiters of a pass */
	struct gen *gen; /* reference */
	bool stop;
	bool kick;
	uint64_t want; /* passes asked for (kicks) */
	uint64_t done; /* the "want" a finished pass started with */
	uint64_t interval_ms;
} rs = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void
deadline_in(struct timespec *ts, uint64_t ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += (time_t)(ms / 1000);
	ts->tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static void *
resolver_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&rs.lock);
	while (!rs.stop) {
		struct timespec ts;
		struct gen *g;
		uint64_t serving;

		if (!rs.kick) {
			deadline_in(&ts, rs.interval_ms);
			while (!rs.stop && !rs.kick &&
			    pthread_cond_timedwait(&rs.cond, &rs.lock, &ts) !=
			        ETIMEDOUT)
				;
			if (rs.stop)
				break;
		}
		rs.kick = false;
		serving = rs.want;
		g = rs.gen;
		gen_ref(g);
		pthread_mutex_unlock(&rs.lock);
		for (size_t i = 0; i < g->cfg->nupstreams; i++)
			upstream_resolve(g->ups[i], false);
		gen_unref(g);
		pthread_mutex_lock(&rs.lock);
		rs.done = serving;
		pthread_cond_broadcast(&rs.cond);
	}
	pthread_mutex_unlock(&rs.lock);
	return NULL;
}

int
resolver_start(struct gen *gen, uint64_t interval_ms)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&rs.cond, &ca);
	pthread_condattr_destroy(&ca);
	gen_ref(gen);
	rs.gen = gen;
	rs.interval_ms = interval_ms;
	rs.kick = true;
	rs.want = 1;
	if (pthread_create(&rs.thread, NULL, resolver_main, NULL) != 0) {
		gen_unref(rs.gen);
		rs.gen = NULL;
		return -1;
	}
	rs.started = true;
	return 0;
}

void
resolver_wait(uint64_t timeout_ms)
{
	struct timespec ts;
	uint64_t target;

	if (!rs.started)
		return;
	deadline_in(&ts, timeout_ms);
	pthread_mutex_lock(&rs.lock);
	target = rs.want;
	while (rs.done < target &&
	    pthread_cond_timedwait(&rs.cond, &rs.lock, &ts) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&rs.lock);
}

void
resolver_set_gen(struct gen *gen)
{
	struct gen *old;

	if (!rs.started)
		return;
	gen_ref(gen);
	pthread_mutex_lock(&rs.lock);
	old = rs.gen;
	rs.gen = gen;
	rs.kick = true;
	rs.want++;
	pthread_cond_broadcast(&rs.cond);
	pthread_mutex_unlock(&rs.lock);
	gen_unref(old);
}

void
resolver_stop(void)
{
	struct timespec ts;

	if (!rs.started)
		return;
	pthread_mutex_lock(&rs.lock);
	rs.stop = true;
	pthread_cond_broadcast(&rs.cond);
	pthread_mutex_unlock(&rs.lock);
	/*
	 * A getaddrinfo() in progress cannot be interrupted; rather than
	 * delay the exit by the resolver's own timeouts, leave it to exit(3).
	 */
	deadline_in(&ts, 1000);
	if (pthread_timedjoin_np(rs.thread, NULL, &ts) != 0)
		return;
	rs.started = false;
	gen_unref(rs.gen);
	rs.gen = NULL;
}
