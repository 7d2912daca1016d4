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
#include "util.h"
#include "worker.h"

#ifndef LIFELINE_VERSION
#define LIFELINE_VERSION "0.0.0-dev"
#endif

#define STATS_MAX_SOCKS 8
/*
 * Clients at once.  When full, a newcomer takes the slot of the oldest
 * client still sending its request, so idle connections can never lock out
 * a health probe: a probe sends its request at once and is answered long
 * before STATS_MAX_CLIENTS newer connections could push it out.
 */
#define STATS_MAX_CLIENTS 256
#define STATS_BACKLOG 256
#define STATS_MAX_REQ 4096
#define STATS_MAX_TARGET 255
/* The whole request must arrive within this of the accept. */
#define STATS_HEADER_TIMEOUT_MS 2000
/* A response (up to STATS_MAX_RESP) must be taken within this. */
#define STATS_SEND_TIMEOUT_MS 10000
/*
 * Kernel send buffer per client (the kernel doubles it).  Autotuning would
 * let each slow reader pin up to tcp_wmem's maximum (4 MiB by default).
 */
#define STATS_SNDBUF (32 * 1024)
/* No response is ever larger; past it the output is cut (and says so). */
#define STATS_MAX_RESP (4 * 1024 * 1024)

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

/* Clients in accept order: the head is the oldest. */
struct client_list {
	struct stats_client *head, *tail;
	size_t n;
};

struct stats_client {
	struct loop_io io;
	struct loop_timer timer;
	struct stats *st; /* borrowed */
	struct client_list *list; /* borrowed: the one of st it is on */
	char req[STATS_MAX_REQ];
	size_t rlen;
	struct sbuf resp;
	size_t woff;
	struct stats_client *prev, *next;
};

/*
 * How a stats client's request ended, counted once per connection:
 * lifeline_stats_requests_total{result}.  Only the control thread
 * touches these (it serves the stats listener and renders /metrics).
 */
enum stats_result {
	STATS_RES_ANSWERED = 0, /* a route answered: 200, 404, 503 */
	STATS_RES_BAD_REQUEST, /* refused: 400, 405, 414, 431, 505 */
	STATS_RES_INCOMPLETE, /* the client closed or reset mid-request */
	STATS_RES_TIMEOUT, /* no whole request within the deadline */
	STATS_RES_EVICTED, /* closed mid-request to make room */
	STATS_RES_MAX,
};

struct stats {
	struct stats_sock socks[STATS_MAX_SOCKS];
	size_t nsocks;
	struct loop *loop; /* borrowed */
	struct worker **workers; /* borrowed */
	unsigned nworkers;
	struct gen *gen; /* borrowed */
	uint64_t started; /* loop ms */
	struct client_list reading; /* owned: request not complete yet */
	struct client_list sending; /* owned: response under way */
	struct client_list closed; /* owned: freed by reap, after the batch */
	struct loop_task reap;
	uint64_t requests[STATS_RES_MAX];
};

