/*
 * copy: the one copy loop.  A direction moves bytes from one end to the
 * other through a transport: plain sockets (recv/send, splice), a TLS
 * client (OpenSSL), or a scripted fake in the unit tests.  It starts
 * through a 16 KiB buffer (a chat message costs a read and a write); when
 * one read fills the buffer and both ends can splice, the direction is
 * bulk and from then on goes end -> pipe -> end by splice(2), never
 * through user space.  Buffers and pipes come from a pool only while bytes
 * are in flight.
 *
 * Ends are edge-triggered: rd_ready/wr_ready remember an edge until the
 * transport says it would block, or until a short read/write says the end
 * is empty/full on a transport that can be trusted to report the next edge
 * (plain sockets; not TLS).  Invariants (checked in debug builds):
 *  - pending bytes sit in the buffer, or in the pipe, never both, never
 *    more than the buffer's or the pipe's size;
 *  - eof: the source sent FIN; it is never read again;
 *  - shut: FIN (after close_notify on TLS) went to the destination, after
 *    the source's FIN and every byte delivered; nothing is written again.
 *
 * Knows nothing of connections, loops or configuration: relay.c drives it.
 */
#ifndef LIFELINE_COPY_H
#define LIFELINE_COPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A direction's buffer: one TLS record's worth; a full read turns bulk. */
#define COPY_BUF 16384
/* A pipe's usual size; the kernel may give less (see copy.c). */
#define COPY_PIPE_SIZE (256 * 1024)
/*
 * A fast direction (one splice to its destination moved half a pipe or
 * more) gets a pipe of COPY_PIPE_BIG: up to 1 MiB a splice instead of
 * 256 KiB, half the system calls of a fast transfer.  At most
 * COPY_PIPES_BIG in the process (all workers), idle or in use: the
 * user's pipe pages are capped (fs.pipe-user-pages-soft, 64 MiB by
 * default), and 8 MiB of them go to size at most, the rest to the number
 * of transfers spliced at once.  "Fast" is the destination's free send
 * space, not its reader's speed: a transfer that was fast and then stalls
 * keeps its big pipe (full: 1 MiB) until it ends or times out; the quota
 * bounds that too.
 */
#define COPY_PIPE_BIG (1024 * 1024)
#define COPY_PIPES_BIG 8

/* What a transport call did, when not a count of bytes (> 0). */
enum {
	COPY_IO_EOF = 0, /* reads only: the peer finished */
	COPY_IO_AGAIN = -1, /* would block: wait for the call's own edge */
	COPY_IO_AGAIN_WRITE = -2, /* TLS: a read needs the socket writable */
	COPY_IO_ERROR = -3, /* the stream is cut */
	COPY_IO_ALERT = -4, /* TLS protocol error: an alert went out */
};

/* What copy_run came to. */
enum copy_result {
	COPY_OK = 0, /* moved what it could; go on */
	COPY_CUT, /* an end failed: the connection must be reset */
	COPY_ALERT, /* TLS protocol error on an end */
};

struct copy_end;

/*
 * A transport.  Each call gets the end it serves (the transport finds its
 * own state around it: container_of) and returns bytes (> 0) or a
 * COPY_IO_* code.  splice_in/splice_out are NULL when the transport cannot
 * splice; finish, when not NULL, runs before the FIN (TLS: close_notify)
 * and returns 0, COPY_IO_AGAIN or COPY_IO_ERROR.
 */
struct copy_ops {
	ssize_t (*read)(struct copy_end *e, void *buf, size_t len);
	ssize_t (*write)(struct copy_end *e, const void *buf, size_t len);
	ssize_t (*splice_in)(struct copy_end *e, int pipe_wr, size_t len);
	ssize_t (*splice_out)(struct copy_end *e, int pipe_rd, size_t len);
	int (*finish)(struct copy_end *e);
	/* Sends FIN (shutdown(SHUT_WR) on a socket); errors are ignored. */
	void (*fin)(struct copy_end *e);
	/* A short read or write proves the end empty or full. */
	bool trust_short;
};

