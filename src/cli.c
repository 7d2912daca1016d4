/*
 * cli: `lifeline link` and `lifeline health`.
 */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "cli.h"
#include "link.h"
#include "loop.h"

#define HEALTH_TIMEOUT_MS 3000

static int
parse_port(const char *s, uint16_t *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *s == '\0' || *end != '\0' || v < 1 || v > 65535)
		return -1;
	*out = (uint16_t)v;
	return 0;
}

int
cli_link(int argc, char **argv)
{
	enum {
		OPT_HOST = 256,
		OPT_CHAT,
		OPT_MEDIA,
		OPT_TLS,
		OPT_NOTLS,
		OPT_QR
	};
	static const struct option longopts[] = {
	    {"host", required_argument, NULL, OPT_HOST},
	    {"chat-port", required_argument, NULL, OPT_CHAT},
	    {"media-port", required_argument, NULL, OPT_MEDIA},
	    {"tls", no_argument, NULL, OPT_TLS},
	    {"no-tls", no_argument, NULL, OPT_NOTLS},
	    {"qr", no_argument, NULL, OPT_QR},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *host = NULL;
	uint16_t chat = 0, media = 587;
	bool tls = true, qr = false;
	char link[512];
	int ch;

	opterr = 0;
	optind = 1;
	while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (ch) {
		case OPT_HOST:
			host = optarg;
			break;
		case OPT_CHAT:
		case OPT_MEDIA:
			if (parse_port(
			        optarg, ch == OPT_CHAT ? &chat : &media) != 0) {
				fprintf(stderr,
				    "lifeline link: bad port '%s' (1-65535)\n",
				    optarg);
				return 2;
			}
			break;
		case OPT_TLS:
			tls = true;
			break;
		case OPT_NOTLS:
			tls = false;
			break;
		case OPT_QR:
			qr = true;
			break;
		case 'h':
			printf(
			    "usage: lifeline link --host HOST [--chat-port N] "
			    "[--media-port N] [--tls|--no-tls] [--qr]\n"
			    "Prints the WhatsApp proxy share link (defaults: "
			    "chat 443 with TLS, or 5222 without; media "
			    "587).\n");
			return 0;
		case ':':
			fprintf(stderr, "lifeline link: '%s' needs a value\n",
			    argv[optind - 1]);
			return 2;
		default:
			fprintf(stderr,
			    "lifeline link: unknown option '%s' (see --help)\n",
			    argv[optind - 1]);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lifeline link: unexpected argument '%s'\n",
		    argv[optind]);
		return 2;
	}
	if (host == NULL) {
		fprintf(stderr, "lifeline link: --host is required\n");
		return 2;
	}
	if (!link_host_valid(host)) {
		fprintf(stderr,
		    "lifeline link: '%s' is not a host name or address\n",
		    host);
		return 2;
	}
	if (chat == 0)
		chat = tls ? 443 : 5222;
	if (link_format(host, chat, media, tls, link, sizeof(link)) != 0) {
		fprintf(stderr, "lifeline link: host name too long\n");
		return 2;
	}
	printf("%s\n", link);
	if (qr && link_qr_terminal(link, stdout) != 0) {
		fprintf(stderr, "lifeline link: cannot make the QR code\n");
		return 1;
	}
	return 0;
}

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

/* Waits for fd to be ready for events until deadline; 0 or -1. */
static int
wait_fd(int fd, short events, uint64_t deadline)
{
	struct pollfd pfd = {.fd = fd, .events = events};
	uint64_t now = loop_clock_ms();

	if (now >= deadline)
		return -1;
	return poll(&pfd, 1, (int)(deadline - now)) == 1 ? 0 : -1;
}

int
cli_health(int argc, char **argv)
{
	const char *url = "http://127.0.0.1:8199/readyz", *path;
	char host[256], port[16], req[512], resp[64];
	struct addrinfo hints, *res = NULL;
	uint64_t deadline = loop_clock_ms() + HEALTH_TIMEOUT_MS;
	int fd = -1, status = 1, n;
	size_t got = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) {
			url = argv[++i];
		} else if (strcmp(argv[i], "--help") == 0) {
			printf("usage: lifeline health [--url URL]\n"
			       "Exit 0 when URL (default %s) answers 200.\n",
			    url);
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
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL) {
		fprintf(stderr, "lifeline health: cannot resolve %s\n", host);
		return 1;
	}
	fd = socket(
	    res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto out;
	if (connect(fd, res->ai_addr, res->ai_addrlen) != 0 &&
	    errno != EINPROGRESS)
		goto out;
	if (wait_fd(fd, POLLOUT, deadline) != 0)
		goto out;
	{
		int err = 0;
		socklen_t len = sizeof(err);

		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
		    err != 0)
			goto out;
	}
	n = snprintf(req, sizeof(req),
	    "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path,
	    host);
	if (n < 0 || (size_t)n >= sizeof(req) ||
	    send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
		goto out;
	while (got < sizeof(resp) - 1 && memchr(resp, '\n', got) == NULL) {
		ssize_t r;

		if (wait_fd(fd, POLLIN, deadline) != 0)
			goto out;
		r = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	resp[got] = '\0';
	if (strncmp(resp, "HTTP/1.1 200", 12) == 0 ||
	    strncmp(resp, "HTTP/1.0 200", 12) == 0)
		status = 0;
out:
	if (status != 0)
		fprintf(stderr, "lifeline health: %s: not ready\n", url);
	if (fd >= 0)
		close(fd);
	freeaddrinfo(res);
	return status;
}
