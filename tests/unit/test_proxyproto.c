/* Unit tests for the PROXY header builder in proxyproto.c. */
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "proxyproto.h"

static void
mk4(struct sockaddr_in *sin, uint32_t a, uint16_t port)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(a);
	sin->sin_port = htons(port);
}

static void
mk6(struct sockaddr_in6 *sin6, const uint8_t bytes[16], uint16_t port)
{
	memset(sin6, 0, sizeof(*sin6));
	sin6->sin6_family = AF_INET6;
	memcpy(&sin6->sin6_addr, bytes, 16);
	sin6->sin6_port = htons(port);
}

static const uint8_t sig[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static void
test_v1(void)
{
	struct sockaddr_in s, d;
	struct sockaddr_in6 s6, d6;
	uint8_t buf[PP_BUILD_MAX + 1];
	uint8_t a6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1};
	uint8_t b6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 2};
	uint8_t max6[16];
	ssize_t n;

	mk4(&s, 0xC0000201, 56324);
	mk4(&d, 0xC0000202, 443);
	n = pp_build(PP_V1, (struct sockaddr *)&s, (struct sockaddr *)&d, 0,
	    buf, sizeof(buf));
	buf[n > 0 ? n : 0] = '\0';
	CHECK_STR((char *)buf, "PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n");
	CHECK_INT(n, strlen("PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n"));

	mk6(&s6, a6, 1);
	mk6(&d6, b6, 65535);
	n = pp_build(PP_V1, (struct sockaddr *)&s6, (struct sockaddr *)&d6, 0,
	    buf, sizeof(buf));
	buf[n > 0 ? n : 0] = '\0';
	CHECK_STR(
	    (char *)buf, "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");

	/* The longest possible line fits the spec's 107 bytes. */
	memset(max6, 0xff, sizeof(max6));
	mk6(&s6, max6, 65535);
	mk6(&d6, max6, 65535);
	n = pp_build(PP_V1, (struct sockaddr *)&s6, (struct sockaddr *)&d6, 0,
	    buf, sizeof(buf));
	CHECK_INT(n, 104);
	CHECK(n <= 107);

	n = pp_build(PP_V1, NULL, NULL, 0, buf, sizeof(buf));
	buf[n > 0 ? n : 0] = '\0';
	CHECK_STR((char *)buf, "PROXY UNKNOWN\r\n");
	/* Mixed families cannot be said: UNKNOWN. */
	n = pp_build(PP_V1, (struct sockaddr *)&s, (struct sockaddr *)&d6, 0,
	    buf, sizeof(buf));
	buf[n > 0 ? n : 0] = '\0';
	CHECK_STR((char *)buf, "PROXY UNKNOWN\r\n");
	/* Too small a buffer is refused, never overrun. */
	CHECK_INT(pp_build(PP_V1, (struct sockaddr *)&s, (struct sockaddr *)&d,
	              0, buf, 20),
	    -1);
}

static void
test_v2(void)
{
	struct sockaddr_in s, d;
	struct sockaddr_in6 s6, d6, m6;
	uint8_t buf[PP_BUILD_MAX];
	uint8_t a6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1};
	uint8_t b6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 2};
	uint8_t mapped[16] = {[10] = 0xff, [11] = 0xff, 192, 0, 2, 1};
	ssize_t n;

	mk4(&s, 0xC0000201, 0x1234);
	mk4(&d, 0xC0000202, 443);
	n = pp_build(PP_V2, (struct sockaddr *)&s, (struct sockaddr *)&d, 0,
	    buf, sizeof(buf));
	CHECK_INT(n, 28);
	CHECK_MEM(buf, sig, 12);
	CHECK_INT(buf[12], 0x21);
	CHECK_INT(buf[13], 0x11);
	CHECK_INT((buf[14] << 8) | buf[15], 12);
	CHECK_MEM(
	    buf + 16, "\xC0\x00\x02\x01\xC0\x00\x02\x02\x12\x34\x01\xBB", 12);

	mk6(&s6, a6, 80);
	mk6(&d6, b6, 8443);
	n = pp_build(PP_V2, (struct sockaddr *)&s6, (struct sockaddr *)&d6, 0,
	    buf, sizeof(buf));
	CHECK_INT(n, 52);
	CHECK_INT(buf[13], 0x21);
	CHECK_INT((buf[14] << 8) | buf[15], 36);
	CHECK_MEM(buf + 16, a6, 16);
	CHECK_MEM(buf + 32, b6, 16);
	CHECK_INT((buf[48] << 8) | buf[49], 80);
	CHECK_INT((buf[50] << 8) | buf[51], 8443);

	/* v4-mapped IPv6 on a dual-stack socket goes out as IPv4. */
	mk6(&m6, mapped, 5000);
	n = pp_build(PP_V2, (struct sockaddr *)&m6, (struct sockaddr *)&d, 0,
	    buf, sizeof(buf));
	CHECK_INT(n, 28);
	CHECK_INT(buf[13], 0x11);
	CHECK_MEM(buf + 16, "\xC0\x00\x02\x01", 4);

	/* LOCAL: health checks; no address block, no stray bytes. */
	n = pp_build(PP_V2, NULL, NULL, 1, buf, sizeof(buf));
	CHECK_INT(n, 16);
	CHECK_INT(buf[12], 0x20);
	CHECK_INT(buf[13], 0x00);
	CHECK_INT(buf[14] | buf[15], 0);
	/* Unknown addresses: PROXY command, AF_UNSPEC, length 0. */
	n = pp_build(PP_V2, (struct sockaddr *)&s, NULL, 0, buf, sizeof(buf));
	CHECK_INT(n, 16);
	CHECK_INT(buf[12], 0x21);
	CHECK_INT(buf[13], 0x00);
}