/*
 * One end of a direction (a connection's side), embedded in the
 * transport's own state.
 */
struct copy_end {
	const struct copy_ops *ops; /* borrowed */
	uint64_t last; /* last byte read, written or delivered, ms */
	bool rd_ready, wr_ready;
	/*
	 * An event reported a FIN, an error or urgent data: a short read no
	 * longer proves the end empty (recv stops at an urgent mark), so reads
	 * go on until 0 or would-block.
	 */
	bool drain;
	/*
	 * Urgent data on its way: splice(2) stops at the urgent mark for good
	 * (would-block, or 0 once a FIN follows); one read through the buffer
	 * goes past it (SO_OOBINLINE keeps the byte in the stream).
	 */
	bool urgent;
	bool eof; /* the peer sent FIN: read returned 0 */
	bool shut; /* we sent FIN */
	bool wrote; /* a write moved bytes (set here, cleared by the owner) */
};

struct copy_pipe {
	int rd, wr; /* -1 when none */
	uint32_t cap;
};

/* A worker's idle pipes and buffers. */
struct copy_pool {
	struct copy_pipe *v; /* owned array */
	size_t n, cap;
	size_t low; /* fewest idle pipes since the last trim */
	struct copy_pipe idle_big[COPY_PIPES_BIG];
	unsigned nidle_big, low_big; /* idle big pipes, fewest since trim */
	bool big_refused; /* the kernel refused to grow one since the trim */
	uint8_t **bufs; /* owned array of owned idle buffers */
	size_t nbufs;
};

/* One direction's bytes in flight (the order packs it in 32 bytes). */
struct copy_dir {
	uint8_t *buf; /* owned, COPY_BUF bytes, or NULL */
	struct copy_pipe p;
	uint32_t off;
	uint32_t pending; /* in buf, or in the pipe */
	bool spliceable; /* both ends can splice (set by the owner) */
	bool bulk; /* a full read happened: splice once the buffer drains */
	bool fast; /* a splice out moved half a pipe or more: big pipes */
};

/*
 * Fills the pool with its reserve of pipes, as many as can be had; returns
 * -1 only when memory runs out.
 */
int copy_pool_init(struct copy_pool *pool);
/* Closes idle pipes beyond the reserve that stayed unused since last time. */
void copy_pool_trim(struct copy_pool *pool);
void copy_pool_cleanup(struct copy_pool *pool);
/* Big pipes in the process, idle or in use (tests, stats). */
unsigned copy_big_pipes(void);

void copy_dir_init(struct copy_dir *dir);
/* Gives dir's pipe and buffer back (a pipe holding bytes is closed). */
void copy_dir_release(struct copy_dir *dir, struct copy_pool *pool);

/*
 * Moves what it can from src to dst through dir, at most *budget
 * transport calls (spent).  Bytes delivered are added to *moved; `now`
 * stamps the ends' last activity.  When src's FIN has come and every byte
 * is delivered: dst's finish, then FIN (unless src is shut too: then the
 * connection closes at once and close(2) sends it).  Returns COPY_*.
 */
enum copy_result copy_run(struct copy_dir *dir, struct copy_end *src,
    struct copy_end *dst, struct copy_pool *pool, int *budget, uint64_t *moved,
    uint64_t now);

/*
 * One read from src into dir's buffer, outside copy_run: the bytes that
 * came with a TLS client's Finished, or a camouflage listener's first
 * bytes, appended to those read before (nothing consumed them yet).
 * Returns bytes or a COPY_IO_* code (COPY_IO_AGAIN when the buffer is
 * full); an empty buffer is given back when nothing was read.
 */
ssize_t copy_fill(struct copy_dir *dir, struct copy_end *src,
    struct copy_pool *pool, uint64_t now);

#endif
