/*
 * counters: what the relay counts, per listener and per worker.  Written
 * by one worker thread only, read by anyone (stats, SIGUSR1) with relaxed
 * atomics.
 */
#ifndef LIFELINE_COUNTERS_H
#define LIFELINE_COUNTERS_H

#include <stdatomic.h>
#include <stdint.h>

/* How a client connection ended: the `result` label of the metrics. */
enum relay_result {
	RELAY_RES_RELAYED = 0, /* reached upstream and relayed */
	RELAY_RES_REFUSED_MAXCONN, /* over a maxconn cap */
	RELAY_RES_REFUSED_SOURCE, /* over a per-source limit */
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
	/* Of closed[RELAY_RES_REFUSED_SOURCE], by limit. */
	_Atomic uint64_t source_refused_conn;
	_Atomic uint64_t source_refused_rate;
	/* Camouflage listeners (decoy): how the first bytes were classed. */
	_Atomic uint64_t camo_whatsapp;
	_Atomic uint64_t camo_decoy;
	/* TLS listeners: ClientHellos passed through, plain bytes decoyed. */
	_Atomic uint64_t camo_passthrough;
	_Atomic uint64_t camo_decoy_tls;
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

#endif
