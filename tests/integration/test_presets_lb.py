"""The 'whatsapp' preset's own listeners, behind HAProxy as a stand-in load
balancer.

The preset is printed with --print-config and only its addresses are
changed for the test (binds to 127.0.0.1:0, upstream servers to local
recorders, no IPv6 wildcard): every other setting (tls, accept-proxy,
send-proxy, timeouts, maxconn) is the preset's.  Through HAProxy with
send-proxy-v2 the -lb listeners (8080, 8443, 8222, 8587 in production)
must serve, the chat upstream must receive a PROXY v2 header carrying the
real client's address, and the media upstream none.
"""

import re
import socket
import ssl
import subprocess

import pytest

from conftest import (
    LIFELINE_BIN, Daemon, Server, connect, h_echo, read_until_closed)
from test_proxy_protocol import (
    CLIENT4, assert_nothing_upstream, exchange, expect_origin, h_pp_echo,
    haproxy_in_front, only_record, v2_header)


def preset_for_test(name, chat, media):
    out = subprocess.run([LIFELINE_BIN, "--print-config", "--preset", name],
                         capture_output=True, text=True, timeout=10,
                         check=True).stdout
    lines, section = [], None
    for line in out.splitlines():
        m = re.match(r"\[(\w+)(?: (\S+))?\]", line)
        if m:
            section = m.groups()
        if line.startswith("bind = [::]"):
            continue  # one loopback address per listener is enough here
        if line.startswith("bind = "):
            line = "bind = 127.0.0.1:0"
        if line.startswith("check-interval = "):
            line = "check-interval = 1h"  # no health checks mid-test
        if line.startswith("listen = "):
            line = "listen = 127.0.0.1:0"
        if line.startswith("server = ") and section[0] == "upstream":
            # Six chat servers become one local recorder, listed once.
            line = f"server = {chat if section[1] == 'chat' else media}"
            if line in lines:
                continue
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture
def preset_daemon(tmp_path):
    chat = Server(h_pp_echo, name="chat")
    media = Server(h_echo, name="media")
    conf = preset_for_test("whatsapp", chat.spec, media.spec)
    assert "send-proxy = v2" in conf and "accept-proxy = on" in conf, conf
    d = Daemon(tmp_path, conf).start()
    return d, chat, media


@pytest.mark.parametrize("listener", ["http-lb", "jabber-lb", "https-lb"])
def test_lb_chat_listeners_behind_haproxy(tmp_path, preset_daemon, listener):
    d, chat, _ = preset_daemon
    hap = haproxy_in_front(tmp_path, d.addr(listener), "send-proxy-v2",
                           CLIENT4)
    s = connect((CLIENT4, hap.ports[0]), source=CLIENT4)
    me = s.getsockname()[:2]
    payload = b"WA\x06\x03" + bytes(range(256)) * 40
    if listener == "https-lb":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
        s.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            chunk = s.recv(65536)
            assert chunk, "TLS stream ended early"
            got += chunk
        assert bytes(got) == payload
        s.close()
    else:
        assert exchange(s, payload) == payload
    r = only_record(chat)
    # The chat server learns the real client, not HAProxy's address.
    expect_origin(r["pp"], "v2", me, (CLIENT4, hap.ports[0]))
    assert r["data"] == payload


def test_lb_media_listener_behind_haproxy(tmp_path, preset_daemon):
    d, chat, media = preset_daemon
    hap = haproxy_in_front(tmp_path, d.addr("media-lb"), "send-proxy-v2",
                           CLIENT4)
    s = connect((CLIENT4, hap.ports[0]), source=CLIENT4)
    # The client's own TLS to the media servers, passed through untouched:
    # here any bytes; the media upstream gets them with no PROXY header.
    payload = b"\x16\x03\x01" + bytes(range(256)) * 64
    assert exchange(s, payload) == payload
    assert chat.accepted == 0


@pytest.mark.parametrize("listener", ["http", "jabber", "media", "media-alt"])
def test_direct_listeners_need_no_header(preset_daemon,
                                           listener):
    """The direct listeners take clients with no PROXY header; media-alt
    (7777) relays media directly, as in the official Docker image."""
    d, chat, media = preset_daemon
    s = connect(d.addr(listener))
    payload = b"WA\x06\x03hello"
    assert exchange(s, payload) == payload
    if listener.startswith("media"):
        assert chat.accepted == 0
        assert media.accepted == 1
    else:
        r = only_record(chat)
        assert r["pp"]["command"] == "PROXY"


def test_lb_listener_without_header_is_not_served(preset_daemon):
    """An -lb listener reached directly (no load balancer) relays nothing."""
    d, chat, _ = preset_daemon
    s = connect(d.addr("jabber-lb"))
    s.settimeout(15)
    s.sendall(b"WA\x06\x03hello")
    try:
        s.shutdown(socket.SHUT_WR)
        data = s.recv(100)
    except OSError:
        data = b""
    assert data == b""
    assert chat.accepted == 0


def test_lb_listener_refuses_untrusted_source(tmp_path):
    """The preset's -lb listeners carry trusted-proxies; with loopback
    narrowed to 127.0.0.1 (the rest of the preset's list kept), a header
    from 127.0.0.2 is refused and one from 127.0.0.1 served."""
    chat = Server(h_pp_echo, name="chat")
    media = Server(h_echo, name="media")
    conf = preset_for_test("whatsapp", chat.spec, media.spec)
    assert conf.count("trusted-proxies = 127.0.0.0/8\n") == 4, conf
    conf = conf.replace("trusted-proxies = 127.0.0.0/8\n",
                        "trusted-proxies = 127.0.0.1/32\n")
    d = Daemon(tmp_path, conf).start()
    hdr = v2_header(("203.0.113.9", 4444), ("198.51.100.1", 8222))
    s = connect(d.addr("jabber-lb"), source=CLIENT4)
    try:
        s.sendall(hdr + b"spoofed")
    except (BrokenPipeError, ConnectionResetError):
        pass
    how, n, _ = read_until_closed(s, 4.0)
    assert n == 0
    assert_nothing_upstream(chat)
    s = connect(d.addr("jabber-lb"), source="127.0.0.1")
    assert exchange(s, hdr + b"trusted") == b"trusted"
    r = only_record(chat)
    expect_origin(r["pp"], "v2", ("203.0.113.9", 4444),
                  ("198.51.100.1", 8222))
