/*
 * Corpus replay for the fuzz targets, without libFuzzer: built with gcc +
 * ASan/UBSan together with one tests/fuzz/fuzz_NAME.c, it feeds every file
 * of the given directories (or the given files) to LLVMFuzzerTestOneInput,
 * in name order.  Prints "replay_NAME: N passed, 0 failed" and exits 0; a
 * broken invariant aborts (the target) or the sanitizer stops the run.  An
 * unreadable or empty corpus counts as a failure.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *
base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s != NULL ? s + 1 : path;
}

/* Reads a whole file into an exactly-sized buffer; returns 0 or -1. */
static int
read_file(const char *path, uint8_t **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	struct stat st;
	size_t n;

	*out = NULL;
	*len = 0;
	if (f == NULL)
		return -1;
	if (fstat(fileno(f), &st) != 0 || st.st_size < 0)
		goto fail;
	n = (size_t)st.st_size;
	/* Exactly n bytes: a read past the input is a heap overflow. */
	buf = malloc(n > 0 ? n : 1);
	if (buf == NULL || fread(buf, 1, n, f) != n)
		goto fail;
	fclose(f);
	*out = buf;
	*len = n;
	return 0;
fail:
	free(buf);
	fclose(f);
	return -1;
}

static int
replay_one(const char *path)
{
	uint8_t *buf;
	size_t len;

	if (read_file(path, &buf, &len) != 0) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	LLVMFuzzerTestOneInput(len > 0 ? buf : buf + 1, len);
	free(buf);
	return 0;
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replays the regular files of dir; returns how many, or -1. */
static long
replay_dir(const char *dir)
{
	char **names = NULL, path[4096];
	size_t n = 0, cap = 0;
	struct dirent *de;
	long done = 0;
	DIR *d;

	if ((d = opendir(dir)) == NULL) {
		fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			char **p;

			cap = cap ? cap * 2 : 64;
			p = realloc(names, cap * sizeof(*names));
			if (p == NULL)
				abort();
			names = p;
		}
		if ((names[n] = strdup(de->d_name)) == NULL)
			abort();
		n++;
	}
	closedir(d);
	if (n > 0)
		qsort(names, n, sizeof(*names), name_cmp);
	for (size_t i = 0; i < n; i++) {
		struct stat st;

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
			if (replay_one(path) != 0)
				done = -1;
			else if (done >= 0)
				done++;
		}
		free(names[i]);
	}
	free(names);
	return done;
}

int
main(int argc, char **argv)
{
	char name[256];
	long total = 0;
	int failed = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR|FILE...\n", argv[0]);
		return 2;
	}
	/* build-fuzz/replay_NAME, else the corpus directory's name. */
	if (strncmp(base_name(argv[0]), "replay_", 7) == 0)
		snprintf(name, sizeof(name), "%s", base_name(argv[0]));
	else
		snprintf(name, sizeof(name), "replay_%s", base_name(argv[1]));

	for (int i = 1; i < argc; i++) {
		struct stat st;
		long got;

		if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
			got = replay_dir(argv[i]);
		} else {
			got = replay_one(argv[i]) == 0 ? 1 : -1;
		}
		if (got < 0)
			failed++;
		else
			total += got;
	}
	if (total == 0 && failed == 0) {
		fprintf(stderr, "replay: no inputs in the corpus\n");
		failed = 1;
	}
	printf("%s: %ld passed, %d failed\n", name, total, failed);
	return failed == 0 ? 0 : 1;
}
