"""Upstream names (issue 14): when a name stops resolving, the last good
addresses are kept and relaying goes on; when it resolves again, to a new
address, new connections go there.

The daemon runs in a mount namespace of its own where /etc/hosts and
/etc/resolv.conf are files of the test (bind mounts): the name lives only
there, and a lookup that misses asks 127.0.0.1:53, where nothing listens,
so nothing leaves the machine.  A reload (SIGHUP) makes the resolver look
the names up at once; the sandbox is on (lookups under seccomp).

/etc/nsswitch.conf is the test's too, naming an NSS module built here
whose constructor makes a system call outside the allow-list, as
libnss_mymachines's libcap does: glibc loads a module at the first lookup
that reaches it (here the first name missing from /etc/hosts, after
start-up), so the daemon must have loaded it before its filter."""

import shutil
import signal
import subprocess

from conftest import Daemon, Server, h_echo, make_config

NAME = "chat.lifeline-test.invalid"

NSS_MODULE = r"""
#include <errno.h>
#include <netdb.h>
#include <nss.h>
#include <sys/resource.h>

/* Like libcap's constructor: a call the daemon's filter does not allow. */
__attribute__((constructor)) static void
probe(void)
{
	(void)getpriority(PRIO_PROCESS, 0);
}

enum nss_status
_nss_lltest_gethostbyname2_r(const char *name, int af, struct hostent *h,
    char *buf, size_t len, int *errnop, int *herrnop)
{
	(void)name; (void)af; (void)h; (void)buf; (void)len;
	*errnop = ENOENT;
	*herrnop = HOST_NOT_FOUND;
	return NSS_STATUS_NOTFOUND;
}
"""


def build_nss_module(dirpath):
    src = dirpath / "nss_lltest.c"
    src.write_text(NSS_MODULE)
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-shared", "-fPIC", "-o",
                    str(dirpath / "libnss_lltest.so.2"), str(src)],
                   check=True, timeout=60)


def h_tagged(tag):
    """Echo that first says which server it is."""
    def handler(c, rec):
        c.sendall(tag)
        h_echo(c, rec)
    return handler


def first_bytes(addr):
    import socket
    s = socket.create_connection(addr, timeout=5)
    s.sendall(b"x")
    got = b""
    while len(got) < 2:
        d = s.recv(2 - len(got))
        if not d:
            break
        got += d
    s.close()
    return got


def test_failing_name_keeps_last_addresses_then_follows_a_change(tmp_path):
    a = Server(h_tagged(b"A"), host="127.0.0.1", name="A")
    b = Server(h_tagged(b"B"), host="127.0.0.3", port=a.port, name="B")
    hosts = tmp_path / "hosts"
    resolv = tmp_path / "resolv.conf"
    nss = tmp_path / "nsswitch.conf"
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {NAME}\n")
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    nss.write_text("hosts: files lltest dns\n")
    build_nss_module(tmp_path)
    wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount --bind "{hosts}" /etc/hosts && '
            f'mount --bind "{resolv}" /etc/resolv.conf && '
            f'mount --bind "{nss}" /etc/nsswitch.conf && exec "$@"', "sh"]
    cfg = make_config({"up": [f"{NAME}:{a.port}"]},
                      {"plain": {"upstream": "up"}})
    d = Daemon(tmp_path, cfg, wrap=wrap,
               env={"LD_LIBRARY_PATH": str(tmp_path)}).start()
    assert first_bytes(d.addr("plain")) == b"Ax"

    # The name disappears: kept addresses, still relaying, a warning.
    hosts.write_text("127.0.0.1 localhost\n")
    since = d.stderr_size()
    d.send(signal.SIGHUP)
    d.wait_stderr(since, lambda t: f"cannot resolve upstream server {NAME}"
                  in t and "keeping 1 known address" in t)
    assert first_bytes(d.addr("plain")) == b"Ax"

    # It comes back elsewhere: new connections follow it.
    hosts.write_text(f"127.0.0.1 localhost\n127.0.0.3 {NAME}\n")
    since = d.stderr_size()
    d.send(signal.SIGHUP)
    d.wait_stderr(since, lambda t: "configuration reloaded" in t)
    assert first_bytes(d.addr("plain")) == b"Bx"
    assert d.stop() == 0
    assert "system call" not in d.stderr_text()
