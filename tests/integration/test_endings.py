"""How a connection ends: DESIGN.md's table, row by row, on the real daemon.

| situation                                         | toward each peer     |
| both directions finished                          | FIN (TLS: close_notify, FIN) |
| idle timeout, nothing held, nothing half-finished | FIN (TLS: close_notify, FIN) |
| timeout with bytes held / backpressure / half-closed | RST to both       |
| an error or RST from one peer                     | RST to the other (test_relay.py) |
| TLS protocol error                                | alert, FIN, discard <= 1 s, close |
| handshake or PROXY-header timeout                 | FIN                  |

And the rule behind the third row: time during which a direction cannot
move because its destination does not take bytes is not idleness of its
source.  Every transfer is checked byte for byte (SHA-256) and every ending
by what the peer's socket reports: EOF for FIN, ECONNRESET for RST.
"""

import hashlib
import os
import random
import socket
import ssl
import struct
import time

import pytest

import conftest
from conftest import (
    SLOW, Server, chunks, connect, echo_roundtrip, h_echo, make_config,
    read_until_closed, recv_exact, start_daemon, wait_for,
)
from tls_helpers import client_ctx, tls_connect, tls_echo_roundtrip

MiB = 1 << 20
SIZE = 8 * MiB


def timeouts(**kw):
    """[timeouts] with the whatsapp defaults for the half-close ones."""
    t = {"client-fin": "1s", "server-fin": "1s"}
    t.update({k.replace("_", "-"): v for k, v in kw.items()})
    return t


def within(elapsed, want):
    """A timeout fired on time: not early, late only by scheduling.

    `elapsed` counts from a moment the daemon's clock cannot precede: taken
    before the last byte the test sends or the connection it opens (not
    after the answer came back, when the test may have been descheduled
    past the 10% margin on a loaded machine)."""
    return want * 0.9 <= elapsed <= want * 1.25 * SLOW + 0.25


def read_hashed(sock, pause_at=None, pause=0.0, timeout=30.0, rec=None):
    """Read until EOF or reset, pausing once `pause_at` bytes are in (and
    counting them in rec["got"] as they come, when rec is given).

    Returns (how, nbytes, sha256 hex) with how in {"eof", "reset"}."""
    h = hashlib.sha256()
    n = 0
    paused = pause_at is None
    sock.settimeout(timeout)
    while True:
        if not paused and n >= pause_at:
            time.sleep(pause)
            paused = True
        try:
            d = sock.recv(1 << 16)
        except (ConnectionResetError, ConnectionAbortedError):
            return "reset", n, h.hexdigest()
        if not d:
            return "eof", n, h.hexdigest()
        h.update(d)
        n += len(d)
        if rec is not None:
            rec["got"] = n


def send_hashed(sock, size, seed):
    """Send `size` random bytes; returns (how, sent, sha256 hex of sent)."""
    h = hashlib.sha256()
    sent = 0
    try:
        for ch in chunks(size, random.Random(seed)):
            sock.sendall(ch)
            h.update(ch)
            sent += len(ch)
    except OSError as e:
        return type(e).__name__, sent, h.hexdigest()
    return "sent", sent, h.hexdigest()


def answering(size, request=3, wait_eof=False, delay=0.0):
    """Upstream: reads `request` bytes (until EOF when wait_eof), waits
    `delay`, sends `size` random bytes and FIN, then reads to the end."""
    def handler(c, rec):
        if wait_eof:
            while c.recv(65536):
                pass
        else:
            recv_exact(c, request)
        time.sleep(delay)
        rec["end"], rec["sent"], rec["sha"] = send_hashed(c, size, size)
        rec["sent_at"] = time.monotonic()
        if rec["end"] == "sent":
            c.shutdown(socket.SHUT_WR)
            rec["after"] = read_until_closed(c, 20)[0]
    return handler


