/*
 * notify: the service manager's readiness protocol (sd_notify(3)), by hand.
 *
 * When systemd starts lifeline with Type=notify it sets $NOTIFY_SOCKET to
 * an AF_UNIX datagram socket (a path, or '@' for the abstract namespace).
 * Each message is one datagram of newline-separated VAR=value lines:
 * READY=1 once every listener accepts, RELOADING=1 with MONOTONIC_USEC at
 * a SIGHUP and READY=1 when it is done (applied or refused), STOPPING=1
 * at the first stop signal, and STATUS= with the live connection count.
 *
 * The socket is connected once at start, before the sandbox, so sending
 * later takes one send(2) and no new descriptor.  Written here rather than
 * linked from libsystemd: the protocol is one datagram, and libsystemd
 * would bring its compression and crypto libraries into a process that
 * holds TLS keys.  Without $NOTIFY_SOCKET every call does nothing.
 */
#ifndef LIFELINE_NOTIFY_H
#define LIFELINE_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>

/* How often STATUS= is refreshed (only when its figures changed). */
#define NOTIFY_STATUS_INTERVAL_MS 5000
/* Longest message sent; longer ones are cut at a line boundary. */
#define NOTIFY_MAX 512

/*
 * Connects to $NOTIFY_SOCKET when set, and unsets it (nothing we start
 * should speak for us).  Returns 0, or -1 with err set when the variable
 * is set but unusable: the caller warns and goes on, since the manager
 * will report the missing READY itself.
 */
int notify_open(char *err, size_t errlen);
bool notify_enabled(void);
/* Sends one message (printf-style); returns 0 or -1 with errno. */
int notify_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* RELOADING=1 and MONOTONIC_USEC=<now>, as systemd 253+ expects. */
int notify_reloading(void);
void notify_close(void);

#endif
