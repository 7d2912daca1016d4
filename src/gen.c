/*
 * gen: configuration generations, listening sockets.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen.h"
#include "log.h"
#include "util.h"

#define LISTEN_BACKLOG 4096

void
lsock_unref(struct lsock *s)
{
	if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	for (unsigned i = 0; i < s->nfds; i++) {
		if (s->fds[i] >= 0)
			close(s->fds[i]);
	}
	free(s);
}

static void
lstate_unref(struct lstate *st)
{
	if (st != NULL && atomic_fetch_sub(&st->refs, 1) == 1) {
		free(st->cnt);
		free(st);
	}
}

/* Makes one listening socket; returns the fd or -errno. */
static int
listen_socket(const struct sockaddr_storage *ss, socklen_t len)
{
	int fd, on = 1, saved;

	fd = socket(
	    ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0)
		goto fail;
	/*
	 * Accepted sockets inherit these: Nagle off (chat is small messages);
	 * urgent data inline, so that an urgent byte is relayed in its place,
	 * not dropped.  And keep-alive, set per listener by
	 * lsock_keepalive().
	 */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on)) != 0)
		goto fail;
	/* [::] must not take IPv4 too: 0.0.0.0 is bound on its own. */
	if (ss->ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0)
		goto fail;
	if (bind(fd, (const struct sockaddr *)ss, len) != 0)
		goto fail;
	if (listen(fd, LISTEN_BACKLOG) != 0)
		goto fail;
	return fd;
fail:
	saved = errno;
	close(fd);
	return -saved;
}

/*
 * TCP keep-alive for the clients s will accept (they inherit it), so that
 * clients whose network vanished without a FIN (a shutdown, a dropped
 * route) do not hold a slot for long: probes after ka_ms of silence, then
 * every 10 s (or ka_ms when shorter), 6 unanswered ones end it.  Off
 * (ka_ms 0) for camouflage: an ordinary web server sends none.  Applied
 * again on every reload, to sockets kept as well as new ones.
 */
static int
lsock_keepalive(const struct lsock *s, uint64_t ka_ms)
{
	int on = ka_ms > 0, idle = (int)(ka_ms / 1000), cnt = 6;
	int intvl = idle < 10 ? idle : 10;

	for (unsigned w = 0; w < s->nfds; w++) {
		int fd = s->fds[w];

		if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) !=
		    0)
			return -1;
		if (!on)
			continue;
		if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle,
		        sizeof(idle)) != 0 ||
		    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl,
		        sizeof(intvl)) != 0 ||
		    setsockopt(
		        fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) != 0)
			return -1;
	}
	return 0;
}

/*
 * Binds b once per worker.  Returns the new lsock, or NULL with *skip set
 * when the kernel has no IPv6 (a warning, not an error), or NULL with err.
 */
static struct lsock *
lsock_bind(const struct cfg_listen *cl, const struct cfg_bind *b,
    unsigned nworkers, bool *skip, char *err, size_t errlen)
{
	struct lsock *s = xcalloc(1, sizeof(*s));
	struct sockaddr_storage ss = b->ss;
	socklen_t len;

	*skip = false;
	atomic_init(&s->refs, 1);
	s->want = b->ss;
	s->wantlen = b->sslen;
	for (unsigned i = 0; i < CFG_MAX_WORKERS; i++)
		s->fds[i] = -1;
	for (unsigned w = 0; w < nworkers; w++) {
		int fd = listen_socket(&ss, b->sslen);

		if (fd < 0) {
			if (ss.ss_family == AF_INET6 && w == 0 &&
			    (fd == -EAFNOSUPPORT || fd == -EADDRNOTAVAIL)) {
				log_warnx("[listen %s]: skipping %s: no IPv6 "
				          "on this host",
				    cl->name, b->text);
				*skip = true;
			} else {
				/*
				 * After start-up the daemon has no capability
				 * left: say why a low port now fails.
				 */
				snprintf(err, errlen,
				    "cannot listen on %s for [listen %s]: %s%s",
				    b->text, cl->name, strerror(-fd),
				    fd == -EACCES &&
				            addr_port((const struct sockaddr
				                    *)&b->ss) < 1024
				        ? " (ports below 1024 are bound at "
				          "start only: restart to add one)"
				        : "");
			}
			goto fail;
		}
		s->fds[w] = fd;
		s->nfds = w + 1;
		if (w == 0) {
			/* Port 0: the others join the port we were given. */
			len = sizeof(ss);
			if (getsockname(fd, (struct sockaddr *)&ss, &len) !=
			    0) {
				snprintf(err, errlen, "getsockname: %s",
				    strerror(errno));
				goto fail;
			}
			addr_format(
			    (struct sockaddr *)&ss, s->text, sizeof(s->text));
		}
	}
	return s;
fail:
	lsock_unref(s);
	return NULL;
}

