/*
 * Unit tests for hello.c: real ClientHellos from OpenSSL, cut into records
 * and prefixes of every size, and the inputs that must never pass for one.
 */
#include <ctype.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "harness.h"
#include "hello.h"

/* A ClientHello as OpenSSL's client sends it (one record); *len set. */
static uint8_t *
real_hello(const char *sni, int max_version, size_t *len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = SSL_new(ctx);
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
	uint8_t *out;
	char *data;
	long n;

	if (max_version)
		SSL_set_max_proto_version(ssl, max_version);
	SSL_set_bio(ssl, rb, wb);
	if (sni != NULL)
		SSL_set_tlsext_host_name(ssl, sni);
	SSL_set_connect_state(ssl);
	(void)SSL_do_handshake(ssl); /* wants to read: the hello is out */
	n = BIO_get_mem_data(wb, &data);
	out = malloc((size_t)n);
	memcpy(out, data, (size_t)n);
	*len = (size_t)n;
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	return out;
}

/* The handshake message of a one-record hello, cut into records of k. */
static uint8_t *
rerecord(const uint8_t *h, size_t len, size_t k, size_t *outlen)
{
	size_t mlen = len - 5, nrec = (mlen + k - 1) / k;
	uint8_t *out = malloc(mlen + 5 * nrec), *o = out;

	for (size_t off = 0; off < mlen; off += k) {
		size_t n = mlen - off < k ? mlen - off : k;

		o[0] = 0x16;
		o[1] = 3;
		o[2] = 1;
		o[3] = (uint8_t)(n >> 8);
		o[4] = (uint8_t)n;
		memcpy(o + 5, h + 5 + off, n);
		o += 5 + n;
	}
	*outlen = (size_t)(o - out);
	return out;
}

/* Every prefix says MORE with a need beyond it and within the whole. */
static bool
prefixes_ok(const uint8_t *p, size_t len)
{
	struct hello_info info;

	for (size_t n = 0; n < len; n++) {
		size_t need = 0;

		if (hello_parse(p, n, &info, &need) != HELLO_MORE ||
		    need <= n || need > len) {
			fprintf(stderr, "prefix %zu of %zu: need %zu\n", n, len,
			    need);
			return false;
		}
	}
	return true;
}

static void
test_real_hellos(void)
{
	static const char *const names[] = {
	    "mmg.whatsapp.net", "Media.FCMB6-1.fna.WhatsApp.net", NULL};
	static const int versions[] = {0, TLS1_2_VERSION};
	static const size_t sizes[] = {1, 7, 100, 16384};

	for (size_t v = 0; v < 2; v++) {
		for (size_t i = 0; i < 3; i++) {
			size_t len, need;
			uint8_t *h = real_hello(names[i], versions[v], &len);
			struct hello_info info;

			CHECK_INT(hello_parse(h, len, &info, &need), HELLO_OK);
			CHECK_INT(info.has_sni, names[i] != NULL);
			if (names[i] != NULL) {
				CHECK(strcasecmp(info.sni, names[i]) == 0);
				for (const char *q = info.sni; *q; q++)
					CHECK(!isupper((unsigned char)*q));
			}
			CHECK(prefixes_ok(h, len));
			for (size_t k = 0; k < 4; k++) {
				size_t rlen;
				uint8_t *r = rerecord(h, len, sizes[k], &rlen);
				struct hello_info ri;

				memset(&ri, 0, sizeof(ri));
				if (rlen <= HELLO_READ_MAX) {
					CHECK_INT(
					    hello_parse(r, rlen, &ri, &need),
					    HELLO_OK);
					CHECK(memcmp(&ri, &info, sizeof(ri)) ==
					    0);
					if (sizes[k] >= 7)
						CHECK(prefixes_ok(r, rlen));
				} else {
					/* 1-byte records: beyond the bound. */
					CHECK_INT(
					    hello_parse(r, rlen, &ri, &need),
					    HELLO_BAD);
				}
				free(r);
			}
			free(h);
		}
	}
}