/* The parts of a request line (pointers into the request, borrowed). */
struct req_line {
	const char *method, *target;
	size_t mlen, tlen;
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
	uint64_t src_conn, src_rate; /* refused by each per-source limit */
	uint64_t camo[4]; /* WhatsApp's, decoy, passthrough, decoy-tls */
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
		s->src_conn += RELAY_CNT_GET(c, source_refused_conn);
		s->src_rate += RELAY_CNT_GET(c, source_refused_rate);
		s->camo[0] += RELAY_CNT_GET(c, camo_whatsapp);
		s->camo[1] += RELAY_CNT_GET(c, camo_decoy);
		s->camo[2] += RELAY_CNT_GET(c, camo_passthrough);
		s->camo[3] += RELAY_CNT_GET(c, camo_decoy_tls);
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

/*
 * /metrics is written from one table, metrics[]: each family's name, type
 * and help, which samples it has (one, or one per listener, TLS listener
 * or upstream server), a label that may split each sample further
 * (result, direction), and the function that reads a value.  /stats.json
 * reads the same values through the same functions, named by
 * listener_fields[] and server_fields[].
 */
enum metric_scope {
	METRIC_GLOBAL, /* no label */
	METRIC_LISTENER, /* listener="NAME" */
	METRIC_TLS_LISTENER, /* the same, TLS listeners only */
	METRIC_DECOY_LISTENER, /* the same, listeners with a decoy only */
	METRIC_SERVER, /* upstream="GROUP",server="HOST:PORT" */
};

/* What a value is read from: one listener's or server's. */
struct metric_ctx {
	struct stats *st; /* borrowed */
	uint64_t now;
	const struct listener *l; /* borrowed: listener scopes */
	struct lsum sum; /* l's counters */
	const struct upstream *up; /* borrowed: METRIC_SERVER */
	struct upstream_server *srv; /* borrowed: METRIC_SERVER */
};

/* A sample's value: a count, or seconds (written with 3 decimals). */
struct metric_val {
	bool is_seconds;
	uint64_t n;
	double seconds;
};

/* Reads value number i of a split (0 without one). */
typedef struct metric_val (*metric_get_fn)(
    const struct metric_ctx *c, size_t i);

/* A label that splits a sample: its name, and the value of each part. */
struct metric_split {
	const char *label;
	size_t n;
	const char *(*value)(size_t i);
};

struct metric {
	const char *name;
	const char *type;
	const char *help;
	enum metric_scope scope;
	const struct metric_split *split; /* NULL: one sample per scope */
	metric_get_fn get; /* NULL: a histogram, written by samples_hist */
};

static struct metric_val
count(uint64_t n)
{
	return (struct metric_val){.n = n};
}

static const char *
split_version(size_t i)
{
	(void)i;
	return LIFELINE_VERSION;
}

static const char *
split_result(size_t i)
{
	return relay_result_str((enum relay_result)i);
}

static const char *
split_direction(size_t i)
{
	return i == 0 ? "in" : "out";
}

static const char *
split_tls(size_t i)
{
	static const char *const v[] = {"full", "resumed", "failed"};

	return v[i];
}

static const struct metric_split by_version = {"version", 1, split_version};
static const struct metric_split by_result = {
    "result", RELAY_RES_MAX, split_result};
static const struct metric_split by_direction = {
    "direction", 2, split_direction};
static const struct metric_split by_tls = {"result", 3, split_tls};

static const char *
split_limit(size_t i)
{
	return i == 0 ? "connections" : "rate";
}

static const struct metric_split by_limit = {"limit", 2, split_limit};

static const char *
split_class(size_t i)
{
	static const char *const v[] = {
	    "whatsapp", "decoy", "passthrough", "decoy_tls"};

	return v[i];
}

static const struct metric_split by_class = {"class", 4, split_class};

/*
 * i: 0 recognised as WhatsApp's, 1 sent to the decoy, 2 ClientHello
 * passed through, 3 not TLS on a TLS listener: sent to decoy-tls.
 */
static struct metric_val
get_camouflage(const struct metric_ctx *c, size_t i)
{
	return count(c->sum.camo[i]);
}

/* i: 0 max-conn-per-source, 1 new-conn-rate-per-source. */
static struct metric_val
get_source_refused(const struct metric_ctx *c, size_t i)
{
	return count(i == 0 ? c->sum.src_conn : c->sum.src_rate);
}

/* The table of sources (zeros when no limit is configured). */
static struct metric_val
get_source_table(const struct metric_ctx *c, size_t i, int which)
{
	struct srclimit_stats s;

	(void)i;
	srclimit_stats(c->st->gen->src, &s);
	return count(which == 0 ? s.entries
	        : which == 1    ? s.capacity
	                        : s.full_admitted);
}

static struct metric_val
get_source_entries(const struct metric_ctx *c, size_t i)
{
	return get_source_table(c, i, 0);
}

static struct metric_val
get_source_capacity(const struct metric_ctx *c, size_t i)
{
	return get_source_table(c, i, 1);
}

static struct metric_val
get_source_full(const struct metric_ctx *c, size_t i)
{
	return get_source_table(c, i, 2);
}

static struct metric_val
get_one(const struct metric_ctx *c, size_t i)
{
	(void)c;
	(void)i;
	return count(1);
}

static struct metric_val
get_uptime(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return (struct metric_val){.is_seconds = true,
	    .seconds = (double)(c->now - c->st->started) / 1000.0};
}

static struct metric_val
get_workers(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(c->st->nworkers);
}

static struct metric_val
get_active(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(atomic_load(&c->l->state->active));
}

static struct metric_val
get_closed(const struct metric_ctx *c, size_t i)
{
	return count(c->sum.closed[i]);
}

/* i: 0 in (client to upstream), 1 out. */
static struct metric_val
get_bytes(const struct metric_ctx *c, size_t i)
{
	return count(i == 0 ? c->sum.in : c->sum.out);
}

/* i: 0 full, 1 resumed, 2 failed. */
static struct metric_val
get_tls(const struct metric_ctx *c, size_t i)
{
	const struct lsum *s = &c->sum;

	if (i == 0)
		return count(s->hs - s->resumed);
	if (i == 1)
		return count(s->resumed);
	return count(s->closed[RELAY_RES_TLS_FAILED]);
}

/* Handshakes, resumed ones included. */
static struct metric_val
get_tls_total(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(c->sum.hs);
}

static struct metric_val
get_server_up(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(server_up(c->srv, c->now) ? 1 : 0);
}

static struct metric_val
get_connects(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(server_connects(c->srv));
}

static struct metric_val
get_connect_failures(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(atomic_load(&c->srv->connect_failures));
}

static struct metric_val
get_accept_pauses(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(
	    worker_sum(c->st, offsetof(struct relay_counters, accept_pauses)));
}

static struct metric_val
get_connect_retries(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(worker_sum(
	    c->st, offsetof(struct relay_counters, connect_retries)));
}

static struct metric_val
get_errors(const struct metric_ctx *c, size_t i)
{
	(void)i;
	return count(
	    worker_sum(c->st, offsetof(struct relay_counters, errors)));
}

static const char *
split_stats_result(size_t i)
{
	static const char *const v[] = {
	    "answered", "bad_request", "incomplete", "timeout", "evicted"};

	return v[i];
}

static const struct metric_split by_stats_result = {
    "result", STATS_RES_MAX, split_stats_result};

/* i: enum stats_result. */
static struct metric_val
get_stats_requests(const struct metric_ctx *c, size_t i)
{
	return count(c->st->requests[i]);
}

static const struct metric metrics[] = {
    {"lifeline_build_info", "gauge", "Version of the running relay.",
        METRIC_GLOBAL, &by_version, get_one},
    {"lifeline_uptime_seconds", "gauge", "Seconds since start.", METRIC_GLOBAL,
        NULL, get_uptime},
    {"lifeline_workers", "gauge", "Event-loop threads.", METRIC_GLOBAL, NULL,
        get_workers},
    {"lifeline_connections_active", "gauge", "Client connections open now.",
        METRIC_LISTENER, NULL, get_active},
    {"lifeline_connections_total", "counter",
        "Client connections ended, by how.", METRIC_LISTENER, &by_result,
        get_closed},
    {"lifeline_bytes_total", "counter",
        "Payload bytes relayed (in: client to upstream).", METRIC_LISTENER,
        &by_direction, get_bytes},
    {"lifeline_tls_handshakes_total", "counter", "TLS handshakes, by result.",
        METRIC_TLS_LISTENER, &by_tls, get_tls},
    {"lifeline_upstream_server_up", "gauge", "1 when the server is usable.",
        METRIC_SERVER, NULL, get_server_up},
    {"lifeline_upstream_connect_seconds", "histogram",
        "Time to connect to an upstream server.", METRIC_SERVER, NULL, NULL},
    {"lifeline_upstream_connect_failures_total", "counter",
        "Failed connection attempts.", METRIC_SERVER, NULL,
        get_connect_failures},
    {"lifeline_accept_pauses_total", "counter",
        "Accept pauses for lack of file descriptors.", METRIC_GLOBAL, NULL,
        get_accept_pauses},
    {"lifeline_connect_retries_total", "counter",
        "Connections retried on another upstream address or server.",
        METRIC_GLOBAL, NULL, get_connect_retries},
    {"lifeline_errors_total", "counter",
        "Connections reset or cut by local errors.", METRIC_GLOBAL, NULL,
        get_errors},
    {"lifeline_source_refused_total", "counter",
        "Connections refused by a per-source limit, by limit.", METRIC_LISTENER,
        &by_limit, get_source_refused},
    {"lifeline_camouflage_total", "counter",
        "Connections of decoy listeners, by how their first bytes were "
        "classed.",
        METRIC_DECOY_LISTENER, &by_class, get_camouflage},
    {"lifeline_source_table_entries", "gauge",
        "Sources tracked for per-source limits.", METRIC_GLOBAL, NULL,
        get_source_entries},
    {"lifeline_source_table_capacity", "gauge",
        "Sources the table can track (source-table-size).", METRIC_GLOBAL, NULL,
        get_source_capacity},
    {"lifeline_source_table_full_total", "counter",
        "Connections admitted without a per-source limit: table full.",
        METRIC_GLOBAL, NULL, get_source_full},
    {"lifeline_stats_requests_total", "counter",
        "Connections to the stats listener, by how their request ended.",
        METRIC_GLOBAL, &by_stats_result, get_stats_requests},
};

static void
put_val(struct sbuf *b, struct metric_val v)
{
	if (v.is_seconds)
		sb_printf(b, "%.3f", v.seconds);
	else
		sb_printf(b, "%llu", (unsigned long long)v.n);
}

/*
 * Writes one sample: NAME{SCOPE LABELS,LABEL="LVAL"} VALUE, where label
 * (NULL: none) comes after c's scope labels.
 */
static void
put_sample(struct sbuf *b, const char *name, enum metric_scope scope,
    const struct metric_ctx *c, const char *label, const char *lval,
    struct metric_val v)
{
	bool labels = false;

