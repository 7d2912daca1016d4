/*
 * config: the INI configuration (libinih), presets, validation, printing.
 *
 * libinih parses "key = value" lines; our reader callback feeds it one line
 * at a time, which lets us count lines for "FILE:LINE:" messages (Debian
 * builds inih without INI_HANDLER_LINENO), see every section header (inih
 * reports none for an empty section), strip "#" comments after values and
 * refuse over-long lines instead of letting inih split them.
 */
#include <errno.h>
#include <ini.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "hello.h"
#include "srclimit.h"
#include "util.h"

#define CFG_MAX_FILE (1024 * 1024)
/* inih's line buffer (INI_MAX_LINE in Debian's build). */
#define CFG_MAX_LINE 200

/*
 * The built-in presets, written once: what they share, then one table of
 * listeners that says which preset has which.  preset_text() turns a preset
 * into INI text for the ordinary parser, so a preset is checked like a file.
 */
enum {
	PRESET_WHATSAPP = 1 << 0,
	PRESET_MINIMAL = 1 << 1,
	PRESET_CAMOUFLAGE = 1 << 2,
};

static const struct preset {
	const char *name;
	unsigned bit;
	const char *title; /* the first line's comment */
} presets[] = {
    {"whatsapp", PRESET_WHATSAPP, "the official WhatsApp proxy's port map"},
    {"minimal", PRESET_MINIMAL, "the two-port public profile"},
    {"camouflage", PRESET_CAMOUFLAGE,
        "chat, media and a decoy web server on 443 (and 80)"},
};

/* Every preset: limits, timeouts, stats and the two upstream groups. */
static const char preset_common[] =
    "[global]\nmaxconn = 27500\n"
    "[timeouts]\nconnect = 5s\nclient = 200s\nserver = 200s\n"
    "client-fin = 1s\nserver-fin = 1s\nhandshake = %s\n"
    "[stats]\nlisten = 127.0.0.1:8199\n"
    "[upstream chat]\n"
    "server = g.whatsapp.net:5222\nserver = g-fallback.whatsapp.net:5222\n"
    "server = g.whatsapp.net:443\nserver = g-fallback.whatsapp.net:443\n"
    "server = g.whatsapp.net:80\nserver = g-fallback.whatsapp.net:80\n"
    "send-proxy = v2\ncheck-interval = 60s\n"
    "[upstream media]\n"
    "server = whatsapp.net:443\nsend-proxy = none\ncheck-interval = 60s\n";

/*
 * camouflage: the operator's web server (nginx) serves its site over
 * plain HTTP on 127.0.0.1:8080 (the decoy; also for 443's decrypted
 * connections) and over TLS on 127.0.0.1:8443 (for plain HTTP sent to
 * 443).  lifeline's TLS and timeouts answer like Debian's nginx with
 * Mozilla's intermediate settings: handshake 60 s (client_header_timeout),
 * http/1.1, two tickets of 5 min (ssl_session_timeout), its ECDHE suites
 * in its order with the client's preference, no keep-alive probes.
 */
static const char preset_camouflage[] =
    "[upstream web]\nserver = 127.0.0.1:8080\nsend-proxy = none\n"
    "check-interval = 60s\n"
    "[upstream web-tls]\nserver = 127.0.0.1:8443\nsend-proxy = none\n"
    "check-interval = 60s\n";

static const char preset_camouflage_listen[] =
    "decoy = web\nclient-keepalive = off\n";

static const char preset_camouflage_tls[] =
    "decoy-tls = web-tls\npassthrough = media\n"
    "tls-alpn = http/1.1, http/1.0, http/0.9\n"
    "tls-tickets = 2\ntls-ticket-lifetime = 5m\n"
    "tls-ciphers = ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-"
    "SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305\n"
    "tls-prefer-server-ciphers = off\n";

/* maxconn of each preset listener. */
#define PRESET_LISTEN_MAXCONN 27495

/*
 * Who may send PROXY headers to the -lb listeners: the loopback, private
 * and carrier-grade NAT ranges a load balancer talks from.
 */
static const char *const preset_lb_trusted[] = {
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
};

/*
 * The port map, in the order of --print-config, the ports file and the
 * metrics.  Each listener binds 0.0.0.0:PORT and [::]:PORT; an lb listener
 * has accept-proxy = on and trusts preset_lb_trusted.
 */
static const struct preset_listen {
	const char *name;
	uint16_t port;
	bool tls;
	bool lb;
	const char *upstream;
	unsigned presets; /* PRESET_* bits */
} preset_listens[] = {
    {"http", 80, false, false, "chat", PRESET_WHATSAPP},
    {"http-lb", 8080, false, true, "chat", PRESET_WHATSAPP},
    {"https", 443, true, false, "chat", PRESET_WHATSAPP},
    {"https-lb", 8443, true, true, "chat", PRESET_WHATSAPP},
    {"jabber", 5222, false, false, "chat", PRESET_WHATSAPP},
    {"jabber-lb", 8222, false, true, "chat", PRESET_WHATSAPP},
    {"chat-tls", 443, true, false, "chat", PRESET_MINIMAL},
    {"media", 587, false, false, "media", PRESET_WHATSAPP | PRESET_MINIMAL},
    /* 7777 relays media directly, as in the official Docker image. */
    {"media-alt", 7777, false, false, "media", PRESET_WHATSAPP},
    {"media-lb", 8587, false, true, "media", PRESET_WHATSAPP},
    {"https", 443, true, false, "chat", PRESET_CAMOUFLAGE},
    {"http", 80, false, false, "chat", PRESET_CAMOUFLAGE},
};

enum sec_kind {
	SEC_NONE = 0,
	SEC_GLOBAL,
	SEC_TIMEOUTS,
	SEC_STATS,
	SEC_UPSTREAM,
	SEC_LISTEN,
};

struct parse_state {
	struct cfg *cfg;
	const char *text; /* borrowed */
	size_t pos, len;
	int line;
	enum sec_kind kind;
	const char *secname; /* borrowed: for messages */
	struct cfg_upstream *up; /* borrowed: current [upstream] */
	struct cfg_listen *ls; /* borrowed: current [listen] */
	uint64_t seen_keys; /* non-repeatable keys seen in this section */
	bool seen_global, seen_timeouts, seen_stats;
	bool failed;
	char *err;
	size_t errlen;
};

