/*
 * config: the INI configuration (libinih), presets, validation, printing.
 *
 * A struct cfg is immutable once loaded; a reload builds a new one.
 */
#ifndef LIFELINE_CONFIG_H
#define LIFELINE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "addr.h"
#include "log.h"

#define CFG_MAX_WORKERS 64
#define CFG_ERRLEN 512
#define CFG_MAX_NAME 32

enum cfg_send_proxy {
	CFG_SEND_PROXY_NONE = 0,
	CFG_SEND_PROXY_V1,
	CFG_SEND_PROXY_V2,
};

enum cfg_key_type {
	CFG_KEY_EC256 = 0,
	CFG_KEY_RSA2048,
	CFG_KEY_RSA4096,
};

struct cfg_strlist {
	char **v; /* owned, each owned */
	size_t n;
};

struct cfg_server {
	char *host; /* owned: name or numeric address, no brackets */
	uint16_t port;
	int line;
};

struct cfg_upstream {
	char *name; /* owned */
	int line;
	struct cfg_server *servers; /* owned array */
	size_t nservers;
	enum cfg_send_proxy send_proxy;
	uint64_t check_interval_ms;
};

struct cfg_bind {
	char *text; /* owned: as written, for messages */
	struct sockaddr_storage ss;
	socklen_t sslen;
	int line;
};

/* Per-source limits (srclimit.h); 0 is off. */
struct cfg_srclimit {
	unsigned max_conn;
	unsigned rate; /* new connections per period_ms, and the burst */
	uint64_t period_ms;
	bool has_conn, has_rate; /* set in this section (a listener's own) */
};

struct cfg_listen {
	char *name; /* owned */
	int line;
	struct cfg_bind *binds; /* owned array */
	size_t nbinds;
	bool tls;
	char *cert; /* owned, may be NULL */
	char *key; /* owned, may be NULL */
	enum cfg_key_type key_type;
	struct cfg_strlist tls_names;
	struct cfg_strlist tls_ips;
	bool accept_proxy;
	struct cfg_strlist trusted_text; /* as written */
	struct addr_cidr *trusted; /* owned array, parallel to text */
	char *upstream_name; /* owned */
	int upstream_line;
	size_t upstream; /* index into cfg.upstreams, set by validation */
	/* Camouflage: where connections that are not WhatsApp's go. */
	char *decoy_name; /* owned; NULL: no decoy, nothing classified */
	int decoy_line;
	size_t decoy; /* index into cfg.upstreams, set by validation */
	/* TLS listeners: ClientHellos naming these pass through untouched. */
	struct cfg_strlist passthrough_sni; /* patterns (hello.h) */
	char *passthrough_name; /* owned; NULL: none */
	int passthrough_line;
	size_t passthrough;
	/* TLS listeners: bytes that are not TLS go raw to this group. */
	char *decoy_tls_name; /* owned; NULL: none */
	int decoy_tls_line;
	size_t decoy_tls;
	unsigned maxconn; /* 0: only the global cap applies */
	struct cfg_srclimit srclimit; /* overrides of the global one */
	/* TCP keep-alive toward clients: idle time before probes; 0: off. */
	uint64_t keepalive_ms;
	/* TLS answers (camouflage: as the decoy's web server answers). */
	struct cfg_strlist tls_alpn; /* protocols we select, in our order */
	unsigned tls_tickets; /* TLS 1.3 tickets per full handshake */
	uint64_t tls_ticket_lifetime_ms; /* the lifetime hint in tickets */
	char *tls_ciphers; /* owned; TLS 1.2 suites, OpenSSL's syntax */
	bool tls_prefer_server; /* our suite order, not the client's */
};

#define CFG_TLS_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
#define CFG_TLS_TICKETS 1
#define CFG_TLS_TICKET_LIFETIME_MS (2 * 3600 * 1000ULL)

