"""Least privilege (DESIGN.md, "Privileges"): after start-up every thread
of the daemon has no capability in any set, no_new_privs, the seccomp
filter (unless `sandbox = off`) and, when started as root with `user`,
that user's identity.  A forbidden call kills the running daemon by
SIGSYS (through the sanitized build's test hook; the filter's verdict on
each kind of call is tested in tests/unit/test_sandbox.c)."""

import os
import pwd
import signal
import socket
import time

import pytest

from conftest import (
    Server, connect, echo_roundtrip, h_echo, make_config, start_daemon,
    wait_for,
)

CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def thread_status(pid):
    """{tid: {field: value}} from /proc/PID/task/*/status."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            out[tid] = dict(line.rstrip("\n").split(":\t", 1)
                            for line in f if ":\t" in line)
    return out


@pytest.fixture
def echo():
    return Server(h_echo, name="echo")


def test_every_thread_unprivileged_and_filtered(tmp_path, echo):
    assert os.geteuid() == 0, "this test starts the daemon as root"
    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)  # nobody reads nothing here; the config is read as root
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}},
        global_={"user": "nobody", "workers": "2"}))
    echo_roundtrip(connect(d.addr("plain")))
    threads = thread_status(d.pid)
    # main, 2 workers, control, resolver
    assert len(threads) >= 5, threads.keys()
    for tid, st in threads.items():
        for cap in CAP_SETS:
            assert int(st[cap], 16) == 0, f"thread {tid}: {cap} {st[cap]}"
        assert st["NoNewPrivs"] == "1", f"thread {tid}"
        assert st["Seccomp"] == "2", f"thread {tid}: Seccomp {st['Seccomp']}"
        uids = st["Uid"].split()
        gids = st["Gid"].split()
        assert uids == [str(nobody.pw_uid)] * 4, f"thread {tid}: Uid {uids}"
        assert gids == [str(nobody.pw_gid)] * 4, f"thread {tid}: Gid {gids}"
        assert st["Groups"].strip() == "", f"thread {tid}: {st['Groups']}"
    # Still serving and stopping cleanly under the filter (reloads under
    # it run in every other test: the sandbox is on by default).
    echo_roundtrip(connect(d.addr("plain")), b"after")
    assert d.stop() == 0


def test_sandbox_off_keeps_the_privilege_drop(tmp_path, echo):
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}},
        global_={"sandbox": "off"}))
    echo_roundtrip(connect(d.addr("plain")))
    for tid, st in thread_status(d.pid).items():
        assert st["Seccomp"] == "0", f"thread {tid}"
        assert st["NoNewPrivs"] == "1", f"thread {tid}"
        for cap in CAP_SETS:
            assert int(st[cap], 16) == 0, f"thread {tid}: {cap}"


def test_not_dumpable(tmp_path, echo):
    """TLS and ticket keys must never reach a core file."""
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}},
        global_={"user": "nobody"}))
    san = "san" in os.path.basename(os.path.dirname(d.proc.args[0]))

    def core_limit():
        with open(f"/proc/{d.pid}/limits") as f:
            return [line for line in f
                    if line.startswith("Max core file size")][0]

    if san:
        # LeakSanitizer needs a dumpable process: checked in the plain pass.
        assert "Max core file size" in core_limit()
        return
    # The ports file is written once bound, just before the privileges
    # go (DESIGN.md): the limit may be read a moment before it is set.
    wait_for(lambda: core_limit().split()[4:6] == ["0", "0"], 5.0,
             what="the core file size limit to become 0")
    # The /proc files of a process running as nobody belong to nobody,
    # unless it is not dumpable: then to root.
    assert os.stat(f"/proc/{d.pid}/environ").st_uid == 0


def test_reload_cannot_bind_a_low_port(tmp_path, echo):
    """Privileges are gone after start: a reload that adds a port below
    1024 is refused with the reason, and the old configuration stays."""
    conf = make_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}})
    d = start_daemon(tmp_path, conf)
    since = d.stderr_size()
    d.conf.write_text(conf + "\n[listen low]\nbind = 127.0.0.1:1023\nupstream = up\n")
    d.send(signal.SIGHUP)
    text = d.wait_stderr(since, lambda t: "reload refused" in t,
                         what="the refused reload")
    assert "127.0.0.1:1023" in text and "below 1024" in text, text
    echo_roundtrip(connect(d.addr("plain")), b"still")
    assert d.alive()


@pytest.mark.hooks_only
def test_forbidden_call_kills_the_daemon_by_sigsys(tmp_path, echo):
    """The test hook (SIGUSR2, sanitized build only) makes acct(2) on the
    main thread, long after start-up: the filter is in force there, the
    daemon names the call and dies of SIGSYS, not of anything milder."""
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    s = connect(d.addr("plain"))
    echo_roundtrip(s)
    d.send(signal.SIGUSR2)
    rc = d.wait_exit(10)
    assert rc == -signal.SIGSYS, f"exit {rc}:\n{d.stderr_text()}"
    err = d.stderr_text()
    assert "test hook: calling acct(2)" in err, err
    assert "sandbox: system call 163 not allowed" in err, err
    s.close()


@pytest.mark.hooks_only
def test_sandbox_off_lets_the_forbidden_call_through(tmp_path, echo):
    """The control: with `sandbox = off` the same call fails with an
    ordinary error (no CAP_SYS_PACCT) and the daemon serves on."""
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}},
        global_={"sandbox": "off"}))
    d.send(signal.SIGUSR2)
    d.wait_stderr(0, lambda t: "test hook: calling acct(2)" in t)
    s = connect(d.addr("plain"))
    echo_roundtrip(s)
    s.close()
    assert d.stop() == 0


HOG = r"""
import fcntl, os, sys
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
os.setgroups([])
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[1]))
held = []
while True:
    r, w = os.pipe()
    held.append((r, w))
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    except PermissionError:
        break  # past pipe-user-pages-soft: new pipes stay small
    if len(held) > 4096:
        sys.exit("no pipe limit reached")
