/*
 * stats: HTTP listener, metrics and JSON rendering.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dashboard.h"
#include "link.h"
#include "log.h"
#include "stats.h"
#include "worker.h"

#ifndef LIFELINE_VERSION
#define LIFELINE_VERSION "0.0.0-dev"
#endif

#define STATS_MAX_SOCKS 8
#define STATS_MAX_CLIENTS 64
#define STATS_MAX_REQ 4096
#define STATS_TIMEOUT_MS 5000
/* No response is ever larger; past it the output is cut (and says so). */
#define STATS_MAX_RESP (4 * 1024 * 1024)

#define container_of(ptr, type, member)                                        \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

struct sbuf {
	char *p; /* owned */
	size_t n, cap;
	bool cut;
};

struct stats_sock {
	struct loop_io io;
	struct loop_timer pause; /* after EMFILE: accept again later */
	struct stats *st; /* borrowed */
	char text[ADDR_STRLEN];
};

struct stats_client {
	struct loop_io io;
	struct loop_timer timer;
	struct stats *st; /* borrowed */
	char req[STATS_MAX_REQ];
	size_t rlen;
	struct sbuf resp;
	size_t woff;
	struct stats_client *prev, *next;
};

struct stats {
	struct stats_sock socks[STATS_MAX_SOCKS];
	size_t nsocks;
	struct loop *loop; /* borrowed */
	struct worker **workers; /* borrowed */
	unsigned nworkers;
	struct gen *gen; /* borrowed */
	uint64_t started; /* loop ms */
	struct stats_client *clients;
	size_t nclients;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (b->cut)
		return;
	for (;;) {
		size_t room = b->cap - b->n;

		va_start(ap, fmt);
		n = vsnprintf(b->p + b->n, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->cut = true;
			return;
		}
		if ((size_t)n < room) {
			b->n += (size_t)n;
			return;
		}
		if (b->cap >= STATS_MAX_RESP) {
			b->cut = true;
			return;
		}
		{
			size_t ncap = b->cap ? b->cap * 2 : 8192;
			char *np = realloc(b->p, ncap);

			if (np == NULL) {
				b->cut = true;
				return;
			}
			b->p = np;
			b->cap = ncap;
		}
	}
}

static void
sb_free(struct sbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
}

/* Counters of one listener, summed over workers. */
struct lsum {
	uint64_t closed[RELAY_RES_MAX];
	uint64_t in, out, hs, resumed;
};

static void
listener_sum(const struct stats *st, const struct listener *l, struct lsum *s)
{
	memset(s, 0, sizeof(*s));
	for (unsigned w = 0; w < st->nworkers; w++) {
		struct relay_lcounters *c = &l->state->cnt[w];

		for (int r = 0; r < RELAY_RES_MAX; r++)
			s->closed[r] += RELAY_CNT_GET(c, closed[r]);
		s->in += RELAY_CNT_GET(c, bytes_in);
		s->out += RELAY_CNT_GET(c, bytes_out);
		s->hs += RELAY_CNT_GET(c, tls_handshakes);
		s->resumed += RELAY_CNT_GET(c, tls_resumed);
	}
}

static uint64_t
worker_sum(const struct stats *st, size_t field_offset)
{
	uint64_t v = 0;

	for (unsigned w = 0; w < st->nworkers; w++) {
		_Atomic uint64_t *f =
		    (_Atomic uint64_t *)(void *)((char *)&st->workers[w]->cnt +
		        field_offset);

		v += atomic_load_explicit(f, memory_order_relaxed);
	}
	return v;
}

static bool
server_up(struct upstream_server *s, uint64_t now)
{
	struct sockaddr_storage ss;

	return !upstream_server_down(s, now) && upstream_server_addr(s, 0, &ss);
}

static bool
group_ready(const struct upstream *up, uint64_t now)
{
	for (size_t i = 0; i < up->nservers; i++) {
		if (server_up(up->servers[i], now))
			return true;
	}
	return false;
}

static bool
all_ready(const struct gen *g, uint64_t now)
{
	for (size_t u = 0; u < g->cfg->nupstreams; u++) {
		if (!group_ready(g->ups[u], now))
			return false;
	}
	return true;
}

