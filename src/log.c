/*
 * log: leveled logging to standard error, one write(2) per line.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static _Atomic int log_threshold = LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
/* syslog priorities of the levels: err, warning, info, debug. */
static const char *const level_prio[] = {"<3>", "<4>", "<6>", "<7>"};
/* Set once at start, before any thread: stderr is the journal's stream. */
static bool log_to_journal;

void
log_detect_journal(void)
{
	const char *v = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	char end;

	log_to_journal = false;
	if (v == NULL || sscanf(v, "%llu:%llu%c", &dev, &ino, &end) != 2)
		return;
	if (fstat(STDERR_FILENO, &st) != 0)
		return;
	log_to_journal = (unsigned long long)st.st_dev == dev &&
	    (unsigned long long)st.st_ino == ino;
}

void
log_set_level(enum log_level level)
{
	atomic_store(&log_threshold, (int)level);
}

enum log_level
log_get_level(void)
{
	return (enum log_level)atomic_load(&log_threshold);
}

bool
log_enabled(enum log_level level)
{
	return (int)level <=
	    atomic_load_explicit(&log_threshold, memory_order_relaxed);
}

int
log_level_parse(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]);
	     i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

const char *
log_level_str(enum log_level level)
{
	if ((unsigned)level >= sizeof(level_names) / sizeof(level_names[0]))
		return "?";
	return level_names[level];
}

static void
log_vemit(enum log_level level, int errnum, const char *fmt, va_list ap)
{
	char line[1024];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int r;

	if (!log_enabled(level))
		return;
	if (log_to_journal) {
		/* The journal stamps the time; the prefix sets PRIORITY=. */
		r = snprintf(line, sizeof(line), "%s%s: ", level_prio[level],
		    level_names[level]);
		n = r > 0 ? (size_t)r : 0;
	} else {
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
		r = snprintf(line + n, sizeof(line) - n,
		    ".%03ldZ %s: ", ts.tv_nsec / 1000000, level_names[level]);
		if (r > 0)
			n += (size_t)r;
	}
	if (n < sizeof(line)) {
		r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		if (r > 0)
			n += (size_t)r;
	}
	if (errnum != 0 && n < sizeof(line)) {
		r = snprintf(
		    line + n, sizeof(line) - n, ": %s", strerror(errnum));
		if (r > 0)
			n += (size_t)r;
	}
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line; a short write on stderr is not worth a retry. */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

#define LOG_FN(name, level, witherr)                                           \
	void name(const char *fmt, ...)                                        \
	{                                                                      \
		int saved = errno;                                             \
		va_list ap;                                                    \
		va_start(ap, fmt);                                             \
		log_vemit(level, witherr ? saved : 0, fmt, ap);                \
		va_end(ap);                                                    \
		errno = saved;                                                 \
	}

LOG_FN(log_error, LOG_ERROR, 1)
LOG_FN(log_errorx, LOG_ERROR, 0)
LOG_FN(log_warn, LOG_WARN, 1)
LOG_FN(log_warnx, LOG_WARN, 0)
LOG_FN(log_info, LOG_INFO, 0)
LOG_FN(log_debug, LOG_DEBUG, 0)

void
fatal(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vemit(LOG_ERROR, 0, fmt, ap);
	va_end(ap);
	exit(code);
}
