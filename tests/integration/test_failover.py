"""Upstream failover: refused, blackholed, all servers dead; passive health."""

import time

from conftest import (
    Blackhole, SLOW, check_duplex, connect, duplex_client, free_port, make_config,
    read_until_closed, start_daemon, try_echo)
from stats_helpers import PortServer, scrape, stats_config, wait_metric


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


# --------------------------------------------------------------------------
# passive health: 3 failed connects in a row mark a server down for 10 s


DOWN_S = 10.0  # UPSTREAM_DOWN_MS


def passive_daemon(tmp_path, first, echo):
    """Group [first, echo], no active checks (make_config: 1h), stats on."""
    return start_daemon(tmp_path, stats_config(
        {"up": [first, echo.spec]}, {"plain": {"upstream": "up"}},
        timeouts={"connect": "2s"}))


def test_passive_three_failures_mark_a_server_down(tmp_path, echo):
    """Clients 1-3 each try the refusing first server, then fail over; the
    third failure marks it down, so clients 4-6 go straight to the second
    one: the dead server sees exactly three attempts."""
    dead = f"127.0.0.1:{free_port()}"
    d = passive_daemon(tmp_path, dead, echo)
    st = d.addr("stats")
    lab = {"upstream": "up", "server": dead}
    since = d.stderr_size()
    for i in range(6):
        assert try_echo(d.addr("plain")), f"client {i + 1} not served"
        want = min(i + 1, 3)
        m = scrape(st)
        fails = m.need("lifeline_upstream_connect_failures_total", **lab)
        assert fails == want, \
            f"after client {i + 1}: {fails} failed connects to the dead server, want {want}"
        assert m.need("lifeline_upstream_server_up", **lab) == (1 if i < 2 else 0), \
            f"after client {i + 1}"
    assert echo.accepted == 6
    d.wait_stderr(since, lambda t: "marked down after 3 failed" in t,
                  what="the 'marked down' warning")


def test_passive_down_server_comes_back_after_10s(tmp_path, echo):
    """The first server refuses three clients and is marked down; it comes
    back to life at once, but is only preferred again once the 10 s are
    over: then the next client reaches it, not the second server."""
    first = PortServer()
    d = passive_daemon(tmp_path, first.spec, echo)
    st = d.addr("stats")
    lab = {"upstream": "up", "server": first.spec}
    for i in range(3):
        if i == 2:
            # before the failure that marks it down: the 10 s cannot start
            # earlier (after it, a descheduled test would eat into the
            # 0.5 s margin of `back` below)
            t_down = time.monotonic()
        assert try_echo(d.addr("plain"))
    assert scrape(st).need("lifeline_upstream_server_up", **lab) == 0
    first.start()
    assert echo.accepted == 3
    # Still down shortly before the end of the period: clients go to the
    # second server.
    time.sleep(DOWN_S - 1.5)
    assert try_echo(d.addr("plain"))
    assert echo.accepted == 4 and not first.conns, "down period cut short"
    wait_metric(st, "lifeline_upstream_server_up", 1, 1.5 + 1.0 * SLOW, **lab)
    back = time.monotonic() - t_down
    assert back >= DOWN_S - 0.5, f"up again after {back:.2f}s"
    assert try_echo(d.addr("plain"))
    assert echo.accepted == 4, "the preferred server is up, yet not used"
