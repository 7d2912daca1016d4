/*
 * sandbox: user switch, capabilities, no_new_privs, core files, seccomp.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "sandbox.h"
#include "util.h"

/*
 * Every system call the running daemon makes, and why.  Anything else
 * kills the process (SIGSYS).  socket, ioctl and clone are allowed with
 * argument checks below, clone3 answers ENOSYS (glibc then uses clone).
 */
static const char *const allowed[] = {
    /* memory, threads, time, exit */
    "brk",
    "mmap",
    "munmap",
    "mprotect",
    "madvise",
    "mremap",
    "futex",
    "set_robust_list",
    "rseq",
    "set_tid_address",
    "sched_yield",
    "clock_gettime",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "getrandom",
    "exit",
    "exit_group",
    "restart_syscall",
    "gettid",
    "getpid",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigaction",
    "sigaltstack",
    "tgkill",
    "membarrier",
    /* files: config and certificate reloads, ports file, name resolution */
    "openat",
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "close",
    "fstat",
    "newfstatat",
    "statx",
    "lseek",
    "fcntl",
    "unlink",
    "rename",
    "readlink",
    "access",
    "faccessat",
    "faccessat2",
    "getdents64",
    /* the loop, the mailboxes, signals */
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "eventfd2",
    "signalfd4",
    "poll",
    "ppoll",
    "pipe2",
    /* sockets: relaying, health checks, stats, resolution, reloads */
    "accept4",
    "connect",
    "bind",
    "listen",
    "setsockopt",
    "getsockopt",
    "getsockname",
    "getpeername",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
    "splice",
    /* stats (CPU time, limits), identity for logs */
    "getrusage",
    "prlimit64",
    "getrlimit",
    "uname",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "sysinfo",
    "sched_getaffinity",
};

#ifdef LIFELINE_SANITIZED
/*
 * The sanitizer build only: LeakSanitizer stops the world at exit with a
 * tracer task (clone without CLONE_THREAD, ptrace, prctl, wait4) and
 * reads /proc with the legacy open and getdents; an AddressSanitizer
 * report asks whether stderr is a terminal (ioctl TCGETS) before it
 * prints, and without it the filter kills the process with the report
 * unwritten.  Release builds never allow these.
 */
static const char *const sanitizer_allowed[] = {
    "prctl",
    "ptrace",
    "wait4",
    "waitid",
    "getppid",
    "kill",
    "clone",
    "sched_getaffinity",
    "process_vm_readv",
    "open",
    "getdents",
    "ioctl",
};
#endif

size_t
sandbox_allowed_count(void)
{
	/* Plus socket, ioctl, clone and prctl, with argument checks. */
	return sizeof(allowed) / sizeof(allowed[0]) + 4;
}

/* The highest capability number the kernel knows. */
static int
cap_last(void)
{
	FILE *f = fopen("/proc/sys/kernel/cap_last_cap", "r");
	int last = CAP_LAST_CAP;

	if (f != NULL) {
		if (fscanf(f, "%d", &last) != 1)
			last = CAP_LAST_CAP;
		fclose(f);
	}
	return last;
}

static int
caps_get(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};

	return (int)syscall(SYS_capget, &h, d);
}

static int
caps_clear(void)
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];

	memset(d, 0, sizeof(d));
	return (int)syscall(SYS_capset, &h, d);
}

/*
 * Empties the bounding set.  That needs CAP_SETPCAP: root has it, and the
 * systemd unit grants it with CAP_NET_BIND_SERVICE.  Without it (an
 * ordinary user), nothing in the set can be gained anyway: no permitted
 * capability, and no_new_privs and the filter forbid gaining any.
 */
static int
bounding_clear(char *err, size_t errlen)
{
	int last = cap_last();

	for (int cap = 0; cap <= last; cap++) {
		if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1)
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0)
			continue;
		if (errno == EPERM && geteuid() != 0)
			return 0;
		return errf(err, errlen,
		    "cannot drop capability %d from the bounding set: %s", cap,
		    strerror(errno));
	}
	return 0;
}

