/*
 * control: the thread that runs health checks and the stats listener.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "control.h"
#include "health.h"
#include "log.h"
#include "loop.h"
#include "stats.h"

static struct {
	struct loop *loop;
	struct stats *stats;
	struct health *health;
	struct gen *gen; /* reference: the generation reported on */
	pthread_t thread;
	bool started;
	int efd;
	struct loop_io efd_io;
	pthread_mutex_t lock;
	struct gen *mbox_gen; /* reference, or NULL */
	bool mbox_stop;
} ct = {.efd = -1, .lock = PTHREAD_MUTEX_INITIALIZER};

static void
mailbox_cb(struct loop_io *io, uint32_t events)
{
	struct gen *g;
	bool stop;
	uint64_t v;

	(void)io;
	(void)events;
	if (read(ct.efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_warn("control: mailbox");
	pthread_mutex_lock(&ct.lock);
	g = ct.mbox_gen;
	ct.mbox_gen = NULL;
	stop = ct.mbox_stop;
	pthread_mutex_unlock(&ct.lock);
	if (g != NULL) {
		health_apply(ct.health, g);
		stats_set_gen(ct.stats, g);
		gen_unref(ct.gen);
		ct.gen = g;
	}
	if (stop)
		loop_stop(ct.loop);
}

static void *
control_main(void *arg)
{
	int r;

	(void)arg;
	r = loop_run(ct.loop);
	if (r < 0)
		log_errorx("control: event loop failed: %s", strerror(-r));
	return NULL;
}

int
control_bind(struct gen *gen, char *err, size_t errlen)
{
	ct.stats = stats_new(gen->cfg, err, errlen);
	return ct.stats != NULL ? 0 : -1;
}

int
control_start(struct gen *gen, struct worker **workers, unsigned n)
{
	ct.loop = loop_new();
	if (ct.loop == NULL)
		return -1;
	ct.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ct.efd < 0)
		return -1;
	ct.efd_io.fd = ct.efd;
	ct.efd_io.cb = mailbox_cb;
	if (loop_io_add(ct.loop, &ct.efd_io, EPOLLIN) != 0)
		return -1;
	ct.health = health_new(ct.loop);
	if (ct.health == NULL)
		return -1;
	gen_ref(gen);
	ct.gen = gen;
	health_apply(ct.health, gen);
	stats_set_gen(ct.stats, gen);
	if (stats_start(ct.stats, ct.loop, workers, n) != 0)
		return -1;
	if (pthread_create(&ct.thread, NULL, control_main, NULL) != 0)
		return -1;
	ct.started = true;
	return 0;
}

static void
ring(void)
{
	uint64_t one = 1;

	if (write(ct.efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("control: mailbox write");
}

void
control_apply(struct gen *gen)
{
	struct gen *old;

	if (!ct.started)
		return;
	gen_ref(gen);
	pthread_mutex_lock(&ct.lock);
	old = ct.mbox_gen;
	ct.mbox_gen = gen;
	pthread_mutex_unlock(&ct.lock);
	gen_unref(old);
	ring();
}

void
control_ports(char *buf, size_t len)
{
	if (ct.stats != NULL)
		stats_ports(ct.stats, buf, len);
}

void
control_stop(void)
{
	if (ct.started) {
		pthread_mutex_lock(&ct.lock);
		ct.mbox_stop = true;
		pthread_mutex_unlock(&ct.lock);
		ring();
		pthread_join(ct.thread, NULL);
		ct.started = false;
	}
	health_free(ct.health);
	ct.health = NULL;
	stats_free(ct.stats);
	ct.stats = NULL;
	gen_unref(ct.gen);
	ct.gen = NULL;
	gen_unref(ct.mbox_gen);
	ct.mbox_gen = NULL;
	if (ct.efd >= 0)
		close(ct.efd);
	ct.efd = -1;
	loop_free(ct.loop);
	ct.loop = NULL;
}
