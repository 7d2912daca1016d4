/*
 * proxyproto: the PROXY protocol (v1 text, v2 binary), pure functions.
 *
 * This part builds headers for upstreams (send-proxy).  No I/O here.
 */
#ifndef LIFELINE_PROXYPROTO_H
#define LIFELINE_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

enum pp_version {
	PP_V1 = 1,
	PP_V2 = 2,
};

/* Room for any header pp_build writes (v1: 107 bytes, v2 TCP6: 52). */
#define PP_BUILD_MAX 108

/*
 * Builds a header saying a connection came from src to dst.  With src or
 * dst NULL, or of families that cannot be expressed together, the header
 * says the addresses are unknown (v1 "UNKNOWN", v2 AF_UNSPEC); with local
 * set (v2 only) it is a LOCAL header (health checks).  v4-mapped IPv6
 * addresses are written as IPv4.  Returns the header length, or -1 when buf
 * is smaller than PP_BUILD_MAX.
 */
ssize_t pp_build(enum pp_version v, const struct sockaddr *src,
    const struct sockaddr *dst, int local, uint8_t *buf, size_t len);

#endif
