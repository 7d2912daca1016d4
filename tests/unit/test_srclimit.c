/* Unit tests for srclimit.c: limits, prefixes, buckets, the memory bound. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "srclimit.h"

static struct sockaddr_storage
sa(const char *text)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(text, ':') != NULL) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		in6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, text, &in6->sin6_addr);
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		in->sin_family = AF_INET;
		inet_pton(AF_INET, text, &in->sin_addr);
	}
	return ss;
}

static enum srclimit_verdict
admit(struct srclimit *t, const struct srclimit_rule *r, const char *addr,
    uint64_t now, struct srclimit_ticket *tk)
{
	struct sockaddr_storage ss = sa(addr);

	return srclimit_admit(t, r, (struct sockaddr *)&ss, now, tk);
}

static void
test_max_conn(void)
{
	struct srclimit *t = srclimit_new(1024, 32, 64);
	struct srclimit_rule r = {.scope = 0, .max_conn = 3};
	struct srclimit_ticket tk[5];

	for (int i = 0; i < 3; i++) {
		CHECK_INT(admit(t, &r, "192.0.2.1", 0, &tk[i]), SRCLIMIT_ADMIT);
		CHECK(srclimit_ticket_held(&tk[i]));
	}
	CHECK_INT(admit(t, &r, "192.0.2.1", 0, &tk[3]), SRCLIMIT_REFUSE_CONN);
	CHECK(!srclimit_ticket_held(&tk[3]));
	/* Another source is not affected. */
	CHECK_INT(admit(t, &r, "192.0.2.2", 0, &tk[4]), SRCLIMIT_ADMIT);
	/* One ends: one more may come. */
	srclimit_release(t, &tk[0]);
	CHECK(!srclimit_ticket_held(&tk[0]));
	CHECK_INT(admit(t, &r, "192.0.2.1", 0, &tk[0]), SRCLIMIT_ADMIT);
	CHECK_INT(admit(t, &r, "192.0.2.1", 0, &tk[3]), SRCLIMIT_REFUSE_CONN);
	/* Releasing twice, or a ticket never taken, changes nothing. */
	srclimit_release(t, &tk[3]);
	srclimit_release(t, &tk[1]);
	srclimit_release(t, &tk[1]);
	CHECK_INT(admit(t, &r, "192.0.2.1", 0, &tk[1]), SRCLIMIT_ADMIT);
	CHECK_INT(admit(t, &r, "192.0.2.1", 0, &tk[3]), SRCLIMIT_REFUSE_CONN);
	srclimit_free(t);
}

