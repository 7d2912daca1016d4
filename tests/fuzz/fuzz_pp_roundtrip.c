/*
 * libFuzzer target: parse(build(x)) == x.
 *
 * The input chooses a version, the LOCAL flag and two addresses (none,
 * IPv4, IPv6 or v4-mapped IPv6, with ports); pp_build writes the header
 * and pp_parse must read back exactly what was meant: the same length, the
 * addresses (v4-mapped ones as IPv4, or as IPv6 beside a plain IPv6
 * address), UNKNOWN / AF_UNSPEC / LOCAL when the
 * addresses cannot be said.  The header is also fed one byte at a time
 * (NEED_MORE until the last byte) and followed by the rest of the input as
 * payload (never looked at).  A broken invariant prints and aborts.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A little reader over the input: zeros once it runs out. */
struct src {
	const uint8_t *p;
	size_t n;
};

static uint8_t
take(struct src *s)
{
	uint8_t b = 0;

	if (s->n > 0) {
		b = *s->p++;
		s->n--;
	}
	return b;
}

enum kind { K_NONE, K_V4, K_V6, K_MAPPED };

/* An address as meant, and as it should come back (family, bytes, port). */
struct addr {
	struct sockaddr_storage ss;
	int family; /* after v4-mapped reduction; 0: none */
	uint8_t bytes[16];
	uint16_t port;
	bool mapped; /* v4-mapped, reduced to IPv4 in bytes */
};

static void
make_addr(struct src *in, enum kind k, struct addr *a)
{
	memset(a, 0, sizeof(*a));
	if (k == K_NONE)
		return;
	a->port = (uint16_t)(take(in) << 8);
	a->port |= take(in);
	if (k == K_V4) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&a->ss;

		for (int i = 0; i < 4; i++)
			a->bytes[i] = take(in);
		s4->sin_family = AF_INET;
		s4->sin_port = htons(a->port);
		memcpy(&s4->sin_addr, a->bytes, 4);
		a->family = AF_INET;
	} else {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->ss;
		uint8_t b[16];

		for (int i = 0; i < 16; i++)
			b[i] = take(in);
		if (k == K_MAPPED) {
			memset(b, 0, 10);
			b[10] = b[11] = 0xff;
		}
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(a->port);
		s6->sin6_flowinfo = htonl(take(in));
		s6->sin6_scope_id = take(in);
		memcpy(&s6->sin6_addr, b, 16);
		if (b[0] == 0 && b[1] == 0 && b[2] == 0 && b[3] == 0 &&
		    b[4] == 0 && b[5] == 0 && b[6] == 0 && b[7] == 0 &&
		    b[8] == 0 && b[9] == 0 && b[10] == 0xff && b[11] == 0xff) {
			a->family = AF_INET;
			a->mapped = true;
			memcpy(a->bytes, b + 12, 4);
		} else {
			a->family = AF_INET6;
			memcpy(a->bytes, b, 16);
		}
	}
}

/* Beside a plain IPv6 address, a v4-mapped one stays IPv6. */
static void
unmap(struct addr *a)
{
	if (!a->mapped)
		return;
	memmove(a->bytes + 12, a->bytes, 4);
	memset(a->bytes, 0, 10);
	a->bytes[10] = a->bytes[11] = 0xff;
	a->family = AF_INET6;
	a->mapped = false;
}

static void
fail(const char *why, const struct pp_header *h, size_t n)
{
	fprintf(stderr,
	    "fuzz_pp_roundtrip: %s (built %zu bytes; parsed version %d "
	    "local %d has_addr %d len %zu)\n",
	    why, n, h->version, h->local, h->has_addr, h->len);
	abort();
}

static bool
addr_is(const struct sockaddr_storage *ss, const struct addr *a)
{
	if (ss->ss_family != a->family)
		return false;
	if (a->family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

		return ntohs(s4->sin_port) == a->port &&
		    memcmp(&s4->sin_addr, a->bytes, 4) == 0;
	}
	if (a->family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		return ntohs(s6->sin6_port) == a->port &&
		    memcmp(&s6->sin6_addr, a->bytes, 16) == 0;
	}
	return false;
}

