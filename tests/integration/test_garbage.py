"""Garbage, oversized and truncated input on every listener kind (issue
14): each such connection is closed the way docs/RELIABILITY.md says
(FIN or RST, after an alert or an HTTP error or nothing), counted under
exactly one result in /metrics, never dialled upstream, while a relay
on the same listener keeps echoing byte for byte; every descriptor comes
back.

One daemon per listener kind; the inputs for that kind run one after the
other against it, each checked before the next, so that a count landing
late or twice shows up as a wrong difference in the next one.
"""

import errno
import hashlib
import os
import socket
import struct
import threading
import time

import pytest

import conftest
from conftest import (
    SLOW, Server, connect, h_echo, read_until_closed, recv_exact, rst_close,
    wait_for)
from stats_helpers import read_all, request_bytes, scrape, stats_config
from tls_helpers import client_ctx, client_hello, start_tls_daemon

PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 443\r\n"
V2 = (PP2_SIG + b"\x21\x11" + struct.pack("!H", 12)
      + bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!HH", 1000, 443))
WA_INTRO = b"WA\x06\x03\x00\x00\x04\x12abc"  # test_sniff.py
DECOY_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
HELLO = client_hello()

# Not a TLS record: an HTTP request, as a scanner sends to any port.
NOT_TLS = b"GET / HTTP/1.1\r\nHost: relay.example\r\n\r\n" + os.urandom(64)
# A handshake record longer than TLS allows (2^14 + 2048 bytes at most).
TLS_RECORD_TOO_LONG = b"\x16\x03\x01\xff\xff" + b"\x01" + os.urandom(200)
# A ClientHello claiming 16 MiB (OpenSSL takes 128 KiB at most).
_BODY = b"\x01\xff\xff\xff" + b"\x03\x03" + os.urandom(200)
TLS_HELLO_TOO_LONG = b"\x16\x03\x01" + struct.pack("!H", len(_BODY)) + _BODY
# Random bytes that begin like no protocol spoken here.
RANDOM = b"\xff" + os.urandom(300)

# Per input: what is sent, how the client ends its side ("fin", "rst", or
# None: it waits for the relay), and what it must see: "eof" (FIN, and no
# RST after it), "eof+rst" (FIN, then an RST: the relay closed with bytes
# of ours unread) or "reset" (RST), and the bytes before it (b"" none, "alert" one TLS
# alert record, "echo" everything sent, or an HTTP status).
ALERT = "alert"
ECHO = "echo"


def pp_cases(tls):
    """A PROXY listener: whatever is not a header is refused at once,
    the bytes unread, so the kernel answers with RST (RELIABILITY.md,
    How a refused PROXY header ends); a header cut by FIN is refused
    too; a client that resets is gone (result error)."""
    rej = {"result": "proxy_rejected"}
    return {
        "garbage": (RANDOM, None, "reset", b"", rej),
        "http": (NOT_TLS, None, "reset", b"", rej),
        "v1-line-over-107": (b"PROXY TCP4 " + b"1" * 120 + b"\r\n", None,
                             "reset", b"", rej),
        "v1-no-crlf-over-107": (b"PROXY UNKNOWN " + b"A" * 200, None,
                                "reset", b"", rej),
        "v2-length-over-bound": (PP2_SIG + b"\x21\x11\xff\xff"
                                 + os.urandom(300), None, "reset", b"", rej),
        "v1-truncated-fin": (V1[:20], "fin", "reset", b"", rej),
        "v2-truncated-fin": (V2[:20], "fin", "reset", b"", rej),
        "v1-truncated-rst": (V1[:20], "rst", None, b"", rej),
        "v2-truncated-rst": (V2[:20], "rst", None, b"", rej),
    } | (tls_cases(prefix=V2) if tls else {})


def tls_cases(prefix=b""):
    """A TLS listener (after a valid PROXY header when prefix): OpenSSL
    refuses; an alert when it answers one, then FIN (DESIGN.md)."""
    failed = {"result": "tls_failed"}
    name = "after-header-" if prefix else ""
    return {
        f"{name}garbage": (prefix + RANDOM, None, "eof", b"", failed),
        f"{name}http": (prefix + NOT_TLS, None, "eof", b"", failed),
        f"{name}record-too-long": (prefix + TLS_RECORD_TOO_LONG, None, "eof",
                                   ALERT, failed),
        f"{name}hello-too-long": (prefix + TLS_HELLO_TOO_LONG, None, "eof",
                                  ALERT, failed),
        f"{name}hello-truncated-fin": (prefix + HELLO[:60], "fin", "eof", b"",
                                       failed),
        f"{name}hello-truncated-rst": (prefix + HELLO[:60], "rst", None, b"",
                                       failed),
    }


def stats_cases():
    """The stats listener: an HTTP error, then FIN; a request cut by FIN
    or RST is closed without an answer."""
    get = request_bytes("GET", "/metrics", ("127.0.0.1", 1))
    bad = {"result": "bad_request"}
    inc = {"result": "incomplete"}
    return {
        "garbage": (RANDOM + b"\r\n\r\n", None, "eof", 400, bad),
        "binary-tls-hello": (HELLO, None, "eof", 400, bad),
        "text-garbage": (b"HELLO THERE\r\n\r\n", None, "eof", 400, bad),
        "line-over-limit": (b"GET /" + b"a" * 4200 + b" HTTP/1.1\r\n\r\n",
                            None, "eof+rst", 431, bad),
        "headers-over-limit": (get[:-2] + b"X-Pad: " + b"p" * 4100
                               + b"\r\n\r\n", None, "eof+rst", 431,
                               bad),
        "target-over-255": (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n",
                            None, "eof", 414, bad),
        "truncated-fin": (get[:30], "fin", "eof", b"", inc),
        "truncated-rst": (get[:30], "rst", None, b"", inc),
    }


def decoy_cases():
    """A camouflage listener: whatever is not WhatsApp's intro goes to the
    decoy (which answers 400 and closes), never to chat."""
    dec = {"class": "decoy"}
    return {
        "garbage": (RANDOM + b"\r\n\r\n", None, "eof", DECOY_REPLY, dec),
        "http": (NOT_TLS, None, "eof", DECOY_REPLY, dec),
        # an edge-routing prologue longer than the 4 KiB allowed
        "routing-over-limit": (b"ED\x00\x01\x01\x00\x00\x08" + b"\x00" * 300
                               + b"\r\n\r\n", None, "eof", DECOY_REPLY, dec),
        "intro-truncated-fin": (WA_INTRO[:5], "fin", "eof", DECOY_REPLY, dec),
        "intro-truncated-rst": (WA_INTRO[:5], "rst", None, b"",
                                {"result": "error"}),
    }


def plain_cases():
    """A plain listener has no handshake: every byte is payload, relayed
    as is; a FIN is relayed after it, and an RST cuts the connection."""
    rel = {"result": "relayed"}
    return {
        "garbage": (RANDOM, "fin", "eof", ECHO, rel),
        "oversized": (os.urandom(256 << 10), "fin", "eof", ECHO, rel),
        "truncated-tls-hello": (HELLO[:60], "fin", "eof", ECHO, rel),
        "truncated-rst": (V1[:20], "rst", None, ECHO, rel),
    }


class Steady:
    """A relayed connection echoing continuously in a thread: random
    chunks, each checked byte for byte; then half-closed, the relay's
    FIN awaited."""

    def __init__(self, open_conn):
        self.open_conn = open_conn
        self.stop = threading.Event()
        self.rounds = 0
        self.bytes = 0
        self.error = None
        self.end = None
        self.thread = conftest.start_thread(self._run, name="steady")

    def _run(self):
        try:
            s, close = self.open_conn()
            rnd = conftest.RANDOM
            while not self.stop.is_set():
                n = 1 + self.rounds * 997 % 4000
                off = self.rounds * 7919 % (len(rnd) - n)
                chunk = rnd[off:off + n]
                s.sendall(chunk)
                got = recv_exact(s, n)
                if hashlib.sha256(got).digest() != \
                        hashlib.sha256(chunk).digest():
                    raise AssertionError(f"round {self.rounds}: echo differs")
                self.rounds += 1
                self.bytes += n
                time.sleep(0.005)
            self.end = close(s)
        except Exception as e:  # noqa: BLE001 (reported by finish)
            self.error = e

    def finish(self):
        self.stop.set()
        conftest.join(self.thread, 10.0 * SLOW)
        assert self.error is None, f"the steady relay failed: {self.error!r}"
        assert self.end == ("eof", 0), f"the steady relay ended {self.end}"


def plain_close(s):
    s.shutdown(socket.SHUT_WR)
    how, n, _ = read_until_closed(s, 5.0 * SLOW)
    return how, n


def tls_steady(addr, prefix=b""):
    def open_conn():
        raw = connect(addr, timeout=5.0 * SLOW)
        if prefix:
            raw.sendall(prefix)
        s = client_ctx().wrap_socket(raw, server_hostname="a.example")
        conftest._SOCKETS.append(s)
        s.settimeout(5.0 * SLOW)

        def close(s):
            raw = s.unwrap()  # close_notify both ways
            return plain_close(raw)
        return s, close
    return open_conn


def plain_steady(addr, prefix=b"", echoed=b""):
    """echoed: what the upstream echoes of the prefix (the intro, not a
    PROXY header)."""
    def open_conn():
        s = connect(addr, timeout=5.0 * SLOW)
        if prefix:
            s.sendall(prefix)
        if echoed:
            assert recv_exact(s, len(echoed)) == echoed
        return s, plain_close
    return open_conn


def listener_counts(m, name):
    """Every counter of listener `name` that a connection ending moves."""
    out = {}
    for labels, v in m.select("lifeline_connections_total", listener=name):
        out[("result", labels["result"])] = v
    for labels, v in m.select("lifeline_camouflage_total", listener=name):
        out[("class", labels["class"])] = v
    return out


def stats_counts(m):
    return {("result", l["result"]): v
            for l, v in m.select("lifeline_stats_requests_total")
            if l["result"] != "answered"}  # our scrapes are answered


def delta(a, b):
    return {k[1] if k[0] == "result" else ("class", k[1]): b[k] - a.get(k, 0)
            for k in b if b[k] != a.get(k, 0)}


def expected_delta(want):
    return {("class", v) if k == "class" else v: 1 for k, v in want.items()}


def rst_after_fin(s, wait):
    """After the relay's FIN: did an RST follow?  The kernel sends it at
    once, from the same close(2); a client that reads the FIN first sees
    it only here (EPIPE in CLOSE_WAIT, ECONNRESET).  Looks once after
    20 ms, or polls for a second when one is expected."""
    deadline = time.monotonic() + (1.0 * SLOW if wait else 0.02)
    while True:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in (errno.ECONNRESET, errno.EPIPE):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def check_reply(kind, case, sent, data, want):
    if want == ECHO and data == b"":
        pass  # reset after the echo: nothing to read
    elif want == ECHO:
        assert data == sent, \
            f"{kind}/{case}: {len(data)} of {len(sent)} bytes echoed"
    elif want == ALERT:
        # one alert record: type 21, TLS 1.x, 2 bytes, level fatal (2)
        assert len(data) == 7 and data[:2] == b"\x15\x03" and \
            data[3:6] == b"\x00\x02\x02", f"{kind}/{case}: not one " \
            f"fatal alert: {data!r}"
    elif isinstance(want, int):
        status = data.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.1 %d " % want), \
            f"{kind}/{case}: answered {data[:80]!r}, want {want}"
    else:
        assert data == want, f"{kind}/{case}: got {data[:80]!r}"


KINDS = {
    "plain": plain_cases(),
    "tls": tls_cases(),
    "pp": pp_cases(tls=False),
    "pp-tls": pp_cases(tls=True),
    "stats": stats_cases(),
    "decoy": decoy_cases(),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input_closed_counted_nothing_else_disturbed(tmp_path, kind):
    """For each input: the client sees the close the docs promise (FIN or
    RST, after nothing, an alert, an HTTP error or the decoy's answer);
    exactly one counter of the listener moves, by one; no upstream is
    dialled (the decoy is, once per connection: it is the decoy's
    connection from the start); a relay opened before on the same
    listener echoes byte for byte throughout and ends with FIN; the
    daemon's descriptors come back to their count before."""
    up = Server(h_echo, name="up")  # the relay kinds' upstream: an echo
    web = Server(lambda c, rec: read_decoy(c, rec), name="decoy")
    listen = {"plain": {}, "tls": {"tls": "on"},
              "pp": {"accept-proxy": "on"},
              "pp-tls": {"accept-proxy": "on", "tls": "on"},
              "stats": {}, "decoy": {"decoy": "web"}}[kind]
    cfg = stats_config(
        {"up": [up.spec], "web": [web.spec]},
        {"l": dict(listen, upstream="up")},
        timeouts={"handshake": "5s"})
    d = start_tls_daemon(tmp_path, cfg)
    st = d.addr("stats")
    addr = st if kind == "stats" else d.addr("l")
    fd0 = d.stable_fd_count()

    if kind == "stats":
        steady = StatsProber(st)
    elif kind in ("tls", "pp-tls"):
        steady = Steady(tls_steady(addr, V1 if kind == "pp-tls" else b""))
    elif kind == "decoy":
        steady = Steady(plain_steady(addr, WA_INTRO, WA_INTRO))
    else:
        steady = Steady(plain_steady(addr, V2 if kind == "pp" else b""))
    # the steady connection is through before the first input
    wait_for(lambda: steady.rounds >= 3 or steady.error, 5.0 * SLOW,
             what="the steady relay's first echoes")
    ups0, webs0 = up.accepted, web.accepted

    def counts():
        m = scrape(st)
        return stats_counts(m) if kind == "stats" else listener_counts(m, "l")

    seen = {}
    for case, (data, ending, how, reply, want) in KINDS[kind].items():
        before = counts()
        t0 = time.monotonic()
        s = connect(addr, timeout=5.0 * SLOW)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if ending == "fin":
            s.shutdown(socket.SHUT_WR)
        if ending == "rst":
            if reply == ECHO:  # mid-stream: relayed, then cut
                assert recv_exact(s, len(data)) == data
            rst_close(s)
            got, end = b"", None
        else:
            got, end = read_all(s, 5.0 * SLOW)
            if end == "eof" and rst_after_fin(s, wait=how == "eof+rst"):
                end = "eof+rst"
            s.close()
        took = time.monotonic() - t0
        seen[case] = (end, len(got), round(took, 3))
        # at once, not at the 5 s handshake deadline (the decoy: at its
        # answer)
        assert took < 1.0 * SLOW, f"{kind}/{case}: closed after {took:.2f}s"
        assert end == how, f"{kind}/{case}: ended {end!r} after " \
            f"{got[:40]!r}, want {how!r}"
        check_reply(kind, case, data, got, reply)
        # the count lands after the close; a second one would show in
        # the next case's difference
        want_d = expected_delta(want)
        if kind == "decoy":
            want_d["relayed"] = 1  # the decoy's connection was relayed
            if want.get("result") == "error":
                want_d = {"error": 1}
        last = {}

        def counted():
            last["d"] = delta(before, counts())
            return last["d"] == want_d
        try:
            wait_for(counted, 3.0 * SLOW, interval=0.02,
                     what=f"{kind}/{case} counted")
        except AssertionError:
            raise AssertionError(f"{kind}/{case}: counters moved by "
                                 f"{last['d']}, want {want_d}") from None
        if kind == "plain":  # every connection is relayed
            ups0 += 1
            up.wait_accepted(ups0, timeout=2.0 * SLOW)
        assert up.accepted == ups0, \
            f"{kind}/{case}: the upstream was dialled"
        if kind == "decoy":
            # dialled at the accept, by design; once
            wait_for(lambda: web.accepted == webs0 + 1, 2.0 * SLOW,
                     what="the decoy's one connection")
            webs0 += 1
        # and the steady relay still moves
        r0 = steady.rounds
        wait_for(lambda: steady.rounds > r0 or steady.error, 2.0 * SLOW,
                 what=f"{kind}/{case}: the steady relay moving")
        assert steady.error is None, f"{kind}/{case}: {steady.error!r}"

    steady.finish()
    assert web.accepted == webs0 and (kind == "decoy" or webs0 == 0)
    n = d.wait_fds_at_most(fd0, timeout=5.0 * SLOW)
    assert n <= fd0, f"{kind}: descriptors {n}, {fd0} before"
    assert d.alive()
    print(f"{kind}: {seen}; steady relay {steady.rounds} rounds, "
          f"{steady.bytes} bytes")


def read_decoy(c, rec):
    """The decoy: like a web server, reads a request (to a blank line,
    FIN, or 1 s of silence), answers 400 and closes."""
    data = b""
    c.settimeout(1.0 * SLOW)
    try:
        while b"\r\n\r\n" not in data:
            x = c.recv(65536)
            if not x:
                break
            data += x
    except OSError:
        pass
    rec["data"] = data
    if data:
        c.sendall(DECOY_REPLY)
    # everything read before the close: a FIN, never an RST
    c.shutdown(socket.SHUT_WR)
    c.settimeout(1.0 * SLOW)
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass


class StatsProber:
    """The stats listener's normal clients meanwhile: GET /healthz, one
    after the other, each answered "ok" and closed with FIN."""

    def __init__(self, addr):
        self.addr = addr
        self.stop = threading.Event()
        self.rounds = 0
        self.bytes = 0
        self.error = None
        self.thread = conftest.start_thread(self._run, name="prober")

    def _run(self):
        try:
            while not self.stop.is_set():
                s = connect(self.addr, timeout=5.0 * SLOW)
                s.sendall(request_bytes("GET", "/healthz", self.addr))
                data, how = read_all(s, 5.0 * SLOW)
                s.close()
                if how != "eof" or not data.endswith(b"\r\n\r\nok\n") or \
                        not data.startswith(b"HTTP/1.1 200 "):
                    raise AssertionError(f"/healthz: {how} {data[:80]!r}")
                self.rounds += 1
                self.bytes += len(data)
                time.sleep(0.005)
        except Exception as e:  # noqa: BLE001
            self.error = e

    def finish(self):
        self.stop.set()
        conftest.join(self.thread, 10.0 * SLOW)
        assert self.error is None, f"a /healthz probe failed: {self.error!r}"


def test_stats_requests_timed_out_and_evicted_are_counted(tmp_path):
    """The other results of lifeline_stats_requests_total: 257 silent
    clients on the stats listener (256 at most): the first is evicted at
    once (FIN), the others closed at the 2 s request deadline (FIN), each
    counted once; scrapes are counted as answered."""
    d = start_tls_daemon(tmp_path, stats_config(
        {"up": ["127.0.0.1:9"]}, {"l": {"upstream": "up"}}))
    st = d.addr("stats")
    fd0 = d.stable_fd_count()
    socks = [connect(st, timeout=5.0 * SLOW) for _ in range(257)]
    how, n, took = read_until_closed(socks[0], 1.0 * SLOW)
    assert (how, n) == ("eof", 0) and took < 0.5 * SLOW, (how, n, took)
    t0 = time.monotonic()
    for s in socks[1:]:
        how, n, _ = read_until_closed(s, 4.0 * SLOW)
        assert (how, n) == ("eof", 0), (how, n)
    took = time.monotonic() - t0
    assert took < 2.5 * SLOW, f"the last closed after {took:.2f}s"
    m = scrape(st)
    got = {l["result"]: v for l, v in
           m.select("lifeline_stats_requests_total")}
    assert got == {"answered": 1, "bad_request": 0, "incomplete": 0,
                   "timeout": 256, "evicted": 1}, got
    n = d.wait_fds_at_most(fd0, timeout=5.0 * SLOW)
    assert n <= fd0, f"descriptors {n}, {fd0} before"
