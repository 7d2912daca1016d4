/*
 * doctor: `lifeline doctor [-c FILE | --preset NAME] [--outside HOST]`.
 *
 * The checks run in this order, each printing its lines at once:
 * config, fd limit, clock, exposure (stats, unusual public ports), the
 * running relay's stats listener (found or not), ports, certificates,
 * upstreams, the running relay (ready, listeners, counters), outside.
 * A configuration that does not load ends the run after its line.
 *
 * The work is done by the relay's own modules: config (loading,
 * warnings), tls (loading certificates exactly as the relay does, the
 * client handshake), upstream (resolving names as the relay does),
 * proxyproto (the LOCAL header the relay's health checks send), health
 * (HTTP to the stats listener) and addr (what is public).
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "config.h"
#include "doctor.h"
#include "health.h"
#include "log.h"
#include "loop.h"
#include "proxyproto.h"
#include "tls.h"
#include "upstream.h"
#include "util.h"

/* When the build was made (seconds since the epoch), 0 when unknown. */
#ifndef LIFELINE_BUILD_EPOCH
#define LIFELINE_BUILD_EPOCH 0
#endif

#define STATS_BUF (1024 * 1024)

enum level { LV_OK, LV_WARN, LV_FAIL };

struct doctor {
	struct cfg *cfg; /* owned */
	const char *outside; /* borrowed: argv */
	uint64_t deadline; /* loop_clock_ms: the end of the budget */
	unsigned count[3];
	/* The running relay, found through the config's stats listener. */
	bool daemon;
	struct sockaddr_storage stats_sa; /* where it answered */
	const struct cfg_bind *stats_bind; /* borrowed: that address */
	char *json; /* owned: its /stats.json, NULL when not found */
	char *buf; /* owned: STATS_BUF bytes for HTTP responses */
};

static const char *const level_word[] = {"ok", "warn", "fail"};

static void __attribute__((format(printf, 3, 4)))
say(struct doctor *d, enum level lv, const char *fmt, ...)
{
	va_list ap;

	d->count[lv]++;
	printf("%-4s  ", level_word[lv]);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* Milliseconds left of the budget, at most want (0 when spent). */
static uint64_t
left(const struct doctor *d, uint64_t want)
{
	uint64_t now = loop_clock_ms();

	if (now >= d->deadline)
		return 0;
	return d->deadline - now < want ? d->deadline - now : want;
}

static const char *
fmt_date(time_t t, char *buf, size_t len)
{
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL)
		snprintf(buf, len, "?");
	else
		strftime(buf, len, "%Y-%m-%d %H:%M UTC", &tm);
	return buf;
}

/* ------------------------------------------------------------------ */
/* config */

static struct doctor *warn_target;

/*
 * The configuration's own warnings, as warn lines.  The one on stats
 * addresses is left to check_exposure, which says more.
 */
static void
config_warn(const char *msg)
{
	if (strncmp(msg, "[stats]", 7) == 0)
		return;
	say(warn_target, LV_WARN, "config: %s", msg);
}

static int
check_config(struct doctor *d, const char *file, const char *preset)
{
	char err[CFG_ERRLEN];

	d->cfg = file != NULL ? cfg_load_file(file, err, sizeof(err))
	                      : cfg_load_preset(preset, err, sizeof(err));
	if (d->cfg == NULL) {
		say(d, LV_FAIL,
		    "config: %s; fix it (lifeline --check -c FILE says the "
		    "same); the other checks need a configuration that loads",
		    err);
		return -1;
	}
	say(d, LV_OK, "config: %s loads: %zu listener%s, %zu upstream group%s",
	    d->cfg->source, d->cfg->nlistens, d->cfg->nlistens == 1 ? "" : "s",
	    d->cfg->nupstreams, d->cfg->nupstreams == 1 ? "" : "s");
	warn_target = d;
	cfg_warnings(d->cfg, config_warn);
	return 0;
}

/* ------------------------------------------------------------------ */
/* fd limit */

unsigned long
doctor_fds_needed(unsigned maxconn, unsigned workers, size_t nbinds)
{
	return 2UL * maxconn + (unsigned long)workers * (nbinds + 8) + 300;
}

static unsigned
workers_of(const struct cfg *cfg)
{
	long n = cfg->workers;

	if (n == 0)
		n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	return n > CFG_MAX_WORKERS ? CFG_MAX_WORKERS : (unsigned)n;
}

/* The cap on connections: the global maxconn, or all listeners' caps. */
static unsigned
maxconn_of(const struct cfg *cfg)
{
	unsigned long sum = 0;

	for (size_t i = 0; i < cfg->nlistens; i++) {
		if (cfg->listens[i].maxconn == 0)
			return cfg->maxconn;
		sum += cfg->listens[i].maxconn;
	}
	return sum != 0 && sum < cfg->maxconn ? (unsigned)sum : cfg->maxconn;
}

static void
check_fds(struct doctor *d)
{
	struct rlimit rl;
	size_t nbinds = d->cfg->nstats;
	unsigned maxconn = maxconn_of(d->cfg);
	unsigned long need, soft, hard;

	for (size_t i = 0; i < d->cfg->nlistens; i++)
		nbinds += d->cfg->listens[i].nbinds;
	need = doctor_fds_needed(maxconn, workers_of(d->cfg), nbinds);
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
		say(d, LV_FAIL, "fd limit: getrlimit: %s", strerror(errno));
		return;
	}
	soft = rl.rlim_cur == RLIM_INFINITY ? ~0UL : (unsigned long)rl.rlim_cur;
	hard = rl.rlim_max == RLIM_INFINITY ? ~0UL : (unsigned long)rl.rlim_max;
	if (soft >= need)
		say(d, LV_OK,
		    "fd limit: %lu open files allowed, maxconn %u needs about "
		    "%lu (2 per connection, plus listening sockets and pipes)",
		    soft, maxconn, need);
	else if (hard >= need)
		say(d, LV_WARN,
		    "fd limit: this shell allows %lu open files (hard limit "
		    "%lu), maxconn %u needs about %lu: a relay started from "
		    "here runs short and pauses accepting; run `ulimit -n %lu` "
		    "first (the systemd unit sets LimitNOFILE=65536)",
		    soft, hard, maxconn, need, need);
	else
		say(d, LV_FAIL,
		    "fd limit: at most %lu open files (hard limit), maxconn "
		    "%u needs about %lu: raise it (LimitNOFILE= in the unit, "
		    "nofile in /etc/security/limits.conf, --ulimit nofile= "
		    "for a container) or lower maxconn to %lu",
		    hard, maxconn, need,
		    hard > need - 2UL * maxconn
		        ? (hard - (need - 2UL * maxconn)) / 2
		        : 0);
}

