/*
 * srclimit: a sharded table of sources, their live connections and their
 * token buckets.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "srclimit.h"

#define NIL UINT32_MAX

struct entry {
	uint8_t key[16]; /* the address cut to its prefix; IPv4 as v4-mapped */
	uint32_t scope;
	uint32_t hash;
	uint32_t next; /* in its bucket's chain, or the free list; NIL */
	uint32_t conns; /* live connections admitted with a ticket */
	uint32_t rate; /* of the rule last applied: for refills and reuse */
	uint64_t period_ms;
	uint64_t tokens; /* a token is period_ms units; as of stamp */
	uint64_t stamp; /* ms */
	bool used;
};

struct shard {
	pthread_mutex_t mu;
	struct entry *e; /* owned: per entries, NULL before first use */
	uint32_t *heads; /* owned: nheads chain heads */
	uint32_t free; /* free list head */
	uint32_t used; /* entries in use (read relaxed by stats) */
	uint32_t hand; /* where the next reuse sweep starts */
	bool failed; /* its allocation failed: admit everyone, counted */
};

struct srclimit {
	_Atomic unsigned refs;
	struct shard shards[SRCLIMIT_SHARDS];
	uint32_t per; /* entries per shard */
	uint32_t nheads; /* a power of two */
	unsigned prefix4, prefix6;
	uint64_t seed[3];
	uint64_t full_admitted; /* atomic */
};

/* How many entries a full shard looks at for one to reuse. */
#define REUSE_SWEEP 8

static uint64_t
mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static uint64_t
key_hash(const struct srclimit *t, const uint8_t key[16], uint32_t scope)
{
	uint64_t a, b;

	memcpy(&a, key, 8);
	memcpy(&b, key + 8, 8);
	return mix(
	    mix(mix(a ^ t->seed[0]) ^ b ^ t->seed[1]) ^ scope ^ t->seed[2]);
}

/* Keeps the first prefix bits of the len bytes at p. */
static void
cut(uint8_t *p, unsigned len, unsigned prefix)
{
	for (unsigned i = 0; i < len; i++) {
		unsigned keep = prefix >= 8 * (i + 1) ? 8
		    : prefix > 8 * i                  ? prefix - 8 * i
		                                      : 0;

		p[i] &= (uint8_t)(0xff00u >> keep);
	}
}

/* The source key of sa; false for a family without addresses. */
static bool
make_key(const struct srclimit *t, const struct sockaddr *sa, uint8_t key[16])
{
	static const uint8_t mapped[12] = {
	    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		memcpy(key, mapped, 12);
		memcpy(key + 12, &in->sin_addr, 4);
		cut(key + 12, 4, t->prefix4);
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 =
		    (const struct sockaddr_in6 *)sa;

		memcpy(key, &in6->sin6_addr, 16);
		if (memcmp(key, mapped, 12) == 0)
			cut(key + 12, 4, t->prefix4);
		else
			cut(key, 16, t->prefix6);
		return true;
	}
	return false;
}

/* Entries per shard for a table of size sources. */
static uint32_t
table_per(unsigned size)
{
	if (size < SRCLIMIT_MIN_SIZE)
		size = SRCLIMIT_MIN_SIZE;
	if (size > SRCLIMIT_MAX_SIZE)
		size = SRCLIMIT_MAX_SIZE;
	return size / SRCLIMIT_SHARDS;
}

bool
srclimit_same(
    const struct srclimit *t, unsigned size, unsigned prefix4, unsigned prefix6)
{
	return t->per == table_per(size) && t->prefix4 == prefix4 &&
	    t->prefix6 == prefix6;
}

