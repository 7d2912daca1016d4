"""One TLS port for chat and media (issue 15, point 3): on a TLS listener
with `passthrough`, a ClientHello naming one of WhatsApp's media hosts
(`passthrough-sni`, by default mmg.whatsapp.net, *.fna.whatsapp.net...)
is passed through untouched to the media group, so the client's own TLS
session reaches the media server and verifies its certificate; any other
ClientHello, with or without a name, is answered by lifeline's TLS.  With
`decoy-tls`, bytes that are not TLS at all go raw to the decoy's own TLS
port.  A stand-in media server has its own certificate for
mmg.whatsapp.net; curl reaches it through lifeline with --resolve."""

import socket
import ssl
import subprocess
import time

import pytest

from conftest import (
    SLOW, Server, connect, read_until_closed, recv_exact, run_cli,
    make_config, start_daemon,
)
from stats_helpers import scrape, stats_config
from tls_helpers import (
    client_ctx, client_hello, der_to_pem, manual_tls, peer_cert_der,
    tls_connect, x509_field, x509_text,
)



MEDIA = "mmg.whatsapp.net"
BODY = b"media ok\n"


@pytest.fixture(scope="module")
def media_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    cert, key = d / "media.crt", d / "media.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-subj", f"/CN={MEDIA}", "-addext", f"subjectAltName=DNS:{MEDIA}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


def media_server(media_cert):
    """An HTTPS server for mmg.whatsapp.net: one request, one answer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*media_cert)
    names = {}

    def sni(sock, name, _ctx):
        names[id(sock)] = name

    ctx.sni_callback = sni

    def handler(c, rec):
        s = ctx.wrap_socket(c, server_side=True)
        rec["sni"] = names.pop(id(s), None)
        data = b""
        while b"\r\n\r\n" not in data:
            d = s.recv(4096)
            if not d:
                break
            data += d
        rec["request"] = data
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % len(BODY) + BODY)
        # close_notify, then at most a short wait for the client's.
        s.settimeout(0.5 * SLOW)
        try:
            s.unwrap()
        except (OSError, ssl.SSLError):
            pass
        s.close()

    return Server(handler, name="media")


def h_echo_first(c, rec):
    """The chat upstream: echoes until the client's FIN."""
    data = b""
    while True:
        d = c.recv(65536)
        if not d:
            break
        data += d
        c.sendall(d)
    rec["data"] = data


def h_raw_decoy(c, rec):
    """The decoy's TLS port, receiving plain HTTP: nginx's answer to it."""
    c.settimeout(3 * SLOW)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            d = c.recv(4096)
            if not d:
                break
            data += d
    except socket.timeout:
        pass
    rec["data"] = data
    c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"
              b"The plain HTTP request was sent to HTTPS port")
    c.close()


def daemon(tmp_path, chat, media=None, raw_decoy=None, extra=None,
           handshake="3s"):
    ups = {"chat": [chat.spec]}
    listen = {"upstream": "chat", "tls": "on"}
    if media is not None:
        ups["media"] = [media.spec]
        listen["passthrough"] = "media"
    if raw_decoy is not None:
        ups["webtls"] = [raw_decoy.spec]
        listen["decoy-tls"] = "webtls"
    listen.update(extra or {})
    return start_daemon(tmp_path, stats_config(
        ups, {"443": listen}, timeouts={"handshake": handshake}))


def camo_count(d, cls):
    return scrape(d.addr("stats")).get(
        "lifeline_camouflage_total", listener="443", **{"class": cls})


def test_curl_reaches_the_media_server_through_lifeline(tmp_path, media_cert):
    chat = Server(h_echo_first, name="chat")
    media = media_server(media_cert)
    d = daemon(tmp_path, chat, media)
    host, port = d.addr("443")
    r = subprocess.run(
        ["curl", "-sS", "--max-time", str(10 * SLOW), "--cacert",
         str(media_cert[0]), "--resolve", f"{MEDIA}:{port}:{host}",
         f"https://{MEDIA}:{port}/v/t62/file.enc"],
        capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == BODY
    rec = media.wait_done(1)[0]
    assert rec["sni"] == MEDIA
    assert rec["request"].startswith(b"GET /v/t62/file.enc HTTP/1.1\r\n")
    assert chat.accepted == 0
    assert camo_count(d, "passthrough") == 1


def test_hello_in_one_byte_segments_still_passes(tmp_path, media_cert):
    """A ClientHello sent one byte per segment (as a large post-quantum
    hello spans segments) is read whole before it is judged."""
    chat = Server(h_echo_first, name="chat")
    media = media_server(media_cert)
    d = daemon(tmp_path, chat, media)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(media_cert[0]))
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    raw = connect(d.addr("443"))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = manual_tls(raw, piece=1, gap=0.001, sni=MEDIA, ctx=ctx)
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data, notify = conn.recv_to_eof()
    assert data.endswith(BODY) and notify
    assert media.wait_done(1)[0]["sni"] == MEDIA


@pytest.mark.parametrize("sni", ["example.org", None, "whatsapp.net",
                                 "mmg.whatsapp.net.example.org"])
