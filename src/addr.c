/*
 * addr: socket address parsing and formatting, no I/O.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"

static const char *
parse_port(const char *s, uint16_t *port, bool allow_zero)
{
	unsigned long v = 0;

	if (*s == '\0')
		return "missing port";
	for (const char *p = s; *p != '\0'; p++) {
		if (*p < '0' || *p > '9')
			return "port is not a number";
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > 65535)
			return "port out of range (0-65535)";
	}
	if (v == 0 && !allow_zero)
		return "port 0 is not allowed here";
	*port = (uint16_t)v;
	return NULL;
}

const char *
addr_split(
    const char *s, char *host, size_t hostlen, uint16_t *port, bool allow_zero)
{
	const char *colon, *hs;
	size_t hl;

	if (s[0] == '[') {
		const char *end = strchr(s, ']');

		if (end == NULL)
			return "missing ']' after IPv6 address";
		if (end[1] != ':')
			return "missing ':PORT' after ']'";
		hs = s + 1;
		hl = (size_t)(end - hs);
		colon = end + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL)
			return "missing ':PORT'";
		if (memchr(s, ':', (size_t)(colon - s)) != NULL)
			return "IPv6 address must be written in brackets";
		hs = s;
		hl = (size_t)(colon - s);
	}
	if (hl == 0)
		return "missing host";
	if (hl >= hostlen)
		return "host name too long";
	memcpy(host, hs, hl);
	host[hl] = '\0';
	return parse_port(colon + 1, port, allow_zero);
}

const char *
addr_parse_numeric(const char *host, uint16_t port, struct sockaddr_storage *ss,
    socklen_t *len)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (strcmp(host, "*") == 0) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		*len = sizeof(*sin);
		return NULL;
	}
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		*len = sizeof(*sin);
		return NULL;
	}
	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		*len = sizeof(*sin6);
		return NULL;
	}
	return "not a numeric IPv4 or IPv6 address";
}

const char *
addr_cidr_parse(const char *s, struct addr_cidr *out)
{
	char host[INET6_ADDRSTRLEN];
	const char *slash = strchr(s, '/');
	size_t hl = slash != NULL ? (size_t)(slash - s) : strlen(s);
	unsigned max;

	if (hl == 0 || hl >= sizeof(host))
		return "not an address or CIDR block";
	memcpy(host, s, hl);
	host[hl] = '\0';
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, host, out->bytes) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, host, out->bytes) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		return "not a numeric IPv4 or IPv6 address";
	}
	out->prefix = max;
	if (slash != NULL) {
		unsigned long v = 0;
		const char *p = slash + 1;

		if (*p == '\0')
			return "missing prefix length after '/'";
		for (; *p != '\0'; p++) {
			if (*p < '0' || *p > '9')
				return "prefix length is not a number";
			v = v * 10 + (unsigned long)(*p - '0');
			if (v > max)
				return "prefix length too large";
		}
		out->prefix = (unsigned)v;
	}
	return NULL;
}

static bool
prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;

	if (memcmp(a, b, full) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a[full] ^ b[full]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

bool
addr_cidr_match(const struct addr_cidr *cidr, const struct sockaddr *sa)
{
	const uint8_t *bytes;
	int family = sa->sa_family;

	if (family == AF_INET) {
		bytes = (const uint8_t *)&((const struct sockaddr_in *)sa)
		            ->sin_addr;
	} else if (family == AF_INET6) {
		const struct in6_addr *a6 =
		    &((const struct sockaddr_in6 *)sa)->sin6_addr;

		bytes = a6->s6_addr;
		if (IN6_IS_ADDR_V4MAPPED(a6)) {
			family = AF_INET;
			bytes += 12;
		}
	} else {
		return false;
	}
	if (family != cidr->family)
		return false;
	return prefix_match(bytes, cidr->bytes, cidr->prefix);
}

bool
addr_is_loopback(const struct sockaddr *sa)
{
	const struct in6_addr *a6;

	if (sa->sa_family == AF_INET)
		return ((const uint8_t *)&((const struct sockaddr_in *)sa)
		               ->sin_addr)[0] == 127;
	if (sa->sa_family != AF_INET6)
		return false;
	a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
	return IN6_IS_ADDR_LOOPBACK(a6) ||
	    (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
}

/* b, four bytes of an IPv4 address in network order. */
static enum addr_scope
scope4(const uint8_t *b)
{
	if (b[0] == 127)
		return ADDR_SCOPE_LOOPBACK;
	if (b[0] == 10 || (b[0] == 172 && (b[1] & 0xf0) == 16) ||
	    (b[0] == 192 && b[1] == 168) ||
	    (b[0] == 100 && (b[1] & 0xc0) == 64) ||
	    (b[0] == 169 && b[1] == 254))
		return ADDR_SCOPE_PRIVATE;
	return ADDR_SCOPE_PUBLIC;
}

enum addr_scope
addr_scope(const struct sockaddr *sa)
{
	const uint8_t *b;

	if (sa->sa_family == AF_INET)
		return scope4((const uint8_t *)&((const struct sockaddr_in *)sa)
		                  ->sin_addr);
	if (sa->sa_family != AF_INET6)
		return ADDR_SCOPE_PUBLIC;
	b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
	if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)b))
		return scope4(b + 12);
	if (IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)b))
		return ADDR_SCOPE_LOOPBACK;
	if ((b[0] & 0xfe) == 0xfc || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80))
		return ADDR_SCOPE_PRIVATE;
	return ADDR_SCOPE_PUBLIC;
}

const char *
addr_scope_str(enum addr_scope s)
{
	switch (s) {
	case ADDR_SCOPE_LOOPBACK:
		return "loopback";
	case ADDR_SCOPE_PRIVATE:
		return "private";
	case ADDR_SCOPE_PUBLIC:
		return "public";
	}
	return "?";
}

void
addr_format(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else {
		snprintf(buf, len, "(family %d)", sa->sa_family);
	}
}

uint16_t
addr_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	if (sa->sa_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return 0;
}

void
addr_set_port(struct sockaddr *sa, uint16_t port)
{
	if (sa->sa_family == AF_INET)
		((struct sockaddr_in *)sa)->sin_port = htons(port);
	else if (sa->sa_family == AF_INET6)
		((struct sockaddr_in6 *)sa)->sin6_port = htons(port);
}

socklen_t
addr_len(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return sizeof(struct sockaddr_in);
	if (sa->sa_family == AF_INET6)
		return sizeof(struct sockaddr_in6);
	return sizeof(struct sockaddr_storage);
}