def sink(pause_at=None, pause=0.0):
    """Upstream: hashes all it reads, pausing once, then closes."""
    def handler(c, rec):
        rec["how"], rec["got"], rec["sha"] = read_hashed(
            c, pause_at, pause, rec=rec)
        rec["how_at"] = time.monotonic()
    return handler


def plain_daemon(tmp_path, srv, **tmo):
    return start_daemon(tmp_path, make_config(
        {"up": [srv.spec]}, {"plain": {"upstream": "up"}},
        timeouts=timeouts(**tmo)))


# ---------------------------------------------------------------------------
# backpressure is not idleness


def test_half_closed_download_survives_a_slow_reader(tmp_path):
    """The client sends its request and FIN, then reads an 8 MiB answer
    with a 1.5 s pause: longer than server-fin (1 s), well within client.
    The upstream (half-closed) is blocked by backpressure, not idle."""
    srv = Server(answering(SIZE, wait_eof=True), name="answer")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = connect(d.addr("plain"))
    s.sendall(b"GET")
    s.shutdown(socket.SHUT_WR)
    how, n, sha = read_hashed(s, pause_at=MiB, pause=1.5)
    rec = srv.wait_done()[0]
    assert rec["end"] == "sent", rec
    assert (how, n) == ("eof", SIZE), f"client: {how} after {n} of {SIZE} bytes"
    assert sha == rec["sha"], "download corrupted"
    assert rec["after"] == "eof", rec


def test_download_pause_within_the_readers_timeout_completes(tmp_path):
    """No half-close; the client pauses 1.6 s: longer than `server` (1 s),
    shorter than `client` (3 s).  Only the client's own timeout applies."""
    srv = Server(answering(SIZE), name="answer")
    d = plain_daemon(tmp_path, srv, client="3s", server="1s")
    s = connect(d.addr("plain"))
    s.sendall(b"GET")
    how, n, sha = read_hashed(s, pause_at=MiB, pause=1.6)
    rec = srv.wait_done()[0]
    assert (how, n) == ("eof", SIZE), f"client: {how} after {n} of {SIZE} bytes"
    assert sha == rec["sha"]
    assert rec["end"] == "sent", rec


def test_download_pause_beyond_the_readers_timeout_is_cut_by_rst(tmp_path):
    """The client pauses 1.6 s against client = server = 1 s: the stream is
    cut, and both peers see a reset, never a FIN claiming completeness."""
    srv = Server(answering(SIZE), name="answer")
    d = plain_daemon(tmp_path, srv, client="1s", server="1s")
    s = connect(d.addr("plain"))
    s.sendall(b"GET")
    how, n, _ = read_hashed(s, pause_at=MiB, pause=1.6)
    rec = srv.wait_done()[0]
    assert how == "reset", f"client saw {how} after {n} of {SIZE} bytes"
    assert n < SIZE
    # Its answer may all have fitted in buffers before the cut.
    assert rec["end"] in ("ConnectionResetError", "BrokenPipeError") or \
        rec["after"] == "reset", rec
    assert d.alive()


def test_upload_pause_within_the_upstreams_timeout_completes(tmp_path):
    """The mirror: the upstream stops reading for 1.6 s, longer than
    `client` (1 s), shorter than `server` (3 s)."""
    srv = Server(sink(pause_at=MiB, pause=1.6), name="sink")
    d = plain_daemon(tmp_path, srv, client="1s", server="3s")
    s = connect(d.addr("plain"))
    how, sent, sha = send_hashed(s, SIZE, 7)
    assert how == "sent", how
    s.shutdown(socket.SHUT_WR)
    assert read_until_closed(s, 10)[:2] == ("eof", 0)
    rec = srv.wait_done()[0]
    assert (rec["how"], rec["got"]) == ("eof", SIZE), rec
    assert rec["sha"] == sha, "upload corrupted"


