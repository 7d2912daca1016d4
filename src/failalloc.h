/*
 * failalloc: allocation failure injection, in test builds only (the
 * sanitized and DEBUG=1 builds, LIFELINE_TEST_HOOKS), like HAProxy's
 * tune.fail-alloc.
 *
 *   LIFELINE_FAIL_ALLOC=PCT[:SECONDS][@SEED]
 *
 * Once armed (after start-up: start-up allocations exit on failure by
 * design), PCT percent of the daemon's own allocations and of OpenSSL's
 * fail, for SECONDS (default: until exit), chosen by a PRNG seeded with
 * SEED (default 1) so that a run can be repeated.  The daemon's objects
 * are linked with --wrap=malloc,calloc,realloc; OpenSSL's allocations come
 * through CRYPTO_set_mem_functions (tls.c).  A release build has none of
 * this.
 */
#ifndef LIFELINE_FAILALLOC_H
#define LIFELINE_FAILALLOC_H

#include <stdbool.h>
#include <stddef.h>

#ifdef LIFELINE_TEST_HOOKS
/* Reads LIFELINE_FAIL_ALLOC; returns -1 (with a message) if malformed. */
int failalloc_init(char *err, size_t errlen);
/* Starts failing from now on (the main thread, once start-up is done). */
void failalloc_arm(void);
/* True when this allocation should fail. */
bool failalloc_now(void);
#endif

#endif
