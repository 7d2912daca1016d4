/*
 * pp_equal: what two parsed PROXY headers must agree on, for the unit tests
 * and the fuzz targets (tests only: the daemon never compares headers).
 */
#ifndef LIFELINE_TESTS_PP_EQUAL_H
#define LIFELINE_TESTS_PP_EQUAL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

#include "proxyproto.h"

static inline bool
pp_sa_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const struct sockaddr_in *)a;
		const struct sockaddr_in *y = (const struct sockaddr_in *)b;

		return x->sin_port == y->sin_port &&
		    x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
		const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;

		return x->sin6_port == y->sin6_port &&
		    memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
	}
	return false;
}

/* Same version, kind, length and, when carried, the same addresses. */
static inline bool
pp_header_equal(const struct pp_header *a, const struct pp_header *b)
{
	if (a->version != b->version || a->local != b->local ||
	    a->has_addr != b->has_addr || a->len != b->len)
		return false;
	return !a->has_addr ||
	    (pp_sa_equal(&a->src, &b->src) && pp_sa_equal(&a->dst, &b->dst));
}

#endif
