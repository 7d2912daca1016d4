"""Camouflage (issue 15): on a listener with `decoy = GROUP`, WhatsApp's
first bytes go to the listener's upstream, byte-exact, and everything else
goes to the decoy (the operator's web server), so that a prober gets
exactly the decoy's answer, timing and close.

- A recording chat upstream: synthetic WhatsApp intros (with and without
  the ED prologue; whole, in 1-byte segments, slowly) arrive byte-exact
  over plain and TLS listeners; nothing else ever reaches it, and no byte
  of a WhatsApp intro reaches the decoy.
- Probe consistency against Debian's nginx (decoy.py): every probe of the
  set gets, through lifeline, the bytes nginx gives it when connected
  directly (Date header aside), the same close (FIN or RST) and the same
  close time, within max(10 %, 0.5 s).  The same comparison with a
  listener that merely relays to nginx (no decoy) is the harness's own
  check: it passes without the feature.
- Counters: lifeline_camouflage_total{listener, class} on /metrics.

The intro (REFERENCE.md section 4): optional prologue `45 44 00 01`, a
24-bit big-endian length L <= 4096 and L bytes; then `57 41` ("WA") and a
version byte pair (06 03, 05 02), then a 3-byte big-endian frame length,
not zero.
"""

import random
import re
import socket
import ssl
import time

import pytest

import conftest
from conftest import (
    SLOW, Server, connect, join, make_config, recv_exact, start_daemon,
    start_thread, wait_for)
from decoy import Nginx
from stats_helpers import scrape, stats_config, wait_metric
from tls_helpers import client_ctx, client_hello, tls_connect

# nginx's client_header_timeout and keepalive_timeout (decoy.Nginx): how
# long it keeps an empty or an answered connection.
NGINX_IDLE = 3

# lifeline's own waits, all longer than nginx's, so that the decoy is the
# one that decides when an idle connection ends.
RELAY_TIMEOUTS = {"connect": "1s", "client": "30s", "server": "30s",
                  "client-fin": "5s", "server-fin": "5s", "handshake": "10s"}

# How long a prober waits for the connection to end (nginx's longest wait
# plus margin).
PROBE_DEADLINE = NGINX_IDLE + 6.0 * SLOW


@pytest.fixture(autouse=True)
def _no_crashed_daemon():
    """Fail a test whose daemon died of a signal."""
    yield
    dead = [(d.conf.name, d.proc.returncode) for d in conftest._DAEMONS
            if d.proc is not None and d.proc.poll() is not None
            and d.proc.returncode < 0]
    assert not dead, f"daemon killed by a signal: {dead}"


# ---------------------------------------------------------------------------
# WhatsApp's first bytes


def intro(prologue_len=None, version=b"\x06\x03", frame_len=40, seed=0):
    """A synthetic WhatsApp intro: [ED 00 01, L, L bytes of routing info]
    WA, version, 3-byte frame length, and the frame (a HandshakeMessage
    begins 0x12)."""
    rng = random.Random(seed)
    out = b""
    if prologue_len is not None:
        routing = b"\x08" + bytes(rng.randrange(256)
                                  for _ in range(prologue_len - 1))
        out += b"ED\x00\x01" + prologue_len.to_bytes(3, "big") + routing
    frame = b"\x12" + bytes(rng.randrange(256) for _ in range(frame_len - 1))
    return out + b"WA" + version + frame_len.to_bytes(3, "big") + frame


def rand_bytes(n, seed):
    """n random bytes that do not begin like an intro (E or W): the first
    byte alone tells them from WhatsApp's."""
    rng = random.Random(seed)
    b = bytes(rng.randrange(256) for _ in range(n))
    if b[:1] in (b"E", b"W"):
        b = b"\x00" + b[1:]
    return b


