/*
 * minirelay: the floor of a splice(2) relay, a reference path of `make
 * bench` (issue 16), not a server for anything else.
 *
 *   minirelay UPSTREAM_PORT
 *       Listens on 127.0.0.1:0 and prints the port.  Each connection dials
 *       127.0.0.1:UPSTREAM_PORT; one thread per direction moves the bytes
 *       with splice(2) through a 1 MiB pipe, blocking; EOF is passed on with
 *       shutdown(SHUT_WR); the second thread to end closes both sockets.
 *       Error handling: the minimum.  Threads, not processes, so that
 *       /proc/PID/stat counts all its CPU.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define PIPE_SIZE (1 << 20)

struct half {
	int from, to;
	int *left; /* shared by both directions: the last one frees it */
};

static void *
pump(void *arg)
{
	struct half *h = arg;
	int p[2];
	if (pipe2(p, O_CLOEXEC) == 0) {
		fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE);
		ssize_t n;
		while ((n = splice(h->from, NULL, p[1], NULL, PIPE_SIZE,
		            SPLICE_F_MOVE)) > 0) {
			while (n > 0) {
				ssize_t w = splice(p[0], NULL, h->to, NULL,
				    (size_t)n, SPLICE_F_MOVE);
				if (w <= 0)
					break;
				n -= w;
			}
			if (n > 0)
				break;
		}
		close(p[0]);
		close(p[1]);
	}
	shutdown(h->to, SHUT_WR);
	if (__atomic_sub_fetch(h->left, 1, __ATOMIC_ACQ_REL) == 0) {
		close(h->from);
		close(h->to);
		free(h->left);
	}
	free(h);
	return NULL;
}

static void
start(int from, int to, int *left)
{
	pthread_t t;
	struct half *h = malloc(sizeof *h);
	h->from = from;
	h->to = to;
	h->left = left;
	pthread_create(&t, NULL, pump, h);
	pthread_detach(t);
}

int
main(int argc, char **argv)
{
	struct sockaddr_in a = {.sin_family = AF_INET}, up = a;
	socklen_t len = sizeof a;
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	if (argc != 2)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	a.sin_addr.s_addr = up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	up.sin_port = htons((unsigned short)atoi(argv[1]));
	if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 ||
	    listen(ls, 128) < 0 ||
	    getsockname(ls, (struct sockaddr *)&a, &len) < 0)
		return 1;
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	for (;;) {
		int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int *left = malloc(sizeof *left);
		if (c < 0 || u < 0 || left == NULL ||
		    connect(u, (struct sockaddr *)&up, sizeof up) < 0) {
			close(c);
			close(u);
			free(left);
			continue;
		}
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		*left = 2;
		start(c, u, left);
		start(u, c, left);
	}
}