def test_other_hellos_get_lifelines_tls(tmp_path, media_cert, sni):
    chat = Server(h_echo_first, name="chat")
    media = media_server(media_cert)
    d = daemon(tmp_path, chat, media)
    s = tls_connect(d.addr("443"), sni=sni)
    cert = x509_text(der_to_pem(s.getpeercert(binary_form=True)))
    assert MEDIA not in x509_field(cert, "subject")
    s.sendall(b"WA\x06\x03chat")
    assert recv_exact(s, 8) == b"WA\x06\x03chat"
    s.close()
    assert chat.wait_done(1)[0]["data"] == b"WA\x06\x03chat"
    assert media.accepted == 0
    assert camo_count(d, "passthrough") == 0


def test_own_patterns_replace_the_default(tmp_path, media_cert):
    chat = Server(h_echo_first, name="chat")
    media = media_server(media_cert)
    d = daemon(tmp_path, chat, media,
               extra={"passthrough-sni": "*.media.example"})
    # mmg.whatsapp.net is now ours ...
    s = tls_connect(d.addr("443"), sni=MEDIA)
    s.close()
    # ... and a name under media.example passes (the media server's
    # certificate is for mmg: verification off, only where it went counts).
    s = tls_connect(d.addr("443"), sni="a.b.media.example")
    s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    got = b""
    while True:
        x = s.recv(4096)
        if not x:
            break
        got += x
    assert got.endswith(BODY)
    assert media.wait_done(1)[0]["sni"] == "a.b.media.example"
    assert camo_count(d, "passthrough") == 1


def test_plain_bytes_go_to_decoy_tls(tmp_path):
    chat = Server(h_echo_first, name="chat")
    web = Server(h_raw_decoy, name="webtls")
    d = daemon(tmp_path, chat, raw_decoy=web)
    s = connect(d.addr("443"))
    req = b"GET / HTTP/1.1\r\nHost: relay.example\r\n\r\n"
    s.sendall(req)
    got = b""
    while True:
        x = s.recv(4096)
        if not x:
            break
        got += x
    assert got.startswith(b"HTTP/1.1 400 Bad Request")
    assert web.wait_done(1)[0]["data"] == req
    assert chat.accepted == 0
    assert camo_count(d, "decoy_tls") == 1
    # A real ClientHello on the same listener is still ours.
    t = tls_connect(d.addr("443"), sni="relay.example")
    t.sendall(b"x")
    assert recv_exact(t, 1) == b"x"
    assert web.accepted == 1


def test_plain_bytes_without_decoy_tls_meet_our_tls(tmp_path, media_cert):
    """Without decoy-tls, OpenSSL answers plain HTTP as it always did:
    it reads an HTTP request where a record should be and closes with a
    FIN, with nothing sent and nothing dialled."""
    chat = Server(h_echo_first, name="chat")
    media = media_server(media_cert)
    d = daemon(tmp_path, chat, media)
    s = connect(d.addr("443"))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    how, n, _ = read_until_closed(s, 5 * SLOW)
    # no alert for bytes that are not a record: a FIN, as before
    assert (how, n) == ("eof", 0)
    assert media.accepted == 0 and chat.accepted == 0
    m = scrape(d.addr("stats"))
    assert m.get("lifeline_tls_handshakes_total", listener="443",
                 result="failed") == 1


def test_hello_cut_short_times_out_with_fin(tmp_path, media_cert):
    """Half a ClientHello and silence: `handshake` (1 s) ends it with
    FIN, as our TLS would; nothing is dialled."""
    chat = Server(h_echo_first, name="chat")
    media = media_server(media_cert)
    d = daemon(tmp_path, chat, media, handshake="1s")
    s = connect(d.addr("443"))
    hello = client_hello(MEDIA)
    s.sendall(hello[:len(hello) // 2])
    how, n, elapsed = read_until_closed(s, 5 * SLOW)
    assert (how, n) == ("eof", 0)
    assert 0.9 <= elapsed <= 1.0 * SLOW + 0.5, elapsed
    assert media.accepted == 0 and chat.accepted == 0


@pytest.mark.parametrize("listen,err", [
    ({"passthrough": "media"}, "need 'tls = on'"),
    ({"tls": "on", "passthrough-sni": "*.whatsapp.net"},
     "'passthrough-sni' without 'passthrough'"),
    ({"tls": "on", "passthrough": "media", "passthrough-sni": "*.*.net"},
     "use a host name or *.domain"),
    ({"tls": "on", "passthrough": "nope"}, "unknown passthrough 'nope'"),
    ({"tls": "on", "decoy-tls": "chat"}, "is its upstream"),
])
def test_config_errors(tmp_path, listen, err):
    p = tmp_path / "bad.conf"
    listen = dict(listen, upstream="chat")
    p.write_text(make_config({"chat": ["127.0.0.1:9"],
                              "media": ["127.0.0.1:9"]}, {"l": listen}))
    r = run_cli(["--check", "-c", str(p)])
    assert r.returncode != 0 and err in r.stderr, r.stderr


def test_default_patterns_are_printed(tmp_path):
    p = tmp_path / "c.conf"
    p.write_text(make_config({"chat": ["127.0.0.1:9"],
                              "media": ["127.0.0.1:9"]},
                             {"l": {"upstream": "chat", "tls": "on",
                                    "passthrough": "media"}}))
    r = run_cli(["--print-config", "-c", str(p)])
    assert r.returncode == 0, r.stderr
    pats = [x.split("=", 1)[1].strip() for x in r.stdout.splitlines()
            if x.startswith("passthrough-sni")]
    assert pats == ["mmg.whatsapp.net", "mmg-fna.whatsapp.net",
                    "pps.whatsapp.net", "*.fna.whatsapp.net",
                    "*.cdn.whatsapp.net"]
