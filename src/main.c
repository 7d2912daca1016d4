/*
 * main: command line, start-up order, signals, reload and drain.
 *
 * Start-up: parse and validate the config, bind every listener (one socket
 * per worker) and the stats listener, write the ports file, drop
 * privileges, resolve upstream names (bounded wait), start the workers.
 * The main thread then only waits for signals (signalfd) and for workers
 * that finish draining, and tells a service manager what it does (notify:
 * READY, RELOADING, STOPPING, STATUS).
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "control.h"
#include "doctor.h"
#include "failalloc.h"
#include "gen.h"
#include "log.h"
#include "loop.h"
#include "notify.h"
#include "relay.h"
#include "resolver.h"
#include "sandbox.h"
#include "tls.h"
#include "worker.h"

#ifndef LIFELINE_VERSION
#define LIFELINE_VERSION "0.0.0-dev"
#endif

/* How long start-up and reload wait for upstream names to resolve. */
#define RESOLVE_WAIT_MS 2000

struct opts {
	const char *config;
	const char *preset;
	const char *ports_file;
	int verbosity; /* -1 quiet, 0 config, 1 verbose */
	bool check;
	bool print;
};

static struct {
	struct opts o;
	struct gen *gen; /* reference: the generation in force */
	struct worker *workers[CFG_MAX_WORKERS];
	unsigned nworkers;
	int done_fd; /* eventfd: workers that finished draining */
	const char *ports_file; /* borrowed: CLI or gen->cfg */
} m = {.done_fd = -1};

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: lifeline [-c FILE] [--preset NAME] [--ports-file FILE] "
	    "[-v|-q]\n"
	    "       lifeline --check [-c FILE | --preset NAME]\n"
	    "       lifeline --print-config [-c FILE | --preset NAME]\n"
	    "       lifeline link --host HOST [--chat-port N] [--media-port N] "
	    "[--tls|--no-tls] [--qr]\n"
	    "       lifeline health [--url URL]\n"
	    "       lifeline doctor [-c FILE | --preset NAME] [--outside "
	    "HOST]\n"
	    "       lifeline --version | --help\n"
	    "\n"
	    "  -c, --config FILE     configuration file (INI); without it "
	    "the preset applies\n"
	    "  -p, --preset NAME     built-in configuration: whatsapp "
	    "(default) or minimal\n"
	    "      --ports-file FILE write 'NAME ADDRESS:PORT' per bound "
	    "socket once bound\n"
	    "      --check           validate the configuration and exit "
	    "(0 valid, 1 invalid)\n"
	    "      --print-config    print the effective configuration and "
	    "exit\n"
	    "  -v, --verbose         log at debug level (shows client "
	    "addresses)\n"
	    "  -q, --quiet           log errors only\n"
	    "  -V, --version         print the version and exit\n"
	    "  -h, --help            print this help and exit\n"
	    "\n"
	    "\n"
	    "  health: exit 0 when the running relay's /readyz says ready.\n"
	    "  doctor: check this host, its configuration and relay, one "
	    "line\n"
	    "          per check (ok, warn, fail); see lifeline(8).\n"
	    "\n"
	    "Signals: TERM/INT drain and exit, HUP reload, USR1 log "
	    "counters.\n");
}