def test_upload_pause_beyond_the_upstreams_timeout_is_cut_by_rst(tmp_path):
    srv = Server(sink(pause_at=MiB, pause=1.6), name="sink")
    d = plain_daemon(tmp_path, srv, client="1s", server="1s")
    s = connect(d.addr("plain"))
    how, sent, _ = send_hashed(s, SIZE, 7)
    if how == "sent":  # all of it fitted in buffers before the cut
        how = read_hashed(s)[0]
    rec = srv.wait_done()[0]
    assert how in ("reset", "ConnectionResetError", "BrokenPipeError"), how
    assert rec["how"] == "reset", f"upstream saw {rec['how']} after {rec['got']} bytes"
    assert rec["got"] < SIZE
    assert d.alive()


# ---------------------------------------------------------------------------
# half-closed timeouts cut with RST


def test_server_fin_timeout_cuts_with_rst(tmp_path):
    """Request and FIN, then the upstream is silent for 1.5 s: server-fin
    (1 s) ends the connection, as a cut: the client sees a reset at 1 s."""
    srv = Server(answering(1000, wait_eof=True, delay=1.5), name="slow")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = connect(d.addr("plain"))
    s.sendall(b"GET")
    s.shutdown(socket.SHUT_WR)
    how, n, elapsed = read_until_closed(s, 5)
    assert (how, n) == ("reset", 0), (how, n)
    assert within(elapsed, 1.0), f"cut after {elapsed:.2f}s (server-fin 1s)"
    rec = srv.wait_done()[0]
    assert rec["end"] in ("ConnectionResetError", "BrokenPipeError"), rec


def test_client_fin_timeout_cuts_with_rst(tmp_path):
    """The upstream sends its answer and FIN; the client reads it all but
    never closes: client-fin (1 s) cuts, and the upstream sees a reset."""
    def handler(c, rec):
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        rec["how"], _, rec["elapsed"] = read_until_closed(c, 5)
        rec["t0"] = t0

    srv = Server(handler, name="fin-first")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = connect(d.addr("plain"))
    assert recv_exact(s, 5) == b"hello"
    s.settimeout(5)
    assert s.recv(10) == b"", "the upstream's FIN did not reach the client"
    rec = srv.wait_done()[0]
    assert rec["how"] == "reset", rec
    assert within(rec["elapsed"], 1.0), f"cut after {rec['elapsed']:.2f}s"


def test_half_closed_connection_lives_while_its_open_direction_moves(tmp_path):
    """server-fin bounds silence, not the length of an answer: a trickle
    over 3 s after the client's FIN arrives whole, then a clean FIN."""
    def trickle(c, rec):
        while c.recv(1024):
            pass
        for _ in range(12):
            c.sendall(b"t")
            time.sleep(0.25)
        c.shutdown(socket.SHUT_WR)

    srv = Server(trickle, name="trickle")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = connect(d.addr("plain"))
    s.sendall(b"GET")
    s.shutdown(socket.SHUT_WR)
    how, n, _ = read_hashed(s)
    assert (how, n) == ("eof", 12)


# ---------------------------------------------------------------------------
# idle timeouts with nothing held end with FIN


def test_idle_timeout_with_nothing_held_ends_with_fin(tmp_path):
    echo = Server(h_echo, name="echo")
    d = plain_daemon(tmp_path, echo, client="1s", server="1s")
    s = connect(d.addr("plain"))
    t0 = time.monotonic()  # the daemon's last activity is the echo
    echo_roundtrip(s)
    how, n, _ = read_until_closed(s, 5)
    elapsed = time.monotonic() - t0
    assert (how, n) == ("eof", 0)
    assert within(elapsed, 1.0), f"closed after {elapsed:.2f}s (timeout 1s)"
    rec = echo.wait_done()[0]
    assert rec["error"] is None, rec["error"]  # FIN, not a reset


def tls_daemon(tmp_path, srv, **tmo):
    return start_daemon(tmp_path, make_config(
        {"up": [srv.spec]}, {"tls": {"upstream": "up", "tls": "on"}},
        timeouts=timeouts(**tmo)))


