/* Unit tests for addr.c. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>

#include "addr.h"
#include "harness.h"

static void
test_split(void)
{
	char host[ADDR_HOSTLEN];
	uint16_t port = 0;

	CHECK(addr_split("127.0.0.1:80", host, sizeof(host), &port, false) ==
	    NULL);
	CHECK_STR(host, "127.0.0.1");
	CHECK_INT(port, 80);
	CHECK(
	    addr_split("[::1]:443", host, sizeof(host), &port, false) == NULL);
	CHECK_STR(host, "::1");
	CHECK_INT(port, 443);
	CHECK(addr_split("g.whatsapp.net:5222", host, sizeof(host), &port,
	          false) == NULL);
	CHECK_STR(host, "g.whatsapp.net");
	CHECK(
	    addr_split("127.0.0.1:0", host, sizeof(host), &port, true) == NULL);
	CHECK_INT(port, 0);
	CHECK(addr_split("127.0.0.1:0", host, sizeof(host), &port, false) !=
	    NULL);
	CHECK(addr_split("127.0.0.1", host, sizeof(host), &port, true) != NULL);
	CHECK(
	    addr_split("127.0.0.1:", host, sizeof(host), &port, true) != NULL);
	CHECK(addr_split(":80", host, sizeof(host), &port, true) != NULL);
	CHECK(addr_split("1.2.3.4:65536", host, sizeof(host), &port, true) !=
	    NULL);
	CHECK(addr_split("1.2.3.4:99999999999", host, sizeof(host), &port,
	          true) != NULL);
	CHECK(
	    addr_split("1.2.3.4:8x", host, sizeof(host), &port, true) != NULL);
	CHECK(addr_split("::1:80", host, sizeof(host), &port, true) != NULL);
	CHECK(addr_split("[::1]80", host, sizeof(host), &port, true) != NULL);
	CHECK(addr_split("[::1:80", host, sizeof(host), &port, true) != NULL);
	CHECK(addr_split("abc:1", host, 3, &port, true) != NULL);
}

static void
test_numeric(void)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char buf[ADDR_STRLEN];

	CHECK(addr_parse_numeric("10.1.2.3", 8080, &ss, &len) == NULL);
	CHECK_INT(ss.ss_family, AF_INET);
	CHECK_INT(len, sizeof(struct sockaddr_in));
	addr_format((struct sockaddr *)&ss, buf, sizeof(buf));
	CHECK_STR(buf, "10.1.2.3:8080");
	CHECK(addr_parse_numeric("::", 443, &ss, &len) == NULL);
	CHECK_INT(ss.ss_family, AF_INET6);
	addr_format((struct sockaddr *)&ss, buf, sizeof(buf));
	CHECK_STR(buf, "[::]:443");
	CHECK(addr_parse_numeric("*", 1, &ss, &len) == NULL);
	addr_format((struct sockaddr *)&ss, buf, sizeof(buf));
	CHECK_STR(buf, "0.0.0.0:1");
	CHECK(addr_parse_numeric("300.1.1.1", 1, &ss, &len) != NULL);
	CHECK(addr_parse_numeric("localhost", 1, &ss, &len) != NULL);
	CHECK(addr_parse_numeric("010.0.0.1", 1, &ss, &len) != NULL);
	CHECK(addr_parse_numeric("10.0.0.1", 1, &ss, &len) == NULL);
	CHECK_INT(addr_port((struct sockaddr *)&ss), 1);
	addr_set_port((struct sockaddr *)&ss, 9);
	CHECK_INT(addr_port((struct sockaddr *)&ss), 9);
}

static void
test_cidr(void)
{
	struct addr_cidr c;
	struct sockaddr_storage ss;
	socklen_t len;

	CHECK(addr_cidr_parse("10.0.0.0/8", &c) == NULL);
	CHECK_INT(c.prefix, 8);
	addr_parse_numeric("10.200.3.4", 1, &ss, &len);
	CHECK(addr_cidr_match(&c, (struct sockaddr *)&ss));
	addr_parse_numeric("11.0.0.1", 1, &ss, &len);
	CHECK(!addr_cidr_match(&c, (struct sockaddr *)&ss));
	/* A v4-mapped IPv6 peer matches an IPv4 block. */
	addr_parse_numeric("::ffff:10.9.9.9", 1, &ss, &len);
	CHECK(addr_cidr_match(&c, (struct sockaddr *)&ss));
	/* The preset's lists: private IPv4, also as v4-mapped peers. */
	CHECK(addr_cidr_parse("172.16.0.0/12", &c) == NULL);
	addr_parse_numeric("::ffff:172.31.255.1", 1, &ss, &len);
	CHECK(addr_cidr_match(&c, (struct sockaddr *)&ss));
	addr_parse_numeric("::ffff:172.32.0.1", 1, &ss, &len);
	CHECK(!addr_cidr_match(&c, (struct sockaddr *)&ss));
	CHECK(addr_cidr_parse("fc00::/7", &c) == NULL);
	addr_parse_numeric("fd12:3456::1", 1, &ss, &len);
	CHECK(addr_cidr_match(&c, (struct sockaddr *)&ss));
	addr_parse_numeric("::ffff:10.0.0.1", 1, &ss, &len);
	CHECK(!addr_cidr_match(&c, (struct sockaddr *)&ss));
	CHECK(addr_cidr_parse("2001:db8::/33", &c) == NULL);
	addr_parse_numeric("2001:db8:7fff::1", 1, &ss, &len);
	CHECK(addr_cidr_match(&c, (struct sockaddr *)&ss));
	addr_parse_numeric("2001:db8:8000::1", 1, &ss, &len);
	CHECK(!addr_cidr_match(&c, (struct sockaddr *)&ss));
	CHECK(addr_cidr_parse("192.168.1.7", &c) == NULL);
	CHECK_INT(c.prefix, 32);
	CHECK(addr_cidr_parse("10.0.0.0/33", &c) != NULL);
	CHECK(addr_cidr_parse("10.0.0.0/", &c) != NULL);
	CHECK(addr_cidr_parse("10.0.0.0/x", &c) != NULL);
	CHECK(addr_cidr_parse("/8", &c) != NULL);
	CHECK(addr_cidr_parse("::/129", &c) != NULL);
	CHECK(addr_cidr_parse("0.0.0.0/0", &c) == NULL);
	addr_parse_numeric("203.0.113.9", 1, &ss, &len);
	CHECK(addr_cidr_match(&c, (struct sockaddr *)&ss));
}

