/*
 * stats: the operators' HTTP listener, on the control thread's loop:
 * /metrics (Prometheus), /stats.json, /healthz, /readyz, / (dashboard) and
 * /qr.svg.  HTTP/1.0 and 1.1, GET and HEAD only, one request per
 * connection, the request line parsed strictly (400, 505), the request
 * bounded in size (4 KiB, else 431) and time (2 s from the accept, then a
 * FIN), the response in time (10 s, then an RST).  At most 256 clients: a
 * newcomer to a full listener takes the slot of the oldest client still
 * sending its request (else of the oldest response), so that idle
 * connections can never starve /healthz and /readyz.
 * Never shows a client's address: only counters, and the relay's own
 * listeners and upstreams.
 */
#ifndef LIFELINE_STATS_H
#define LIFELINE_STATS_H

#include <stddef.h>

#include "gen.h"
#include "loop.h"

struct stats;
struct worker;

/*
 * Binds cfg's [stats] addresses (none: an idle stats object).  Returns
 * NULL with a message in err.
 */
struct stats *stats_new(const struct cfg *cfg, char *err, size_t errlen);
/* Starts serving on loop, reading counters of workers (borrowed). */
int stats_start(struct stats *st, struct loop *loop, struct worker **workers,
    unsigned nworkers);
/* The generation to report on (borrowed: keep it alive meanwhile). */
void stats_set_gen(struct stats *st, struct gen *g);
/* Appends "stats ADDRESS:PORT\n" lines to buf (NUL-terminated). */
void stats_ports(const struct stats *st, char *buf, size_t len);
void stats_free(struct stats *st);

#endif
