/*
 * link: share links and their QR codes.
 */
#include <qrencode.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "link.h"

/* Modules of quiet zone around a QR code, as the standard asks. */
#define QR_QUIET 4

bool
link_host_valid(const char *host)
{
	size_t n = strlen(host);

	if (n == 0 || n > 253)
		return false;
	for (const char *p = host; *p != '\0'; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		        (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
		        *p == ':' || *p == '[' || *p == ']'))
			return false;
	}
	return true;
}

int
link_format(const char *host, uint16_t chat_port, uint16_t media_port,
    bool chat_tls, char *buf, size_t len)
{
	int n = snprintf(buf, len,
	    "https://wa.me/proxy?host=%s&chatPort=%u&mediaPort=%u&chatTLS=%s",
	    host, chat_port, media_port, chat_tls ? "true" : "false");

	return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* Port of the first direct (not accept-proxy) listener for upstream. */
static uint16_t
listener_port(
    const struct gen *g, const char *upstream, bool want_tls, bool *found)
{
	for (size_t i = 0; i < g->nlisteners; i++) {
		const struct listener *l = &g->listeners[i];

		if (l->cfg->accept_proxy || l->cfg->tls != want_tls ||
		    l->nsocks == 0 || strcmp(l->up->cfg->name, upstream) != 0)
			continue;
		*found = true;
		/* The port really bound (a configured 0 became one). */
		return (uint16_t)atoi(strrchr(l->socks[0]->text, ':') + 1);
	}
	*found = false;
	return 0;
}

int
link_for_gen(const struct gen *g, char *buf, size_t len)
{
	uint16_t chat = 443, media = 587, p;
	bool tls = true, found;

	if (g->cfg->public_host == NULL)
		return -1;
	p = listener_port(g, "chat", true, &found);
	if (found) {
		chat = p;
	} else {
		p = listener_port(g, "chat", false, &found);
		if (found) {
			chat = p;
			tls = false;
		}
	}
	p = listener_port(g, "media", false, &found);
	if (found) {
		media = p;
	} else if (tls) {
		/* One port for both: media pass through the chat listener. */
		for (size_t i = 0; i < g->nlisteners; i++) {
			const struct listener *l = &g->listeners[i];

			if (l->passthrough != NULL && l->cfg->tls &&
			    !l->cfg->accept_proxy && l->nsocks > 0 &&
			    strcmp(l->up->cfg->name, "chat") == 0 &&
			    strcmp(l->passthrough->cfg->name, "media") == 0) {
				media = chat;
				break;
			}
		}
	}
	return link_format(g->cfg->public_host, chat, media, tls, buf, len);
}

static QRcode *
encode(const char *text)
{
	return QRcode_encodeString(text, 0, QR_ECLEVEL_M, QR_MODE_8, 1);
}

/* Module (x, y) of q, quiet zone included: true when dark. */
static bool
dark(const QRcode *q, int x, int y)
{
	x -= QR_QUIET;
	y -= QR_QUIET;
	if (x < 0 || y < 0 || x >= q->width || y >= q->width)
		return false;
	return q->data[y * q->width + x] & 1;
}

int
link_qr_terminal(const char *text, FILE *out)
{
	QRcode *q = encode(text);
	int size;

	if (q == NULL)
		return -1;
	size = q->width + 2 * QR_QUIET;
	/* Two rows of modules per line: upper and lower half blocks. */
	for (int y = 0; y < size; y += 2) {
		for (int x = 0; x < size; x++) {
			bool top = dark(q, x, y), bottom = dark(q, x, y + 1);

			fputs(top && bottom ? "\u2588"
			        : top       ? "\u2580"
			        : bottom    ? "\u2584"
			                    : " ",
			    out);
		}
		fputc('\n', out);
	}
	QRcode_free(q);
	return 0;
}

char *
link_qr_svg(const char *text)
{
	QRcode *q = encode(text);
	size_t cap, n;
	char *svg;
	int size;

	if (q == NULL)
		return NULL;
	size = q->width + 2 * QR_QUIET;
	cap = 256 + (size_t)q->width * (size_t)q->width * 40;
	svg = malloc(cap);
	if (svg == NULL) {
		QRcode_free(q);
		return NULL;
	}
	n = (size_t)snprintf(svg, cap,
	    "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %d %d\" "
	    "shape-rendering=\"crispEdges\"><rect width=\"%d\" height=\"%d\" "
	    "fill=\"#fff\"/><path fill=\"#000\" d=\"",
	    size, size, size, size);
	for (int y = 0; y < size; y++) {
		for (int x = 0; x < size; x++) {
			if (dark(q, x, y) && n < cap)
				n += (size_t)snprintf(
				    svg + n, cap - n, "M%d %dh1v1h-1z", x, y);
		}
	}
	if (n < cap)
		n += (size_t)snprintf(svg + n, cap - n, "\"/></svg>\n");
	QRcode_free(q);
	if (n >= cap) {
		free(svg);
		return NULL;
	}
	return svg;
}