static int
switch_user(const char *user, char *err, size_t errlen)
{
	struct passwd *pw;

	if (user == NULL || geteuid() != 0)
		return 0;
	errno = 0;
	pw = getpwnam(user);
	if (pw == NULL)
		return errf(err, errlen,
		    "user '%s' does not exist: cannot drop privileges", user);
	if (setgroups(0, NULL) != 0 ||
	    setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) != 0 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) != 0)
		return errf(err, errlen, "cannot switch to user '%s': %s", user,
		    strerror(errno));
	if (pw->pw_uid != 0 && setuid(0) == 0)
		return errf(err, errlen,
		    "privileges could be regained after dropping them");
	log_info("running as user '%s'", user);
	return 0;
}

int
sandbox_drop(const char *user, char *err, size_t errlen)
{
	struct __user_cap_data_struct d[2];
	struct rlimit no_core = {0, 0};

	if (bounding_clear(err, errlen) != 0)
		return -1;
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
		return errf(err, errlen,
		    "cannot clear ambient capabilities: %s", strerror(errno));
	if (switch_user(user, err, errlen) != 0)
		return -1;
	if (caps_clear() != 0 || caps_get(d) != 0)
		return errf(err, errlen, "cannot drop capabilities: %s",
		    strerror(errno));
	for (int i = 0; i < 2; i++) {
		if (d[i].effective || d[i].permitted || d[i].inheritable)
			return errf(err, errlen,
			    "capabilities left after dropping them");
	}
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return errf(err, errlen, "cannot set no_new_privs: %s",
		    strerror(errno));
#ifndef LIFELINE_SANITIZED
	/*
	 * TLS keys, ticket keys and traffic never reach a core file.  (The
	 * sanitizer build stays dumpable: LeakSanitizer needs it.)
	 */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 ||
	    setrlimit(RLIMIT_CORE, &no_core) != 0)
		return errf(err, errlen, "cannot disable core dumps: %s",
		    strerror(errno));
#else
	(void)no_core;
#endif
	return 0;
}

/* socket(2): the families the daemon uses, and nothing else. */
static int
allow_socket(scmp_filter_ctx ctx)
{
	static const int families[] = {AF_INET, AF_INET6, AF_UNIX, AF_NETLINK};

	for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
		if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
		        SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)families[i])) != 0)
			return -1;
	}
	return 0;
}

/*
 * ioctl(2): SIOCOUTQ (bytes unacknowledged, at a timeout) and FIONREAD
 * (the resolver); clone(2): threads only, never a new process;
 * clone3(2): ENOSYS, which makes glibc fall back to clone;
 * prctl(2): PR_CAPBSET_READ only, a read that libcap's constructor makes
 * when an NSS module linked with it (mymachines) is loaded late.
 */
static int
allow_checked(scmp_filter_ctx ctx)
{
	const scmp_datum_t thread = CLONE_VM | CLONE_THREAD;

	if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
	        SCMP_A1(SCMP_CMP_EQ, (scmp_datum_t)TIOCOUTQ)) != 0 ||
	    seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
	        SCMP_A1(SCMP_CMP_EQ, (scmp_datum_t)FIONREAD)) != 0 ||
	    seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
	        SCMP_A0(SCMP_CMP_MASKED_EQ, thread, thread)) != 0 ||
	    seccomp_rule_add(
	        ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0) != 0)
		return -1;
#ifndef LIFELINE_SANITIZED /* there, prctl is allowed whole */
	if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
	        SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)PR_CAPBSET_READ)) != 0)
		return -1;
#endif
	return 0;
}

/*
 * Loads now the NSS modules that /etc/nsswitch.conf names for hosts
 * (beyond files and dns, which are in libc): glibc would load one at the
 * first lookup that reaches it, a name missing from /etc/hosts perhaps
 * hours later, under the filter, and a module's libraries run their
 * constructors then (libcap's, under mymachines, calls prctl).  Loaded
 * here, glibc later finds them loaded.  A module that does not load is
 * skipped: glibc skips it too.
 */