static void
parse_args(int argc, char **argv, struct opts *o)
{
	enum { OPT_PORTS = 256, OPT_CHECK, OPT_PRINT };
	static const struct option longopts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"preset", required_argument, NULL, 'p'},
	    {"ports-file", required_argument, NULL, OPT_PORTS},
	    {"check", no_argument, NULL, OPT_CHECK},
	    {"print-config", no_argument, NULL, OPT_PRINT},
	    {"verbose", no_argument, NULL, 'v'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int ch;

	memset(o, 0, sizeof(*o));
	opterr = 0;
	while (
	    (ch = getopt_long(argc, argv, ":c:p:vqVh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			o->config = optarg;
			break;
		case 'p':
			o->preset = optarg;
			break;
		case OPT_PORTS:
			o->ports_file = optarg;
			break;
		case OPT_CHECK:
			o->check = true;
			break;
		case OPT_PRINT:
			o->print = true;
			break;
		case 'v':
			o->verbosity = 1;
			break;
		case 'q':
			o->verbosity = -1;
			break;
		case 'V':
			printf("lifeline %s\n", LIFELINE_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		case ':':
			fprintf(stderr, "lifeline: option '%s' needs a value\n",
			    argv[optind - 1]);
			exit(2);
		default:
			fprintf(stderr,
			    "lifeline: unknown option '%s' (see --help)\n",
			    argv[optind - 1]);
			exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr,
		    "lifeline: unexpected argument '%s' (see "
		    "--help)\n",
		    argv[optind]);
		exit(2);
	}
	if (o->config != NULL && o->preset != NULL) {
		fprintf(
		    stderr, "lifeline: -c and --preset exclude each other\n");
		exit(2);
	}
	if (o->check && o->print) {
		fprintf(stderr,
		    "lifeline: --check and --print-config exclude each "
		    "other\n");
		exit(2);
	}
}

static struct cfg *
load_config(const struct opts *o, char *err, size_t errlen)
{
	if (o->config != NULL)
		return cfg_load_file(o->config, err, errlen);
	return cfg_load_preset(
	    o->preset != NULL ? o->preset : "whatsapp", err, errlen);
}

static void
apply_log_level(const struct cfg *cfg)
{
	if (m.o.verbosity > 0)
		log_set_level(LOG_DEBUG);
	else if (m.o.verbosity < 0)
		log_set_level(LOG_ERROR);
	else
		log_set_level(cfg->log_level);
}

static unsigned
count_workers(const struct cfg *cfg)
{
	long n;

	if (cfg->workers > 0)
		return cfg->workers;
	n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > CFG_MAX_WORKERS)
		n = CFG_MAX_WORKERS;
	return (unsigned)n;
}

/*
 * What parsing cannot see, for --check and before start-up: loads every
 * supplied certificate and key.  Returns 0, or -1 after printing the
 * problem (one line naming the file).  Start-up loads them again in
 * gen_new; a certificate file is small.
 */
static int
check_certs(const struct cfg *cfg)
{
	char err[CFG_ERRLEN];

	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct cfg_listen *cl = &cfg->listens[i];
		struct tls_ctx *t;

		if (!cl->tls || cl->cert == NULL)
			continue;
		t = tls_ctx_new(cl, err, sizeof(err));
		if (t == NULL) {
			fprintf(stderr, "lifeline: %s:%d: [listen %s]: %s\n",
			    cfg->source, cl->line, cl->name, err);
			return -1;
		}
		tls_ctx_unref(t);
	}
	return 0;
}

static void
warn_log(const char *msg)
{
	log_warnx("%s", msg);
}

static void
warn_stderr(const char *msg)
{
	fprintf(stderr, "lifeline: warning: %s\n", msg);
}

/*
 * Writes the ports file.  Start-up does it before dropping privileges;
 * after a reload the directory may be root's only, so a failure there is
 * a warning and the old file stays.
 */
static void
write_ports(bool reloading)
{
	char extra[1024] = "";

	if (m.ports_file == NULL)
		return;
	control_ports(extra, sizeof(extra));
	if (gen_write_ports(m.gen, m.ports_file, extra) == 0)
		return;
	if (reloading)
		log_warn("cannot rewrite ports file %s after reload; it still "
		         "lists the previous ports",
		    m.ports_file);
	else
		log_error("cannot write ports file %s", m.ports_file);
}

