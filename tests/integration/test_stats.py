"""Stats listener: Prometheus metrics after known traffic, /stats.json,
health checks and /readyz, hostile HTTP clients, privacy."""

import math
import os
import re
import resource
import socket
import threading
import time

import pytest

import conftest
from conftest import (
    Server, connect, echo_roundtrip, expect_rejected, free_port,
    read_until_closed, start_daemon, start_thread, try_echo, wait_for)
from stats_helpers import (
    SLOW, MiB, Metrics, PacedEcho, PortServer, get, get_json, h_sink_then_reply,
    http, lifeline_version, parse_response, promtool_check, read_all,
    request_bytes, scrape, sink_then_reply_client, stats_config, wait_metric)
from tls_helpers import client_ctx, tls_connect, tls_echo_roundtrip

RESULTS = ("relayed", "refused_maxconn", "refused_source",
           "upstream_failed", "timeout", "tls_failed", "proxy_rejected",
           "error")


@pytest.fixture(autouse=True)
def _no_crashed_daemon():
    """Fail a test whose daemon died of a signal."""
    yield
    dead = [(d.conf.name, d.proc.returncode) for d in conftest._DAEMONS
            if d.proc is not None and d.proc.poll() is not None
            and d.proc.returncode < 0]
    assert not dead, f"daemon killed by a signal: {dead}"


def conns(m, listener, result):
    return m.get("lifeline_connections_total", listener=listener, result=result) or 0


def nbytes(m, listener, direction):
    return m.get("lifeline_bytes_total", listener=listener, direction=direction) or 0


def wait_conns(st, listener, result, want, timeout=5.0 * SLOW):
    return wait_metric(st, "lifeline_connections_total", want, timeout,
                       listener=listener, result=result)


# --------------------------------------------------------------------------
# counters after known traffic


def test_bytes_and_relayed_connections_exact(tmp_path):
    srv = Server(h_sink_then_reply, name="sink-reply")
    d = start_daemon(tmp_path, stats_config(
        {"up": [srv.spec]},
        {"plain": {"upstream": "up"}, "other": {"upstream": "up"}}))
    st = d.addr("stats")
    assert d.ports["stats"] == [st] and st[0] == "127.0.0.1"

    m0 = scrape(st)
    version = lifeline_version()
    assert m0.need("lifeline_build_info", version=version) == 1
    assert m0.need("lifeline_workers") == 2
    assert m0.need("lifeline_uptime_seconds") >= 0
    for name in ("lifeline_accept_pauses_total", "lifeline_connect_retries_total"):
        assert m0.need(name) == 0, name
    for r in RESULTS:
        assert conns(m0, "plain", r) == 0, r
    assert nbytes(m0, "plain", "in") == 0 and nbytes(m0, "plain", "out") == 0

    # exact payloads each way, including 0 bytes back and odd sizes
    transfers = [(8, 0), (1000, 123457), (300001, 2000003), (65536, 1)]
    for up, down in transfers:
        assert sink_then_reply_client(d.addr("plain"), up, down) == down

    # three idle connections on another listener show as active there only
    held = [connect(d.addr("other")) for _ in range(3)]
    wait_metric(st, "lifeline_connections_active", 3, listener="other")
    m = wait_conns(st, "plain", "relayed", len(transfers))
    assert m.need("lifeline_connections_active", listener="plain") == 0
    assert nbytes(m, "plain", "in") == sum(u for u, _ in transfers), \
        f"bytes in: {nbytes(m, 'plain', 'in')}, sent {sum(u for u, _ in transfers)}"
    assert nbytes(m, "plain", "out") == sum(dn for _, dn in transfers), \
        f"bytes out: {nbytes(m, 'plain', 'out')}, received {sum(dn for _, dn in transfers)}"
    for r in RESULTS:
        if r != "relayed":
            assert conns(m, "plain", r) == 0, f"plain {r}: {conns(m, 'plain', r)}"
    for s in held:
        s.close()
    wait_metric(st, "lifeline_connections_active", 0, listener="other")
    m = wait_for(lambda: (lambda m: m if sum(conns(m, "other", r) for r in RESULTS) >= 3
                          else None)(scrape(st)), 5 * SLOW, interval=0.1,
                 what="3 ended connections on 'other'")
    assert sum(conns(m, "other", r) for r in RESULTS) == 3
    assert nbytes(m, "other", "in") == 0 and nbytes(m, "other", "out") == 0

    # nothing counted twice: a later scrape has the same numbers
    time.sleep(0.3)
    m2 = scrape(st)
    for r in RESULTS:
        assert conns(m2, "plain", r) == conns(m, "plain", r), r
    assert nbytes(m2, "plain", "in") == nbytes(m, "plain", "in")
    assert nbytes(m2, "plain", "out") == nbytes(m, "plain", "out")
    assert m2.need("lifeline_uptime_seconds") >= m0.need("lifeline_uptime_seconds")

    # upstream: every relayed connection was a successful connect
    lab = {"upstream": "up", "server": srv.spec}
    assert m2.need("lifeline_upstream_server_up", **lab) == 1
    assert m2.need("lifeline_upstream_connect_failures_total", **lab) == 0
    count = m2.need("lifeline_upstream_connect_seconds_count", **lab)
    assert count >= len(transfers) + 3, f"{count} connects counted"
    buckets = sorted(((float(l["le"]), v) for l, v in
                      m2.select("lifeline_upstream_connect_seconds_bucket", **lab)))
    assert buckets and buckets[-1][0] == math.inf, buckets
    assert buckets[-1][1] == count
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), \
        f"histogram buckets not cumulative: {buckets}"
    s = m2.need("lifeline_upstream_connect_seconds_sum", **lab)
    assert 0 <= s < count * 1.0, f"connect seconds sum {s} for {count} loopback connects"