static uint64_t
server_connects(struct upstream_server *s)
{
	uint64_t n = 0;

	for (int b = 0; b < UPSTREAM_HIST_BUCKETS; b++)
		n += atomic_load_explicit(
		    &s->connect_hist[b], memory_order_relaxed);
	return n;
}

static void
render_metrics(struct stats *st, struct sbuf *b)
{
	const struct gen *g = st->gen;
	uint64_t now = loop_now(st->loop);

	sb_printf(b,
	    "# HELP lifeline_build_info Version of the running relay.\n"
	    "# TYPE lifeline_build_info gauge\n"
	    "lifeline_build_info{version=\"%s\"} 1\n"
	    "# HELP lifeline_uptime_seconds Seconds since start.\n"
	    "# TYPE lifeline_uptime_seconds gauge\n"
	    "lifeline_uptime_seconds %.3f\n"
	    "# HELP lifeline_workers Event-loop threads.\n"
	    "# TYPE lifeline_workers gauge\n"
	    "lifeline_workers %u\n",
	    LIFELINE_VERSION, (double)(now - st->started) / 1000.0,
	    st->nworkers);

	sb_printf(b,
	    "# HELP lifeline_connections_active Client connections "
	    "open now.\n"
	    "# TYPE lifeline_connections_active gauge\n");
	for (size_t i = 0; i < g->nlisteners; i++)
		sb_printf(b,
		    "lifeline_connections_active{listener=\"%s\"} %u\n",
		    g->listeners[i].cfg->name,
		    atomic_load(&g->listeners[i].state->active));

	sb_printf(b,
	    "# HELP lifeline_connections_total Client connections "
	    "ended, by how.\n"
	    "# TYPE lifeline_connections_total counter\n");
	for (size_t i = 0; i < g->nlisteners; i++) {
		struct lsum s;

		listener_sum(st, &g->listeners[i], &s);
		for (int r = 0; r < RELAY_RES_MAX; r++)
			sb_printf(b,
			    "lifeline_connections_total{listener=\"%s\","
			    "result=\"%s\"} %llu\n",
			    g->listeners[i].cfg->name,
			    relay_result_str((enum relay_result)r),
			    (unsigned long long)s.closed[r]);
	}
	sb_printf(b,
	    "# HELP lifeline_bytes_total Payload bytes relayed (in: "
	    "client to upstream).\n"
	    "# TYPE lifeline_bytes_total counter\n");
	for (size_t i = 0; i < g->nlisteners; i++) {
		struct lsum s;

		listener_sum(st, &g->listeners[i], &s);
		sb_printf(b,
		    "lifeline_bytes_total{listener=\"%s\",direction=\"in\"} "
		    "%llu\n"
		    "lifeline_bytes_total{listener=\"%s\",direction=\"out\"} "
		    "%llu\n",
		    g->listeners[i].cfg->name, (unsigned long long)s.in,
		    g->listeners[i].cfg->name, (unsigned long long)s.out);
	}
	sb_printf(b,
	    "# HELP lifeline_tls_handshakes_total TLS handshakes, by "
	    "result.\n"
	    "# TYPE lifeline_tls_handshakes_total counter\n");
	for (size_t i = 0; i < g->nlisteners; i++) {
		const char *n = g->listeners[i].cfg->name;
		struct lsum s;

		if (g->listeners[i].tls == NULL)
			continue;
		listener_sum(st, &g->listeners[i], &s);
		sb_printf(b,
		    "lifeline_tls_handshakes_total{listener=\"%s\",result="
		    "\"full\"} %llu\n"
		    "lifeline_tls_handshakes_total{listener=\"%s\",result="
		    "\"resumed\"} %llu\n"
		    "lifeline_tls_handshakes_total{listener=\"%s\",result="
		    "\"failed\"} %llu\n",
		    n, (unsigned long long)(s.hs - s.resumed), n,
		    (unsigned long long)s.resumed, n,
		    (unsigned long long)s.closed[RELAY_RES_TLS_FAILED]);
	}

	sb_printf(b,
	    "# HELP lifeline_upstream_server_up 1 when the server "
	    "is usable.\n"
	    "# TYPE lifeline_upstream_server_up gauge\n");
	for (size_t u = 0; u < g->cfg->nupstreams; u++) {
		const struct upstream *up = g->ups[u];

		for (size_t j = 0; j < up->nservers; j++)
			sb_printf(b,
			    "lifeline_upstream_server_up{upstream=\"%s\","
			    "server=\"%s\"} %d\n",
			    up->cfg->name, up->servers[j]->label,
			    server_up(up->servers[j], now) ? 1 : 0);
	}
	sb_printf(b,
	    "# HELP lifeline_upstream_connect_seconds Time to connect "
	    "to an upstream server.\n"
	    "# TYPE lifeline_upstream_connect_seconds histogram\n");
	for (size_t u = 0; u < g->cfg->nupstreams; u++) {
		const struct upstream *up = g->ups[u];

		for (size_t j = 0; j < up->nservers; j++) {
			struct upstream_server *s = up->servers[j];
			uint64_t cum = 0;

			for (int k = 0; k < UPSTREAM_HIST_BUCKETS; k++) {
				cum += atomic_load_explicit(
				    &s->connect_hist[k], memory_order_relaxed);
				if (k < UPSTREAM_HIST_BUCKETS - 1)
					sb_printf(b,
					    "lifeline_upstream_connect_seconds_"
					    "bucket{upstream=\"%s\",server=\"%"
					    "s\",le=\"%g\"} %llu\n",
					    up->cfg->name, s->label,
					    upstream_hist_bounds_ms[k] / 1000.0,
					    (unsigned long long)cum);
				else
					sb_printf(b,
					    "lifeline_upstream_connect_seconds_"
					    "bucket{upstream=\"%s\",server=\"%"
					    "s\",le=\"+Inf\"} %llu\n",
					    up->cfg->name, s->label,
					    (unsigned long long)cum);
			}
			sb_printf(b,
			    "lifeline_upstream_connect_seconds_sum{upstream=\""
			    "%s\",server=\"%s\"} %.3f\n"
			    "lifeline_upstream_connect_seconds_count{upstream="
			    "\"%s\",server=\"%s\"} %llu\n",
			    up->cfg->name, s->label,
			    atomic_load(&s->connect_us_sum) / 1e6,
			    up->cfg->name, s->label, (unsigned long long)cum);
		}
	}
	sb_printf(b,
	    "# HELP lifeline_upstream_connect_failures_total Failed "
	    "connection attempts.\n"
	    "# TYPE lifeline_upstream_connect_failures_total counter\n");
	for (size_t u = 0; u < g->cfg->nupstreams; u++) {
		const struct upstream *up = g->ups[u];

		for (size_t j = 0; j < up->nservers; j++)
			sb_printf(b,
			    "lifeline_upstream_connect_failures_total{upstream="
			    "\"%s\",server=\"%s\"} %llu\n",
			    up->cfg->name, up->servers[j]->label,
			    (unsigned long long)atomic_load(
			        &up->servers[j]->connect_failures));
	}
	sb_printf(b,
	    "# HELP lifeline_accept_pauses_total Accept pauses for lack of "
	    "file descriptors.\n"
	    "# TYPE lifeline_accept_pauses_total counter\n"
	    "lifeline_accept_pauses_total %llu\n"
	    "# HELP lifeline_connect_retries_total Connections retried on "
	    "another upstream address or server.\n"
	    "# TYPE lifeline_connect_retries_total counter\n"
	    "lifeline_connect_retries_total %llu\n"
	    "# HELP lifeline_errors_total Connections reset or cut by local "
	    "errors.\n"
	    "# TYPE lifeline_errors_total counter\n"
	    "lifeline_errors_total %llu\n",
	    (unsigned long long)worker_sum(
	        st, offsetof(struct relay_counters, accept_pauses)),
	    (unsigned long long)worker_sum(
	        st, offsetof(struct relay_counters, connect_retries)),
	    (unsigned long long)worker_sum(
	        st, offsetof(struct relay_counters, errors)));
}

