/*
 * relay: one client connection's life: read the PROXY header on
 * accept-proxy listeners, connect to the upstream group (with failover), then
 * copy bytes both ways with splice(2) through pipes taken from the worker's
 * pool only while data is in flight, honouring half-close, backpressure and
 * timeouts.
 *
 * Runs on a worker's loop; every function here is for that thread only,
 * except relay_total_active().
 */
#ifndef LIFELINE_RELAY_H
#define LIFELINE_RELAY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct worker;
struct listener;

/* How a client connection ended: the `result` label of the metrics. */
enum relay_result {
	RELAY_RES_RELAYED = 0, /* reached upstream and relayed */
	RELAY_RES_REFUSED_MAXCONN, /* over a maxconn cap */
	RELAY_RES_UPSTREAM_FAILED, /* no server of the group reachable */
	RELAY_RES_TIMEOUT, /* idle, or no PROXY header in time */
	RELAY_RES_TLS_FAILED, /* TLS handshake failed or timed out */
	RELAY_RES_PROXY_REJECTED, /* bad or untrusted PROXY header */
	RELAY_RES_ERROR, /* client gone early, local resources */
	RELAY_RES_MAX,
};

const char *relay_result_str(enum relay_result r);

/*
 * Per listener and worker: written by that worker only, read by anyone
 * (relaxed atomics).  Aligned so workers never share a cache line.
 */
struct relay_lcounters {
	_Atomic uint64_t closed[RELAY_RES_MAX];
	_Atomic uint64_t bytes_in; /* client to upstream */
	_Atomic uint64_t bytes_out; /* upstream to client */
	_Atomic uint64_t tls_handshakes;
	_Atomic uint64_t tls_resumed;
} __attribute__((aligned(64)));

/* Per worker: written by the worker only, read by anyone. */
struct relay_counters {
	_Atomic uint64_t accepted;
	_Atomic uint64_t active;
	_Atomic uint64_t errors; /* resets, local resource errors */
	_Atomic uint64_t connect_retries;
	_Atomic uint64_t accept_pauses;
};

#define RELAY_CNT_ADD(cnt, field, n)                                           \
	atomic_store_explicit(&(cnt)->field,                                   \
	    atomic_load_explicit(&(cnt)->field, memory_order_relaxed) + (n),   \
	    memory_order_relaxed)
#define RELAY_CNT_GET(cnt, field)                                              \
	atomic_load_explicit(&(cnt)->field, memory_order_relaxed)

struct relay_pipe {
	int rd, wr; /* -1 when none */
	uint32_t cap;
};

/* A worker's idle pipes. */
struct relay_pool {
	struct relay_pipe *v; /* owned array */
	size_t n, cap;
	size_t low; /* fewest idle pipes since the last trim */
	uint8_t **bufs; /* owned array of owned idle relay buffers */
	size_t nbufs;
};

struct relay_conn;

/* Starts relaying a just-accepted client socket; consumes fd. */
void relay_accept(struct worker *w, struct listener *ls, int fd);

/* Closes every connection of w at once (drain deadline). */
void relay_close_all(struct worker *w);

/* Fills the pool with its reserve; returns 0 or -1. */
int relay_pool_init(struct worker *w);
/* Closes idle pipes beyond the reserve that stayed unused. */
void relay_pool_trim(struct worker *w);
void relay_pool_cleanup(struct worker *w);

/* Client connections open across all workers. */
unsigned relay_total_active(void);

#endif
