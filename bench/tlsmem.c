/*
 * tlsmem: what OpenSSL itself keeps per idle server-side TLS connection,
 * the floor under the "RSS per idle TLS connection" row (issue 16).
 *
 *   cc -O2 -o tlsmem bench/tlsmem.c -lssl -lcrypto && ./tlsmem [N]
 *
 * N (default 1000) connections over socketpairs, each: a TLS 1.3
 * handshake with a P-256 certificate, one 300-byte message each way, the
 * server's read buffer empty.  The server context has lifeline's settings
 * (tls.c: release buffers, read-ahead, no session cache, 2 tickets).
 * Every OpenSSL allocation goes through counting functions
 * (CRYPTO_set_mem_functions) that charge it to the side in whose call it
 * was made; prints the server side's live bytes and allocations per
 * connection, then the allocation sites holding more than 50 bytes per
 * connection (OpenSSL's file:line).  Not part of the build or the tests.
 */
#include <fcntl.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_SITES 4096

struct site {
	const char *file;
	int line;
	long bytes, count;
};

static struct site sites[MAX_SITES];
static int nsites;
static int server; /* 1 while a server-side call runs */
static long live_bytes, live_count; /* the server side's */

/* Each block carries its size, its side and its site before it. */
struct hdr {
	size_t size;
	int server;
	int site;
	long pad; /* keeps the block 16-byte aligned */
};

static int
site_of(const char *file, int line)
{
	for (int i = 0; i < nsites; i++)
		if (sites[i].line == line && sites[i].file == file)
			return i;
	if (nsites == MAX_SITES)
		return 0;
	sites[nsites].file = file;
	sites[nsites].line = line;
	return nsites++;
}

static void
charge(struct hdr *h, long sign)
{
	if (!h->server)
		return;
	live_bytes += sign * (long)h->size;
	live_count += sign;
	sites[h->site].bytes += sign * (long)h->size;
	sites[h->site].count += sign;
}

static void *
m_alloc(size_t n, const char *file, int line)
{
	struct hdr *h = malloc(sizeof(*h) + n);

	if (h == NULL)
		return NULL;
	h->size = n;
	h->server = server;
	h->site = server ? site_of(file, line) : 0;
	charge(h, 1);
	return h + 1;
}

static void
m_free(void *p, const char *file, int line)
{
	struct hdr *h;

	(void)file;
	(void)line;
	if (p == NULL)
		return;
	h = (struct hdr *)p - 1;
	charge(h, -1);
	free(h);
}

static void *
m_realloc(void *p, size_t n, const char *file, int line)
{
	struct hdr *h, *g;

	if (p == NULL)
		return m_alloc(n, file, line);
	h = (struct hdr *)p - 1;
	charge(h, -1);
	g = realloc(h, sizeof(*g) + n);
	if (g == NULL) {
		charge(h, 1);
		return NULL;
	}
	g->size = n;
	charge(g, 1);
	return g + 1;
}

static SSL_CTX *
server_ctx(void)
{
	SSL_CTX *s = SSL_CTX_new(TLS_server_method());
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *x = X509_new();

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, k);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	    (const unsigned char *)"tlsmem", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_sign(x, k, EVP_sha256());
	SSL_CTX_use_certificate(s, x);
	SSL_CTX_use_PrivateKey(s, k);
	SSL_CTX_set_options(s,
	    SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
	        SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(s,
	    SSL_MODE_ENABLE_PARTIAL_WRITE |
	        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_read_ahead(s, 1);
	SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(s, 2);
	return s;
}

/* One connection: handshake, a message each way; 0 when it all worked. */
static int
one(SSL_CTX *sctx, SSL_CTX *cctx, SSL **ss, SSL **cs)
{
	int sv[2], sdone = 0, cdone = 0;
	char buf[512];
	size_t n = 0;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
		return -1;
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	fcntl(sv[1], F_SETFL, O_NONBLOCK);
	server = 1;
	*ss = SSL_new(sctx);
	SSL_set_fd(*ss, sv[1]);
	SSL_set_accept_state(*ss);
	server = 0;
	*cs = SSL_new(cctx);
	SSL_set_fd(*cs, sv[0]);
	SSL_set_connect_state(*cs);
	for (int i = 0; i < 100 && !(sdone && cdone); i++) {
		server = 0;
		cdone = cdone || SSL_do_handshake(*cs) == 1;
		server = 1;
		sdone = sdone || SSL_do_handshake(*ss) == 1;
	}
	memset(buf, 'x', 300);
	server = 0;
	if (!sdone || !cdone || SSL_write_ex(*cs, buf, 300, &n) != 1)
		return -1;
	server = 1;
	if (SSL_read_ex(*ss, buf, sizeof(buf), &n) != 1 ||
	    SSL_write_ex(*ss, buf, n, &n) != 1)
		return -1;
	server = 0;
	if (SSL_read_ex(*cs, buf, sizeof(buf), &n) != 1)
		return -1;
	server = 1;
	(void)SSL_read_ex(*ss, buf, sizeof(buf), &n); /* would block */
	server = 0;
	return 0;
}

int
main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1000;
	SSL_CTX *sctx, *cctx;
	SSL **ss, **cs;
	long bytes0, count0;

	if (n <= 0 || !CRYPTO_set_mem_functions(m_alloc, m_realloc, m_free))
		return 2;
	server = 1;
	sctx = server_ctx();
	server = 0;
	cctx = SSL_CTX_new(TLS_client_method());
	ss = calloc((size_t)n, sizeof(*ss));
	cs = calloc((size_t)n, sizeof(*cs));
	if (sctx == NULL || cctx == NULL || ss == NULL || cs == NULL)
		return 1;
	bytes0 = live_bytes;
	count0 = live_count;
	for (int i = 0; i < nsites; i++)
		sites[i].bytes = sites[i].count = 0;
	for (int i = 0; i < n; i++) {
		if (one(sctx, cctx, &ss[i], &cs[i]) != 0) {
			fprintf(stderr, "tlsmem: connection %d failed\n", i);
			return 1;
		}
	}
	printf("%d idle server-side TLS connections: %.0f bytes and %.1f "
	       "allocations each held by OpenSSL\n",
	    n, (double)(live_bytes - bytes0) / n,
	    (double)(live_count - count0) / n);
	for (int i = 0; i < nsites; i++)
		if (sites[i].bytes > 50L * n)
			printf("%8.0f B %5.2f allocations  %s:%d\n",
			    (double)sites[i].bytes / n,
			    (double)sites[i].count / n, sites[i].file,
			    sites[i].line);
	return 0;
}