static void
log_summary(void)
{
	uint64_t closed[RELAY_RES_MAX] = {0}, in = 0, out = 0, hs = 0, res = 0;
	uint64_t accepted = 0, active = 0, errors = 0, retries = 0, pauses = 0;
	char line[512];
	size_t n = 0;

	for (unsigned i = 0; i < m.nworkers; i++) {
		struct relay_counters *c = &m.workers[i]->cnt;

		accepted += RELAY_CNT_GET(c, accepted);
		active += RELAY_CNT_GET(c, active);
		errors += RELAY_CNT_GET(c, errors);
		retries += RELAY_CNT_GET(c, connect_retries);
		pauses += RELAY_CNT_GET(c, accept_pauses);
	}
	for (size_t l = 0; l < m.gen->nlisteners; l++) {
		for (unsigned i = 0; i < m.nworkers; i++) {
			struct relay_lcounters *c =
			    &m.gen->listeners[l].state->cnt[i];

			for (int r = 0; r < RELAY_RES_MAX; r++)
				closed[r] += RELAY_CNT_GET(c, closed[r]);
			in += RELAY_CNT_GET(c, bytes_in);
			out += RELAY_CNT_GET(c, bytes_out);
			hs += RELAY_CNT_GET(c, tls_handshakes);
			res += RELAY_CNT_GET(c, tls_resumed);
		}
	}
	for (int r = 0; r < RELAY_RES_MAX && n < sizeof(line); r++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " %s=%llu",
		    relay_result_str((enum relay_result)r),
		    (unsigned long long)closed[r]);
	log_info("counters: accepted=%llu active=%llu bytes_in=%llu "
	         "bytes_out=%llu tls_handshakes=%llu tls_resumed=%llu "
	         "errors=%llu connect_retries=%llu accept_pauses=%llu; "
	         "ended:%s",
	    (unsigned long long)accepted, (unsigned long long)active,
	    (unsigned long long)in, (unsigned long long)out,
	    (unsigned long long)hs, (unsigned long long)res,
	    (unsigned long long)errors, (unsigned long long)retries,
	    (unsigned long long)pauses, line);
}

/* Returns whether the new configuration is in force. */
static bool
reload(void)
{
	char err[CFG_ERRLEN];
	struct worker_plan *plans[CFG_MAX_WORKERS];
	struct cfg *cfg;
	struct gen *g;

	log_info("reloading configuration");
	cfg = load_config(&m.o, err, sizeof(err));
	if (cfg == NULL) {
		log_errorx(
		    "reload refused, previous configuration kept: %s", err);
		return false;
	}
	if (count_workers(cfg) != m.nworkers)
		log_warnx("reload: 'workers' changes take effect at restart");
	if ((cfg->user == NULL) != (m.gen->cfg->user == NULL) ||
	    (cfg->user != NULL && strcmp(cfg->user, m.gen->cfg->user) != 0))
		log_warnx("reload: 'user' changes take effect at restart");
	g = gen_new(cfg, m.gen, m.nworkers, err, sizeof(err));
	if (g == NULL) {
		log_errorx(
		    "reload refused, previous configuration kept: %s", err);
		return false;
	}
	/* Everything the workers need first: none can fail half-way. */
	for (unsigned i = 0; i < m.nworkers; i++) {
		plans[i] = worker_prepare(m.workers[i], g);
		if (plans[i] == NULL) {
			while (i-- > 0)
				worker_plan_free(plans[i]);
			gen_unref(g);
			log_errorx("reload refused, previous configuration "
			           "kept: out of memory");
			return false;
		}
	}
	apply_log_level(g->cfg);
	cfg_warnings(g->cfg, warn_log);
	resolver_set_gen(g);
	resolver_wait(RESOLVE_WAIT_MS);
	for (unsigned i = 0; i < m.nworkers; i++)
		worker_commit(m.workers[i], plans[i]);
	control_apply(g);
	gen_unref(m.gen);
	m.gen = g;
	if (m.o.ports_file == NULL)
		m.ports_file = g->cfg->ports_file;
	write_ports(true);
	log_info("configuration reloaded: %zu listener%s", g->nlisteners,
	    g->nlisteners == 1 ? "" : "s");
	return true;
}

/* The live figures for STATUS=; never an address. */
static void
status_text(char *buf, size_t len)
{
	uint64_t accepted = 0;

	for (unsigned i = 0; i < m.nworkers; i++)
		accepted += RELAY_CNT_GET(&m.workers[i]->cnt, accepted);
	snprintf(buf, len, "%u live connection%s, %llu since start",
	    relay_total_active(), relay_total_active() == 1 ? "" : "s",
	    (unsigned long long)accepted);
}