/* True when s already serves one of g's listeners (built so far). */
static bool
lsock_taken(const struct gen *g, const struct lsock *s)
{
	for (size_t i = 0; i < g->nlisteners; i++) {
		for (size_t j = 0; j < g->listeners[i].nsocks; j++) {
			if (g->listeners[i].socks[j] == s)
				return true;
		}
	}
	return false;
}

/*
 * The old generation's socket for bind b of listener name, if any.  A
 * fixed port is one socket whoever owns it; a port-0 bind means "some free
 * port for this listener", so only the same listener keeps it.
 */
static struct lsock *
find_lsock(struct gen *old, const struct gen *g, const char *name,
    const struct cfg_bind *b)
{
	bool any_port = addr_port((const struct sockaddr *)&b->ss) == 0;

	if (old == NULL)
		return NULL;
	for (size_t i = 0; i < old->nlisteners; i++) {
		struct listener *l = &old->listeners[i];

		if (any_port && strcmp(l->cfg->name, name) != 0)
			continue;
		for (size_t j = 0; j < l->nsocks; j++) {
			struct lsock *s = l->socks[j];

			if (s->wantlen == b->sslen &&
			    memcmp(&s->want, &b->ss, b->sslen) == 0 &&
			    !lsock_taken(g, s))
				return s;
		}
	}
	return NULL;
}

static struct lstate *
find_lstate(struct gen *old, const char *name)
{
	if (old == NULL)
		return NULL;
	for (size_t i = 0; i < old->nlisteners; i++) {
		if (strcmp(old->listeners[i].state->name, name) == 0)
			return old->listeners[i].state;
	}
	return NULL;
}

/* A generated certificate's context to keep across a reload, or NULL. */
static struct tls_ctx *
find_tls(struct gen *old, const struct cfg_listen *cl)
{
	if (old == NULL)
		return NULL;
	for (size_t i = 0; i < old->nlisteners; i++) {
		struct listener *l = &old->listeners[i];

		if (l->tls != NULL && strcmp(l->cfg->name, cl->name) == 0 &&
		    tls_ctx_reusable(l->tls, cl)) {
			tls_ctx_ref(l->tls);
			return l->tls;
		}
	}
	return NULL;
}

static void
gen_free(struct gen *g)
{
	for (size_t i = 0; i < g->nlisteners; i++) {
		struct listener *l = &g->listeners[i];

		for (size_t j = 0; j < l->nsocks; j++)
			lsock_unref(l->socks[j]);
		free(l->socks);
		lstate_unref(l->state);
		tls_ctx_unref(l->tls);
	}
	free(g->listeners);
	if (g->ups != NULL) {
		for (size_t i = 0; i < g->cfg->nupstreams; i++)
			upstream_free(g->ups[i]);
	}
	free(g->ups);
	srclimit_free(g->src);
	cfg_free(g->cfg);
	free(g);
}

/* A listener's limits: its own keys, else the global ones. */
static struct srclimit_rule
src_rule(const struct cfg *cfg, const struct cfg_listen *cl)
{
	const struct cfg_srclimit *gl = &cfg->srclimit, *ll = &cl->srclimit;
	struct srclimit_rule r;

	r.max_conn = ll->has_conn ? ll->max_conn : gl->max_conn;
	r.rate = ll->has_rate ? ll->rate : gl->rate;
	r.period_ms = ll->has_rate ? ll->period_ms : gl->period_ms;
	/* Its own count when it has its own limits. */
	r.scope = ll->has_conn || ll->has_rate ? srclimit_scope(cl->name) : 0;
	return r;
}

/* The table of sources: the old generation's when its settings hold. */
static int
src_table(struct gen *g, const struct gen *old, char *err, size_t errlen)
{
	const struct cfg *cfg = g->cfg;

	if (cfg->srclimit.max_conn == 0 && cfg->srclimit.rate == 0 &&
	    !cfg_any_listener_srclimit(cfg))
		return 0;
	if (old != NULL && old->src != NULL &&
	    srclimit_same(old->src, cfg->source_table_size, cfg->source_prefix4,
	        cfg->source_prefix6)) {
		srclimit_ref(old->src);
		g->src = old->src;
		return 0;
	}
	g->src = srclimit_new(
	    cfg->source_table_size, cfg->source_prefix4, cfg->source_prefix6);
	if (g->src == NULL) {
		snprintf(err, errlen, "out of memory for the table of sources");
		return -1;
	}
	return 0;
}