def test_refused_failed_rejected_counted(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    d = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec], "dead": {"server": [dead], "check-interval": "1s"}},
        {"capped": {"upstream": "up", "maxconn": "1"},
         "nowhere": {"upstream": "dead"},
         "lb": {"upstream": "up", "accept-proxy": "on"}},
        timeouts={"handshake": "2s"}))
    st = d.addr("stats")

    held = connect(d.addr("capped"))
    echo_roundtrip(held, b"x" * 100)
    for _ in range(3):
        expect_rejected(connect(d.addr("capped")))
    wait_conns(st, "capped", "refused_maxconn", 3)
    held.close()
    m = wait_conns(st, "capped", "relayed", 1)
    assert nbytes(m, "capped", "in") == 100 and nbytes(m, "capped", "out") == 100, \
        "refused connections' bytes must not be counted"

    for _ in range(2):
        s = connect(d.addr("nowhere"))
        s.sendall(b"hi")
        how, n, _ = read_until_closed(s, 5 * SLOW)
        assert n == 0
    m = wait_conns(st, "nowhere", "upstream_failed", 2)
    assert conns(m, "nowhere", "relayed") == 0
    assert nbytes(m, "nowhere", "in") == 0 and nbytes(m, "nowhere", "out") == 0, \
        "bytes that never reached an upstream counted as relayed"
    lab = {"upstream": "dead", "server": dead}
    assert m.get("lifeline_upstream_connect_failures_total", **lab) is not None
    assert m.get("lifeline_upstream_connect_seconds_count", **lab) in (0, None)
    wait_metric(st, "lifeline_upstream_server_up", 0, 3 * SLOW, **lab)

    # accept-proxy listener: garbage instead of a PROXY header, then a good one
    s = connect(d.addr("lb"))
    s.sendall(b"HELLO WORLD\r\n\r\n")
    read_until_closed(s, 5 * SLOW)
    wait_conns(st, "lb", "proxy_rejected", 1)
    s = connect(d.addr("lb"))
    s.sendall(b"PROXY TCP4 198.51.100.7 203.0.113.9 40000 443\r\n")
    echo_roundtrip(s, b"y" * 10)
    s.close()
    m = wait_conns(st, "lb", "relayed", 1)
    assert nbytes(m, "lb", "in") == 10 and nbytes(m, "lb", "out") == 10, \
        "the PROXY header is not payload"
    assert "198.51.100.7" not in m.text and "40000" not in m.text


def test_timeout_counted(tmp_path, echo):
    d = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}},
        timeouts={"client": "1s", "server": "1s"}))
    st = d.addr("stats")
    s = connect(d.addr("plain"))
    echo_roundtrip(s, b"z" * 5)
    how, n, elapsed = read_until_closed(s, 5 * SLOW)
    m = wait_conns(st, "plain", "timeout", 1)
    assert conns(m, "plain", "relayed") == 0
    assert nbytes(m, "plain", "in") == 5 and nbytes(m, "plain", "out") == 5


def test_tls_handshake_counters(tmp_path, echo):
    d = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec]}, {"tls": {"upstream": "up", "tls": "on"}},
        timeouts={"handshake": "2s"}))
    st = d.addr("stats")
    addr = d.addr("tls")
    ctx = client_ctx()
    s = tls_connect(addr, ctx)
    tls_echo_roundtrip(s, b"a" * 64)  # the TLS 1.3 ticket comes with data
    sess = s.session
    assert not s.session_reused
    s.close()
    for _ in range(2):
        s = tls_connect(addr, ctx, session=sess)
        tls_echo_roundtrip(s, b"b" * 64)
        assert s.session_reused
        sess = s.session
        s.close()
    s = connect(addr)  # not TLS at all
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    read_until_closed(s, 5 * SLOW)

    m = wait_conns(st, "tls", "relayed", 3)
    m = wait_conns(st, "tls", "tls_failed", 1)
    hs = {r: m.get("lifeline_tls_handshakes_total", listener="tls", result=r)
          for r in ("full", "resumed", "failed")}
    assert hs == {"full": 1, "resumed": 2, "failed": 1}, hs
    assert nbytes(m, "tls", "in") == 192 and nbytes(m, "tls", "out") == 192, \
        "TLS listener: bytes must count relayed payload, not TLS records"
    j = get_json(st)
    lj = next(l for l in j["listeners"] if l["name"] == "tls")
    assert lj["tls"] is True
    assert lj["tls_resumed"] == 2
    assert lj["tls_handshakes"] in (3, 4), \
        f"stats.json tls_handshakes {lj['tls_handshakes']}, metrics {hs}"


# --------------------------------------------------------------------------
# format and agreement


FAMILIES = {
    "lifeline_build_info": "gauge",
    "lifeline_uptime_seconds": "gauge",
    "lifeline_workers": "gauge",
    "lifeline_connections_active": "gauge",
    "lifeline_connections_total": "counter",
    "lifeline_bytes_total": "counter",
    "lifeline_tls_handshakes_total": "counter",
    "lifeline_upstream_server_up": "gauge",
    "lifeline_upstream_connect_seconds": "histogram",
    "lifeline_upstream_connect_failures_total": "counter",
    "lifeline_accept_pauses_total": "counter",
    "lifeline_connect_retries_total": "counter",
    "lifeline_source_refused_total": "counter",
    "lifeline_source_table_entries": "gauge",
    "lifeline_source_table_capacity": "gauge",
    "lifeline_source_table_full_total": "counter",
    "lifeline_stats_requests_total": "counter",
}


