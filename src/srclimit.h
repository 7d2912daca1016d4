/*
 * srclimit: per-source connection limits, exact across workers.
 *
 * A source is a client address cut to a prefix (IPv4 /32 and IPv6 /64 by
 * default: one IPv6 subscriber usually holds a /64).  Two limits, each off
 * unless configured, in [global] and overridden per listener:
 *   max-conn-per-source        live connections of one source
 *   new-conn-rate-per-source   new connections, a token bucket holding
 *                              N tokens and refilled N per second/minute
 * Both are off by default: behind carrier-grade NAT many users share one
 * address, and a limit would refuse them together.
 *
 * The table is shared by every worker, cut into shards with a mutex each.
 * A connection takes a shard's lock twice (admission, end), never while
 * bytes flow.  Steering each source to one worker (a reuseport BPF program
 * hashing the TCP source) would avoid the locks, but on accept-proxy
 * listeners the source is the one from the PROXY header, known only after
 * the header arrived, in whichever worker accepted the connection.
 *
 * Memory is bounded: at most `source-table-size` sources (preallocated per
 * shard on first use, SRCLIMIT_ENTRY_BYTES each).  An entry is reused once
 * its source holds no connection and its bucket has refilled.  When a
 * shard is full of live sources, a new source is admitted without a limit
 * (fail open: refusing strangers because of a flood of others would hand
 * an attacker everyone else) and counted.
 *
 * Keys are hashed with a secret seed drawn at start, so that an attacker
 * who picks source addresses cannot choose which shard or chain they hit.
 */
#ifndef LIFELINE_SRCLIMIT_H
#define LIFELINE_SRCLIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define SRCLIMIT_SHARDS 64
#define SRCLIMIT_MIN_SIZE SRCLIMIT_SHARDS
#define SRCLIMIT_MAX_SIZE (1u << 24)
#define SRCLIMIT_DEFAULT_SIZE 65536
/* Longest rate period ("N/h"); with rate this bounds bucket arithmetic. */
#define SRCLIMIT_MAX_PERIOD_MS (3600u * 1000u)
#define SRCLIMIT_MAX_RATE 1000000u

/* One limit set: a listener's, or the global one (0 = off). */
struct srclimit_rule {
	uint32_t scope; /* 0 global, else the listener's (srclimit_scope) */
	unsigned max_conn;
	unsigned rate; /* tokens per period, also the bucket's size */
	uint64_t period_ms;
};

enum srclimit_verdict {
	SRCLIMIT_ADMIT, /* counted: release the ticket at the end */
	SRCLIMIT_REFUSE_CONN, /* max-conn-per-source reached */
	SRCLIMIT_REFUSE_RATE, /* new-conn-rate-per-source exceeded */
	SRCLIMIT_ADMIT_FULL, /* table full: admitted, not counted */
};

/* What an admitted connection gives back at its end. */
struct srclimit_ticket {
	uint32_t slot; /* shard * per-shard + index; UINT32_MAX: none */
};

struct srclimit;

/*
 * A table of at most size sources (rounded down to a multiple of
 * SRCLIMIT_SHARDS); prefix4/prefix6 cut the addresses.  Memory is taken
 * per shard at its first use.  NULL when out of memory.
 */
struct srclimit *srclimit_new(
    unsigned size, unsigned prefix4, unsigned prefix6);
/* Reference counted: a generation holds one, and shares it with the next
 * when the table's settings did not change. */
void srclimit_ref(struct srclimit *t);
void srclimit_free(struct srclimit *t); /* drops a reference */
/* True when t was made with these settings (after their rounding). */
bool srclimit_same(const struct srclimit *t, unsigned size, unsigned prefix4,
    unsigned prefix6);

/* A listener's scope: a stable non-zero hash of its name. */
uint32_t srclimit_scope(const char *listener_name);

/*
 * Admits one new connection from sa (IPv4, IPv6, v4-mapped counts as
 * IPv4) under rule at time now_ms (monotonic).  tk is set for ADMIT and
 * cleared otherwise.  A rule with both limits off admits without a ticket.
 */
enum srclimit_verdict srclimit_admit(struct srclimit *t,
    const struct srclimit_rule *rule, const struct sockaddr *sa,
    uint64_t now_ms, struct srclimit_ticket *tk);
/* The connection admitted with tk ended; tk is cleared. */
void srclimit_release(struct srclimit *t, struct srclimit_ticket *tk);
void srclimit_ticket_init(struct srclimit_ticket *tk);
bool srclimit_ticket_held(const struct srclimit_ticket *tk);

/* Figures for /metrics (relaxed reads). */
struct srclimit_stats {
	uint64_t entries; /* sources tracked now */
	uint64_t capacity;
	uint64_t full_admitted; /* admitted because the table was full */
};
void srclimit_stats(const struct srclimit *t, struct srclimit_stats *out);

/* Bytes per source, for the documentation and the memory bound. */
size_t srclimit_entry_bytes(void);

#endif
