/*
 * upstream: server groups, resolution, passive health, attempt order.
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "upstream.h"
#include "util.h"

static struct upstream_server *
server_new(const struct cfg_server *cs)
{
	struct upstream_server *s = xcalloc(1, sizeof(*s));
	struct sockaddr_storage ss;
	socklen_t len;

	s->host = xstrdup(cs->host);
	atomic_init(&s->refs, 1);
	s->port = cs->port;
	if (strchr(cs->host, ':') != NULL)
		snprintf(
		    s->label, sizeof(s->label), "[%s]:%u", cs->host, cs->port);
	else
		snprintf(
		    s->label, sizeof(s->label), "%s:%u", cs->host, cs->port);
	pthread_mutex_init(&s->lock, NULL);
	/* A numeric address needs no resolver. */
	if (addr_parse_numeric(cs->host, cs->port, &ss, &len) == NULL) {
		s->addrs[0] = ss;
		s->naddrs = 1;
	}
	return s;
}

void
upstream_server_ref(struct upstream_server *s)
{
	atomic_fetch_add(&s->refs, 1);
}

void
upstream_server_unref(struct upstream_server *s)
{
	if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	pthread_mutex_destroy(&s->lock);
	free(s->host);
	free(s);
}

struct upstream *
upstream_new(
    const struct cfg_upstream *cu, struct upstream *const *old, size_t nold)
{
	struct upstream *up = xcalloc(1, sizeof(*up));

	up->cfg = cu;
	up->servers = xcalloc(cu->nservers, sizeof(*up->servers));
	up->nservers = cu->nservers;
	for (size_t i = 0; i < cu->nservers; i++) {
		const struct cfg_server *cs = &cu->servers[i];
		struct upstream_server *found = NULL;

		for (size_t g = 0; g < nold && found == NULL; g++) {
			for (size_t j = 0; j < old[g]->nservers; j++) {
				struct upstream_server *o = old[g]->servers[j];

				if (o->port == cs->port &&
				    strcmp(o->host, cs->host) == 0) {
					found = o;
					break;
				}
			}
		}
		if (found != NULL) {
			atomic_fetch_add(&found->refs, 1);
			up->servers[i] = found;
		} else {
			up->servers[i] = server_new(cs);
		}
	}
	return up;
}

void
upstream_free(struct upstream *up)
{
	if (up == NULL)
		return;
	for (size_t i = 0; i < up->nservers; i++)
		upstream_server_unref(up->servers[i]);
	free(up->servers);
	free(up);
}

int
upstream_server_resolve(struct upstream_server *s)
{
	struct sockaddr_storage found[UPSTREAM_MAX_ADDRS];
	struct addrinfo hints, *res = NULL;
	unsigned n = 0, old;
	char port[8];
	int r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%u", s->port);
	r = getaddrinfo(s->host, port, &hints, &res);
	if (r != 0) {
		pthread_mutex_lock(&s->lock);
		old = s->naddrs;
		pthread_mutex_unlock(&s->lock);
		log_warnx("cannot resolve upstream server %s: %s (keeping %u "
		          "known address%s)",
		    s->label,
		    r == EAI_SYSTEM ? "system error" : gai_strerror(r), old,
		    old == 1 ? "" : "es");
		return -1;
	}
	for (struct addrinfo *ai = res; ai != NULL && n < UPSTREAM_MAX_ADDRS;
	     ai = ai->ai_next) {
		bool dup = false;

		if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
		    ai->ai_addrlen > sizeof(found[0]))
			continue;
		for (unsigned i = 0; i < n && !dup; i++)
			dup = addr_len((struct sockaddr *)&found[i]) ==
			        ai->ai_addrlen &&
			    memcmp(&found[i], ai->ai_addr, ai->ai_addrlen) == 0;
		if (dup)
			continue;
		memset(&found[n], 0, sizeof(found[n]));
		memcpy(&found[n], ai->ai_addr, ai->ai_addrlen);
		n++;
	}
	freeaddrinfo(res);
	if (n == 0) {
		log_warnx("upstream server %s resolved to no usable address",
		    s->label);
		return -1;
	}
	pthread_mutex_lock(&s->lock);
	old = s->naddrs;
	memcpy(s->addrs, found, n * sizeof(found[0]));
	s->naddrs = n;
	pthread_mutex_unlock(&s->lock);
	if (old == 0)
		log_info("upstream server %s resolved to %u address%s",
		    s->label, n, n == 1 ? "" : "es");
	return 0;
}

