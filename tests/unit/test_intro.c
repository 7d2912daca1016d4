/*
 * Unit tests for intro.c: WhatsApp intros in every shape and piece, and
 * the probes that must never pass for one.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "intro.h"

/* Noise header WA 6.3 and a first frame of 0x40 bytes (the frame itself). */
static const uint8_t wa63[] = {'W', 'A', 6, 3, 0x00, 0x00, 0x40, 0x12, 0x3e};
/* ED prologue with 4 bytes of routing info, then the same header. */
static const uint8_t ed[] = {'E', 'D', 0, 1, 0, 0, 4, 0x08, 0x02, 0x10, 0x01,
    'W', 'A', 6, 3, 0x00, 0x00, 0x40, 0x12};

/* Every proper prefix says MORE; the whole says want; and so does every
 * longer buffer. */
static void
check_pieces(const uint8_t *p, size_t len, size_t decides,
    enum intro_verdict want, const char *what)
{
	for (size_t n = 0; n < decides; n++) {
		if (intro_classify(p, n) != INTRO_MORE) {
			fprintf(
			    stderr, "%s: prefix %zu decided early\n", what, n);
			CHECK(0);
			return;
		}
	}
	for (size_t n = decides; n <= len; n++) {
		if (intro_classify(p, n) != want) {
			fprintf(stderr, "%s: %zu bytes: %s\n", what, n,
			    intro_verdict_str(intro_classify(p, n)));
			CHECK(0);
			return;
		}
	}
	CHECK(1);
}

static void
test_intros(void)
{
	uint8_t big[7 + INTRO_ROUTING_MAX + 7];

	check_pieces(wa63, sizeof(wa63), 7, INTRO_WHATSAPP, "WA 6.3");
	check_pieces(ed, sizeof(ed), 18, INTRO_WHATSAPP, "ED + WA 6.3");
	/* Older apps: WA 5.2. */
	CHECK_INT(intro_classify((const uint8_t *)"WA\x05\x02\x00\x00\x20", 7),
	    INTRO_WHATSAPP);
	/* An empty routing block: the header follows at once. */
	CHECK_INT(
	    intro_classify(
	        (const uint8_t *)"ED\x00\x01\x00\x00\x00WA\x06\x03\x00\x01\x00",
	        14),
	    INTRO_WHATSAPP);
	/* The longest routing info accepted, and one byte more. */
	memset(big, 0x55, sizeof(big));
	memcpy(big, "ED\x00\x01", 4);
	big[4] = (INTRO_ROUTING_MAX >> 16) & 0xff;
	big[5] = (INTRO_ROUTING_MAX >> 8) & 0xff;
	big[6] = INTRO_ROUTING_MAX & 0xff;
	big[7] = 0x08;
	memcpy(big + 7 + INTRO_ROUTING_MAX, "WA\x06\x03\x00\x00\x10", 7);
	CHECK_INT(sizeof(big), INTRO_MAX);
	check_pieces(big, sizeof(big), sizeof(big), INTRO_WHATSAPP, "longest");
	big[6]++;
	CHECK_INT(intro_classify(big, 7), INTRO_OTHER);
	/* The largest first frame, and one more. */
	CHECK_INT(intro_classify((const uint8_t *)"WA\x06\x03\x00\xff\xff", 7),
	    INTRO_WHATSAPP);
	CHECK_INT(intro_classify((const uint8_t *)"WA\x06\x03\x01\x00\x00", 7),
	    INTRO_OTHER);
}

static void
test_probes(void)
{
	static const struct {
		const char *bytes;
		size_t len;
		enum intro_verdict want;
	} cases[] = {
	    {"GET / HTTP/1.1\r\n", 16, INTRO_OTHER},
	    {"HEAD / HTTP/1.0\r\n\r\n", 19, INTRO_OTHER},
	    {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24, INTRO_OTHER},
	    {"\x16\x03\x01\x02\x00\x01", 6, INTRO_OTHER}, /* a ClientHello */
	    {"SSH-2.0-OpenSSH_9.2\r\n", 21, INTRO_OTHER},
	    {"\x00", 1, INTRO_OTHER},
	    {"W", 1, INTRO_MORE},
	    {"WA", 2, INTRO_MORE}, /* WA alone: waits, then the decoy's */
	    {"WB", 2, INTRO_OTHER},
	    {"WA\x00", 3, INTRO_OTHER}, /* version 0 */
	    {"WA\x10", 3, INTRO_OTHER}, /* version 16 */
	    {"WA\x06\x10", 4, INTRO_OTHER},
	    {"WA\x06\x03\x00\x00\x00", 7, INTRO_OTHER}, /* empty frame */
	    {"E", 1, INTRO_MORE},
	    {"ED", 2, INTRO_MORE},
	    {"ED\x00", 3, INTRO_MORE}, /* a partial prologue waits */
	    {"EHLO x\r\n", 8, INTRO_OTHER},
	    {"ED\x01", 3, INTRO_OTHER},
	    {"ED\x00\x02", 4, INTRO_OTHER},
	    {"ED\x00\x01\x00\x00\x04\x07", 8, INTRO_OTHER}, /* not protobuf */
	    {"ED\x00\x01\x00\x00\x01\x08GA", 10, INTRO_OTHER},
	    {"ED\x00\x01\x00\x00\x01\x08W", 9, INTRO_MORE},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum intro_verdict v = intro_classify(
		    (const uint8_t *)cases[i].bytes, cases[i].len);

		if (v != cases[i].want)
			fprintf(stderr, "case %zu: %s, want %s\n", i,
			    intro_verdict_str(v),
			    intro_verdict_str(cases[i].want));
		CHECK_INT(v, cases[i].want);
	}
}

/* Decided answers never change with more bytes; MORE never beyond MAX. */
static void
test_stable(void)
{
	uint8_t buf[INTRO_MAX + 16];
	uint32_t x = 12345;
	int unstable = 0, undecided = 0;

	for (int round = 0; round < 20000; round++) {
		enum intro_verdict first = INTRO_MORE;
		size_t decided = 0;
		bool stable = true;

		for (size_t i = 0; i < sizeof(buf); i++) {
			x = x * 1103515245 + 12345;
			buf[i] = (uint8_t)(x >> 16);
		}
		/* Bias towards the interesting prefixes. */
		if (round % 3 == 0)
			memcpy(buf, "ED\x00\x01\x00\x00", 6);
		else if (round % 3 == 1)
			memcpy(buf, "WA\x06\x03", 4);
		for (size_t n = 0; n <= sizeof(buf); n++) {
			enum intro_verdict v = intro_classify(buf, n);

			if (first == INTRO_MORE) {
				first = v;
				decided = n;
			} else if (v != first) {
				stable = false;
			}
		}
		unstable += !stable;
		undecided += first == INTRO_MORE || decided > INTRO_MAX;
	}
	/* One assertion each over the 20,000 rounds. */
	CHECK_INT(unstable, 0);
	CHECK_INT(undecided, 0);
}

int
main(void)
{
	test_intros();
	test_probes();
	test_stable();
	return h_report("test_intro");
}
