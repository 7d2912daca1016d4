/*
 * hello: the server name of a TLS ClientHello, read before anything
 * answers it (camouflage on a TLS listener: WhatsApp's media pass through
 * untouched, plain bytes go to the decoy's own TLS port).  Pure functions,
 * no I/O.
 *
 * Like the PROXY header parser, hello_parse() is stateless: it is fed
 * every byte received so far, from the first, and says whether they hold
 * a whole ClientHello, could still become one (then how many bytes it
 * needs before it can say more: the caller waits for that many instead of
 * parsing again at every segment), or never will.  The ClientHello may
 * span TLS records and TCP segments (post-quantum key shares make it
 * larger than one segment); it is bounded by HELLO_MSG_MAX.
 */
#ifndef LIFELINE_HELLO_H
#define LIFELINE_HELLO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest ClientHello message accepted (its 4-byte header excluded). */
#define HELLO_MSG_MAX 16384
/* Longest TLS record (RFC 8446 5.1). */
#define HELLO_RECORD_MAX 16384
/*
 * Most bytes hello_parse may need: the message in records of one byte
 * each would be 6 bytes per byte; real clients use one or two records.
 * The caller bounds what it reads at HELLO_READ_MAX: a ClientHello that
 * needs more is treated as one the parser cannot read (HELLO_BAD).
 */
#define HELLO_READ_MAX (HELLO_MSG_MAX + 4 + 5 * 8)

enum hello_result {
	HELLO_MORE = 0, /* a prefix of a ClientHello: see *need */
	HELLO_OK, /* a whole ClientHello: see hello_info */
	HELLO_NOT_TLS, /* the first bytes are not a TLS handshake record */
	HELLO_BAD, /* TLS, but no ClientHello this parser can read */
};

struct hello_info {
	bool has_sni; /* a host_name server name, valid as a DNS name */
	char sni[256]; /* lower case, NUL-terminated */
};

/*
 * Parses p[0..len).  On HELLO_MORE, *need is the total number of bytes
 * (more than len) before another call can tell more; on HELLO_OK, *out is
 * filled (it is untouched otherwise).
 */
enum hello_result hello_parse(
    const uint8_t *p, size_t len, struct hello_info *out, size_t *need);

const char *hello_result_str(enum hello_result r);

/*
 * True when name (lower case) matches pattern: the same name, or, for
 * "*.example.net", any name ending in ".example.net" (one label or more).
 * Case-insensitive.
 */
bool hello_name_match(const char *pattern, const char *name);

/* True when s is a valid passthrough-sni pattern (see hello_name_match). */
bool hello_pattern_valid(const char *s);

#endif