void
sandbox_preload_nss(void)
{
	char line[512];
	FILE *f = fopen("/etc/nsswitch.conf", "re");

	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL) {
		char *save = NULL, *tok;

		if (strncmp(line, "hosts:", 6) != 0)
			continue;
		for (tok = strtok_r(line + 6, " \t\n", &save); tok != NULL;
		     tok = strtok_r(NULL, " \t\n", &save)) {
			char lib[128];

			/* "[NOTFOUND=return]" and the like are actions. */
			if (tok[0] == '[' || strcmp(tok, "files") == 0 ||
			    strcmp(tok, "dns") == 0 || strchr(tok, '/') != NULL)
				continue;
			snprintf(lib, sizeof(lib), "libnss_%s.so.2", tok);
			if (dlopen(lib, RTLD_NOW | RTLD_LOCAL) != NULL)
				log_debug(
				    "sandbox: loaded %s before the filter",
				    lib);
		}
		break;
	}
	fclose(f);
}

/*
 * A call outside the list traps here: say which, by number (only
 * async-signal-safe calls: the thread may hold malloc's lock), then die
 * of SIGSYS, the filter's verdict.
 */
static void
on_sigsys(int sig, siginfo_t *si, void *uc)
{
	static const char head[] = "lifeline: sandbox: system call ";
	static const char tail[] = " not allowed (see README, Sandbox)\n";
	char num[16];
	size_t n = sizeof(num);
	unsigned v = (unsigned)si->si_syscall;

	(void)uc;
	do {
		num[--n] = (char)('0' + v % 10);
		v /= 10;
	} while (v > 0 && n > 0);
	(void)!write(STDERR_FILENO, head, sizeof(head) - 1);
	(void)!write(STDERR_FILENO, num + n, sizeof(num) - n);
	(void)!write(STDERR_FILENO, tail, sizeof(tail) - 1);
	signal(sig, SIG_DFL);
	raise(sig);
}

int
sandbox_seccomp(char *err, size_t errlen)
{
	struct sigaction sa;
	scmp_filter_ctx ctx;
	int r = -1;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigsys;
	sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
	if (sigaction(SIGSYS, &sa, NULL) != 0)
		return errf(err, errlen, "seccomp: cannot catch SIGSYS: %s",
		    strerror(errno));
	ctx = seccomp_init(SCMP_ACT_TRAP);
	if (ctx == NULL)
		return errf(err, errlen, "seccomp: cannot create a filter");
	r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	if (r != 0) {
		/*
		 * libseccomp probes the seccomp(2) call for TSYNC: an outer
		 * filter that denies it (systemd's SystemCallFilter without
		 * "seccomp") makes the probe fail.
		 */
		seccomp_release(ctx);
		return errf(err, errlen,
		    "seccomp: cannot apply the filter to every thread "
		    "(TSYNC: %s); is the seccomp system call denied by an "
		    "outer filter (systemd: add SystemCallFilter=seccomp)?",
		    strerror(-r));
	}
	r = -1;
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
		int nr = seccomp_syscall_resolve_name(allowed[i]);

		/* A call this architecture does not have: nothing to allow. */
		if (nr == __NR_SCMP_ERROR)
			continue;
		if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) != 0)
			goto out;
	}
	if (allow_socket(ctx) != 0 || allow_checked(ctx) != 0)
		goto out;
#ifdef LIFELINE_SANITIZED
	for (size_t i = 0; i < ARRAY_LEN(sanitizer_allowed); i++) {
		int nr = seccomp_syscall_resolve_name(sanitizer_allowed[i]);

		if (nr != __NR_SCMP_ERROR &&
		    seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) != 0)
			goto out;
	}
#endif
	r = seccomp_load(ctx);
	if (r != 0) {
		errf(err, errlen, "seccomp: cannot load the filter: %s",
		    strerror(-r));
		r = -1;
	}
	seccomp_release(ctx);
	return r;
out:
	seccomp_release(ctx);
	return errf(err, errlen, "seccomp: cannot build the filter");
}

#ifdef LIFELINE_TEST_HOOKS
void
sandbox_test_forbidden(void)
{
	log_info("test hook: calling acct(2), which the filter forbids");
	(void)syscall(SYS_acct, NULL);
}
#endif