/* ------------------------------------------------------------------ */
/* clock */

static time_t
build_epoch(void)
{
#ifdef LIFELINE_TEST_HOOKS
	/* Tests cannot set the clock back; they move the build instead. */
	const char *e = getenv("LIFELINE_TEST_BUILD_EPOCH");

	if (e != NULL)
		return (time_t)strtoll(e, NULL, 10);
#endif
	return (time_t)LIFELINE_BUILD_EPOCH;
}

static void
check_clock(struct doctor *d)
{
	time_t now = time(NULL), built = build_epoch();
	char a[32], b[32];

	if (built == 0) {
		say(d, LV_WARN,
		    "clock: %s; this binary carries no build date to compare "
		    "with (built without SOURCE_DATE_EPOCH or git)",
		    fmt_date(now, a, sizeof(a)));
		return;
	}
	if (now < built)
		say(d, LV_FAIL,
		    "clock: the system clock says %s, before this build was "
		    "made (%s): set the clock (timedatectl set-ntp true); TLS "
		    "certificates and timeouts depend on it",
		    fmt_date(now, a, sizeof(a)), fmt_date(built, b, sizeof(b)));
	else
		say(d, LV_OK, "clock: %s, after the build date (%s)",
		    fmt_date(now, a, sizeof(a)), fmt_date(built, b, sizeof(b)));
}

/* ------------------------------------------------------------------ */
/* exposure */

static void
check_stats_exposure(struct doctor *d)
{
	const struct cfg *cfg = d->cfg;

	for (size_t i = 0; i < cfg->nstats; i++) {
		const struct cfg_bind *b = &cfg->stats[i];
		enum addr_scope s = addr_scope((const struct sockaddr *)&b->ss);

		if (s == ADDR_SCOPE_LOOPBACK)
			say(d, LV_OK,
			    "stats: listen = %s is reachable from this host "
			    "only",
			    b->text);
		else if (cfg->stats_public)
			say(d, LV_OK,
			    "stats: listen = %s is reachable from the network "
			    "(%s address), as 'public = on' says is meant",
			    b->text, addr_scope_str(s));
		else
			say(d, s == ADDR_SCOPE_PUBLIC ? LV_FAIL : LV_WARN,
			    "stats: listen = %s is a %s address%s without "
			    "'public = on': the dashboard and metrics are open "
			    "to %s, and they tell a prober what this host is; "
			    "bind 127.0.0.1, or set 'public = on' in [stats] "
			    "if it is meant",
			    b->text, addr_scope_str(s),
			    s == ADDR_SCOPE_PUBLIC ? " (a wildcard counts)"
			                           : "",
			    s == ADDR_SCOPE_PUBLIC ? "anyone" : "that network");
	}
}

static bool
usual_port(uint16_t port)
{
	return port == 443 || port == 80 || port == 587;
}

static void
check_port_set(struct doctor *d)
{
	char list[CFG_ERRLEN] = "";
	size_t n = 0, npublic = 0;

	for (size_t i = 0; i < d->cfg->nlistens; i++) {
		const struct cfg_listen *cl = &d->cfg->listens[i];

		for (size_t j = 0; j < cl->nbinds; j++) {
			const struct sockaddr *sa =
			    (const struct sockaddr *)&cl->binds[j].ss;
			uint16_t port = addr_port(sa);

			if (addr_scope(sa) != ADDR_SCOPE_PUBLIC || port == 0)
				continue;
			npublic++;
			/* One mention per listener and port (v4 and v6). */
			if (usual_port(port) || n >= sizeof(list) ||
			    (j > 0 &&
			        addr_port(
			            (const struct sockaddr *)&cl->binds[j - 1]
			                .ss) == port))
				continue;
			n += (size_t)snprintf(list + n, sizeof(list) - n,
			    "%s%u (%s)", n ? ", " : "", port, cl->name);
		}
	}
	if (n > 0)
		say(d, LV_WARN,
		    "exposure: port%s %s on a public address: ports other than "
		    "443, "
		    "80 and 587 make an unusual set that a censor's scan can "
		    "tell apart from a web or mail server; serve 443 and 587 "
		    "only (--preset minimal) unless clients need the others",
		    strchr(list, ',') != NULL ? "s" : "", list);
	else if (npublic > 0)
		say(d, LV_OK,
		    "exposure: public listeners use only 443, 80 and 587, "
		    "the ports of an ordinary web or mail server");
	else
		say(d, LV_OK, "exposure: no listener binds a public address");
}

/* ------------------------------------------------------------------ */
/* the running relay */

/* A wildcard address as the loopback address of its family. */
static void
dialable(const struct sockaddr_storage *in, struct sockaddr_storage *out)
{
	*out = *in;
	if (out->ss_family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)out;

		if (s->sin_addr.s_addr == htonl(INADDR_ANY))
			s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else if (out->ss_family == AF_INET6) {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)out;

		if (IN6_IS_ADDR_UNSPECIFIED(&s->sin6_addr))
			s->sin6_addr = in6addr_loopback;
	}
}

/* GETs path from the running relay; the body, or NULL. */
static const char *
stats_get(struct doctor *d, const struct sockaddr_storage *sa, const char *path,
    int *code, enum health_probe *res)
{
	const char *body = NULL;
	int err = 0;

	*res = health_fetch((const struct sockaddr *)sa, path,
	    left(d, DOCTOR_HTTP_MS), d->buf, STATS_BUF, code, &body, &err);
	return body;
}

/* Looks for a relay answering on the config's stats addresses. */
static void
find_daemon(struct doctor *d)
{
	bool any = false;

	for (size_t i = 0; i < d->cfg->nstats && !d->daemon; i++) {
		const struct cfg_bind *b = &d->cfg->stats[i];
		enum health_probe r;
		const char *body;
		int code;

		if (addr_port((const struct sockaddr *)&b->ss) == 0)
			continue;
		any = true;
		dialable(&b->ss, &d->stats_sa);
		body = stats_get(d, &d->stats_sa, "/stats.json", &code, &r);
		if (r == HEALTH_PROBE_READY && body != NULL &&
		    strstr(body, "\"listeners\":[") != NULL) {
			d->daemon = true;
			d->stats_bind = b;
			d->json = xstrdup(body);
			say(d, LV_OK,
			    "relay: a lifeline answers on its stats listener "
			    "%s: it is running, and checked below",
			    b->text);
		}
	}
	if (!d->daemon)
		say(d, LV_OK,
		    "relay: %s: the checks of a running relay are skipped",
		    any ? "no lifeline answers on the stats listener, so none "
		          "runs with this configuration"
		        : "the stats listener's port is 0 (chosen at start), "
		          "so a running relay cannot be found");
}