def _family(types, name):
    """The TYPE of name's family (counter families may be declared with or
    without the _total suffix)."""
    for fam in (name, name[:-len("_total")] if name.endswith("_total") else None):
        if fam and fam in types:
            return types[fam]
    return None


def _comparable(m):
    """The numbers /stats.json must agree with, from a Metrics."""
    out = {}
    for name, labels, v in m.samples:
        # every scrape is itself a stats request, counted
        if name in ("lifeline_uptime_seconds", "lifeline_build_info",
                    "lifeline_stats_requests_total"):
            continue
        if name.startswith("lifeline_upstream_connect_seconds_") and name != \
                "lifeline_upstream_connect_seconds_count":
            continue
        out[(name, tuple(sorted(labels.items())))] = v
    return out


def test_promtool_passes_and_json_agrees(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    d = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec], "dead": [dead], "both": [dead, echo.spec]},
        {"plain": {"upstream": "up", "bind": ["127.0.0.1:0", "127.0.0.1:0"]},
         "tls": {"upstream": "up", "tls": "on"},
         "lb": {"upstream": "up", "accept-proxy": "on"},
         "nowhere": {"upstream": "dead"},
         "retry": {"upstream": "both"},
         "capped": {"upstream": "up", "maxconn": "1"}},
        timeouts={"handshake": "2s"}))
    st = d.addr("stats")
    for i in range(2):
        assert try_echo(d.addr("plain", i))
    s = tls_connect(d.addr("tls"))
    tls_echo_roundtrip(s)
    s.close()
    s = connect(d.addr("lb"))
    s.sendall(b"PROXY UNKNOWN\r\n")
    echo_roundtrip(s)
    s.close()
    s = connect(d.addr("nowhere"))
    s.sendall(b"x")
    read_until_closed(s, 5 * SLOW)
    assert try_echo(d.addr("retry"))
    held = connect(d.addr("capped"))
    echo_roundtrip(held)
    expect_rejected(connect(d.addr("capped")))
    live = connect(d.addr("plain"))  # stays open: active = 2 with `held`
    echo_roundtrip(live)
    wait_conns(st, "nowhere", "upstream_failed", 1)
    wait_conns(st, "capped", "refused_maxconn", 1)
    wait_conns(st, "tls", "relayed", 1)

    r = get(st, "/metrics")
    text = r.text
    promtool_check(text)
    m = Metrics(text)
    for fam, typ in FAMILIES.items():
        got = _family(m.types, fam)
        assert got == typ, f"# TYPE of {fam}: {got!r}, want {typ}"
    names = m.names()
    for fam, typ in FAMILIES.items():
        want = [fam + s for s in ("_bucket", "_sum", "_count")] if typ == "histogram" else [fam]
        for w in want:
            assert w in names, f"{w} missing from /metrics"
    assert all(n.startswith("lifeline_") for n in names), \
        sorted(n for n in names if not n.startswith("lifeline_"))
    # every listener and every configured server has its series
    for name in ("plain", "tls", "lb", "nowhere", "retry", "capped"):
        assert m.get("lifeline_connections_active", listener=name) is not None, name
        for direction in ("in", "out"):
            assert m.get("lifeline_bytes_total", listener=name,
                         direction=direction) is not None, name
    for res in ("full", "resumed", "failed"):
        assert m.get("lifeline_tls_handshakes_total", listener="tls", result=res) is not None
    for up, srv in (("up", echo.spec), ("dead", dead), ("both", dead), ("both", echo.spec)):
        assert m.get("lifeline_upstream_server_up", upstream=up, server=srv) is not None, \
            (up, srv)
    wait_for(lambda: scrape(st).total("lifeline_connections_active") == 2, 5 * SLOW,
             interval=0.1, what="2 active connections in all")

    # /stats.json: the same numbers, read while nothing changes
    def snapshot():
        a = scrape(st)
        j = get_json(st)
        b = scrape(st)
        return (a, j) if _comparable(a) == _comparable(b) else None
    m, j = wait_for(snapshot, 10 * SLOW, interval=0.2, what="two equal scrapes")
    check_json_matches_metrics(j, m, d)
    assert j["public_host"] is None and j["share_link"] is None
    held.close()
    live.close()


