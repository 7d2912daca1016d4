/*
 * log: leveled logging to standard error.
 *
 * One write(2) per line, so lines from several threads never interleave.
 * Privacy rule: nothing that identifies a client (address, port, payload)
 * is ever passed to these functions at a level above LOG_DEBUG.
 */
#ifndef LIFELINE_LOG_H
#define LIFELINE_LOG_H

#include <stdbool.h>

enum log_level {
	LOG_ERROR = 0,
	LOG_WARN,
	LOG_INFO,
	LOG_DEBUG,
};

/*
 * Under systemd, when $JOURNAL_STREAM names our stderr (sd-daemon(3)):
 * lines then carry a "<N>" syslog priority prefix instead of a timestamp,
 * so that the journal records each line's level.  Call once at start.
 */
void log_detect_journal(void);
/* Sets the threshold; messages above it are dropped. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* True when messages of this level are printed. */
bool log_enabled(enum log_level level);
/* Parses "error|warn|info|debug"; returns 0 or -1. */
int log_level_parse(const char *s, enum log_level *out);
const char *log_level_str(enum log_level level);

/* log_error and log_warn append ": strerror(errno)"; the -x forms do not. */
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_errorx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Logs at error level and exits with status code.  Startup only. */
void fatal(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

#endif