/*
 * b's address as the relay prints a bound one (addr_format): the text
 * written in the file may differ ("*:443" for "0.0.0.0:443").
 */
static void
bind_text(const struct cfg_bind *b, char *buf, size_t len)
{
	addr_format((const struct sockaddr *)&b->ss, buf, len);
}

/* True when the running relay lists b among its listening addresses. */
static bool
daemon_serves(const struct doctor *d, const struct cfg_bind *b)
{
	char text[ADDR_STRLEN], quoted[ADDR_STRLEN + 2];

	if (!d->daemon)
		return false;
	bind_text(b, text, sizeof(text));
	snprintf(quoted, sizeof(quoted), "\"%s\"", text);
	return strstr(d->json, quoted) != NULL;
}

/* ------------------------------------------------------------------ */
/* ports */

/* True when a socket of this host listens on port (/proc/net/tcp*). */
static bool
port_listened(uint16_t port)
{
	static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
	char line[512];

	for (size_t i = 0; i < ARRAY_LEN(files); i++) {
		FILE *f = fopen(files[i], "r");

		if (f == NULL)
			continue;
		while (fgets(line, sizeof(line), f) != NULL) {
			char local[128], remote[128], st[8];
			unsigned p;
			char *colon;

			if (sscanf(line, "%*s %127s %127s %7s", local, remote,
			        st) != 3 ||
			    strcmp(st, "0A") != 0 ||
			    (colon = strrchr(local, ':')) == NULL)
				continue;
			if (sscanf(colon + 1, "%x", &p) == 1 && p == port) {
				fclose(f);
				return true;
			}
		}
		fclose(f);
	}
	return false;
}

/* Binds (and closes) a socket on ss as the relay would: 0 or an errno. */
static int
try_bind(const struct sockaddr_storage *ss)
{
	int fd, on = 1, err = 0;

	fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return errno;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	if (ss->ss_family == AF_INET6)
		(void)setsockopt(
		    fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
	if (bind(fd, (const struct sockaddr *)ss,
	        addr_len((const struct sockaddr *)ss)) != 0)
		err = errno;
	close(fd);
	/* Unprivileged: the port below 1024 cannot be tried; look. */
	if (err == EACCES)
		err = port_listened(addr_port((const struct sockaddr *)ss))
		    ? EADDRINUSE
		    : EACCES;
	return err;
}

static void
check_bind(
    struct doctor *d, const char *what, const struct cfg_bind *b, bool is_stats)
{
	uint16_t port = addr_port((const struct sockaddr *)&b->ss);
	int err;

	if (port == 0) {
		say(d, LV_OK, "port: %s binds %s: a port chosen at start", what,
		    b->text);
		return;
	}
	err = try_bind(&b->ss);
	if (err == 0)
		say(d, LV_OK, "port: %u (%s, %s) is free", port, what, b->text);
	else if (err == EACCES)
		say(d, LV_OK,
		    "port: %u (%s, %s) is free; binding it needs root or "
		    "CAP_NET_BIND_SERVICE, which the systemd unit grants",
		    port, what, b->text);
	else if (err == EADDRINUSE &&
	    (is_stats ? d->stats_bind == b : daemon_serves(d, b)))
		say(d, LV_OK,
		    "port: %u (%s, %s) is held by the running lifeline", port,
		    what, b->text);
	else if (err == EADDRINUSE)
		say(d, LV_FAIL,
		    "port: %u (%s, %s) is in use by another program%s: stop "
		    "it, or bind another port",
		    port, what, b->text,
		    d->daemon ? ""
		              : " (or by a relay whose stats listener is not "
		                "this configuration's)");
	else if (err == EADDRNOTAVAIL)
		say(d, LV_FAIL,
		    "port: %s (%s): the address is not one of this host's: "
		    "fix the bind, or use the wildcard",
		    b->text, what);
	else
		say(d, LV_FAIL, "port: %u (%s, %s): cannot bind: %s", port,
		    what, b->text, strerror(err));
}

static void
check_ports(struct doctor *d)
{
	char what[CFG_MAX_NAME + 16];

	for (size_t i = 0; i < d->cfg->nlistens; i++) {
		const struct cfg_listen *cl = &d->cfg->listens[i];

		snprintf(what, sizeof(what), "listen %s", cl->name);
		for (size_t j = 0; j < cl->nbinds; j++)
			check_bind(d, what, &cl->binds[j], false);
	}
	for (size_t i = 0; i < d->cfg->nstats; i++)
		check_bind(d, "stats", &d->cfg->stats[i], true);
}

/* ------------------------------------------------------------------ */
/* certificates */

static void
cert_dates(struct doctor *d, const struct cfg_listen *cl,
    const struct tls_cert_info *ci)
{
	time_t now = time(NULL);
	long days = (long)((ci->not_after - now) / 86400);
	char a[32], b[32];
	const char *names = ci->names[0] != '\0' ? ci->names : ci->subject;

	if (now < ci->not_before)
		say(d, LV_FAIL,
		    "certificate (listen %s): %s is valid from %s only, and "
		    "the clock says %s: the clock is behind (check it), or "
		    "the certificate is not valid yet",
		    cl->name, cl->cert, fmt_date(ci->not_before, a, sizeof(a)),
		    fmt_date(now, b, sizeof(b)));
	else if (now > ci->not_after)
		say(d, LV_FAIL,
		    "certificate (listen %s): %s expired on %s: renew it, "
		    "then reload (systemctl reload lifeline)",
		    cl->name, cl->cert, fmt_date(ci->not_after, a, sizeof(a)));
	else
		say(d, days < DOCTOR_CERT_WARN_DAYS ? LV_WARN : LV_OK,
		    "certificate (listen %s): %s loads, its key matches, "
		    "valid until %s (%ld day%s%s); names: %s",
		    cl->name, cl->cert, fmt_date(ci->not_after, a, sizeof(a)),
		    days, days == 1 ? "" : "s",
		    days < DOCTOR_CERT_WARN_DAYS
		        ? ": renew it soon, then reload"
		        : "",
		    names);
}

static void
check_cert(struct doctor *d, const struct cfg_listen *cl)
{
	struct tls_cert_info ci;
	char err[CFG_ERRLEN];
	struct tls_ctx *t = tls_ctx_new(cl, err, sizeof(err));

	if (t == NULL) {
		say(d, LV_FAIL,
		    "certificate (listen %s): %s; fix the cert and key "
		    "files (PEM; the key must be the certificate's)",
		    cl->name, err);
		return;
	}
	if (tls_ctx_cert_info(t, &ci) != 0)
		say(d, LV_FAIL, "certificate (listen %s): none loaded",
		    cl->name);
	else if (cl->cert == NULL)
		say(d, LV_OK,
		    "certificate (listen %s): generated in memory at each "
		    "start (no cert file); names: %s",
		    cl->name, ci.names[0] != '\0' ? ci.names : "(random)");
	else
		cert_dates(d, cl, &ci);
	tls_ctx_unref(t);
}

static void
check_certs(struct doctor *d)
{
	for (size_t i = 0; i < d->cfg->nlistens; i++) {
		if (d->cfg->listens[i].tls)
			check_cert(d, &d->cfg->listens[i]);
	}
}

/* ------------------------------------------------------------------ */
/* resolving, bounded */

/*
 * Names resolve on threads of their own, through the relay's own
 * upstream_server_resolve(); getaddrinfo() has no timeout, so the run
 * waits for them at most until a deadline and leaves the stragglers
 * behind.  The last holder (a thread, or the waiter) frees the job.
 */
struct resolve_job {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned refs; /* the waiter and each thread still running */
	struct upstream_server **srv; /* owned array of references */
	int *state; /* owned: 0 pending, 1 resolved, -1 failed */
	size_t n, ndone;
};

struct resolve_arg {
	struct resolve_job *job; /* reference */
	size_t i;
};

static void
job_unref(struct resolve_job *job)
{
	bool last;

	pthread_mutex_lock(&job->lock);
	last = --job->refs == 0;
	pthread_mutex_unlock(&job->lock);
	if (!last)
		return;
	for (size_t i = 0; i < job->n; i++)
		upstream_server_unref(job->srv[i]);
	free(job->srv);
	free(job->state);
	pthread_cond_destroy(&job->cond);
	pthread_mutex_destroy(&job->lock);
	free(job);
}

static void *
resolve_main(void *p)
{
	struct resolve_arg *a = p;
	struct resolve_job *job = a->job;
	int r = upstream_server_resolve(job->srv[a->i]);

	pthread_mutex_lock(&job->lock);
	job->state[a->i] = r == 0 ? 1 : -1;
	job->ndone++;
	pthread_cond_signal(&job->cond);
	pthread_mutex_unlock(&job->lock);
	free(a);
	job_unref(job);
	return NULL;
}

static void
job_start(struct resolve_job *job, size_t i)
{
	struct resolve_arg *a = xcalloc(1, sizeof(*a));
	pthread_attr_t attr;
	pthread_t t;

	a->job = job;
	a->i = i;
	pthread_mutex_lock(&job->lock);
	job->refs++;
	pthread_mutex_unlock(&job->lock);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, resolve_main, a) != 0) {
		/* No thread: resolved here, unbounded but rare. */
		resolve_main(a);
	}
	pthread_attr_destroy(&attr);
}