	sb_printf(b, "%s", name);
	if (scope == METRIC_LISTENER || scope == METRIC_TLS_LISTENER ||
	    scope == METRIC_DECOY_LISTENER) {
		sb_printf(b, "{listener=\"%s\"", c->l->cfg->name);
		labels = true;
	} else if (scope == METRIC_SERVER) {
		sb_printf(b, "{upstream=\"%s\",server=\"%s\"", c->up->cfg->name,
		    c->srv->label);
		labels = true;
	}
	if (label != NULL) {
		sb_printf(b, "%s%s=\"%s\"", labels ? "," : "{", label, lval);
		labels = true;
	}
	sb_printf(b, "%s ", labels ? "}" : "");
	put_val(b, v);
	sb_printf(b, "\n");
}

/* The samples of a connect-time histogram, c's server. */
static void
samples_hist(struct sbuf *b, const struct metric *m, const struct metric_ctx *c)
{
	struct upstream_server *s = c->srv;
	char name[128], le[32];
	uint64_t cum = 0;

	snprintf(name, sizeof(name), "%s_bucket", m->name);
	for (int k = 0; k < UPSTREAM_HIST_BUCKETS; k++) {
		cum += atomic_load_explicit(
		    &s->connect_hist[k], memory_order_relaxed);
		if (k < UPSTREAM_HIST_BUCKETS - 1)
			snprintf(le, sizeof(le), "%g",
			    upstream_hist_bounds_ms[k] / 1000.0);
		else
			snprintf(le, sizeof(le), "+Inf");
		put_sample(b, name, m->scope, c, "le", le, count(cum));
	}
	snprintf(name, sizeof(name), "%s_sum", m->name);
	put_sample(b, name, m->scope, c, NULL, NULL,
	    (struct metric_val){.is_seconds = true,
	        .seconds = atomic_load(&s->connect_us_sum) / 1e6});
	snprintf(name, sizeof(name), "%s_count", m->name);
	put_sample(b, name, m->scope, c, NULL, NULL, count(cum));
}

/* The samples of m for one scope (c: which listener or server). */
static void
samples(struct sbuf *b, const struct metric *m, const struct metric_ctx *c)
{
	if (m->get == NULL) {
		samples_hist(b, m, c);
	} else if (m->split == NULL) {
		put_sample(b, m->name, m->scope, c, NULL, NULL, m->get(c, 0));
	} else {
		for (size_t i = 0; i < m->split->n; i++)
			put_sample(b, m->name, m->scope, c, m->split->label,
			    m->split->value(i), m->get(c, i));
	}
}

/* Sets c to listener l, its counters summed over the workers. */
static void
ctx_listener(struct metric_ctx *c, const struct listener *l)
{
	c->l = l;
	listener_sum(c->st, l, &c->sum);
}

static void
render_metrics(struct stats *st, struct sbuf *b)
{
	const struct gen *g = st->gen;
	struct metric_ctx c = {.st = st, .now = loop_now(st->loop)};

	for (size_t k = 0; k < ARRAY_LEN(metrics); k++) {
		const struct metric *m = &metrics[k];

		sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help,
		    m->name, m->type);
		switch (m->scope) {
		case METRIC_GLOBAL:
			samples(b, m, &c);
			break;
		case METRIC_LISTENER:
		case METRIC_TLS_LISTENER:
		case METRIC_DECOY_LISTENER:
			for (size_t i = 0; i < g->nlisteners; i++) {
				if (m->scope == METRIC_TLS_LISTENER &&
				    g->listeners[i].tls == NULL)
					continue;
				if (m->scope == METRIC_DECOY_LISTENER &&
				    g->listeners[i].decoy == NULL &&
				    g->listeners[i].passthrough == NULL &&
				    g->listeners[i].decoy_tls == NULL)
					continue;
				ctx_listener(&c, &g->listeners[i]);
				samples(b, m, &c);
			}
			break;
		case METRIC_SERVER:
			for (size_t u = 0; u < g->cfg->nupstreams; u++) {
				c.up = g->ups[u];
				for (size_t j = 0; j < c.up->nservers; j++) {
					c.srv = c.up->servers[j];
					samples(b, m, &c);
				}
			}
			break;
		}
	}
}

