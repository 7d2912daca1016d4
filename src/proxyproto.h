/*
 * proxyproto: the PROXY protocol (v1 text, v2 binary), pure functions: a
 * parser for accept-proxy listeners and a builder for send-proxy upstreams.
 * No I/O here.
 *
 * The parser is stateless: the caller feeds it every byte received so far
 * (from the first), and it says whether they hold a whole header, could
 * still become one (NEED_MORE), or never will (an error).  Feeding a header
 * in any number of pieces thus gives the same answer as feeding it whole.
 * It never reads past len and never looks at bytes after the header.
 */
#ifndef LIFELINE_PROXYPROTO_H
#define LIFELINE_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

enum pp_version {
	PP_V1 = 1,
	PP_V2 = 2,
};

/* Longest header accepted: 16 bytes + address block + TLVs (v2). */
#define PP_V2_MAX_LEN 1536
#define PP_MAX_HEADER (16 + PP_V2_MAX_LEN)
/* v1: "PROXY ... \r\n" is at most 107 bytes. */
#define PP_V1_MAX 107

enum pp_result {
	PP_NEED_MORE = 0, /* a prefix of a valid header: feed more */
	PP_OK, /* a whole header: see pp_header.len */
	PP_ERR_NOT_PROXY, /* no PROXY signature (v1 or v2) */
	PP_ERR_V1_TOO_LONG, /* no CRLF within 107 bytes */
	PP_ERR_V1_SYNTAX, /* spaces, CR/LF, NUL, protocol word */
	PP_ERR_V1_ADDRESS, /* not a canonical IPv4/IPv6 address */
	PP_ERR_V1_PORT, /* not 0-65535 without leading zeros */
	PP_ERR_V2_VERSION, /* version nibble not 2 */
	PP_ERR_V2_COMMAND, /* command not LOCAL (0) or PROXY (1) */
	PP_ERR_V2_FAMILY, /* unknown or unsupported family/protocol */
	PP_ERR_V2_LENGTH, /* length shorter than the address block */
	PP_ERR_V2_TOO_LONG, /* length above PP_V2_MAX_LEN */
	PP_ERR_V2_TLV, /* a TLV runs past the declared length */
	PP_ERR_V2_CRC, /* CRC32C TLV does not match */
};

struct pp_header {
	int version; /* 1 or 2 */
	bool local; /* v2 LOCAL, or v1 UNKNOWN: use the socket's addresses */
	bool has_addr; /* src/dst hold the original connection's addresses */
	struct sockaddr_storage src, dst;
	size_t len; /* bytes of the header; what follows is payload */
};

/*
 * Parses the bytes received so far.  On PP_OK, *out describes the header
 * and out->len bytes of buf are the header.  out is written only on PP_OK.
 */
enum pp_result pp_parse(const uint8_t *buf, size_t len, struct pp_header *out);

/* A short name for logs and metrics ("need_more", "ok", "v2_tlv", ...). */
const char *pp_result_str(enum pp_result r);

/* Room for any header pp_build writes (v1: 107 bytes, v2 TCP6: 52). */
#define PP_BUILD_MAX 108

/*
 * Builds a header saying a connection came from src to dst.  With src or
 * dst NULL, or of families that cannot be expressed together, the header
 * says the addresses are unknown (v1 "UNKNOWN", v2 AF_UNSPEC); with local
 * set (v2 only) it is a LOCAL header (health checks).  v4-mapped IPv6
 * addresses are written as IPv4 when the other address is IPv4 (or mapped
 * too), and kept as IPv6 (TCP6) beside a plain IPv6 one.  Returns the
 * header length, or -1 when buf is smaller than PP_BUILD_MAX.
 */
ssize_t pp_build(enum pp_version v, const struct sockaddr *src,
    const struct sockaddr *dst, int local, uint8_t *buf, size_t len);

#endif
