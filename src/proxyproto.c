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
			memcpy(out->bytes, sin6->sin6_addr.s6_addr + 12, 4);
		} else {
			out->family = AF_INET6;
			memcpy(out->bytes, sin6->sin6_addr.s6_addr, 16);
		}
	}
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
