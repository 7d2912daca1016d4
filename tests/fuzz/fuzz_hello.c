/*
 * libFuzzer target: hello_parse on arbitrary first bytes of a TLS
 * listener's client.
 *
 * Every prefix is copied into a buffer of exactly its size, so ASan
 * reports any read past len.  Checked, besides memory safety: MORE for
 * every prefix until the verdict, then the same verdict (and the same
 * server name) for every longer one; a MORE's need lies beyond the prefix
 * and within HELLO_READ_MAX, and no verdict changes between the prefix and
 * the need; the output is untouched unless the result is HELLO_OK, and an
 * OK server name is lower case and a valid pattern.  A broken invariant
 * prints the reason and aborts.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hello.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fail(const char *why, size_t n)
{
	fprintf(stderr, "fuzz_hello: %s (at %zu bytes)\n", why, n);
	abort();
}

static enum hello_result
parse_exact(
    const uint8_t *buf, size_t len, struct hello_info *out, size_t *need)
{
	uint8_t *copy = malloc(len > 0 ? len : 1);
	enum hello_result r;

	if (copy == NULL)
		abort();
	memcpy(copy, buf, len);
	memset(out, 0xA5, sizeof(*out));
	*need = 0;
	r = hello_parse(copy, len, out, need);
	free(copy);
	return r;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum hello_result first = HELLO_MORE;
	struct hello_info info, got, sentinel;
	size_t need, next = 0;

	memset(&sentinel, 0xA5, sizeof(sentinel));
	for (size_t n = 0; n <= size; n++) {
		enum hello_result r = parse_exact(data, n, &got, &need);

		if (r != HELLO_OK && memcmp(&got, &sentinel, sizeof(got)) != 0)
			fail("output written without a ClientHello", n);
		if (first == HELLO_MORE) {
			if (n < next && r != HELLO_MORE)
				fail("decided before its need", n);
			if (r == HELLO_MORE) {
				if (need <= n || need > HELLO_READ_MAX)
					fail("need out of bounds", n);
				next = need;
				continue;
			}
			first = r;
			info = got;
			if (r == HELLO_OK && info.has_sni) {
				for (const char *p = info.sni; *p; p++)
					if (isupper((unsigned char)*p))
						fail("upper case name", n);
				if (!hello_pattern_valid(info.sni))
					fail("invalid name", n);
			}
			continue;
		}
		if (r != first)
			fail("verdict changed with more bytes", n);
		if (r == HELLO_OK && memcmp(&got, &info, sizeof(got)) != 0)
			fail("server name changed with more bytes", n);
	}
	return 0;
}
