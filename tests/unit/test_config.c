/* Unit tests for config.c: values, errors with line numbers, presets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "harness.h"

static char err[CFG_ERRLEN];

static const char *base = "[upstream up]\n"
                          "server = 127.0.0.1:9000\n"
                          "[listen a]\n"
                          "bind = 127.0.0.1:0\n"
                          "upstream = up\n";

static void
test_values(void)
{
	uint64_t ms = 0;
	unsigned u = 0;
	bool b = false;

	CHECK(cfg_parse_duration("5s", &ms) == NULL);
	CHECK_INT(ms, 5000);
	CHECK(cfg_parse_duration("250ms", &ms) == NULL);
	CHECK_INT(ms, 250);
	CHECK(cfg_parse_duration("2m", &ms) == NULL);
	CHECK_INT(ms, 120000);
	CHECK(cfg_parse_duration("1h", &ms) == NULL);
	CHECK_INT(ms, 3600000);
	CHECK(cfg_parse_duration("0", &ms) == NULL);
	CHECK_INT(ms, 0);
	CHECK(cfg_parse_duration("5", &ms) != NULL);
	CHECK(cfg_parse_duration("5x", &ms) != NULL);
	CHECK(cfg_parse_duration("abc", &ms) != NULL);
	CHECK(cfg_parse_duration("", &ms) != NULL);
	CHECK(cfg_parse_duration("-1s", &ms) != NULL);
	CHECK(cfg_parse_duration("99999999999999999999s", &ms) != NULL);
	CHECK(cfg_parse_duration("200h", &ms) != NULL);
	CHECK(cfg_parse_uint("27500", 1, 100000, &u) == NULL);
	CHECK_INT(u, 27500);
	CHECK(cfg_parse_uint("0", 1, 10, &u) != NULL);
	CHECK(cfg_parse_uint("-1", 1, 10, &u) != NULL);
	CHECK(cfg_parse_uint("11", 1, 10, &u) != NULL);
	CHECK(cfg_parse_uint("lots", 1, 10, &u) != NULL);
	CHECK(cfg_parse_uint("99999999999999999999999", 1, 10, &u) != NULL);
	CHECK(cfg_parse_size("4096", 4096, 1 << 20, &u) == NULL);
	CHECK_INT(u, 4096);
	CHECK(cfg_parse_size("64k", 4096, 1 << 20, &u) == NULL);
	CHECK_INT(u, 65536);
	CHECK(cfg_parse_size("1M", 4096, 1 << 20, &u) == NULL);
	CHECK_INT(u, 1 << 20);
	CHECK(cfg_parse_size("4095", 4096, 1 << 20, &u) != NULL);
	CHECK(cfg_parse_size("2m", 4096, 1 << 20, &u) != NULL);
	CHECK(cfg_parse_size("1025k", 4096, 1 << 20, &u) != NULL);
	CHECK(cfg_parse_size("64kb", 4096, 1 << 20, &u) != NULL);
	CHECK(cfg_parse_size("k", 4096, 1 << 20, &u) != NULL);
	CHECK(cfg_parse_size("", 4096, 1 << 20, &u) != NULL);
	CHECK(cfg_parse_size("-64k", 4096, 1 << 20, &u) != NULL);
	CHECK(
	    cfg_parse_size("99999999999999999999k", 4096, 1 << 20, &u) != NULL);
	CHECK(cfg_parse_bool("on", &b) == NULL && b);
	CHECK(cfg_parse_bool("off", &b) == NULL && !b);
	CHECK(cfg_parse_bool("maybe", &b) != NULL);
}

static void
test_valid(void)
{
	const char *text = "# comment\n"
	                   "; other comment\n"
	                   "[global]\n"
	                   "workers = 3   # inline comment\n"
	                   "maxconn = 100\n"
	                   "log-level = debug\n"
	                   "drain-timeout = 2s\n"
	                   "[timeouts]\n"
	                   "connect = 250ms\n"
	                   "client = 3s\n"
	                   "[upstream up]\n"
	                   "server = localhost:9000\n"
	                   "server = [::1]:9001\n"
	                   "send-proxy = v2\n"
	                   "[listen a]\n"
	                   "bind = 127.0.0.1:0\n"
	                   "bind = [::1]:0\n"
	                   "upstream = up\n"
	                   "maxconn = 7\n"
	                   "[listen b]\n"
	                   "bind = 0.0.0.0:8443\n"
	                   "tls = on\n"
	                   "tls-names = a.example, b.example\n"
	                   "tls-ips = 192.0.2.1\n"
	                   "accept-proxy = on\n"
	                   "trusted-proxies = 10.0.0.0/8\n"
	                   "trusted-proxies = fd00::/8\n"
	                   "upstream = up\n";
	struct cfg *c = cfg_load_string(text, "t.conf", err, sizeof(err));

	CHECK(c != NULL);
	if (c == NULL) {
		fprintf(stderr, "error: %s\n", err);
		return;
	}
	CHECK_INT(c->workers, 3);
	CHECK_INT(c->maxconn, 100);
	CHECK_INT(c->log_level, LOG_DEBUG);
	CHECK_INT(c->drain_timeout_ms, 2000);
	CHECK_INT(c->timeouts.connect_ms, 250);
	CHECK_INT(c->timeouts.client_ms, 3000);
	CHECK_INT(c->timeouts.server_ms, 200000); /* default */
	CHECK_INT(c->nupstreams, 1);
	CHECK_INT(c->upstreams[0].nservers, 2);
	CHECK_STR(c->upstreams[0].servers[1].host, "::1");
	CHECK_INT(c->upstreams[0].servers[1].port, 9001);
	CHECK_INT(c->upstreams[0].send_proxy, CFG_SEND_PROXY_V2);
	CHECK_INT(c->nlistens, 2);
	CHECK_INT(c->listens[0].nbinds, 2);
	CHECK_INT(c->listens[0].maxconn, 7);
	CHECK_INT(c->listens[1].tls_names.n, 2);
	CHECK_STR(c->listens[1].tls_names.v[1], "b.example");
	CHECK_INT(c->listens[1].trusted_text.n, 2);
	CHECK_INT(c->listens[1].trusted[1].family, 10); /* AF_INET6 */
	cfg_free(c);
}