static void perr(struct parse_state *st, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
perr(struct parse_state *st, int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (st->failed)
		return;
	st->failed = true;
	if (line > 0)
		n = snprintf(
		    st->err, st->errlen, "%s:%d: ", st->cfg->source, line);
	else
		n = snprintf(st->err, st->errlen, "%s: ", st->cfg->source);
	if (n < 0 || (size_t)n >= st->errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(st->err + n, st->errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

/* Grows *arr (of *n elements of size) by one zeroed element; returns it. */
static void *
array_push(void *arrp, size_t *n, size_t size)
{
	void **arr = arrp;
	char *p = xreallocarray(*arr, *n + 1, size);

	memset(p + *n * size, 0, size);
	*arr = p;
	return p + (*n)++ * size;
}

static void
strlist_add(struct cfg_strlist *l, const char *s)
{
	char **slot = array_push(&l->v, &l->n, sizeof(char *));

	*slot = xstrdup(s);
}

static void
strlist_free(struct cfg_strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

const char *
cfg_parse_uint(const char *s, unsigned min, unsigned max, unsigned *out)
{
	unsigned long long v = 0;

	if (*s == '\0')
		return "missing number";
	for (const char *p = s; *p != '\0'; p++) {
		if (*p < '0' || *p > '9')
			return "not a non-negative whole number";
		v = v * 10 + (unsigned)(*p - '0');
		if (v > max)
			return "number too large";
	}
	if (v < min)
		return "number too small";
	*out = (unsigned)v;
	return NULL;
}

const char *
cfg_parse_size(const char *s, unsigned min, unsigned max, unsigned *out)
{
	unsigned long long v = 0, mult = 1;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return "not a size (use a number of bytes, or k or m for KiB "
		       "or MiB)";
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (unsigned)(*p - '0');
		if (v > max)
			return "size too large";
	}
	if (*p == 'k' || *p == 'K')
		mult = 1024, p++;
	else if (*p == 'm' || *p == 'M')
		mult = 1024 * 1024, p++;
	if (*p != '\0')
		return "not a size (use a number of bytes, or k or m for KiB "
		       "or MiB)";
	if (v * mult > max)
		return "size too large";
	if (v * mult < min)
		return "size too small";
	*out = (unsigned)(v * mult);
	return NULL;
}

const char *
cfg_parse_duration(const char *s, uint64_t *ms)
{
	uint64_t v = 0, mult;
	const char *p = s;
	/* One week is more than any timeout should ever be. */
	const uint64_t max = 7ULL * 24 * 3600 * 1000;

	if (*p < '0' || *p > '9')
		return "not a duration (use a number and ms, s, m or h)";
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > max)
			return "duration too long";
	}
	if (strcmp(p, "ms") == 0)
		mult = 1;
	else if (strcmp(p, "s") == 0)
		mult = 1000;
	else if (strcmp(p, "m") == 0)
		mult = 60 * 1000;
	else if (strcmp(p, "h") == 0)
		mult = 3600 * 1000;
	else if (*p == '\0' && v == 0)
		mult = 1;
	else if (*p == '\0')
		return "duration needs a unit (ms, s, m or h)";
	else
		return "unknown duration unit (use ms, s, m or h)";
	if (v * mult > max)
		return "duration too long";
	*ms = v * mult;
	return NULL;
}

const char *
cfg_parse_bool(const char *s, bool *out)
{
	if (strcmp(s, "on") == 0 || strcmp(s, "yes") == 0 ||
	    strcmp(s, "true") == 0 || strcmp(s, "1") == 0) {
		*out = true;
		return NULL;
	}
	if (strcmp(s, "off") == 0 || strcmp(s, "no") == 0 ||
	    strcmp(s, "false") == 0 || strcmp(s, "0") == 0) {
		*out = false;
		return NULL;
	}
	return "not a boolean (use on or off)";
}

const char *
cfg_send_proxy_str(enum cfg_send_proxy v)
{
	switch (v) {
	case CFG_SEND_PROXY_NONE:
		return "none";
	case CFG_SEND_PROXY_V1:
		return "v1";
	case CFG_SEND_PROXY_V2:
		return "v2";
	}
	return "?";
}

const char *
cfg_key_type_str(enum cfg_key_type v)
{
	switch (v) {
	case CFG_KEY_EC256:
		return "ec256";
	case CFG_KEY_RSA2048:
		return "rsa2048";
	case CFG_KEY_RSA4096:
		return "rsa4096";
	}
	return "?";
}

static bool
valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > CFG_MAX_NAME)
		return false;
	for (; *s != '\0'; s++) {
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		        (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' ||
		        *s == '.'))
			return false;
	}
	return true;
}

/* Called by the reader for each "[...]" line, before inih sees it. */
static void
section_begin(struct parse_state *st, const char *hdr)
{
	char kind[32], name[CFG_MAX_NAME + 2], extra[2];
	int n;

	st->seen_keys = 0;
	st->up = NULL;
	st->ls = NULL;
	n = sscanf(hdr, " %31s %33s %1s", kind, name, extra);
	if (n <= 0) {
		perr(st, st->line, "empty section name");
		return;
	}
	if (n == 3) {
		perr(st, st->line, "section header has too many words");
		return;
	}
	if (strcmp(kind, "global") == 0 || strcmp(kind, "timeouts") == 0 ||
	    strcmp(kind, "stats") == 0) {
		bool *seen;

		if (n != 1) {
			perr(st, st->line, "[%s] takes no name", kind);
			return;
		}
		if (kind[0] == 'g') {
			st->kind = SEC_GLOBAL;
			seen = &st->seen_global;
		} else if (kind[0] == 't') {
			st->kind = SEC_TIMEOUTS;
			seen = &st->seen_timeouts;
		} else {
			st->kind = SEC_STATS;
			seen = &st->seen_stats;
		}
		if (*seen)
			perr(st, st->line, "duplicate section [%s]", kind);
		*seen = true;
		st->secname = kind[0] == 'g' ? "global"
		    : kind[0] == 't'         ? "timeouts"
		                             : "stats";
		return;
	}
	if (strcmp(kind, "upstream") != 0 && strcmp(kind, "listen") != 0) {
		perr(st, st->line,
		    "unknown section kind '%s' (expected global, timeouts, "
		    "stats, upstream NAME or listen NAME)",
		    kind);
		return;
	}
	if (n != 2) {
		perr(st, st->line, "[%s] needs a name: [%s NAME]", kind, kind);
		return;
	}
	if (!valid_name(name)) {
		perr(st, st->line,
		    "bad %s name '%s' (1-%d of A-Z a-z 0-9 - _ .)", kind, name,
		    CFG_MAX_NAME);
		return;
	}
	if (kind[0] == 'u') {
		for (size_t i = 0; i < st->cfg->nupstreams; i++) {
			if (strcmp(st->cfg->upstreams[i].name, name) == 0) {
				perr(st, st->line,
				    "duplicate section [upstream %s] (first "
				    "at line %d)",
				    name, st->cfg->upstreams[i].line);
				return;
			}
		}
		st->kind = SEC_UPSTREAM;
		st->up = array_push(&st->cfg->upstreams, &st->cfg->nupstreams,
		    sizeof(struct cfg_upstream));
		st->up->name = xstrdup(name);
		st->up->line = st->line;
		st->up->send_proxy = CFG_SEND_PROXY_NONE;
		st->up->check_interval_ms = 60 * 1000;
		st->secname = st->up->name;
	} else {
		for (size_t i = 0; i < st->cfg->nlistens; i++) {
			if (strcmp(st->cfg->listens[i].name, name) == 0) {
				perr(st, st->line,
				    "duplicate section [listen %s] (first at "
				    "line %d)",
				    name, st->cfg->listens[i].line);
				return;
			}
		}
		st->kind = SEC_LISTEN;
		st->ls = array_push(&st->cfg->listens, &st->cfg->nlistens,
		    sizeof(struct cfg_listen));
		st->ls->name = xstrdup(name);
		st->ls->line = st->line;
		st->ls->key_type = CFG_KEY_EC256;
		st->ls->keepalive_ms = CFG_KEEPALIVE_MS;
		st->ls->tls_tickets = CFG_TLS_TICKETS;
		st->ls->tls_ticket_lifetime_ms = CFG_TLS_TICKET_LIFETIME_MS;
		st->ls->tls_prefer_server = true;
		st->secname = st->ls->name;
	}
}

/*
 * inih's reader callback: copies the next line into str (num bytes), after
 * counting it, noting section headers and cutting "#" comments that follow
 * whitespace.  Returns NULL at the end or after an error, which stops inih.
 */
static char *
reader(char *str, int num, void *stream)
{
	struct parse_state *st = stream;
	const char *start, *nl;
	size_t n, linelen;
	char *p;

	if (st->failed || st->pos >= st->len)
		return NULL;
	start = st->text + st->pos;
	nl = memchr(start, '\n', st->len - st->pos);
	linelen = nl != NULL ? (size_t)(nl - start) : st->len - st->pos;
	st->pos += linelen + (nl != NULL ? 1 : 0);
	st->line++;
	if (memchr(start, '\0', linelen) != NULL) {
		perr(st, st->line, "NUL byte in line");
		return NULL;
	}
	/* Keep room for the newline inih expects and the NUL. */
	if (linelen + 2 > (size_t)num) {
		perr(st, st->line, "line too long (at most %d characters)",
		    num - 2);
		return NULL;
	}
	memcpy(str, start, linelen);
	n = linelen;
	if (n > 0 && str[n - 1] == '\r')
		n--;
	str[n] = '\0';
	for (p = str; *p != '\0'; p++) {
		if (*p == '#' && p > str && (p[-1] == ' ' || p[-1] == '\t')) {
			*p = '\0';
			break;
		}
	}
	p = str + strspn(str, " \t");
	if (*p == '[') {
		char *end = strchr(p, ']');

		if (end == NULL) {
			perr(st, st->line, "missing ']' in section header");
			return NULL;
		}
		if (end[1 + strspn(end + 1, " \t")] != '\0' &&
		    end[1 + strspn(end + 1, " \t")] != ';') {
			perr(st, st->line, "text after ']' in section header");
			return NULL;
		}
		*end = '\0';
		section_begin(st, p + 1);
		*end = ']';
		if (st->failed)
			return NULL;
	}
	n = strlen(str);
	str[n] = '\n';
	str[n + 1] = '\0';
	return str;
}