def test_tls_idle_timeout_sends_close_notify(tmp_path):
    echo = Server(h_echo, name="echo")
    d = tls_daemon(tmp_path, echo, client="1s", server="1s")
    s = tls_connect(d.addr("tls"))
    t0 = time.monotonic()  # the daemon's last activity is the echo
    tls_echo_roundtrip(s)
    s.settimeout(5)
    try:
        got = s.recv(100)
    except ssl.SSLEOFError:
        pytest.fail("idle timeout closed the TLS client without close_notify")
    assert got == b"", got
    assert within(time.monotonic() - t0, 1.0)
    assert echo.wait_done()[0]["error"] is None


# ---------------------------------------------------------------------------
# urgent data


def _urgent_stream(sock, head, tail):
    """head, one MSG_OOB byte, tail; returns the bytes the peer should get."""
    sock.sendall(head)
    sock.send(b"!", socket.MSG_OOB)
    sock.sendall(tail)
    return head + b"!" + tail


@pytest.mark.parametrize("head_size", [100, 200000], ids=["buffered", "spliced"])
def test_urgent_byte_relayed_in_order_upload(tmp_path, head_size):
    """An urgent byte after `head_size` bytes (200,000: the direction has
    turned to splice) and 42 more: all of it, in order, reaches the
    upstream."""
    rng = random.Random(head_size)
    head = rng.randbytes(head_size)
    tail = rng.randbytes(42)
    srv = Server(sink(), name="sink")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = connect(d.addr("plain"))
    s.sendall(head)
    wait_for(lambda: srv.records and srv.records[0].get("got", 0) >= head_size,
             5, what="the head relayed")
    want = _urgent_stream(s, b"", tail)
    want = head + want
    s.shutdown(socket.SHUT_WR)
    assert read_until_closed(s, 10)[:2] == ("eof", 0)
    rec = srv.wait_done(timeout=10)[0]
    assert (rec["how"], rec["got"]) == ("eof", len(want)), rec
    assert rec["sha"] == hashlib.sha256(want).hexdigest()


@pytest.mark.parametrize("head_size", [100, 200000], ids=["buffered", "spliced"])
def test_urgent_byte_relayed_in_order_download(tmp_path, head_size):
    rng = random.Random(head_size + 1)
    head = rng.randbytes(head_size)
    tail = rng.randbytes(42)

    def handler(c, rec):
        c.sendall(head)
        time.sleep(0.2)  # the relay has spliced the head by now
        rec["want"] = _urgent_stream(c, b"", tail)
        c.shutdown(socket.SHUT_WR)
        while c.recv(1024):
            pass

    srv = Server(handler, name="urgent-src")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = connect(d.addr("plain"))
    s.settimeout(5)  # a frozen stream fails here, not at the idle timeout
    how, n, sha = read_hashed(s, timeout=5)
    want = head + b"!" + tail
    assert (how, n) == ("eof", len(want)), (how, n)
    assert sha == hashlib.sha256(want).hexdigest()


def test_urgent_byte_mid_stream_spliced_upload(tmp_path):
    """A spliced (bulk) direction meets an urgent byte and no FIN follows:
    the client waits for its echo.  splice(2) stops at the mark with
    EAGAIN; only the recv(2) that reads through it keeps the stream
    moving, so the byte and the 42 after it come back promptly."""
    echo = Server(h_echo, name="echo")
    d = plain_daemon(tmp_path, echo, client="30s", server="30s")
    s = connect(d.addr("plain"))
    head = random.Random(3).randbytes(200000)
    s.sendall(head)
    assert recv_exact(s, len(head)) == head
    tail = random.Random(4).randbytes(42)
    want = _urgent_stream(s, b"", tail)
    s.settimeout(2 * SLOW)  # a stalled stream fails here
    assert recv_exact(s, len(want)) == want
    echo_roundtrip(s)
    s.close()


