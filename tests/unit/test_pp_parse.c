/*
 * Unit tests for the PROXY header parser in proxyproto.c (pp_parse).
 *
 * Every vector, valid or not, goes through check_vec(), which also feeds
 * it split at every point: each prefix buf[0..k) is copied into a buffer of
 * exactly k bytes (so ASan sees any read past len) and must give NEED_MORE
 * until the final verdict, then that verdict (and the same header) for
 * every longer prefix, and for the vector followed by payload.  *out must
 * stay untouched unless the result is PP_OK.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "../pp_equal.h"
#include "proxyproto.h"

static const uint8_t sig[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Bytes after a header: a v2 signature, TLV-looking bytes, a v1 line. */
static const uint8_t payload[] =
    "\x03\x00\x04\xde\xad\xbe\xef"
    "\x01\xff\xff"
    "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
    "\x21\x11\xff\xff"
    "PROXY TCP4 010.0.0.1 1.2.3.4 1 2\r\n"
    "\0\r";

/* -- expected headers */

static void
want_none(struct pp_header *h, int version, size_t len, bool local)
{
	memset(h, 0, sizeof(*h));
	h->version = version;
	h->local = local;
	h->has_addr = false;
	h->len = len;
}

static void
set_sa(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(ip, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		if (inet_pton(AF_INET6, ip, &s6->sin6_addr) != 1)
			abort();
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		if (inet_pton(AF_INET, ip, &s4->sin_addr) != 1)
			abort();
	}
}

static void
want_addr(struct pp_header *h, int version, size_t len, const char *src,
    uint16_t sport, const char *dst, uint16_t dport)
{
	want_none(h, version, len, false);
	h->has_addr = true;
	set_sa(&h->src, src, sport);
	set_sa(&h->dst, dst, dport);
}

static void
print_sa(const char *what, const struct sockaddr_storage *ss)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		port = ntohs(s4->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		port = ntohs(s6->sin6_port);
	}
	fprintf(stderr, " %s=(family %d) %s port %u", what, ss->ss_family, ip,
	    port);
}

static void
print_hdr(const char *what, const struct pp_header *h)
{
	fprintf(stderr, "    %s: version %d local %d has_addr %d len %zu", what,
	    h->version, h->local, h->has_addr, h->len);
	if (h->has_addr) {
		print_sa("src", &h->src);
		print_sa("dst", &h->dst);
	}
	fprintf(stderr, "\n");
}

/* -- the parser, called on an exactly-sized copy */

static uint8_t sentinel[sizeof(struct pp_header)];

static enum pp_result
parse_copy(
    const uint8_t *buf, size_t len, struct pp_header *out, bool *untouched)
{
	uint8_t *copy = malloc(len > 0 ? len : 1);
	enum pp_result r;

	if (copy == NULL)
		abort();
	/* len 0: a pointer to one byte the parser must not read. */
	memcpy(copy, buf, len);
	memcpy(out, sentinel, sizeof(*out));
	r = pp_parse(len > 0 ? copy : copy + 1, len, out);
	*untouched = memcmp(out, sentinel, sizeof(*out)) == 0;
	free(copy);
	return r;
}

/*
 * The core check: buf (n bytes) must give `want` (and *want_hdr when
 * PP_OK), fed whole, split at every point, and followed by payload.
 */
