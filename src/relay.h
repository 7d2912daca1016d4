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

/* Per-worker counters: written by the worker only, read by anyone. */
struct relay_counters {
	_Atomic uint64_t accepted;
	_Atomic uint64_t active;
	_Atomic uint64_t relayed; /* finished after reaching upstream */
	_Atomic uint64_t refused_maxconn;
	_Atomic uint64_t upstream_failed; /* no server could be reached */
	_Atomic uint64_t timeouts; /* idle or half-close timeouts */
	_Atomic uint64_t errors; /* resets, local resource errors */
	_Atomic uint64_t connect_retries;
	_Atomic uint64_t proxy_rejected; /* bad or untrusted PROXY header */
	_Atomic uint64_t tls_handshakes; /* completed */
	_Atomic uint64_t tls_resumed; /* of which resumed */
	_Atomic uint64_t tls_failed; /* failed or timed out */
	_Atomic uint64_t bytes_in; /* client to upstream */
	_Atomic uint64_t bytes_out; /* upstream to client */
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
	uint8_t **bufs; /* owned array of owned idle TLS buffers */
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