/*
 * A v4-mapped address with a plain IPv6 one (a "PROXY TCP6" header whose
 * client is v4-mapped): TCP6, the mapped address kept as IPv6.  Both
 * mapped: TCP4.
 */
static void
test_mapped_with_ipv6(void)
{
	struct sockaddr_in6 m6, v6, m6b;
	uint8_t buf[PP_BUILD_MAX + 1];
	uint8_t mapped[16] = {[10] = 0xff, [11] = 0xff, 198, 51, 100, 77};
	uint8_t mapped2[16] = {[10] = 0xff, [11] = 0xff, 192, 0, 2, 9};
	uint8_t plain6[16] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1};
	ssize_t n;

	mk6(&m6, mapped, 5000);
	mk6(&v6, plain6, 443);
	mk6(&m6b, mapped2, 8443);
	n = pp_build(PP_V1, (struct sockaddr *)&m6, (struct sockaddr *)&v6, 0,
	    buf, sizeof(buf));
	buf[n > 0 ? n : 0] = '\0';
	CHECK_STR((char *)buf,
	    "PROXY TCP6 ::ffff:198.51.100.77 2001:db8::1 5000 443\r\n");
	n = pp_build(PP_V1, (struct sockaddr *)&v6, (struct sockaddr *)&m6, 0,
	    buf, sizeof(buf));
	buf[n > 0 ? n : 0] = '\0';
	CHECK_STR((char *)buf,
	    "PROXY TCP6 2001:db8::1 ::ffff:198.51.100.77 443 5000\r\n");

	n = pp_build(PP_V2, (struct sockaddr *)&m6, (struct sockaddr *)&v6, 0,
	    buf, sizeof(buf));
	CHECK_INT(n, 52);
	CHECK_INT(buf[12], 0x21);
	CHECK_INT(buf[13], 0x21);
	CHECK_INT((buf[14] << 8) | buf[15], 36);
	CHECK_MEM(buf + 16, mapped, 16);
	CHECK_MEM(buf + 32, plain6, 16);
	CHECK_INT((buf[48] << 8) | buf[49], 5000);
	CHECK_INT((buf[50] << 8) | buf[51], 443);

	/* Both mapped: IPv4, as before. */
	n = pp_build(PP_V1, (struct sockaddr *)&m6, (struct sockaddr *)&m6b, 0,
	    buf, sizeof(buf));
	buf[n > 0 ? n : 0] = '\0';
	CHECK_STR(
	    (char *)buf, "PROXY TCP4 198.51.100.77 192.0.2.9 5000 8443\r\n");
	n = pp_build(PP_V2, (struct sockaddr *)&m6, (struct sockaddr *)&m6b, 0,
	    buf, sizeof(buf));
	CHECK_INT(n, 28);
	CHECK_INT(buf[13], 0x11);
	CHECK_MEM(buf + 16, "\xC6\x33\x64\x4D\xC0\x00\x02\x09", 8);
}

int
main(void)
{
	test_v1();
	test_v2();
	test_mapped_with_ipv6();
	return h_report("test_proxyproto");
}