static void
check_vec(const char *name, const uint8_t *buf, size_t n, enum pp_result want,
    const struct pp_header *want_hdr)
{
	struct pp_header out;
	enum pp_result r, prev = PP_NEED_MORE;
	uint8_t *ext;
	bool untouched, ok = true;
	size_t k, first = 0;

	/* Whole. */
	r = parse_copy(buf, n, &out, &untouched);
	if (r != want) {
		fprintf(stderr, "  [%s] whole (%zu bytes): got %s, want %s\n",
		    name, n, pp_result_str(r), pp_result_str(want));
		ok = false;
	} else if (r == PP_OK && !pp_header_equal(&out, want_hdr)) {
		fprintf(stderr, "  [%s] whole: wrong header\n", name);
		print_hdr("got ", &out);
		print_hdr("want", want_hdr);
		ok = false;
	} else if (r != PP_OK && !untouched) {
		fprintf(stderr, "  [%s] whole: out written on %s\n", name,
		    pp_result_str(r));
		ok = false;
	}
	CHECK(ok);

	/* Every prefix, k = 0..n. */
	ok = true;
	for (k = 0; k <= n && ok; k++) {
		r = parse_copy(buf, k, &out, &untouched);
		if (r != PP_NEED_MORE && prev == PP_NEED_MORE)
			first = k;
		if (prev != PP_NEED_MORE && r != prev) {
			fprintf(stderr,
			    "  [%s] prefix %zu: got %s after %s at %zu\n", name,
			    k, pp_result_str(r), pp_result_str(prev), first);
			ok = false;
		} else if (r != PP_NEED_MORE && r != want) {
			fprintf(stderr,
			    "  [%s] prefix %zu of %zu: got %s, want "
			    "need_more then %s\n",
			    name, k, n, pp_result_str(r), pp_result_str(want));
			ok = false;
		} else if (r == PP_OK && !pp_header_equal(&out, want_hdr)) {
			fprintf(stderr, "  [%s] prefix %zu: wrong header\n",
			    name, k);
			print_hdr("got ", &out);
			print_hdr("want", want_hdr);
			ok = false;
		} else if (r == PP_OK && k != want_hdr->len && prev != PP_OK) {
			fprintf(stderr,
			    "  [%s] ok at prefix %zu, header is %zu bytes\n",
			    name, k, want_hdr->len);
			ok = false;
		} else if (r != PP_OK && !untouched) {
			fprintf(stderr,
			    "  [%s] prefix %zu: out written on %s\n", name, k,
			    pp_result_str(r));
			ok = false;
		}
		prev = r;
	}
	if (ok && want != PP_NEED_MORE && prev != want) {
		fprintf(stderr, "  [%s] never reached %s\n", name,
		    pp_result_str(want));
		ok = false;
	}
	CHECK(ok);

	/* Followed by payload: same verdict, payload never looked at. */
	ext = malloc(n + sizeof(payload));
	if (ext == NULL)
		abort();
	memcpy(ext, buf, n);
	memcpy(ext + n, payload, sizeof(payload));
	ok = true;
	for (k = n; k <= n + sizeof(payload); k++) {
		r = parse_copy(ext, k, &out, &untouched);
		if (r != want ||
		    (r == PP_OK && !pp_header_equal(&out, want_hdr))) {
			fprintf(stderr,
			    "  [%s] with %zu payload bytes: got %s, want %s\n",
			    name, k - n, pp_result_str(r), pp_result_str(want));
			ok = false;
			break;
		}
	}
	free(ext);
	CHECK(ok);
}

/* want_hdr->len 0 stands for n: the whole vector is the header. */
static void
check_ok(const char *name, const uint8_t *buf, size_t n,
    const struct pp_header *want_hdr)
{
	struct pp_header w = *want_hdr;

	if (w.len == 0)
		w.len = n;
	check_vec(name, buf, n, PP_OK, &w);
}

static void
check_err(const char *name, const uint8_t *buf, size_t n, enum pp_result want)
{
	check_vec(name, buf, n, want, NULL);
}

/* The verdict must appear exactly once `at` bytes are in, not later. */
static void
check_first_at(const char *name, const uint8_t *buf, size_t n, size_t at,
    enum pp_result want)
{
	struct pp_header out;
	bool untouched;
	enum pp_result before, r;

	before =
	    at > 0 ? parse_copy(buf, at - 1, &out, &untouched) : PP_NEED_MORE;
	r = parse_copy(buf, at, &out, &untouched);
	if (before != PP_NEED_MORE || r != want)
		fprintf(stderr,
		    "  [%s] %zu bytes: %s, %zu bytes: %s; want need_more, "
		    "%s\n",
		    name, at - 1, pp_result_str(before), at, pp_result_str(r),
		    pp_result_str(want));
	CHECK(before == PP_NEED_MORE && r == want);
	(void)n;
}

#define S(lit) ((const uint8_t *)(lit)), (sizeof(lit) - 1)

/* -- v2 construction */

/* CRC32C (Castagnoli, reflected 0x82F63B78), bit by bit: obviously right. */
static uint32_t
crc32c(const uint8_t *p, size_t n)
{
	uint32_t c = 0xFFFFFFFFu;

	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int b = 0; b < 8; b++)
			c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
	}
	return c ^ 0xFFFFFFFFu;
}

/*
 * Writes a v2 header: signature, ver_cmd, fam, declared length `declared`,
 * then `body` (blen bytes, which may differ from `declared`).  Returns the
 * bytes written.
 */
static size_t
v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, uint16_t declared,
    const uint8_t *body, size_t blen)
{
	memcpy(out, sig, 12);
	out[12] = ver_cmd;
	out[13] = fam;
	out[14] = (uint8_t)(declared >> 8);
	out[15] = (uint8_t)declared;
	if (blen > 0)
		memcpy(out + 16, body, blen);
	return 16 + blen;
}

/* 192.0.2.1:56324 -> 198.51.100.7:443 */
static const uint8_t body4[12] = {
    192, 0, 2, 1, 198, 51, 100, 7, 0xDC, 0x04, 0x01, 0xBB};
/* [2001:db8::1]:1 -> [2001:db8::ff:2]:65535 */
static const uint8_t body6[36] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1, 0x20, 0x01,
    0x0d,
    0xb8, [29] = 0xff, [31] = 2, [32] = 0, [33] = 1, [34] = 0xff, [35] = 0xff};

static size_t
tlv(uint8_t *out, uint8_t type, const void *val, uint16_t vlen)
{
	out[0] = type;
	out[1] = (uint8_t)(vlen >> 8);
	out[2] = (uint8_t)vlen;
	if (val != NULL)
		memcpy(out + 3, val, vlen);
	return 3 + (size_t)vlen;
}