/* Sends STATUS= when the figures changed since the last one. */
static void
notify_status(void)
{
	static char last[NOTIFY_MAX];
	char now[NOTIFY_MAX];

	if (!notify_enabled())
		return;
	status_text(now, sizeof(now));
	if (strcmp(now, last) == 0)
		return;
	if (notify_send("STATUS=%s", now) == 0)
		memcpy(last, now, sizeof(last));
}

/* SIGHUP: the manager sees the reload begin and end, applied or not. */
static void
reload_notified(void)
{
	char st[NOTIFY_MAX - 64];

	(void)notify_reloading();
	if (reload()) {
		status_text(st, sizeof(st));
		(void)notify_send("READY=1\nSTATUS=%s", st);
	} else {
		(void)notify_send("READY=1\nSTATUS=reload refused, previous "
		                  "configuration kept (see the log)");
	}
}

static void
drain(bool now)
{
	uint64_t deadline =
	    loop_clock_ms() + (now ? 0 : m.gen->cfg->drain_timeout_ms);

	if (now)
		log_info("second stop signal: closing all connections now");
	else
		log_info("stopping: no new connections; draining %u live "
		         "connection%s for at most %llums",
		    relay_total_active(), relay_total_active() == 1 ? "" : "s",
		    (unsigned long long)m.gen->cfg->drain_timeout_ms);
	for (unsigned i = 0; i < m.nworkers; i++)
		worker_drain(m.workers[i], deadline);
	(void)notify_send("STOPPING=1\nSTATUS=%s %u live connection%s",
	    now ? "stopping now, closing" : "draining", relay_total_active(),
	    relay_total_active() == 1 ? "" : "s");
}

/* Waits for signals and finished workers; returns the exit status. */
static int
main_loop(int sfd)
{
	struct pollfd pfd[2] = {
	    {.fd = sfd, .events = POLLIN},
	    {.fd = m.done_fd, .events = POLLIN},
	};
	unsigned done = 0;
	bool draining = false;

	while (done < m.nworkers) {
		int n = poll(
		    pfd, 2, notify_enabled() ? NOTIFY_STATUS_INTERVAL_MS : -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_error("poll");
			return 1;
		}
		if (n == 0) {
			notify_status();
			continue;
		}
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof(si)) != sizeof(si))
				continue;
			switch (si.ssi_signo) {
			case SIGTERM:
			case SIGINT:
				drain(draining);
				draining = true;
				break;
			case SIGHUP:
				if (!draining)
					reload_notified();
				break;
			case SIGUSR1:
				log_summary();
				break;
#ifdef LIFELINE_TEST_HOOKS
			case SIGUSR2:
				sandbox_test_forbidden();
				break;
#endif
			}
		}
		if (pfd[1].revents & POLLIN) {
			uint64_t v;

			if (read(m.done_fd, &v, sizeof(v)) == sizeof(v))
				done += (unsigned)v;
		}
	}
	return draining ? 0 : 1;
}

int
main(int argc, char **argv)
{
	char err[CFG_ERRLEN];
	struct cfg *cfg;
	sigset_t set;
	int sfd, status;

	if (argc > 1 && strcmp(argv[1], "link") == 0)
		return cli_link(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "health") == 0)
		return cli_health(argc - 1, argv + 1);
	if (argc > 1 && strcmp(argv[1], "doctor") == 0)
		return doctor_cli(argc - 1, argv + 1);
#ifdef LIFELINE_TEST_HOOKS
	tls_test_hooks_init();
	if (failalloc_init(err, sizeof(err)) != 0) {
		fprintf(stderr, "lifeline: %s\n", err);
		return 2;
	}