/*
 * Resolves servers (borrowed; the job takes references) within
 * timeout_ms; state[i] gets 1 resolved, -1 failed, 0 still pending.
 */
static void
resolve_bounded(
    struct upstream_server **srv, size_t n, uint64_t timeout_ms, int *state)
{
	struct resolve_job *job = xcalloc(1, sizeof(*job));
	pthread_condattr_t ca;
	struct timespec ts;

	pthread_mutex_init(&job->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&job->cond, &ca);
	pthread_condattr_destroy(&ca);
	job->refs = 1;
	job->n = n;
	job->srv = xcalloc(n, sizeof(*job->srv));
	job->state = xcalloc(n, sizeof(*job->state));
	for (size_t i = 0; i < n; i++) {
		upstream_server_ref(srv[i]);
		job->srv[i] = srv[i];
	}
	for (size_t i = 0; i < n; i++)
		job_start(job, i);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(timeout_ms / 1000);
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&job->lock);
	while (job->ndone < n &&
	    pthread_cond_timedwait(&job->cond, &job->lock, &ts) == 0)
		;
	memcpy(state, job->state, n * sizeof(*state));
	pthread_mutex_unlock(&job->lock);
	job_unref(job);
}

/* ------------------------------------------------------------------ */
/* upstreams */

enum up_result {
	UP_PENDING,
	UP_ACCEPTED,
	UP_REFUSED,
	UP_TIMEOUT,
	UP_CLOSED, /* closed (FIN) right after our PROXY header */
	UP_RESET, /* reset right after our PROXY header */
	UP_ERROR,
};

/* One connection attempt to one address of one server. */
struct attempt {
	struct upstream_server *srv; /* borrowed from its group */
	const struct cfg_upstream *cu; /* borrowed */
	struct sockaddr_storage ss;
	int fd;
	bool watching; /* connected, header sent: watching for a close */
	uint64_t start, until; /* loop ms: start, end of this phase */
	uint64_t took_ms;
	enum up_result res;
	int err;
};

static void
attempt_end(struct attempt *a, enum up_result r, int err)
{
	if (a->fd >= 0)
		close(a->fd);
	a->fd = -1;
	a->res = r;
	a->err = err;
}