# The intros the tests send: (name, bytes).
INTROS = [
    ("wa-0603", intro(seed=1)),
    ("wa-0502", intro(version=b"\x05\x02", frame_len=70, seed=2)),
    ("ed-wa", intro(prologue_len=20, seed=3)),
    ("ed-4096-wa", intro(prologue_len=4096, frame_len=200, seed=4)),
]


# ---------------------------------------------------------------------------
# upstreams: a recording chat server and a recording stand-in decoy


def h_chat(c, rec):
    """The chat upstream: records every byte it receives (rec["data"],
    growing as it comes) and echoes it, until EOF."""
    rec["data"] = bytearray()
    while True:
        try:
            d = c.recv(65536)
        except ConnectionResetError:
            rec["end"] = "reset"
            return
        if not d:
            rec["end"] = "eof"
            c.shutdown(socket.SHUT_WR)
            return
        rec["data"] += d
        c.sendall(d)


DECOY_IDLE = 3.0
DECOY_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nServer: decoy\r\n"
                b"Content-Length: 5\r\nConnection: close\r\n\r\ndecoy")


def h_decoy(c, rec):
    """A stand-in web server: records every byte it receives; answers
    DECOY_ANSWER and FIN to the first bytes, then reads to the end; closes
    (FIN) a connection that stays silent for DECOY_IDLE seconds."""
    rec["data"] = bytearray()
    c.settimeout(DECOY_IDLE)
    try:
        d = c.recv(65536)
    except socket.timeout:
        rec["end"] = "idle"
        return
    except ConnectionResetError:
        rec["end"] = "reset"
        return
    if not d:
        rec["end"] = "eof"
        return
    rec["data"] += d
    c.sendall(DECOY_ANSWER)
    c.shutdown(socket.SHUT_WR)
    c.settimeout(10.0)
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            rec["data"] += d
        rec["end"] = "answered"
    except (ConnectionResetError, socket.timeout):
        rec["end"] = "answered-reset"


def recorded(server):
    """Bytes each finished connection of `server` received."""
    return [bytes(r.get("data", b"")) for r in server.wait_done()]


# ---------------------------------------------------------------------------
# config


def camo_config(upstreams, listeners, timeouts=None, stats=False):
    t = dict(RELAY_TIMEOUTS)
    t.update(timeouts or {})
    if stats:
        return stats_config(upstreams, listeners, timeouts=t)
    return make_config(upstreams, listeners, timeouts=t)


def listener(kind, **kw):
    spec = {"tls": "on"} if kind == "tls" else {}
    spec.update(kw)
    return spec


# ---------------------------------------------------------------------------
# clients


