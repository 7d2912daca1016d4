/*
 * A minimal unit-test harness: checks print both values on failure, and
 * the run ends with the line "N passed, N failed".
 */
#ifndef LIFELINE_HARNESS_H
#define LIFELINE_HARNESS_H

#include <stdio.h>
#include <string.h>

static int h_passed, h_failed;

#define CHECK(cond)                                                            \
	do {                                                                   \
		if (cond) {                                                    \
			h_passed++;                                            \
		} else {                                                       \
			h_failed++;                                            \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
			    __LINE__, #cond);                                  \
		}                                                              \
	} while (0)

#define CHECK_INT(a, b)                                                        \
	do {                                                                   \
		long long h_a = (long long)(a), h_b = (long long)(b);          \
		if (h_a == h_b) {                                              \
			h_passed++;                                            \
		} else {                                                       \
			h_failed++;                                            \
			fprintf(stderr,                                        \
			    "%s:%d: %s == %s failed: %lld != %lld\n",          \
			    __FILE__, __LINE__, #a, #b, h_a, h_b);             \
		}                                                              \
	} while (0)

#define CHECK_STR(a, b)                                                        \
	do {                                                                   \
		const char *h_a = (a), *h_b = (b);                             \
		if (h_a != NULL && h_b != NULL && strcmp(h_a, h_b) == 0) {     \
			h_passed++;                                            \
		} else {                                                       \
			h_failed++;                                            \
			fprintf(stderr,                                        \
			    "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n",      \
			    __FILE__, __LINE__, #a, #b, h_a ? h_a : "(null)",  \
			    h_b ? h_b : "(null)");                             \
		}                                                              \
	} while (0)

#define CHECK_MEM(a, b, n)                                                     \
	do {                                                                   \
		if (memcmp((a), (b), (n)) == 0) {                              \
			h_passed++;                                            \
		} else {                                                       \
			h_failed++;                                            \
			fprintf(stderr,                                        \
			    "%s:%d: %s == %s failed (%zu bytes)\n", __FILE__,  \
			    __LINE__, #a, #b, (size_t)(n));                    \
		}                                                              \
	} while (0)

static int
h_report(const char *name)
{
	printf("%s: %d passed, %d failed\n", name, h_passed, h_failed);
	return h_failed == 0 ? 0 : 1;
}

#endif