/* Every key each kind of section takes, NULL-terminated. */
static const char *const *
section_keys(enum sec_kind kind)
{
	static const char *const global[] = {"workers", "maxconn", "user",
	    "drain-timeout", "log-level", "ports-file", "public-host",
	    "sandbox", "max-conn-per-source", "new-conn-rate-per-source",
	    "source-prefix-v4", "source-prefix-v6", "source-table-size",
	    "socket-buffers", NULL};
	static const char *const timeouts[] = {"connect", "client", "server",
	    "client-fin", "server-fin", "handshake", NULL};
	static const char *const stats[] = {"listen", "public", NULL};
	static const char *const upstream[] = {
	    "server", "send-proxy", "check-interval", NULL};
	static const char *const listen[] = {"bind", "tls", "cert", "key",
	    "tls-key-type", "tls-names", "tls-ips", "accept-proxy",
	    "trusted-proxies", "upstream", "decoy", "maxconn",
	    "max-conn-per-source", "new-conn-rate-per-source",
	    "client-keepalive", "passthrough", "passthrough-sni", "decoy-tls",
	    "tls-alpn", "tls-tickets", "tls-ticket-lifetime", "tls-ciphers",
	    "tls-prefer-server-ciphers", NULL};
	static const char *const none[] = {NULL};

	switch (kind) {
	case SEC_GLOBAL:
		return global;
	case SEC_TIMEOUTS:
		return timeouts;
	case SEC_STATS:
		return stats;
	case SEC_UPSTREAM:
		return upstream;
	case SEC_LISTEN:
		return listen;
	case SEC_NONE:
		break;
	}
	return none;
}

/* Marks key number bit as seen; false (with an error) when it repeats. */
static bool
once(struct parse_state *st, unsigned bit, const char *key)
{
	if (st->seen_keys & (1ULL << bit)) {
		perr(st, st->line, "duplicate key '%s' in [%s]", key,
		    st->secname);
		return false;
	}
	st->seen_keys |= 1ULL << bit;
	return true;
}

static void
bad_value(
    struct parse_state *st, const char *key, const char *value, const char *why)
{
	perr(st, st->line, "bad value '%s' for '%s': %s", value, key, why);
}

static void
set_str(char **dst, const char *value)
{
	free(*dst);
	*dst = xstrdup(value);
}

static void
parse_duration_key(struct parse_state *st, const char *key, const char *value,
    uint64_t *out, uint64_t min)
{
	const char *e = cfg_parse_duration(value, out);

	if (e == NULL && *out < min)
		e = "duration too short";
	if (e != NULL)
		bad_value(st, key, value, e);
}

static void
parse_bind(struct parse_state *st, const char *key, const char *value,
    struct cfg_bind **arr, size_t *n)
{
	char host[ADDR_HOSTLEN];
	uint16_t port;
	struct cfg_bind *b;
	struct sockaddr_storage ss;
	socklen_t len;
	const char *e;

	e = addr_split(value, host, sizeof(host), &port, true);
	if (e == NULL)
		e = addr_parse_numeric(host, port, &ss, &len);
	if (e != NULL) {
		bad_value(st, key, value, e);
		return;
	}
	b = array_push(arr, n, sizeof(*b));
	b->text = xstrdup(value);
	b->ss = ss;
	b->sslen = len;
	b->line = st->line;
}

/*
 * The per-source keys, in [global] and [listen]: "off" or a count;
 * "off" or "N/s", "N/m", "N/h".  Returns false when key is neither.
 */
static bool
key_srclimit(struct parse_state *st, const char *key, const char *value,
    unsigned bit, struct cfg_srclimit *sl)
{
	const char *e;

	if (strcmp(key, "max-conn-per-source") == 0) {
		if (!once(st, bit, key))
			return true;
		sl->has_conn = true;
		if (strcmp(value, "off") == 0)
			sl->max_conn = 0;
		else if ((e = cfg_parse_uint(
		              value, 1, 10000000, &sl->max_conn)) != NULL)
			bad_value(st, key, value, "use off or 1-10000000");
		return true;
	}
	if (strcmp(key, "new-conn-rate-per-source") == 0) {
		char num[16];
		const char *slash = strchr(value, '/');
		size_t n = slash != NULL ? (size_t)(slash - value) : 0;

		if (!once(st, bit + 1, key))
			return true;
		sl->has_rate = true;
		if (strcmp(value, "off") == 0) {
			sl->rate = 0;
			return true;
		}
		if (slash == NULL || n == 0 || n >= sizeof(num) ||
		    slash[1] == '\0' || slash[2] != '\0' ||
		    strchr("smh", slash[1]) == NULL) {
			bad_value(st, key, value,
			    "use off or N/s, N/m or N/h (new connections per "
			    "second, minute or hour)");
			return true;
		}
		memcpy(num, value, n);
		num[n] = '\0';
		if (cfg_parse_uint(num, 1, SRCLIMIT_MAX_RATE, &sl->rate) !=
		    NULL) {
			bad_value(st, key, value, "N must be 1-1000000");
			return true;
		}
		sl->period_ms = slash[1] == 's' ? 1000
		    : slash[1] == 'm'           ? 60 * 1000
		                                : 3600 * 1000;
		return true;
	}
	return false;
}

static void
key_global(struct parse_state *st, const char *key, const char *value)
{
	struct cfg *cfg = st->cfg;
	const char *e;

	if (strcmp(key, "workers") == 0) {
		if (!once(st, 0, key))
			return;
		if (strcmp(value, "auto") == 0) {
			cfg->workers = 0;
			return;
		}
		e = cfg_parse_uint(value, 1, CFG_MAX_WORKERS, &cfg->workers);
		if (e != NULL)
			bad_value(st, key, value, "use auto or 1-64");
	} else if (strcmp(key, "maxconn") == 0) {
		if (!once(st, 1, key))
			return;
		e = cfg_parse_uint(value, 1, 10000000, &cfg->maxconn);
		if (e != NULL)
			bad_value(st, key, value, e);
	} else if (strcmp(key, "user") == 0) {
		if (!once(st, 2, key))
			return;
		set_str(&cfg->user, value);
	} else if (strcmp(key, "drain-timeout") == 0) {
		if (once(st, 3, key))
			parse_duration_key(
			    st, key, value, &cfg->drain_timeout_ms, 0);
	} else if (strcmp(key, "log-level") == 0) {
		if (!once(st, 4, key))
			return;
		if (log_level_parse(value, &cfg->log_level) != 0)
			bad_value(
			    st, key, value, "use error, warn, info or debug");
	} else if (strcmp(key, "ports-file") == 0) {
		if (!once(st, 5, key))
			return;
		set_str(&cfg->ports_file, value);
	} else if (strcmp(key, "public-host") == 0) {
		if (!once(st, 6, key))
			return;
		if (strpbrk(value, " \t/?&#") != NULL)
			bad_value(st, key, value, "not a host name or address");
		else
			set_str(&cfg->public_host, value);
	} else if (strcmp(key, "sandbox") == 0) {
		if (!once(st, 7, key))
			return;
		if ((e = cfg_parse_bool(value, &cfg->sandbox)) != NULL)
			bad_value(st, key, value, e);
	} else if (key_srclimit(st, key, value, 8, &cfg->srclimit)) {
		return;
	} else if (strcmp(key, "source-prefix-v4") == 0) {
		if (once(st, 10, key) &&
		    cfg_parse_uint(value, 1, 32, &cfg->source_prefix4) != NULL)
			bad_value(st, key, value, "use 1-32 (bits kept)");
	} else if (strcmp(key, "source-prefix-v6") == 0) {
		if (once(st, 11, key) &&
		    cfg_parse_uint(value, 1, 128, &cfg->source_prefix6) != NULL)
			bad_value(st, key, value, "use 1-128 (bits kept)");
	} else if (strcmp(key, "source-table-size") == 0) {
		if (once(st, 12, key) &&
		    cfg_parse_uint(value, SRCLIMIT_MIN_SIZE, SRCLIMIT_MAX_SIZE,
		        &cfg->source_table_size) != NULL)
			bad_value(st, key, value, "use 64-16777216 (sources)");
	} else if (strcmp(key, "socket-buffers") == 0) {
		if (!once(st, 13, key) || strcmp(value, "auto") == 0)
			return;
		if ((e = cfg_parse_size(value, CFG_SOCKBUF_MIN, CFG_SOCKBUF_MAX,
		         &cfg->socket_buffers)) != NULL)
			bad_value(st, key, value, e);
	} else {
		perr(st, st->line, "unknown key '%s' in [global]", key);
	}
}