def check_json_matches_metrics(j, m, d):
    for key in ("version", "uptime_seconds", "workers", "public_host", "share_link",
                "active", "bytes_in", "bytes_out", "listeners", "upstreams"):
        assert key in j, f"/stats.json lacks {key!r}: {sorted(j)}"
    assert j["version"] == m.select("lifeline_build_info")[0][0]["version"]
    assert j["workers"] == m.need("lifeline_workers")
    assert abs(j["uptime_seconds"] - m.need("lifeline_uptime_seconds")) <= 2
    assert j["active"] == m.total("lifeline_connections_active")
    assert j["bytes_in"] == m.total("lifeline_bytes_total", direction="in")
    assert j["bytes_out"] == m.total("lifeline_bytes_total", direction="out")

    listeners = {l["name"]: l for l in j["listeners"]}
    names = {l["listener"] for l, _ in m.select("lifeline_connections_active")}
    assert set(listeners) == names, (sorted(listeners), sorted(names))
    for name, l in listeners.items():
        for key in ("tls", "accept_proxy", "addresses", "active", "connections",
                    "bytes_in", "bytes_out", "tls_handshakes", "tls_resumed"):
            assert key in l, f"listener {name} lacks {key!r}"
        want_addrs = [f"{h}:{p}" for h, p in d.ports[name]]
        assert sorted(l["addresses"]) == sorted(want_addrs), (name, l["addresses"])
        assert l["active"] == m.need("lifeline_connections_active", listener=name)
        assert l["bytes_in"] == nbytes(m, name, "in"), name
        assert l["bytes_out"] == nbytes(m, name, "out"), name
        for r in RESULTS:
            assert l["connections"].get(r, 0) == conns(m, name, r), (name, r)
        assert set(l["connections"]) <= set(RESULTS), l["connections"]
        if l["tls"]:
            full = m.need("lifeline_tls_handshakes_total", listener=name, result="full")
            res = m.need("lifeline_tls_handshakes_total", listener=name, result="resumed")
            assert l["tls_resumed"] == res
            assert l["tls_handshakes"] in (full + res, full), (name, l, full, res)
    conf = {n: l for n, l in listeners.items()}
    assert conf["tls"]["tls"] is True and conf["plain"]["tls"] is False
    assert conf["lb"]["accept_proxy"] is True and conf["plain"]["accept_proxy"] is False

    ups = {u["name"]: u for u in j["upstreams"]}
    mups = {l["upstream"] for l, _ in m.select("lifeline_upstream_server_up")}
    assert set(ups) == mups, (sorted(ups), sorted(mups))
    for name, u in ups.items():
        servers = {s["server"]: s for s in u["servers"]}
        msrv = {l["server"] for l, _ in m.select("lifeline_upstream_server_up", upstream=name)}
        assert set(servers) == msrv, (name, sorted(servers), sorted(msrv))
        anyup = False
        for sname, s in servers.items():
            lab = {"upstream": name, "server": sname}
            up = m.need("lifeline_upstream_server_up", **lab)
            assert s["up"] is (up == 1), (name, s, up)
            anyup = anyup or s["up"]
            assert s["connects"] == (m.get("lifeline_upstream_connect_seconds_count", **lab)
                                     or 0), (name, s)
            assert s["connect_failures"] == (
                m.get("lifeline_upstream_connect_failures_total", **lab) or 0), (name, s)
        assert u["ready"] is anyup, (name, u)


def test_two_stats_listeners(tmp_path, echo):
    cfg = stats_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}},
                       extra="listen = 127.0.0.1:0\n")
    d = start_daemon(tmp_path, cfg)
    assert len(d.ports["stats"]) == 2, d.ports
    for addr in d.ports["stats"]:
        assert get(addr, "/healthz").text.strip() == "ok"
        scrape(addr)


# --------------------------------------------------------------------------
# health checks and readiness


def test_upstream_down_then_back(tmp_path, echo):
    flap = PortServer().start()
    d = start_daemon(tmp_path, stats_config(
        {"up": {"server": [flap.spec], "check-interval": "1s"},
         "steady": {"server": [echo.spec], "check-interval": "1s"}},
        {"plain": {"upstream": "up"}, "other": {"upstream": "steady"}}))
    st = d.addr("stats")
    lab = {"upstream": "up", "server": flap.spec}
    wait_metric(st, "lifeline_upstream_server_up", 1, 3 * SLOW, **lab)
    wait_for(lambda: http(st, "/readyz").status == 200, 3 * SLOW, interval=0.1,
             what="/readyz 200")
    assert try_echo(d.addr("plain"))

    flap.stop()
    t0 = time.monotonic()
    wait_metric(st, "lifeline_upstream_server_up", 0, 3 * SLOW, **lab)
    down_after = time.monotonic() - t0
    r = http(st, "/readyz")
    assert r.status == 503, f"/readyz {r.status} with group 'up' down"
    assert get(st, "/healthz").text.strip() == "ok"
    m = scrape(st)
    assert m.need("lifeline_upstream_server_up", upstream="steady", server=echo.spec) == 1
    j = get_json(st)
    u = next(u for u in j["upstreams"] if u["name"] == "up")
    assert u["ready"] is False and u["servers"][0]["up"] is False
    assert next(u for u in j["upstreams"] if u["name"] == "steady")["ready"] is True

    flap.start()  # same port
    t0 = time.monotonic()
    wait_metric(st, "lifeline_upstream_server_up", 1, 3 * SLOW, **lab)
    up_after = time.monotonic() - t0
    wait_for(lambda: http(st, "/readyz").status == 200, 2 * SLOW, interval=0.1,
             what="/readyz 200 again")
    assert try_echo(d.addr("plain"))
    print(f"marked down after {down_after:.2f}s, up after {up_after:.2f}s")


def test_readyz_needs_every_group(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    d = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec], "dead": {"server": [dead], "check-interval": "1s"}},
        {"plain": {"upstream": "up"}, "nowhere": {"upstream": "dead"}}))
    st = d.addr("stats")
    wait_metric(st, "lifeline_upstream_server_up", 0, 3 * SLOW, upstream="dead", server=dead)
    r = http(st, "/readyz")
    assert r.status == 503
    assert r.headers.get("connection", "").lower() == "close"
    assert get(st, "/healthz").status == 200


