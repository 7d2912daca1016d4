"""Least privilege (DESIGN.md, "Privileges"): after start-up every thread
of the daemon has no capability in any set, no_new_privs, the seccomp
filter (unless `sandbox = off`) and, when started as root with `user`,
that user's identity.  A forbidden call kills the running daemon by
SIGSYS (through the sanitized build's test hook; the filter's verdict on
each kind of call is tested in tests/unit/test_sandbox.c)."""

import os
import pwd
import signal

import pytest

from conftest import (
    Server, connect, echo_roundtrip, h_echo, make_config, start_daemon,
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
    with open(f"/proc/{d.pid}/limits") as f:
        core = [line for line in f if line.startswith("Max core file size")][0]
    if san:
        # LeakSanitizer needs a dumpable process: checked in the plain pass.
        assert "Max core file size" in core
        return
    assert core.split()[4:6] == ["0", "0"], core
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
