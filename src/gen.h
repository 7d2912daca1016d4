/*
 * gen: one configuration generation at run time: the parsed config, its
 * upstream groups and its bound listeners.
 *
 * A generation is immutable once published and reference counted: the main
 * thread, each worker and each connection hold a reference.  A reload
 * builds a new generation that shares what did not change (listening
 * sockets by address, listener counters by name, upstream servers by
 * host:port) with the old one.
 *
 * Listening sockets: one per worker per bound address (SO_REUSEPORT), made
 * by the main thread.  Once handed over, fds[w] belongs to worker w, which
 * closes it when a new generation drops the address or when it drains.
 */
#ifndef LIFELINE_GEN_H
#define LIFELINE_GEN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "addr.h"
#include "config.h"
#include "counters.h"
#include "srclimit.h"
#include "tls.h"
#include "upstream.h"

/* Per listener name; survives reloads while the name stays. */
struct lstate {
	_Atomic unsigned refs;
	char name[CFG_MAX_NAME + 1];
	_Atomic unsigned active; /* live connections, all workers */
	struct relay_lcounters *cnt; /* owned array, one per worker */
};

/* One bound address: a listening socket per worker. */
struct lsock {
	_Atomic unsigned refs;
	struct sockaddr_storage want; /* as configured (port may be 0) */
	socklen_t wantlen;
	char text[ADDR_STRLEN]; /* bound address with its real port */
	int fds[CFG_MAX_WORKERS];
	unsigned nfds;
};

struct listener {
	const struct cfg_listen *cfg; /* borrowed from gen->cfg */
	struct upstream *up; /* borrowed from the generation */
	struct upstream *decoy; /* borrowed; NULL: no camouflage */
	struct upstream *passthrough; /* borrowed; NULL: none */
	struct upstream *decoy_tls; /* borrowed; NULL: none */
	struct lstate *state; /* reference */
	struct tls_ctx *tls; /* reference; NULL: plain listener */
	struct lsock **socks; /* owned array of references */
	size_t nsocks;
	struct srclimit_rule
	    src_rule; /* its own per-source limits, or global */
};

struct gen {
	_Atomic unsigned refs;
	struct cfg *cfg; /* owned */
	unsigned nworkers;
	struct upstream **ups; /* owned array, parallel to cfg->upstreams */
	struct listener *listeners; /* owned array: listeners started */
	size_t nlisteners;
	struct srclimit *src; /* reference; NULL: no per-source limit */
};

/*
 * Builds a generation from cfg (consumed, also on failure), sharing with
 * old (may be NULL), binding new addresses for nworkers workers and
 * loading or generating TLS certificates.  Returns NULL with a message in
 * err when an address cannot be bound or a certificate cannot be loaded.
 */
struct gen *gen_new(struct cfg *cfg, struct gen *old, unsigned nworkers,
    char *err, size_t errlen);

void gen_ref(struct gen *g);
/* Drops a reference; frees the generation with the last one. */
void gen_unref(struct gen *g);

/* Drops a reference to a bound address; closes what is left with the last. */
void lsock_unref(struct lsock *s);

/*
 * Writes "NAME ADDRESS:PORT" lines for every bound socket to path, then
 * extra, atomically (temporary file and rename).  Returns 0 or -1 (errno
 * set).
 */
int gen_write_ports(const struct gen *g, const char *path, const char *extra);

#endif
