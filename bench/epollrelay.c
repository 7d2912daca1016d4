/*
 * epollrelay: the floor of an event-driven splice(2) relay, a reference
 * path of `make bench` beside minirelay.c (issue 16), not a server for
 * anything else.
 *
 *   epollrelay UPSTREAM_PORT
 *       Listens on 127.0.0.1:0 and prints the port.  Each connection dials
 *       127.0.0.1:UPSTREAM_PORT.  One thread, one edge-triggered epoll set;
 *       non-blocking sockets; each direction moves bytes end -> 1 MiB pipe
 *       -> end with splice(2) until both calls would block, as lifeline's
 *       bulk directions do, but with nothing else: no timeouts, no
 *       buffers, no counters, no TLS.  EOF is passed on with
 *       shutdown(SHUT_WR); a connection closes once both directions have.
 *       Error handling: the minimum.
 *
 * minirelay (a blocking thread per direction) and this relay differ only
 * in how they wait: what lifeline costs beyond this one is lifeline's
 * own; what this one costs beyond minirelay is the price of serving
 * thousands of connections from one thread.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define PIPE_SIZE (1 << 20)

struct dir {
	int p[2];
	size_t pending;
	bool eof, shut;
};

struct conn;
struct side {
	struct conn *c;
	bool rd, wr; /* an edge came and no call would-blocked since */
};

struct conn {
	int fd[2]; /* client, upstream */
	struct side s[2];
	struct dir d[2]; /* d[i]: fd[i] -> fd[!i] */
	bool dead; /* freed at the end of the batch: later events see it */
};

/* Moves what it can from c->fd[i] to c->fd[!i]; false when cut. */
static bool
run(struct conn *c, int i)
{
	struct dir *d = &c->d[i];

	for (;;) {
		bool progress = false;
		ssize_t n;

		if (d->pending > 0 && c->s[!i].wr) {
			n = splice(d->p[0], NULL, c->fd[!i], NULL, d->pending,
			    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				/* Short: the socket is full (its next edge
				 * says). */
				if ((size_t)n < d->pending)
					c->s[!i].wr = false;
				d->pending -= (size_t)n;
				progress = true;
			} else if (n < 0 && errno == EAGAIN) {
				c->s[!i].wr = false;
			} else {
				return false;
			}
		}
		if (!d->eof && c->s[i].rd && d->pending < PIPE_SIZE) {
			n = splice(c->fd[i], NULL, d->p[1], NULL,
			    PIPE_SIZE - d->pending,
			    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				d->pending += (size_t)n;
				progress = true;
			} else if (n == 0) {
				d->eof = true;
			} else if (errno == EAGAIN) {
				/* Or the pipe is out of slots: try once it
				 * drains. */
				if (d->pending == 0)
					c->s[i].rd = false;
			} else {
				return false;
			}
		}
		if (d->eof && d->pending == 0 && !d->shut) {
			shutdown(c->fd[!i], SHUT_WR);
			d->shut = true;
		}
		if (!progress)
			return true;
	}
}

static void
conn_free(struct conn *c)
{
	for (int i = 0; i < 2; i++) {
		close(c->fd[i]);
		close(c->d[i].p[0]);
		close(c->d[i].p[1]);
	}
	free(c);
}

/* Accepts one connection and dials for it (blocking: a reference path). */
static void
conn_new(int ep, int ls, const struct sockaddr_in *up)
{
	int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	struct conn *c = calloc(1, sizeof *c);

	if (fd < 0 || u < 0 || c == NULL ||
	    connect(u, (const struct sockaddr *)up, sizeof *up) < 0 ||
	    pipe2(c->d[0].p, O_CLOEXEC | O_NONBLOCK) < 0) {
		close(fd);
		close(u);
		free(c);
		return;
	}
	if (pipe2(c->d[1].p, O_CLOEXEC | O_NONBLOCK) < 0) {
		c->d[1].p[0] = c->d[1].p[1] = -1;
		c->fd[0] = fd;
		c->fd[1] = u;
		conn_free(c);
		return;
	}
	c->fd[0] = fd;
	c->fd[1] = u;
	fcntl(u, F_SETFL, O_NONBLOCK);
	for (int i = 0; i < 2; i++) {
		struct epoll_event e = {
		    .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
		    .data.ptr = &c->s[i]};

		c->s[i].c = c;
		fcntl(c->d[i].p[1], F_SETPIPE_SZ, PIPE_SIZE);
		setsockopt(
		    c->fd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		epoll_ctl(ep, EPOLL_CTL_ADD, c->fd[i], &e);
	}
}

int
main(int argc, char **argv)
{
	struct sockaddr_in a = {.sin_family = AF_INET}, up = a;
	socklen_t len = sizeof a;
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[64];

	if (argc != 2)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	a.sin_addr.s_addr = up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	up.sin_port = htons((unsigned short)atoi(argv[1]));
	if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 ||
	    listen(ls, 128) < 0 ||
	    getsockname(ls, (struct sockaddr *)&a, &len) < 0 ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0)
		return 1;
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	for (;;) {
		int n = epoll_wait(ep, evs, 64, -1), ndead = 0;
		struct conn *dead[64];

		for (int k = 0; k < n; k++) {
			struct side *sd = evs[k].data.ptr;
			uint32_t e = evs[k].events;

			if (sd == NULL) {
				conn_new(ep, ls, &up);
				continue;
			}
			if (e & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
				sd->rd = true;
			if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
				sd->wr = true;
			/* Both directions, as lifeline runs a connection. */
			if (sd->c->dead)
				continue;
			if (!run(sd->c, 0) || !run(sd->c, 1) ||
			    (sd->c->d[0].shut && sd->c->d[1].shut)) {
				sd->c->dead = true;
				dead[ndead++] = sd->c;
			}
		}
		while (ndead > 0)
			conn_free(dead[--ndead]); /* close(2): out of the set */
	}
}
