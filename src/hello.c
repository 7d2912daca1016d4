/*
 * hello: a TLS ClientHello's server name (hello.h).
 */
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "hello.h"

#define REC_HANDSHAKE 0x16
#define HS_CLIENT_HELLO 0x01
#define EXT_SERVER_NAME 0x0000
#define SNI_HOST_NAME 0x00
/* version, random, and the three length bytes that must follow */
#define HELLO_BODY_MIN (2 + 32 + 1 + 2 + 1)

static size_t
be16(const uint8_t *p)
{
	return (size_t)p[0] << 8 | p[1];
}

static size_t
min3(size_t a, size_t b, size_t c)
{
	size_t m = a < b ? a : b;

	return m < c ? m : c;
}

/* One DNS label character (as host names are written in SNI). */
static bool
label_char(int ch)
{
	return isalnum(ch) || ch == '-' || ch == '_';
}

/* A DNS name: labels of 1-63 label characters, at most 253 in all. */
static bool
dns_name_valid(const char *s, size_t n)
{
	size_t label = 0;

	if (n == 0 || n > 253)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (label_char((unsigned char)s[i]) && label < 63) {
			label++;
		} else {
			return false;
		}
	}
	return label > 0;
}

/* The server_name extension's body: the first host_name, if valid. */
static enum hello_result
server_name(const uint8_t *b, size_t n, struct hello_info *info)
{
	const uint8_t *end = b + n;

	if (n < 2 || be16(b) != n - 2)
		return HELLO_BAD;
	b += 2;
	while (b < end) {
		size_t len;

		if (end - b < 3)
			return HELLO_BAD;
		len = be16(b + 1);
		if ((size_t)(end - b - 3) < len)
			return HELLO_BAD;
		if (b[0] == SNI_HOST_NAME) {
			/* One host_name at most (RFC 6066 3). */
			if (info->has_sni ||
			    !dns_name_valid((const char *)b + 3, len))
				return HELLO_BAD;
			for (size_t i = 0; i < len; i++)
				info->sni[i] = (char)tolower(b[3 + i]);
			info->sni[len] = '\0';
			info->has_sni = true;
		}
		b += 3 + len;
	}
	return HELLO_OK;
}

/* The ClientHello message body (after its 4-byte header). */
static enum hello_result
client_hello(const uint8_t *b, size_t n, struct hello_info *info)
{
	const uint8_t *end = b + n;
	size_t len;
	bool sni_seen = false;

	if (n < HELLO_BODY_MIN)
		return HELLO_BAD;
	b += 2 + 32; /* legacy_version, random */
	len = *b++; /* legacy_session_id */
	if (len > 32 || (size_t)(end - b) < len)
		return HELLO_BAD;
	b += len;
	if (end - b < 2)
		return HELLO_BAD;
	len = be16(b); /* cipher_suites */
	b += 2;
	if (len < 2 || (len & 1) || (size_t)(end - b) < len)
		return HELLO_BAD;
	b += len;
	if (end - b < 1)
		return HELLO_BAD;
	len = *b++; /* legacy_compression_methods */
	if (len < 1 || (size_t)(end - b) < len)
		return HELLO_BAD;
	b += len;
	if (b == end)
		return HELLO_OK; /* no extensions (an old client) */
	if (end - b < 2 || be16(b) != (size_t)(end - b - 2))
		return HELLO_BAD;
	b += 2;
	while (b < end) {
		size_t type;

		if (end - b < 4)
			return HELLO_BAD;
		type = be16(b);
		len = be16(b + 2);
		b += 4;
		if ((size_t)(end - b) < len)
			return HELLO_BAD;
		if (type == EXT_SERVER_NAME) {
			if (sni_seen || server_name(b, len, info) != HELLO_OK)
				return HELLO_BAD;
			sni_seen = true;
		}
		b += len;
	}
	return HELLO_OK;
}

enum hello_result
hello_parse(const uint8_t *p, size_t len, struct hello_info *out, size_t *need)
{
	uint8_t msg[4 + HELLO_MSG_MAX];
	size_t have = 0, want = 4, off = 0, rec_left = 0;
	struct hello_info info;
	enum hello_result r;

	if (len < 1 || (p[0] == REC_HANDSHAKE && len < 2)) {
		*need = len + 1;
		return HELLO_MORE;
	}
	if (p[0] != REC_HANDSHAKE || p[1] != 3)
		return HELLO_NOT_TLS;
	/* Gather the handshake message from as many records as it takes. */
	while (have < want) {
		size_t n;

		if (rec_left == 0) {
			if (off + 5 > len) {
				*need = off + 5;
				return HELLO_MORE;
			}
			if (p[off] != REC_HANDSHAKE || p[off + 1] != 3)
				return HELLO_BAD;
			rec_left = be16(p + off + 3);
			off += 5;
			if (rec_left == 0 || rec_left > HELLO_RECORD_MAX ||
			    off +
			            (rec_left < want - have ? rec_left
			                                    : want - have) >
			        HELLO_READ_MAX)
				return HELLO_BAD;
		}
		if (off >= len) {
			*need = off +
			    (rec_left < want - have ? rec_left : want - have);
			return HELLO_MORE;
		}
		n = min3(rec_left, want - have, len - off);
		memcpy(msg + have, p + off, n);
		have += n;
		off += n;
		rec_left -= n;
		if (want == 4 && have == 4) {
			size_t mlen = (size_t)msg[1] << 16 | be16(msg + 2);

			if (msg[0] != HS_CLIENT_HELLO || mlen > HELLO_MSG_MAX)
				return HELLO_BAD;
			want = 4 + mlen;
		}
	}
	memset(&info, 0, sizeof(info));
	r = client_hello(msg + 4, want - 4, &info);
	if (r == HELLO_OK)
		*out = info;
	return r;
}

const char *
hello_result_str(enum hello_result r)
{
	switch (r) {
	case HELLO_MORE:
		return "more";
	case HELLO_OK:
		return "ok";
	case HELLO_NOT_TLS:
		return "not TLS";
	case HELLO_BAD:
		return "unreadable ClientHello";
	}
	return "?";
}

bool
hello_name_match(const char *pattern, const char *name)
{
	size_t n = strlen(name), k;

	if (pattern[0] == '*' && pattern[1] == '.') {
		k = strlen(pattern + 1); /* ".example.net" */
		return n > k && strcasecmp(name + n - k, pattern + 1) == 0;
	}
	return strcasecmp(pattern, name) == 0;
}

bool
hello_pattern_valid(const char *s)
{
	if (s[0] == '*' && s[1] == '.')
		s += 2;
	return dns_name_valid(s, strlen(s));
}
