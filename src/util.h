/*
 * util: the few helpers several modules share, each too small for a
 * module of its own: container_of, ARRAY_LEN, and allocators for
 * start-up and reload.
 *
 * xcalloc, xreallocarray and xstrdup keep the names OpenSSH and OpenBSD
 * give them (rather than a util_ prefix): they behave like calloc,
 * reallocarray and strdup but never return NULL, they fatal() instead.
 * fatal() is for start-up, reload and broken invariants (STYLE.md), so
 * they are for allocations made then: config, generations, listeners,
 * upstreams, checks.  Code on the relaying path (a connection, a stats
 * client) must handle NULL and close what it was serving instead.
 */
#ifndef LIFELINE_UTIL_H
#define LIFELINE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* The struct of type that holds member at ptr. */
#define container_of(ptr, type, member)                                        \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Elements of an array (not of a pointer). */
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Writes a message into the caller's err buffer (the modules that report
 * failures as text: "... err, errlen" parameters) and returns -1.
 */
static inline int __attribute__((format(printf, 3, 4)))
errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/* calloc(n, size); exits with "out of memory" instead of returning NULL. */
static inline void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	if (p == NULL)
		fatal(1, "out of memory");
	return p;
}

/*
 * reallocarray(p, n, size); exits with "out of memory" instead of
 * returning NULL.  Consumes p.
 */
static inline void *
xreallocarray(void *p, size_t n, size_t size)
{
	void *np = reallocarray(p, n, size);

	if (np == NULL)
		fatal(1, "out of memory");
	return np;
}

/* strdup(s); exits with "out of memory" instead of returning NULL. */
static inline char *
xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		fatal(1, "out of memory");
	return p;
}

#endif