static void
key_timeouts(struct parse_state *st, const char *key, const char *value)
{
	const char *const *names = section_keys(SEC_TIMEOUTS);
	struct cfg_timeouts *t = &st->cfg->timeouts;
	/* In the order of section_keys(SEC_TIMEOUTS). */
	uint64_t *slots[] = {&t->connect_ms, &t->client_ms, &t->server_ms,
	    &t->client_fin_ms, &t->server_fin_ms, &t->handshake_ms};

	for (unsigned i = 0; names[i] != NULL; i++) {
		if (strcmp(key, names[i]) == 0) {
			if (once(st, i, key))
				parse_duration_key(st, key, value, slots[i], 1);
			return;
		}
	}
	perr(st, st->line, "unknown key '%s' in [timeouts]", key);
}

static void
key_upstream(struct parse_state *st, const char *key, const char *value)
{
	struct cfg_upstream *up = st->up;

	if (strcmp(key, "server") == 0) {
		char host[ADDR_HOSTLEN];
		uint16_t port;
		struct cfg_server *s;
		const char *e;

		e = addr_split(value, host, sizeof(host), &port, false);
		if (e != NULL) {
			bad_value(st, key, value, e);
			return;
		}
		if (up->nservers >= 64) {
			perr(st, st->line, "too many servers (at most 64)");
			return;
		}
		s = array_push(&up->servers, &up->nservers, sizeof(*s));
		s->host = xstrdup(host);
		s->port = port;
		s->line = st->line;
	} else if (strcmp(key, "send-proxy") == 0) {
		if (!once(st, 0, key))
			return;
		if (strcmp(value, "none") == 0)
			up->send_proxy = CFG_SEND_PROXY_NONE;
		else if (strcmp(value, "v1") == 0)
			up->send_proxy = CFG_SEND_PROXY_V1;
		else if (strcmp(value, "v2") == 0)
			up->send_proxy = CFG_SEND_PROXY_V2;
		else
			bad_value(st, key, value, "use none, v1 or v2");
	} else if (strcmp(key, "check-interval") == 0) {
		if (once(st, 1, key))
			parse_duration_key(
			    st, key, value, &up->check_interval_ms, 100);
	} else {
		perr(st, st->line, "unknown key '%s' in [upstream %s]", key,
		    up->name);
	}
}

static void
key_listen(struct parse_state *st, const char *key, const char *value)
{
	struct cfg_listen *ls = st->ls;
	const char *e;

	if (strcmp(key, "bind") == 0) {
		parse_bind(st, key, value, &ls->binds, &ls->nbinds);
	} else if (strcmp(key, "tls") == 0) {
		if (!once(st, 0, key))
			return;
		if ((e = cfg_parse_bool(value, &ls->tls)) != NULL)
			bad_value(st, key, value, e);
	} else if (strcmp(key, "cert") == 0 || strcmp(key, "key") == 0) {
		if (!once(st, key[0] == 'c' ? 1 : 2, key))
			return;
		set_str(key[0] == 'c' ? &ls->cert : &ls->key, value);
	} else if (strcmp(key, "tls-key-type") == 0) {
		if (!once(st, 3, key))
			return;
		if (strcmp(value, "ec256") == 0)
			ls->key_type = CFG_KEY_EC256;
		else if (strcmp(value, "rsa2048") == 0)
			ls->key_type = CFG_KEY_RSA2048;
		else if (strcmp(value, "rsa4096") == 0)
			ls->key_type = CFG_KEY_RSA4096;
		else
			bad_value(
			    st, key, value, "use ec256, rsa2048 or rsa4096");
	} else if (strcmp(key, "tls-names") == 0 ||
	    strcmp(key, "tls-ips") == 0) {
		struct cfg_strlist *l =
		    key[4] == 'n' ? &ls->tls_names : &ls->tls_ips;
		char *copy = xstrdup(value), *save = NULL;

		for (char *t = strtok_r(copy, ", \t", &save); t != NULL;
		     t = strtok_r(NULL, ", \t", &save)) {
			struct sockaddr_storage ss;
			socklen_t len;

			if (key[4] == 'i' &&
			    addr_parse_numeric(t, 0, &ss, &len) != NULL) {
				bad_value(st, key, t,
				    "not a numeric IPv4 or IPv6 address");
				break;
			}
			strlist_add(l, t);
		}
		free(copy);
	} else if (strcmp(key, "accept-proxy") == 0) {
		if (!once(st, 4, key))
			return;
		if ((e = cfg_parse_bool(value, &ls->accept_proxy)) != NULL)
			bad_value(st, key, value, e);
	} else if (strcmp(key, "trusted-proxies") == 0) {
		struct addr_cidr c, *slot;
		size_t n = ls->trusted_text.n;

		if ((e = addr_cidr_parse(value, &c)) != NULL) {
			bad_value(st, key, value, e);
			return;
		}
		strlist_add(&ls->trusted_text, value);
		slot = array_push(&ls->trusted, &n, sizeof(*slot));
		*slot = c;
	} else if (strcmp(key, "upstream") == 0) {
		if (!once(st, 5, key))
			return;
		set_str(&ls->upstream_name, value);
		ls->upstream_line = st->line;
	} else if (strcmp(key, "decoy") == 0) {
		if (!once(st, 9, key))
			return;
		set_str(&ls->decoy_name, value);
		ls->decoy_line = st->line;
	} else if (strcmp(key, "maxconn") == 0) {
		if (!once(st, 6, key))
			return;
		if ((e = cfg_parse_uint(value, 1, 10000000, &ls->maxconn)) !=
		    NULL)
			bad_value(st, key, value, e);
	} else if (strcmp(key, "tls-alpn") == 0) {
		char *copy = xstrdup(value), *save = NULL;

		for (char *t = strtok_r(copy, ", \t", &save); t != NULL;
		     t = strtok_r(NULL, ", \t", &save)) {
			if (strlen(t) > 255) {
				bad_value(st, key, t, "longer than 255 bytes");
				break;
			}
			strlist_add(&ls->tls_alpn, t);
		}
		free(copy);
	} else if (strcmp(key, "tls-tickets") == 0) {
		if (once(st, 13, key) &&
		    (e = cfg_parse_uint(value, 0, 4, &ls->tls_tickets)) != NULL)
			bad_value(st, key, value, e);
	} else if (strcmp(key, "tls-ticket-lifetime") == 0) {
		if (!once(st, 14, key))
			return;
		if ((e = cfg_parse_duration(
		         value, &ls->tls_ticket_lifetime_ms)) != NULL)
			bad_value(st, key, value, e);
		else if (ls->tls_ticket_lifetime_ms < 1000)
			bad_value(st, key, value, "at least 1s");
	} else if (strcmp(key, "tls-ciphers") == 0) {
		if (once(st, 15, key))
			set_str(&ls->tls_ciphers, value);
	} else if (strcmp(key, "tls-prefer-server-ciphers") == 0) {
		if (once(st, 16, key) &&
		    (e = cfg_parse_bool(value, &ls->tls_prefer_server)) != NULL)
			bad_value(st, key, value, e);
	} else if (strcmp(key, "passthrough") == 0) {
		if (!once(st, 11, key))
			return;
		set_str(&ls->passthrough_name, value);
		ls->passthrough_line = st->line;
	} else if (strcmp(key, "decoy-tls") == 0) {
		if (!once(st, 12, key))
			return;
		set_str(&ls->decoy_tls_name, value);
		ls->decoy_tls_line = st->line;
	} else if (strcmp(key, "passthrough-sni") == 0) {
		if (!hello_pattern_valid(value))
			bad_value(st, key, value,
			    "use a host name or *.domain (any name under it)");
		else
			strlist_add(&ls->passthrough_sni, value);
	} else if (strcmp(key, "client-keepalive") == 0) {
		if (!once(st, 10, key))
			return;
		if (strcmp(value, "off") == 0) {
			ls->keepalive_ms = 0;
		} else if ((e = cfg_parse_duration(value, &ls->keepalive_ms)) !=
		    NULL) {
			bad_value(st, key, value, e);
		} else if (ls->keepalive_ms < 1000 ||
		    ls->keepalive_ms > 7200 * 1000) {
			bad_value(st, key, value, "use off or 1s to 2h");
		}
	} else if (key_srclimit(st, key, value, 7, &ls->srclimit)) {
		return;
	} else {
		perr(st, st->line, "unknown key '%s' in [listen %s]", key,
		    ls->name);
	}
}