def test_urgent_byte_mid_stream_spliced_download(tmp_path):
    """The mirror: the upstream sends a bulk head, an urgent byte and 42
    more, then waits for the client's answer before it closes."""
    rng = random.Random(5)
    head, tail = rng.randbytes(200000), rng.randbytes(42)

    def handler(c, rec):
        c.sendall(head)
        time.sleep(0.2)  # the relay has spliced the head by now
        _urgent_stream(c, b"", tail)
        rec["answer"] = recv_exact(c, 2)

    srv = Server(handler, name="urgent-src")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = connect(d.addr("plain"))
    s.settimeout(2 * SLOW)  # a stalled stream fails here
    want = head + b"!" + tail
    assert recv_exact(s, len(want)) == want
    s.sendall(b"ok")
    rec = srv.wait_done()[0]
    assert rec["error"] is None and rec["answer"] == b"ok", rec


# ---------------------------------------------------------------------------
# TLS protocol errors: the alert, FIN, a short linger, never a reset


def _keep_writing(raw, seconds):
    """Junk on the raw TCP socket for `seconds`; returns the send error."""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            raw.send(os.urandom(512))
            time.sleep(0.02)
    except OSError as e:
        return type(e).__name__
    return None


def _read_raw_to_end(raw, timeout=5):
    raw.settimeout(timeout)
    data = bytearray()
    try:
        while True:
            d = raw.recv(4096)
            if not d:
                return bytes(data), "eof"
            data += d
    except (ConnectionResetError, ConnectionAbortedError):
        return bytes(data), "reset"


def test_tls_alert_after_handshake_is_read_then_fin(tmp_path):
    """TLS 1.2 (alerts in clear): after the handshake, a record that fails
    its MAC, then the client keeps writing.  It must read the fatal alert
    and a FIN: no reset, no broken pipe.  The upstream is reset."""
    srv = Server(sink(), name="sink")
    d = tls_daemon(tmp_path, srv, client="30s", server="30s")
    ctx = client_ctx(maxv=ssl.TLSVersion.TLSv1_2)
    s = tls_connect(d.addr("tls"), ctx)
    tls_echo_prefix = b"x" * 10
    s.sendall(tls_echo_prefix)
    srv.wait_accepted(1)
    raw = socket.socket(fileno=os.dup(s.fileno()))
    conftest._SOCKETS.append(raw)
    raw.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(64))  # bad MAC
    assert _keep_writing(raw, 0.4) is None, "client writing got an error"
    data, how = _read_raw_to_end(raw)
    # An alert record (encrypted after the handshake, so its level and
    # description are not visible here), then nothing but the FIN.
    assert data[:3] == b"\x15\x03\x03", data[:16]
    assert len(data) == 5 + struct.unpack("!H", data[3:5])[0], data
    assert how == "eof", f"after the alert: {how}"
    rec = srv.wait_done()[0]
    assert rec["how"] == "reset", rec


def test_tls13_alert_after_handshake_is_readable(tmp_path):
    """TLS 1.3: the alert is encrypted; the client's TLS stack reads it."""
    srv = Server(sink(), name="sink")
    d = tls_daemon(tmp_path, srv, client="30s", server="30s")
    s = tls_connect(d.addr("tls"), client_ctx(minv=ssl.TLSVersion.TLSv1_3))
    s.sendall(b"hello")
    srv.wait_accepted(1)
    raw = socket.socket(fileno=os.dup(s.fileno()))
    conftest._SOCKETS.append(raw)
    raw.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(64))  # fails to decrypt
    assert _keep_writing(raw, 0.4) is None, "client writing got an error"
    s.settimeout(5)
    with pytest.raises(ssl.SSLError) as ei:
        s.recv(100)
    assert "ALERT" in str(ei.value).upper(), ei.value


def test_tls_handshake_failure_alert_is_read_then_fin(tmp_path):
    """A ClientHello OpenSSL cannot decode, and a client that keeps
    writing: it reads the alert, then FIN.  No upstream is dialled."""
    srv = Server(sink(), name="sink")
    d = tls_daemon(tmp_path, srv, client="30s", server="30s")
    raw = connect(d.addr("tls"))
    body = b"\x01\x00\x00\x26" + os.urandom(38)
    raw.sendall(b"\x16\x03\x01" + struct.pack("!H", len(body)) + body)
    assert _keep_writing(raw, 0.4) is None, "client writing got an error"
    data, how = _read_raw_to_end(raw)
    assert data[:1] == b"\x15" and data[5:6] == b"\x02", data[:16]
    assert how == "eof", f"after the alert: {how}"
    assert srv.accepted == 0


