/*
 * health: active upstream checks, and the `lifeline health` probe.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "health.h"
#include "log.h"
#include "proxyproto.h"
#include "util.h"

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

/*
 * Closes k's connect in progress, if any; an event of it still to come in
 * this iteration's batch is dropped (k may be freed or reused before it).
 */
static void
check_close(struct check *k)
{
	if (k->io.fd < 0)
		return;
	loop_io_forget(k->h->loop, &k->io);
	close(k->io.fd);
	k->io.fd = -1;
}

static void
check_end(struct check *k, bool ok)
{
	uint64_t now = loop_now(k->h->loop), next;

	check_close(k);
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
	check_close(k);
	k->addr++;
	check_connect(k);
}

static void
check_timer_cb(struct loop_timer *t)
{
	struct check *k = container_of(t, struct check, timer);

	if (k->io.fd >= 0) {
		/* Connect timed out: next address, or the verdict. */
		check_close(k);
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
	check_close(k);
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
				struct check **v =
				    reallocarray(h->v, h->n + 1, sizeof(*h->v));

				if (v != NULL)
					h->v = v;
				k = v != NULL ? calloc(1, sizeof(*k)) : NULL;
				/*
				 * Out of memory at run time: this server goes
				 * unchecked (passive health still applies)
				 * rather than the relay going down.
				 */
				if (k == NULL) {
					log_warnx("health: out of memory; %s "
					          "is not checked",
					    s->label);
					continue;
				}
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

/*
 * The `lifeline health` probe: one GET, then a verdict from the status
 * line alone.  Each step has its own failure, so that an operator (and a
 * container engine's log) can tell a relay that is down from one that
 * answers "not ready".
 */

/* Splits "http://HOST[:PORT][/PATH]"; returns 0 or -1. */
static int
parse_url(const char *url, char *host, size_t hostlen, char *port,
    size_t portlen, const char **path)
{
	const char *p, *hs, *he, *slash;

	if (strncmp(url, "http://", 7) != 0)
		return -1;
	p = url + 7;
	slash = strchr(p, '/');
	*path = slash != NULL ? slash : "/";
	he = slash != NULL ? slash : p + strlen(p);
	hs = p;
	snprintf(port, portlen, "80");
	if (*hs == '[') {
		const char *rb = memchr(hs, ']', (size_t)(he - hs));

		if (rb == NULL)
			return -1;
		if (rb + 1 < he && rb[1] == ':')
			snprintf(
			    port, portlen, "%.*s", (int)(he - rb - 2), rb + 2);
		hs++;
		he = rb;
	} else {
		const char *colon = memchr(hs, ':', (size_t)(he - hs));

		if (colon != NULL) {
			snprintf(port, portlen, "%.*s", (int)(he - colon - 1),
			    colon + 1);
			he = colon;
		}
	}
	if (he <= hs || (size_t)(he - hs) >= hostlen)
		return -1;
	memcpy(host, hs, (size_t)(he - hs));
	host[he - hs] = '\0';
	return 0;
}

const char *
health_probe_str(enum health_probe r)
{
	switch (r) {
	case HEALTH_PROBE_READY:
		return "ready";
	case HEALTH_PROBE_NOT_READY:
		return "not ready";
	case HEALTH_PROBE_MALFORMED:
		return "malformed status line";
	case HEALTH_PROBE_NO_RESPONSE:
		return "closed without a response";
	case HEALTH_PROBE_RESOLVE_FAILED:
		return "cannot resolve";
	case HEALTH_PROBE_CONNECT_FAILED:
		return "cannot connect";
	case HEALTH_PROBE_TIMEOUT:
		return "timed out";
	case HEALTH_PROBE_IO_ERROR:
		return "connection failed";
	}
	return "?";
}

/* The byte at i of "HTTP/1.x SP 3DIGIT SP" may be c. */
static bool
status_prefix_ok(size_t i, char c)
{
	static const char ver[] = "HTTP/1.";

	if (i < sizeof(ver) - 1)
		return c == ver[i];
	if (i == 8 || i == 12)
		return c == ' ';
	return c >= '0' && c <= '9';
}

enum health_status
health_parse_status(const char *buf, size_t len, int *code)
{
	size_t i;

	for (i = 0; i < len && i < HEALTH_STATUS_PREFIX; i++) {
		if (!status_prefix_ok(i, buf[i]))
			return HEALTH_STATUS_ERR;
	}
	/* reason-phrase = *( HTAB / SP / VCHAR / obs-text ), maybe empty */
	for (; i < len && i < HEALTH_STATUS_MAX; i++) {
		unsigned char c = (unsigned char)buf[i];

		if (c == '\r')
			break;
		if (c != '\t' && (c < 0x20 || c == 0x7f))
			return HEALTH_STATUS_ERR;
	}
	if (i >= HEALTH_STATUS_MAX)
		return HEALTH_STATUS_ERR;
	if (i + 1 >= len)
		return HEALTH_STATUS_NEED_MORE;
	if (buf[i + 1] != '\n')
		return HEALTH_STATUS_ERR;
	*code = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
	return HEALTH_STATUS_OK;
}

/* Waits for events on fd until deadline (loop_clock_ms); 0 or -ETIMEDOUT. */
static int
wait_fd(int fd, short events, uint64_t deadline)
{
	struct pollfd pfd = {.fd = fd, .events = events};

	for (;;) {
		uint64_t now = loop_clock_ms();
		int n;

		if (now >= deadline)
			return -ETIMEDOUT;
		n = poll(&pfd, 1, (int)(deadline - now));
		if (n == 1)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

/* Connects to ai before deadline; returns the fd or -errno. */
static int
probe_connect(const struct addrinfo *ai, uint64_t deadline)
{
	int fd, err = 0, r;
	socklen_t len = sizeof(err);

	fd = socket(
	    ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 &&
	    errno != EINPROGRESS) {
		err = errno;
		goto fail;
	}
	if ((r = wait_fd(fd, POLLOUT, deadline)) != 0) {
		err = -r;
		goto fail;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		err = errno;
	if (err != 0)
		goto fail;
	return fd;
fail:
	close(fd);
	return -err;
}

/* Reads until the status line is whole; returns the verdict. */
static enum health_probe
probe_read(int fd, uint64_t deadline, int *code, int *err)
{
	char buf[HEALTH_STATUS_MAX];
	size_t got = 0;

	for (;;) {
		enum health_status s = health_parse_status(buf, got, code);
		ssize_t n;

		if (s == HEALTH_STATUS_OK)
			return *code == 200 ? HEALTH_PROBE_READY
			                    : HEALTH_PROBE_NOT_READY;
		if (s == HEALTH_STATUS_ERR)
			return HEALTH_PROBE_MALFORMED;
		if ((*err = -wait_fd(fd, POLLIN, deadline)) != 0)
			return *err == ETIMEDOUT ? HEALTH_PROBE_TIMEOUT
			                         : HEALTH_PROBE_IO_ERROR;
		n = recv(fd, buf + got, sizeof(buf) - got, 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n < 0) {
			*err = errno;
			return HEALTH_PROBE_IO_ERROR;
		}
		if (n == 0)
			return got == 0 ? HEALTH_PROBE_NO_RESPONSE
			                : HEALTH_PROBE_MALFORMED;
		got += (size_t)n;
	}
}

/* Sends the request and reads the verdict, within deadline. */
static enum health_probe
probe_exchange(int fd, const char *host, const char *path, uint64_t deadline,
    int *code, int *err)
{
	char req[1024];
	int n;

	n = snprintf(req, sizeof(req),
	    "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path,
	    host);
	if (n < 0 || (size_t)n >= sizeof(req)) {
		*err = ENAMETOOLONG;
		return HEALTH_PROBE_IO_ERROR;
	}
	/* A fresh socket's buffer takes the whole request at once. */
	if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
		*err = errno;
		return HEALTH_PROBE_IO_ERROR;
	}
	return probe_read(fd, deadline, code, err);
}

enum health_probe
health_probe(const char *host, const char *port, const char *path, int *code,
    int *err, char *peer, size_t peerlen)
{
	uint64_t deadline = loop_clock_ms() + HEALTH_PROBE_TIMEOUT_MS;
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
	enum health_probe r = HEALTH_PROBE_CONNECT_FAILED;
	int fd = -1;

	snprintf(peer, peerlen, "%s:%s", host, port);
	*err = getaddrinfo(host, port, &hints, &res);
	if (*err != 0)
		return HEALTH_PROBE_RESOLVE_FAILED;
	/* Each address in turn ("localhost": ::1, then 127.0.0.1). */
	for (struct addrinfo *ai = res; ai != NULL && fd < 0;
	     ai = ai->ai_next) {
		if (peerlen >= ADDR_STRLEN)
			addr_format(ai->ai_addr, peer, peerlen);
		fd = probe_connect(ai, deadline);
		*err = fd < 0 ? -fd : 0;
		if (*err == ETIMEDOUT)
			break;
	}
	if (fd < 0) {
		r = *err == ETIMEDOUT ? HEALTH_PROBE_TIMEOUT
		                      : HEALTH_PROBE_CONNECT_FAILED;
		goto fail;
	}
	r = probe_exchange(fd, host, path, deadline, code, err);
fail:
	if (fd >= 0)
		close(fd);
	freeaddrinfo(res);
	return r;
}

/* Reads until the peer closes, into buf; returns the bytes or -errno. */
static ssize_t
read_all(int fd, uint64_t deadline, char *buf, size_t cap)
{
	size_t got = 0;

	for (;;) {
		ssize_t n;
		int r;

		if (got + 1 >= cap)
			return -EMSGSIZE;
		if ((r = wait_fd(fd, POLLIN, deadline)) != 0)
			return r;
		n = recv(fd, buf + got, cap - 1 - got, 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	buf[got] = '\0';
	return (ssize_t)got;
}

enum health_probe
health_fetch(const struct sockaddr *sa, const char *path, uint64_t timeout_ms,
    char *buf, size_t cap, int *code, const char **body, int *err)
{
	uint64_t deadline = loop_clock_ms() + timeout_ms;
	struct addrinfo ai = {.ai_family = sa->sa_family,
	    .ai_addr = (struct sockaddr *)sa,
	    .ai_addrlen = addr_len(sa)};
	char host[ADDR_STRLEN];
	enum health_probe r;
	ssize_t n;
	int fd;
	char *end;

	*body = NULL;
	*code = 0;
	*err = 0;
	fd = probe_connect(&ai, deadline);
	if (fd < 0) {
		*err = -fd;
		return *err == ETIMEDOUT ? HEALTH_PROBE_TIMEOUT
		                         : HEALTH_PROBE_CONNECT_FAILED;
	}
	addr_format(sa, host, sizeof(host));
	snprintf(buf, cap,
	    "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path,
	    host);
	if (send(fd, buf, strlen(buf), MSG_NOSIGNAL) != (ssize_t)strlen(buf)) {
		*err = errno;
		r = HEALTH_PROBE_IO_ERROR;
		goto done;
	}
	n = read_all(fd, deadline, buf, cap);
	if (n < 0) {
		*err = (int)-n;
		r = n == -ETIMEDOUT  ? HEALTH_PROBE_TIMEOUT
		    : n == -EMSGSIZE ? HEALTH_PROBE_MALFORMED
		                     : HEALTH_PROBE_IO_ERROR;
		goto done;
	}
	if (n == 0) {
		r = HEALTH_PROBE_NO_RESPONSE;
		goto done;
	}
	end = strstr(buf, "\r\n\r\n");
	if (health_parse_status(buf, (size_t)n, code) != HEALTH_STATUS_OK ||
	    end == NULL) {
		r = HEALTH_PROBE_MALFORMED;
		goto done;
	}
	*body = end + 4;
	r = *code == 200 ? HEALTH_PROBE_READY : HEALTH_PROBE_NOT_READY;
done:
	close(fd);
	return r;
}

/* One line on stderr naming what failed, for the operator's log. */
static void
probe_report(
    enum health_probe r, const char *url, const char *peer, int code, int err)
{
	const char *p = "lifeline health";

	switch (r) {
	case HEALTH_PROBE_READY:
		break;
	case HEALTH_PROBE_NOT_READY:
		fprintf(stderr, "%s: %s: not ready (HTTP %d)\n", p, url, code);
		break;
	case HEALTH_PROBE_MALFORMED:
	case HEALTH_PROBE_NO_RESPONSE:
		fprintf(stderr, "%s: %s: %s\n", p, url, health_probe_str(r));
		break;
	case HEALTH_PROBE_RESOLVE_FAILED:
		fprintf(stderr, "%s: cannot resolve %s: %s\n", p, peer,
		    gai_strerror(err));
		break;
	case HEALTH_PROBE_CONNECT_FAILED:
		fprintf(stderr, "%s: cannot connect to %s: %s\n", p, peer,
		    strerror(err));
		break;
	case HEALTH_PROBE_TIMEOUT:
		fprintf(stderr, "%s: %s: timed out after %d s\n", p, url,
		    HEALTH_PROBE_TIMEOUT_MS / 1000);
		break;
	case HEALTH_PROBE_IO_ERROR:
		fprintf(stderr, "%s: %s: %s\n", p, url, strerror(err));
		break;
	}
}

int
health_cli(int argc, char **argv)
{
	const char *url = "http://127.0.0.1:8199/readyz", *path;
	char host[256], port[16], peer[ADDR_STRLEN + 256];
	enum health_probe r;
	int code = 0, err = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) {
			url = argv[++i];
		} else if (strcmp(argv[i], "--help") == 0) {
			printf("usage: lifeline health [--url URL]\n"
			       "Exit 0 when URL (default %s) answers 200 "
			       "within %d s, else 1.\n",
			    url, HEALTH_PROBE_TIMEOUT_MS / 1000);
			return 0;
		} else {
			fprintf(stderr, "lifeline health: unexpected '%s'\n",
			    argv[i]);
			return 2;
		}
	}
	if (parse_url(url, host, sizeof(host), port, sizeof(port), &path) !=
	    0) {
		fprintf(
		    stderr, "lifeline health: not an http:// URL: %s\n", url);
		return 2;
	}
	r = health_probe(host, port, path, &code, &err, peer, sizeof(peer));
	probe_report(r, url, peer, code, err);
	return r == HEALTH_PROBE_READY ? 0 : 1;
}