static void
render_json(struct stats *st, struct sbuf *b)
{
	const struct gen *g = st->gen;
	uint64_t now = loop_now(st->loop), in = 0, out = 0;
	unsigned active = 0;
	char link[512];

	for (size_t i = 0; i < g->nlisteners; i++) {
		struct lsum s;

		listener_sum(st, &g->listeners[i], &s);
		in += s.in;
		out += s.out;
		active += atomic_load(&g->listeners[i].state->active);
	}
	sb_printf(b,
	    "{\"version\":\"%s\",\"uptime_seconds\":%.3f,"
	    "\"workers\":%u,",
	    LIFELINE_VERSION, (double)(now - st->started) / 1000.0,
	    st->nworkers);
	if (g->cfg->public_host != NULL &&
	    link_for_gen(g, link, sizeof(link)) == 0)
		sb_printf(b, "\"public_host\":\"%s\",\"share_link\":\"%s\",",
		    g->cfg->public_host, link);
	else
		sb_printf(b, "\"public_host\":null,\"share_link\":null,");
	sb_printf(b,
	    "\"active\":%u,\"bytes_in\":%llu,\"bytes_out\":%llu,"
	    "\"ready\":%s,\"listeners\":[",
	    active, (unsigned long long)in, (unsigned long long)out,
	    all_ready(g, now) ? "true" : "false");
	for (size_t i = 0; i < g->nlisteners; i++) {
		const struct listener *l = &g->listeners[i];
		struct lsum s;

		listener_sum(st, l, &s);
		sb_printf(b,
		    "%s{\"name\":\"%s\",\"tls\":%s,\"accept_proxy\":%s,"
		    "\"upstream\":\"%s\",\"addresses\":[",
		    i ? "," : "", l->cfg->name, l->tls ? "true" : "false",
		    l->cfg->accept_proxy ? "true" : "false", l->up->cfg->name);
		for (size_t j = 0; j < l->nsocks; j++)
			sb_printf(
			    b, "%s\"%s\"", j ? "," : "", l->socks[j]->text);
		sb_printf(b, "],\"active\":%u,\"connections\":{",
		    atomic_load(&l->state->active));
		for (int r = 0; r < RELAY_RES_MAX; r++)
			sb_printf(b, "%s\"%s\":%llu", r ? "," : "",
			    relay_result_str((enum relay_result)r),
			    (unsigned long long)s.closed[r]);
		sb_printf(b,
		    "},\"bytes_in\":%llu,\"bytes_out\":%llu,"
		    "\"tls_handshakes\":%llu,\"tls_resumed\":%llu}",
		    (unsigned long long)s.in, (unsigned long long)s.out,
		    (unsigned long long)s.hs, (unsigned long long)s.resumed);
	}
	sb_printf(b, "],\"upstreams\":[");
	for (size_t u = 0; u < g->cfg->nupstreams; u++) {
		const struct upstream *up = g->ups[u];

		sb_printf(b, "%s{\"name\":\"%s\",\"ready\":%s,\"servers\":[",
		    u ? "," : "", up->cfg->name,
		    group_ready(up, now) ? "true" : "false");
		for (size_t j = 0; j < up->nservers; j++) {
			struct upstream_server *s = up->servers[j];

			sb_printf(b,
			    "%s{\"server\":\"%s\",\"up\":%s,\"connects\":%llu,"
			    "\"connect_failures\":%llu}",
			    j ? "," : "", s->label,
			    server_up(s, now) ? "true" : "false",
			    (unsigned long long)server_connects(s),
			    (unsigned long long)atomic_load(
			        &s->connect_failures));
		}
		sb_printf(b, "]}");
	}
	sb_printf(b, "]}\n");
}

