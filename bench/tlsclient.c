/*
 * tlsclient: the TLS load generator of `make bench` (case 7), and the plain
 * TCP sink/source behind the relay for its throughput runs.
 *
 *   tlsclient serve
 *       Binds 127.0.0.1:0, prints the port on stdout, then serves every
 *       connection in its own thread: a 9-byte header, 'U' or 'D' and a
 *       64-bit big-endian byte count.  'U': read that many bytes, answer
 *       one byte.  'D': send that many bytes.  Then wait for EOF, close.
 *
 *   tlsclient hs HOST PORT THREADS SECONDS full|resume
 *       THREADS threads, each looping connect + TLS handshake + close for
 *       SECONDS.  full: a new session every time (no ticket offered);
 *       resume: offers the ticket of a first full handshake (which sends one
 *       byte through and reads it back, so the upstream must echo).
 *       Prints JSON: handshakes, resumed, errors, seconds, rate (per
 *       wall-clock second).
 *
 *   tlsclient tput HOST PORT MIB up|down
 *       One TLS connection to HOST:PORT (a relay in front of `serve`): up
 *       sends MIB MiB and waits for the server's one-byte answer; down asks
 *       for MIB MiB and reads them.  Prints JSON: bytes, seconds, gbps.
 *
 * Certificates are not verified (the WhatsApp app does not either); the
 * client's TLS settings are OpenSSL's defaults (TLS 1.3, X25519).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
full_io(int fd, void *buf, size_t n, int wr)
{
	char *p = buf;
	while (n > 0) {
		ssize_t r = wr ? write(fd, p, n) : read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* ------------------------------------------------------------- serve */

static void *
serve_one(void *arg)
{
	int fd = (int)(intptr_t)arg;
	unsigned char hdr[9];
	static char zeros[CHUNK];
	char *buf = malloc(CHUNK);
	uint64_t n = 0;

	if (buf == NULL || full_io(fd, hdr, sizeof hdr, 0) < 0)
		goto out;
	for (int i = 1; i < 9; i++)
		n = n << 8 | hdr[i];
	if (hdr[0] == 'U') {
		while (n > 0) {
			ssize_t r = read(fd, buf, n < CHUNK ? n : CHUNK);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				goto out;
			n -= (uint64_t)r;
		}
		if (full_io(fd, "k", 1, 1) < 0)
			goto out;
	} else if (hdr[0] == 'D') {
		while (n > 0) {
			size_t k = n < CHUNK ? n : CHUNK;
			if (full_io(fd, zeros, k, 1) < 0)
				goto out;
			n -= k;
		}
	}
	while (read(fd, buf, CHUNK) > 0) /* until the client closes */
		;
out:
	free(buf);
	close(fd);
	return NULL;
}

static int
run_serve(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t len = sizeof a;
	int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	pthread_attr_t at;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 ||
	    listen(ls, 1024) < 0 ||
	    getsockname(ls, (struct sockaddr *)&a, &len) < 0) {
		perror("serve: bind/listen");
		return 1;
	}
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&at, 64 * 1024);
	for (;;) {
		int fd = accept(ls, NULL, NULL);
		pthread_t t;
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED ||
			    errno == EMFILE)
				continue;
			perror("serve: accept");
			return 1;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (pthread_create(&t, &at, serve_one, (void *)(intptr_t)fd) !=
		    0)
			close(fd);
	}
}

/* ------------------------------------------------------------ client */

static struct sockaddr_in target;
static SSL_CTX *ctx;

