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

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "counters.h"

struct gen;
struct listener;
struct loop;
struct loop_io;
struct relay_ctx;

/*
 * The system calls the relay makes on sockets, so that the unit tests can
 * script them (tests/unit/test_relay.c).  Each has the system call's
 * return convention (-1 with errno); relay_sys_kernel is the real one.
 */
struct relay_sys {
	/* A non-blocking TCP socket with the upstream options (Nagle off,
	 * urgent data inline). */
	int (*socket)(int family);
	/* SO_RCVBUF and SO_SNDBUF (socket-buffers); best effort. */
	void (*buffers)(int fd, unsigned bytes);
	int (*connect)(int fd, const struct sockaddr *sa, socklen_t len);
	ssize_t (*recv)(int fd, void *buf, size_t len, int flags);
	ssize_t (*send)(int fd, const void *buf, size_t len, int flags);
	ssize_t (*splice_in)(int fd, int pipe_wr, size_t len);
	ssize_t (*splice_out)(int pipe_rd, int fd, size_t len);
	int (*shutdown_wr)(int fd);
	/* close(2); abort: RST instead of FIN (SO_LINGER 0). */
	void (*close)(int fd, bool abort);
	/* Bytes sent but not yet acknowledged by the peer (SIOCOUTQ). */
	int (*outq)(int fd, int *bytes);
	/* Milliseconds since the peer's last ACK (TCP_INFO). */
	int (*last_ack)(int fd, uint32_t *ms_ago);
	/* Bytes received and not read yet (FIONREAD). */
	int (*inq)(int fd, int *bytes);
	/* SO_ERROR: why a connect failed. */
	int (*sock_error)(int fd);
	int (*peername)(int fd, struct sockaddr_storage *ss);
	int (*sockname)(int fd, struct sockaddr_storage *ss);
	/* Registers io->fd on loop, edge-triggered, for every relay event. */
	int (*watch)(struct loop *loop, struct loop_io *io);
};

extern const struct relay_sys relay_sys_kernel;

/* Called after a connection of the context has ended. */
typedef void (*relay_gone_cb)(void *arg);

/*
 * A context on loop (borrowed), for worker id, counting into cnt
 * (borrowed), making its system calls through sys (borrowed;
 * &relay_sys_kernel but in tests); gone(arg) runs after each connection
 * ends.  Fills the pipe reserve.  NULL on failure.
 */
struct relay_ctx *relay_ctx_new(struct loop *loop, unsigned id,
    struct relay_counters *cnt, const struct relay_sys *sys, relay_gone_cb gone,
    void *arg);
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