def test_readyz_unresolvable_server(tmp_path, echo):
    d = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec],
         "nx": {"server": ["nonexistent.invalid:5222"], "check-interval": "1s"}},
        {"plain": {"upstream": "up"}, "n": {"upstream": "nx"}}))
    st = d.addr("stats")
    wait_metric(st, "lifeline_upstream_server_up", 0, 5 * SLOW, upstream="nx",
                server="nonexistent.invalid:5222")
    assert http(st, "/readyz").status == 503
    assert scrape(st).need("lifeline_upstream_server_up", upstream="up",
                           server=echo.spec) == 1


def test_counters_survive_reload(tmp_path, echo):
    cfg1 = stats_config({"chat": [echo.spec]}, {"jabber": {"upstream": "chat"}})
    d = start_daemon(tmp_path, cfg1)
    st = d.addr("stats")
    for _ in range(3):
        assert try_echo(d.addr("jabber"))
    live = connect(d.addr("jabber"))
    echo_roundtrip(live, b"L" * 50)
    wait_conns(st, "jabber", "relayed", 3)
    cfg2 = stats_config({"chat": [echo.spec], "m": [echo.spec]},
                        {"jabber": {"upstream": "chat"}, "media": {"upstream": "m"}})
    d.reload(cfg2)
    assert d.addr("stats") == st, "the stats listener moved on reload"
    m = scrape(st)
    assert conns(m, "jabber", "relayed") == 3, "counters reset by a reload"
    assert m.need("lifeline_connections_active", listener="jabber") == 1
    assert m.need("lifeline_connections_active", listener="media") == 0
    assert m.need("lifeline_upstream_server_up", upstream="m", server=echo.spec) == 1
    echo_roundtrip(live, b"M" * 50)  # the live relay crosses the reload
    live.close()
    m = wait_conns(st, "jabber", "relayed", 4)
    assert nbytes(m, "jabber", "in") == 3 * 32 + 100
    assert nbytes(m, "jabber", "out") == 3 * 32 + 100
    # a listener and a group that go away leave /metrics
    d.reload(cfg1)
    m = scrape(st)
    assert m.get("lifeline_connections_active", listener="media") is None
    assert not m.select("lifeline_upstream_server_up", upstream="m")
    assert conns(m, "jabber", "relayed") == 4