static void
test_not_tls(void)
{
	static const char *const probes[] = {"GET / HTTP/1.1\r\n",
	    "SSH-2.0-x\r\n", "\x16\x02\x00", "\x15\x03\x01\x00\x02\x02\x28",
	    "PRI * HTTP/2.0\r\n", "WA\x06\x03"};
	struct hello_info info;
	size_t need;

	for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++)
		CHECK_INT(hello_parse((const uint8_t *)probes[i],
		              strlen(probes[i]), &info, &need),
		    HELLO_NOT_TLS);
	need = 0;
	CHECK_INT(
	    hello_parse((const uint8_t *)"\x16", 1, &info, &need), HELLO_MORE);
	CHECK_INT(need, 2);
}

/* Breaks one byte of a real hello at offset at, and expects BAD. */
static void
bad_at(const uint8_t *h, size_t len, size_t at, uint8_t v, const char *what)
{
	uint8_t *c = malloc(len);
	struct hello_info info;
	size_t need;
	enum hello_result r;

	memcpy(c, h, len);
	c[at] = v;
	r = hello_parse(c, len, &info, &need);
	if (r != HELLO_BAD)
		fprintf(stderr, "%s: %s\n", what, hello_result_str(r));
	CHECK_INT(r, HELLO_BAD);
	free(c);
}

static void
test_bad(void)
{
	size_t len, need;
	uint8_t *h = real_hello("mmg.whatsapp.net", 0, &len);
	struct hello_info info;
	uint8_t *r2;
	size_t r2len;
	uint8_t *sni;

	bad_at(h, len, 5, 0x02, "a ServerHello");
	bad_at(h, len, 3, 0x00, "record of 0 bytes");
	bad_at(h, len, 3, 0x41, "record beyond 16 KiB");
	bad_at(h, len, 6, 0x01, "message beyond 16 KiB");
	bad_at(h, len, 5 + 4 + 34, 33, "session id of 33");
	/* The host name: an invalid character. */
	sni = memmem(h, len, "mmg.", 4);
	CHECK(sni != NULL);
	bad_at(h, len, (size_t)(sni - h), '/', "a slash in the name");
	bad_at(h, len, (size_t)(sni - h) + 2, '.', "an empty label");
	/* The second record of a split hello is not a handshake record. */
	r2 = rerecord(h, len, 100, &r2len);
	bad_at(r2, r2len, 105, 0x17, "application data in between");
	free(r2);
	/* A message shorter than its fields. */
	CHECK_INT(hello_parse((const uint8_t *)"\x16\x03\x01\x00\x05\x01\x00"
	                                       "\x00\x01\x03",
	              10, &info, &need),
	    HELLO_BAD);
	free(h);
}

static void
test_names(void)
{
	CHECK(hello_name_match("*.whatsapp.net", "mmg.whatsapp.net"));
	CHECK(hello_name_match(
	    "*.whatsapp.net", "media.fcmb6-1.fna.whatsapp.net"));
	CHECK(hello_name_match("*.WhatsApp.net", "mmg.whatsapp.net"));
	CHECK(!hello_name_match("*.whatsapp.net", "whatsapp.net"));
	CHECK(!hello_name_match("*.whatsapp.net", "evilwhatsapp.net"));
	CHECK(!hello_name_match("*.whatsapp.net", "mmg.whatsapp.net.evil"));
	CHECK(hello_name_match("mmg.whatsapp.net", "mmg.whatsapp.net"));
	CHECK(!hello_name_match("mmg.whatsapp.net", "xmmg.whatsapp.net"));
	CHECK(hello_pattern_valid("*.whatsapp.net"));
	CHECK(hello_pattern_valid("mmg.whatsapp.net"));
	CHECK(!hello_pattern_valid("*"));
	CHECK(!hello_pattern_valid("*.*.net"));
	CHECK(!hello_pattern_valid("a..b"));
	CHECK(!hello_pattern_valid("mmg.whatsapp.net:443"));
	CHECK(!hello_pattern_valid(""));
}

int
main(void)
{
	test_real_hellos();
	test_not_tls();
	test_bad();
	test_names();
	return h_report("test_hello");
}