/* Builds the whole response for a request line into c->resp. */
static void
respond(struct stats_client *c, int status, const char *reason,
    const char *type, const char *body, size_t blen, bool head)
{
	sb_printf(&c->resp,
	    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
	    "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
	    "Content-Security-Policy: default-src 'self'; style-src "
	    "'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
	    "img-src 'self' data:\r\nConnection: close\r\n\r\n",
	    status, reason, type, blen);
	if (!head && blen > 0)
		sb_printf(&c->resp, "%.*s", (int)blen, body);
}

static void
handle(struct stats_client *c)
{
	struct stats *st = c->st;
	char method[8], target[256], version[16];
	struct sbuf body = {0};
	bool head;
	char *q;

	if (sscanf(c->req, "%7s %255s %15s", method, target, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) != 0) {
		respond(c, 400, "Bad Request", "text/plain", "bad request\n",
		    12, false);
		return;
	}
	head = strcmp(method, "HEAD") == 0;
	if (!head && strcmp(method, "GET") != 0) {
		respond(c, 405, "Method Not Allowed", "text/plain",
		    "GET or HEAD only\n", 17, false);
		return;
	}
	if ((q = strchr(target, '?')) != NULL)
		*q = '\0';
	if (strcmp(target, "/metrics") == 0) {
		render_metrics(st, &body);
		respond(c, 200, "OK",
		    "text/plain; version=0.0.4; charset=utf-8", body.p, body.n,
		    head);
	} else if (strcmp(target, "/stats.json") == 0) {
		render_json(st, &body);
		respond(c, 200, "OK", "application/json", body.p, body.n, head);
	} else if (strcmp(target, "/healthz") == 0) {
		respond(c, 200, "OK", "text/plain", "ok\n", 3, head);
	} else if (strcmp(target, "/readyz") == 0) {
		if (all_ready(st->gen, loop_now(st->loop)))
			respond(c, 200, "OK", "text/plain", "ready\n", 6, head);
		else
			respond(c, 503, "Service Unavailable", "text/plain",
			    "not ready: an upstream group has no server up\n",
			    46, head);
	} else if (strcmp(target, "/") == 0) {
		respond(c, 200, "OK", "text/html; charset=utf-8",
		    dashboard_html, strlen(dashboard_html), head);
	} else if (strcmp(target, "/qr.svg") == 0) {
		char link[512];
		char *svg = NULL;

		if (link_for_gen(st->gen, link, sizeof(link)) == 0)
			svg = link_qr_svg(link);
		if (svg != NULL)
			respond(c, 200, "OK", "image/svg+xml", svg, strlen(svg),
			    head);
		else
			respond(c, 404, "Not Found", "text/plain",
			    "no public-host configured\n", 26, head);
		free(svg);
	} else {
		respond(
		    c, 404, "Not Found", "text/plain", "not found\n", 10, head);
	}
	sb_free(&body);
}

