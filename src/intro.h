/*
 * intro: does a connection begin like a WhatsApp client's chat stream?
 * A pure function over the first bytes (camouflage listeners, `decoy`).
 *
 * The chat stream (plain, or inside our TLS) opens with an optional
 * edge-routing prologue, "ED" 0x00 0x01, a 24-bit big-endian length L and
 * L bytes of routing info (a protobuf: first byte 0x08); then the Noise
 * header "WA" plus two version bytes (6, 3 today; 5, 2 from older apps);
 * then the first frame's 24-bit big-endian length.  Those bytes are
 * hashed into the Noise handshake: the caller forwards them untouched.
 *
 * Like the PROXY header parser, intro_classify() is stateless: it is fed
 * every byte received so far, from the first, and answers as soon as the
 * bytes decide.  Feeding the intro in any number of pieces gives the same
 * answer as feeding it whole, it never reads past len, and it never needs
 * more than INTRO_MAX bytes.
 */
#ifndef LIFELINE_INTRO_H
#define LIFELINE_INTRO_H

#include <stddef.h>
#include <stdint.h>

/* Longest routing info accepted in the prologue. */
#define INTRO_ROUTING_MAX 4096
/* Longest plausible first frame (the Noise ClientHello is ~100 bytes). */
#define INTRO_FRAME_MAX 65535
/* Bytes that always decide: prologue, routing info, header, frame length. */
#define INTRO_MAX (7 + INTRO_ROUTING_MAX + 4 + 3)

enum intro_verdict {
	INTRO_MORE = 0, /* a prefix of an intro: feed more */
	INTRO_WHATSAPP, /* a whole intro up to the first frame's length */
	INTRO_OTHER, /* can never become one */
};

enum intro_verdict intro_classify(const uint8_t *p, size_t len);
const char *intro_verdict_str(enum intro_verdict v);

#endif
