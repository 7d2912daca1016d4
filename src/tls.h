/*
 * tls: TLS termination for listeners with OpenSSL 3.  The only module that
 * includes OpenSSL headers.
 *
 * A tls_ctx holds a listener's certificate (supplied PEM files, or a CA and
 * leaf generated in memory at start) and settings; it is reference counted
 * and shared by every worker (OpenSSL contexts are thread-safe for
 * creating connections).  A tls_conn is one connection's TLS state over a
 * non-blocking socket.  Session tickets are encrypted with keys kept in
 * memory only and rotated every 12 hours.
 */
#ifndef LIFELINE_TLS_H
#define LIFELINE_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "config.h"

struct tls_ctx;
struct tls_conn;

#ifdef LIFELINE_TEST_HOOKS
/* OpenSSL's allocations through failalloc; before any other TLS call. */
void tls_test_hooks_init(void);
#endif

enum tls_status {
	TLS_DONE = 0, /* handshake finished, or shutdown alert sent */
	TLS_WANT_READ, /* retry when the socket is readable */
	TLS_WANT_WRITE, /* retry when the socket is writable */
	TLS_EOF, /* the peer closed (close_notify) */
	TLS_ALERT, /* protocol error: OpenSSL sent the peer a fatal alert */
	TLS_FAIL, /* socket error or EOF without close_notify: the peer is gone
	           */
};

/*
 * Builds the context for listener cl: loads cl->cert/cl->key, or generates
 * a certificate of cl->key_type with subjectAltNames from cl->tls_names,
 * cl->tls_ips and the SSL_DNS/SSL_IP environment variables.  Returns NULL
 * with a message in err.
 */
struct tls_ctx *tls_ctx_new(
    const struct cfg_listen *cl, char *err, size_t errlen);
void tls_ctx_ref(struct tls_ctx *t);
void tls_ctx_unref(struct tls_ctx *t);
/* True when t was made for settings equal to cl's and may serve it. */
bool tls_ctx_reusable(const struct tls_ctx *t, const struct cfg_listen *cl);

/* A server-side connection over fd (borrowed).  NULL on failure. */
struct tls_conn *tls_conn_new(struct tls_ctx *t, int fd);
void tls_conn_free(struct tls_conn *tc);

enum tls_status tls_handshake(struct tls_conn *tc);
/*
 * Reads or writes up to len bytes.  Returns the count (> 0), or 0 with the
 * reason in *st (never TLS_DONE).
 */
size_t tls_read(
    struct tls_conn *tc, void *buf, size_t len, enum tls_status *st);
size_t tls_write(
    struct tls_conn *tc, const void *buf, size_t len, enum tls_status *st);
/* Sends close_notify (once).  TLS_DONE, TLS_WANT_WRITE or TLS_FAIL. */
enum tls_status tls_close_notify(struct tls_conn *tc);
bool tls_conn_resumed(const struct tls_conn *tc);

const char *tls_status_str(enum tls_status st);

/* What `lifeline doctor` shows of a context's certificate. */
struct tls_cert_info {
	time_t not_before, not_after;
	char subject[256]; /* one line, OpenSSL's RFC 2253 form */
	char names[1024]; /* subjectAltNames "DNS:a, IP:b", or "" */
};

/* Fills out from t's certificate.  Returns 0, or -1 when it has none. */
int tls_ctx_cert_info(const struct tls_ctx *t, struct tls_cert_info *out);

/*
 * A client handshake over fd (borrowed: a connected TCP socket, made
 * non-blocking here), as an app would make it, without verifying the
 * certificate, within timeout_ms.  sni NULL sends no server_name.  On
 * success returns 0 with the protocol ("TLSv1.3") in proto and the
 * server certificate's subject in subject; otherwise -1 with the reason
 * in err.
 */
int tls_client_probe(int fd, const char *sni, unsigned timeout_ms, char *proto,
    size_t protolen, char *subject, size_t subjlen, char *err, size_t errlen);

#endif
