/*
 * invariant: checks of what must always hold.  On in the sanitizer and
 * DEBUG=1 builds (LIFELINE_INVARIANTS defined): a broken invariant prints
 * where and aborts.  Compiled out of release builds: the condition is type
 * checked but never evaluated, so it must have no side effect.
 */
#ifndef LIFELINE_INVARIANT_H
#define LIFELINE_INVARIANT_H

#ifdef LIFELINE_INVARIANTS
#include <stdio.h>
#include <stdlib.h>

static inline _Noreturn void
invariant_fail(const char *what, const char *file, int line, const char *fn)
{
	fprintf(
	    stderr, "%s:%d: %s: invariant broken: %s\n", file, line, fn, what);
	abort();
}

#define INVARIANT(cond)                                                        \
	((cond) ? (void)0 : invariant_fail(#cond, __FILE__, __LINE__, __func__))
#else
#define INVARIANT(cond) ((void)sizeof(cond))
#endif

#endif
