/*
 * upstream: groups of upstream servers, their resolved addresses, passive
 * failure tracking and the order in which a connection tries them.
 *
 * Servers are shared between configuration generations (same host:port),
 * so their addresses and health survive a reload.  Addresses are written by
 * the resolver (main or resolver thread) and read by workers under a
 * per-server mutex, once per connection attempt.
 */
#ifndef LIFELINE_UPSTREAM_H
#define LIFELINE_UPSTREAM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"
#include "config.h"

#define UPSTREAM_MAX_ADDRS 8
/* Consecutive failures that mark a server down, and for how long. */
#define UPSTREAM_FALL 3
#define UPSTREAM_DOWN_MS 10000
/* Connect latency histogram: upper bounds in ms, the last is +Inf. */
#define UPSTREAM_HIST_BUCKETS 12
extern const unsigned upstream_hist_bounds_ms[UPSTREAM_HIST_BUCKETS - 1];

struct upstream_server {
	_Atomic unsigned refs;
	char *host; /* owned */
	uint16_t port;
	char label[ADDR_HOSTLEN + 8]; /* "host:port", for logs */
	pthread_mutex_t lock; /* guards addrs, naddrs */
	struct sockaddr_storage addrs[UPSTREAM_MAX_ADDRS];
	unsigned naddrs;
	_Atomic unsigned fails; /* consecutive failed attempts */
	_Atomic uint64_t down_until; /* loop ms; 0 when up */
	/* Connect latency of successful attempts, and failed attempts. */
	_Atomic uint64_t connect_hist[UPSTREAM_HIST_BUCKETS];
	_Atomic uint64_t connect_us_sum;
	_Atomic uint64_t connect_failures;
};

struct upstream {
	const struct cfg_upstream *cfg; /* borrowed from the generation */
	struct upstream_server **servers; /* owned array, each a reference */
	size_t nservers;
};

/* Where a connection stands in trying a group's servers. */
struct upstream_cursor {
	uint64_t tried; /* bit per server index */
	uint8_t srv;
	uint8_t addr;
	uint8_t pass; /* 0: servers not marked down; 1: the others */
	bool active; /* srv/addr name the current attempt */
};

/*
 * Builds the runtime group for cu, sharing servers with equal host:port
 * from old (may be NULL).  Never fails (aborts on out of memory).
 */
struct upstream *upstream_new(
    const struct cfg_upstream *cu, struct upstream *const *old, size_t nold);
void upstream_free(struct upstream *up);

/*
 * Resolves a server's host name (blocking: never call it on a worker).
 * Keeps the previous addresses when resolution fails.  Returns 0 or -1.
 */
int upstream_server_resolve(struct upstream_server *s);

/* Resolves every server of up; with only_empty, only those without any. */
void upstream_resolve(struct upstream *up, bool only_empty);

/*
 * Picks the next address to try for a connection and copies it into ss.
 * Returns the server, or NULL when every server has been tried.
 */
struct upstream_server *upstream_next(struct upstream *up,
    struct upstream_cursor *cur, uint64_t now, struct sockaddr_storage *ss);

/*
 * Records the outcome of one connection attempt to s at time now (ms) that
 * took us microseconds (passive health: UPSTREAM_FALL failures in a row
 * mark s down for UPSTREAM_DOWN_MS).
 */
void upstream_report(
    struct upstream_server *s, bool ok, uint64_t now, uint64_t us);

/*
 * Records an active health check: a failure marks s down at once until
 * retry_at (the next check), a success marks it up.
 */
void upstream_check_report(
    struct upstream_server *s, bool ok, uint64_t now, uint64_t retry_at);

void upstream_server_ref(struct upstream_server *s);
void upstream_server_unref(struct upstream_server *s);

/* Copies address number idx of s into ss; false when there is none. */
bool upstream_server_addr(
    struct upstream_server *s, unsigned idx, struct sockaddr_storage *ss);

/* True while s is marked down. */
bool upstream_server_down(struct upstream_server *s, uint64_t now);

#endif
