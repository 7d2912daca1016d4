/*
 * failalloc: allocations that fail on purpose, in test builds only.
 */
#include "failalloc.h"

#ifdef LIFELINE_TEST_HOOKS
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned fail_pct; /* set once before threads start */
static uint64_t fail_ms; /* 0: until exit */
static _Atomic uint64_t fail_until; /* CLOCK_MONOTONIC ms; 0: unarmed */
static _Atomic uint64_t fail_state = 1;
static _Atomic uint64_t fail_count;

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int
failalloc_init(char *err, size_t errlen)
{
	const char *v = getenv("LIFELINE_FAIL_ALLOC");
	unsigned pct = 0, secs = 0;
	unsigned long long seed = 1;
	const char *p;
	char *end;

	if (v == NULL || *v == '\0')
		return 0;
	pct = (unsigned)strtoul(v, &end, 10);
	p = end;
	if (*p == '%')
		p++;
	if (*p == ':') {
		secs = (unsigned)strtoul(p + 1, &end, 10);
		p = end;
		if (*p == 's')
			p++;
	}
	if (*p == '@') {
		seed = strtoull(p + 1, &end, 10);
		p = end;
	}
	if (p == v || *p != '\0' || pct > 100) {
		snprintf(err, errlen,
		    "LIFELINE_FAIL_ALLOC '%s': use PCT[:SECONDS][@SEED]", v);
		return -1;
	}
	fail_pct = pct;
	fail_ms = (uint64_t)secs * 1000;
	atomic_store(&fail_state, seed == 0 ? 1 : seed);
	return 0;
}

void
failalloc_arm(void)
{
	if (fail_pct == 0)
		return;
	atomic_store(
	    &fail_until, fail_ms == 0 ? UINT64_MAX : now_ms() + fail_ms);
	fprintf(stderr,
	    "lifeline: test hook: %u%% of allocations fail for %llus\n",
	    fail_pct, (unsigned long long)fail_ms / 1000);
}

bool
failalloc_now(void)
{
	uint64_t until =
	    atomic_load_explicit(&fail_until, memory_order_relaxed);
	uint64_t x, y;

	if (until == 0)
		return false;
	if (until != UINT64_MAX && now_ms() >= until) {
		atomic_store(&fail_until, 0);
		return false;
	}
	/* xorshift64, shared by every thread: a lost update is harmless. */
	x = atomic_load_explicit(&fail_state, memory_order_relaxed);
	y = x;
	y ^= y << 13;
	y ^= y >> 7;
	y ^= y << 17;
	atomic_store_explicit(&fail_state, y, memory_order_relaxed);
	if (y % 100 >= fail_pct)
		return false;
	atomic_fetch_add_explicit(&fail_count, 1, memory_order_relaxed);
	return true;
}

/* The daemon's own calls, through the linker's --wrap. */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);

void *
__wrap_malloc(size_t n)
{
	return failalloc_now() ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t n, size_t m)
{
	return failalloc_now() ? NULL : __real_calloc(n, m);
}

void *
__wrap_realloc(void *p, size_t n)
{
	return failalloc_now() ? NULL : __real_realloc(p, n);
}
#else
/* ISO C wants something in a translation unit. */
typedef int failalloc_empty;
#endif