def test_request_size_and_segmentation(tmp_path, echo):
    d = start_daemon(tmp_path, stats_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    st = d.addr("stats")
    # 3 KiB of headers: under the 4 KiB bound
    raw = request_bytes("GET", "/healthz", st, ["X-Pad: " + "b" * 3000])
    assert len(raw) < 4000
    r, how, _ = _raw_exchange(st, raw)
    assert r is not None and r[0] == 200, _status_or_close(r)
    # a request in pieces, 100 ms apart
    s = connect(st)
    raw = request_bytes("GET", "/metrics", st)
    for i in range(0, len(raw), 7):
        s.sendall(raw[i:i + 7])
        time.sleep(0.1 if i < 30 else 0)
    data, how = read_all(s, 5 * SLOW)
    s.close()
    assert parse_response(data)[0] == 200
    # a query string is not part of the path
    assert http(st, "/readyz?verbose=1").status == 200


def test_accept_pauses_counted(tmp_path, echo):
    d = conftest.Daemon(tmp_path, stats_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up", "maxconn": "1000"}}),
        nofile=64).start()
    st = d.addr("stats")
    assert scrape(st).need("lifeline_accept_pauses_total") == 0
    flood = []
    for _ in range(150):
        s = socket.socket()
        conftest._SOCKETS.append(s)
        s.setblocking(False)
        s.connect_ex(d.addr("plain"))
        flood.append(s)
    time.sleep(0.5)
    for s in flood:
        s.close()
    # the stats listener answers again once descriptors are free
    m = wait_for(lambda: (lambda m: m if m is not None
                          and m.need("lifeline_accept_pauses_total") >= 1
                          else None)(_try_scrape(st)), 10 * SLOW, interval=0.2,
                 what="lifeline_accept_pauses_total >= 1")
    assert m.need("lifeline_connections_active", listener="plain") <= 64
    wait_for(lambda: try_echo(d.addr("plain"), timeout=1.0), 10 * SLOW, interval=0.1,
             what="relay to recover")


def _try_scrape(st):
    try:
        return scrape(st)
    except (OSError, AssertionError):
        return None


# --------------------------------------------------------------------------
# hostile clients of the stats listener


def _status_or_close(r):
    return "close" if r is None else r[0]


def _raw_exchange(addr, payload, timeout=8.0 * SLOW):
    """Send payload (ignoring a reset while sending), read to EOF.
    Returns (parsed response or None, how, elapsed)."""
    t0 = time.monotonic()
    s = connect(addr)
    try:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, how = read_all(s, timeout)
    finally:
        s.close()
    assert how != "timeout", f"stats listener kept the connection open {timeout}s " \
                             f"after {payload[:60]!r}... ({len(data)} bytes back)"
    return parse_response(data) if data else None, how, time.monotonic() - t0


def test_bad_requests_never_disturb_a_relay(tmp_path, echo):
    d = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    st = d.addr("stats")
    assert get(st, "/healthz").text.strip() == "ok"
    base_fds = d.stable_fd_count()

    # 16 MiB echoed through the relay, paced over ~6 s, while we misbehave
    xfer = PacedEcho(d.addr("plain"), 16 * MiB, rate=3 * MiB)

    slow_result = {}

    def slow_client():
        # a request that dribbles in at 1 byte/s must be cut off after ~2 s
        # (the header timeout counts from the accept)
        t0 = time.monotonic()
        s = connect(st)
        req = request_bytes("GET", "/metrics", st)
        closed = None
        try:
            for i in range(len(req)):
                if time.monotonic() - t0 > 12 * SLOW:
                    break
                try:
                    s.sendall(req[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed = time.monotonic() - t0
                    break
                s.settimeout(1.0)
                try:
                    dd = s.recv(65536)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    closed = time.monotonic() - t0
                    break
                slow_result["data"] = slow_result.get("data", b"") + dd
                if not dd:
                    closed = time.monotonic() - t0
                    break
                # a response arrived: read the rest
                rest, how = read_all(s, 3)
                slow_result["data"] += rest
                closed = time.monotonic() - t0
                break
        finally:
            s.close()
        slow_result["closed"] = closed

    idle_result = {}

    def idle_client():
        t0 = time.monotonic()
        s = connect(st)
        data, how = read_all(s, 12 * SLOW)
        s.close()
        idle_result.update(data=data, how=how, elapsed=time.monotonic() - t0)

    # binary requests (NUL bytes, a TLS ClientHello as scanners send): a 400
    # or a close, at the latest when the 2 s header timeout passes
    binary = [b"\x00" * 64 + b"GET / HTTP/1.1\r\n\r\n",
              b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200)
              + b"\r\n\r\n"]
    binary_results = {}

    def binary_client(i):
        binary_results[i] = _raw_exchange(st, binary[i])

    threads = [start_thread(slow_client, name="slow"), start_thread(idle_client, name="idle")]
    threads += [start_thread(binary_client, i, name=f"binary-{i}") for i in range(len(binary))]

    # methods other than GET/HEAD
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        body = b"a=1"
        raw = request_bytes(method, "/metrics", st,
                            [f"Content-Length: {len(body)}"]) + body
        r, how, _ = _raw_exchange(st, raw)
        assert r is not None and r[0] == 405, f"{method}: {_status_or_close(r)}"
    # unknown paths
    for path in ("/nope", "/metrics/../../etc/passwd", "/stats.json.bak", "//"):
        r = http(st, path)
        assert r.status in (404, 400), f"GET {path}: {r.status}"
        assert path != "/nope" or r.status == 404
    # HEAD: the headers of a GET, no body
    r = http(st, "/metrics", method="HEAD")
    assert r.status == 200 and r.body == b"", (r, r.body[:100])
    # every response closes the connection
    r = get(st, "/metrics")
    assert r.headers.get("connection", "").lower() == "close"
    # garbage
    garbage = [b"HELLO\r\n\r\n",
               b"GET\r\n\r\n",
               b"GET /metrics FOO/1.1\r\n\r\n",
               b"\r\n\r\n"]
    for g in garbage:
        r, how, elapsed = _raw_exchange(st, g)
        assert r is None or r[0] in (400, 404, 405, 505), f"{g[:30]!r}: {r[0]}"
        assert elapsed < 5.5 * SLOW, f"{g[:30]!r} answered after {elapsed:.1f}s"
    # oversized: a complete request with 8 KiB of headers, and an endless line
    big = request_bytes("GET", "/metrics", st, ["X-Pad: " + "a" * 8192])
    r, how, elapsed = _raw_exchange(st, big)
    assert r is None or r[0] in (400, 413, 414, 431), f"8 KiB headers: {r[0]}"
    assert elapsed < 3 * SLOW, f"oversized request answered after {elapsed:.1f}s"
    r, how, elapsed = _raw_exchange(st, b"GET /" + b"a" * (1 << 20))
    assert r is None or r[0] in (400, 413, 414, 431), f"1 MiB request line: {r[0]}"
    assert elapsed < 3 * SLOW, f"endless request line cut after {elapsed:.1f}s"

    # 100 clients at once (the listener holds at most 256 at a time)
    outcomes = [None] * 100
    go = threading.Event()

    def one(i):
        go.wait(5)
        try:
            s = connect(st, timeout=15 * SLOW)
        except OSError as e:
            outcomes[i] = f"connect: {e!r}"
            return
        try:
            s.sendall(request_bytes("GET", "/healthz", st))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, how = read_all(s, 15 * SLOW)
        s.close()
        if how == "timeout":
            outcomes[i] = f"neither served nor closed ({len(data)} bytes)"
            return
        try:
            outcomes[i] = _status_or_close(parse_response(data) if data else None)
        except AssertionError as e:
            outcomes[i] = f"bad response: {e}"

    crowd = [start_thread(one, i, name=f"crowd-{i}") for i in range(100)]
    go.set()
    for t in crowd:
        conftest.join(t, 40 * SLOW)
    ok = outcomes.count(200)
    assert set(outcomes) <= {200, 503, "close"}, outcomes
    assert ok == 100, f"only {ok} of 100 concurrent clients served: {outcomes}"

    # 200 clients that connect and say nothing: all kept (with the slow and
    # idle ones, under the 256 limit: eviction has its own test) until the
    # header timeout, and the listener still serves
    hoard = [connect(st) for _ in range(200)]
    time.sleep(0.5)
    still_open = sum(not _closed_by_peer(s) for s in hoard)
    assert still_open == 200, f"{still_open} of 200 idle stats clients kept"
    assert http(st, "/healthz").status == 200, "stats listener full of idle clients"
    assert try_echo(d.addr("plain")), "relay refused while the stats listener is full"
    for s in hoard:
        s.close()

    for t in threads:
        conftest.join(t, 20 * SLOW)
    closed = slow_result.get("closed")
    assert closed is not None, "a client sending 1 byte/s was never cut off"
    assert 1.7 <= closed <= 4.0 * SLOW, \
        f"slow client cut off after {closed:.1f}s, want ~2 s: {slow_result}"
    data = slow_result.get("data", b"")
    if data:
        assert parse_response(data)[0] in (400, 408), data[:100]
    assert idle_result["how"] != "timeout", "a client sending nothing was never closed"
    assert 1.7 <= idle_result["elapsed"] <= 4.0 * SLOW, \
        f"idle stats client closed after {idle_result['elapsed']:.1f}s, want ~2 s"
    if idle_result["data"]:
        assert parse_response(idle_result["data"])[0] in (400, 408)

    for i, payload in enumerate(binary):
        r, how, elapsed = binary_results[i]
        assert r is None or r[0] == 400, f"{payload[:20]!r}...: {r[0]}"
        assert elapsed < 7 * SLOW, f"{payload[:20]!r}... closed after {elapsed:.1f}s"

    elapsed = xfer.result(30 * SLOW)
    print(f"hoard: {still_open} kept; crowd: {ok} served, {outcomes.count('close')} closed, "
          f"{outcomes.count(503)} 503; slow cut after {closed:.1f}s, idle after "
          f"{idle_result['elapsed']:.1f}s; transfer {elapsed:.1f}s")
    assert elapsed < 15 * SLOW, f"16 MiB at 3 MiB/s took {elapsed:.1f}s"
    assert try_echo(d.addr("plain"))
    assert get(st, "/healthz").text.strip() == "ok"
    m = scrape(st)
    assert m.need("lifeline_connections_total", listener="plain", result="relayed") >= 1
    assert d.alive()
    n = d.wait_fds_at_most(base_fds, 5)
    assert n <= base_fds, f"fd count {n} above baseline {base_fds} after the stats abuse"


# --------------------------------------------------------------------------
# privacy


CLIENTS = ("127.0.0.2", "127.0.0.3")
ENDPOINTS = ("/metrics", "/stats.json", "/", "/qr.svg", "/healthz", "/readyz")


def _numbers(text):
    return {int(n) for n in re.findall(r"(?<![\d.])(\d+)(?![\d.])", text)}


def test_no_client_address_in_any_endpoint(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    d = start_daemon(tmp_path, stats_config(
        {"chat": [echo.spec], "media": [echo.spec], "dead": [dead]},
        {"jabber": {"upstream": "chat"}, "media": {"upstream": "media"},
         "nowhere": {"upstream": "dead"},
         "capped": {"upstream": "chat", "maxconn": "1"}},
        public_host="relay.example.org"))
    st = d.addr("stats")

    def bodies():
        out = {}
        for p in ENDPOINTS:
            r = http(st, p)
            out[p] = r.raw.decode("utf-8", "replace")
        return out

    before = bodies()
    client_ports = []
    held = []

    def client(name, src):
        s = connect(d.addr(name), source=src)
        client_ports.append(s.getsockname()[1])
        return s

    for src in CLIENTS:
        for _ in range(2):
            s = client("jabber", src)
            echo_roundtrip(s, b"p" * 100)
            s.close()
        s = client("nowhere", src)
        s.sendall(b"x")
        read_until_closed(s, 5 * SLOW)
        s = client("media", src)  # stays open while we look
        echo_roundtrip(s)
        held.append(s)
    s = client("capped", CLIENTS[0])
    echo_roundtrip(s)
    held.append(s)
    expect_rejected(client("capped", CLIENTS[1]))
    wait_conns(st, "capped", "refused_maxconn", 1)

    after = bodies()
    configured = {d.pid, echo.port, int(dead.rsplit(":", 1)[1])}
    configured |= {p for addrs in d.ports.values() for _, p in addrs}
    for p, text in after.items():
        for ip in CLIENTS:
            assert ip not in text, f"client address {ip} in {p}:\n{text[:3000]}"
        new = _numbers(text) - _numbers(before[p]) - configured
        leaked = sorted(set(client_ports) & new)
        assert not leaked, f"client source ports {leaked} in {p}:\n{text[:3000]}"
    for s in held:
        s.close()


# --------------------------------------------------------------------------
# a full stats listener (issue #10): idle clients never lock out the probes

# Documented limits of the stats listener (README, lifeline.8).
STATS_MAX_CLIENTS = 256
STATS_HEADER_TIMEOUT = 2.0
# A probe must answer within this, connect to last byte; the sanitizer build
# is slower, so it gets a small factor.
PROBE_LIMIT = 0.1 * (3 if "san" in os.path.basename(
    os.path.dirname(conftest.LIFELINE_BIN)) else 1)


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _hoard(addr, n):
    """n connections that send nothing (kept in conftest._SOCKETS)."""
    socks = []
    for _ in range(n):
        s = connect(addr)
        conftest._SOCKETS.append(s)
        socks.append(s)
    return socks


def _closed_by_peer(s):
    """True when the daemon has closed s (EOF or reset), without waiting."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, ConnectionAbortedError):
        return True


def _timed_probe(addr, path):
    """(status, seconds from connect to the last byte of the response)."""
    t0 = time.monotonic()
    s = connect(addr, timeout=5.0 * SLOW)
    try:
        s.sendall(request_bytes("GET", path, addr))
        data, how = read_all(s, 5.0 * SLOW)
    finally:
        s.close()
    el = time.monotonic() - t0
    assert data, f"{path}: closed ({how}) without a response after {el:.3f}s"
    return parse_response(data)[0], el


# Load-sensitive: the probes must all be answered before the oldest idle
# client's header timeout (2 s); run alone, after the passes that run at once.
@pytest.mark.serial
def test_idle_flood_does_not_block_probes(tmp_path, echo):
    assert _raise_nofile() >= 1200, "the test needs ~1100 descriptors"
    d = start_daemon(tmp_path, stats_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    st = d.addr("stats")
    assert get(st, "/healthz").status == 200
    base_fds = d.stable_fd_count()

    t0 = time.monotonic()
    hoard = _hoard(st, 1000)
    opened = time.monotonic() - t0
    # the oldest idle clients made room: each one sees its connection
    # closed; counted at once, before the oldest's header timeout (the
    # probes below would eat into that margin on a loaded machine)
    while True:
        evicted = sum(_closed_by_peer(s) for s in hoard)
        checked = time.monotonic() - t0
        if evicted >= 1000 - STATS_MAX_CLIENTS or \
                checked >= STATS_HEADER_TIMEOUT:
            break
        time.sleep(0.05)
    times = {"/healthz": [], "/readyz": []}
    for _ in range(10):
        for path in times:
            status, el = _timed_probe(st, path)
            assert status == 200, f"{path}: {status} with 1000 idle clients"
            times[path].append(el)
    print(f"1000 idle opened in {opened:.2f}s; probe seconds: "
          + "; ".join(f"{p} max {max(v):.4f} median {sorted(v)[5]:.4f}"
                      for p, v in times.items())
          + f"; {evicted} evicted")
    for path, v in times.items():
        assert max(v) < PROBE_LIMIT, f"{path} took {max(v):.3f}s: {v}"
    assert checked < STATS_HEADER_TIMEOUT, \
        f"too slow to tell eviction from the header timeout ({checked:.1f}s)"
    assert evicted >= 1000 - STATS_MAX_CLIENTS, f"only {evicted} of 1000 idle clients closed"
    assert d.fd_count() <= base_fds + STATS_MAX_CLIENTS + 4
    # the survivors are closed by the header timeout, all fds come back
    wait_for(lambda: all(_closed_by_peer(s) for s in hoard), 3 * STATS_HEADER_TIMEOUT * SLOW,
             interval=0.1, what="header timeout to close every idle client")
    for s in hoard:
        s.close()
    n = d.wait_fds_at_most(base_fds, 5)
    assert n <= base_fds, f"fd count {n} above baseline {base_fds} after 1000 idle clients"
    assert get(st, "/readyz").status == 200


def test_header_timeout(tmp_path, echo):
    d = start_daemon(tmp_path, stats_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    st = d.addr("stats")
    t0 = time.monotonic()
    idle = connect(st)
    partial = connect(st)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    for s, what in ((idle, "silent"), (partial, "partial request")):
        data, how = read_all(s, 10 * SLOW)
        el = time.monotonic() - t0
        assert how != "timeout", f"{what} client never closed"
        assert STATS_HEADER_TIMEOUT - 0.3 <= el <= STATS_HEADER_TIMEOUT + 1.0 * SLOW, \
            f"{what} client closed after {el:.2f}s, want ~{STATS_HEADER_TIMEOUT}s"


def _slow_reader(st, path):
    """A client that asks for path and reads nothing yet (tiny receive buffer)."""
    s = socket.socket()
    conftest._SOCKETS.append(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.settimeout(5)
    s.connect(st)
    s.sendall(request_bytes("GET", path, st))
    return s


def test_busy_client_not_evicted(tmp_path, echo):
    assert _raise_nofile() >= 1200
    # many listeners: a /metrics far larger than the socket buffers (the
    # daemon bounds its send buffer to 64 KiB per stats client)
    listeners = {f"l{i}": {"upstream": "up"} for i in range(250)}
    d = start_daemon(tmp_path, stats_config({"up": [echo.spec]}, listeners,
                                            global_={"workers": "1"}))
    st = d.addr("stats")
    readers = {p: _slow_reader(st, p) for p in ("/", "/metrics")}
    time.sleep(0.2)
    hoard = _hoard(st, 1000)
    assert _timed_probe(st, "/healthz")[0] == 200
    for path, s in readers.items():
        data, how = read_all(s, 10 * SLOW)
        assert how == "eof", f"{path}: {how} after {len(data)} bytes"
        r = parse_response(data)  # checks Content-Length against the body
        assert r[0] == 200, (path, r[0])
        assert path == "/" or len(r[3]) > 128 << 10, f"/metrics only {len(r[3])} bytes"
        print(f"{path}: {len(data)} bytes, served whole during the flood")
    for s in hoard:
        s.close()


def test_request_line_strict(tmp_path, echo):
    d = start_daemon(tmp_path, stats_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    st = d.addr("stats")
    cases = [
        (b"GET /healthz HTTP/1.%n\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.\r\n\r\n", 400),
        (b"GET /healthz HTTP/11\r\n\r\n", 400),
        (b"GET /healthz http/1.1\r\n\r\n", 400),
        (b"GET  /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz  HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1 \r\n\r\n", 400),
        (b" GET /healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\n\n", 400),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /health\tz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"GET /healthz HTTP/3.0\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.2\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ]
    for raw, want in cases:
        r, how, elapsed = _raw_exchange(st, raw)
        assert r is not None, f"{raw!r}: closed without a response"
        assert r[0] == want, f"{raw!r}: {r[0]}, want {want}"
        assert how == "eof" and elapsed < 1.0 * SLOW, (raw, how, elapsed)
    assert get(st, "/healthz").status == 200