struct gen *
gen_new(struct cfg *cfg, struct gen *old, unsigned nworkers, char *err,
    size_t errlen)
{
	struct gen *g = xcalloc(1, sizeof(*g));

	atomic_init(&g->refs, 1);
	g->cfg = cfg;
	g->nworkers = nworkers;
	g->ups = xcalloc(cfg->nupstreams, sizeof(*g->ups));
	for (size_t i = 0; i < cfg->nupstreams; i++)
		g->ups[i] = upstream_new(&cfg->upstreams[i],
		    old != NULL ? old->ups : NULL,
		    old != NULL ? old->cfg->nupstreams : 0);
	g->listeners = xcalloc(cfg->nlistens, sizeof(*g->listeners));
	if (src_table(g, old, err, errlen) != 0)
		goto fail;
	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct cfg_listen *cl = &cfg->listens[i];
		struct listener *l;
		struct lstate *st;

		l = &g->listeners[g->nlisteners++];
		l->cfg = cl;
		l->up = g->ups[cl->upstream];
		l->decoy = cl->decoy_name != NULL ? g->ups[cl->decoy] : NULL;
		l->passthrough = cl->passthrough_name != NULL
		    ? g->ups[cl->passthrough]
		    : NULL;
		l->decoy_tls =
		    cl->decoy_tls_name != NULL ? g->ups[cl->decoy_tls] : NULL;
		l->src_rule = src_rule(cfg, cl);
		st = find_lstate(old, cl->name);
		if (st != NULL) {
			atomic_fetch_add(&st->refs, 1);
		} else {
			st = xcalloc(1, sizeof(*st));
			atomic_init(&st->refs, 1);
			st->cnt =
			    aligned_alloc(64, nworkers * sizeof(*st->cnt));
			if (st->cnt == NULL)
				fatal(1, "out of memory");
			memset(st->cnt, 0, nworkers * sizeof(*st->cnt));
			snprintf(st->name, sizeof(st->name), "%s", cl->name);
		}
		l->state = st;
		if (cl->tls) {
			l->tls = find_tls(old, cl);
			if (l->tls == NULL)
				l->tls = tls_ctx_new(cl, err, errlen);
			if (l->tls == NULL)
				goto fail;
		}
		l->socks = xcalloc(cl->nbinds, sizeof(*l->socks));
		for (size_t j = 0; j < cl->nbinds; j++) {
			struct lsock *s =
			    find_lsock(old, g, cl->name, &cl->binds[j]);
			bool skip;

			if (s != NULL) {
				atomic_fetch_add(&s->refs, 1);
			} else {
				s = lsock_bind(cl, &cl->binds[j], nworkers,
				    &skip, err, errlen);
				if (s == NULL && skip)
					continue;
				if (s == NULL)
					goto fail;
			}
			l->socks[l->nsocks++] = s;
			if (lsock_keepalive(s, cl->keepalive_ms) != 0) {
				snprintf(err, errlen,
				    "[listen %s]: keep-alive on %s: %s",
				    cl->name, s->text, strerror(errno));
				goto fail;
			}
		}
		if (l->nsocks == 0)
			log_warnx(
			    "[listen %s] has no usable address", cl->name);
	}
	return g;
fail:
	gen_free(g);
	return NULL;
}

void
gen_ref(struct gen *g)
{
	atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void
gen_unref(struct gen *g)
{
	if (g != NULL && atomic_fetch_sub(&g->refs, 1) == 1)
		gen_free(g);
}

int
gen_write_ports(const struct gen *g, const char *path, const char *extra)
{
	char tmp[4096];
	FILE *f;
	int n;

	n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	f = fopen(tmp, "we");
	if (f == NULL)
		return -1;
	for (size_t i = 0; i < g->nlisteners; i++) {
		const struct listener *l = &g->listeners[i];

		for (size_t j = 0; j < l->nsocks; j++)
			fprintf(f, "%s %s\n", l->cfg->name, l->socks[j]->text);
	}
	fputs(extra, f);
	if (fflush(f) != 0 || ferror(f)) {
		int saved = errno;

		fclose(f);
		unlink(tmp);
		errno = saved;
		return -1;
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0) {
		int saved = errno;

		unlink(tmp);
		errno = saved;
		return -1;
	}
	return 0;
}