static int
tcp_connect(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct timeval tv = {.tv_sec = 10};
	if (fd < 0)
		return -1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* A TLS connection; sess, when set, is offered for resumption. */
static SSL *
tls_connect(int *fdp, SSL_SESSION *sess)
{
	int fd = tcp_connect();
	SSL *ssl;
	if (fd < 0)
		return NULL;
	ssl = SSL_new(ctx);
	SSL_set_fd(ssl, fd);
	if (sess != NULL)
		SSL_set_session(ssl, sess);
	if (SSL_connect(ssl) != 1) {
		SSL_free(ssl);
		close(fd);
		ERR_clear_error();
		return NULL;
	}
	*fdp = fd;
	return ssl;
}

static void
tls_close(SSL *ssl, int fd)
{
	/* No close_notify (the same for every path), but marked as shut down
	 * so that SSL_free() keeps the session resumable, as s_time does. */
	SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
	SSL_free(ssl);
	close(fd);
}

struct hs_arg {
	double deadline;
	int resume;
	long done, reused, errors;
};

static void *
hs_thread(void *p)
{
	struct hs_arg *a = p;
	SSL_SESSION *sess = NULL;
	int fd;

	if (a->resume) {
		char c = 'x';
		SSL *ssl = tls_connect(&fd, NULL);
		/* The echoed byte comes after the server's session tickets. */
		if (ssl == NULL || SSL_write(ssl, &c, 1) != 1 ||
		    SSL_read(ssl, &c, 1) != 1 ||
		    (sess = SSL_get1_session(ssl)) == NULL ||
		    !SSL_SESSION_is_resumable(sess)) {
			fprintf(stderr, "hs: no resumable session\n");
			a->errors++;
			if (ssl)
				tls_close(ssl, fd);
			return NULL;
		}
		tls_close(ssl, fd);
	}
	while (now() < a->deadline) {
		SSL *ssl = tls_connect(&fd, sess);
		if (ssl == NULL) {
			a->errors++;
			continue;
		}
		a->done++;
		if (SSL_session_reused(ssl))
			a->reused++;
		tls_close(ssl, fd);
	}
	if (sess)
		SSL_SESSION_free(sess);
	return NULL;
}

static int
run_hs(int nthreads, double seconds, int resume)
{
	struct hs_arg *args = calloc(nthreads, sizeof *args);
	pthread_t *th = calloc(nthreads, sizeof *th);
	long done = 0, reused = 0, errors = 0;
	double t0 = now(), t1;

	for (int i = 0; i < nthreads; i++) {
		args[i].deadline = t0 + seconds;
		args[i].resume = resume;
		pthread_create(&th[i], NULL, hs_thread, &args[i]);
	}
	for (int i = 0; i < nthreads; i++) {
		pthread_join(th[i], NULL);
		done += args[i].done;
		reused += args[i].reused;
		errors += args[i].errors;
	}
	t1 = now();
	printf("{\"handshakes\": %ld, \"resumed\": %ld, \"errors\": %ld, "
	       "\"seconds\": %.3f, "
	       "\"rate\": %.1f}\n",
	    done, reused, errors, t1 - t0, done / (t1 - t0));
	return errors > done / 100 ? 1 : 0;
}

static int
run_tput(long mib, int up)
{
	uint64_t total = (uint64_t)mib << 20, left = total;
	unsigned char hdr[9];
	char *buf = calloc(1, CHUNK);
	int fd;
	double t0, t1;
	SSL *ssl = tls_connect(&fd, NULL);

	if (ssl == NULL) {
		fprintf(stderr, "tput: TLS connect failed\n");
		return 1;
	}
	hdr[0] = up ? 'U' : 'D';
	for (int i = 0; i < 8; i++)
		hdr[8 - i] = (unsigned char)(total >> (8 * i));
	t0 = now();
	if (SSL_write(ssl, hdr, sizeof hdr) != sizeof hdr)
		goto fail;
	if (up) {
		while (left > 0) {
			int k = left < CHUNK ? (int)left : CHUNK;
			if (SSL_write(ssl, buf, k) != k)
				goto fail;
			left -= (uint64_t)k;
		}
		if (SSL_read(ssl, buf, 1) != 1)
			goto fail;
	} else {
		while (left > 0) {
			int r = SSL_read(ssl, buf, CHUNK);
			if (r <= 0)
				goto fail;
			left -= (uint64_t)r;
		}
	}
	t1 = now();
	printf("{\"bytes\": %llu, \"seconds\": %.4f, \"gbps\": %.3f}\n",
	    (unsigned long long)total, t1 - t0, total * 8 / (t1 - t0) / 1e9);
	tls_close(ssl, fd);
	return 0;
fail:
	fprintf(stderr, "tput: connection broke with %llu of %llu bytes left\n",
	    (unsigned long long)left, (unsigned long long)total);
	ERR_print_errors_fp(stderr);
	tls_close(ssl, fd);
	return 1;
}

static void
usage(void)
{
	fprintf(stderr,
	    "usage: tlsclient serve | tlsclient hs HOST PORT THREADS SECONDS "
	    "full|resume | tlsclient tput HOST PORT MIB up|down\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc == 2 && strcmp(argv[1], "serve") == 0)
		return run_serve();
	if (argc < 6)
		usage();
	target.sin_family = AF_INET;
	target.sin_port = htons((uint16_t)atoi(argv[3]));
	if (inet_pton(AF_INET, argv[2], &target.sin_addr) != 1)
		usage();
	ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (strcmp(argv[1], "hs") == 0 && argc == 7)
		return run_hs(atoi(argv[4]), atof(argv[5]),
		    strcmp(argv[6], "resume") == 0);
	if (strcmp(argv[1], "tput") == 0 && argc == 6)
		return run_tput(atol(argv[4]), strcmp(argv[5], "up") == 0);
	usage();
	return 2;
}
