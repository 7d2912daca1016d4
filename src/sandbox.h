/*
 * sandbox: least privilege once start-up is done (DESIGN.md, "Privileges").
 *
 * sandbox_drop() runs after every listener is bound and the ports file is
 * written, while the main thread is still the only one: it switches to
 * the configured user when started as root, ends with no capability in
 * any set, sets no_new_privs, and keeps the process out of core files.
 * sandbox_seccomp() then installs the system-call allow-list on every
 * thread (TSYNC: the resolver thread is running by then); threads started
 * later inherit it.  Both return 0, or -1 with a one-line reason in err.
 */
#ifndef LIFELINE_SANDBOX_H
#define LIFELINE_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>

int sandbox_drop(const char *user, char *err, size_t errlen);
int sandbox_seccomp(char *err, size_t errlen);
/* Before sandbox_seccomp: the NSS modules for host lookups, loaded now. */
void sandbox_preload_nss(void);

/* System calls the allow-list permits (for the docs and the tests). */
size_t sandbox_allowed_count(void);

#ifdef LIFELINE_TEST_HOOKS
/* Test builds only: makes acct(2), which no list allows (SIGSYS). */
void sandbox_test_forbidden(void);
#endif

#endif
