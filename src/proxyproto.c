/*
 * proxyproto: the PROXY protocol (haproxy doc/proxy-protocol.txt).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "proxyproto.h"

static const uint8_t pp_v2_sig[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* An address reduced to what the header carries. */
struct pp_addr {
	int family; /* AF_INET, AF_INET6, or 0 when unusable */
	uint8_t bytes[16];
	uint16_t port; /* host order */
	bool mapped; /* bytes hold a v4-mapped IPv6 address, as IPv4 */
};

static void
pp_addr_from(const struct sockaddr *sa, struct pp_addr *out)
{
	memset(out, 0, sizeof(*out));
	if (sa == NULL)
		return;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		out->family = AF_INET;
		memcpy(out->bytes, &sin->sin_addr, 4);
		out->port = ntohs(sin->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)sa;

		out->port = ntohs(sin6->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
			out->family = AF_INET;
			out->mapped = true;
			memcpy(out->bytes, sin6->sin6_addr.s6_addr + 12, 4);
		} else {
			out->family = AF_INET6;
			memcpy(out->bytes, sin6->sin6_addr.s6_addr, 16);
		}
	}
}

/* Turns a v4-mapped address reduced to IPv4 back into IPv6. */
static void
pp_addr_unmap(struct pp_addr *a)
{
	if (!a->mapped)
		return;
	memmove(a->bytes + 12, a->bytes, 4);
	memset(a->bytes, 0, 10);
	a->bytes[10] = a->bytes[11] = 0xff;
	a->family = AF_INET6;
	a->mapped = false;
}

ssize_t
pp_build(enum pp_version v, const struct sockaddr *src,
    const struct sockaddr *dst, int local, uint8_t *buf, size_t len)
{
	struct pp_addr s, d;
	bool known;

	if (len < PP_BUILD_MAX)
		return -1;
	pp_addr_from(src, &s);
	pp_addr_from(dst, &d);
	/*
	 * A v4-mapped address beside a plain IPv6 one (a "TCP6" header from
	 * a dual-stack balancer): say both as IPv6 rather than lose them.
	 */
	if (s.family != d.family) {
		pp_addr_unmap(&s);
		pp_addr_unmap(&d);
	}
	known = s.family != 0 && s.family == d.family;

	if (v == PP_V1) {
		char sh[INET6_ADDRSTRLEN], dh[INET6_ADDRSTRLEN];
		int n;

		if (!known || local)
			n = snprintf((char *)buf, len, "PROXY UNKNOWN\r\n");
		else {
			inet_ntop(s.family, s.bytes, sh, sizeof(sh));
			inet_ntop(d.family, d.bytes, dh, sizeof(dh));
			n = snprintf((char *)buf, len,
			    "PROXY %s %s %s %u %u\r\n",
			    s.family == AF_INET ? "TCP4" : "TCP6", sh, dh,
			    s.port, d.port);
		}
		if (n < 0 || (size_t)n >= len)
			return -1;
		return n;
	}

	memcpy(buf, pp_v2_sig, sizeof(pp_v2_sig));
	if (local) {
		buf[12] = 0x20; /* version 2, LOCAL */
		buf[13] = 0x00; /* AF_UNSPEC */
		buf[14] = buf[15] = 0;
		return 16;
	}
	buf[12] = 0x21; /* version 2, PROXY */
	if (!known) {
		buf[13] = 0x00;
		buf[14] = buf[15] = 0;
		return 16;
	}
	if (s.family == AF_INET) {
		buf[13] = 0x11; /* TCP over IPv4 */
		buf[14] = 0;
		buf[15] = 12;
		memcpy(buf + 16, s.bytes, 4);
		memcpy(buf + 20, d.bytes, 4);
		buf[24] = (uint8_t)(s.port >> 8);
		buf[25] = (uint8_t)s.port;
		buf[26] = (uint8_t)(d.port >> 8);
		buf[27] = (uint8_t)d.port;
		return 28;
	}
	buf[13] = 0x21; /* TCP over IPv6 */
	buf[14] = 0;
	buf[15] = 36;
	memcpy(buf + 16, s.bytes, 16);
	memcpy(buf + 32, d.bytes, 16);
	buf[48] = (uint8_t)(s.port >> 8);
	buf[49] = (uint8_t)s.port;
	buf[50] = (uint8_t)(d.port >> 8);
	buf[51] = (uint8_t)d.port;
	return 52;
}

