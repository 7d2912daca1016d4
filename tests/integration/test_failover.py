"""Upstream failover: refused, blackholed, all servers dead."""

import time

from conftest import (
    Blackhole, check_duplex, connect, duplex_client, free_port, make_config,
    read_until_closed, start_daemon, try_echo)


def test_refused_first_server_fails_over(tmp_path, duplex):
    dead = f"127.0.0.1:{free_port()}"
    d = start_daemon(tmp_path, make_config(
        {"up": [dead, duplex.spec]}, {"plain": {"upstream": "up"}},
        timeouts={"connect": "3s"}))
    for i in range(5):
        t0 = time.monotonic()
        r = duplex_client(d.addr("plain"), i, 100000, 100000)
        # refused is immediate: failing over must not wait for the connect
        # timeout (3s)
        assert time.monotonic() - t0 < 2.0
        check_duplex(r, duplex)
    assert duplex.accepted == 5


def test_blackholed_first_server_fails_over_after_connect_timeout(tmp_path, duplex):
    hole = Blackhole()
    d = start_daemon(tmp_path, make_config(
        {"up": [hole.spec, duplex.spec]}, {"plain": {"upstream": "up"}},
        timeouts={"connect": "1s"}))
    t0 = time.monotonic()
    r = duplex_client(d.addr("plain"), 1, 50000, 50000)
    elapsed = time.monotonic() - t0
    check_duplex(r, duplex)
    # the first attempt hung until the 1s connect timeout, then the second
    # server was used
    assert elapsed >= 0.8, f"answered after {elapsed:.2f}s: black hole not tried first?"
    assert elapsed < 4.0, f"failover took {elapsed:.2f}s with connect = 1s"
    hole.verify()  # still a black hole: the test measured what it claims
    assert duplex.accepted == 1


def test_all_servers_refused_client_closed_promptly(tmp_path, echo):
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    d = start_daemon(tmp_path, make_config(
        {"dead": dead, "ok": [echo.spec]},
        {"plain": {"upstream": "dead"}, "good": {"upstream": "ok"}},
        timeouts={"connect": "2s"}))
    assert try_echo(d.addr("good"))
    base = d.stable_fd_count()
    for _ in range(10):
        s = connect(d.addr("plain"))
        s.sendall(b"hello")
        how, n, elapsed = read_until_closed(s, 5)
        assert n == 0
        assert elapsed < 1.5, \
            f"client closed after {elapsed:.2f}s; servers refuse, connect timeout is 2s"
        s.close()
    assert d.alive()
    assert try_echo(d.addr("good"))
    n = d.wait_fds_at_most(base, 5)
    assert n <= base, f"fd count {n} above baseline {base} after failed connects"


def test_all_servers_blackholed_client_closed_after_timeouts(tmp_path, echo):
    holes = [Blackhole(), Blackhole()]
    d = start_daemon(tmp_path, make_config(
        {"dead": [h.spec for h in holes], "ok": [echo.spec]},
        {"plain": {"upstream": "dead"}, "good": {"upstream": "ok"}},
        timeouts={"connect": "500ms"}))
    s = connect(d.addr("plain"))
    s.sendall(b"hello")
    how, n, elapsed = read_until_closed(s, 6)
    assert n == 0
    assert elapsed >= 0.4, f"closed after {elapsed:.2f}s, before any connect timeout"
    assert elapsed < 3.5, f"closed after {elapsed:.2f}s; 2 servers x 500ms"
    assert d.alive()
    assert try_echo(d.addr("good"))
    for h in holes:
        h.verify()
