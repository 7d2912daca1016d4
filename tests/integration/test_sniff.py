"""Camouflage mechanics (issue 15): a listener with `decoy = GROUP` dials
the decoy at once and reads the client's first bytes; WhatsApp's intro
goes to the upstream byte-exact (the decoy sees an empty connection
closed), everything else to the decoy with every byte read so far, so
the decoy's own answer, timing and close reach the client.

These tests use small Python servers whose behaviour they control (when
the decoy speaks, closes, or is down); test_camouflage.py compares the
answers of a real nginx with and without lifeline in front."""

import os
import socket
import ssl
import threading
import time

import pytest

from conftest import (
    SLOW, Blackhole, Server, connect, read_until_closed, recv_exact,
    start_daemon, wait_for,
)
from stats_helpers import scrape, stats_config
from tls_helpers import client_ctx, tls_connect



# Noise header WA 6.3 and a first frame of 4 bytes: "\x12" + 3 bytes.
WA_INTRO = b"WA\x06\x03\x00\x00\x04\x12abc"
ED_INTRO = b"ED\x00\x01\x00\x00\x04\x08\x02\x10\x01" + WA_INTRO
REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def h_chat(c, rec):
    """Echoes everything, recording it, until the client's FIN."""
    data = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        data += d
        rec["data"] = data
        c.sendall(d)
    rec["data"] = data
    c.shutdown(socket.SHUT_WR)


def h_decoy(c, rec):
    """Like a web server: reads a request (up to a blank line, or until
    silence of 1 s, or FIN), answers 400 and closes."""
    data = b""
    c.settimeout(1.0 * SLOW)
    try:
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                rec["fin"] = True
                break
            data += d
    except socket.timeout:
        rec["timeout"] = True
    rec["data"] = data
    if data:
        c.sendall(REPLY)
    c.close()


@pytest.fixture
def chat():
    return Server(h_chat, name="chat")


@pytest.fixture
def decoy():
    return Server(h_decoy, name="decoy")


def camo_daemon(tmp_path, chat, decoy_spec, handshake="5s", tls=False):
    listen = {"upstream": "chat", "decoy": "web"}
    if tls:
        listen["tls"] = "on"
    return start_daemon(tmp_path, stats_config(
        {"chat": [chat.spec], "web": [decoy_spec]}, {"camo": listen},
        timeouts={"handshake": handshake}))


def send_slowly(s, data, pause=0.01):
    for i in range(len(data)):
        s.sendall(data[i:i + 1])
        time.sleep(pause)


@pytest.mark.parametrize("intro", [WA_INTRO, ED_INTRO], ids=["wa", "ed"])
def test_intro_in_pieces_reaches_chat_exact(tmp_path, chat, decoy, intro):
    d = camo_daemon(tmp_path, chat, decoy.spec)
    s = connect(d.addr("camo"))
    send_slowly(s, intro)
    assert recv_exact(s, len(intro)) == intro
    tail = os.urandom(100_000)
    s.sendall(tail)
    assert recv_exact(s, len(tail)) == tail
    s.shutdown(socket.SHUT_WR)
    assert read_until_closed(s, 5)[:2] == ("eof", 0)
    rec = chat.wait_done(1)[0]
    assert rec["data"] == intro + tail
    # The decoy was dialled at once, then closed without a byte: FIN.
    drec = decoy.wait_done(1)[0]
    assert drec.get("data") == b"" and drec.get("fin"), drec
    m = scrape(d.addr("stats"))
    assert m.get("lifeline_camouflage_total", listener="camo",
                 **{"class": "whatsapp"}) == 1
    assert m.get("lifeline_camouflage_total", listener="camo",
                 **{"class": "decoy"}) == 0


def test_other_bytes_get_the_decoys_answer(tmp_path, chat, decoy):
    d = camo_daemon(tmp_path, chat, decoy.spec)
    s = connect(d.addr("camo"))
    req = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
    s.sendall(req)
    got = b""
    while True:
        x = s.recv(4096)
        if not x:
            break
        got += x
    assert got == REPLY
    assert decoy.wait_done(1)[0]["data"] == req
    assert chat.accepted == 0
    m = scrape(d.addr("stats"))
    assert m.get("lifeline_camouflage_total", listener="camo",
                 **{"class": "decoy"}) == 1