static void
test_loopback(void)
{
	static const char *const yes[] = {
	    "127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.2"};
	static const char *const no[] = {"0.0.0.0", "::", "10.0.0.1",
	    "128.0.0.1", "::2", "::ffff:10.0.0.1", "2001:db8::1"};
	struct sockaddr_storage ss;
	socklen_t len;

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		CHECK(addr_parse_numeric(yes[i], 1, &ss, &len) == NULL);
		CHECK(addr_is_loopback((struct sockaddr *)&ss));
	}
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		CHECK(addr_parse_numeric(no[i], 1, &ss, &len) == NULL);
		CHECK(!addr_is_loopback((struct sockaddr *)&ss));
	}
}

static void
test_scope(void)
{
	static const struct {
		const char *a;
		enum addr_scope s;
	} cases[] = {
	    {"127.0.0.1", ADDR_SCOPE_LOOPBACK},
	    {"::1", ADDR_SCOPE_LOOPBACK},
	    {"::ffff:127.0.0.9", ADDR_SCOPE_LOOPBACK},
	    {"10.1.2.3", ADDR_SCOPE_PRIVATE},
	    {"172.16.0.1", ADDR_SCOPE_PRIVATE},
	    {"172.31.255.255", ADDR_SCOPE_PRIVATE},
	    {"192.168.0.1", ADDR_SCOPE_PRIVATE},
	    {"100.64.0.1", ADDR_SCOPE_PRIVATE},
	    {"100.127.255.1", ADDR_SCOPE_PRIVATE},
	    {"169.254.1.1", ADDR_SCOPE_PRIVATE},
	    {"fd00::1", ADDR_SCOPE_PRIVATE},
	    {"fc12::1", ADDR_SCOPE_PRIVATE},
	    {"fe80::1", ADDR_SCOPE_PRIVATE},
	    {"febf::1", ADDR_SCOPE_PRIVATE},
	    {"::ffff:10.0.0.1", ADDR_SCOPE_PRIVATE},
	    /* The wildcards bind public interfaces too. */
	    {"0.0.0.0", ADDR_SCOPE_PUBLIC},
	    {"::", ADDR_SCOPE_PUBLIC},
	    {"172.15.0.1", ADDR_SCOPE_PUBLIC},
	    {"172.32.0.1", ADDR_SCOPE_PUBLIC},
	    {"100.63.0.1", ADDR_SCOPE_PUBLIC},
	    {"100.128.0.1", ADDR_SCOPE_PUBLIC},
	    {"192.169.0.1", ADDR_SCOPE_PUBLIC},
	    {"128.0.0.1", ADDR_SCOPE_PUBLIC},
	    {"203.0.113.7", ADDR_SCOPE_PUBLIC},
	    {"2001:db8::1", ADDR_SCOPE_PUBLIC},
	    {"fec0::1", ADDR_SCOPE_PUBLIC},
	    {"::ffff:8.8.8.8", ADDR_SCOPE_PUBLIC},
	};
	struct sockaddr_storage ss;
	socklen_t len;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		CHECK(addr_parse_numeric(cases[i].a, 1, &ss, &len) == NULL);
		CHECK_STR(addr_scope_str(addr_scope((struct sockaddr *)&ss)),
		    addr_scope_str(cases[i].s));
	}
}

int
main(void)
{
	test_split();
	test_numeric();
	test_cidr();
	test_loopback();
	test_scope();
	return h_report("test_addr");
}