/* Parser. */

static const char pp_v1_sig[6] = {'P', 'R', 'O', 'X', 'Y', ' '};

#define PP_TLV_CRC32C 0x03

const char *
pp_result_str(enum pp_result r)
{
	switch (r) {
	case PP_NEED_MORE:
		return "need_more";
	case PP_OK:
		return "ok";
	case PP_ERR_NOT_PROXY:
		return "not_proxy";
	case PP_ERR_V1_TOO_LONG:
		return "v1_too_long";
	case PP_ERR_V1_SYNTAX:
		return "v1_syntax";
	case PP_ERR_V1_ADDRESS:
		return "v1_address";
	case PP_ERR_V1_PORT:
		return "v1_port";
	case PP_ERR_V2_VERSION:
		return "v2_version";
	case PP_ERR_V2_COMMAND:
		return "v2_command";
	case PP_ERR_V2_FAMILY:
		return "v2_family";
	case PP_ERR_V2_LENGTH:
		return "v2_length";
	case PP_ERR_V2_TOO_LONG:
		return "v2_too_long";
	case PP_ERR_V2_TLV:
		return "v2_tlv";
	case PP_ERR_V2_CRC:
		return "v2_crc";
	}
	return "?";
}

/* A token of a v1 line: [p, p + n). */
struct pp_tok {
	const uint8_t *p;
	size_t n;
};

/* Canonical dotted quad: four 0-255 without leading zeros. */
static bool
v1_ipv4(const struct pp_tok *t, uint8_t out[4])
{
	size_t i = 0;

	for (int octet = 0; octet < 4; octet++) {
		unsigned v = 0;
		size_t start = i;

		if (octet > 0) {
			if (i >= t->n || t->p[i] != '.')
				return false;
			start = ++i;
		}
		while (i < t->n && t->p[i] >= '0' && t->p[i] <= '9') {
			v = v * 10 + (unsigned)(t->p[i] - '0');
			if (++i - start > 3)
				return false;
		}
		if (i == start || v > 255 ||
		    (i - start > 1 && t->p[start] == '0'))
			return false;
		out[octet] = (uint8_t)v;
	}
	return i == t->n;
}

static bool
v1_ipv6(const struct pp_tok *t, uint8_t out[16])
{
	char tmp[INET6_ADDRSTRLEN];

	if (t->n == 0 || t->n >= sizeof(tmp))
		return false;
	if (memchr(t->p, ':', t->n) == NULL)
		return false;
	memcpy(tmp, t->p, t->n);
	tmp[t->n] = '\0';
	return inet_pton(AF_INET6, tmp, out) == 1;
}

static bool
v1_port(const struct pp_tok *t, uint16_t *port)
{
	unsigned v = 0;

	if (t->n == 0 || t->n > 5 || (t->n > 1 && t->p[0] == '0'))
		return false;
	for (size_t i = 0; i < t->n; i++) {
		if (t->p[i] < '0' || t->p[i] > '9')
			return false;
		v = v * 10 + (unsigned)(t->p[i] - '0');
	}
	if (v > 65535)
		return false;
	*port = (uint16_t)v;
	return true;
}

static void
set_sockaddr(
    struct sockaddr_storage *ss, int family, const uint8_t *addr, uint16_t port)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, addr, 4);
		sin->sin_port = htons(port);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, addr, 16);
		sin6->sin6_port = htons(port);
	}
}