void
upstream_resolve(struct upstream *up, bool only_empty)
{
	for (size_t i = 0; i < up->nservers; i++) {
		struct upstream_server *s = up->servers[i];
		unsigned n;

		if (only_empty) {
			pthread_mutex_lock(&s->lock);
			n = s->naddrs;
			pthread_mutex_unlock(&s->lock);
			if (n > 0)
				continue;
		}
		upstream_server_resolve(s);
	}
}

bool
upstream_server_down(struct upstream_server *s, uint64_t now)
{
	return atomic_load_explicit(&s->down_until, memory_order_relaxed) > now;
}

bool
upstream_server_addr(
    struct upstream_server *s, unsigned idx, struct sockaddr_storage *ss)
{
	bool ok;

	pthread_mutex_lock(&s->lock);
	ok = idx < s->naddrs;
	if (ok)
		*ss = s->addrs[idx];
	pthread_mutex_unlock(&s->lock);
	return ok;
}

struct upstream_server *
upstream_next(struct upstream *up, struct upstream_cursor *cur, uint64_t now,
    struct sockaddr_storage *ss)
{
	if (cur->active) {
		struct upstream_server *s = up->servers[cur->srv];

		if (upstream_server_addr(s, cur->addr + 1U, ss)) {
			cur->addr++;
			return s;
		}
		cur->active = false;
	}
	for (;;) {
		for (size_t i = 0; i < up->nservers && i < 64; i++) {
			struct upstream_server *s = up->servers[i];

			if (cur->tried & (1ULL << i))
				continue;
			if (cur->pass == 0 && upstream_server_down(s, now))
				continue;
			cur->tried |= 1ULL << i;
			if (!upstream_server_addr(s, 0, ss))
				continue;
			cur->srv = (uint8_t)i;
			cur->addr = 0;
			cur->active = true;
			return s;
		}
		if (cur->pass == 1)
			return NULL;
		cur->pass = 1;
	}
}

const unsigned upstream_hist_bounds_ms[UPSTREAM_HIST_BUCKETS - 1] = {
    1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000};

void
upstream_report(struct upstream_server *s, bool ok, uint64_t now, uint64_t us)
{
	if (ok) {
		unsigned b = 0;

		while (b < UPSTREAM_HIST_BUCKETS - 1 &&
		    us > upstream_hist_bounds_ms[b] * 1000ULL)
			b++;
		atomic_fetch_add_explicit(
		    &s->connect_hist[b], 1, memory_order_relaxed);
		atomic_fetch_add_explicit(
		    &s->connect_us_sum, us, memory_order_relaxed);
		atomic_store_explicit(&s->fails, 0, memory_order_relaxed);
		if (atomic_exchange(&s->down_until, 0) != 0)
			log_info("upstream server %s is up again", s->label);
		return;
	}
	atomic_fetch_add_explicit(
	    &s->connect_failures, 1, memory_order_relaxed);
	if (atomic_fetch_add(&s->fails, 1) + 1 >= UPSTREAM_FALL) {
		uint64_t prev =
		    atomic_exchange(&s->down_until, now + UPSTREAM_DOWN_MS);

		if (prev == 0)
			log_warnx("upstream server %s marked down after %u "
			          "failed connections; retrying in %us",
			    s->label, UPSTREAM_FALL, UPSTREAM_DOWN_MS / 1000);
	}
}

void
upstream_check_report(
    struct upstream_server *s, bool ok, uint64_t now, uint64_t retry_at)
{
	uint64_t prev;

	if (ok) {
		atomic_store(&s->fails, 0);
		if (atomic_exchange(&s->down_until, 0) != 0)
			log_info(
			    "upstream server %s is up again (health check)",
			    s->label);
		return;
	}
	if (retry_at <= now)
		retry_at = now + 1;
	prev = atomic_exchange(&s->down_until, retry_at);
	if (prev == 0 || prev <= now)
		log_warnx("upstream server %s is down (health check failed)",
		    s->label);
}