def test_empty_connection_is_closed_by_the_decoy(tmp_path, chat, decoy):
    """handshake (the window for the first bytes) is 5 s; the decoy gives
    up after its own 1 s of silence, and the client sees that: FIN at
    1 s, not at 5 s."""
    d = camo_daemon(tmp_path, chat, decoy.spec, handshake="5s")
    s = connect(d.addr("camo"))
    how, n, elapsed = read_until_closed(s, 5 * SLOW)
    assert (how, n) == ("eof", 0)
    assert 0.9 <= elapsed < 1.0 * SLOW + 0.5, elapsed
    assert decoy.wait_done(1)[0].get("timeout")
    assert chat.accepted == 0


def test_partial_intro_goes_to_the_decoy_after_a_short_grace(tmp_path,
                                                             chat):
    """`WA` alone is a prefix of an intro, but a client sends its intro in
    one segment: after 250 ms without more, the decoy gets the two bytes
    (a web server answers such bytes at once), long before `handshake`."""
    def h_patient(c, rec):
        c.settimeout(5 * SLOW)
        rec["data"] = c.recv(100)
        rec["at"] = time.monotonic()
        c.sendall(REPLY)
        c.close()

    web = Server(h_patient, name="patient")
    d = camo_daemon(tmp_path, chat, web.spec, handshake="5s")
    s = connect(d.addr("camo"))
    t0 = time.monotonic()
    s.sendall(b"WA")
    s.settimeout(5 * SLOW)
    assert recv_exact(s, len(REPLY)) == REPLY
    rec = web.wait_done(1)[0]
    assert rec["data"] == b"WA"
    assert 0.24 <= rec["at"] - t0 < 0.25 * SLOW + 0.3, rec["at"] - t0
    assert chat.accepted == 0


def test_dripped_intro_prefix_ends_at_the_window(tmp_path, chat):
    """A prober dripping a prefix of an intro a byte every 0.15 s (within
    the grace each time) is bounded by `handshake` (1 s): then the decoy
    gets what came."""
    def h_patient(c, rec):
        c.settimeout(5 * SLOW)
        rec["data"] = c.recv(100)
        rec["at"] = time.monotonic()
        c.close()

    web = Server(h_patient, name="patient")
    d = camo_daemon(tmp_path, chat, web.spec, handshake="1s")
    s = connect(d.addr("camo"))
    t0 = time.monotonic()
    prefix = b"ED\x00\x01\x00\x01\x00\x08" + bytes(range(1, 40))
    stop = threading.Event()

    def drip():
        for i in range(len(prefix)):
            if stop.is_set():
                return
            try:
                s.sendall(prefix[i:i + 1])
            except OSError:
                return
            time.sleep(0.15)

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    web.wait_accepted(1)  # dialled at accept; its handler then waits
    rec = web.wait_done(1, timeout=5 * SLOW)[0]
    stop.set()
    assert 0.95 <= rec["at"] - t0 < 1.0 * SLOW + 0.3, rec["at"] - t0
    assert prefix.startswith(rec["data"]) and len(rec["data"]) >= 5
    assert chat.accepted == 0


