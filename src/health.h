/*
 * health: active L4 health checks of upstream servers, on the control
 * thread's loop.  Each server of the generation in force is checked every
 * check-interval (the shortest of its groups'), with jitter, and faster
 * while it is down.  A check connects (each resolved address in turn, with
 * the connect timeout), writes a PROXY LOCAL header when the group sends
 * PROXY headers, and closes.  Results go to upstream_check_report().
 *
 * Also the client side of `lifeline health`, the probe of a running relay's
 * /readyz.
 */
#ifndef LIFELINE_HEALTH_H
#define LIFELINE_HEALTH_H

#include "gen.h"
#include "loop.h"

struct health;

struct health *health_new(struct loop *loop);
/* Checks g's servers from now on (g borrowed: keep it alive meanwhile). */
void health_apply(struct health *h, struct gen *g);
void health_free(struct health *h);

/*
 * The `lifeline health` probe (readiness for container health checks): one
 * GET with an overall timeout; ready means a strictly well-formed status
 * line with status 200.
 */
#define HEALTH_PROBE_TIMEOUT_MS 3000
/* "HTTP/1.x 200 ": the fixed part of a status line. */
#define HEALTH_STATUS_PREFIX 13
/* A longer status line is malformed. */
#define HEALTH_STATUS_MAX 512

enum health_probe {
	HEALTH_PROBE_READY,
	HEALTH_PROBE_NOT_READY, /* a status other than 200 */
	HEALTH_PROBE_MALFORMED, /* not "HTTP/1.x SP 3DIGIT SP reason CRLF" */
	HEALTH_PROBE_NO_RESPONSE, /* closed before a byte came */
	HEALTH_PROBE_RESOLVE_FAILED,
	HEALTH_PROBE_CONNECT_FAILED,
	HEALTH_PROBE_TIMEOUT, /* connect or response */
	HEALTH_PROBE_IO_ERROR,
};

enum health_status {
	HEALTH_STATUS_NEED_MORE,
	HEALTH_STATUS_OK,
	HEALTH_STATUS_ERR,
};

const char *health_probe_str(enum health_probe r);
/*
 * Parses the status line at the start of buf (RFC 9112 section 4):
 * "HTTP/1." DIGIT SP 3DIGIT SP reason-phrase CRLF, the reason maybe empty.
 * OK sets *code; ERR as soon as a byte breaks the grammar.
 */
enum health_status health_parse_status(const char *buf, size_t len, int *code);
/*
 * GETs path from host:port within HEALTH_PROBE_TIMEOUT_MS.  Sets *code (the
 * status, when one came), *err (an errno, or a getaddrinfo() error for
 * RESOLVE_FAILED) and peer (the address tried last, for messages).
 */
enum health_probe health_probe(const char *host, const char *port,
    const char *path, int *code, int *err, char *peer, size_t peerlen);
/*
 * GETs path from sa and reads the whole response (the server closes it)
 * into buf, NUL-terminated, within timeout_ms: `lifeline doctor` reads a
 * running relay's stats listener so.  Returns READY (status 200) or
 * NOT_READY (*code has the status) with *body pointing at the body in
 * buf, or a failure (*err: an errno) with *body NULL.  A response longer
 * than cap - 1 bytes is MALFORMED.
 */
enum health_probe health_fetch(const struct sockaddr *sa, const char *path,
    uint64_t timeout_ms, char *buf, size_t cap, int *code, const char **body,
    int *err);
/*
 * `lifeline health [--url URL]`: returns the exit status: 0 ready, 1 not
 * (with one line on stderr saying why), 2 usage error.
 */
int health_cli(int argc, char **argv);

#endif