static void
test_off_and_scopes(void)
{
	struct srclimit *t = srclimit_new(1024, 32, 64);
	struct srclimit_rule off = {0};
	struct srclimit_rule a = {.scope = srclimit_scope("a"), .max_conn = 1};
	struct srclimit_rule b = {.scope = srclimit_scope("b"), .max_conn = 1};
	struct srclimit_ticket tk;
	struct srclimit_stats st;

	for (int i = 0; i < 100; i++) {
		CHECK_INT(admit(t, &off, "192.0.2.1", 0, &tk), SRCLIMIT_ADMIT);
		CHECK(!srclimit_ticket_held(&tk));
	}
	srclimit_stats(t, &st);
	CHECK_INT(st.entries, 0);
	/* Each listener with its own limits counts on its own. */
	CHECK(a.scope != 0 && a.scope != b.scope);
	CHECK_INT(admit(t, &a, "192.0.2.1", 0, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(admit(t, &b, "192.0.2.1", 0, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(admit(t, &a, "192.0.2.1", 0, &tk), SRCLIMIT_REFUSE_CONN);
	srclimit_stats(t, &st);
	CHECK_INT(st.entries, 2);
	CHECK_INT(st.capacity, 1024);
	srclimit_free(t);
}

static void
test_prefixes(void)
{
	struct srclimit *t = srclimit_new(1024, 32, 64);
	struct srclimit *t2 = srclimit_new(1024, 24, 48);
	struct srclimit_rule r = {.max_conn = 1};
	struct srclimit_ticket tk;

	/* One /64 is one source. */
	CHECK_INT(admit(t, &r, "2001:db8:1:2::1", 0, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(admit(t, &r, "2001:db8:1:2:ffff:ffff:ffff:ffff", 0, &tk),
	    SRCLIMIT_REFUSE_CONN);
	CHECK_INT(admit(t, &r, "2001:db8:1:3::1", 0, &tk), SRCLIMIT_ADMIT);
	/* v4-mapped is the IPv4 address. */
	CHECK_INT(admit(t, &r, "198.51.100.7", 0, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(
	    admit(t, &r, "::ffff:198.51.100.7", 0, &tk), SRCLIMIT_REFUSE_CONN);
	CHECK_INT(admit(t, &r, "198.51.100.8", 0, &tk), SRCLIMIT_ADMIT);
	/* Configured prefixes: /24 and /48. */
	CHECK_INT(admit(t2, &r, "198.51.100.7", 0, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(
	    admit(t2, &r, "198.51.100.200", 0, &tk), SRCLIMIT_REFUSE_CONN);
	CHECK_INT(
	    admit(t2, &r, "::ffff:198.51.100.9", 0, &tk), SRCLIMIT_REFUSE_CONN);
	CHECK_INT(admit(t2, &r, "198.51.101.7", 0, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(admit(t2, &r, "2001:db8:1:2::1", 0, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(
	    admit(t2, &r, "2001:db8:1:ffff::1", 0, &tk), SRCLIMIT_REFUSE_CONN);
	CHECK_INT(admit(t2, &r, "2001:db8:2::1", 0, &tk), SRCLIMIT_ADMIT);
	srclimit_free(t);
	srclimit_free(t2);
}

static void
test_rate(void)
{
	struct srclimit *t = srclimit_new(1024, 32, 64);
	/* 5 per second: a bucket of 5, one token back every 200 ms. */
	struct srclimit_rule r = {.rate = 5, .period_ms = 1000};
	struct srclimit_ticket tk;
	uint64_t now = 1000000;

	for (int i = 0; i < 5; i++)
		CHECK_INT(admit(t, &r, "192.0.2.1", now, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(admit(t, &r, "192.0.2.1", now, &tk), SRCLIMIT_REFUSE_RATE);
	/* Refused attempts cost nothing; 199 ms is not yet a token. */
	CHECK_INT(
	    admit(t, &r, "192.0.2.1", now + 199, &tk), SRCLIMIT_REFUSE_RATE);
	CHECK_INT(admit(t, &r, "192.0.2.1", now + 200, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(
	    admit(t, &r, "192.0.2.1", now + 200, &tk), SRCLIMIT_REFUSE_RATE);
	/* A long pause refills the bucket, never beyond its size. */
	now += 3600 * 1000;
	for (int i = 0; i < 5; i++)
		CHECK_INT(admit(t, &r, "192.0.2.1", now, &tk), SRCLIMIT_ADMIT);
	CHECK_INT(admit(t, &r, "192.0.2.1", now, &tk), SRCLIMIT_REFUSE_RATE);
	/* Over a long run the rate holds: 10 s of attempts every 10 ms. */
	{
		int ok = 0;

		now += 1000; /* full again */
		for (int ms = 0; ms < 10000; ms += 10)
			ok += admit(t, &r, "192.0.2.9", now + (uint64_t)ms,
			          &tk) == SRCLIMIT_ADMIT;
		/* 5 at once, then 5 per second for 9.99 s */
		CHECK(ok >= 53 && ok <= 55);
	}
	/* Per minute: 2/m refuses the third, a token every 30 s. */
	{
		struct srclimit_rule m = {.rate = 2, .period_ms = 60000};

		CHECK_INT(admit(t, &m, "192.0.2.3", now, &tk), SRCLIMIT_ADMIT);
		CHECK_INT(admit(t, &m, "192.0.2.3", now, &tk), SRCLIMIT_ADMIT);
		CHECK_INT(
		    admit(t, &m, "192.0.2.3", now, &tk), SRCLIMIT_REFUSE_RATE);
		CHECK_INT(admit(t, &m, "192.0.2.3", now + 29000, &tk),
		    SRCLIMIT_REFUSE_RATE);
		CHECK_INT(admit(t, &m, "192.0.2.3", now + 30000, &tk),
		    SRCLIMIT_ADMIT);
	}
	/* Both limits: the connection limit is checked without a token. */
	{
		struct srclimit_rule both = {
		    .scope = 7, .max_conn = 1, .rate = 2, .period_ms = 1000};
		struct srclimit_ticket a, b;

		CHECK_INT(
		    admit(t, &both, "192.0.2.4", now, &a), SRCLIMIT_ADMIT);
		CHECK_INT(admit(t, &both, "192.0.2.4", now, &b),
		    SRCLIMIT_REFUSE_CONN);
		srclimit_release(t, &a);
		CHECK_INT(
		    admit(t, &both, "192.0.2.4", now, &a), SRCLIMIT_ADMIT);
		srclimit_release(t, &a);
		CHECK_INT(admit(t, &both, "192.0.2.4", now, &a),
		    SRCLIMIT_REFUSE_RATE);
	}
	srclimit_free(t);
}

/*
 * The memory bound: a table of 64 entries (one per shard) fills with live
 * sources; strangers are then admitted without a limit and counted, and
 * entries of sources that left (no connection, bucket full) are reused.
 */
static void
test_full_table_fails_open(void)
{
	struct srclimit *t = srclimit_new(64, 32, 64);
	struct srclimit_rule r = {.max_conn = 1};
	struct srclimit_ticket tk[4096];
	struct srclimit_stats st;
	char a[32];
	int admitted = 0, full = 0, refused = 0;

	for (int i = 0; i < 4096; i++) {
		enum srclimit_verdict v;

		snprintf(a, sizeof(a), "10.%d.%d.1", i / 256, i % 256);
		v = admit(t, &r, a, 0, &tk[i]);
		admitted += v == SRCLIMIT_ADMIT;
		full += v == SRCLIMIT_ADMIT_FULL;
		refused += v == SRCLIMIT_REFUSE_CONN;
	}
	srclimit_stats(t, &st);
	CHECK_INT(st.capacity, 64);
	CHECK_INT(st.entries, admitted);
	CHECK(admitted <= 64 && admitted >= 32);
	CHECK_INT(refused, 0);
	CHECK_INT(full, 4096 - admitted);
	CHECK_INT(st.full_admitted, full);
	/* Everyone leaves: their entries are reused by newcomers. */
	for (int i = 0; i < 4096; i++)
		srclimit_release(t, &tk[i]);
	full = 0;
	for (int i = 0; i < 64 * 8; i++) {
		snprintf(a, sizeof(a), "172.16.%d.%d", i / 256, i % 256);
		full += admit(t, &r, a, 0, &tk[i]) == SRCLIMIT_ADMIT_FULL;
		srclimit_release(t, &tk[i]);
	}
	CHECK_INT(full, 0);
	srclimit_stats(t, &st);
	CHECK(st.entries <= 64);
	/* A source whose bucket is still refilling is not forgotten. */
	{
		struct srclimit *u = srclimit_new(64, 32, 64);
		struct srclimit_rule rr = {.rate = 1, .period_ms = 60000};
		struct srclimit_ticket x;

		CHECK_INT(admit(u, &rr, "192.0.2.1", 0, &x), SRCLIMIT_ADMIT);
		srclimit_release(u, &x);
		for (int i = 0; i < 2000; i++) {
			snprintf(a, sizeof(a), "10.9.%d.%d", i / 256, i % 256);
			(void)admit(u, &rr, a, 10, &x);
		}
		CHECK_INT(
		    admit(u, &rr, "192.0.2.1", 20, &x), SRCLIMIT_REFUSE_RATE);
		srclimit_free(u);
	}
	srclimit_free(t);
}

struct racer {
	struct srclimit *t;
	int refused;
	int admitted;
};

/* Four threads hammer one source: never more than max_conn at once. */
static void *
race(void *arg)
{
	struct racer *r = arg;
	struct srclimit_rule rule = {.max_conn = 8};
	struct srclimit_ticket tk[16];
	int held = 0;

	for (int i = 0; i < 20000; i++) {
		if (held < 16 &&
		    admit(r->t, &rule, "2001:db8::1", 0, &tk[held]) ==
		        SRCLIMIT_ADMIT) {
			held++;
			r->admitted++;
		} else {
			r->refused++;
		}
		if (held > 0 && (i % 3) == 0)
			srclimit_release(r->t, &tk[--held]);
	}
	while (held > 0)
		srclimit_release(r->t, &tk[--held]);
	return NULL;
}

static void
test_threads_exact(void)
{
	struct srclimit *t = srclimit_new(1024, 32, 64);
	struct srclimit_rule rule = {.max_conn = 8};
	struct racer r[4];
	pthread_t th[4];
	struct srclimit_ticket tk[9];

	for (int i = 0; i < 4; i++) {
		r[i] = (struct racer){.t = t};
		pthread_create(&th[i], NULL, race, &r[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	/* All released: exactly 8 fit again, not one more. */
	for (int i = 0; i < 8; i++)
		CHECK_INT(
		    admit(t, &rule, "2001:db8::1", 0, &tk[i]), SRCLIMIT_ADMIT);
	CHECK_INT(
	    admit(t, &rule, "2001:db8::1", 0, &tk[8]), SRCLIMIT_REFUSE_CONN);
	CHECK(r[0].refused + r[1].refused + r[2].refused + r[3].refused > 0);
	srclimit_free(t);
}

int
main(void)
{
	test_max_conn();
	test_off_and_scopes();
	test_prefixes();
	test_rate();
	test_full_table_fails_open();
	test_threads_exact();
	return h_report("test_srclimit");
}