/* socket-buffers' range: a few segments, up to what a 1 Gbit/s path of
 * 500 ms could use.  The kernel doubles the value (its own overhead) and,
 * without CAP_NET_ADMIN, caps it at net.core.rmem_max / wmem_max. */
#define CFG_SOCKBUF_MIN (4 * 1024)
#define CFG_SOCKBUF_MAX (64 * 1024 * 1024)

/* client-keepalive's default: dead clients found within about 2 min. */
#define CFG_KEEPALIVE_MS 60000

struct cfg_timeouts {
	uint64_t connect_ms;
	uint64_t client_ms;
	uint64_t server_ms;
	uint64_t client_fin_ms;
	uint64_t server_fin_ms;
	uint64_t handshake_ms;
};

struct cfg {
	char *source; /* owned: file path or "<preset NAME>" */
	unsigned workers; /* 0: one per online CPU */
	unsigned maxconn;
	char *user; /* owned, may be NULL */
	uint64_t drain_timeout_ms;
	enum log_level log_level;
	char *ports_file; /* owned, may be NULL */
	char *public_host; /* owned, may be NULL */
	bool sandbox; /* seccomp allow-list after start-up (default on) */
	struct cfg_srclimit srclimit;
	unsigned source_prefix4; /* how sources are grouped: /32 */
	unsigned source_prefix6; /* /64 */
	unsigned source_table_size; /* sources tracked at most */
	/* SO_RCVBUF and SO_SNDBUF of every relayed socket, client and
	 * upstream, in bytes; 0: the kernel's autotuning. */
	unsigned socket_buffers;
	struct cfg_timeouts timeouts;
	struct cfg_bind *stats; /* owned array */
	size_t nstats;
	bool stats_public; /* [stats] public: non-loopback addresses meant */
	struct cfg_upstream *upstreams; /* owned array */
	size_t nupstreams;
	struct cfg_listen *listens; /* owned array */
	size_t nlistens;
};

/*
 * Loads and validates a file.  Returns the config, or NULL with a one-line
 * message "FILE:LINE: what" (or "FILE: what") in err.
 */
struct cfg *cfg_load_file(const char *path, char *err, size_t errlen);

/* Same for a built-in preset ("whatsapp", "minimal"). */
struct cfg *cfg_load_preset(const char *name, char *err, size_t errlen);

/* Same for INI text in memory; source names it in messages. */
struct cfg *cfg_load_string(
    const char *text, const char *source, char *err, size_t errlen);

void cfg_free(struct cfg *cfg);

/* Receives one warning: a line, without its newline. */
typedef void (*cfg_warn_cb)(const char *msg);

/*
 * Calls warn once per risk in a valid cfg that is allowed but deserves a
 * word: accept-proxy listeners on a non-loopback address without
 * trusted-proxies (one call naming them all), non-loopback stats
 * addresses without 'public = on' (one call naming them all).
 */
void cfg_warnings(const struct cfg *cfg, cfg_warn_cb warn);

/* Writes the effective configuration, defaults included, as INI. */
void cfg_print(const struct cfg *cfg, FILE *out);
/* True when some listener sets a per-source limit of its own. */
bool cfg_any_listener_srclimit(const struct cfg *cfg);

/*
 * Parsers for values, exposed for the unit tests.  Each returns NULL on
 * success or a static message.
 */
const char *cfg_parse_duration(const char *s, uint64_t *ms);
/* "N", "Nk" or "Nm" (bytes, KiB, MiB) within [min, max]; NULL or why not. */
const char *cfg_parse_size(
    const char *s, unsigned min, unsigned max, unsigned *out);
const char *cfg_parse_uint(
    const char *s, unsigned min, unsigned max, unsigned *out);
const char *cfg_parse_bool(const char *s, bool *out);

const char *cfg_send_proxy_str(enum cfg_send_proxy v);
const char *cfg_key_type_str(enum cfg_key_type v);

#endif
