/*
 * notify: sd_notify(3)'s datagram protocol toward the service manager.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "notify.h"
#include "util.h"

static int notify_fd = -1; /* owned; -1 without a manager */

/* Fills sa from path: "/..." a file, "@..." the abstract namespace. */
static int
notify_addr(const char *path, struct sockaddr_un *sa, socklen_t *len)
{
	size_t n = strlen(path);

	if ((path[0] != '/' && path[0] != '@') || n < 2 ||
	    n >= sizeof(sa->sun_path))
		return -1;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, n);
	if (path[0] == '@')
		sa->sun_path[0] = '\0'; /* abstract: no terminator counted */
	else
		n++;
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	return 0;
}

int
notify_open(char *err, size_t errlen)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa;
	socklen_t len;
	int fd;

	if (path == NULL || path[0] == '\0')
		return 0;
	if (notify_addr(path, &sa, &len) != 0) {
		errf(err, errlen,
		    "NOTIFY_SOCKET '%s' is not a socket path or @name: the "
		    "service manager will not hear that lifeline is ready",
		    path);
		(void)unsetenv("NOTIFY_SOCKET");
		return -1;
	}
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, len) != 0) {
		char what[160];

		snprintf(
		    what, sizeof(what), "%.100s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		(void)unsetenv("NOTIFY_SOCKET");
		return errf(err, errlen,
		    "cannot reach the service manager at NOTIFY_SOCKET %s",
		    what);
	}
	(void)unsetenv("NOTIFY_SOCKET");
	notify_fd = fd;
	return 0;
}

bool
notify_enabled(void)
{
	return notify_fd >= 0;
}

int
notify_send(const char *fmt, ...)
{
	char msg[NOTIFY_MAX];
	va_list ap;
	int n;

	if (notify_fd < 0)
		return 0;
	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	if ((size_t)n >= sizeof(msg)) {
		/* Cut at the last whole line: never half an assignment. */
		char *nl = memrchr(msg, '\n', sizeof(msg) - 1);

		n = nl != NULL ? (int)(nl - msg) : 0;
	}
	/* The manager reads promptly; a full queue drops a STATUS, no more. */
	if (send(notify_fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		return -1;
	return 0;
}

int
notify_reloading(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return notify_send("RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL +
	        (unsigned long long)ts.tv_nsec / 1000);
}

void
notify_close(void)
{
	if (notify_fd >= 0)
		close(notify_fd);
	notify_fd = -1;
}
