/*
 * libFuzzer target: pp_parse on arbitrary bytes.
 *
 * Input: one control byte, then the bytes a client sent.  The control byte
 * chooses where the stream is split (the stride of the prefixes fed); every
 * prefix is copied into a buffer of exactly its size, so ASan reports any
 * read past len.  Checked, besides memory safety:
 *   - whole vs. incremental: NEED_MORE for every prefix until the verdict,
 *     then the same verdict (and the same header) for every longer one;
 *   - an OK header is exactly out->len bytes: parsing just those gives the
 *     same header (payload after it is never looked at), the length is
 *     within the protocol's bounds, and the addresses survive a
 *     build/parse round trip;
 *   - *out is untouched unless the result is PP_OK.
 * A broken invariant prints the reason and aborts.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../pp_equal.h"
#include "proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fail(const char *why, size_t k, enum pp_result r, enum pp_result want)
{
	fprintf(stderr, "fuzz_pp_parse: %s (prefix %zu: %s, whole: %s)\n", why,
	    k, pp_result_str(r), pp_result_str(want));
	abort();
}

static uint8_t sentinel[sizeof(struct pp_header)];

/* pp_parse on an exactly-sized copy of buf[0..len). */
static enum pp_result
parse_exact(const uint8_t *buf, size_t len, struct pp_header *out)
{
	uint8_t *copy = malloc(len > 0 ? len : 1);
	enum pp_result r;

	if (copy == NULL)
		abort();
	memcpy(copy, buf, len);
	memcpy(out, sentinel, sizeof(*out));
	r = pp_parse(len > 0 ? copy : copy + 1, len, out);
	free(copy);
	if ((int)r < PP_NEED_MORE || (int)r > PP_ERR_V2_CRC)
		fail("result out of range", len, r, r);
	if (r != PP_OK && memcmp(out, sentinel, sizeof(*out)) != 0)
		fail("out written without PP_OK", len, r, r);
	return r;
}

/* An OK header must make sense on its own. */
static void
check_header(const uint8_t *buf, size_t n, const struct pp_header *h)
{
	if (h->len == 0 || h->len > n)
		fail("out->len outside the input", h->len, PP_OK, PP_OK);
	if (h->version == 1) {
		if (h->len > PP_V1_MAX || h->len < 15 || buf[0] != 'P' ||
		    buf[h->len - 2] != '\r' || buf[h->len - 1] != '\n')
			fail("bad v1 header bounds", h->len, PP_OK, PP_OK);
		if (memchr(buf, '\n', h->len - 1) != NULL)
			fail(
			    "v1 header with an inner LF", h->len, PP_OK, PP_OK);
		if (h->local == h->has_addr)
			fail("v1: local must mean UNKNOWN, no addresses",
			    h->len, PP_OK, PP_OK);
	} else if (h->version == 2) {
		size_t declared = ((size_t)buf[14] << 8) | buf[15];

		if (h->len < 16 || h->len > PP_MAX_HEADER ||
		    h->len != 16 + declared || buf[0] != 0x0D)
			fail("bad v2 header bounds", h->len, PP_OK, PP_OK);
		if (h->local != ((buf[12] & 0x0F) == 0))
			fail("v2 local flag vs command", h->len, PP_OK, PP_OK);
		if (h->has_addr !=
		    (!h->local && (buf[13] == 0x11 || buf[13] == 0x21)))
			fail("v2 addresses vs family", h->len, PP_OK, PP_OK);
	} else {
		fail("bad version", h->len, PP_OK, PP_OK);
	}
	if (h->has_addr) {
		if (h->local)
			fail("local with addresses", h->len, PP_OK, PP_OK);
		if (h->src.ss_family != h->dst.ss_family ||
		    (h->src.ss_family != AF_INET &&
		        h->src.ss_family != AF_INET6))
			fail("bad address families", h->len, PP_OK, PP_OK);
	}
}

/* An address as a header carries it: v4-mapped IPv6 reduced to IPv4. */
struct flat {
	int family;
	uint8_t bytes[16];
	uint16_t port; /* network order */
};

static void
flatten(const struct sockaddr_storage *ss, struct flat *f)
{
	memset(f, 0, sizeof(*f));
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

		f->family = AF_INET;
		memcpy(f->bytes, &s4->sin_addr, 4);
		f->port = s4->sin_port;
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		f->port = s6->sin6_port;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
			f->family = AF_INET;
			memcpy(f->bytes, s6->sin6_addr.s6_addr + 12, 4);
		} else {
			f->family = AF_INET6;
			memcpy(f->bytes, s6->sin6_addr.s6_addr, 16);
		}
	}
}