static void
key_stats(struct parse_state *st, const char *key, const char *value)
{
	const char *e;

	if (strcmp(key, "listen") == 0) {
		parse_bind(st, key, value, &st->cfg->stats, &st->cfg->nstats);
	} else if (strcmp(key, "public") == 0) {
		if (!once(st, 0, key))
			return;
		if ((e = cfg_parse_bool(value, &st->cfg->stats_public)) != NULL)
			bad_value(st, key, value, e);
	} else {
		perr(st, st->line, "unknown key '%s' in [stats]", key);
	}
}

/*
 * "key =" with nothing after it: no key takes an empty value, and each
 * parser would otherwise explain it its own way ("unknown upstream ''").
 * Unknown keys fall through to their own message.
 */
static bool
empty_value(struct parse_state *st, const char *key, const char *value)
{
	if (*value != '\0')
		return false;
	for (const char *const *k = section_keys(st->kind); *k != NULL; k++) {
		if (strcmp(*k, key) == 0) {
			perr(st, st->line, "%s: empty value", key);
			return true;
		}
	}
	return false;
}

/* inih's handler: returns 1 to go on, 0 on error. */
static int
handler(void *user, const char *section, const char *key, const char *value)
{
	struct parse_state *st = user;

	(void)section; /* the reader tracked it, with its line */
	if (st->failed || empty_value(st, key, value))
		return 0;
	switch (st->kind) {
	case SEC_NONE:
		perr(st, st->line, "key '%s' outside any section", key);
		break;
	case SEC_GLOBAL:
		key_global(st, key, value);
		break;
	case SEC_TIMEOUTS:
		key_timeouts(st, key, value);
		break;
	case SEC_STATS:
		key_stats(st, key, value);
		break;
	case SEC_UPSTREAM:
		key_upstream(st, key, value);
		break;
	case SEC_LISTEN:
		key_listen(st, key, value);
		break;
	}
	return st->failed ? 0 : 1;
}

/* One bound address; dual: an IPv6 wildcard that takes IPv4 too. */
struct bind_ref {
	const struct cfg_bind *b; /* borrowed */
	bool dual;
};

static bool
bind_wildcard(const struct cfg_bind *b)
{
	if (b->ss.ss_family == AF_INET)
		return ((const struct sockaddr_in *)&b->ss)->sin_addr.s_addr ==
		    htonl(INADDR_ANY);
	return IN6_IS_ADDR_UNSPECIFIED(
	    &((const struct sockaddr_in6 *)&b->ss)->sin6_addr);
}

static bool
bind_same_addr(const struct cfg_bind *a, const struct cfg_bind *b)
{
	if (a->ss.ss_family == AF_INET)
		return memcmp(&((const struct sockaddr_in *)&a->ss)->sin_addr,
		           &((const struct sockaddr_in *)&b->ss)->sin_addr,
		           4) == 0;
	return memcmp(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr,
	           &((const struct sockaddr_in6 *)&b->ss)->sin6_addr, 16) == 0;
}

/*
 * True when binding both would fail or split connections: the same port
 * (never 0, a free port each time) on the same address or under a
 * wildcard of the same family.  Listeners' IPv6 sockets are IPv6-only;
 * the stats listener's [::] takes IPv4 too.
 */
static bool
binds_overlap(const struct bind_ref *x, const struct bind_ref *y)
{
	const struct cfg_bind *a = x->b, *b = y->b;
	uint16_t port = addr_port((const struct sockaddr *)&a->ss);

	if (port == 0 || port != addr_port((const struct sockaddr *)&b->ss))
		return false;
	if (a->ss.ss_family != b->ss.ss_family)
		return (x->dual && bind_wildcard(a)) ||
		    (y->dual && bind_wildcard(b));
	return bind_wildcard(a) || bind_wildcard(b) || bind_same_addr(a, b);
}

/* Every listener's and the stats listener's addresses, in file order. */
static struct bind_ref *
collect_binds(const struct cfg *cfg, size_t *n)
{
	struct bind_ref *refs = NULL;

	*n = 0;
	for (size_t i = 0; i < cfg->nlistens; i++) {
		for (size_t j = 0; j < cfg->listens[i].nbinds; j++) {
			struct bind_ref *r = array_push(&refs, n, sizeof(*r));

			r->b = &cfg->listens[i].binds[j];
		}
	}
	for (size_t i = 0; i < cfg->nstats; i++) {
		struct bind_ref *r = array_push(&refs, n, sizeof(*r));

		r->b = &cfg->stats[i];
		r->dual = cfg->stats[i].ss.ss_family == AF_INET6;
	}
	return refs;
}

/* What start-up could not bind, or would bind twice, is refused here. */
static void
check_binds(struct parse_state *st)
{
	size_t n;
	struct bind_ref *refs = collect_binds(st->cfg, &n);

	for (size_t i = 0; i < n && !st->failed; i++) {
		const struct cfg_bind *b = refs[i].b;

		for (size_t j = 0; j < i && !st->failed; j++) {
			const struct cfg_bind *o = refs[j].b;

			if (!binds_overlap(&refs[i], &refs[j]))
				continue;
			if (b->sslen == o->sslen && bind_same_addr(b, o))
				perr(st, b->line,
				    "address %s already bound at line %d",
				    b->text, o->line);
			else
				perr(st, b->line,
				    "address %s overlaps %s bound at line %d",
				    b->text, o->text, o->line);
		}
	}
	free(refs);
}

/* The index of upstream group name, or cfg->nupstreams when unknown. */
static size_t
group_index(const struct cfg *cfg, const char *name)
{
	size_t j;

	for (j = 0; j < cfg->nupstreams; j++) {
		if (strcmp(cfg->upstreams[j].name, name) == 0)
			break;
	}
	return j;
}

/*
 * Resolves a listener's group key (decoy, passthrough, decoy-tls) into
 * *idx; false (after an error) when it names no group or the upstream.
 */
