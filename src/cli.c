/*
 * cli: `lifeline link` and `lifeline health`.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "cli.h"
#include "health.h"
#include "link.h"

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

int
cli_health(int argc, char **argv)
{
	return health_cli(argc, argv);
}
