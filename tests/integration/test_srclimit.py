"""Per-source limits (issue 14): max-conn-per-source and
new-conn-rate-per-source, in [global] and per listener, off by default.

A refused connection is closed at once with FIN (like one over maxconn)
and never reaches the upstream; counts are exact across workers (the
kernel spreads one source's connections over both workers here); on an
accept-proxy listener the source is the PROXY header's, grouped by /64
for IPv6; the table of sources has a bound, and when it is full new
sources are admitted and counted; /metrics says how many were refused,
never by whom."""

import signal
import socket
import time

import pytest

from conftest import (
    Server, connect, echo_roundtrip, h_echo, start_daemon, wait_for,
)
from stats_helpers import scrape, stats_config, wait_metric
from test_proxy_protocol import v1_header, v2_header

SRC_A = "127.0.0.2"
SRC_B = "127.0.0.3"


@pytest.fixture
def echo():
    return Server(h_echo, name="echo")


def refused_with_fin(sock, timeout=3.0):
    """The relay closed sock at once, with FIN: EOF, no reset, no byte.
    (Nothing is sent first: a close with unread bytes is a kernel RST.)"""
    sock.settimeout(timeout)
    try:
        data = sock.recv(100)
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "still open"
    return "fin" if data == b"" else f"data {data!r}"


