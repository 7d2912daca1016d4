/*
 * libFuzzer target: intro_classify on arbitrary first bytes.
 *
 * Every prefix is copied into a buffer of exactly its size, so ASan
 * reports any read past len.  Checked, besides memory safety: MORE for
 * every prefix until the verdict, then the same verdict for every longer
 * one, and a verdict within INTRO_MAX bytes.  A broken invariant prints
 * the reason and aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "intro.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static enum intro_verdict
classify_exact(const uint8_t *buf, size_t len)
{
	uint8_t *copy = malloc(len > 0 ? len : 1);
	enum intro_verdict v;

	if (copy == NULL)
		abort();
	memcpy(copy, buf, len);
	v = intro_classify(copy, len);
	free(copy);
	return v;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum intro_verdict first = INTRO_MORE;
	size_t decided = 0;

	for (size_t n = 0; n <= size; n++) {
		enum intro_verdict v = classify_exact(data, n);

		if (first == INTRO_MORE) {
			first = v;
			decided = n;
		} else if (v != first) {
			fprintf(stderr,
			    "fuzz_intro: %zu bytes: %s after %s at %zu\n", n,
			    intro_verdict_str(v), intro_verdict_str(first),
			    decided);
			abort();
		}
	}
	if (first == INTRO_MORE && size >= INTRO_MAX) {
		fprintf(
		    stderr, "fuzz_intro: undecided after %zu bytes\n", size);
		abort();
	}
	if (first != INTRO_MORE && decided > INTRO_MAX) {
		fprintf(stderr, "fuzz_intro: decided at %zu\n", decided);
		abort();
	}
	return 0;
}