#endif
	parse_args(argc, argv, &m.o);
	log_detect_journal();
	cfg = load_config(&m.o, err, sizeof(err));
	if (cfg == NULL) {
		fprintf(stderr, "lifeline: %s\n", err);
		return m.o.check ? 1 : 2;
	}
	if (m.o.check) {
		if (check_certs(cfg) != 0) {
			cfg_free(cfg);
			return 1;
		}
		cfg_warnings(cfg, warn_stderr);
		printf("%s: configuration OK\n", cfg->source);
		cfg_free(cfg);
		return 0;
	}
	if (m.o.print) {
		cfg_print(cfg, stdout);
		cfg_free(cfg);
		return 0;
	}
	/* A certificate that does not load is a configuration error. */
	if (check_certs(cfg) != 0) {
		cfg_free(cfg);
		return 2;
	}
	apply_log_level(cfg);
	cfg_warnings(cfg, warn_log);
	/* Before the sandbox: later messages need no new descriptor. */
	if (notify_open(err, sizeof(err)) != 0)
		log_warnx("%s", err);

	/* Workers inherit this mask: signals reach the main thread only. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
#ifdef LIFELINE_TEST_HOOKS
	sigaddset(&set, SIGUSR2);
#endif
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		fatal(1, "cannot block signals");
	signal(SIGPIPE, SIG_IGN);
	sfd = signalfd(-1, &set, SFD_CLOEXEC);
	if (sfd < 0)
		fatal(1, "signalfd: %s", strerror(errno));
	m.done_fd = eventfd(0, EFD_CLOEXEC);
	if (m.done_fd < 0)
		fatal(1, "eventfd: %s", strerror(errno));

	m.nworkers = count_workers(cfg);
	m.gen = gen_new(cfg, NULL, m.nworkers, err, sizeof(err));
	if (m.gen == NULL)
		fatal(1, "%s", err);
	if (m.gen->nlisteners == 0)
		fatal(1, "no listener can be started");
	m.ports_file =
	    m.o.ports_file != NULL ? m.o.ports_file : m.gen->cfg->ports_file;
	if (control_bind(m.gen, err, sizeof(err)) != 0)
		fatal(1, "%s", err);
	/* While still root: the directory may be writable by root only. */
	write_ports(false);
	/* The only thread so far: what it gives up, every thread lacks. */
	if (sandbox_drop(m.gen->cfg->user, err, sizeof(err)) != 0)
		fatal(1, "%s", err);
	if (resolver_start(m.gen, RESOLVER_INTERVAL_MS) != 0)
		fatal(1, "cannot start the resolver thread");
	resolver_wait(RESOLVE_WAIT_MS);
	/* The first resolution has loaded what name lookups need. */
	sandbox_preload_nss();
	if (m.gen->cfg->sandbox && sandbox_seccomp(err, sizeof(err)) != 0)
		fatal(1, "%s", err);
	for (unsigned i = 0; i < m.nworkers; i++) {
		m.workers[i] = worker_new(i, m.gen, m.done_fd);
		if (m.workers[i] == NULL || worker_start(m.workers[i]) != 0)
			fatal(1, "cannot start worker %u: %s", i,
			    strerror(errno));
	}
	if (control_start(m.gen, m.workers, m.nworkers) != 0)
		fatal(
		    1, "cannot start the control thread: %s", strerror(errno));
	log_info("lifeline %s started: %u worker%s, %zu listener%s",
	    LIFELINE_VERSION, m.nworkers, m.nworkers == 1 ? "" : "s",
	    m.gen->nlisteners, m.gen->nlisteners == 1 ? "" : "s");
	(void)notify_send("READY=1\nSTATUS=serving on %zu listener%s",
	    m.gen->nlisteners, m.gen->nlisteners == 1 ? "" : "s");
#ifdef LIFELINE_TEST_HOOKS
	failalloc_arm();
#endif

	status = main_loop(sfd);

	control_stop();
	for (unsigned i = 0; i < m.nworkers; i++)
		worker_free(m.workers[i]);
	resolver_stop();
	if (m.ports_file != NULL)
		(void)unlink(m.ports_file);
	log_info("stopped");
	gen_unref(m.gen);
	close(m.done_fd);
	close(sfd);
	notify_close();
	return status;
}
