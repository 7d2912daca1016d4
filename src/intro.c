/*
 * intro: a WhatsApp chat stream's first bytes (intro.h).
 */
#include "intro.h"

static const uint8_t prologue[4] = {'E', 'D', 0x00, 0x01};

/* A protobuf's first field tag, as the routing info starts. */
#define ROUTING_FIRST 0x08

/*
 * The Noise header "WA" + version and the frame length at p[0..6], of
 * which len bytes are in.
 */
static enum intro_verdict
header(const uint8_t *p, size_t len)
{
	uint32_t frame;

	if (len < 1)
		return INTRO_MORE;
	if (p[0] != 'W')
		return INTRO_OTHER;
	if (len < 2)
		return INTRO_MORE;
	if (p[1] != 'A')
		return INTRO_OTHER;
	/* Version: a small major (1-15) and dictionary (0-15) number. */
	if (len < 3)
		return INTRO_MORE;
	if (p[2] == 0 || p[2] > 15)
		return INTRO_OTHER;
	if (len < 4)
		return INTRO_MORE;
	if (p[3] > 15)
		return INTRO_OTHER;
	if (len < 7)
		return INTRO_MORE;
	frame = (uint32_t)p[4] << 16 | (uint32_t)p[5] << 8 | p[6];
	if (frame == 0 || frame > INTRO_FRAME_MAX)
		return INTRO_OTHER;
	return INTRO_WHATSAPP;
}

enum intro_verdict
intro_classify(const uint8_t *p, size_t len)
{
	uint32_t routing;
	size_t off;

	if (len == 0)
		return INTRO_MORE;
	if (p[0] != prologue[0])
		return header(p, len);
	for (size_t i = 1; i < sizeof(prologue); i++) {
		if (len <= i)
			return INTRO_MORE;
		if (p[i] != prologue[i])
			return INTRO_OTHER;
	}
	if (len < 7)
		return INTRO_MORE;
	routing = (uint32_t)p[4] << 16 | (uint32_t)p[5] << 8 | p[6];
	if (routing > INTRO_ROUTING_MAX)
		return INTRO_OTHER;
	if (routing > 0) {
		if (len < 8)
			return INTRO_MORE;
		if (p[7] != ROUTING_FIRST)
			return INTRO_OTHER;
	}
	off = 7 + routing;
	if (len <= off)
		return INTRO_MORE;
	return header(p + off, len - off);
}

const char *
intro_verdict_str(enum intro_verdict v)
{
	switch (v) {
	case INTRO_MORE:
		return "more";
	case INTRO_WHATSAPP:
		return "whatsapp";
	case INTRO_OTHER:
		return "other";
	}
	return "?";
}