/*
 * v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or "PROXY UNKNOWN...\r\n",
 * at most 107 bytes.  The line end is found first, scanning left to right,
 * so a prefix never gives an answer the whole would not.
 */
static enum pp_result
parse_v1(const uint8_t *buf, size_t len, struct pp_header *out)
{
	size_t n = len < sizeof(pp_v1_sig) ? len : sizeof(pp_v1_sig);
	size_t end = 0, lim = len < PP_V1_MAX ? len : PP_V1_MAX;
	struct pp_tok tok[5];
	size_t ntok = 0, i, start;
	uint8_t a[16], b[16];
	uint16_t sport, dport;
	int family;

	if (memcmp(buf, pp_v1_sig, n) != 0)
		return PP_ERR_NOT_PROXY;
	if (len < sizeof(pp_v1_sig))
		return PP_NEED_MORE;
	for (i = sizeof(pp_v1_sig); i < lim; i++) {
		if (buf[i] == '\0' || buf[i] == '\n')
			return PP_ERR_V1_SYNTAX;
		if (buf[i] != '\r')
			continue;
		if (i + 2 > PP_V1_MAX)
			return PP_ERR_V1_TOO_LONG;
		if (i + 1 == len)
			return PP_NEED_MORE;
		if (buf[i + 1] != '\n')
			return PP_ERR_V1_SYNTAX;
		end = i;
		break;
	}
	if (end == 0)
		return len >= PP_V1_MAX ? PP_ERR_V1_TOO_LONG : PP_NEED_MORE;

	if (end - sizeof(pp_v1_sig) >= 7 &&
	    memcmp(buf + sizeof(pp_v1_sig), "UNKNOWN", 7) == 0 &&
	    (end == sizeof(pp_v1_sig) + 7 ||
	        buf[sizeof(pp_v1_sig) + 7] == ' ')) {
		/* The receiver ignores whatever follows, up to CRLF. */
		memset(out, 0, sizeof(*out));
		out->version = 1;
		out->local = true;
		out->len = end + 2;
		return PP_OK;
	}

	/* Split [6, end) on single spaces; an empty token is an error. */
	start = sizeof(pp_v1_sig);
	for (i = start; i <= end; i++) {
		if (i < end && buf[i] != ' ')
			continue;
		if (i == start)
			return PP_ERR_V1_SYNTAX;
		if (ntok == sizeof(tok) / sizeof(tok[0]))
			return PP_ERR_V1_SYNTAX;
		tok[ntok].p = buf + start;
		tok[ntok].n = i - start;
		ntok++;
		start = i + 1;
	}
	if (tok[0].n == 4 && memcmp(tok[0].p, "TCP4", 4) == 0)
		family = AF_INET;
	else if (tok[0].n == 4 && memcmp(tok[0].p, "TCP6", 4) == 0)
		family = AF_INET6;
	else
		return PP_ERR_V1_SYNTAX;
	if (ntok != 5)
		return PP_ERR_V1_SYNTAX;
	if (family == AF_INET ? !v1_ipv4(&tok[1], a) || !v1_ipv4(&tok[2], b)
	                      : !v1_ipv6(&tok[1], a) || !v1_ipv6(&tok[2], b))
		return PP_ERR_V1_ADDRESS;
	if (!v1_port(&tok[3], &sport) || !v1_port(&tok[4], &dport))
		return PP_ERR_V1_PORT;
	memset(out, 0, sizeof(*out));
	out->version = 1;
	out->has_addr = true;
	set_sockaddr(&out->src, family, a, sport);
	set_sockaddr(&out->dst, family, b, dport);
	out->len = end + 2;
	return PP_OK;
}

/* CRC32C (Castagnoli), bit by bit: headers are small and checks rare. */
static uint32_t
crc32c(const uint8_t *p, size_t n, size_t zero_from, size_t zero_len)
{
	uint32_t crc = 0xFFFFFFFFu;

	for (size_t i = 0; i < n; i++) {
		bool zero = i >= zero_from && i < zero_from + zero_len;

		crc ^= zero ? 0u : p[i];
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
	}
	return crc ^ 0xFFFFFFFFu;
}