def test_decoy_down_chat_still_works(tmp_path, chat):
    """A decoy that refuses connections does not stop WhatsApp; others
    get a FIN once their bytes say they are not WhatsApp's."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there: refused
    d = camo_daemon(tmp_path, chat, f"127.0.0.1:{port}")
    s = connect(d.addr("camo"))
    s.sendall(ED_INTRO)
    assert recv_exact(s, len(ED_INTRO)) == ED_INTRO
    s.close()
    o = connect(d.addr("camo"))
    o.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert read_until_closed(o, 3)[:2] == ("eof", 0)
    assert chat.wait_done(1)[0]["data"] == ED_INTRO


def test_decoy_unreachable_until_window_ends(tmp_path, chat):
    """A decoy whose connect hangs (SYNs dropped) is given up after the
    `connect` timeout; WhatsApp's intro meanwhile reaches the chat
    upstream at once."""
    hole = Blackhole()
    d = camo_daemon(tmp_path, chat, hole.spec)
    s = connect(d.addr("camo"))
    t0 = time.monotonic()
    s.sendall(WA_INTRO)
    assert recv_exact(s, len(WA_INTRO)) == WA_INTRO
    assert time.monotonic() - t0 < 0.5 * SLOW
    o = connect(d.addr("camo"))
    o.sendall(b"junk")
    how, n, elapsed = read_until_closed(o, 5 * SLOW)
    # connect = 1 s in the test configuration; nothing else to try.
    assert (how, n) == ("eof", 0)
    assert 0.9 <= elapsed < 1.0 * SLOW + 0.5, elapsed


def test_tls_listener_classifies_the_decrypted_stream(tmp_path, chat, decoy):
    d = camo_daemon(tmp_path, chat, decoy.spec, tls=True)
    s = tls_connect(d.addr("camo"))
    s.sendall(ED_INTRO)
    assert recv_exact(s, len(ED_INTRO)) == ED_INTRO
    s.close()
    h = tls_connect(d.addr("camo"))
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    h.sendall(req)
    assert recv_exact(h, len(REPLY)) == REPLY
    # The decoy closed: close_notify, then EOF (no truncation error).
    assert h.recv(10) == b""
    assert decoy.wait_done(2)[1]["data"] == req
    assert chat.wait_done(1)[0]["data"] == ED_INTRO


def test_client_fin_before_a_verdict_reaches_the_decoy(tmp_path, chat, decoy):
    """`ED\\0` then FIN: never an intro now; the decoy gets both."""
    d = camo_daemon(tmp_path, chat, decoy.spec)
    s = connect(d.addr("camo"))
    s.sendall(b"ED\x00")
    s.shutdown(socket.SHUT_WR)
    assert s.recv(4096) == REPLY
    rec = decoy.wait_done(1)[0]
    assert rec["data"] == b"ED\x00" and rec.get("fin")
    assert chat.accepted == 0


@pytest.mark.parametrize("conf,err", [
    ("web2", "unknown decoy 'web2'"),
    ("chat", "is its upstream"),
])
def test_config_errors(tmp_path, chat, conf, err):
    from conftest import run_cli, make_config
    p = tmp_path / "bad.conf"
    p.write_text(make_config({"chat": [chat.spec], "web": [chat.spec]},
                             {"camo": {"upstream": "chat", "decoy": conf}}))
    r = run_cli(["--check", "-c", str(p)])
    assert r.returncode != 0
    assert err in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# client-keepalive: on by default (reaps dead clients), off for camouflage


def keepalive_left(port):
    """Seconds until the keep-alive probe of the relay's accepted socket
    on `port`, from ss(8); None when it has no keep-alive timer."""
    import re
    import subprocess
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", "src", f"127.0.0.1:{port}"],
        capture_output=True, text=True, check=True).stdout
    lines = [x for x in out.splitlines() if x.strip()]
    assert len(lines) == 1, out
    m = re.search(r"timer:\(keepalive,([^,]+),", lines[0])
    if m is None:
        return None
    t = m.group(1)
    # ss writes 59sec, 3min19sec, and under 10 s "2.996ms" (seconds).
    mm = re.fullmatch(r"(?:(\d+)min)?(?:(\d+)sec)?", t)
    if mm and (mm.group(1) or mm.group(2)):
        return int(mm.group(1) or 0) * 60 + int(mm.group(2) or 0)
    mm = re.fullmatch(r"(\d+\.\d+)ms", t)
    assert mm, f"unexpected ss timer {t!r}"
    return float(mm.group(1))


def test_client_keepalive_default_off_and_duration(tmp_path, chat):
    d = start_daemon(tmp_path, stats_config(
        {"chat": [chat.spec]},
        {"dflt": {"upstream": "chat"},
         "off": {"upstream": "chat", "client-keepalive": "off"},
         "short": {"upstream": "chat", "client-keepalive": "3s"}}))
    held = {n: connect(d.addr(n)) for n in ("dflt", "off", "short")}
    for s in held.values():
        s.sendall(b"x")
        assert recv_exact(s, 1) == b"x"
    assert 50 <= keepalive_left(d.port("dflt")) <= 60
    assert keepalive_left(d.port("off")) is None
    assert 2 <= keepalive_left(d.port("short")) <= 3
    # A reload applies to the sockets kept: new clients get the new value.
    conf = stats_config(
        {"chat": [chat.spec]},
        {"dflt": {"upstream": "chat", "client-keepalive": "off"},
         "off": {"upstream": "chat", "client-keepalive": "5s"},
         "short": {"upstream": "chat", "client-keepalive": "3s"}})
    for s in held.values():
        s.close()
    chat.wait_done(3)  # the relay's sockets to them are closed
    d.reload(conf)
    again = {n: connect(d.addr(n)) for n in ("dflt", "off")}
    for s in again.values():
        s.sendall(b"y")
        assert recv_exact(s, 1) == b"y"
    assert keepalive_left(d.port("dflt")) is None
    assert 4 <= keepalive_left(d.port("off")) <= 5


def test_client_keepalive_bad_values(tmp_path, chat):
    from conftest import run_cli, make_config
    for v, err in (("0s", "use off or 1s to 2h"), ("3h", "use off or 1s to 2h"),
                   ("soon", "bad value 'soon'")):
        p = tmp_path / "bad.conf"
        p.write_text(make_config(
            {"chat": [chat.spec]},
            {"l": {"upstream": "chat", "client-keepalive": v}}))
        r = run_cli(["--check", "-c", str(p)])
        assert r.returncode != 0 and err in r.stderr, (v, r.stderr)


def tcp_state(sock):
    """The kernel's TCP state of sock: after the peer's FIN, CLOSE_WAIT
    until we close, or CLOSE once an RST came (recv keeps returning b""
    after a FIN, RST or not)."""
    st = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    return {7: "CLOSE", 8: "CLOSE_WAIT", 1: "ESTABLISHED"}.get(st, str(st))


def test_decoy_close_is_never_followed_by_rst(tmp_path, chat, decoy):
    """The decoy answers and closes; the prober keeps its end open past
    client-fin.  A web server that closed sends nothing more, so neither
    may lifeline: no RST (a relay's half-close timeout would tell it)."""
    d = start_daemon(tmp_path, stats_config(
        {"chat": [chat.spec], "web": [decoy.spec]},
        {"camo": {"upstream": "chat", "decoy": "web"}},
        timeouts={"client-fin": "1s", "server-fin": "1s"}))
    s = connect(d.addr("camo"))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    got = b""
    while True:
        x = s.recv(4096)
        if not x:
            break
        got += x
    assert got == REPLY
    time.sleep(1.0 * SLOW + 1.0)  # past client-fin, and its timer
    assert tcp_state(s) == "CLOSE_WAIT", tcp_state(s)
    # The relay's side is closed all the same: nothing is held open.
    wait_for(lambda: scrape(d.addr("stats")).get(
        "lifeline_connections_active", listener="camo") == 0, 3)


def test_chat_half_close_timeout_still_resets(tmp_path, chat):
    """The same wait on a WhatsApp connection is a cut stream: RST."""
    def h_answer_close(c, rec):
        rec["data"] = recv_exact(c, len(WA_INTRO))
        c.sendall(b"bye")
        c.shutdown(socket.SHUT_WR)
        c.settimeout(5)
        try:
            rec["after"] = c.recv(10)
        except ConnectionResetError:
            rec["after"] = "reset"

    srv = Server(h_answer_close, name="chat-closes")
    web = Server(h_decoy, name="decoy2")
    d = start_daemon(tmp_path, stats_config(
        {"chat": [srv.spec], "web": [web.spec]},
        {"camo": {"upstream": "chat", "decoy": "web"}},
        timeouts={"client-fin": "1s", "server-fin": "1s"}))
    s = connect(d.addr("camo"))
    s.sendall(WA_INTRO)
    assert recv_exact(s, 3) == b"bye"
    how, n, elapsed = read_until_closed(s, 5 * SLOW)
    assert how == "eof"
    time.sleep(1.0 * SLOW + 1.0)
    assert tcp_state(s) == "CLOSE", tcp_state(s)  # an RST came
    assert srv.wait_done(1)[0]["after"] == "reset"