void
srclimit_ref(struct srclimit *t)
{
	atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

struct srclimit *
srclimit_new(unsigned size, unsigned prefix4, unsigned prefix6)
{
	struct srclimit *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	atomic_init(&t->refs, 1);
	t->per = table_per(size);
	t->nheads = 1;
	while (t->nheads < t->per)
		t->nheads <<= 1;
	t->prefix4 = prefix4;
	t->prefix6 = prefix6;
	if (getrandom(t->seed, sizeof(t->seed), GRND_NONBLOCK) !=
	    (ssize_t)sizeof(t->seed)) {
		/* Before the pool is ready, at boot: still unpredictable enough
		 * for shard spreading; chains stay bounded by the shard size.
		 */
		t->seed[0] = (uint64_t)(uintptr_t)t ^ 0x9e3779b97f4a7c15ULL;
		t->seed[1] = mix(t->seed[0]);
		t->seed[2] = mix(t->seed[1]);
	}
	for (unsigned i = 0; i < SRCLIMIT_SHARDS; i++)
		pthread_mutex_init(&t->shards[i].mu, NULL);
	return t;
}

void
srclimit_free(struct srclimit *t)
{
	if (t == NULL || atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	for (unsigned i = 0; i < SRCLIMIT_SHARDS; i++) {
		free(t->shards[i].e);
		free(t->shards[i].heads);
		pthread_mutex_destroy(&t->shards[i].mu);
	}
	free(t);
}

uint32_t
srclimit_scope(const char *name)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h == 0 ? 1 : h;
}

/* Allocates a shard's entries at its first use; false if it cannot. */
static bool
shard_ready(const struct srclimit *t, struct shard *s)
{
	if (s->e != NULL)
		return true;
	if (s->failed)
		return false;
	s->e = calloc(t->per, sizeof(*s->e));
	s->heads = malloc(t->nheads * sizeof(*s->heads));
	if (s->e == NULL || s->heads == NULL) {
		free(s->e);
		free(s->heads);
		s->e = NULL;
		s->heads = NULL;
		s->failed = true;
		return false;
	}
	for (uint32_t i = 0; i < t->nheads; i++)
		s->heads[i] = NIL;
	for (uint32_t i = 0; i < t->per; i++)
		s->e[i].next = i + 1 < t->per ? i + 1 : NIL;
	s->free = 0;
	return true;
}

/*
 * The bucket in units where a token is worth period_ms: each millisecond
 * adds exactly rate units, so refills never round.
 */
static uint64_t
capacity(const struct entry *e)
{
	return (uint64_t)e->rate * e->period_ms;
}

/* Tokens as of now: the bucket refills rate per period, up to rate. */
static void
refill(struct entry *e, uint64_t now)
{
	uint64_t dt;

	if (now <= e->stamp)
		return;
	dt = now - e->stamp;
	e->stamp = now;
	if (e->rate == 0)
		return;
	if (dt > e->period_ms)
		dt = e->period_ms; /* a whole period refills any bucket */
	e->tokens += dt * e->rate;
	if (e->tokens > capacity(e))
		e->tokens = capacity(e);
}

/* No connection, a full bucket: the entry remembers nothing useful. */
static bool
reusable(struct entry *e, uint64_t now)
{
	if (e->conns != 0)
		return false;
	refill(e, now);
	return e->tokens >= capacity(e);
}

static void
unlink_entry(const struct srclimit *t, struct shard *s, uint32_t i)
{
	uint32_t *p = &s->heads[s->e[i].hash & (t->nheads - 1)];

	while (*p != i)
		p = &s->e[*p].next;
	*p = s->e[i].next;
	s->e[i].used = false;
	__atomic_store_n(&s->used, s->used - 1, __ATOMIC_RELAXED);
}

/* A free entry: the free list, else one found reusable by a short sweep. */
static uint32_t
take_entry(const struct srclimit *t, struct shard *s, uint64_t now)
{
	uint32_t i = s->free;

	if (i != NIL) {
		s->free = s->e[i].next;
		return i;
	}
	for (unsigned n = 0; n < REUSE_SWEEP; n++) {
		i = s->hand;
		s->hand = s->hand + 1 < t->per ? s->hand + 1 : 0;
		if (s->e[i].used && reusable(&s->e[i], now)) {
			unlink_entry(t, s, i);
			return i;
		}
	}
	return NIL;
}

static uint32_t
find_or_add(const struct srclimit *t, struct shard *s, const uint8_t key[16],
    uint32_t scope, uint32_t hash, const struct srclimit_rule *rule,
    uint64_t now)
{
	uint32_t *head = &s->heads[hash & (t->nheads - 1)];
	uint32_t i;
	struct entry *e;

	for (i = *head; i != NIL; i = s->e[i].next) {
		e = &s->e[i];
		if (e->hash == hash && e->scope == scope &&
		    memcmp(e->key, key, 16) == 0)
			return i;
	}
	i = take_entry(t, s, now);
	if (i == NIL)
		return NIL;
	e = &s->e[i];
	memset(e, 0, sizeof(*e));
	memcpy(e->key, key, 16);
	e->scope = scope;
	e->hash = hash;
	e->rate = rule->rate;
	e->period_ms = rule->period_ms;
	e->tokens = capacity(e);
	e->stamp = now;
	e->used = true;
	e->next = *head;
	*head = i;
	__atomic_store_n(&s->used, s->used + 1, __ATOMIC_RELAXED);
	return i;
}

void
srclimit_ticket_init(struct srclimit_ticket *tk)
{
	tk->slot = NIL;
}

bool
srclimit_ticket_held(const struct srclimit_ticket *tk)
{
	return tk->slot != NIL;
}

enum srclimit_verdict
srclimit_admit(struct srclimit *t, const struct srclimit_rule *rule,
    const struct sockaddr *sa, uint64_t now_ms, struct srclimit_ticket *tk)
{
	enum srclimit_verdict v = SRCLIMIT_ADMIT;
	uint8_t key[16];
	uint64_t h;
	struct shard *s;
	struct entry *e;
	uint32_t i, sh;

	srclimit_ticket_init(tk);
	if ((rule->max_conn == 0 && rule->rate == 0) || !make_key(t, sa, key))
		return SRCLIMIT_ADMIT;
	h = key_hash(t, key, rule->scope);
	sh = (uint32_t)(h >> 58); /* the top 6 bits: SRCLIMIT_SHARDS = 64 */
	s = &t->shards[sh];
	pthread_mutex_lock(&s->mu);
	i = shard_ready(t, s)
	    ? find_or_add(t, s, key, rule->scope, (uint32_t)h, rule, now_ms)
	    : NIL;
	if (i == NIL) {
		pthread_mutex_unlock(&s->mu);
		__atomic_add_fetch(&t->full_admitted, 1, __ATOMIC_RELAXED);
		return SRCLIMIT_ADMIT_FULL;
	}
	e = &s->e[i];
	/* A reload may have changed the rule: refill at the old rate first. */
	refill(e, now_ms);
	if (e->rate != rule->rate || e->period_ms != rule->period_ms) {
		/* Keep the fraction of a full bucket it had. */
		uint64_t cap = capacity(e);

		e->tokens = cap == 0
		    ? (uint64_t)rule->rate * rule->period_ms
		    : (uint64_t)((double)e->tokens / (double)cap *
		          (double)rule->rate * (double)rule->period_ms);
		e->rate = rule->rate;
		e->period_ms = rule->period_ms;
	}
	if (rule->max_conn != 0 && e->conns >= rule->max_conn) {
		v = SRCLIMIT_REFUSE_CONN;
	} else if (rule->rate != 0 && e->tokens < rule->period_ms) {
		v = SRCLIMIT_REFUSE_RATE;
	} else {
		if (rule->rate != 0)
			e->tokens -= rule->period_ms;
		e->conns++;
		tk->slot = sh * t->per + i;
	}
	pthread_mutex_unlock(&s->mu);
	return v;
}

void
srclimit_release(struct srclimit *t, struct srclimit_ticket *tk)
{
	struct shard *s;
	uint32_t i;

	if (tk->slot == NIL)
		return;
	s = &t->shards[tk->slot / t->per];
	i = tk->slot % t->per;
	pthread_mutex_lock(&s->mu);
	if (s->e[i].conns > 0)
		s->e[i].conns--;
	pthread_mutex_unlock(&s->mu);
	tk->slot = NIL;
}

void
srclimit_stats(const struct srclimit *t, struct srclimit_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (t == NULL)
		return;
	for (unsigned i = 0; i < SRCLIMIT_SHARDS; i++)
		out->entries +=
		    __atomic_load_n(&t->shards[i].used, __ATOMIC_RELAXED);
	out->capacity = (uint64_t)t->per * SRCLIMIT_SHARDS;
	out->full_admitted =
	    __atomic_load_n(&t->full_admitted, __ATOMIC_RELAXED);
}

size_t
srclimit_entry_bytes(void)
{
	return sizeof(struct entry);
}