static void
client_free(struct stats_client *c)
{
	struct stats *st = c->st;

	loop_timer_del(st->loop, &c->timer);
	close(c->io.fd);
	sb_free(&c->resp);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		st->clients = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	st->nclients--;
	free(c);
}

static void
client_write(struct stats_client *c)
{
	while (c->woff < c->resp.n) {
		ssize_t n = send(c->io.fd, c->resp.p + c->woff,
		    c->resp.n - c->woff, MSG_NOSIGNAL);

		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			client_free(c);
			return;
		}
		c->woff += (size_t)n;
	}
	/* All sent: a FIN, and the timer closes it if the peer lingers. */
	(void)shutdown(c->io.fd, SHUT_WR);
	client_free(c);
}

static void
client_cb(struct loop_io *io, uint32_t events)
{
	struct stats_client *c = container_of(io, struct stats_client, io);
	ssize_t n;

	if (c->resp.n > 0) {
		if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			client_write(c);
		return;
	}
	n = recv(io->fd, c->req + c->rlen, sizeof(c->req) - 1 - c->rlen, 0);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n <= 0) {
		client_free(c);
		return;
	}
	/* Binary (a TLS ClientHello, a scanner's probe): no HTTP at all. */
	if (memchr(c->req + c->rlen, '\0', (size_t)n) != NULL) {
		c->rlen += (size_t)n;
		respond(c, 400, "Bad Request", "text/plain", "bad request\n",
		    12, false);
		goto reply;
	}
	c->rlen += (size_t)n;
	c->req[c->rlen] = '\0';
	if (strstr(c->req, "\r\n\r\n") == NULL &&
	    strstr(c->req, "\n\n") == NULL) {
		if (c->rlen < sizeof(c->req) - 1)
			return;
		respond(c, 431, "Request Header Fields Too Large", "text/plain",
		    "request too large\n", 18, false);
	} else {
		handle(c);
	}