static bool
flat_eq(const struct flat *a, const struct flat *b)
{
	return a->family == b->family && a->port == b->port &&
	    memcmp(a->bytes, b->bytes, 16) == 0;
}

/*
 * The addresses survive pp_build then pp_parse, in both versions (v4-mapped
 * ones as IPv4).  When only one of them is v4-mapped the two families
 * differ once reduced, and the builder keeps both as IPv6 (TCP6).
 */
static void
check_rebuild(const struct pp_header *h)
{
	uint8_t b[PP_BUILD_MAX];
	struct pp_header again;
	struct flat fs, fd, gs, gd;
	bool same, kept;
	ssize_t n;

	if (!h->has_addr)
		return;
	flatten(&h->src, &fs);
	flatten(&h->dst, &fd);
	same = fs.family == fd.family;
	for (int v = PP_V1; v <= PP_V2; v++) {
		n = pp_build((enum pp_version)v,
		    (const struct sockaddr *)&h->src,
		    (const struct sockaddr *)&h->dst, 0, b, sizeof(b));
		if (n <= 0 || (size_t)n > sizeof(b))
			fail("rebuild failed", 0, PP_OK, PP_OK);
		if (parse_exact(b, (size_t)n, &again) != PP_OK ||
		    again.len != (size_t)n || !again.has_addr)
			fail("rebuild does not parse back", (size_t)n, PP_OK,
			    PP_OK);
		flatten(&again.src, &gs);
		flatten(&again.dst, &gd);
		if (same)
			kept = flat_eq(&fs, &gs) && flat_eq(&fd, &gd);
		else
			kept = pp_sa_equal(&again.src, &h->src) &&
			    pp_sa_equal(&again.dst, &h->dst);
		if (!kept)
			fail("rebuild changed the addresses", (size_t)n, PP_OK,
			    PP_OK);
	}
}

/* One prefix of the stream against the whole-input verdict. */
static void
check_prefix(const uint8_t *buf, size_t k, enum pp_result whole,
    const struct pp_header *wh)
{
	struct pp_header out;
	enum pp_result r = parse_exact(buf, k, &out);

	if (whole == PP_OK) {
		if (k < wh->len && r != PP_NEED_MORE)
			fail("short prefix of a valid header not need_more", k,
			    r, whole);
		if (k >= wh->len && (r != PP_OK || !pp_header_equal(&out, wh)))
			fail("prefix holding the header differs", k, r, whole);
	} else if (r != PP_NEED_MORE && r != whole) {
		fail("prefix verdict differs from the whole", k, r, whole);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pp_header whole_hdr, out;
	enum pp_result whole, r, prev;
	const uint8_t *buf;
	size_t n, stride, k;

	if (size < 1)
		return 0;
	memset(sentinel, 0xA5, sizeof(sentinel));
	stride = (size_t)data[0] + 1;
	buf = data + 1;
	n = size - 1;

	whole = parse_exact(buf, n, &whole_hdr);
	(void)pp_result_str(whole);
	if (whole == PP_OK) {
		check_header(buf, n, &whole_hdr);
		check_rebuild(&whole_hdr);
		/* Exactly the header, nothing after it: same answer. */
		if (parse_exact(buf, whole_hdr.len, &out) != PP_OK ||
		    !pp_header_equal(&out, &whole_hdr))
			fail("header alone parses differently", whole_hdr.len,
			    PP_ERR_NOT_PROXY, whole);
	}

	/*
	 * Incremental: every prefix up to 128 bytes (the whole v1 range and
	 * the v2 fixed part), then the fuzzer-chosen stride, then the
	 * points where a verdict can change.
	 */
	prev = PP_NEED_MORE;
	for (k = 0; k <= n && k <= 128; k++) {
		r = parse_exact(buf, k, &out);
		if (prev != PP_NEED_MORE && r != prev)
			fail("verdict changed as bytes arrived", k, r, prev);
		prev = r;
		check_prefix(buf, k, whole, &whole_hdr);
	}
	for (k = 129; k <= n; k += stride)
		check_prefix(buf, k, whole, &whole_hdr);
	if (whole == PP_OK) {
		check_prefix(buf, whole_hdr.len - 1, whole, &whole_hdr);
		check_prefix(buf, whole_hdr.len, whole, &whole_hdr);
	}
	return 0;
}
