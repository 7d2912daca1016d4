/*
 * Unit tests for sandbox.c's filter: in a child process, allowed calls
 * work and each forbidden one ends the process with SIGSYS (and a line
 * naming the call's number).
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "sandbox.h"

/* What the last child wrote on stderr. */
static char said[256];

/*
 * Runs fn in a child under the filter; returns its wait status.  The
 * child's stderr (the filter's verdict) lands in said[].
 */
static int
filtered(void (*fn)(void))
{
	char err[256];
	int status = 0, p[2];
	ssize_t n;
	pid_t pid;

	if (pipe(p) != 0)
		return -1;
	pid = fork();
	if (pid == 0) {
		dup2(p[1], STDERR_FILENO);
		close(p[0]);
		if (sandbox_seccomp(err, sizeof(err)) != 0)
			_exit(90);
		fn();
		_exit(0);
	}
	close(p[1]);
	/* To EOF: a reader gone early would kill the child with SIGPIPE. */
	for (size_t got = 0;; got += (size_t)n) {
		n = read(p[0], said + got, sizeof(said) - 1 - got);
		if (n <= 0) {
			said[got] = '\0';
			break;
		}
	}
	close(p[0]);
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return status;
}

static void
allowed_calls(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || close(fd) != 0 || getpid() <= 0)
		_exit(91);
	/* AF_UNIX is allowed (name resolution may need it). */
	fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (fd < 0 || close(fd) != 0)
		_exit(92);
}

static void
do_execve(void)
{
	char *argv[] = {"/bin/true", NULL};

	execve("/bin/true", argv, NULL);
}

static void
do_ptrace(void)
{
	syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0);
}

static void
do_fork(void)
{
	/* A new process, not a thread: clone without CLONE_THREAD. */
	if (fork() == 0)
		_exit(0);
}

static void
do_packet_socket(void)
{
	(void)socket(AF_PACKET, SOCK_RAW, 0);
}

static void
do_unshare(void)
{
	syscall(SYS_unshare, 0);
}

static void
do_mount(void)
{
	syscall(SYS_mount, "none", "/", "tmpfs", 0, NULL);
}

static void
do_bpf(void)
{
	syscall(SYS_bpf, 0, NULL, 0);
}

static bool
killed_by_sigsys(int status)
{
	return status != -1 && WIFSIGNALED(status) &&
	    WTERMSIG(status) == SIGSYS;
}

int
main(void)
{
	int st = filtered(allowed_calls);

	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	CHECK(killed_by_sigsys(filtered(do_execve)));
	{
		char want[64];

		snprintf(want, sizeof(want), "system call %d not allowed",
		    (int)SYS_execve);
		CHECK(strstr(said, want) != NULL);
	}
#ifndef LIFELINE_SANITIZED
	/* LeakSanitizer's tracer needs these: the sanitizer build allows
	 * them (sandbox.c). */
	CHECK(killed_by_sigsys(filtered(do_ptrace)));
	CHECK(killed_by_sigsys(filtered(do_fork)));
#else
	(void)do_ptrace;
	(void)do_fork;
#endif
	CHECK(killed_by_sigsys(filtered(do_packet_socket)));
	CHECK(killed_by_sigsys(filtered(do_unshare)));
	CHECK(killed_by_sigsys(filtered(do_mount)));
	CHECK(killed_by_sigsys(filtered(do_bpf)));
	CHECK(sandbox_allowed_count() > 50);
	return h_report("test_sandbox");
}