reply:
	if (loop_io_mod(c->st->loop, &c->io, EPOLLOUT) != 0) {
		client_free(c);
		return;
	}
	client_write(c);
}

static void
client_timer_cb(struct loop_timer *t)
{
	client_free(container_of(t, struct stats_client, timer));
}

static void
pause_cb(struct loop_timer *t)
{
	struct stats_sock *ss = container_of(t, struct stats_sock, pause);

	(void)loop_io_mod(ss->st->loop, &ss->io, EPOLLIN);
}

static void
accept_cb(struct loop_io *io, uint32_t events)
{
	struct stats_sock *ss = container_of(io, struct stats_sock, io);
	struct stats *st = ss->st;

	(void)events;
	for (int i = 0; i < 16; i++) {
		struct stats_client *c;
		int fd =
		    accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				(void)loop_io_mod(st->loop, io, 0);
				loop_timer_set(st->loop, &ss->pause,
				    loop_now(st->loop) + 100);
			}
			return;
		}
		if (st->nclients >= STATS_MAX_CLIENTS ||
		    (c = calloc(1, sizeof(*c))) == NULL) {
			close(fd);
			continue;
		}
		c->st = st;
		c->io.fd = fd;
		c->io.cb = client_cb;
		loop_timer_init(&c->timer, client_timer_cb);
		c->next = st->clients;
		if (st->clients != NULL)
			st->clients->prev = c;
		st->clients = c;
		st->nclients++;
		if (loop_io_add(st->loop, &c->io, EPOLLIN) != 0) {
			client_free(c);
			continue;
		}
		loop_timer_set(
		    st->loop, &c->timer, loop_now(st->loop) + STATS_TIMEOUT_MS);
	}
}

struct stats *
stats_new(const struct cfg *cfg, char *err, size_t errlen)
{
	struct stats *st = calloc(1, sizeof(*st));

	if (st == NULL)
		fatal(1, "out of memory");
	for (size_t i = 0; i < cfg->nstats && i < STATS_MAX_SOCKS; i++) {
		const struct cfg_bind *b = &cfg->stats[i];
		struct stats_sock *s = &st->socks[st->nsocks];
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd, on = 1;

		fd = socket(b->ss.ss_family,
		    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) !=
		        0 ||
		    bind(fd, (const struct sockaddr *)&b->ss, b->sslen) != 0 ||
		    listen(fd, 64) != 0 ||
		    getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
			snprintf(err, errlen,
			    "cannot listen on %s for [stats]: %s", b->text,
			    strerror(errno));
			if (fd >= 0)
				close(fd);
			stats_free(st);
			return NULL;
		}
		s->io.fd = fd;
		s->io.cb = accept_cb;
		s->st = st;
		loop_timer_init(&s->pause, pause_cb);
		addr_format((struct sockaddr *)&ss, s->text, sizeof(s->text));
		st->nsocks++;
	}
	return st;
}

int
stats_start(struct stats *st, struct loop *loop, struct worker **workers,
    unsigned nworkers)
{
	st->loop = loop;
	st->workers = workers;
	st->nworkers = nworkers;
	st->started = loop_now(loop);
	for (size_t i = 0; i < st->nsocks; i++) {
		if (loop_io_add(loop, &st->socks[i].io, EPOLLIN) != 0)
			return -1;
	}
	return 0;
}

void
stats_set_gen(struct stats *st, struct gen *g)
{
	st->gen = g;
}

void
stats_ports(const struct stats *st, char *buf, size_t len)
{
	size_t n = strlen(buf);

	for (size_t i = 0; i < st->nsocks && n < len; i++)
		n += (size_t)snprintf(
		    buf + n, len - n, "stats %s\n", st->socks[i].text);
}

void
stats_free(struct stats *st)
{
	if (st == NULL)
		return;
	while (st->clients != NULL)
		client_free(st->clients);
	for (size_t i = 0; i < st->nsocks; i++) {
		if (st->loop != NULL)
			loop_timer_del(st->loop, &st->socks[i].pause);
		close(st->socks[i].io.fd);
	}
	free(st);
}
