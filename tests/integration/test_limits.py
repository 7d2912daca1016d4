"""Connection limits, idle timeouts, file descriptor exhaustion."""

import os
import socket
import time

import pytest

from conftest import (
    SLOW, _SOCKETS, Daemon, Server, connect, echo_roundtrip, expect_rejected,
    h_sink, make_config, read_until_closed, recv_exact, start_daemon,
    try_echo, wait_for)


def _established(addr, n):
    socks = []
    for _ in range(n):
        s = connect(addr)
        echo_roundtrip(s, os.urandom(16))
        socks.append(s)
    return socks


def _accepted_again(addr, timeout=3.0):
    """New connections are served again shortly after a slot frees up."""
    wait_for(lambda: try_echo(addr, timeout=1.0), timeout, interval=0.05,
             what="a new connection to be served again")


def test_global_maxconn(tmp_path, echo):
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]},
        {"a": {"upstream": "up", "maxconn": "100"},
         "b": {"upstream": "up", "maxconn": "100"}},
        global_={"maxconn": "3"}))
    a = _established(d.addr("a"), 2)
    b = _established(d.addr("b"), 1)
    assert echo.accepted == 3
    # the cap is global: both listeners are full now
    for name in ("b", "a"):
        expect_rejected(connect(d.addr(name)))
    time.sleep(0.1)
    assert echo.accepted == 3, "a connection over maxconn reached the upstream"
    for s in a + b:  # existing connections are unaffected
        echo_roundtrip(s, b"still here")
    a[0].close()
    _accepted_again(d.addr("b"))
    assert d.alive()


def test_listener_maxconn(tmp_path, echo):
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]},
        {"a": {"upstream": "up", "maxconn": "2"},
         "b": {"upstream": "up", "maxconn": "100"}},
        global_={"maxconn": "1000"}))
    a = _established(d.addr("a"), 2)
    expect_rejected(connect(d.addr("a")))
    time.sleep(0.1)
    assert echo.accepted == 2, "a connection over the listener maxconn reached the upstream"
    b = _established(d.addr("b"), 3)  # other listeners are not limited by a's cap
    for s in a + b:
        echo_roundtrip(s, b"still here")
    a[1].close()
    _accepted_again(d.addr("a"))
    assert d.alive()


def test_idle_timeout_closes_both_sides(tmp_path, echo):
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}},
        timeouts={"client": "1s", "server": "1s"}))
    s = connect(d.addr("plain"))
    # Before the echo, the daemon's last activity: the timeout cannot
    # count from earlier (after it, a descheduled test would eat into the
    # 10% margin).
    t0 = time.monotonic()
    echo_roundtrip(s)
    how, n, _ = read_until_closed(s, 6)
    elapsed = time.monotonic() - t0
    # Nothing held, nothing half-closed: a clean FIN (DESIGN.md's table).
    assert (how, n) == ("eof", 0)
    assert 0.9 <= elapsed <= 1.25 * SLOW + 0.25, \
        f"idle connection closed after {elapsed:.2f}s (timeout 1s)"
    rec = echo.wait_done(timeout=3)[0]
    assert rec["done"].is_set(), "upstream side of the idle connection left open"
    assert rec["error"] is None, f"upstream saw {rec['error']!r}, not a FIN"


@pytest.mark.parametrize("direction", ["client-to-upstream", "upstream-to-client"])
def test_one_way_traffic_is_not_idle(tmp_path, direction):
    """Traffic in either direction keeps a connection alive past both idle
    timeouts (1s here), even when the other side stays silent."""
    period, count = 0.25, 11  # ~2.7s of trickle, over twice the timeouts
    if direction == "client-to-upstream":
        srv = Server(h_sink, name="sink")
    else:
        def trickle(c, rec):
            for i in range(count):
                c.sendall(b"t")
                time.sleep(period)
            rec["sent"] = count
            c.shutdown(socket.SHUT_WR)
            while c.recv(1024):
                pass
        srv = Server(trickle, name="trickle")
    d = start_daemon(tmp_path, make_config(
        {"up": [srv.spec]}, {"plain": {"upstream": "up"}},
        timeouts={"client": "1s", "server": "1s"}))
    s = connect(d.addr("plain"))
    if direction == "client-to-upstream":
        for i in range(count):
            s.sendall(b"t")
            time.sleep(period)
        s.settimeout(0.1)
        try:
            data = s.recv(10)
            pytest.fail(f"connection closed/changed during upload: {data!r}")
        except socket.timeout:
            pass
        except OSError as e:
            pytest.fail(f"connection reset during upload: {e!r}")
        s.settimeout(5)
        s.shutdown(socket.SHUT_WR)
        read_until_closed(s, 5)
        rec = srv.wait_done(timeout=5)[0]
        assert rec.get("bytes") == count, f"upstream got {rec.get('bytes')} of {count} bytes ({rec['error']!r})"
    else:
        got = 0
        s.settimeout(5)
        while True:
            data = s.recv(16)
            if not data:
                break
            got += len(data)
        assert got == count, f"client got {got} of {count} bytes before close"


def test_fd_exhaustion(tmp_path, echo):
    d = Daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up", "maxconn": "1000"}}),
        nofile=64).start()
    addr = d.addr("plain")

    def concurrent_echo(n):
        socks = [connect(addr, timeout=3) for _ in range(n)]
        for s in socks:
            s.settimeout(3)
            echo_roundtrip(s, os.urandom(4000))
        for s in socks:
            s.close()

    concurrent_echo(4)  # what we require after the flood works before it
    base = d.stable_fd_count()
    flood = []
    for _ in range(300):
        s = socket.socket()
        _SOCKETS.append(s)
        s.setblocking(False)
        s.connect_ex(addr)
        flood.append(s)
    peak = 0
    for _ in range(10):
        peak = max(peak, d.fd_count())
        time.sleep(0.05)
    for s in flood:
        try:
            s.send(b"x")
        except OSError:
            pass
    # while out of descriptors the daemon must not spin on accept()
    c0, t0 = d.cpu_seconds(), time.monotonic()
    time.sleep(1.5)
    cpu, wall = d.cpu_seconds() - c0, time.monotonic() - t0
    assert d.alive(), f"daemon died when out of fds:\n{d.stderr_text()[-2000:]}"
    assert cpu < 0.5 * wall, \
        f"daemon used {cpu:.2f}s CPU in {wall:.2f}s while out of fds (peak {peak} fds)"
    for s in flood:
        s.close()
    wait_for(lambda: try_echo(addr, timeout=1.0), 15, interval=0.1,
             what="service to recover after the flood")
    for _ in range(10):
        assert try_echo(addr, timeout=3.0)
    concurrent_echo(4)
    s = connect(addr)
    payload = os.urandom(256 << 10)
    s.sendall(payload)
    assert recv_exact(s, len(payload)) == payload
    s.close()
    assert d.alive()
    # no descriptor leaked on the out-of-fds error paths
    n = d.wait_fds_at_most(base, timeout=5)
    assert n <= base, f"fd count {n} after the flood, {base} before (peak {peak})"