static enum pp_result
parse_v2(const uint8_t *buf, size_t len, struct pp_header *out)
{
	size_t n = len < sizeof(pp_v2_sig) ? len : sizeof(pp_v2_sig);
	size_t hlen, block = 0, end, p;
	unsigned cmd, fam;

	if (memcmp(buf, pp_v2_sig, n) != 0)
		return PP_ERR_NOT_PROXY;
	if (len < 13)
		return PP_NEED_MORE;
	if ((buf[12] >> 4) != 2)
		return PP_ERR_V2_VERSION;
	cmd = buf[12] & 0x0F;
	if (cmd > 1)
		return PP_ERR_V2_COMMAND;
	if (len < 14)
		return PP_NEED_MORE;
	fam = buf[13];
	if (cmd == 1) {
		switch (fam) {
		case 0x00:
			block = 0;
			break;
		case 0x11:
			block = 12;
			break;
		case 0x21:
			block = 36;
			break;
		case 0x31:
		case 0x32:
			block = 216;
			break;
		default:
			return PP_ERR_V2_FAMILY;
		}
	}
	if (len < 16)
		return PP_NEED_MORE;
	hlen = ((size_t)buf[14] << 8) | buf[15];
	if (hlen > PP_V2_MAX_LEN)
		return PP_ERR_V2_TOO_LONG;
	if (hlen < block)
		return PP_ERR_V2_LENGTH;
	end = 16 + hlen;
	if (len < end)
		return PP_NEED_MORE;

	/*
	 * TLVs follow a known address block.  LOCAL and UNSPEC say nothing
	 * reliable about what the length covers: skip it whole.
	 */
	if (cmd == 1 && fam != 0x00) {
		for (p = 16 + block; p < end;) {
			size_t tlen;

			if (end - p < 3)
				return PP_ERR_V2_TLV;
			tlen = ((size_t)buf[p + 1] << 8) | buf[p + 2];
			if (tlen > end - p - 3)
				return PP_ERR_V2_TLV;
			if (buf[p] == PP_TLV_CRC32C) {
				uint32_t want;

				if (tlen != 4)
					return PP_ERR_V2_TLV;
				want = ((uint32_t)buf[p + 3] << 24) |
				    ((uint32_t)buf[p + 4] << 16) |
				    ((uint32_t)buf[p + 5] << 8) | buf[p + 6];
				if (crc32c(buf, end, p + 3, 4) != want)
					return PP_ERR_V2_CRC;
			}
			p += 3 + tlen;
		}
	}

	memset(out, 0, sizeof(*out));
	out->version = 2;
	out->len = end;
	out->local = cmd == 0;
	if (cmd == 1 && fam == 0x11) {
		out->has_addr = true;
		set_sockaddr(&out->src, AF_INET, buf + 16,
		    (uint16_t)((buf[24] << 8) | buf[25]));
		set_sockaddr(&out->dst, AF_INET, buf + 20,
		    (uint16_t)((buf[26] << 8) | buf[27]));
	} else if (cmd == 1 && fam == 0x21) {
		out->has_addr = true;
		set_sockaddr(&out->src, AF_INET6, buf + 16,
		    (uint16_t)((buf[48] << 8) | buf[49]));
		set_sockaddr(&out->dst, AF_INET6, buf + 32,
		    (uint16_t)((buf[50] << 8) | buf[51]));
	}
	return PP_OK;
}

enum pp_result
pp_parse(const uint8_t *buf, size_t len, struct pp_header *out)
{
	if (len == 0)
		return PP_NEED_MORE;
	if (buf[0] == (uint8_t)pp_v1_sig[0])
		return parse_v1(buf, len, out);
	if (buf[0] == pp_v2_sig[0])
		return parse_v2(buf, len, out);
	return PP_ERR_NOT_PROXY;
}
