/*
 * link: the share link people type or scan into WhatsApp's proxy settings,
 * https://wa.me/proxy?host=H&chatPort=N&mediaPort=N&chatTLS=true|false,
 * and its QR code (libqrencode) for terminals and web pages.
 */
#ifndef LIFELINE_LINK_H
#define LIFELINE_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct gen;

/* True when host may go into a link: a name or address, no URL syntax. */
bool link_host_valid(const char *host);

/* Writes the link into buf; returns 0, or -1 when it does not fit. */
int link_format(const char *host, uint16_t chat_port, uint16_t media_port,
    bool chat_tls, char *buf, size_t len);

/*
 * The link for generation g: public-host with the ports and TLS of its
 * chat and media listeners.  Returns 0, or -1 without public-host.
 */
int link_for_gen(const struct gen *g, char *buf, size_t len);

/* Draws text's QR code with Unicode half blocks.  Returns 0 or -1. */
int link_qr_terminal(const char *text, FILE *out);

/* text's QR code as an SVG document (malloc'd), or NULL. */
char *link_qr_svg(const char *text);

#endif
