/*
 * relay: one client connection's life: read the PROXY header on
 * accept-proxy listeners, connect to the upstream group (with failover), then
 * copy bytes both ways with splice(2) through pipes taken from a pool only
 * while data is in flight, honouring half-close, backpressure and timeouts.
 *
 * A worker owns one relay_ctx (an opaque context: pools of pipes and
 * buffers, the list of live connections) and lends it its loop and
 * counters.  Every function here runs on that worker's thread only, except
 * relay_total_active().  The relay calls nothing in the worker: it reports
 * a connection's end through the callback given at creation.
 */
#ifndef LIFELINE_RELAY_H
#define LIFELINE_RELAY_H

#include <stddef.h>

#include "counters.h"

struct gen;
struct listener;
struct loop;
struct relay_ctx;

/* Called after a connection of the context has ended. */
typedef void (*relay_gone_cb)(void *arg);

/*
 * A context on loop (borrowed), for worker id, counting into cnt
 * (borrowed); gone(arg) runs after each connection ends.  Fills the pipe
 * reserve.  NULL on failure.
 */
struct relay_ctx *relay_ctx_new(struct loop *loop, unsigned id,
    struct relay_counters *cnt, relay_gone_cb gone, void *arg);
/* Closes every connection (RST) and the pools; NULL-safe. */
void relay_ctx_free(struct relay_ctx *rc);

/*
 * Starts relaying a just-accepted client socket of listener ls (borrowed
 * from g, the generation in force, which the connection keeps a reference
 * to); consumes fd.
 */
void relay_accept(
    struct relay_ctx *rc, struct gen *g, struct listener *ls, int fd);

/* Closes every connection of rc at once, with RST (drain deadline). */
void relay_close_all(struct relay_ctx *rc);
/* Live connections of rc. */
size_t relay_conns(const struct relay_ctx *rc);
/* Closes idle pipes beyond the reserve that stayed unused. */
void relay_pool_trim(struct relay_ctx *rc);

/* Client connections open across all workers. */
unsigned relay_total_active(void);

#endif