def test_tls_linger_is_bounded(tmp_path):
    """A client that never stops writing after the alert is closed about
    1 s later (then with RST: its bytes are unread, nothing was relayed)."""
    srv = Server(sink(), name="sink")
    d = tls_daemon(tmp_path, srv, client="30s", server="30s")
    raw = connect(d.addr("tls"))
    body = b"\x01\x00\x00\x26" + os.urandom(38)
    raw.sendall(b"\x16\x03\x01" + struct.pack("!H", len(body)) + body)
    t0 = time.monotonic()
    err = _keep_writing(raw, 3.0)
    assert err in ("ConnectionResetError", "BrokenPipeError"), err
    assert within(time.monotonic() - t0, 1.0)
    assert srv.accepted == 0
    assert d.alive()


# ---------------------------------------------------------------------------
# TLS 1.3 tickets


def test_tls13_resumption_brings_a_new_ticket(tmp_path):
    """RFC 8446 clients use a ticket once: each resumption must bring a
    fresh ticket, so that the next connection can resume too."""
    echo = Server(h_echo, name="echo")
    d = tls_daemon(tmp_path, echo, client="30s", server="30s")
    ctx = client_ctx(minv=ssl.TLSVersion.TLSv1_3)
    s = tls_connect(d.addr("tls"), ctx)
    tls_echo_roundtrip(s)  # tickets arrive before the first data
    sess = s.session
    s.close()
    for i in range(3):
        s2 = tls_connect(d.addr("tls"), ctx, session=sess)
        tls_echo_roundtrip(s2)
        assert s2.session_reused, f"resumption {i} failed"
        new = s2.session
        assert new.has_ticket
        assert new.id != sess.id, f"resumption {i} brought no new ticket"
        sess = new
        s2.close()


# ---------------------------------------------------------------------------
# bytes the kernel holds: a slow reader still takes them


def slow_reader(sock, chunk, period, timeout=30.0):
    """Read `chunk` bytes every `period` s until EOF or reset."""
    h = hashlib.sha256()
    n = 0
    sock.settimeout(timeout)
    while True:
        try:
            d = sock.recv(chunk)
        except (ConnectionResetError, ConnectionAbortedError):
            return "reset", n, h.hexdigest()
        except ssl.SSLEOFError:
            return "eof-without-close_notify", n, h.hexdigest()
        if not d:
            return "eof", n, h.hexdigest()
        h.update(d)
        n += len(d)
        time.sleep(period)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_download_drains_to_a_slow_reader_after_upstream_fin(tmp_path, tls):
    """The upstream sends 1 MiB and FIN at once; the client reads about
    256 KiB/s (4 s in all; a TLS read returns one 16 KiB record).
    client-fin is 1 s: it must not cut a reader that is still taking the
    bytes, wherever they wait (relay or kernel)."""
    size = MiB
    srv = Server(answering(size), name="answer")
    d = (tls_daemon if tls else plain_daemon)(
        tmp_path, srv, client="30s", server="30s")
    s = tls_connect(d.addr("tls")) if tls else connect(d.addr("plain"))
    s.sendall(b"GET")
    how, n, sha = slow_reader(s, 16 << 10, 1 / 16) if tls else \
        slow_reader(s, 64 << 10, 0.25)
    rec = srv.wait_done()[0]
    assert (how, n) == ("eof", size), f"client: {how} after {n} of {size} bytes"
    assert sha == rec["sha"]