static bool
listen_group(struct parse_state *st, const struct cfg_listen *ls,
    const char *key, const char *name, int line, size_t *idx)
{
	*idx = group_index(st->cfg, name);
	if (*idx == st->cfg->nupstreams) {
		perr(st, line, "unknown %s '%s' (no [upstream %s] section)",
		    key, name, name);
		return false;
	}
	if (*idx == ls->upstream) {
		perr(st, line,
		    "[listen %s]: the %s '%s' is its upstream: name another "
		    "group",
		    ls->name, key, name);
		return false;
	}
	return true;
}

/*
 * WhatsApp's media host names (passthrough-sni when a listener has
 * `passthrough` and names none): the app's media downloads and uploads
 * (mmg), their regional edges (*.fna, *.cdn), profile pictures (pps).
 */
static const char *const media_names[] = {"mmg.whatsapp.net",
    "mmg-fna.whatsapp.net", "pps.whatsapp.net", "*.fna.whatsapp.net",
    "*.cdn.whatsapp.net", NULL};

/* Camouflage settings of a listener: the groups they name, and sense. */
static bool
listen_groups(struct parse_state *st, struct cfg_listen *ls)
{
	if (ls->decoy_name != NULL &&
	    !listen_group(
	        st, ls, "decoy", ls->decoy_name, ls->decoy_line, &ls->decoy))
		return false;
	if (!ls->tls &&
	    (ls->passthrough_name != NULL || ls->passthrough_sni.n > 0 ||
	        ls->decoy_tls_name != NULL)) {
		perr(st, ls->line,
		    "[listen %s]: 'passthrough', 'passthrough-sni' and "
		    "'decoy-tls' need 'tls = on'",
		    ls->name);
		return false;
	}
	if (ls->passthrough_sni.n > 0 && ls->passthrough_name == NULL) {
		perr(st, ls->line,
		    "[listen %s]: 'passthrough-sni' without 'passthrough' "
		    "(the group such ClientHellos go to)",
		    ls->name);
		return false;
	}
	if (ls->passthrough_name != NULL) {
		if (!listen_group(st, ls, "passthrough", ls->passthrough_name,
		        ls->passthrough_line, &ls->passthrough))
			return false;
		if (ls->passthrough_sni.n == 0) {
			for (size_t i = 0; media_names[i] != NULL; i++)
				strlist_add(
				    &ls->passthrough_sni, media_names[i]);
		}
	}
	if (ls->decoy_tls_name != NULL &&
	    !listen_group(st, ls, "decoy-tls", ls->decoy_tls_name,
	        ls->decoy_tls_line, &ls->decoy_tls))
		return false;
	return true;
}

static void
validate(struct parse_state *st)
{
	struct cfg *cfg = st->cfg;

	for (size_t i = 0; i < cfg->nupstreams && !st->failed; i++) {
		if (cfg->upstreams[i].nservers == 0)
			perr(st, cfg->upstreams[i].line,
			    "[upstream %s] has no 'server'",
			    cfg->upstreams[i].name);
	}
	if (!st->failed && cfg->nlistens == 0)
		perr(st, 0, "no [listen NAME] section: nothing to serve");
	for (size_t i = 0; i < cfg->nlistens && !st->failed; i++) {
		struct cfg_listen *ls = &cfg->listens[i];
		size_t j;

		if (ls->nbinds == 0) {
			perr(st, ls->line, "[listen %s] has no 'bind'",
			    ls->name);
			break;
		}
		if (ls->upstream_name == NULL) {
			perr(st, ls->line, "[listen %s] has no 'upstream'",
			    ls->name);
			break;
		}
		for (j = 0; j < cfg->nupstreams; j++) {
			if (strcmp(cfg->upstreams[j].name, ls->upstream_name) ==
			    0)
				break;
		}
		if (j == cfg->nupstreams) {
			perr(st, ls->upstream_line,
			    "unknown upstream '%s' (no [upstream %s] "
			    "section)",
			    ls->upstream_name, ls->upstream_name);
			break;
		}
		ls->upstream = j;
		if (!listen_groups(st, ls))
			break;
		if ((ls->cert == NULL) != (ls->key == NULL)) {
			perr(st, ls->line,
			    "[listen %s]: 'cert' and 'key' go together",
			    ls->name);
			break;
		}
		if ((ls->cert != NULL || ls->tls_names.n > 0 ||
		        ls->tls_ips.n > 0) &&
		    !ls->tls) {
			perr(st, ls->line,
			    "[listen %s]: certificate settings without "
			    "'tls = on'",
			    ls->name);
			break;
		}
		if ((ls->tls_alpn.n > 0 || ls->tls_ciphers != NULL ||
		        ls->tls_tickets != CFG_TLS_TICKETS ||
		        ls->tls_ticket_lifetime_ms !=
		            CFG_TLS_TICKET_LIFETIME_MS ||
		        !ls->tls_prefer_server) &&
		    !ls->tls) {
			perr(st, ls->line,
			    "[listen %s]: TLS settings without 'tls = on'",
			    ls->name);
			break;
		}
		if (ls->trusted_text.n > 0 && !ls->accept_proxy) {
			perr(st, ls->line,
			    "[listen %s]: 'trusted-proxies' without "
			    "'accept-proxy = on'",
			    ls->name);
			break;
		}
	}
	if (!st->failed)
		check_binds(st);
}

static void
set_defaults(struct cfg *cfg)
{
	cfg->workers = 0;
	cfg->maxconn = 27500;
	cfg->sandbox = true;
	cfg->source_prefix4 = 32;
	cfg->source_prefix6 = 64;
	cfg->source_table_size = SRCLIMIT_DEFAULT_SIZE;
	cfg->drain_timeout_ms = 30 * 1000;
	cfg->log_level = LOG_INFO;
	cfg->timeouts.connect_ms = 5 * 1000;
	cfg->timeouts.client_ms = 200 * 1000;
	cfg->timeouts.server_ms = 200 * 1000;
	cfg->timeouts.client_fin_ms = 1000;
	cfg->timeouts.server_fin_ms = 1000;
	cfg->timeouts.handshake_ms = 10 * 1000;
}

struct cfg *
cfg_load_string(const char *text, const char *source, char *err, size_t errlen)
{
	struct parse_state st;
	struct cfg *cfg;
	int r;

	cfg = xcalloc(1, sizeof(*cfg));
	cfg->source = xstrdup(source);
	set_defaults(cfg);
	memset(&st, 0, sizeof(st));
	st.cfg = cfg;
	st.text = text;
	st.len = strlen(text);
	/*
	 * A UTF-8 byte-order mark (Windows editors) is skipped here: inih may
	 * or may not strip it (INI_ALLOW_BOM), and our reader must see line 1
	 * as written to notice a section header there.
	 */
	if (strncmp(text, "\xEF\xBB\xBF", 3) == 0)
		st.pos = 3;
	st.err = err;
	st.errlen = errlen;
	r = ini_parse_stream(reader, &st, handler, &st);
	if (!st.failed && r > 0)
		perr(&st, r,
		    "syntax error (expected 'key = value' or '[section]')");
	else if (!st.failed && r < 0)
		perr(&st, 0, "cannot parse (out of memory)");
	if (!st.failed)
		validate(&st);
	if (st.failed) {
		cfg_free(cfg);
		return NULL;
	}
	return cfg;
}

