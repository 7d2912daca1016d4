"""TLS that answers like the decoy's web server (issue 15, points 4 and 5):
tls-alpn, tls-tickets, tls-ticket-lifetime, tls-ciphers and
tls-prefer-server-ciphers on a TLS listener, and a generated certificate
shaped like an operator's own self-signed one when tls-names is set.
Checked with OpenSSL's s_client and Python's ssl against the daemon."""

import datetime
import re
import socket
import ssl
import subprocess

import pytest

from conftest import (
    SLOW, Server, h_echo, make_config, run_cli, start_daemon,
)
from tls_helpers import client_ctx, der_to_pem, tls_connect, x509_text


@pytest.fixture
def echo():
    return Server(h_echo, name="echo")


def tls_daemon(tmp_path, echo, **listen):
    lst = {"upstream": "up", "tls": "on"}
    lst.update({k.replace("_", "-"): v for k, v in listen.items()})
    return start_daemon(tmp_path, make_config({"up": [echo.spec]},
                                              {"t": lst}))


def s_client(addr, *args):
    """openssl s_client's output for one session: it sends a line, waits
    for the echo (which comes after the tickets the server sent at the end
    of its handshake), then ends."""
    host, port = addr
    p = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"{host}:{port}", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    p.stdin.write(b"echo-me\n")
    p.stdin.flush()
    out = b""
    try:
        for line in p.stdout:
            out += line
            if line.startswith(b"echo-me"):
                break
    finally:
        p.stdin.close()
        rest = p.stdout.read()
        p.wait(timeout=10 * SLOW)
    return (out + rest).decode("latin-1")


def alpn_of(addr, offer):
    ctx = client_ctx()
    ctx.set_alpn_protocols(offer)
    s = tls_connect(addr, ctx=ctx)
    proto = s.selected_alpn_protocol()
    s.close()
    return proto


def test_alpn_selected_from_our_list(tmp_path, echo):
    d = tls_daemon(tmp_path, echo, tls_alpn="http/1.1")
    addr = d.addr("t")
    assert alpn_of(addr, ["h2", "http/1.1"]) == "http/1.1"
    # Nothing in common: no ALPN, but the handshake goes on.
    assert alpn_of(addr, ["h2"]) is None
    assert alpn_of(addr, ["wa-chat"]) is None


def test_alpn_order_is_ours(tmp_path, echo):
    d = tls_daemon(tmp_path, echo, tls_alpn="h2, http/1.1")
    assert alpn_of(d.addr("t"), ["http/1.1", "h2"]) == "h2"


def test_no_alpn_by_default(tmp_path, echo):
    d = tls_daemon(tmp_path, echo)
    assert alpn_of(d.addr("t"), ["h2", "http/1.1"]) is None


@pytest.mark.parametrize("n", [1, 2])
def test_tickets_per_handshake(tmp_path, echo, n):
    kw = {} if n == 1 else {"tls_tickets": str(n)}
    d = tls_daemon(tmp_path, echo, **kw)
    out = s_client(d.addr("t"), "-tls1_3", "-msg")
    assert out.count("NewSessionTicket") == n, out[-2000:]


def test_ticket_lifetime_hint(tmp_path, echo):
    d = tls_daemon(tmp_path, echo, tls_ticket_lifetime="5m")
    out = s_client(d.addr("t"), "-tls1_3")
    hints = re.findall(r"lifetime hint: (\d+)", out)
    assert hints and set(hints) == {"300"}, out[-2000:]
    (tmp_path / "b").mkdir()
    d2 = tls_daemon(tmp_path / "b", echo)
    hints = re.findall(r"lifetime hint: (\d+)", s_client(d2.addr("t"),
                                                         "-tls1_3"))
    assert hints and set(hints) == {"7200"}


def tls12_cipher(addr, offer):
    ctx = client_ctx(maxv=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(offer)
    s = tls_connect(addr, ctx=ctx)
    name = s.cipher()[0]
    s.close()
    return name


def test_cipher_preference(tmp_path, echo):
    server_first = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305"
    client_first = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"
    (tmp_path / "a").mkdir()
    d = tls_daemon(tmp_path / "a", echo, tls_ciphers=server_first)
    assert tls12_cipher(d.addr("t"), client_first) == \
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    (tmp_path / "b").mkdir()
    d2 = tls_daemon(tmp_path / "b", echo, tls_ciphers=server_first,
                    tls_prefer_server_ciphers="off")
    assert tls12_cipher(d2.addr("t"), client_first) == \
        "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_unknown_ciphers_refused_at_start(tmp_path, echo):
    p = tmp_path / "c.conf"
    p.write_text(make_config({"up": [echo.spec]},
                             {"t": {"upstream": "up", "tls": "on",
                                    "tls-ciphers": "NO-SUCH-SUITE"}}))
    r = run_cli(["-c", str(p), "--ports-file", str(tmp_path / "ports")])
    assert r.returncode != 0 and "tls-ciphers" in r.stderr, r.stderr


def test_tls_settings_need_tls(tmp_path, echo):
    p = tmp_path / "c.conf"
    p.write_text(make_config({"up": [echo.spec]},
                             {"t": {"upstream": "up", "tls-tickets": "2"}}))
    r = run_cli(["--check", "-c", str(p)])
    assert r.returncode != 0
    assert "TLS settings without 'tls = on'" in r.stderr, r.stderr


def cert_fields(addr, sni=None):
    s = tls_connect(addr, sni=sni)
    der = s.getpeercert(binary_form=True)
    s.close()
    pem = der_to_pem(der)
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-issuer", "-serial",
         "-startdate", "-enddate", "-ext", "subjectAltName"],
        input=pem.encode(), capture_output=True, check=True).stdout.decode()
    return out


def test_named_certificate_looks_like_an_operators(tmp_path, echo):
    d = tls_daemon(tmp_path, echo, tls_names="relay.example.org, www.example.org")
    out = cert_fields(d.addr("t"))
    assert re.search(r"subject=CN\s*=\s*relay\.example\.org", out), out
    assert re.search(r"issuer=CN\s*=\s*relay\.example\.org", out), out
    assert "DNS:relay.example.org, DNS:www.example.org" in out, out
    serial = re.search(r"serial=([0-9A-F]+)", out).group(1)
    assert 25 <= len(serial) <= 34, serial  # 128 random bits, in hex
    fmt = "%b %d %H:%M:%S %Y %Z"
    nb = datetime.datetime.strptime(
        re.search(r"notBefore=(.+)", out).group(1).replace("  ", " "), fmt)
    na = datetime.datetime.strptime(
        re.search(r"notAfter=(.+)", out).group(1).replace("  ", " "), fmt)
    now = datetime.datetime.utcnow()
    # A midnight up to 30 days back: not the start time.
    assert (nb.hour, nb.minute, nb.second) == (0, 0, 0), nb
    assert datetime.timedelta(0) <= now - nb <= datetime.timedelta(days=30)
    assert na - nb == datetime.timedelta(days=365)


def test_unnamed_certificate_keeps_the_official_pattern(tmp_path, echo):
    d = tls_daemon(tmp_path, echo)
    out = cert_fields(d.addr("t"))
    subj = re.search(r"subject=CN\s*=\s*(\S+)", out).group(1)
    iss = re.search(r"issuer=CN\s*=\s*(\S+)", out).group(1)
    assert re.fullmatch(r"[a-z]{12}\.net", subj) and subj != iss, out
