/*
 * resolver: a thread that re-resolves upstream host names periodically,
 * off the event loops.  Addresses that fail to resolve keep their last
 * good value (see upstream_server_resolve).
 */
#ifndef LIFELINE_RESOLVER_H
#define LIFELINE_RESOLVER_H

#include <stdint.h>

#include "gen.h"

#define RESOLVER_INTERVAL_MS (60 * 1000)

/*
 * Starts the thread on gen (takes a reference), which resolves it at once.
 * Returns 0 or -1.
 */
int resolver_start(struct gen *gen, uint64_t interval_ms);
/* Waits up to timeout_ms for a pending resolution pass to finish. */
void resolver_wait(uint64_t timeout_ms);
/* Switches to a new generation and resolves it at once. */
void resolver_set_gen(struct gen *gen);
/* Stops and joins the thread; safe when it was never started. */
void resolver_stop(void);

#endif