struct cfg *
cfg_load_file(const char *path, char *err, size_t errlen)
{
	struct cfg *cfg = NULL;
	struct stat sb;
	char *text = NULL;
	size_t n;
	FILE *f;

	f = fopen(path, "re");
	if (f == NULL) {
		snprintf(
		    err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
		snprintf(err, errlen, "%s: not a regular file", path);
		goto fail;
	}
	if (sb.st_size > CFG_MAX_FILE) {
		snprintf(err, errlen, "%s: file too large (at most %d bytes)",
		    path, CFG_MAX_FILE);
		goto fail;
	}
	text = xcalloc(1, (size_t)sb.st_size + 1);
	n = fread(text, 1, (size_t)sb.st_size, f);
	if (ferror(f)) {
		snprintf(
		    err, errlen, "%s: read error: %s", path, strerror(errno));
		goto fail;
	}
	text[n] = '\0';
	if (strlen(text) != n) {
		snprintf(err, errlen, "%s: NUL byte in file", path);
		goto fail;
	}
	cfg = cfg_load_string(text, path, err, errlen);
fail:
	free(text);
	fclose(f);
	return cfg;
}

/*
 * Writes preset p as INI text: a comment naming it, preset_common, then its
 * listeners from preset_listens.  Returns a new string (free it).
 */
static char *
preset_text(const struct preset *p)
{
	char *text = NULL;
	size_t len = 0, nlb = ARRAY_LEN(preset_lb_trusted);
	FILE *f = open_memstream(&text, &len);
	bool failed;

	if (f == NULL)
		fatal(1, "out of memory");
	fprintf(f, "# Built-in preset '%s': %s.\n", p->name, p->title);
	fprintf(f, preset_common, p->bit == PRESET_CAMOUFLAGE ? "60s" : "10s");
	if (p->bit == PRESET_CAMOUFLAGE)
		fputs(preset_camouflage, f);
	for (size_t i = 0; i < ARRAY_LEN(preset_listens); i++) {
		const struct preset_listen *l = &preset_listens[i];

		if ((l->presets & p->bit) == 0)
			continue;
		fprintf(f,
		    "[listen %s]\nbind = 0.0.0.0:%u\nbind = [::]:%u\n"
		    "upstream = %s\n",
		    l->name, l->port, l->port, l->upstream);
		if (l->tls)
			fputs("tls = on\n", f);
		if (l->presets == PRESET_CAMOUFLAGE) {
			fputs(preset_camouflage_listen, f);
			if (l->tls)
				fputs(preset_camouflage_tls, f);
		}
		if (l->lb) {
			fputs("accept-proxy = on\n", f);
			for (size_t j = 0; j < nlb; j++)
				fprintf(f, "trusted-proxies = %s\n",
				    preset_lb_trusted[j]);
		}
		fprintf(f, "maxconn = %d\n", PRESET_LISTEN_MAXCONN);
	}
	failed = ferror(f) != 0;
	if (fclose(f) != 0 || failed)
		fatal(1, "out of memory");
	return text;
}

struct cfg *
cfg_load_preset(const char *name, char *err, size_t errlen)
{
	char source[64], names[128] = "";
	struct cfg *cfg;
	char *text;
	size_t n = ARRAY_LEN(presets);

	for (size_t i = 0; i < n; i++) {
		if (strcmp(name, presets[i].name) != 0)
			continue;
		snprintf(source, sizeof(source), "<preset %s>", name);
		text = preset_text(&presets[i]);
		cfg = cfg_load_string(text, source, err, errlen);
		free(text);
		return cfg;
	}
	/* "a or b", "a, b or c" */
	for (size_t i = 0; i < n; i++) {
		size_t used = strlen(names);
		const char *sep = i + 1 < n ? ", " : " or ";

		snprintf(names + used, sizeof(names) - used, "%s%s",
		    i > 0 ? sep : "", presets[i].name);
	}
	snprintf(err, errlen, "unknown preset '%s' (use %s)", name, names);
	return NULL;
}

void
cfg_free(struct cfg *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < cfg->nupstreams; i++) {
		struct cfg_upstream *up = &cfg->upstreams[i];

		for (size_t j = 0; j < up->nservers; j++)
			free(up->servers[j].host);
		free(up->servers);
		free(up->name);
	}
	free(cfg->upstreams);
	for (size_t i = 0; i < cfg->nlistens; i++) {
		struct cfg_listen *ls = &cfg->listens[i];

		for (size_t j = 0; j < ls->nbinds; j++)
			free(ls->binds[j].text);
		free(ls->binds);
		free(ls->name);
		free(ls->cert);
		free(ls->key);
		strlist_free(&ls->tls_names);
		strlist_free(&ls->tls_ips);
		strlist_free(&ls->trusted_text);
		free(ls->trusted);
		free(ls->upstream_name);
		free(ls->decoy_name);
		free(ls->passthrough_name);
		free(ls->decoy_tls_name);
		strlist_free(&ls->passthrough_sni);
		strlist_free(&ls->tls_alpn);
		free(ls->tls_ciphers);
	}
	free(cfg->listens);
	for (size_t i = 0; i < cfg->nstats; i++)
		free(cfg->stats[i].text);
	free(cfg->stats);
	free(cfg->user);
	free(cfg->ports_file);
	free(cfg->public_host);
	free(cfg->source);
	free(cfg);
}

static bool
listen_reachable(const struct cfg_listen *ls)
{
	for (size_t i = 0; i < ls->nbinds; i++) {
		if (!addr_is_loopback(
		        (const struct sockaddr *)&ls->binds[i].ss))
			return true;
	}
	return false;
}

/* Appends ", BEFORE ITEM AFTER" to buf (len bytes, *n used) while it fits. */
static void
append_item(char *buf, size_t len, size_t *n, const char *before,
    const char *item, const char *after)
{
	int r = snprintf(buf + *n, len - *n, "%s%s%s%s", *n > 0 ? ", " : "",
	    before, item, after);

	if (r > 0 && (size_t)r < len - *n)
		*n += (size_t)r;
	else
		buf[*n] = '\0';
}

/*
 * A PROXY header names the client: whoever may send one chooses the
 * address lifeline forwards to the upstream (send-proxy).
 */
static void
warn_open_proxies(const struct cfg *cfg, cfg_warn_cb warn)
{
	char names[CFG_ERRLEN] = "", msg[CFG_ERRLEN + 256];
	size_t n = 0, count = 0;

	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct cfg_listen *ls = &cfg->listens[i];

		if (!ls->accept_proxy || ls->trusted_text.n > 0 ||
		    !listen_reachable(ls))
			continue;
		append_item(
		    names, sizeof(names), &n, "[listen ", ls->name, "]");
		count++;
	}
	if (count == 0)
		return;
	snprintf(msg, sizeof(msg),
	    "%s: accept-proxy on a non-loopback address without "
	    "trusted-proxies: anyone who can connect chooses the client "
	    "address forwarded upstream; set trusted-proxies to the load "
	    "balancer's addresses",
	    names);
	warn(msg);
}

/* The dashboard and metrics are for operators: loopback unless meant. */
static void
warn_public_stats(const struct cfg *cfg, cfg_warn_cb warn)
{
	char addrs[CFG_ERRLEN] = "", msg[CFG_ERRLEN + 256];
	size_t n = 0;

	if (cfg->stats_public)
		return;
	for (size_t i = 0; i < cfg->nstats; i++) {
		const struct cfg_bind *b = &cfg->stats[i];

		if (!addr_is_loopback((const struct sockaddr *)&b->ss))
			append_item(addrs, sizeof(addrs), &n, "", b->text, "");
	}
	if (n == 0)
		return;
	snprintf(msg, sizeof(msg),
	    "[stats] listen = %s is not a loopback address: the dashboard "
	    "and metrics are reachable from the network; set 'public = on' "
	    "in [stats] if that is meant",
	    addrs);
	warn(msg);
}

void
cfg_warnings(const struct cfg *cfg, cfg_warn_cb warn)
{
	warn_open_proxies(cfg, warn);
	warn_public_stats(cfg, warn);
}