def _end_seen(sock):
    """How sock ended, if it has: "fin", "reset", "data ..."; else None."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        data = sock.recv(100)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return "reset"
    finally:
        sock.settimeout(timeout)
    return "fin" if data == b"" else f"data {data!r}"


def sort_out(socks, up, before, timeout=10.0):
    """For each of socks, connected after `up` (the upstream) had accepted
    `before` connections: "fin" (or "reset", "data ...") when the relay
    ended it, "relayed" when it stays open.  Waits until each one is
    accounted for, by its end seen here or by a connection the relay made
    to `up` for it, rather than taking a connection still open after some
    time for an admitted one (a refusal late on a loaded machine)."""
    ends = [None] * len(socks)

    def settled():
        for i, s in enumerate(socks):
            if ends[i] is None:
                ends[i] = _end_seen(s)
        done = sum(e is not None for e in ends)
        return done + up.accepted - before >= len(socks)

    wait_for(settled, timeout, interval=0.01,
             what="every connection refused or relayed")
    return [e or "relayed" for e in ends]


def outcome(sock, up, before):
    """sort_out for one connection; a relayed one must echo."""
    end = sort_out([sock], up, before)[0]
    if end == "relayed":
        echo_roundtrip(sock)
    return end


def daemon(tmp_path, echo, global_=None, listeners=None):
    listeners = listeners or {"plain": {"upstream": "e"}}
    return start_daemon(tmp_path, stats_config(
        {"e": [echo.spec]}, listeners, global_=global_))


def test_off_by_default(tmp_path, echo):
    d = daemon(tmp_path, echo)
    held = [connect(d.addr("plain"), source=SRC_A) for _ in range(30)]
    for s in held:
        echo_roundtrip(s)
    m = scrape(d.addr("stats"))
    assert m.get("lifeline_source_table_capacity") == 0
    assert m.total("lifeline_source_refused_total") == 0
    for s in held:
        s.close()


def test_max_conn_per_source(tmp_path, echo):
    d = daemon(tmp_path, echo, global_={"max-conn-per-source": "3"})
    st = d.addr("stats")
    held = [connect(d.addr("plain"), source=SRC_A) for _ in range(3)]
    for s in held:
        echo_roundtrip(s)
    accepted = echo.accepted
    extra = connect(d.addr("plain"), source=SRC_A)
    assert refused_with_fin(extra) == "fin"
    extra.close()
    # Another source is not affected.
    other = connect(d.addr("plain"), source=SRC_B)
    echo_roundtrip(other)
    assert echo.accepted == accepted + 1, "the refused one reached upstream"
    m = wait_metric(st, "lifeline_source_refused_total", 1,
                    listener="plain", limit="connections")
    assert m.get("lifeline_connections_total", listener="plain",
                 result="refused_source") == 1
    assert m.get("lifeline_source_refused_total", listener="plain",
                 limit="rate") == 0
    assert m.get("lifeline_source_table_entries") == 2
    # One leaves: one more may come.
    held.pop().close()
    wait_metric(st, "lifeline_connections_active", 3, listener="plain")
    again = connect(d.addr("plain"), source=SRC_A)
    echo_roundtrip(again)
    for s in held + [other, again]:
        s.close()
    assert SRC_A not in scrape(st).text and SRC_B not in scrape(st).text


def test_rate_is_exact_across_workers(tmp_path, echo):
    """3/m: of 12 attempts from one source, spread over both workers by
    the kernel, exactly the first 3 are relayed."""
    d = daemon(tmp_path, echo, global_={
        "workers": "2", "new-conn-rate-per-source": "3/m"})
    outcomes = []
    for _ in range(12):
        before = echo.accepted
        s = connect(d.addr("plain"), source=SRC_A)
        outcomes.append(outcome(s, echo, before))
        s.close()
    assert outcomes == ["relayed"] * 3 + ["fin"] * 9, outcomes
    m = wait_metric(d.addr("stats"), "lifeline_source_refused_total", 9,
                    listener="plain", limit="rate")
    assert m.get("lifeline_source_refused_total", listener="plain",
                 limit="connections") == 0
    # A second source has its own bucket.
    s = connect(d.addr("plain"), source=SRC_B)
    echo_roundtrip(s)
    s.close()


def test_rate_refills(tmp_path, echo):
    """5/s: the bucket of 5 is spent; 200 ms later one token is back."""
    d = daemon(tmp_path, echo, global_={"new-conn-rate-per-source": "5/s"})

    # A refused attempt is seen at once (FIN); a relayed one is held
    # open until the end, so that the attempts themselves are quick.
    held = []
    before = echo.accepted
    t0 = time.monotonic()
    for _ in range(6):
        s = connect(d.addr("plain"), source=SRC_A)
        s.settimeout(2)
        held.append(s)
    took = time.monotonic() - t0
    first = sort_out(held, echo, before)
    # Which 5 are admitted depends on which worker accepts first.
    if took < 0.2:  # no token could have come back meanwhile
        assert sorted(first) == ["fin"] + ["relayed"] * 5, first
    else:
        assert first.count("relayed") >= 5, first
    for s, e in zip(held, first):
        if e == "relayed":
            echo_roundtrip(s)
    time.sleep(0.25)
    before = echo.accepted
    s = connect(d.addr("plain"), source=SRC_A)
    assert outcome(s, echo, before) == "relayed", \
        "no token back after 250 ms at 5/s"
    for s in held + [s]:
        s.close()


def test_listener_overrides(tmp_path, echo):
    """Global limit 1; 'open' turns it off, 'three' has its own 3, counted
    apart from the global scope."""
    d = daemon(tmp_path, echo, global_={"max-conn-per-source": "1"},
               listeners={
                   "plain": {"upstream": "e"},
                   "open": {"upstream": "e", "max-conn-per-source": "off"},
                   "three": {"upstream": "e", "max-conn-per-source": "3"}})
    held = [connect(d.addr("plain"), source=SRC_A)]
    echo_roundtrip(held[0])
    s = connect(d.addr("plain"), source=SRC_A)
    assert refused_with_fin(s) == "fin"
    s.close()
    for _ in range(10):
        held.append(connect(d.addr("open"), source=SRC_A))
        echo_roundtrip(held[-1])
    for _ in range(3):
        held.append(connect(d.addr("three"), source=SRC_A))
        echo_roundtrip(held[-1])
    s = connect(d.addr("three"), source=SRC_A)
    assert refused_with_fin(s) == "fin"
    s.close()
    m = wait_metric(d.addr("stats"), "lifeline_source_refused_total", 1,
                    listener="three", limit="connections")
    assert m.get("lifeline_source_refused_total", listener="open",
                 limit="connections") == 0
    for s in held:
        s.close()


def proxied(d, name, src, version="v2"):
    """A connection to an accept-proxy listener whose header names src."""
    dst = ("2001:db8::1", 443) if ":" in src and not src.startswith("::ffff") \
        else ("192.0.2.1", 443)
    if src.startswith("::ffff:"):
        dst = ("::ffff:192.0.2.1", 443)
    s = connect(d.addr(name))
    hdr = v1_header((src, 40000), dst) if version == "v1" else \
        v2_header((src, 40000), dst)
    s.sendall(hdr)
    return s


def test_accept_proxy_source_is_the_header_one(tmp_path, echo):
    """All connections come from 127.0.0.1 (the 'balancer'); the limit
    applies to the sources the headers name, IPv6 grouped by /64,
    v4-mapped the same as IPv4."""
    d = daemon(tmp_path, echo, global_={"max-conn-per-source": "1"},
               listeners={"lb": {"upstream": "e", "accept-proxy": "on"}})
    held = []

    def ok(src, version="v2"):
        s = proxied(d, "lb", src, version)
        echo_roundtrip(s)
        held.append(s)

    def refused(src, version="v2"):
        s = proxied(d, "lb", src, version)
        assert refused_with_fin(s) == "fin", src
        s.close()

    ok("2001:db8:1:2::10")
    refused("2001:db8:1:2::20")          # same /64
    refused("2001:db8:1:2:ffff::1", "v1")
    ok("2001:db8:1:3::1")                # the next /64
    ok("198.51.100.7")
    refused("::ffff:198.51.100.7")       # v4-mapped is the IPv4 source
    refused("198.51.100.7", "v1")
    ok("198.51.100.8")
    # A header without addresses (the balancer's own check) is not limited.
    for _ in range(3):
        s = connect(d.addr("lb"))
        s.sendall(v2_header(command=0))
        echo_roundtrip(s)
        held.append(s)
    m = wait_metric(d.addr("stats"), "lifeline_source_refused_total", 4,
                    listener="lb", limit="connections")
    text = m.text
    for a in ("2001:db8", "198.51.100", "::ffff"):
        assert a not in text, f"{a} in /metrics"
    for s in held:
        s.close()


def test_full_table_admits_and_counts(tmp_path, echo):
    """source-table-size = 64 (the least) and 300 live sources: every
    connection is relayed (fail open), the overflow is counted, the table
    never grows past its bound; once they leave, limits apply again."""
    d = daemon(tmp_path, echo, global_={
        "max-conn-per-source": "1", "source-table-size": "64"},
               listeners={"lb": {"upstream": "e", "accept-proxy": "on"}})
    st = d.addr("stats")
    held = []
    for i in range(300):
        s = proxied(d, "lb", f"10.1.{i // 200}.{i % 200 + 1}")
        echo_roundtrip(s)
        held.append(s)
    m = scrape(st)
    assert m.get("lifeline_source_table_capacity") == 64
    assert 32 <= m.get("lifeline_source_table_entries") <= 64
    full = m.get("lifeline_source_table_full_total")
    assert full == 300 - m.get("lifeline_source_table_entries"), m.text
    assert m.total("lifeline_source_refused_total") == 0
    for s in held:
        s.close()
    wait_metric(st, "lifeline_connections_active", 0, listener="lb")
    # The table holds no live source now: limits apply to newcomers.
    a = proxied(d, "lb", "10.9.9.9")
    echo_roundtrip(a)
    b = proxied(d, "lb", "10.9.9.9")
    assert refused_with_fin(b) == "fin"
    a.close()
    b.close()


def test_reload_keeps_the_counts(tmp_path, echo):
    """A reload with the same table settings shares the table: a source
    at its limit stays at it; a reload that turns limits off frees it."""
    cfg = lambda g: stats_config(  # noqa: E731
        {"e": [echo.spec]}, {"plain": {"upstream": "e"}}, global_=g)
    d = start_daemon(tmp_path, cfg({"max-conn-per-source": "1"}))
    a = connect(d.addr("plain"), source=SRC_A)
    echo_roundtrip(a)
    d.reload(cfg({"max-conn-per-source": "1", "new-conn-rate-per-source":
                  "100/s"}))
    b = connect(d.addr("plain"), source=SRC_A)
    assert refused_with_fin(b) == "fin", "a reload forgot a live source"
    b.close()
    d.reload(cfg({}))
    c = connect(d.addr("plain"), source=SRC_A)
    echo_roundtrip(c)
    for s in (a, c):
        echo_roundtrip(s)
        s.close()
    assert d.stop() == 0


def test_refused_flood_leaves_others_served(tmp_path, echo):
    """One source opening 500 connections against a limit of 5: 495 are
    closed at once, the daemon's descriptors come back, and another
    source is served throughout."""
    d = daemon(tmp_path, echo, global_={"max-conn-per-source": "5"})
    base = d.stable_fd_count()
    other = connect(d.addr("plain"), source=SRC_B)
    echo_roundtrip(other)  # its upstream connection is counted now
    before = echo.accepted
    socks = [connect(d.addr("plain"), source=SRC_A) for _ in range(500)]
    echo_roundtrip(other)
    # Which 5 are admitted depends on which worker accepts first.
    ends = sort_out(socks, echo, before)
    assert (ends.count("fin"), ends.count("relayed")) == (495, 5), \
        {e: ends.count(e) for e in set(ends)}
    for s, e in zip(socks, ends):
        if e == "relayed":
            echo_roundtrip(s)
    echo_roundtrip(other)
    for s in socks + [other]:
        s.close()
    d.wait_fds_at_most(base)
    # Every admitted connection was given back: the source has its 5 again.
    before = echo.accepted
    again = [connect(d.addr("plain"), source=SRC_A) for _ in range(6)]
    ends = sort_out(again, echo, before)
    assert sorted(ends) == ["fin"] + ["relayed"] * 5, ends
