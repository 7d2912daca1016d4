/*
 * health: active L4 health checks of upstream servers, on the control
 * thread's loop.  Each server of the generation in force is checked every
 * check-interval (the shortest of its groups'), with jitter, and faster
 * while it is down.  A check connects (each resolved address in turn, with
 * the connect timeout), writes a PROXY LOCAL header when the group sends
 * PROXY headers, and closes.  Results go to upstream_check_report().
 */
#ifndef LIFELINE_HEALTH_H
#define LIFELINE_HEALTH_H

#include "gen.h"
#include "loop.h"

struct health;

struct health *health_new(struct loop *loop);
/* Checks g's servers from now on (g borrowed: keep it alive meanwhile). */
void health_apply(struct health *h, struct gen *g);
void health_free(struct health *h);

#endif