struct bad {
	const char *text;
	int line;
	const char *needle;
};

static void
test_errors(void)
{
	static const struct bad cases[] = {
	    {"[global]\nfoo = 1\n", 2, "unknown key 'foo' in [global]"},
	    {"[bogus]\n", 1, "unknown section kind 'bogus'"},
	    {"[timeouts]\nconnect = 5x\n", 2, "unknown duration unit"},
	    {"[timeouts]\nconnect = abc\n", 2, "not a duration"},
	    {"[global]\nmaxconn = -1\n", 2, "bad value '-1' for 'maxconn'"},
	    {"[global]\nmaxconn = lots\n", 2, "bad value 'lots'"},
	    {"[global]\nlog-level = loud\n", 2, "use error, warn, info"},
	    {"[global]\nworkers = 0\n", 2, "use auto or 1-64"},
	    {"[global]\nmax-conn-per-source = 0\n", 2, "use off or 1-"},
	    {"[global]\nnew-conn-rate-per-source = 10\n", 2,
	        "use off or N/s, N/m or N/h"},
	    {"[global]\nnew-conn-rate-per-source = 10/d\n", 2, "N/h"},
	    {"[global]\nnew-conn-rate-per-source = /s\n", 2, "N/h"},
	    {"[global]\nnew-conn-rate-per-source = 0/s\n", 2, "1-1000000"},
	    {"[global]\nnew-conn-rate-per-source = 10/ss\n", 2, "N/h"},
	    {"[global]\nmax-conn-per-source = 2\nmax-conn-per-source = 3\n", 3,
	        "duplicate key"},
	    {"[global]\nsource-prefix-v6 = 129\n", 2, "use 1-128"},
	    {"[global]\nsource-prefix-v4 = 0\n", 2, "use 1-32"},
	    {"[global]\nsource-table-size = 10\n", 2, "use 64-16777216"},
	    {"[listen a]\nnew-conn-rate-per-source = many\n", 2, "N/h"},
	    {"[upstream u]\nserver = h:1\nsend-proxy = v3\n", 3,
	        "use none, v1 or v2"},
	    {"[listen a]\nbind = 300.1.1.1:80\n", 2, "not a numeric"},
	    {"[listen a]\nbind = 127.0.0.1:99999\n", 2, "out of range"},
	    {"[listen a]\nbind = 127.0.0.1\n", 2, "missing ':PORT'"},
	    {"[upstream u]\nserver = h:0\n", 2, "port 0"},
	    {"[upstream u]\n[listen a]\nbind = 127.0.0.1:1\nupstream = u\n", 1,
	        "[upstream u] has no 'server'"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nbind = 127.0.0.1:1\n"
	     "upstream = nope\n",
	        5, "unknown upstream 'nope'"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nupstream = u\n", 3,
	        "[listen a] has no 'bind'"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nbind = 127.0.0.1:1\n", 3,
	        "[listen a] has no 'upstream'"},
	    {"[upstream u]\nserver = h:1\n[upstream u]\nserver = h:2\n", 3,
	        "duplicate section [upstream u]"},
	    {"[global]\n[global]\n", 2, "duplicate section [global]"},
	    {"maxconn = 5\n", 1, "outside any section"},
	    {"[global]\nmaxconn = 5\nmaxconn = 6\n", 3, "duplicate key"},
	    {"[listen]\n", 1, "needs a name"},
	    {"[listen a b]\n", 1, "too many words"},
	    {"[listen a!]\n", 1, "bad listen name"},
	    {"[global\n", 1, "missing ']'"},
	    {"[global]\njust words\n", 2, "syntax error"},
	    {"[listen a]\ntls = maybe\n", 2, "not a boolean"},
	    {"[listen a]\ntls-key-type = dsa\n", 2, "use ec256"},
	    {"[listen a]\ntls-ips = not-an-ip\n", 2, "not a numeric"},
	    {"[listen a]\ntrusted-proxies = 10.0.0.0/99\n", 2, "prefix length"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nbind = 127.0.0.1:1\n"
	     "upstream =\n",
	        5, "upstream: empty value"},
	    {"[global]\nuser =\n", 2, "user: empty value"},
	    {"[listen a]\ntls-names =   \n", 2, "tls-names: empty value"},
	    {"[stats]\nlisten =\n", 2, "listen: empty value"},
	    {"[global]\nfoo =\n", 2, "unknown key 'foo' in [global]"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nbind = 0.0.0.0:80\n"
	     "upstream = u\n[stats]\nlisten = 127.0.0.1:80\n",
	        7, "overlaps 0.0.0.0:80 bound at line 4"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nbind = 127.0.0.1:80\n"
	     "upstream = u\n[stats]\nlisten = 127.0.0.1:80\n",
	        7, "already bound at line 4"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nbind = 127.0.0.1:1\n"
	     "bind = 127.0.0.1:1\nupstream = u\n",
	        5, "already bound at line 4"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nbind = 127.0.0.1:1\n"
	     "upstream = u\ncert = /x.pem\ntls = on\n",
	        3, "'cert' and 'key' go together"},
	    {"[upstream u]\nserver = h:1\n[listen a]\nbind = 127.0.0.1:1\n"
	     "upstream = u\ntrusted-proxies = 10.0.0.0/8\n",
	        3, "without 'accept-proxy = on'"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char want[64];
		struct cfg *c;

		c = cfg_load_string(cases[i].text, "x.conf", err, sizeof(err));
		CHECK(c == NULL);
		if (c != NULL) {
			fprintf(stderr, "case %zu accepted: %s\n", i,
			    cases[i].text);
			cfg_free(c);
			continue;
		}
		snprintf(want, sizeof(want), "x.conf:%d: ", cases[i].line);
		CHECK(strncmp(err, want, strlen(want)) == 0);
		CHECK(strstr(err, cases[i].needle) != NULL);
		if (strncmp(err, want, strlen(want)) != 0 ||
		    strstr(err, cases[i].needle) == NULL)
			fprintf(stderr, "case %zu: got \"%s\", want %s...%s\n",
			    i, err, want, cases[i].needle);
	}
	/* A line longer than inih's buffer is refused, not split. */
	{
		char text[512];
		struct cfg *c;

		snprintf(text, sizeof(text), "[global]\nuser = %0300d\n", 1);
		c = cfg_load_string(text, "x.conf", err, sizeof(err));
		CHECK(c == NULL);
		CHECK(strstr(err, "x.conf:2: line too long") != NULL);
		cfg_free(c);
	}
	/* No listener at all. */
	{
		struct cfg *c =
		    cfg_load_string("[global]\n", "x.conf", err, sizeof(err));

		CHECK(c == NULL);
		CHECK(strstr(err, "no [listen NAME] section") != NULL);
	}
	CHECK(cfg_load_file("/nonexistent/lifeline.conf", err, sizeof(err)) ==
	    NULL);
	CHECK(strstr(err, "/nonexistent/lifeline.conf: cannot open") != NULL);
	CHECK(cfg_load_preset("nope", err, sizeof(err)) == NULL);
	CHECK_STR(
	    err, "unknown preset 'nope' (use whatsapp, minimal or camouflage)");
}

/* print(load(x)) loads again and prints the same text. */
static void
roundtrip(struct cfg *c)
{
	char *a = NULL, *b = NULL;
	size_t alen = 0, blen = 0;
	FILE *f;
	struct cfg *c2;

	CHECK(c != NULL);
	if (c == NULL)
		return;
	f = open_memstream(&a, &alen);
	cfg_print(c, f);
	fclose(f);
	c2 = cfg_load_string(a, c->source, err, sizeof(err));
	CHECK(c2 != NULL);
	if (c2 == NULL) {
		fprintf(stderr, "reload of printed config: %s\n", err);
		free(a);
		return;
	}
	f = open_memstream(&b, &blen);
	cfg_print(c2, f);
	fclose(f);
	CHECK_STR(a, b);
	free(a);
	free(b);
	cfg_free(c2);
}

/* The preset's -lb listeners trust the ranges a load balancer talks from. */
static void
check_lb_trusted(const struct cfg_listen *l)
{
	static const char *const want[] = {"127.0.0.0/8", "::1/128",
	    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
	    "fc00::/7"};
	const size_t n = sizeof(want) / sizeof(want[0]);

	if (!l->accept_proxy) {
		CHECK_INT(l->trusted_text.n, 0);
		return;
	}
	CHECK_INT(l->trusted_text.n, n);
	for (size_t i = 0; i < n && i < l->trusted_text.n; i++)
		CHECK_STR(l->trusted_text.v[i], want[i]);
}

static void
test_presets(void)
{
	struct cfg *w = cfg_load_preset("whatsapp", err, sizeof(err));
	struct cfg *m = cfg_load_preset("minimal", err, sizeof(err));
	struct cfg *c;
	static const char *const names[] = {"http", "http-lb", "https",
	    "https-lb", "jabber", "jabber-lb", "media", "media-alt",
	    "media-lb"};
	static const unsigned ports[] = {
	    80, 8080, 443, 8443, 5222, 8222, 587, 7777, 8587};

	CHECK(w != NULL && m != NULL);
	if (w == NULL || m == NULL)
		return;
	CHECK_INT(w->nlistens, 9);
	for (size_t i = 0; i < 9 && i < w->nlistens; i++) {
		const struct cfg_listen *l = &w->listens[i];

		CHECK_STR(l->name, names[i]);
		CHECK_INT(addr_port((const struct sockaddr *)&l->binds[0].ss),
		    ports[i]);
		CHECK_INT(l->tls, ports[i] == 443 || ports[i] == 8443);
		CHECK_INT(l->accept_proxy, strstr(names[i], "-lb") != NULL);
		CHECK_STR(w->upstreams[l->upstream].name,
		    strncmp(names[i], "media", 5) == 0 ? "media" : "chat");
		CHECK_INT(l->maxconn, 27495);
		check_lb_trusted(l);
	}
	CHECK_INT(w->maxconn, 27500);
	CHECK_INT(w->upstreams[0].nservers, 6);
	CHECK_INT(w->upstreams[0].send_proxy, CFG_SEND_PROXY_V2);
	CHECK_INT(w->upstreams[1].send_proxy, CFG_SEND_PROXY_NONE);
	CHECK_STR(w->upstreams[1].servers[0].host, "whatsapp.net");
	CHECK_INT(w->upstreams[1].servers[0].port, 443);
	CHECK_INT(w->timeouts.connect_ms, 5000);
	CHECK_INT(w->timeouts.client_ms, 200000);
	CHECK_INT(w->timeouts.client_fin_ms, 1000);
	CHECK_INT(w->nstats, 1);
	CHECK_STR(w->stats[0].text, "127.0.0.1:8199");
	CHECK_INT(m->nlistens, 2);
	CHECK_INT(
	    addr_port((const struct sockaddr *)&m->listens[0].binds[0].ss),
	    443);
	CHECK(m->listens[0].tls);
	CHECK_INT(
	    addr_port((const struct sockaddr *)&m->listens[1].binds[0].ss),
	    587);
	roundtrip(w);
	roundtrip(m);
	c = cfg_load_string(base, "b.conf", err, sizeof(err));
	roundtrip(c);
	cfg_free(c);
	cfg_free(w);
	cfg_free(m);
}

/* Per-source limits: global values, listener overrides, printing. */
static void
test_srclimit_keys(void)
{
	static const char text[] =
	    "[global]\nmax-conn-per-source = 20\n"
	    "new-conn-rate-per-source = 30/m\nsource-prefix-v6 = 56\n"
	    "[upstream u]\nserver = 127.0.0.1:1\n"
	    "[listen a]\nbind = 127.0.0.1:0\nupstream = u\n"
	    "[listen b]\nbind = 127.0.0.1:0\nupstream = u\n"
	    "max-conn-per-source = off\nnew-conn-rate-per-source = 5/s\n";
	struct cfg *c = cfg_load_string(text, "s.conf", err, sizeof(err));
	struct cfg *d;

	CHECK(c != NULL);
	if (c == NULL)
		return;
	CHECK_INT(c->srclimit.max_conn, 20);
	CHECK_INT(c->srclimit.rate, 30);
	CHECK_INT(c->srclimit.period_ms, 60000);
	CHECK_INT(c->source_prefix4, 32);
	CHECK_INT(c->source_prefix6, 56);
	CHECK_INT(c->source_table_size, 65536);
	CHECK(!c->listens[0].srclimit.has_conn);
	CHECK(!c->listens[0].srclimit.has_rate);
	CHECK(c->listens[1].srclimit.has_conn);
	CHECK_INT(c->listens[1].srclimit.max_conn, 0);
	CHECK_INT(c->listens[1].srclimit.rate, 5);
	CHECK_INT(c->listens[1].srclimit.period_ms, 1000);
	CHECK(cfg_any_listener_srclimit(c));
	roundtrip(c);
	cfg_free(c);
	/* Off by default, and printed as off. */
	d = cfg_load_string("[upstream u]\nserver = 127.0.0.1:1\n"
	                    "[listen a]\nbind = 127.0.0.1:0\nupstream = u\n",
	    "o.conf", err, sizeof(err));
	CHECK(d != NULL);
	if (d != NULL) {
		CHECK_INT(d->srclimit.max_conn, 0);
		CHECK_INT(d->srclimit.rate, 0);
		CHECK(!cfg_any_listener_srclimit(d));
		cfg_free(d);
	}
}

int
main(void)
{
	struct cfg *c;

	test_values();
	test_valid();
	test_errors();
	test_presets();
	test_srclimit_keys();
	c = cfg_load_string(base, "b.conf", err, sizeof(err));
	cfg_free(c);
	return h_report("test_config");
}