def test_upload_drains_to_a_slow_upstream_after_client_fin(tmp_path):
    """The mirror: 2 MiB and FIN from the client; the upstream starts
    reading 2 s later (server-fin 1 s, server 30 s)."""
    srv = Server(sink(pause_at=0, pause=2.0), name="late-sink")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = connect(d.addr("plain"))
    how, sent, sha = send_hashed(s, 2 * MiB, 11)
    assert how == "sent", how
    s.shutdown(socket.SHUT_WR)
    assert read_until_closed(s, 15)[:2] == ("eof", 0)
    rec = srv.wait_done()[0]
    assert (rec["how"], rec["got"]) == ("eof", 2 * MiB), rec
    assert rec["sha"] == sha


def test_steady_slow_reader_is_not_idle(tmp_path):
    """client = 2 s; the client reads 32 KiB every 0.25 s of a 768 KiB
    answer (6 s), the upstream keeps its side open: the reader is busy,
    not idle.  (With the answer queued in the kernel the relay sees no
    progress of its own; the socket's send queue shrinking is progress.)"""
    size = 768 << 10

    def handler(c, rec):
        recv_exact(c, 3)
        rec["end"], rec["sent"], rec["sha"] = send_hashed(c, size, 5)
        rec["after"] = read_until_closed(c, 20)[0]

    srv = Server(handler, name="no-fin")
    d = plain_daemon(tmp_path, srv, client="2s", server="30s")
    s = connect(d.addr("plain"))
    s.sendall(b"GET")
    h = hashlib.sha256()
    got = 0
    s.settimeout(10)
    try:
        while got < size:
            chunk = s.recv(32 << 10)
            assert chunk, f"EOF after {got} of {size} bytes"
            h.update(chunk)
            got += len(chunk)
            time.sleep(0.25)
    except ConnectionResetError:
        pytest.fail(f"slow reader cut after {got} of {size} bytes")
    s.close()
    rec = srv.wait_done()[0]
    assert h.hexdigest() == rec["sha"]
    assert rec["after"] == "eof", rec


def test_tls_client_timeout_applies_after_first_data(tmp_path):
    """client = 1 s, server = 10 s: an idle TLS client is closed at 1 s,
    whatever came with its first flight (it once waited for the server's
    timeout when the first bytes were still held as the timer was armed).
    The server's timeout is more than 4 client timeouts, so that no look at
    the server's socket (a quarter of its timeout after writing to it)
    covers for the timer brought forward."""
    echo = Server(h_echo, name="echo")
    # connect = 10 s: a new stream's deadline waits for the connect
    # deadline when that is earlier; at 1 s it would cover for the timer
    # brought forward.
    d = tls_daemon(tmp_path, echo, client="1s", server="10s", connect="10s")
    late = []
    for i in range(10):
        s = tls_connect(d.addr("tls"))
        t0 = time.monotonic()  # the daemon's last activity is the echo
        tls_echo_roundtrip(s)
        s.settimeout(8)
        assert s.recv(10) == b""  # close_notify
        elapsed = time.monotonic() - t0
        if not within(elapsed, 1.0):
            late.append(round(elapsed, 2))
        s.close()
    assert late == [], f"idle TLS clients closed after {late} s (client = 1 s)"


def test_tail_after_fin_drains_through_a_small_window(tmp_path):
    """A client with a 16 KiB receive buffer reads 16 KiB every 0.25 s
    (64 KiB/s) of 384 KiB that the upstream sent with its FIN: what the
    relay queued before its own FIN takes longer than client-fin (1 s) to
    drain, and must not be cut while it does."""
    size = 384 << 10
    srv = Server(answering(size), name="answer")
    d = plain_daemon(tmp_path, srv, client="30s", server="30s")
    s = socket.socket()
    conftest._SOCKETS.append(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    s.settimeout(10)
    s.connect(d.addr("plain"))
    s.sendall(b"GET")
    how, n, sha = slow_reader(s, 16 << 10, 0.25)
    rec = srv.wait_done()[0]
    assert (how, n) == ("eof", size), f"client: {how} after {n} of {size} bytes"
    assert sha == rec["sha"]