print(fcntl.fcntl(w, F_GETPIPE_SZ), flush=True)
sys.stdin.read()
"""


def pipe_sizes(pid):
    """Capacity of every pipe the process holds (F_GETPIPE_SZ on
    /proc/PID/fd/N, opened from outside)."""
    import fcntl
    sizes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if not os.readlink(path).startswith("pipe:"):
                continue
            f = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            sizes.append(fcntl.fcntl(f, 1032))
        finally:
            os.close(f)
    return sizes


def test_user_out_of_pipe_pages_relays_through_buffers(tmp_path):
    """The daemon's user without CAP_SYS_RESOURCE past
    fs.pipe-user-pages-soft (another process of the same user holds it
    all): new pipes come 2 pages small.  The daemon still starts, takes no
    such pipe, and relays bulk transfers whole through its buffers."""
    import hashlib
    import subprocess
    import sys

    nobody = pwd.getpwnam("nobody")
    hog = subprocess.Popen(
        [sys.executable, "-c", HOG, str(nobody.pw_uid), str(nobody.pw_gid)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        small = int(hog.stdout.readline())
        assert small < 16384, f"the hog's last pipe is {small} bytes"
        size = 4 << 20
        payload = os.urandom(size)

        def h_send(c, rec):
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            rec["rest"] = c.recv(1)

        up = Server(h_send, name="bulk")
        tmp_path.chmod(0o755)
        d = start_daemon(tmp_path, make_config(
            {"up": [up.spec]}, {"plain": {"upstream": "up"}},
            global_={"user": "nobody"}))
        s = connect(d.addr("plain"))
        s.settimeout(20)
        got = bytearray()
        while len(got) < size // 2:
            got += s.recv(65536)
        # Mid-transfer, the upstream ahead of us: what pipes are held?
        time.sleep(0.3)
        sizes = pipe_sizes(d.pid)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        assert hashlib.sha256(got).digest() == \
            hashlib.sha256(payload).digest(), f"{len(got)} of {size} bytes"
        assert [z for z in sizes if z < 16384] == [], \
            f"the daemon holds pipes smaller than its buffer: {sizes}"
        s.close()
        assert d.stop() == 0
    finally:
        hog.stdin.close()
        hog.wait(10)