static enum pp_result
parse_exact(const uint8_t *buf, size_t len, struct pp_header *out)
{
	uint8_t *copy = malloc(len > 0 ? len : 1);
	enum pp_result r;

	if (copy == NULL)
		abort();
	memcpy(copy, buf, len);
	memset(out, 0xA5, sizeof(*out));
	r = pp_parse(len > 0 ? copy : copy + 1, len, out);
	free(copy);
	return r;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct src in = {data, size};
	uint8_t ctl, hdr[PP_BUILD_MAX + 8], *ext;
	struct addr s, d;
	struct pp_header out, again;
	enum pp_version v;
	bool local, known;
	ssize_t n;

	ctl = take(&in);
	v = (ctl & 1) ? PP_V2 : PP_V1;
	local = (ctl & 2) != 0;
	make_addr(&in, (enum kind)((ctl >> 2) & 3), &s);
	make_addr(&in, (enum kind)((ctl >> 4) & 3), &d);
	if (s.family != d.family && s.family != 0 && d.family != 0) {
		unmap(&s);
		unmap(&d);
	}
	known = s.family != 0 && s.family == d.family;

	memset(hdr, 0xEE, sizeof(hdr));
	n = pp_build(v, s.family ? (struct sockaddr *)&s.ss : NULL,
	    d.family ? (struct sockaddr *)&d.ss : NULL, local, hdr,
	    PP_BUILD_MAX);
	memset(&out, 0, sizeof(out));
	if (n <= 0 || n > PP_BUILD_MAX)
		fail("pp_build failed", &out, (size_t)n);
	if (hdr[PP_BUILD_MAX] != 0xEE)
		fail("pp_build wrote past its buffer", &out, (size_t)n);
	if (v == PP_V1 && n > PP_V1_MAX)
		fail("v1 header over 107 bytes", &out, (size_t)n);
	/* A too small buffer is refused. */
	if (pp_build(v, NULL, NULL, 0, hdr + PP_BUILD_MAX, 1) != -1)
		fail("pp_build accepted a 1-byte buffer", &out, (size_t)n);

	if (parse_exact(hdr, (size_t)n, &out) != PP_OK)
		fail("built header does not parse", &out, (size_t)n);
	if (out.len != (size_t)n || out.version != (int)v)
		fail("wrong length or version", &out, (size_t)n);
	if (v == PP_V1 && (local || !known)) {
		if (!out.local || out.has_addr)
			fail("v1 UNKNOWN expected", &out, (size_t)n);
	} else if (v == PP_V2 && local) {
		if (!out.local || out.has_addr)
			fail("v2 LOCAL expected", &out, (size_t)n);
	} else if (!known) {
		if (out.local || out.has_addr)
			fail("v2 PROXY AF_UNSPEC expected", &out, (size_t)n);
	} else {
		if (out.local || !out.has_addr || !addr_is(&out.src, &s) ||
		    !addr_is(&out.dst, &d))
			fail("addresses differ", &out, (size_t)n);
	}

	/* Byte by byte: NEED_MORE until the header is whole. */
	for (ssize_t k = 0; k < n; k++) {
		if (parse_exact(hdr, (size_t)k, &again) != PP_NEED_MORE)
			fail("prefix not need_more", &out, (size_t)k);
	}

	/* The rest of the input follows as payload: same header. */
	ext = malloc((size_t)n + in.n + 1);
	if (ext == NULL)
		abort();
	memcpy(ext, hdr, (size_t)n);
	if (in.n > 0)
		memcpy(ext + n, in.p, in.n);
	if (parse_exact(ext, (size_t)n + in.n, &again) != PP_OK ||
	    again.len != out.len || again.has_addr != out.has_addr ||
	    again.local != out.local ||
	    (out.has_addr &&
	        (memcmp(&again.src, &out.src, sizeof(out.src)) ||
	            memcmp(&again.dst, &out.dst, sizeof(out.dst)))))
		fail("payload changed the header", &again, (size_t)n);
	free(ext);
	return 0;
}