static const char *
fmt_duration(uint64_t ms, char *buf, size_t len)
{
	if (ms == 0)
		snprintf(buf, len, "0s");
	else if (ms % (3600 * 1000) == 0)
		snprintf(buf, len, "%lluh", (unsigned long long)(ms / 3600000));
	else if (ms % (60 * 1000) == 0)
		snprintf(buf, len, "%llum", (unsigned long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(buf, len, "%llus", (unsigned long long)(ms / 1000));
	else
		snprintf(buf, len, "%llums", (unsigned long long)ms);
	return buf;
}

/* The per-source keys: [global] always, a listener's when it set them. */
static void
print_srclimit(FILE *out, const struct cfg_srclimit *sl, bool global)
{
	if (global || sl->has_conn) {
		if (sl->max_conn != 0)
			fprintf(
			    out, "max-conn-per-source = %u\n", sl->max_conn);
		else
			fprintf(out, "max-conn-per-source = off\n");
	}
	if (global || sl->has_rate) {
		if (sl->rate != 0)
			fprintf(out, "new-conn-rate-per-source = %u/%c\n",
			    sl->rate,
			    sl->period_ms == 1000        ? 's'
			        : sl->period_ms == 60000 ? 'm'
			                                 : 'h');
		else
			fprintf(out, "new-conn-rate-per-source = off\n");
	}
}

bool
cfg_any_listener_srclimit(const struct cfg *cfg)
{
	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct cfg_srclimit *sl = &cfg->listens[i].srclimit;

		if ((sl->has_conn && sl->max_conn != 0) ||
		    (sl->has_rate && sl->rate != 0))
			return true;
	}
	return false;
}

void
cfg_print(const struct cfg *cfg, FILE *out)
{
	char d[32];

	fprintf(out, "# effective configuration from %s\n", cfg->source);
	fprintf(out, "[global]\n");
	if (cfg->workers == 0)
		fprintf(out, "workers = auto\n");
	else
		fprintf(out, "workers = %u\n", cfg->workers);
	fprintf(out, "maxconn = %u\n", cfg->maxconn);
	if (cfg->user != NULL)
		fprintf(out, "user = %s\n", cfg->user);
	fprintf(out, "drain-timeout = %s\n",
	    fmt_duration(cfg->drain_timeout_ms, d, sizeof(d)));
	fprintf(out, "log-level = %s\n", log_level_str(cfg->log_level));
	if (cfg->ports_file != NULL)
		fprintf(out, "ports-file = %s\n", cfg->ports_file);
	if (cfg->public_host != NULL)
		fprintf(out, "public-host = %s\n", cfg->public_host);
	fprintf(out, "sandbox = %s\n", cfg->sandbox ? "on" : "off");
	print_srclimit(out, &cfg->srclimit, true);
	if (cfg->srclimit.max_conn != 0 || cfg->srclimit.rate != 0 ||
	    cfg_any_listener_srclimit(cfg)) {
		fprintf(out, "source-prefix-v4 = %u\n", cfg->source_prefix4);
		fprintf(out, "source-prefix-v6 = %u\n", cfg->source_prefix6);
		fprintf(
		    out, "source-table-size = %u\n", cfg->source_table_size);
	}
	if (cfg->socket_buffers == 0)
		fprintf(out, "socket-buffers = auto\n");
	else
		fprintf(out, "socket-buffers = %u\n", cfg->socket_buffers);

	fprintf(out, "\n[timeouts]\n");
	fprintf(out, "connect = %s\n",
	    fmt_duration(cfg->timeouts.connect_ms, d, sizeof(d)));
	fprintf(out, "client = %s\n",
	    fmt_duration(cfg->timeouts.client_ms, d, sizeof(d)));
	fprintf(out, "server = %s\n",
	    fmt_duration(cfg->timeouts.server_ms, d, sizeof(d)));
	fprintf(out, "client-fin = %s\n",
	    fmt_duration(cfg->timeouts.client_fin_ms, d, sizeof(d)));
	fprintf(out, "server-fin = %s\n",
	    fmt_duration(cfg->timeouts.server_fin_ms, d, sizeof(d)));
	fprintf(out, "handshake = %s\n",
	    fmt_duration(cfg->timeouts.handshake_ms, d, sizeof(d)));

	if (cfg->nstats > 0 || cfg->stats_public) {
		fprintf(out, "\n[stats]\n");
		for (size_t i = 0; i < cfg->nstats; i++)
			fprintf(out, "listen = %s\n", cfg->stats[i].text);
		fprintf(out, "public = %s\n", cfg->stats_public ? "on" : "off");
	}
	for (size_t i = 0; i < cfg->nupstreams; i++) {
		const struct cfg_upstream *up = &cfg->upstreams[i];

		fprintf(out, "\n[upstream %s]\n", up->name);
		for (size_t j = 0; j < up->nservers; j++) {
			const struct cfg_server *s = &up->servers[j];

			if (strchr(s->host, ':') != NULL)
				fprintf(out, "server = [%s]:%u\n", s->host,
				    s->port);
			else
				fprintf(
				    out, "server = %s:%u\n", s->host, s->port);
		}
		fprintf(out, "send-proxy = %s\n",
		    cfg_send_proxy_str(up->send_proxy));
		fprintf(out, "check-interval = %s\n",
		    fmt_duration(up->check_interval_ms, d, sizeof(d)));
	}
	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct cfg_listen *ls = &cfg->listens[i];

		fprintf(out, "\n[listen %s]\n", ls->name);
		for (size_t j = 0; j < ls->nbinds; j++)
			fprintf(out, "bind = %s\n", ls->binds[j].text);
		fprintf(out, "tls = %s\n", ls->tls ? "on" : "off");
		if (ls->cert != NULL)
			fprintf(
			    out, "cert = %s\nkey = %s\n", ls->cert, ls->key);
		if (ls->tls)
			fprintf(out, "tls-key-type = %s\n",
			    cfg_key_type_str(ls->key_type));
		for (size_t j = 0; j < ls->tls_names.n; j++)
			fprintf(out, "tls-names = %s\n", ls->tls_names.v[j]);
		for (size_t j = 0; j < ls->tls_ips.n; j++)
			fprintf(out, "tls-ips = %s\n", ls->tls_ips.v[j]);
		if (ls->tls) {
			for (size_t j = 0; j < ls->tls_alpn.n; j++)
				fprintf(
				    out, "tls-alpn = %s\n", ls->tls_alpn.v[j]);
			fprintf(out, "tls-tickets = %u\n", ls->tls_tickets);
			fprintf(out, "tls-ticket-lifetime = %s\n",
			    fmt_duration(
			        ls->tls_ticket_lifetime_ms, d, sizeof(d)));
			fprintf(out, "tls-ciphers = %s\n",
			    ls->tls_ciphers != NULL ? ls->tls_ciphers
			                            : CFG_TLS_CIPHERS);
			fprintf(out, "tls-prefer-server-ciphers = %s\n",
			    ls->tls_prefer_server ? "on" : "off");
		}
		fprintf(out, "accept-proxy = %s\n",
		    ls->accept_proxy ? "on" : "off");
		for (size_t j = 0; j < ls->trusted_text.n; j++)
			fprintf(out, "trusted-proxies = %s\n",
			    ls->trusted_text.v[j]);
		fprintf(out, "upstream = %s\n", ls->upstream_name);
		if (ls->decoy_name != NULL)
			fprintf(out, "decoy = %s\n", ls->decoy_name);
		if (ls->passthrough_name != NULL)
			fprintf(
			    out, "passthrough = %s\n", ls->passthrough_name);
		for (size_t j = 0; j < ls->passthrough_sni.n; j++)
			fprintf(out, "passthrough-sni = %s\n",
			    ls->passthrough_sni.v[j]);
		if (ls->decoy_tls_name != NULL)
			fprintf(out, "decoy-tls = %s\n", ls->decoy_tls_name);
		if (ls->maxconn != 0)
			fprintf(out, "maxconn = %u\n", ls->maxconn);
		if (ls->keepalive_ms == 0)
			fprintf(out, "client-keepalive = off\n");
		else
			fprintf(out, "client-keepalive = %s\n",
			    fmt_duration(ls->keepalive_ms, d, sizeof(d)));
		print_srclimit(out, &ls->srclimit, false);
	}
}