def open_client(kind, addr):
    """A connection ready for application bytes: plain (TCP_NODELAY, so
    that small writes are segments of their own) or TLS (handshake done;
    the relay's certificate is not checked, as WhatsApp does not)."""
    if kind == "tls":
        s = tls_connect(addr)
    else:
        s = connect(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def send_pattern(s, data, pattern):
    """Send `data` whole, in 1-byte writes (segments, or TLS records), or
    in ten pieces spread over about one second."""
    if pattern == "whole":
        s.sendall(data)
    elif pattern == "bytes":
        for i in range(len(data)):
            s.sendall(data[i:i + 1])
            time.sleep(0.002)
    elif pattern == "slow":
        step = max(1, -(-len(data) // 10))
        for i in range(0, len(data), step):
            s.sendall(data[i:i + step])
            time.sleep(0.1)
    else:
        raise ValueError(pattern)


def chat_session(kind, addr, data, pattern, out, tail=b""):
    """Send an intro as `pattern` says, then `tail` whole; read the chat
    server's echo of all of it, close.  Stores what happened in `out`."""
    try:
        s = open_client(kind, addr)
        s.settimeout(10.0)
        send_pattern(s, data, pattern)
        s.sendall(tail)
        out["echo"] = recv_exact(s, len(data) + len(tail))
        s.close()
    except Exception as e:  # reported by the test with the probe's name
        out["error"] = repr(e)


def read_answer(s, deadline):
    """Read until the peer ends the connection.

    Returns (bytes, how, elapsed from now) with how: "fin" (EOF; on TLS,
    close_notify then EOF), "fin-no-close-notify" (TLS: a bare FIN),
    "reset", "tls-error:..." or "open" (still open at the deadline)."""
    t0 = time.monotonic()
    buf = bytearray()
    end = t0 + deadline
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return bytes(buf), "open", time.monotonic() - t0
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return bytes(buf), "reset", time.monotonic() - t0
        except ssl.SSLEOFError:
            return bytes(buf), "fin-no-close-notify", time.monotonic() - t0
        except ssl.SSLError as e:
            return bytes(buf), f"tls-error:{e.reason}", time.monotonic() - t0
        if not d:
            return bytes(buf), "fin", time.monotonic() - t0
        buf += d


def probe(kind, addr, data, deadline=PROBE_DEADLINE):
    """What a prober sees: connect (and, on TLS, handshake), send `data`,
    then read without sending more until the server ends the connection.
    Returns (bytes, how, seconds from connection ready to the end)."""
    if kind == "tls":
        raw = connect(addr)
        s = client_ctx().wrap_socket(raw, suppress_ragged_eofs=False,
                                     do_handshake_on_connect=False)
        conftest._SOCKETS.append(s)
        s.settimeout(10.0)
        s.do_handshake()
    else:
        s = connect(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.monotonic()
    if data:
        s.sendall(data)
    got, how, _ = read_answer(s, deadline)
    elapsed = time.monotonic() - t0
    s.close()
    return got, how, elapsed


def run_concurrently(jobs):
    """jobs: {key: callable}; runs them all at once, returns {key: result
    or ("error", repr)}."""
    results = {}

    def run(key, fn):
        try:
            results[key] = fn()
        except Exception as e:
            results[key] = ("error", repr(e), 0.0)

    threads = [start_thread(run, k, fn, name=f"probe-{k}")
               for k, fn in jobs.items()]
    for t in threads:
        join(t, PROBE_DEADLINE + 15)
    return results


# ---------------------------------------------------------------------------
# 1. the recording chat upstream


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_whatsapp_intros_reach_chat_byte_exact(tmp_path, kind):
    """Every intro, sent whole, in 1-byte segments and slowly over about
    1 s, reaches the chat upstream byte-exact (with 2 KiB of frames after
    it), and its echo comes back whole.  The decoy receives none of these
    bytes."""
    chat = Server(h_chat, name="chat")
    decoy = Server(h_decoy, name="decoy")
    d = start_daemon(tmp_path, camo_config(
        {"chat": [chat.spec], "web": [decoy.spec]},
        {"camo": listener(kind, upstream="chat", decoy="web")}))
    addr = d.addr("camo")
    sessions = {}
    for i, (name, data) in enumerate(INTROS):
        for j, pattern in enumerate(("whole", "bytes", "slow")):
            if pattern == "bytes" and len(data) > 1000:
                continue  # 4 KiB a byte at a time: slow, and nothing new
            tail = rand_bytes(2048, seed=10 * i + j)
            sessions[(name, pattern)] = {"intro": data, "tail": tail,
                                         "data": data + tail}
    for key, sess in sessions.items():
        sess["thread"] = start_thread(chat_session, kind, addr, sess["intro"],
                                      key[1], sess, sess["tail"],
                                      name=f"chat-{key}")
    for sess in sessions.values():
        join(sess["thread"], 30)
    bad = [f"{k}: {s['error']}" for k, s in sessions.items() if "error" in s]
    bad += [f"{k}: echo differs" for k, s in sessions.items()
            if "error" not in s and s["echo"] != s["data"]]
    assert bad == [], bad
    wait_for(lambda: chat.accepted >= len(sessions), 5,
             what="a chat connection per intro")
    got = recorded(chat)
    want = [s["data"] for s in sessions.values()]
    assert len(got) == len(want), \
        f"chat upstream: {len(got)} connections for {len(want)} intros"
    missing = [k for k, s in sessions.items() if s["data"] not in got]
    assert missing == [], f"not received byte-exact by chat: {missing}"
    leaked = [bytes(r["data"][:16]) for r in decoy.wait_done() if r.get("data")]
    assert leaked == [], f"WhatsApp bytes reached the decoy: {leaked}"


# Probes of other_probes() that end only at a timeout.
HELD = ("wa-alone", "empty")


def other_probes(kind):
    """First bytes that are not a WhatsApp intro: (name, bytes)."""
    probes = [
        ("http-get", b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"),
        ("random-1", rand_bytes(1, 11)),
        ("random-1000", rand_bytes(1000, 12)),
        ("random-5000", rand_bytes(5000, 13)),
        ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        # a frame length of zero is not WhatsApp's
        ("wa-zero-frame", b"WA\x06\x03\x00\x00\x00" + rand_bytes(30, 14)),
        # a prologue longer than 4096 bytes is not WhatsApp's
        ("ed-4097", b"ED\x00\x01" + (4097).to_bytes(3, "big")
         + b"\x08" + rand_bytes(200, 15)),
        # a whole prologue, then HTTP instead of WA
        ("ed-then-http", b"ED\x00\x01\x00\x00\x03\x08\x01\x02"
         b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"),
        # a plausible beginning, then silence: handed to the decoy at the
        # handshake timeout with what was read
        ("wa-alone", b"WA"),
        ("empty", b""),
    ]
    if kind == "plain":
        probes.append(("tls-client-hello", client_hello()))
    return probes


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_other_first_bytes_reach_only_the_decoy(tmp_path, kind):
    """Nothing but WhatsApp ever reaches the chat upstream: every other
    probe goes to the decoy, which receives exactly the bytes sent (those
    read before classifying included), and the prober gets exactly the
    decoy's answer and close.  `handshake` (1 s) is shorter than the
    decoy's idle close (3 s): a connection that stays silent after a
    plausible beginning (`WA`) is handed to the decoy with it then."""
    chat = Server(h_chat, name="chat")
    decoy = Server(h_decoy, name="decoy")
    d = start_daemon(tmp_path, camo_config(
        {"chat": [chat.spec], "web": [decoy.spec]},
        {"camo": listener(kind, upstream="chat", decoy="web")},
        timeouts={"handshake": "1s"}))
    addr = d.addr("camo")
    probes = other_probes(kind)
    results = run_concurrently(
        {name: (lambda data=data: probe(kind, addr, data))
         for name, data in probes})
    bad = []
    for name, data in probes:
        got, how, elapsed = results[name]
        want = DECOY_ANSWER if data else b""
        if (got, how) != (want, "fin"):
            bad.append(f"{name}: got {how} after {elapsed:.2f}s with "
                       f"{got[:80]!r}, want fin with {want[:40]!r}")
        elif name not in HELD and elapsed > 0.5 * SLOW:
            # decisive bytes: no waiting for more, nor for the timeout
            bad.append(f"{name}: answered after {elapsed:.2f}s")
    assert bad == [], "\n".join(bad)
    assert chat.accepted == 0, \
        f"the chat upstream received {chat.accepted} connection(s): " \
        f"{[bytes(r.get('data', b''))[:16] for r in chat.records]}"
    got = sorted(recorded(decoy))
    # A connection per probe, each with exactly the probe's bytes.
    want = sorted(data for _, data in probes)
    assert len(got) == len(want), \
        f"decoy: {len(got)} connections for {len(want)} probes"
    wrong = [name for name, data in probes if data not in got]
    assert got == want, f"decoy did not receive byte-exact: {wrong}"


def test_decoy_after_a_proxy_header(tmp_path):
    """On an accept-proxy listener the first bytes are classified after the
    PROXY header: an intro goes to chat, anything else to the decoy, and
    neither receives the header (send-proxy none)."""
    chat = Server(h_chat, name="chat")
    decoy = Server(h_decoy, name="decoy")
    d = start_daemon(tmp_path, camo_config(
        {"chat": [chat.spec], "web": [decoy.spec]},
        {"lb": {"upstream": "chat", "decoy": "web", "accept-proxy": "on",
                "trusted-proxies": "127.0.0.0/8"}}))
    addr = d.addr("lb")
    header = b"PROXY TCP4 198.51.100.7 203.0.113.9 40000 443\r\n"
    wa = intro(prologue_len=20, seed=21) + rand_bytes(500, 22)
    s = connect(addr)
    s.sendall(header + wa)
    assert recv_exact(s, len(wa)) == wa
    s.close()
    http = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"
    got, how, _ = probe("plain", addr, header + http)
    assert (got, how) == (DECOY_ANSWER, "fin")
    assert recorded(chat) == [wa]
    # The intro's connection dialled the decoy too, and dropped it unused.
    assert [b for b in recorded(decoy) if b] == [http]


def test_without_decoy_nothing_is_classified(tmp_path):
    """A listener without `decoy` relays whatever comes, at once, to its
    upstream: WhatsApp's intro, HTTP, and an incomplete intro alike."""
    chat = Server(h_chat, name="chat")
    d = start_daemon(tmp_path, camo_config(
        {"chat": [chat.spec]}, {"plain": {"upstream": "chat"}}))
    addr = d.addr("plain")
    sent = [intro(prologue_len=20, seed=31),
            b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
            b"ED\x00\x01\x00\x00"]
    for data in sent:
        s = connect(addr)
        t0 = time.monotonic()
        s.sendall(data)
        assert recv_exact(s, len(data)) == data
        # no waiting for more bytes to classify
        assert time.monotonic() - t0 < 0.5 * SLOW
        s.close()
    assert sorted(recorded(chat)) == sorted(sent)


# ---------------------------------------------------------------------------
# 2. probe consistency against Debian's nginx


_DATE = re.compile(rb"(\r\nDate: )[^\r\n]*")


def normalise(b):
    """Only the Date header may differ between two answers."""
    return _DATE.sub(rb"\1<date>", b)


def same_time(a, b):
    return abs(a - b) <= max(0.1 * max(a, b), 0.5)


def http_probes():
    return [
        ("http-get", b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"),
        ("http-get-no-host", b"GET / HTTP/1.1\r\n\r\n"),
        ("http10-get-no-host", b"GET / HTTP/1.0\r\n\r\n"),
        ("http-head", b"HEAD / HTTP/1.1\r\nHost: example.org\r\n\r\n"),
        ("http-head-no-host", b"HEAD / HTTP/1.1\r\n\r\n"),
        ("http-post", b"POST / HTTP/1.1\r\nHost: example.org\r\n"
         b"Content-Length: 5\r\n\r\nhello"),
        ("http-post-no-host", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n"
         b"\r\nhello"),
        ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ]


def plain_probe_set():
    """(name, bytes sent through lifeline, bytes sent to nginx directly,
    only_with_decoy).  Incomplete intros: lifeline waits 250 ms for the
    rest (a client sends its intro in one segment), then the decoy gets
    them, and answers as nginx directly does (at once: 400 for the NUL
    bytes), within the probe tolerance."""
    probes = [("empty", b"", b"", False)]
    for n in (1, 10, 100, 1000, 5000):
        b = rand_bytes(n, 100 + n)
        probes.append((f"random-{n}", b, b, False))
    probes += [(name, b, b, False) for name, b in http_probes()]
    ch = client_hello()
    probes += [
        ("tls-client-hello", ch, ch, False),
        ("wa-alone", b"WA", b"WA", False),
        ("w-alone", b"W", b"W", False),
        # partial ED prologues that nginx, too, waits on
        ("ed-partial-2", b"ED", b"ED", False),
        ("ed-partial-1", b"E", b"E", False),
        # not intros, decided as soon as the bytes are in
        ("wa-zero-frame", b"WA\x06\x03\x00\x00\x00",
         b"WA\x06\x03\x00\x00\x00", False),
        ("ed-4097", b"ED\x00\x01\x00\x10\x01\x08",
         b"ED\x00\x01\x00\x10\x01\x08", False),
        # incomplete intros: the decoy gets them after 250 ms
        ("ed-partial-7", b"ED\x00\x01\x00\x00\x14",
         b"ED\x00\x01\x00\x00\x14", False),
        ("wa-partial-4", b"WA\x06\x03", b"WA\x06\x03", False),
    ]
    return probes


def tls_probe_set():
    """HTTP (and the rest) inside TLS through lifeline, against the same
    bytes sent to nginx's plain port: lifeline reaches its decoy over plain
    HTTP."""
    probes = [("empty", b"", b"", False)]
    probes += [(name, b, b, False) for name, b in http_probes()]
    probes += [
        ("random-100", rand_bytes(100, 200), rand_bytes(100, 200), False),
        ("random-5000", rand_bytes(5000, 201), rand_bytes(5000, 201), False),
        ("wa-alone", b"WA", b"WA", False),
        ("ed-partial-2", b"ED", b"ED", False),
        ("wa-zero-frame", b"WA\x06\x03\x00\x00\x00",
         b"WA\x06\x03\x00\x00\x00", False),
        ("wa-partial-4", b"WA\x06\x03", b"WA\x06\x03", False),
    ]
    return probes


def compare_probes(kind, via, direct, probes, decoy_mode):
    """Run every probe through lifeline (`via`) and against nginx directly,
    all at once; returns the mismatches, one line each."""
    jobs = {}
    for name, data, direct_data, only_decoy in probes:
        jobs[("via", name)] = (lambda data=data: probe(kind, via, data))
        dd = direct_data if decoy_mode or not only_decoy else data
        jobs[("direct", name)] = (lambda dd=dd: probe("plain", direct, dd))
    res = run_concurrently(jobs)
    bad = []
    for name, *_ in probes:
        v, dr = res[("via", name)], res[("direct", name)]
        if v[0] == "error" or dr[0] == "error":
            bad.append(f"{name}: via {v[1] if v[0] == 'error' else 'ok'}, "
                       f"direct {dr[1] if dr[0] == 'error' else 'ok'}")
            continue
        (vb, vh, vt), (db, dh, dt) = v, dr
        problems = []
        if normalise(vb) != normalise(db):
            problems.append(f"bytes {len(vb)} {vb[:60]!r} vs {len(db)} "
                            f"{db[:60]!r}")
        if vh != dh:
            problems.append(f"close {vh} vs {dh}")
        if not same_time(vt, dt):
            problems.append(f"close at {vt:.2f}s vs {dt:.2f}s")
        if problems:
            bad.append(f"{name}: " + "; ".join(problems))
    return bad, res


@pytest.fixture
def nginx(tmp_path):
    return Nginx(tmp_path, header_timeout=NGINX_IDLE,
                 keepalive_timeout=NGINX_IDLE)


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_relay_to_nginx_matches_nginx(tmp_path, nginx, kind):
    """The harness's own check, and the behaviour without `decoy`: a
    listener whose upstream is nginx relays every probe (each incomplete
    intro included) and the prober sees what nginx's own port shows."""
    d = start_daemon(tmp_path, camo_config(
        {"web": [nginx.spec]}, {"relay": listener(kind, upstream="web")}))
    probes = plain_probe_set() if kind == "plain" else tls_probe_set()
    bad, _ = compare_probes(kind, d.addr("relay"), nginx.addr, probes,
                            decoy_mode=False)
    assert bad == [], "through lifeline vs nginx directly:\n" + "\n".join(bad)


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_decoy_answers_every_probe_as_nginx(tmp_path, nginx, kind):
    """The camouflage: with `decoy = web` (nginx) and `upstream = chat`,
    every probe gets through lifeline exactly what nginx's own port gives
    it (bytes, FIN or RST, close time), and none reaches chat."""
    chat = Server(h_chat, name="chat")
    d = start_daemon(tmp_path, camo_config(
        {"chat": [chat.spec], "web": [nginx.spec]},
        {"camo": listener(kind, upstream="chat", decoy="web")}))
    probes = plain_probe_set() if kind == "plain" else tls_probe_set()
    bad, _ = compare_probes(kind, d.addr("camo"), nginx.addr, probes,
                            decoy_mode=True)
    assert bad == [], "through lifeline vs nginx directly:\n" + "\n".join(bad)
    assert chat.accepted == 0, \
        f"probes reached the chat upstream: " \
        f"{[bytes(r.get('data', b''))[:16] for r in chat.records]}"


# ---------------------------------------------------------------------------
# 3. counters


def test_camouflage_counters(tmp_path):
    """lifeline_camouflage_total counts each classified connection once, per
    listener, and a listener without a decoy counts nothing."""
    chat = Server(h_chat, name="chat")
    decoy = Server(h_decoy, name="decoy")
    d = start_daemon(tmp_path, camo_config(
        {"chat": [chat.spec], "web": [decoy.spec]},
        {"camo": listener("plain", upstream="chat", decoy="web"),
         "camo-tls": listener("tls", upstream="chat", decoy="web"),
         "bare": {"upstream": "chat"}},
        timeouts={"handshake": "1s"}, stats=True))
    st = d.addr("stats")
    want = {("camo", "whatsapp"): 0, ("camo", "decoy"): 0,
            ("camo-tls", "whatsapp"): 0, ("camo-tls", "decoy"): 0}
    jobs = {}
    for lst, kind in (("camo", "plain"), ("camo-tls", "tls")):
        addr = d.addr(lst)
        for i, (name, data) in enumerate(INTROS[:3 if kind == "plain" else 2]):
            out = {}
            jobs[(lst, "wa", i)] = (
                lambda kind=kind, addr=addr, data=data, out=out:
                (chat_session(kind, addr, data, "whole", out), out)[1])
            want[(lst, "whatsapp")] += 1
        others = other_probes(kind)
        if kind == "tls":
            others = [p for p in others if p[0] in ("http-get", "random-1000")]
        for name, data in others:
            jobs[(lst, "other", name)] = (
                lambda kind=kind, addr=addr, data=data: probe(kind, addr, data))
            want[(lst, "decoy")] += 1
    addr = d.addr("bare")
    for i in range(2):
        out = {}
        data = INTROS[0][1] if i == 0 else b"GET / HTTP/1.0\r\n\r\n"
        jobs[("bare", i)] = (lambda data=data, out=out:
                             (chat_session("plain", addr, data, "whole", out),
                              out)[1])
    res = run_concurrently(jobs)
    bad = [f"{k}: {v}" for k, v in res.items()
           if (isinstance(v, dict) and "error" in v)
           or (isinstance(v, tuple) and v[0] == "error")]
    assert bad == [], bad
    for (lst, cls), n in want.items():
        wait_metric(st, "lifeline_camouflage_total", float(n),
                    listener=lst, **{"class": cls})
    time.sleep(0.3)
    m = scrape(st)
    got = {(lst, cls): m.get("lifeline_camouflage_total", listener=lst,
                             **{"class": cls}) for lst, cls in want}
    assert got == {k: float(v) for k, v in want.items()}
    assert m.total("lifeline_camouflage_total", listener="bare") == 0, \
        m.select("lifeline_camouflage_total", listener="bare")
    for labels, _ in m.select("lifeline_camouflage_total"):
        assert set(labels) == {"listener", "class"}, labels
