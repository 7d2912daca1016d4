"""Signals: SIGHUP reload, SIGTERM/SIGINT drain, SIGUSR1 summary."""

import re
import signal
import socket
import time

import pytest

from conftest import (
    DUPLEX_HDR, BackgroundDuplex, check_duplex, connect, duplex_client,
    echo_roundtrip, listening, make_config, read_until_closed, start_daemon,
    try_echo, wait_for)

MiB = 1 << 20


def _line_of(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise ValueError(needle)


@pytest.mark.parametrize("new_bind", ["127.0.0.1:0", "[::1]:0"])
def test_sighup_keeps_live_transfers_and_adds_listener(tmp_path, duplex, echo, new_bind):
    """The new listener binds port 0 like the old one: on the same address
    (a daemon must not mistake it for the existing socket) and on another."""
    cfg1 = make_config({"up": [duplex.spec]}, {"a": {"upstream": "up"}})
    d = start_daemon(tmp_path, cfg1)
    # ~2s transfer, both directions, in flight across the reload
    bg = BackgroundDuplex(d.addr("a"), 1, 4 * MiB, 4 * MiB, rate=2 * MiB)
    duplex.wait_accepted(1)
    time.sleep(0.3)
    cfg2 = make_config(
        {"up": [duplex.spec], "e": [echo.spec]},
        {"a": {"upstream": "up"}, "b": {"bind": new_bind, "upstream": "e"}})
    ports = d.reload(cfg2)
    assert bg.thread.is_alive(), "transfer ended before the reload: test too fast"
    assert set(ports) == {"a", "b"}, ports
    assert not set(ports["a"]) & set(ports["b"]), \
        f"new listener b reported on listener a's socket: {ports}"
    assert try_echo(d.addr("b")), "listener added by SIGHUP does not relay"
    r = duplex_client(d.addr("a"), 2, 100000, 100000)
    check_duplex(r, duplex)
    check_duplex(bg.join(), duplex)
    assert d.alive()


def test_sighup_invalid_config_is_refused(tmp_path, duplex, echo):
    cfg = make_config({"up": [duplex.spec], "e": [echo.spec]},
                      {"a": {"upstream": "up"}, "b": {"upstream": "e"}})
    d = start_daemon(tmp_path, cfg)
    before = d.ports_state()
    old_ports = dict(d.ports)
    bg = BackgroundDuplex(d.addr("a"), 1, 3 * MiB, 3 * MiB, rate=2 * MiB)
    duplex.wait_accepted(1)
    bad = cfg + "\n[listen broken]\nbind = 127.0.0.1:0\nupstream = e\nfoo = bar\n"
    bad_line = _line_of(bad, "foo = bar")
    off = d.stderr_size()
    d.conf.write_text(bad)
    d.send(signal.SIGHUP)
    text = d.wait_stderr(off, lambda t: str(d.conf) in t and t.endswith("\n"),
                         timeout=5, what="a log line naming the rejected file")
    assert f"{d.conf}:{bad_line}" in text, f"reload error lacks file:line:\n{text}"
    time.sleep(0.2)
    assert d.alive()
    assert d.ports_state() == before, "ports file rewritten by a refused reload"
    assert d.ports == old_ports
    assert try_echo(d.addr("b")), "old listener stopped working after a refused reload"
    check_duplex(bg.join(), duplex)
    # and a later valid reload still works
    cfg3 = make_config({"e": [echo.spec]}, {"c": {"upstream": "e"}})
    ports = d.reload(cfg3)
    assert set(ports) == {"c"}
    assert try_echo(d.addr("c"))


def _not_served(addr, upstream_before, upstream):
    """A new connection after SIGTERM must not be relayed."""
    try:
        s = connect(addr, timeout=1.0)
    except OSError:
        return "refused"
    s.sendall(DUPLEX_HDR.pack(99, 10, 0))
    s.settimeout(1.0)
    try:
        data = s.recv(10)
    except socket.timeout:
        data = b""
    except OSError:
        data = b""
    s.close()
    assert data == b"", "connection accepted and relayed after SIGTERM"
    assert upstream.accepted == upstream_before, "upstream dialled after SIGTERM"
    return "not served"


def test_sigterm_drains_live_transfers_then_exits_0(tmp_path, duplex):
    d = start_daemon(tmp_path, make_config(
        {"up": [duplex.spec]}, {"a": {"upstream": "up"}},
        global_={"drain-timeout": "20s"}))
    addr = d.addr("a")
    bgs = [BackgroundDuplex(addr, i, 2 * MiB, 2 * MiB, rate=1 * MiB) for i in range(3)]
    duplex.wait_accepted(3)
    time.sleep(0.3)
    t0 = time.monotonic()
    d.send(signal.SIGTERM)
    # the listener closes (a fixed wait lost to a loaded machine's delay)
    wait_for(lambda: not listening(addr[1]), 5, interval=0.01,
             what="the listener closed after SIGTERM")
    _not_served(addr, 3, duplex)
    assert all(b.thread.is_alive() for b in bgs), "transfers ended before SIGTERM"
    assert d.alive(), "daemon exited with transfers in flight"
    for b in bgs:
        check_duplex(b.join(), duplex)
    done = time.monotonic()
    rc = d.wait_exit(5)
    assert rc == 0, f"exit status {rc}"
    assert done - t0 < 20
    assert duplex.accepted == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_drain_timeout_bounds_shutdown(tmp_path, echo, sig):
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"a": {"upstream": "up"}},
        global_={"drain-timeout": "1s"}))
    s = connect(d.addr("a"))
    echo_roundtrip(s)  # an idle connection that never finishes by itself
    t0 = time.monotonic()
    d.send(sig)
    rc = d.wait_exit(6)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit status {rc} after drain timeout"
    assert 0.8 <= elapsed <= 4.0, f"exited {elapsed:.2f}s after signal, drain-timeout 1s"
    read_until_closed(s, 2)


def test_sigterm_without_connections_exits_promptly(tmp_path, echo):
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"a": {"upstream": "up"}},
        global_={"drain-timeout": "20s"}))
    assert try_echo(d.addr("a"))
    t0 = time.monotonic()
    d.send(signal.SIGTERM)
    assert d.wait_exit(5) == 0
    assert time.monotonic() - t0 < 3.0


def test_sigusr1_logs_counter_summary(tmp_path, echo):
    d = start_daemon(tmp_path, make_config({"up": [echo.spec]}, {"a": {"upstream": "up"}}))
    for _ in range(3):
        assert try_echo(d.addr("a"))
    for _ in range(2):
        off = d.stderr_size()
        d.send(signal.SIGUSR1)
        text = d.wait_stderr(off, lambda t: t.endswith("\n") and re.search(r"\d", t),
                             timeout=5, what="a SIGUSR1 summary line")
        assert len(text.splitlines()) >= 1
    assert d.alive()
    assert try_echo(d.addr("a"))