static void
attempt_open(struct attempt *a, uint64_t timeout_ms)
{
	a->start = loop_clock_ms();
	a->until = a->start + timeout_ms;
	a->fd = socket(
	    a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (a->fd < 0) {
		attempt_end(a, UP_ERROR, errno);
		return;
	}
	if (connect(a->fd, (struct sockaddr *)&a->ss,
	        addr_len((struct sockaddr *)&a->ss)) != 0 &&
	    errno != EINPROGRESS)
		attempt_end(
		    a, errno == ECONNREFUSED ? UP_REFUSED : UP_ERROR, errno);
}

/* Connected: with send-proxy, the header goes out and we watch. */
static void
attempt_connected(struct attempt *a)
{
	uint8_t hdr[PP_BUILD_MAX];
	enum pp_version v =
	    a->cu->send_proxy == CFG_SEND_PROXY_V1 ? PP_V1 : PP_V2;
	ssize_t n;
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(a->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		err = errno;
	if (err != 0) {
		attempt_end(
		    a, err == ECONNREFUSED ? UP_REFUSED : UP_ERROR, err);
		return;
	}
	a->took_ms = loop_clock_ms() - a->start;
	if (a->cu->send_proxy == CFG_SEND_PROXY_NONE) {
		attempt_end(a, UP_ACCEPTED, 0);
		return;
	}
	/* v2: LOCAL, as the relay's health checks send; v1: UNKNOWN. */
	n = pp_build(v, NULL, NULL, v == PP_V2, hdr, sizeof(hdr));
	if (n <= 0 || send(a->fd, hdr, (size_t)n, MSG_NOSIGNAL) != n) {
		attempt_end(a, UP_RESET, errno);
		return;
	}
	a->watching = true;
	a->until = loop_clock_ms() + DOCTOR_PP_WATCH_MS;
}

/* Readable while watching: bytes are an answer; EOF or RST a refusal. */
static void
attempt_watch(struct attempt *a)
{
	char buf[256];
	ssize_t n = recv(a->fd, buf, sizeof(buf), MSG_DONTWAIT);

	if (n > 0)
		attempt_end(a, UP_ACCEPTED, 0);
	else if (n == 0)
		attempt_end(a, UP_CLOSED, 0);
	else if (errno != EAGAIN && errno != EINTR)
		attempt_end(a, UP_RESET, errno);
}

static void
attempt_event(struct attempt *a, short revents)
{
	if (!a->watching)
		attempt_connected(a);
	else if (revents & (POLLIN | POLLHUP | POLLERR))
		attempt_watch(a);
}

static void
attempt_deadline(struct attempt *a, uint64_t now)
{
	if (a->fd < 0 || now < a->until)
		return;
	/* Quiet for the whole watch: the header was taken. */
	attempt_end(a, a->watching ? UP_ACCEPTED : UP_TIMEOUT,
	    a->watching ? 0 : ETIMEDOUT);
}

/* Runs every attempt at once until each has a result or end passes. */
static void
attempts_run(struct attempt *v, size_t n, uint64_t end)
{
	struct pollfd *pfd = xcalloc(n ? n : 1, sizeof(*pfd));

	for (;;) {
		uint64_t now = loop_clock_ms(), next = end;
		size_t m = 0;

		for (size_t i = 0; i < n; i++) {
			attempt_deadline(&v[i], now >= end ? UINT64_MAX : now);
			if (v[i].fd < 0)
				continue;
			pfd[m].fd = v[i].fd;
			pfd[m].events = v[i].watching ? POLLIN : POLLOUT;
			pfd[m].revents = 0;
			m++;
			if (v[i].until < next)
				next = v[i].until;
		}
		if (m == 0)
			break;
		if (poll(pfd, m, next > now ? (int)(next - now) : 0) < 0 &&
		    errno != EINTR)
			break;
		for (size_t i = 0, k = 0; i < n && k < m; i++) {
			if (v[i].fd != pfd[k].fd)
				continue;
			if (pfd[k].revents != 0)
				attempt_event(&v[i], pfd[k].revents);
			k++;
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (v[i].fd >= 0)
			attempt_end(&v[i], UP_TIMEOUT, ETIMEDOUT);
	}
	free(pfd);
}

/* What one server's attempts came to, in one line. */
static void
report_server(struct doctor *d, const struct cfg_upstream *cu,
    struct upstream_server *s, const struct attempt *v, size_t n,
    uint64_t connect_ms)
{
	const struct attempt *ok = NULL, *bad = NULL;
	size_t tried = 0;
	char addr[ADDR_STRLEN];
	const char *pp =
	    cu->send_proxy == CFG_SEND_PROXY_V1 ? "v1 UNKNOWN" : "v2 LOCAL";

	for (size_t i = 0; i < n; i++) {
		if (v[i].srv != s || v[i].cu != cu)
			continue;
		tried++;
		if (v[i].res == UP_ACCEPTED && ok == NULL)
			ok = &v[i];
		else if (v[i].res != UP_ACCEPTED && bad == NULL)
			bad = &v[i];
	}
	if (ok != NULL) {
		addr_format(
		    (const struct sockaddr *)&ok->ss, addr, sizeof(addr));
		say(d, LV_OK,
		    "upstream %s: %s accepted a TCP connection (%s, %llu "
		    "ms)%s%s%s",
		    cu->name, s->label, addr, (unsigned long long)ok->took_ms,
		    cu->send_proxy != CFG_SEND_PROXY_NONE ? " and a PROXY "
		                                          : "",
		    cu->send_proxy != CFG_SEND_PROXY_NONE ? pp : "",
		    bad != NULL ? "; another of its addresses did not answer"
		                : "");
		return;
	}
	if (bad == NULL)
		return;
	addr_format((const struct sockaddr *)&bad->ss, addr, sizeof(addr));
	switch (bad->res) {
	case UP_REFUSED:
		say(d, LV_FAIL,
		    "upstream %s: %s refused the connection (%s%s): is the "
		    "server running, and is the port right?",
		    cu->name, s->label, addr,
		    tried > 1 ? ", and every other address" : "");
		break;
	case UP_TIMEOUT:
		say(d, LV_FAIL,
		    "upstream %s: %s did not answer within %llu ms (%s; the "
		    "connect timeout): a firewall drops the packets, or the "
		    "host is down",
		    cu->name, s->label, (unsigned long long)connect_ms, addr);
		break;
	case UP_CLOSED:
	case UP_RESET:
		say(d, LV_FAIL,
		    "upstream %s: %s took the connection but %s it within "
		    "%d ms of our PROXY %s header (%s): the server does not "
		    "expect one (set send-proxy = none), or refuses ours",
		    cu->name, s->label,
		    bad->res == UP_CLOSED ? "closed" : "reset",
		    DOCTOR_PP_WATCH_MS, pp, addr);
		break;
	default:
		say(d, LV_FAIL, "upstream %s: %s: cannot connect (%s): %s",
		    cu->name, s->label, addr, strerror(bad->err));
	}
}

/* Every server of every group, flattened: servers[k], groups[k]. */
struct server_list {
	struct upstream **ups; /* owned array of owned groups */
	struct upstream_server **srv; /* borrowed from ups */
	const struct cfg_upstream **cu; /* borrowed */
	size_t n;
};

static void
servers_build(const struct cfg *cfg, struct server_list *sl)
{
	size_t total = 0, k = 0;

	for (size_t g = 0; g < cfg->nupstreams; g++)
		total += cfg->upstreams[g].nservers;
	sl->ups = xcalloc(cfg->nupstreams + 1, sizeof(*sl->ups));
	sl->srv = xcalloc(total + 1, sizeof(*sl->srv));
	sl->cu = xcalloc(total + 1, sizeof(*sl->cu));
	for (size_t g = 0; g < cfg->nupstreams; g++) {
		sl->ups[g] = upstream_new(&cfg->upstreams[g], sl->ups, g);
		for (size_t i = 0; i < sl->ups[g]->nservers; i++) {
			sl->srv[k] = sl->ups[g]->servers[i];
			sl->cu[k++] = &cfg->upstreams[g];
		}
	}
	sl->n = k;
}

static void
servers_free(const struct cfg *cfg, struct server_list *sl)
{
	for (size_t g = 0; g < cfg->nupstreams; g++)
		upstream_free(sl->ups[g]);
	free(sl->ups);
	free(sl->srv);
	free(sl->cu);
}

/* One attempt per resolved address of each server that resolved. */
static size_t
attempts_make(struct doctor *d, const struct server_list *sl, const int *state,
    uint64_t connect_ms, struct attempt **out)
{
	struct attempt *v = xcalloc(sl->n * UPSTREAM_MAX_ADDRS + 1, sizeof(*v));
	size_t n = 0;

	for (size_t k = 0; k < sl->n; k++) {
		if (state[k] != 1) {
			say(d, LV_FAIL,
			    "upstream %s: %s %s: check the name and this "
			    "host's DNS (/etc/resolv.conf)",
			    sl->cu[k]->name, sl->srv[k]->label,
			    state[k] == 0 ? "did not resolve within 5 s"
			                  : "does not resolve");
			continue;
		}
		for (unsigned a = 0; a < UPSTREAM_MAX_ADDRS; a++) {
			struct attempt *at = &v[n];

			if (!upstream_server_addr(sl->srv[k], a, &at->ss))
				break;
			at->srv = sl->srv[k];
			at->cu = sl->cu[k];
			at->fd = -1;
			attempt_open(at, connect_ms);
			n++;
		}
	}
	*out = v;
	return n;
}

static void
check_upstreams(struct doctor *d)
{
	struct server_list sl;
	struct attempt *v = NULL;
	uint64_t connect_ms = d->cfg->timeouts.connect_ms;
	int *state;
	size_t n;

	if (connect_ms > DOCTOR_CONNECT_MAX_MS)
		connect_ms = DOCTOR_CONNECT_MAX_MS;
	connect_ms = left(d, connect_ms);
	servers_build(d->cfg, &sl);
	state = xcalloc(sl.n + 1, sizeof(*state));
	resolve_bounded(sl.srv, sl.n, left(d, DOCTOR_RESOLVE_MS), state);
	n = attempts_make(d, &sl, state, connect_ms, &v);
	attempts_run(
	    v, n, loop_clock_ms() + left(d, connect_ms + DOCTOR_PP_WATCH_MS));
	for (size_t k = 0; k < sl.n; k++) {
		if (state[k] == 1)
			report_server(d, sl.cu[k], sl.srv[k], v, n, connect_ms);
	}
	free(v);
	free(state);
	servers_free(d->cfg, &sl);
}

/* ------------------------------------------------------------------ */
/* the running relay: ready, listeners, counters */

static void
check_ready(struct doctor *d)
{
	enum health_probe r;
	int code = 0;

	(void)stats_get(d, &d->stats_sa, "/readyz", &code, &r);
	if (r == HEALTH_PROBE_READY)
		say(d, LV_OK,
		    "relay: ready (/readyz: every upstream group has a server "
		    "up)");
	else if (r == HEALTH_PROBE_NOT_READY)
		say(d, LV_FAIL,
		    "relay: not ready (/readyz answered %d): an upstream group "
		    "has no server up; see the upstream lines, and the "
		    "relay's log",
		    code);
	else
		say(d, LV_FAIL, "relay: /readyz: %s", health_probe_str(r));
}

/* The listener object of /stats.json named name, or NULL. */
static const char *
json_listener(const char *json, const char *name)
{
	char key[CFG_MAX_NAME + 16];
	const char *start = strstr(json, "\"listeners\":["), *end;

	if (start == NULL)
		return NULL;
	end = strstr(start, "\"upstreams\":[");
	snprintf(key, sizeof(key), "{\"name\":\"%s\",", name);
	start = strstr(start, key);
	return start != NULL && (end == NULL || start < end) ? start : NULL;
}

/* True when the object at obj lists addr among its addresses. */
static bool
json_has_address(const char *obj, const char *addr)
{
	char quoted[ADDR_STRLEN + 2];
	const char *list = strstr(obj, "\"addresses\":["), *end;
	const char *hit;

	if (list == NULL || (end = strchr(list, ']')) == NULL)
		return false;
	snprintf(quoted, sizeof(quoted), "\"%s\"", addr);
	hit = strstr(list, quoted);
	return hit != NULL && hit < end;
}

/* Listeners the running relay serves: how many named objects. */
static size_t
json_count_listeners(const char *json)
{
	const char *p = strstr(json, "\"listeners\":["), *end;
	size_t n = 0;

	if (p == NULL)
		return 0;
	end = strstr(p, "\"upstreams\":[");
	while ((p = strstr(p + 1, "{\"name\":\"")) != NULL &&
	    (end == NULL || p < end))
		n++;
	return n;
}

static void
check_served(struct doctor *d)
{
	char diff[CFG_ERRLEN] = "";
	size_t n = 0, served = json_count_listeners(d->json);

	for (size_t i = 0; i < d->cfg->nlistens && n < sizeof(diff); i++) {
		const struct cfg_listen *cl = &d->cfg->listens[i];
		const char *obj = json_listener(d->json, cl->name);

		if (obj == NULL) {
			n += (size_t)snprintf(diff + n, sizeof(diff) - n,
			    "%slisten %s is not served", n ? "; " : "",
			    cl->name);
			continue;
		}
		for (size_t j = 0; j < cl->nbinds && n < sizeof(diff); j++) {
			const struct cfg_bind *b = &cl->binds[j];
			char text[ADDR_STRLEN];

			bind_text(b, text, sizeof(text));
			if (addr_port((const struct sockaddr *)&b->ss) != 0 &&
			    !json_has_address(obj, text))
				n +=
				    (size_t)snprintf(diff + n, sizeof(diff) - n,
				        "%slisten %s does not bind %s",
				        n ? "; " : "", cl->name, b->text);
		}
	}
	if (n == 0 && served != d->cfg->nlistens)
		n += (size_t)snprintf(diff, sizeof(diff),
		    "it serves %zu listeners, the configuration has %zu",
		    served, d->cfg->nlistens);
	if (n > 0)
		say(d, LV_FAIL,
		    "relay: serves another configuration than this one (%s): "
		    "reload it (systemctl reload lifeline, or SIGHUP) if the "
		    "file changed, or check that -c names its file",
		    diff);
	else
		say(d, LV_OK, "relay: serves the %zu configured listener%s",
		    served, served == 1 ? "" : "s");
}

/* The counters the look watches, from /metrics. */
enum look_counter {
	LOOK_REFUSED_MAXCONN,
	LOOK_REFUSED_SOURCE,
	LOOK_UPSTREAM_FAILED,
	LOOK_CONNECT_FAILURES,
	LOOK_ACCEPT_PAUSES,
	LOOK_MAX,
};

static const struct {
	const char *prefix; /* a sample's name and labels, up to the value */
	const char *label; /* result="..." or NULL: every sample counts */
	const char *words; /* for the report */
} look_def[LOOK_MAX] = {
    {"lifeline_connections_total{", "result=\"refused_maxconn\"",
        "refused at maxconn"},
    {"lifeline_connections_total{", "result=\"refused_source\"",
        "refused by a per-source limit"},
    {"lifeline_connections_total{", "result=\"upstream_failed\"",
        "closed because no upstream server answered"},
    {"lifeline_upstream_connect_failures_total{", NULL,
        "upstream connection attempts failed"},
    {"lifeline_accept_pauses_total ", NULL,
        "accept pauses for lack of file descriptors"},
};

/* Adds one /metrics line (len bytes at l) to the watched sums. */
static bool
look_line(const char *l, size_t len, uint64_t *sum)
{
	const char *sp = memchr(l, ' ', len);
	bool seen = false;

	if (sp == NULL)
		return false;
	for (int c = 0; c < LOOK_MAX; c++) {
		const char *lab = look_def[c].label;

		if (strncmp(l, look_def[c].prefix,
		        strlen(look_def[c].prefix)) != 0 ||
		    (lab != NULL &&
		        memmem(l, (size_t)(sp - l), lab, strlen(lab)) == NULL))
			continue;
		sum[c] += strtoull(sp + 1, NULL, 10);
		seen = true;
	}
	return seen;
}

/* Sums the watched counters of a /metrics text; -1 when none was seen. */
static int
look_parse(const char *text, uint64_t *sum)
{
	bool seen = false;

	memset(sum, 0, LOOK_MAX * sizeof(*sum));
	while (*text != '\0') {
		const char *eol = strchr(text, '\n');
		size_t len = eol != NULL ? (size_t)(eol - text) : strlen(text);

		if (look_line(text, len, sum))
			seen = true;
		text += len + (eol != NULL);
	}
	return seen ? 0 : -1;
}

static void
pause_ms(uint64_t ms)
{
	struct timespec ts = {.tv_sec = (time_t)(ms / 1000),
	    .tv_nsec = (long)(ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int
look_once(struct doctor *d, uint64_t *sum)
{
	enum health_probe r;
	const char *body;
	int code;

	body = stats_get(d, &d->stats_sa, "/metrics", &code, &r);
	if (r != HEALTH_PROBE_READY || body == NULL)
		return -1;
	return look_parse(body, sum);
}

static void
check_counters(struct doctor *d)
{
	uint64_t a[LOOK_MAX], b[LOOK_MAX];
	char grew[CFG_ERRLEN] = "";
	size_t n = 0;

	if (look_once(d, a) != 0) {
		say(d, LV_FAIL, "relay: /metrics cannot be read");
		return;
	}
	pause_ms(left(d, DOCTOR_LOOK_MS));
	if (look_once(d, b) != 0) {
		say(d, LV_FAIL, "relay: /metrics cannot be read");
		return;
	}
	for (int c = 0; c < LOOK_MAX && n < sizeof(grew); c++) {
		if (b[c] > a[c])
			n += (size_t)snprintf(grew + n, sizeof(grew) - n,
			    "%s%llu %s", n ? ", " : "",
			    (unsigned long long)(b[c] - a[c]),
			    look_def[c].words);
	}
	if (n > 0)
		say(d, LV_FAIL,
		    "relay: in %d s, %s: clients are being turned away now; "
		    "see /stats.json and the upstream lines",
		    DOCTOR_LOOK_MS / 1000, grew);
	else
		say(d, LV_OK,
		    "relay: no connection refused or failed during a %d s look",
		    DOCTOR_LOOK_MS / 1000);
}

static void
check_daemon(struct doctor *d)
{
	if (!d->daemon)
		return;
	check_ready(d);
	check_served(d);
	check_counters(d);
}

/* ------------------------------------------------------------------ */
/* --outside HOST */

/* Connects to sa within timeout_ms: the fd, or -errno. */
static int
dial(const struct sockaddr_storage *sa, uint64_t timeout_ms, uint64_t *took)
{
	struct attempt a = {.ss = *sa, .fd = -1};
	int fd;

	attempt_open(&a, timeout_ms);
	if (a.fd >= 0) {
		struct pollfd p = {.fd = a.fd, .events = POLLOUT};
		int err = 0;
		socklen_t len = sizeof(err);

		if (poll(&p, 1, (int)timeout_ms) != 1)
			attempt_end(&a, UP_TIMEOUT, ETIMEDOUT);
		else if (getsockopt(a.fd, SOL_SOCKET, SO_ERROR, &err, &len) !=
		        0 ||
		    err != 0)
			attempt_end(&a, UP_ERROR, err != 0 ? err : errno);
	}
	*took = loop_clock_ms() - a.start;
	if (a.fd < 0)
		return -a.err;
	fd = a.fd;
	return fd;
}

static const char *
sni_for(const struct doctor *d, const struct cfg_listen *cl)
{
	struct sockaddr_storage ss;
	socklen_t len;

	if (addr_parse_numeric(d->outside, 1, &ss, &len) != NULL)
		return d->outside;
	if (d->cfg->public_host != NULL &&
	    addr_parse_numeric(d->cfg->public_host, 1, &ss, &len) != NULL)
		return d->cfg->public_host;
	return cl->tls_names.n > 0 ? cl->tls_names.v[0] : NULL;
}

static void
outside_tls(struct doctor *d, const struct cfg_listen *cl,
    const struct sockaddr_storage *sa, uint16_t port, const char *sni)
{
	char proto[32], subject[256], err[CFG_ERRLEN], with[300];
	uint64_t took;
	int fd;

	snprintf(with, sizeof(with), "%s%s", sni ? "with SNI " : "without SNI",
	    sni ? sni : "");
	fd = dial(sa, left(d, DOCTOR_OUTSIDE_MS), &took);
	if (fd < 0) {
		say(d, LV_FAIL, "outside: %s:%u (listen %s): TLS %s: %s",
		    d->outside, port, cl->name, with, strerror(-fd));
		return;
	}
	if (tls_client_probe(fd, sni, (unsigned)left(d, DOCTOR_OUTSIDE_MS),
	        proto, sizeof(proto), subject, sizeof(subject), err,
	        sizeof(err)) == 0)
		say(d, LV_OK,
		    "outside: %s:%u (listen %s): TLS %s: handshake ok, %s, "
		    "certificate %s",
		    d->outside, port, cl->name, with, proto, subject);
	else
		say(d, LV_FAIL,
		    "outside: %s:%u (listen %s): TLS %s: %s; clients with "
		    "chatTLS cannot connect",
		    d->outside, port, cl->name, with, err);
	close(fd);
}

/* Plain TCP, then for TLS listeners a handshake with and without SNI. */
static void
outside_port(struct doctor *d, const struct cfg_listen *cl,
    struct sockaddr_storage *sa, uint16_t port)
{
	uint64_t took;
	int fd;
	const char *sni = sni_for(d, cl);

	addr_set_port((struct sockaddr *)sa, port);
	fd = dial(sa, left(d, DOCTOR_OUTSIDE_MS), &took);
	if (fd == -ECONNREFUSED) {
		say(d, LV_FAIL,
		    "outside: %s:%u (listen %s): TCP connection refused: "
		    "nothing listens there, or a firewall rejects it",
		    d->outside, port, cl->name);
		return;
	}
	if (fd < 0) {
		say(d, LV_FAIL,
		    "outside: %s:%u (listen %s): TCP: %s: a firewall drops "
		    "the packets (open the port), or the host is down",
		    d->outside, port, cl->name,
		    fd == -ETIMEDOUT ? "no answer within the timeout"
		                     : strerror(-fd));
		return;
	}
	close(fd);
	say(d, LV_OK, "outside: %s:%u (listen %s): TCP connect ok (%llu ms)",
	    d->outside, port, cl->name, (unsigned long long)took);
	if (!cl->tls)
		return;
	if (sni != NULL)
		outside_tls(d, cl, sa, port, sni);
	else
		say(d, LV_OK,
		    "outside: %s:%u (listen %s): TLS with SNI: skipped: %s is "
		    "an address and the configuration names no host "
		    "(public-host, tls-names)",
		    d->outside, port, cl->name, d->outside);
	outside_tls(d, cl, sa, port, NULL);
}

/* Resolves HOST through the relay's resolver code, bounded. */
static int
outside_resolve(struct doctor *d, struct sockaddr_storage *sa)
{
	struct cfg_server cs = {.host = (char *)d->outside, .port = 1};
	struct cfg_upstream cu = {
	    .name = (char *)"outside", .servers = &cs, .nservers = 1};
	struct upstream *up = upstream_new(&cu, NULL, 0);
	int state = 0, r = -1;

	resolve_bounded(up->servers, 1, left(d, DOCTOR_RESOLVE_MS), &state);
	if (state == 1 && upstream_server_addr(up->servers[0], 0, sa))
		r = 0;
	else
		say(d, LV_FAIL, "outside: %s %s", d->outside,
		    state == 0 ? "did not resolve within 5 s"
		               : "does not resolve");
	upstream_free(up);
	return r;
}

static void
check_outside(struct doctor *d)
{
	struct sockaddr_storage sa;
	uint16_t done[256];
	size_t ndone = 0;

	if (d->outside == NULL || outside_resolve(d, &sa) != 0)
		return;
	for (size_t i = 0; i < d->cfg->nlistens; i++) {
		const struct cfg_listen *cl = &d->cfg->listens[i];

		for (size_t j = 0; j < cl->nbinds; j++) {
			uint16_t port = addr_port(
			    (const struct sockaddr *)&cl->binds[j].ss);
			bool seen = false;

			for (size_t k = 0; k < ndone; k++)
				seen = seen || done[k] == port;
			if (port == 0 || seen || ndone == ARRAY_LEN(done))
				continue;
			done[ndone++] = port;
			outside_port(d, cl, &sa, port);
		}
	}
}

/* ------------------------------------------------------------------ */
/* command line */

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: lifeline doctor [-c FILE | --preset NAME] "
	    "[--outside HOST]\n"
	    "Checks this host and its relay: the configuration, ports, the "
	    "fd limit,\n"
	    "the clock, certificates, upstream servers, exposure, the "
	    "running relay;\n"
	    "with --outside, connects to HOST's listener ports as a client "
	    "would.\n"
	    "One line per check: ok, warn or fail.  Exit 0 when nothing "
	    "fails.\n"
	    "Every probe has a timeout; the whole run ends within %d s.\n",
	    DOCTOR_BUDGET_MS / 1000);
}

static int
parse_args(int argc, char **argv, const char **file, const char **preset,
    const char **outside)
{
	static const struct option longopts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"preset", required_argument, NULL, 'p'},
	    {"outside", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int ch;

	opterr = 0;
	optind = 1;
	while ((ch = getopt_long(argc, argv, ":c:p:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			*file = optarg;
			break;
		case 'p':
			*preset = optarg;
			break;
		case 'o':
			*outside = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case ':':
			fprintf(stderr, "lifeline doctor: '%s' needs a value\n",
			    argv[optind - 1]);
			return 2;
		default:
			fprintf(stderr,
			    "lifeline doctor: unknown option '%s' (see "
			    "--help)\n",
			    argv[optind - 1]);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lifeline doctor: unexpected argument '%s'\n",
		    argv[optind]);
		return 2;
	}
	if (*file != NULL && *preset != NULL) {
		fprintf(stderr,
		    "lifeline doctor: -c and --preset exclude each other\n");
		return 2;
	}
	return -1;
}

static void
run_checks(struct doctor *d)
{
	check_fds(d);
	check_clock(d);
	check_stats_exposure(d);
	check_port_set(d);
	find_daemon(d);
	check_ports(d);
	check_certs(d);
	check_upstreams(d);
	check_daemon(d);
	check_outside(d);
}

int
doctor_cli(int argc, char **argv)
{
	const char *file = NULL, *preset = NULL;
	struct doctor d = {0};
	uint64_t t0 = loop_clock_ms();
	int r;

	if ((r = parse_args(argc, argv, &file, &preset, &d.outside)) >= 0)
		return r;
	/* The relay's own messages (a name that does not resolve...). */
	log_set_level(LOG_ERROR);
	d.deadline = t0 + DOCTOR_BUDGET_MS;
	d.buf = xcalloc(1, STATS_BUF);
	if (check_config(&d, file, preset != NULL ? preset : "whatsapp") == 0)
		run_checks(&d);
	printf("doctor: %u ok, %u warn, %u fail (%.1f s)\n", d.count[LV_OK],
	    d.count[LV_WARN], d.count[LV_FAIL],
	    (double)(loop_clock_ms() - t0) / 1000.0);
	free(d.json);
	free(d.buf);
	cfg_free(d.cfg);
	return d.count[LV_FAIL] == 0 ? 0 : 1;
}
