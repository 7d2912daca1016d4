/*
 * control: the control thread.  Its own event loop runs the active health
 * checks and the stats listener, away from the workers, so that neither a
 * slow stats client nor a hanging check ever delays relaying.  The main
 * thread hands it new generations through a mailbox, as for workers.
 */
#ifndef LIFELINE_CONTROL_H
#define LIFELINE_CONTROL_H

#include <stddef.h>

#include "gen.h"

struct worker;

/*
 * Binds the [stats] listeners of gen's config.  Returns 0, or -1 with a
 * message in err.  Call before dropping privileges.
 */
int control_bind(struct gen *gen, char *err, size_t errlen);
/* Starts the thread (gen: takes a reference; workers: borrowed). */
int control_start(struct gen *gen, struct worker **workers, unsigned n);
/* Hands over a new generation (takes its own reference). */
void control_apply(struct gen *gen);
/* Appends the stats listeners' "stats ADDRESS:PORT" lines to buf. */
void control_ports(char *buf, size_t len);
/* Stops and joins the thread; frees everything. */
void control_stop(void);

#endif