/* A number in /stats.json: "KEY":VALUE, or "KEY":{"PART":VALUE,...}. */
struct json_field {
	const char *key;
	const struct metric_split *split; /* NULL: one value */
	metric_get_fn get;
	size_t i; /* without split: which value of get */
};

static const struct json_field listener_fields[] = {
    {"active", NULL, get_active, 0},
    {"connections", &by_result, get_closed, 0},
    {"bytes_in", NULL, get_bytes, 0},
    {"bytes_out", NULL, get_bytes, 1},
    {"tls_handshakes", NULL, get_tls_total, 0},
    {"tls_resumed", NULL, get_tls, 1},
    {"camouflage", &by_class, get_camouflage, 0},
};

static const struct json_field server_fields[] = {
    {"connects", NULL, get_connects, 0},
    {"connect_failures", NULL, get_connect_failures, 0},
};

/* Writes ,"KEY":VALUE for each field (an object for a split one). */
static void
json_fields(struct sbuf *b, const struct json_field *f, size_t n,
    const struct metric_ctx *c)
{
	for (size_t k = 0; k < n; k++) {
		sb_printf(b, ",\"%s\":", f[k].key);
		if (f[k].split == NULL) {
			put_val(b, f[k].get(c, f[k].i));
			continue;
		}
		for (size_t i = 0; i < f[k].split->n; i++) {
			sb_printf(b, "%s\"%s\":", i ? "," : "{",
			    f[k].split->value(i));
			put_val(b, f[k].get(c, i));
		}
		sb_printf(b, "}");
	}
}

