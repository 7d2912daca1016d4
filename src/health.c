/*
 * health: active upstream checks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "health.h"
#include "log.h"
#include "proxyproto.h"

#define container_of(ptr, type, member)                                        \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

struct check {
	struct health *h; /* borrowed */
	struct upstream_server *srv; /* reference */
	uint64_t interval_ms;
	uint64_t connect_ms;
	enum cfg_send_proxy send_proxy; /* strongest of its groups' */
	struct loop_io io; /* fd -1 between checks */
	struct loop_timer timer;
	unsigned addr; /* address tried by this check */
	bool keep; /* still in the generation (health_apply) */
};

struct health {
	struct loop *loop; /* borrowed */
	struct check **v; /* owned array of owned checks */
	size_t n;
	unsigned seed;
};

static void check_start(struct check *k);

/* Up to +-10% of ms, so that servers are not all hit together. */
static uint64_t
jitter(struct health *h, uint64_t ms)
{
	uint64_t span = ms / 5;

	h->seed = h->seed * 1103515245u + 12345u;
	if (span == 0)
		return ms;
	return ms - span / 2 + (h->seed >> 8) % span;
}

static void
check_end(struct check *k, bool ok)
{
	uint64_t now = loop_now(k->h->loop), next;

	if (k->io.fd >= 0) {
		close(k->io.fd);
		k->io.fd = -1;
	}
	/* A server that is down is looked at again sooner. */
	next = ok ? k->interval_ms : k->interval_ms / 4;
	if (next < 1000)
		next = k->interval_ms < 1000 ? k->interval_ms : 1000;
	next = now + jitter(k->h, next);
	upstream_check_report(k->srv, ok, now, next + k->connect_ms);
	loop_timer_set(k->h->loop, &k->timer, next);
}

/* Tries address k->addr; ends the check when none is left. */
static void
check_connect(struct check *k)
{
	struct sockaddr_storage ss;
	uint64_t now = loop_now(k->h->loop);

	while (upstream_server_addr(k->srv, k->addr, &ss)) {
		int fd = socket(ss.ss_family,
		    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

		if (fd < 0) {
			/* Our shortage says nothing about the server. */
			loop_timer_set(k->h->loop, &k->timer, now + 1000);
			return;
		}
		if (connect(fd, (struct sockaddr *)&ss,
		        addr_len((struct sockaddr *)&ss)) == 0 ||
		    errno == EINPROGRESS) {
			k->io.fd = fd;
			if (loop_io_add(k->h->loop, &k->io, EPOLLOUT) != 0) {
				close(fd);
				k->io.fd = -1;
				loop_timer_set(
				    k->h->loop, &k->timer, now + 1000);
				return;
			}
			loop_timer_set(
			    k->h->loop, &k->timer, now + k->connect_ms);
			return;
		}
		close(fd);
		k->addr++;
	}
	check_end(k, false);
}

static void
check_io_cb(struct loop_io *io, uint32_t events)
{
	struct check *k = container_of(io, struct check, io);
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		err = errno;
	if (err == 0 && !(events & (EPOLLERR | EPOLLHUP))) {
		uint8_t hdr[PP_BUILD_MAX];
		ssize_t n = 0;

		if (k->send_proxy != CFG_SEND_PROXY_NONE)
			n = pp_build(
			    k->send_proxy == CFG_SEND_PROXY_V1 ? PP_V1 : PP_V2,
			    NULL, NULL, 1, hdr, sizeof(hdr));
		if (n > 0 && write(io->fd, hdr, (size_t)n) != n)
			log_debug("health check of %s: cannot write the PROXY "
			          "header",
			    k->srv->label);
		check_end(k, true);
		return;
	}
	close(io->fd);
	io->fd = -1;
	k->addr++;
	check_connect(k);
}

static void
check_timer_cb(struct loop_timer *t)
{
	struct check *k = container_of(t, struct check, timer);

	if (k->io.fd >= 0) {
		/* Connect timed out: next address, or the verdict. */
		close(k->io.fd);
		k->io.fd = -1;
		k->addr++;
		check_connect(k);
		return;
	}
	check_start(k);
}

static void
check_start(struct check *k)
{
	k->addr = 0;
	check_connect(k);
}

static void
check_free(struct health *h, struct check *k)
{
	if (k->io.fd >= 0)
		close(k->io.fd);
	loop_timer_del(h->loop, &k->timer);
	upstream_server_unref(k->srv);
	free(k);
}

struct health *
health_new(struct loop *loop)
{
	struct health *h = calloc(1, sizeof(*h));

	if (h == NULL)
		return NULL;
	h->loop = loop;
	h->seed = (unsigned)loop_clock_ms();
	return h;
}

static struct check *
find(struct health *h, struct upstream_server *s)
{
	for (size_t i = 0; i < h->n; i++) {
		if (h->v[i] != NULL && h->v[i]->srv == s)
			return h->v[i];
	}
	return NULL;
}

void
health_apply(struct health *h, struct gen *g)
{
	size_t kept = 0;

	for (size_t i = 0; i < h->n; i++)
		h->v[i]->keep = false;
	for (size_t u = 0; u < g->cfg->nupstreams; u++) {
		struct upstream *up = g->ups[u];

		for (size_t j = 0; j < up->nservers; j++) {
			struct upstream_server *s = up->servers[j];
			struct check *k = find(h, s);

			if (k == NULL) {
				struct check **nv =
				    reallocarray(h->v, h->n + 1, sizeof(*nv));

				k = calloc(1, sizeof(*k));
				if (nv == NULL || k == NULL)
					fatal(1, "out of memory");
				h->v = nv;
				h->v[h->n++] = k;
				k->h = h;
				k->srv = s;
				upstream_server_ref(s);
				k->io.fd = -1;
				k->io.cb = check_io_cb;
				loop_timer_init(&k->timer, check_timer_cb);
				k->interval_ms = up->cfg->check_interval_ms;
				/*
				 * Servers start up (relays report failures
				 * from the first connection, and a server
				 * that fails 3 in a row is marked down); the
				 * first check comes one interval later, like
				 * the others, so that starting many relays
				 * does not hit the upstreams all at once.
				 */
				loop_timer_set(h->loop, &k->timer,
				    loop_now(h->loop) +
				        jitter(h, k->interval_ms));
			} else if (!k->keep) {
				k->interval_ms = up->cfg->check_interval_ms;
			}
			if (!k->keep ||
			    up->cfg->check_interval_ms < k->interval_ms)
				k->interval_ms = up->cfg->check_interval_ms;
			if (!k->keep || up->cfg->send_proxy > k->send_proxy)
				k->send_proxy = up->cfg->send_proxy;
			k->connect_ms = g->cfg->timeouts.connect_ms;
			k->keep = true;
		}
	}
	for (size_t i = 0; i < h->n; i++) {
		if (h->v[i]->keep)
			h->v[kept++] = h->v[i];
		else
			check_free(h, h->v[i]);
	}
	h->n = kept;
}

void
health_free(struct health *h)
{
	if (h == NULL)
		return;
	for (size_t i = 0; i < h->n; i++)
		check_free(h, h->v[i]);
	free(h->v);
	free(h);
}
