/*
 * doctor: `lifeline doctor`, a self-test an operator runs on the relay
 * host, with or without a running relay.  Each check prints one line,
 * "ok", "warn" or "fail", what it found in plain words and what to do.
 *
 * What "accepts" and "public" mean, the time bounds and the privileges
 * needed are written in docs/lifeline.8 (DOCTOR); in short: every probe
 * has a timeout and the whole run ends within DOCTOR_BUDGET_MS; nothing
 * needs root; no address of a client is ever printed (doctor accepts no
 * connection: the addresses it prints are the configuration's and those
 * it dialled).
 */
#ifndef LIFELINE_DOCTOR_H
#define LIFELINE_DOCTOR_H

#include <stddef.h>

/* The whole run, every probe included. */
#define DOCTOR_BUDGET_MS 60000
/* Upstream names, all resolved at once. */
#define DOCTOR_RESOLVE_MS 5000
/* An upstream connect: the config's `connect`, at most this. */
#define DOCTOR_CONNECT_MAX_MS 10000
/* After a PROXY LOCAL header, how long the server must keep quiet. */
#define DOCTOR_PP_WATCH_MS 500
/* One request to the stats listener. */
#define DOCTOR_HTTP_MS 2000
/* The look at the running relay's counters. */
#define DOCTOR_LOOK_MS 2000
/* One --outside probe (TCP connect, or a TLS handshake). */
#define DOCTOR_OUTSIDE_MS 3000
/* A certificate expiring sooner draws a warning. */
#define DOCTOR_CERT_WARN_DAYS 14

/*
 * Descriptors a relay needs for maxconn connections with workers
 * threads and nbinds bound addresses: a client and an upstream socket
 * per connection (pipes come from a pool only while bytes are in flight,
 * and accept pauses when descriptors run short), one listening socket
 * per worker per address, each worker's loop, mailbox and reserve of
 * two pipes, and a fixed part (stats clients, health checks, resolver,
 * signals).
 */
unsigned long doctor_fds_needed(
    unsigned maxconn, unsigned workers, size_t nbinds);

/* `lifeline doctor ...`: returns the exit status (0: nothing failed). */
int doctor_cli(int argc, char **argv);

#endif