static void
render_json(struct stats *st, struct sbuf *b)
{
	const struct gen *g = st->gen;
	struct metric_ctx c = {.st = st, .now = loop_now(st->loop)};
	uint64_t in = 0, out = 0;
	unsigned active = 0;
	char link[512];

	for (size_t i = 0; i < g->nlisteners; i++) {
		ctx_listener(&c, &g->listeners[i]);
		in += c.sum.in;
		out += c.sum.out;
		active += atomic_load(&g->listeners[i].state->active);
	}
	sb_printf(
	    b, "{\"version\":\"%s\",\"uptime_seconds\":", LIFELINE_VERSION);
	put_val(b, get_uptime(&c, 0));
	sb_printf(b, ",\"workers\":");
	put_val(b, get_workers(&c, 0));
	sb_printf(b, ",");
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
	    all_ready(g, c.now) ? "true" : "false");
	for (size_t i = 0; i < g->nlisteners; i++) {
		const struct listener *l = &g->listeners[i];

		ctx_listener(&c, l);
		sb_printf(b,
		    "%s{\"name\":\"%s\",\"tls\":%s,\"accept_proxy\":%s,"
		    "\"upstream\":\"%s\",\"addresses\":[",
		    i ? "," : "", l->cfg->name, l->tls ? "true" : "false",
		    l->cfg->accept_proxy ? "true" : "false", l->up->cfg->name);
		for (size_t j = 0; j < l->nsocks; j++)
			sb_printf(
			    b, "%s\"%s\"", j ? "," : "", l->socks[j]->text);
		sb_printf(b, "]");
		json_fields(b, listener_fields, ARRAY_LEN(listener_fields), &c);
		sb_printf(b, "}");
	}
	sb_printf(b, "],\"upstreams\":[");
	for (size_t u = 0; u < g->cfg->nupstreams; u++) {
		c.up = g->ups[u];
		sb_printf(b, "%s{\"name\":\"%s\",\"ready\":%s,\"servers\":[",
		    u ? "," : "", c.up->cfg->name,
		    group_ready(c.up, c.now) ? "true" : "false");
		for (size_t j = 0; j < c.up->nservers; j++) {
			c.srv = c.up->servers[j];
			sb_printf(b, "%s{\"server\":\"%s\",\"up\":%s",
			    j ? "," : "", c.srv->label,
			    server_up(c.srv, c.now) ? "true" : "false");
			json_fields(
			    b, server_fields, ARRAY_LEN(server_fields), &c);
			sb_printf(b, "}");
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
respond_error(struct stats_client *c, int status)
{
	static const struct {
		int status;
		const char *reason, *body;
	} errs[] = {
	    {405, "Method Not Allowed", "GET or HEAD only\n"},
	    {414, "URI Too Long", "request target too long\n"},
	    {431, "Request Header Fields Too Large", "request too large\n"},
	    {505, "HTTP Version Not Supported", "HTTP/1.0 or HTTP/1.1 only\n"},
	    {400, "Bad Request", "bad request\n"}, /* last: any other status */
	};
	size_t i = 0;

	c->st->requests[STATS_RES_BAD_REQUEST]++;
	while (i < ARRAY_LEN(errs) - 1 && errs[i].status != status)
		i++;
	respond(c, errs[i].status, errs[i].reason, "text/plain", errs[i].body,
	    strlen(errs[i].body), false);
}

/* tchar (RFC 9110 section 5.6.2): what a method is made of. */
static bool
is_tchar(unsigned char ch)
{
	return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
	    (ch >= 'A' && ch <= 'Z') ||
	    (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Visible ASCII: what a request target is made of (no SP, CTL or 8-bit). */
static bool
is_target_char(unsigned char ch)
{
	return ch > 0x20 && ch < 0x7f;
}

/* Length of the run at p, before end, of bytes that pass ok(). */
static size_t
span(const char *p, const char *end, bool (*ok)(unsigned char))
{
	const char *q = p;

	while (q < end && ok((unsigned char)*q))
		q++;
	return (size_t)(q - p);
}

/* "HTTP/DIGIT.DIGIT", exactly n bytes: 0 for 1.0 and 1.1, else 400 or 505. */
static int
parse_version(const char *v, size_t n)
{
	if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' ||
	    v[6] != '.' || v[7] < '0' || v[7] > '9')
		return 400;
	if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
		return 505;
	return 0;
}

/*
 * Parses "METHOD SP target SP HTTP-version CRLF" (RFC 9112 section 3) at the
 * start of req, strictly: one SP each, no leading blank line, CRLF only.
 * Returns 0, or the status to answer: 400 when malformed, 505 for a
 * well-formed version we do not speak.
 */
static int
parse_request_line(const char *req, size_t len, struct req_line *rl)
{
	const char *end = memmem(req, len, "\r\n", 2), *p = req;

	if (end == NULL)
		return 400;
	rl->method = p;
	rl->mlen = span(p, end, is_tchar);
	p += rl->mlen;
	if (rl->mlen == 0 || p == end || *p++ != ' ')
		return 400;
	rl->target = p;
	rl->tlen = span(p, end, is_target_char);
	p += rl->tlen;
	if (rl->tlen == 0 || p == end || *p++ != ' ')
		return 400;
	return parse_version(p, (size_t)(end - p));
}

static bool
method_is(const struct req_line *rl, const char *m)
{
	return rl->mlen == strlen(m) && memcmp(rl->method, m, rl->mlen) == 0;
}

/* Answers a GET or HEAD of path (query string removed). */
static void
route(struct stats_client *c, const char *path, bool head)
{
	struct stats *st = c->st;
	struct sbuf body = {0};

	st->requests[STATS_RES_ANSWERED]++;
	if (strcmp(path, "/metrics") == 0) {
		render_metrics(st, &body);
		respond(c, 200, "OK",
		    "text/plain; version=0.0.4; charset=utf-8", body.p, body.n,
		    head);
	} else if (strcmp(path, "/stats.json") == 0) {
		render_json(st, &body);
		respond(c, 200, "OK", "application/json", body.p, body.n, head);
	} else if (strcmp(path, "/healthz") == 0) {
		respond(c, 200, "OK", "text/plain", "ok\n", 3, head);
	} else if (strcmp(path, "/readyz") == 0) {
		if (all_ready(st->gen, loop_now(st->loop)))
			respond(c, 200, "OK", "text/plain", "ready\n", 6, head);
		else
			respond(c, 503, "Service Unavailable", "text/plain",
			    "not ready: an upstream group has no server up\n",
			    46, head);
	} else if (strcmp(path, "/") == 0) {
		respond(c, 200, "OK", "text/html; charset=utf-8",
		    (const char *)dashboard_html, dashboard_html_len, head);
	} else if (strcmp(path, "/qr.svg") == 0) {
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

/* Builds the response to the complete request in c->req. */
static void
handle(struct stats_client *c)
{
	char path[STATS_MAX_TARGET + 1];
	struct req_line rl;
	int bad;

	bad = parse_request_line(c->req, c->rlen, &rl);
	/* Origin form only: we are nobody's proxy. */
	if (bad == 0 && rl.target[0] != '/')
		bad = 400;
	if (bad == 0 && rl.tlen > STATS_MAX_TARGET)
		bad = 414;
	if (bad == 0 && !method_is(&rl, "GET") && !method_is(&rl, "HEAD"))
		bad = 405;
	if (bad != 0) {
		respond_error(c, bad);
		return;
	}
	memcpy(path, rl.target, rl.tlen);
	path[rl.tlen] = '\0';
	path[strcspn(path, "?")] = '\0';
	route(c, path, method_is(&rl, "HEAD"));
}

static void
list_append(struct client_list *l, struct stats_client *c)
{
	c->list = l;
	c->prev = l->tail;
	c->next = NULL;
	if (l->tail != NULL)
		l->tail->next = c;
	else
		l->head = c;
	l->tail = c;
	l->n++;
}

static void
list_remove(struct stats_client *c)
{
	struct client_list *l = c->list;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		l->head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	else
		l->tail = c->prev;
	l->n--;
	c->list = NULL;
	c->prev = c->next = NULL;
}

/*
 * Closes c at once (its descriptor is free on return) with a FIN, or with
 * an RST when reset (a response cut short).  The memory waits for reap:
 * an event for c may still be pending in this loop iteration.
 */
static void
client_close(struct stats_client *c, bool reset)
{
	struct stats *st = c->st;

	if (reset) {
		struct linger lg = {.l_onoff = 1, .l_linger = 0};

		(void)setsockopt(
		    c->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	loop_timer_del(st->loop, &c->timer);
	close(c->io.fd);
	c->io.fd = -1;
	sb_free(&c->resp);
	list_remove(c);
	list_append(&st->closed, c);
	loop_task_queue(st->loop, &st->reap);
}

static void
reap_cb(struct loop_task *t)
{
	struct stats *st = container_of(t, struct stats, reap);

	while (st->closed.head != NULL) {
		struct stats_client *c = st->closed.head;

		list_remove(c);
		free(c);
	}
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
			client_close(c, false);
			return;
		}
		c->woff += (size_t)n;
	}
	/* All sent: a FIN after the response. */
	(void)shutdown(c->io.fd, SHUT_WR);
	client_close(c, false);
}

/* The request is complete (or refused): from now on c only writes. */
static void
client_reply(struct stats_client *c)
{
	struct stats *st = c->st;

	list_remove(c);
	list_append(&st->sending, c);
	loop_timer_set(
	    st->loop, &c->timer, loop_now(st->loop) + STATS_SEND_TIMEOUT_MS);
	if (loop_io_mod(st->loop, &c->io, EPOLLOUT) != 0) {
		client_close(c, false);
		return;
	}
	client_write(c);
}

/* Reads what came; once the request is whole, or too large, answers it. */
static void
client_read(struct stats_client *c)
{
	ssize_t n;

	n = recv(c->io.fd, c->req + c->rlen, sizeof(c->req) - 1 - c->rlen, 0);
	if (n < 0 && errno == EAGAIN)
		return;
	if (n <= 0) {
		c->st->requests[STATS_RES_INCOMPLETE]++;
		client_close(c, false);
		return;
	}
	/* Binary (a TLS ClientHello, a scanner's probe): no HTTP at all. */
	if (memchr(c->req + c->rlen, '\0', (size_t)n) != NULL) {
		c->rlen += (size_t)n;
		respond_error(c, 400);
		client_reply(c);
		return;
	}
	c->rlen += (size_t)n;
	c->req[c->rlen] = '\0';
	/* A bare-LF request is whole too, and refused by handle(). */
	if (strstr(c->req, "\r\n\r\n") != NULL ||
	    strstr(c->req, "\n\n") != NULL)
		handle(c);
	else if (c->rlen == sizeof(c->req) - 1)
		respond_error(c, 431);
	else
		return;
	client_reply(c);
}

static void
client_cb(struct loop_io *io, uint32_t events)
{
	struct stats_client *c = container_of(io, struct stats_client, io);

	if (io->fd < 0)
		return; /* closed earlier in this iteration */
	if (c->list == &c->st->sending) {
		if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			client_write(c);
		return;
	}
	client_read(c);
}

/*
 * Header timeout: FIN, like any server whose client never asked.  Send
 * timeout: the response is cut, so RST.
 */
static void
client_timer_cb(struct loop_timer *t)
{
	struct stats_client *c = container_of(t, struct stats_client, timer);

	if (c->list == &c->st->reading)
		c->st->requests[STATS_RES_TIMEOUT]++;
	client_close(c, c->list == &c->st->sending);
}

/*
 * Frees a slot for a newcomer: the oldest client that has not finished its
 * request, else (every slot busy writing) the oldest response.  Returns
 * false when there is no client to close.
 */
static bool
evict_oldest(struct stats *st)
{
	if (st->reading.head != NULL) {
		st->requests[STATS_RES_EVICTED]++;
		client_close(st->reading.head, false);
		return true;
	}
	if (st->sending.head != NULL) {
		client_close(st->sending.head, true);
		return true;
	}
	return false;
}

static void
pause_cb(struct loop_timer *t)
{
	struct stats_sock *ss = container_of(t, struct stats_sock, pause);

	(void)loop_io_mod(ss->st->loop, &ss->io, EPOLLIN);
}

/* Takes a new client on fd (consumes fd). */
static void
client_new(struct stats *st, int fd)
{
	struct stats_client *c = NULL;

	if (st->reading.n + st->sending.n >= STATS_MAX_CLIENTS)
		(void)evict_oldest(st);
	if ((c = calloc(1, sizeof(*c))) == NULL)
		goto fail;
	c->st = st;
	c->io.fd = fd;
	c->io.cb = client_cb;
	loop_timer_init(&c->timer, client_timer_cb);
	(void)setsockopt(
	    fd, SOL_SOCKET, SO_SNDBUF, &(int){STATS_SNDBUF}, sizeof(int));
	if (loop_io_add(st->loop, &c->io, EPOLLIN) != 0)
		goto fail;
	list_append(&st->reading, c);
	loop_timer_set(
	    st->loop, &c->timer, loop_now(st->loop) + STATS_HEADER_TIMEOUT_MS);
	return;
fail:
	free(c);
	close(fd);
}

static void
accept_cb(struct loop_io *io, uint32_t events)
{
	struct stats_sock *ss = container_of(io, struct stats_sock, io);
	struct stats *st = ss->st;

	(void)events;
	for (int i = 0; i < 16; i++) {
		int fd =
		    accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd >= 0) {
			client_new(st, fd);
			continue;
		}
		if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS &&
		    errno != ENOMEM)
			return;
		/* Out of descriptors: an idle client's one serves a probe. */
		if (errno != ENOBUFS && errno != ENOMEM &&
		    st->reading.head != NULL) {
			st->requests[STATS_RES_EVICTED]++;
			client_close(st->reading.head, false);
			continue;
		}
		(void)loop_io_mod(st->loop, io, 0);
		loop_timer_set(st->loop, &ss->pause, loop_now(st->loop) + 100);
		return;
	}
}

struct stats *
stats_new(const struct cfg *cfg, char *err, size_t errlen)
{
	struct stats *st = xcalloc(1, sizeof(*st));

	loop_task_init(&st->reap, reap_cb);
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
		    listen(fd, STATS_BACKLOG) != 0 ||
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
	while (st->reading.head != NULL)
		client_close(st->reading.head, false);
	while (st->sending.head != NULL)
		client_close(st->sending.head, true);
	if (st->loop != NULL)
		loop_task_cancel(st->loop, &st->reap);
	reap_cb(&st->reap);
	for (size_t i = 0; i < st->nsocks; i++) {
		if (st->loop != NULL)
			loop_timer_del(st->loop, &st->socks[i].pause);
		close(st->socks[i].io.fd);
	}
	free(st);
}