/* IPv4 PROXY header with the given TLV bytes; returns its length. */
static size_t
v2_tlvs(uint8_t *out, const uint8_t *tlvs, size_t tlen)
{
	uint8_t body[PP_MAX_HEADER];

	memcpy(body, body4, 12);
	memcpy(body + 12, tlvs, tlen);
	return v2(out, 0x21, 0x11, (uint16_t)(12 + tlen), body, 12 + tlen);
}

/* -- the spec's own examples */

static void
test_spec_examples(void)
{
	struct pp_header h;
	uint8_t b[PP_MAX_HEADER + 64];
	size_t n;

	want_addr(&h, 1, 0, "192.168.0.1", 56324, "192.168.0.11", 443);
	check_ok("spec tcp4",
	    S("PROXY TCP4 192.168.0.1 192.168.0.11 56324 "
	      "443\r\n"),
	    &h);

	want_addr(&h, 1, 0, "255.255.255.255", 65535, "255.255.255.255", 65535);
	check_ok("spec tcp4 worst case",
	    S("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"),
	    &h);

	want_addr(&h, 1, 0, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
	check_ok("spec tcp6 worst case",
	    S("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
	    &h);

	want_none(&h, 1, 0, true);
	check_ok("spec unknown short", S("PROXY UNKNOWN\r\n"), &h);

	want_none(&h, 1, 107, true);
	check_ok("spec unknown worst case",
	    S("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
	    &h);

	/* The spec's v2 sizes: 16 + 12 (TCP4), 16 + 36 (TCP6), 16 + 216. */
	n = v2(b, 0x21, 0x11, 12, body4, 12);
	want_addr(&h, 2, 28, "192.0.2.1", 56324, "198.51.100.7", 443);
	check_ok("v2 tcp4", b, n, &h);

	n = v2(b, 0x21, 0x21, 36, body6, 36);
	want_addr(&h, 2, 52, "2001:db8::1", 1, "2001:db8::ff:2", 65535);
	check_ok("v2 tcp6", b, n, &h);

	memset(b + 16, 'u', 216);
	n = v2(b, 0x21, 0x31, 216, b + 16, 216);
	want_none(&h, 2, 232, false);
	check_ok("v2 unix stream", b, n, &h);
	n = v2(b, 0x21, 0x32, 216, b + 16, 216);
	check_ok("v2 unix dgram", b, n, &h);

	n = v2(b, 0x21, 0x00, 0, NULL, 0);
	want_none(&h, 2, 16, false);
	check_ok("v2 proxy unspec", b, n, &h);

	n = v2(b, 0x20, 0x00, 0, NULL, 0);
	want_none(&h, 2, 16, true);
	check_ok("v2 local", b, n, &h);
}

/* -- regressions, one per past-bug class (REFERENCE.md section 5) */

static void
test_regressions(void)
{
	struct pp_header h;
	uint8_t b[PP_MAX_HEADER + 64], t[64];
	size_t n, tn;

	/* v2 length shorter than the address block: certain at 16 bytes. */
	n = v2(b, 0x21, 0x11, 11, body4, 12);
	check_err("v2 len 11 < 12 (tcp4)", b, n, PP_ERR_V2_LENGTH);
	check_first_at("v2 len 11 at 16", b, n, 16, PP_ERR_V2_LENGTH);
	n = v2(b, 0x21, 0x21, 35, body6, 36);
	check_err("v2 len 35 < 36 (tcp6)", b, n, PP_ERR_V2_LENGTH);
	n = v2(b, 0x21, 0x21, 12, body6, 12);
	check_err("v2 len 12 < 36 (tcp6)", b, n, PP_ERR_V2_LENGTH);
	memset(b + 16, 'u', 216);
	n = v2(b, 0x21, 0x31, 215, b + 16, 215);
	check_err("v2 len 215 < 216 (unix)", b, n, PP_ERR_V2_LENGTH);
	check_first_at("v2 unix len 215 at 16", b, n, 16, PP_ERR_V2_LENGTH);

	/* v2 length 0 with an address family. */
	n = v2(b, 0x21, 0x11, 0, NULL, 0);
	check_err("v2 len 0 tcp4", b, n, PP_ERR_V2_LENGTH);
	check_first_at("v2 len 0 tcp4 at 16", b, n, 16, PP_ERR_V2_LENGTH);
	n = v2(b, 0x21, 0x21, 0, NULL, 0);
	check_err("v2 len 0 tcp6", b, n, PP_ERR_V2_LENGTH);

	/* Payload in the same read must not be parsed as TLVs. */
	n = v2(b, 0x21, 0x11, 12, body4, 12);
	memcpy(b + n, "\x01\xff\xff", 3); /* a TLV that would overrun */
	want_addr(&h, 2, 28, "192.0.2.1", 56324, "198.51.100.7", 443);
	{
		struct pp_header out;
		bool untouched;

		CHECK_INT(parse_copy(b, n + 3, &out, &untouched), PP_OK);
		CHECK_INT(out.len, 28);
		CHECK(pp_header_equal(&out, &h));
		/* A CRC TLV in the payload is not checked either. */
		n = v2(b, 0x21, 0x11, 12, body4, 12);
		memcpy(b + n, "\x03\x00\x04\x00\x00\x00\x00", 7);
		CHECK_INT(parse_copy(b, n + 7, &out, &untouched), PP_OK);
		CHECK_INT(out.len, 28);
	}
	check_ok("v2 tcp4 then TLV-like payload", b, n, &h);

	/* TLV length beyond the header. */
	tn = tlv(t, 0x01, "h2", 2);
	t[2] = 3; /* declares 3 value bytes, 2 present */
	n = v2_tlvs(b, t, tn);
	check_err("v2 TLV value past the header", b, n, PP_ERR_V2_TLV);
	n = v2_tlvs(b, (const uint8_t *)"\x04\xff\xff", 3);
	check_err("v2 TLV len 65535", b, n, PP_ERR_V2_TLV);
	n = v2_tlvs(b, (const uint8_t *)"\x04", 1);
	check_err("v2 TLV header 1 byte", b, n, PP_ERR_V2_TLV);
	n = v2_tlvs(b, (const uint8_t *)"\x04\x00", 2);
	check_err("v2 TLV header 2 bytes", b, n, PP_ERR_V2_TLV);
	tn = tlv(t, 0x04, NULL, 0);
	tn += tlv(t + tn, 0x02, "example.org", 11);
	t[tn - 11 - 1] = 12; /* the second TLV overruns by one */
	n = v2_tlvs(b, t, tn);
	check_err("v2 second TLV past the header", b, n, PP_ERR_V2_TLV);

	/* v1 read without a length bound: 10 KiB, no CRLF. */
	{
		size_t big = 10 * 1024;
		uint8_t *line = malloc(big);

		if (line == NULL)
			abort();
		memcpy(line, "PROXY UNKNOWN ", 14);
		memset(line + 14, 'A', big - 14);
		check_err(
		    "v1 10 KiB without CRLF", line, big, PP_ERR_V1_TOO_LONG);
		/* Certain once 107 bytes hold no CRLF. */
		check_first_at(
		    "v1 too long at 107", line, big, 107, PP_ERR_V1_TOO_LONG);
		free(line);
	}

	/* LOCAL with no addresses: no address, no crash. */
	n = v2(b, 0x20, 0x00, 0, NULL, 0);
	want_none(&h, 2, 16, true);
	check_ok("v2 LOCAL, no addresses", b, n, &h);

	/* Builder leaking extra bytes: out->len == built length. */
	{
		struct sockaddr_storage s, d;
		uint8_t hb[PP_BUILD_MAX + 32];
		struct pp_header out;
		bool untouched;
		ssize_t bn;

		set_sa(&s, "203.0.113.9", 40000);
		set_sa(&d, "192.0.2.80", 443);
		for (int v = PP_V1; v <= PP_V2; v++) {
			memset(hb, 'X', sizeof(hb));
			bn = pp_build((enum pp_version)v, (struct sockaddr *)&s,
			    (struct sockaddr *)&d, 0, hb, PP_BUILD_MAX);
			CHECK(bn > 0);
			CHECK_INT(parse_copy(hb, sizeof(hb), &out, &untouched),
			    PP_OK);
			CHECK_INT(out.len, bn);
			memset(hb, 'X', sizeof(hb));
			bn = pp_build((enum pp_version)v, NULL, NULL,
			    v == PP_V2, hb, PP_BUILD_MAX);
			CHECK(bn > 0);
			CHECK_INT(parse_copy(hb, sizeof(hb), &out, &untouched),
			    PP_OK);
			CHECK_INT(out.len, bn);
		}
	}

	/* IPv6 header parsed, both versions. */
	want_addr(&h, 1, 0, "2001:db8::1", 1, "2001:db8::ff:2", 65535);
	check_ok("v1 tcp6",
	    S("PROXY TCP6 2001:db8::1 2001:db8::ff:2 1 "
	      "65535\r\n"),
	    &h);
	want_addr(&h, 1, 0, "::1", 0, "::", 0);
	check_ok("v1 tcp6 short forms", S("PROXY TCP6 ::1 :: 0 0\r\n"), &h);
}

/* -- v1 */

static void
test_v1(void)
{
	struct pp_header h;
	uint8_t line[128];

	want_addr(&h, 1, 0, "0.0.0.0", 0, "10.0.0.1", 1);
	check_ok("v1 zeros", S("PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n"), &h);

	check_err(
	    "v1 not proxy (http)", S("GET / HTTP/1.1\r\n"), PP_ERR_NOT_PROXY);
	check_first_at(
	    "v1 not proxy at 1", S("GET / HTTP/1.1\r\n"), 1, PP_ERR_NOT_PROXY);
	check_err("v1 lower case", S("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
	    PP_ERR_NOT_PROXY);
	check_err("v1 PROXX", S("PROXX TCP4"), PP_ERR_NOT_PROXY);
	check_first_at("v1 PROXX at 5", S("PROXX TCP4"), 5, PP_ERR_NOT_PROXY);
	check_err("v1 PROXY without space", S("PROXY\r\n"), PP_ERR_NOT_PROXY);
	check_err("tls client hello", S("\x16\x03\x01\x02\x00\x01"),
	    PP_ERR_NOT_PROXY);
	check_err("whatsapp intro", S("WA\x06\x03"), PP_ERR_NOT_PROXY);
	check_err("NUL first", S("\0PROXY "), PP_ERR_NOT_PROXY);

	/* Addresses: canonical dotted quads only, right family. */
	check_err("v1 010.0.0.1", S("PROXY TCP4 010.0.0.1 10.0.0.2 1 2\r\n"),
	    PP_ERR_V1_ADDRESS);
	check_err("v1 dst 10.0.0.02",
	    S("PROXY TCP4 10.0.0.1 10.0.0.02 1 2\r\n"), PP_ERR_V1_ADDRESS);
	check_err("v1 256.0.0.1", S("PROXY TCP4 256.0.0.1 10.0.0.2 1 2\r\n"),
	    PP_ERR_V1_ADDRESS);
	check_err("v1 three octets", S("PROXY TCP4 1.2.3 10.0.0.2 1 2\r\n"),
	    PP_ERR_V1_ADDRESS);
	check_err("v1 five octets", S("PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n"),
	    PP_ERR_V1_ADDRESS);
	check_err("v1 hostname", S("PROXY TCP4 localhost 1.2.3.4 1 2\r\n"),
	    PP_ERR_V1_ADDRESS);
	check_err("v1 TCP4 with IPv6", S("PROXY TCP4 ::1 ::1 1 2\r\n"),
	    PP_ERR_V1_ADDRESS);
	check_err("v1 TCP6 with IPv4", S("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"),
	    PP_ERR_V1_ADDRESS);
	check_err("v1 TCP6 bad", S("PROXY TCP6 2001:db8:::1 ::1 1 2\r\n"),
	    PP_ERR_V1_ADDRESS);
	check_err("v1 TCP6 too many groups",
	    S("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"), PP_ERR_V1_ADDRESS);

	/* Ports. */
	check_err("v1 port 65536", S("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"),
	    PP_ERR_V1_PORT);
	check_err("v1 dport 65536", S("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n"),
	    PP_ERR_V1_PORT);
	check_err("v1 port 080", S("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"),
	    PP_ERR_V1_PORT);
	check_err("v1 port 00", S("PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n"),
	    PP_ERR_V1_PORT);
	check_err("v1 port huge",
	    S("PROXY TCP4 1.2.3.4 5.6.7.8 1 18446744073709551617\r\n"),
	    PP_ERR_V1_PORT);
	check_err("v1 port -1", S("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"),
	    PP_ERR_V1_PORT);
	check_err("v1 port hex", S("PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n"),
	    PP_ERR_V1_PORT);

	/* Syntax. */
	check_err("v1 lone LF", S("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
	    PP_ERR_V1_SYNTAX);
	check_err("v1 lone CR", S("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n"),
	    PP_ERR_V1_SYNTAX);
	check_err("v1 CR CR LF", S("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n"),
	    PP_ERR_V1_SYNTAX);
	check_err("v1 LF after PROXY", S("PROXY \n"), PP_ERR_V1_SYNTAX);
	check_err("v1 double space after PROXY",
	    S("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), PP_ERR_V1_SYNTAX);
	check_err("v1 double space after TCP4",
	    S("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), PP_ERR_V1_SYNTAX);
	check_err(
	    "v1 NUL after PROXY", S("PROXY \0TCP4 1.2.3.4"), PP_ERR_V1_SYNTAX);
	check_err("v1 NUL after TCP4",
	    S("PROXY TCP4\0 1.2.3.4 5.6.7.8 1 2\r\n"), PP_ERR_V1_SYNTAX);
	check_err("v1 TCP5", S("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
	    PP_ERR_V1_SYNTAX);
	check_err("v1 UDP4", S("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
	    PP_ERR_V1_SYNTAX);
	check_err("v1 lower-case tcp4", S("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"),
	    PP_ERR_V1_SYNTAX);
	check_err(
	    "v1 missing everything", S("PROXY TCP4\r\n"), PP_ERR_V1_SYNTAX);
	check_err("v1 missing dport", S("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
	    PP_ERR_V1_SYNTAX);
	check_err("v1 missing ports", S("PROXY TCP4 1.2.3.4 5.6.7.8\r\n"),
	    PP_ERR_V1_SYNTAX);
	check_err("v1 extra field", S("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
	    PP_ERR_V1_SYNTAX);
	check_err("v1 empty", S("PROXY \r\n"), PP_ERR_V1_SYNTAX);

	/* Length: 107 bytes with CRLF is the maximum. */
	memcpy(line, "PROXY UNKNOWN ", 14);
	memset(line + 14, 'A', 91);
	memcpy(line + 105, "\r\n", 2);
	want_none(&h, 1, 107, true);
	check_ok("v1 unknown 107 bytes", line, 107, &h);
	memset(line + 14, 'A', 92);
	memcpy(line + 106, "\r\n", 2);
	check_err("v1 unknown 108 bytes", line, 108, PP_ERR_V1_TOO_LONG);
	memset(line + 14, 'A', 94);
	check_err("v1 108 bytes no CRLF", line, 108, PP_ERR_V1_TOO_LONG);
	/* CR as the 107th byte: its LF would be the 108th. */
	memset(line + 14, 'A', 92);
	line[106] = '\r';
	check_err("v1 CR at byte 107", line, 107, PP_ERR_V1_TOO_LONG);
	want_none(&h, 1, 0, true);
	check_ok("v1 unknown with addresses",
	    S("PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"), &h);
}

/* -- v2 */

static void
test_v2(void)
{
	struct pp_header h;
	uint8_t b[PP_MAX_HEADER + 64], t[PP_MAX_HEADER], junk[300];
	size_t n, tn;
	uint32_t crc;

	memset(junk, 0xA5, sizeof(junk));
	memset(b, 0, sizeof(b));

	/* Signature. */
	memcpy(b, sig, 12);
	b[11] = 0x0B;
	check_err("v2 bad signature", b, 16, PP_ERR_NOT_PROXY);
	check_first_at("v2 bad signature at 12", b, 16, 12, PP_ERR_NOT_PROXY);
	memcpy(b, sig, 12);
	b[4] = 'P';
	check_err("v2 bad signature byte 5", b, 12, PP_ERR_NOT_PROXY);

	/* Version and command nibbles, certain at 13 bytes. */
	n = v2(b, 0x11, 0x11, 12, body4, 12);
	check_err("v2 version 1", b, n, PP_ERR_V2_VERSION);
	check_first_at("v2 version 1 at 13", b, n, 13, PP_ERR_V2_VERSION);
	n = v2(b, 0x31, 0x11, 12, body4, 12);
	check_err("v2 version 3", b, n, PP_ERR_V2_VERSION);
	n = v2(b, 0x01, 0x11, 12, body4, 12);
	check_err("v2 version 0", b, n, PP_ERR_V2_VERSION);
	n = v2(b, 0x22, 0x11, 12, body4, 12);
	check_err("v2 command 2", b, n, PP_ERR_V2_COMMAND);
	check_first_at("v2 command 2 at 13", b, n, 13, PP_ERR_V2_COMMAND);
	n = v2(b, 0x2F, 0x11, 12, body4, 12);
	check_err("v2 command 15", b, n, PP_ERR_V2_COMMAND);

	/* Families, certain at 14 bytes. */
	n = v2(b, 0x21, 0x41, 12, body4, 12);
	check_err("v2 family 0x41", b, n, PP_ERR_V2_FAMILY);
	check_first_at("v2 family 0x41 at 14", b, n, 14, PP_ERR_V2_FAMILY);
	n = v2(b, 0x21, 0x12, 12, body4, 12);
	check_err("v2 UDP4", b, n, PP_ERR_V2_FAMILY);
	n = v2(b, 0x21, 0x22, 36, body6, 36);
	check_err("v2 UDP6", b, n, PP_ERR_V2_FAMILY);
	n = v2(b, 0x21, 0x13, 12, body4, 12);
	check_err("v2 family 0x13", b, n, PP_ERR_V2_FAMILY);
	n = v2(b, 0x21, 0x10, 12, body4, 12);
	check_err("v2 family 0x10", b, n, PP_ERR_V2_FAMILY);
	n = v2(b, 0x21, 0x01, 0, NULL, 0);
	check_err("v2 family 0x01", b, n, PP_ERR_V2_FAMILY);
	n = v2(b, 0x21, 0xFF, 12, body4, 12);
	check_err("v2 family 0xff", b, n, PP_ERR_V2_FAMILY);

	/* Declared length above PP_V2_MAX_LEN, certain at 16 bytes. */
	n = v2(b, 0x21, 0x11, 65535, junk, 100);
	check_err("v2 len 65535, 116 bytes sent", b, n, PP_ERR_V2_TOO_LONG);
	check_first_at("v2 len 65535 at 16", b, n, 16, PP_ERR_V2_TOO_LONG);
	n = v2(b, 0x21, 0x11, PP_V2_MAX_LEN + 1, junk, 20);
	check_err("v2 len max+1", b, n, PP_ERR_V2_TOO_LONG);
	check_first_at("v2 len max+1 at 16", b, n, 16, PP_ERR_V2_TOO_LONG);
	n = v2(b, 0x20, 0x00, 65535, junk, 20);
	check_err("v2 LOCAL len 65535", b, n, PP_ERR_V2_TOO_LONG);

	/* The longest header accepted: NOOP padding up to the maximum. */
	memcpy(t, body4, 12);
	tlv(t + 12, 0x04, NULL, PP_V2_MAX_LEN - 12 - 3);
	memset(t + 15, 0, PP_V2_MAX_LEN - 15);
	n = v2(b, 0x21, 0x11, PP_V2_MAX_LEN, t, PP_V2_MAX_LEN);
	want_addr(
	    &h, 2, PP_MAX_HEADER, "192.0.2.1", 56324, "198.51.100.7", 443);
	check_ok("v2 len max with NOOP", b, n, &h);

	/* LOCAL: family ignored, whole length skipped. */
	n = v2(b, 0x20, 0x00, 7, junk, 7);
	want_none(&h, 2, 23, true);
	check_ok("v2 LOCAL len 7", b, n, &h);
	n = v2(b, 0x20, 0x11, 12, body4, 12);
	want_none(&h, 2, 28, true);
	check_ok("v2 LOCAL with tcp4 block", b, n, &h);
	n = v2(b, 0x20, 0x41, 0, NULL, 0);
	want_none(&h, 2, 16, true);
	check_ok("v2 LOCAL family 0x41", b, n, &h);
	n = v2(b, 0x20, 0x12, 3, junk, 3);
	want_none(&h, 2, 19, true);
	check_ok("v2 LOCAL family UDP4 len 3", b, n, &h);
	n = v2(b, 0x20, 0x11, 0, NULL, 0);
	want_none(&h, 2, 16, true);
	check_ok("v2 LOCAL family tcp4 len 0", b, n, &h);
	n = v2(b, 0x20, 0x00, 300, junk, 300);
	want_none(&h, 2, 316, true);
	check_ok("v2 LOCAL len 300", b, n, &h);

	/* Valid TLVs. */
	want_addr(&h, 2, 0, "192.0.2.1", 56324, "198.51.100.7", 443);
	tn = tlv(t, 0x01, "h2", 2);
	n = v2_tlvs(b, t, tn);
	h.len = n;
	check_ok("v2 ALPN", b, n, &h);
	tn = tlv(t, 0x02, "relay.example.org", 17);
	n = v2_tlvs(b, t, tn);
	h.len = n;
	check_ok("v2 AUTHORITY", b, n, &h);
	tn = tlv(t, 0x04, NULL, 0);
	n = v2_tlvs(b, t, tn);
	h.len = n;
	check_ok("v2 NOOP empty", b, n, &h);
	tn = tlv(t, 0x04, "\0\0\0\0\0", 5);
	n = v2_tlvs(b, t, tn);
	h.len = n;
	check_ok("v2 NOOP 5", b, n, &h);
	tn = tlv(t, 0x05, "0123456789abcdef", 16);
	tn += tlv(t + tn, 0x20, "\x01\0\0\0\0", 5);
	tn += tlv(t + tn, 0xE0, "custom", 6);
	tn += tlv(t + tn, 0x30, "ns1", 3);
	n = v2_tlvs(b, t, tn);
	h.len = n;
	check_ok("v2 UNIQUE_ID SSL custom NETNS", b, n, &h);
	tn = tlv(t, 0x01, "http/1.1", 8);
	tn += tlv(t + tn, 0x02, "example.com", 11);
	tn += tlv(t + tn, 0x04, "pad", 3);
	n = v2_tlvs(b, t, tn);
	h.len = n;
	check_ok("v2 ALPN AUTHORITY NOOP", b, n, &h);

	/* CRC32C, computed with its own field zeroed. */
	CHECK_INT(crc32c((const uint8_t *)"123456789", 9), 0xE3069283u);
	tn = tlv(t, 0x01, "h2", 2);
	tn += tlv(t + tn, 0x03, "\0\0\0\0", 4);
	n = v2_tlvs(b, t, tn);
	crc = crc32c(b, n);
	b[n - 4] = (uint8_t)(crc >> 24);
	b[n - 3] = (uint8_t)(crc >> 16);
	b[n - 2] = (uint8_t)(crc >> 8);
	b[n - 1] = (uint8_t)crc;
	h.len = n;
	check_ok("v2 CRC32C right", b, n, &h);
	b[n - 1] ^= 0x01;
	check_err("v2 CRC32C wrong", b, n, PP_ERR_V2_CRC);
	b[n - 1] ^= 0x01;
	b[20] ^= 0x80; /* a header byte changed, checksum kept */
	check_err("v2 CRC32C over changed header", b, n, PP_ERR_V2_CRC);
	b[20] ^= 0x80;
	/* The CRC TLV first, then more TLVs after it. */
	tn = tlv(t, 0x03, "\0\0\0\0", 4);
	tn += tlv(t + tn, 0x02, "example.net", 11);
	n = v2_tlvs(b, t, tn);
	crc = crc32c(b, n);
	b[31] = (uint8_t)(crc >> 24);
	b[32] = (uint8_t)(crc >> 16);
	b[33] = (uint8_t)(crc >> 8);
	b[34] = (uint8_t)crc;
	h.len = n;
	check_ok("v2 CRC32C first", b, n, &h);
	memset(b + 31, 0, 4);
	check_err("v2 CRC32C zero", b, n, PP_ERR_V2_CRC);
	/* IPv6 with CRC. */
	memcpy(t, body6, 36);
	tlv(t + 36, 0x03, "\0\0\0\0", 4);
	n = v2(b, 0x21, 0x21, 43, t, 43);
	crc = crc32c(b, n);
	b[n - 4] = (uint8_t)(crc >> 24);
	b[n - 3] = (uint8_t)(crc >> 16);
	b[n - 2] = (uint8_t)(crc >> 8);
	b[n - 1] = (uint8_t)crc;
	want_addr(&h, 2, 59, "2001:db8::1", 1, "2001:db8::ff:2", 65535);
	check_ok("v2 tcp6 CRC32C", b, n, &h);
}

/* -- parse(build(x)) == x */

static void
roundtrip(const char *name, enum pp_version v, const char *src, uint16_t sport,
    const char *dst, uint16_t dport, int local, const struct pp_header *want)
{
	struct sockaddr_storage s, d;
	uint8_t b[PP_BUILD_MAX];
	ssize_t n;

	if (src != NULL)
		set_sa(&s, src, sport);
	if (dst != NULL)
		set_sa(&d, dst, dport);
	n = pp_build(v, src ? (struct sockaddr *)&s : NULL,
	    dst ? (struct sockaddr *)&d : NULL, local, b, sizeof(b));
	CHECK(n > 0);
	if (n <= 0)
		return;
	{
		struct pp_header w = *want;

		w.len = (size_t)n;
		check_ok(name, b, (size_t)n, &w);
	}
}

static void
test_roundtrip(void)
{
	struct pp_header h;

	for (int v = PP_V1; v <= PP_V2; v++) {
		enum pp_version pv = (enum pp_version)v;

		want_addr(&h, v, 0, "192.0.2.1", 56324, "198.51.100.7", 443);
		roundtrip("rt ipv4", pv, "192.0.2.1", 56324, "198.51.100.7",
		    443, 0, &h);
		want_addr(&h, v, 0, "0.0.0.0", 0, "255.255.255.255", 65535);
		roundtrip("rt ipv4 extremes", pv, "0.0.0.0", 0,
		    "255.255.255.255", 65535, 0, &h);
		want_addr(&h, v, 0, "2001:db8::1", 1, "2001:db8::2", 8443);
		roundtrip("rt ipv6", pv, "2001:db8::1", 1, "2001:db8::2", 8443,
		    0, &h);
		want_addr(&h, v, 0, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
		    65535, "::", 0);
		roundtrip("rt ipv6 extremes", pv,
		    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, "::", 0,
		    0, &h);
		want_addr(&h, v, 0, "::1", 5000, "fe80::1", 80);
		roundtrip(
		    "rt ipv6 loopback", pv, "::1", 5000, "fe80::1", 80, 0, &h);
		/* v4-mapped comes back as IPv4. */
		want_addr(&h, v, 0, "192.0.2.1", 5000, "198.51.100.7", 443);
		roundtrip("rt v4-mapped", pv, "::ffff:192.0.2.1", 5000,
		    "::ffff:198.51.100.7", 443, 0, &h);
		roundtrip("rt v4-mapped src only", pv, "::ffff:192.0.2.1", 5000,
		    "198.51.100.7", 443, 0, &h);
		/* Unknown: v1 UNKNOWN (local), v2 PROXY AF_UNSPEC. */
		want_none(&h, v, 0, v == PP_V1);
		roundtrip("rt unknown", pv, NULL, 0, NULL, 0, 0, &h);
		roundtrip("rt mixed families", pv, "192.0.2.1", 1,
		    "2001:db8::2", 2, 0, &h);
		roundtrip("rt src only", pv, "192.0.2.1", 1, NULL, 0, 0, &h);
		/* LOCAL: v2 LOCAL; v1 has none and says UNKNOWN. */
		want_none(&h, v, 0, true);
		roundtrip(
		    "rt local", pv, "192.0.2.1", 1, "192.0.2.2", 2, 1, &h);
		roundtrip("rt local no addresses", pv, NULL, 0, NULL, 0, 1, &h);
	}
}

static void
test_result_str(void)
{
	const char *seen[PP_ERR_V2_CRC + 1];

	CHECK_STR(pp_result_str(PP_NEED_MORE), "need_more");
	CHECK_STR(pp_result_str(PP_OK), "ok");
	CHECK_STR(pp_result_str(PP_ERR_V2_TLV), "v2_tlv");
	for (int r = PP_NEED_MORE; r <= PP_ERR_V2_CRC; r++) {
		seen[r] = pp_result_str((enum pp_result)r);
		CHECK(seen[r] != NULL && seen[r][0] != '\0');
		for (int q = 0; q < r; q++)
			CHECK(seen[q] == NULL || seen[r] == NULL ||
			    strcmp(seen[q], seen[r]) != 0);
	}
}

int
main(void)
{
	memset(sentinel, 0xA5, sizeof(sentinel));
	test_result_str();
	test_spec_examples();
	test_regressions();
	test_v1();
	test_v2();
	test_roundtrip();
	return h_report("test_pp_parse");
}
