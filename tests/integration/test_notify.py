"""The service manager's readiness protocol (sd_notify), as systemd's
Type=notify sees it: a real AF_UNIX datagram socket set as $NOTIFY_SOCKET,
each message checked with its sender and its timing.

READY=1 only once every listener accepts (and the ports file is written);
RELOADING=1 with MONOTONIC_USEC at a SIGHUP, then READY=1 whether the new
configuration was applied or refused; STOPPING=1 at once on SIGTERM;
STATUS= with the live connection count, refreshed while it changes.  The
sandbox is on (the default), so every send after start-up also proves the
seccomp allow-list lets it through."""

import os
import signal
import socket
import struct
import time

import pytest

from conftest import (
    SLOW, START_TIMEOUT, Daemon, Server, h_echo, make_config, try_echo,
)

# src/notify.h NOTIFY_STATUS_INTERVAL_MS
STATUS_INTERVAL = 5.0


class Manager:
    """The service manager's end: a datagram socket that passes the
    sender's credentials, as systemd's does (NotifyAccess=main checks
    the sending PID)."""

    def __init__(self, tmp_path, abstract=False):
        self.path = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            name = f"lifeline-notify-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self.path = str(tmp_path / "notify.sock")
            self.sock.bind(self.path)
            self.env = self.path
        self.queue = []

    def recv(self, timeout):
        """One message: (fields dict, sender pid, arrival monotonic)."""
        self.sock.settimeout(timeout)
        data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        t = time.monotonic()
        pid = None
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", blob[:12])[0]
        text = data.decode()
        fields = dict(line.split("=", 1) for line in text.split("\n"))
        return fields, pid, t

    def wait(self, pred, timeout, what):
        """Messages until one satisfies pred; returns it and those before."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout:.1f}s; "
                                     f"got {[m[0] for m in seen]}")
            try:
                msg = self.recv(left)
            except socket.timeout:
                continue
            if pred(msg[0]):
                return msg, seen
            seen.append(msg)

    def close(self):
        self.sock.close()
        if self.path is not None:
            os.unlink(self.path)


@pytest.fixture
def manager(tmp_path):
    m = Manager(tmp_path)
    yield m
    m.close()


def relay_config(echo):
    return make_config({"e": [echo.spec]},
                       {"in": {"bind": "127.0.0.1:0", "upstream": "e"}})


def live(n):
    return lambda f: f.get("STATUS", "").startswith(
        f"{n} live connection{'' if n == 1 else 's'},")


def held_connections(addr, n):
    out = []
    for _ in range(n):
        s = socket.create_connection(addr, timeout=5)
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        out.append(s)
    return out


def test_ready_once_listening_then_live_status(tmp_path, manager):
    echo = Server(h_echo, name="echo")
    d = Daemon(tmp_path, relay_config(echo), env={"NOTIFY_SOCKET": manager.env})
    t0 = time.monotonic()
    d.start(wait=False)
    (f, pid, t), before = manager.wait(lambda f: "READY" in f,
                                       START_TIMEOUT * SLOW, "READY=1")
    assert before == [], f"messages before READY: {before}"
    assert f["READY"] == "1"
    assert pid == d.pid, f"sent by pid {pid}, not the main pid {d.pid}"
    assert f["STATUS"] == "serving on 1 listener", f
    assert t - t0 < START_TIMEOUT * SLOW
    # READY means it: the ports file is there and the listener relays.
    assert d.ports_file.exists(), "READY=1 before the ports file"
    d.wait_ports(timeout=0.5)
    assert try_echo(d.addr("in")), "READY=1 but the listener does not relay"

    conns = held_connections(d.addr("in"), 3)
    (f, pid, t1), _ = manager.wait(live(3), STATUS_INTERVAL * SLOW + 2,
                                   "STATUS with 3 live connections")
    assert pid == d.pid
    for s in conns:
        s.close()
    manager.wait(live(0), STATUS_INTERVAL * SLOW + 2,
                 "STATUS with 0 live connections")
    # Unchanged figures are not sent again.
    with pytest.raises(socket.timeout):
        manager.recv(STATUS_INTERVAL + 1)
    assert d.stop() == 0


def test_reload_applied_and_refused(tmp_path, manager):
    echo = Server(h_echo, name="echo")
    d = Daemon(tmp_path, relay_config(echo), env={"NOTIFY_SOCKET": manager.env})
    d.start()
    manager.wait(lambda f: "READY" in f, START_TIMEOUT * SLOW, "READY=1")

    conns = held_connections(d.addr("in"), 2)
    before = time.monotonic_ns() // 1000
    d.send(signal.SIGHUP)
    (f, pid, t), _ = manager.wait(lambda f: "RELOADING" in f, 2 * SLOW,
                                  "RELOADING=1")
    after = time.monotonic_ns() // 1000
    assert f["RELOADING"] == "1" and pid == d.pid
    # CLOCK_MONOTONIC in microseconds, taken when the reload began.
    assert before <= int(f["MONOTONIC_USEC"]) <= after, (before, f, after)
    (f, _, _), between = manager.wait(lambda f: "READY" in f, 5 * SLOW,
                                      "READY=1 after the reload")
    assert [m[0] for m in between if "RELOADING" in m[0]] == []
    assert f["STATUS"].startswith("2 live connections,"), f
    assert try_echo(d.addr("in")), "not relaying after the reload"

    # A configuration that does not load: the reload still ends with
    # READY=1 (the manager would otherwise wait), saying it was refused.
    d.conf.write_text("[global]\nworkers = many\n")
    d.send(signal.SIGHUP)
    (f, _, _), _ = manager.wait(lambda f: "RELOADING" in f, 2 * SLOW,
                                "RELOADING=1")
    (f, _, _), _ = manager.wait(lambda f: "READY" in f, 5 * SLOW,
                                "READY=1 after the refused reload")
    assert f["STATUS"].startswith("reload refused"), f
    assert try_echo(d.addr("in")), "not relaying after the refused reload"
    for s in conns:
        assert s.sendall(b"x") is None and s.recv(1) == b"x"
        s.close()
    assert d.stop() == 0


def test_stopping_at_once_on_sigterm(tmp_path, manager):
    echo = Server(h_echo, name="echo")
    d = Daemon(tmp_path, relay_config(echo), env={"NOTIFY_SOCKET": manager.env})
    d.start()
    manager.wait(lambda f: "READY" in f, START_TIMEOUT * SLOW, "READY=1")
    conns = held_connections(d.addr("in"), 2)
    t0 = time.monotonic()
    d.send(signal.SIGTERM)
    (f, pid, t), _ = manager.wait(lambda f: "STOPPING" in f, 1 * SLOW,
                                  "STOPPING=1")
    assert f["STOPPING"] == "1" and pid == d.pid
    assert f["STATUS"] == "draining 2 live connections", f
    assert t - t0 < 1 * SLOW
    # Draining: the live connections are still relayed.
    for s in conns:
        s.sendall(b"y")
        assert s.recv(1) == b"y"
        s.close()
    assert d.wait_exit(10) == 0


def test_abstract_socket(tmp_path):
    m = Manager(tmp_path, abstract=True)
    try:
        echo = Server(h_echo, name="echo")
        d = Daemon(tmp_path, relay_config(echo), env={"NOTIFY_SOCKET": m.env})
        d.start(wait=False)
        (f, pid, _), _ = m.wait(lambda f: "READY" in f,
                                START_TIMEOUT * SLOW, "READY=1")
        assert pid == d.pid
        assert d.stop() == 0
    finally:
        m.close()


@pytest.mark.parametrize("value,why", [
    ("relative/notify.sock", "is not a socket path"),
    ("@", "is not a socket path"),
    ("/nonexistent/notify.sock", "cannot reach the service manager"),
])
def test_unusable_notify_socket_warns_and_serves(tmp_path, value, why):
    echo = Server(h_echo, name="echo")
    d = Daemon(tmp_path, relay_config(echo), env={"NOTIFY_SOCKET": value})
    d.start()
    assert try_echo(d.addr("in"))
    err = d.stderr_text()
    assert "NOTIFY_SOCKET" in err and why in err, err
    assert d.stop() == 0


def test_journal_stream_lines_carry_priority(tmp_path):
    """$JOURNAL_STREAM naming our stderr (systemd's StandardError=journal):
    each line starts with its syslog priority, no timestamp (the journal
    keeps both); naming another file changes nothing."""
    echo = Server(h_echo, name="echo")
    d = Daemon(tmp_path, relay_config(echo), name="journal")
    d.stderr_path.write_bytes(b"")
    st = os.stat(d.stderr_path)
    d.env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    d.start()
    d.conf.write_text("[global]\nworkers = many\n")
    d.send(signal.SIGHUP)
    d.wait_stderr(0, lambda t: "reload refused" in t)
    assert d.stop() == 0
    lines = d.stderr_text().splitlines()
    assert "<6>info: lifeline " in "\n".join(lines), lines
    refused = [x for x in lines if "reload refused" in x]
    assert refused and refused[0].startswith("<3>error: reload refused"), lines
    assert all(x[:3] in ("<3>", "<4>", "<6>") for x in lines), lines

    other = tmp_path / "other"
    other.write_bytes(b"")
    st = os.stat(other)
    d2 = Daemon(tmp_path, relay_config(echo), name="nojournal",
                env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    d2.start()
    assert d2.stop() == 0
    lines = d2.stderr_text().splitlines()
    assert lines and all(x[:2] == "20" and "Z " in x for x in lines), lines
