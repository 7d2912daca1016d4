"""The two CLI subcommands, `lifeline link` (share link, terminal QR code)
and `lifeline health` (readiness probe), and the daemon's /qr.svg."""

import socket
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import Blackhole, free_port, run_cli, start_daemon
from stats_helpers import (
    SLOW, get, get_json, halfblocks_to_bitmap, http, require_tool, stats_config,
    svg_to_bitmap, wait_metric, write_png, zbar_decode)


def parse_link(link):
    u = urlsplit(link)
    assert (u.scheme, u.netloc, u.path) == ("https", "wa.me", "/proxy"), link
    q = parse_qs(u.query, keep_blank_values=True, strict_parsing=True)
    assert set(q) == {"host", "chatPort", "mediaPort", "chatTLS"}, link
    assert all(len(v) == 1 for v in q.values()), link
    q = {k: v[0] for k, v in q.items()}
    assert q["chatTLS"] in ("true", "false"), link
    return q["host"], int(q["chatPort"]), int(q["mediaPort"]), q["chatTLS"] == "true"


def link_cli(*args):
    r = run_cli(["link", *args])
    assert r.returncode == 0, f"link {args}: exit {r.returncode}\n{r.stderr}"
    lines = r.stdout.split("\n")
    return r, lines


# --------------------------------------------------------------------------
# lifeline link


def test_link_defaults():
    r, lines = link_cli("--host", "relay.example.org")
    assert [l for l in lines if l.strip()] == [lines[0]], r.stdout
    assert parse_link(lines[0]) == ("relay.example.org", 443, 587, True)
    assert lines[0] == ("https://wa.me/proxy?host=relay.example.org&chatPort=443"
                        "&mediaPort=587&chatTLS=true")


@pytest.mark.parametrize("args,want", [
    (["--host", "203.0.113.7", "--chat-port", "5222", "--media-port", "7777",
      "--no-tls"], ("203.0.113.7", 5222, 7777, False)),
    (["--host", "proxy.example", "--chat-port", "8443", "--tls"],
     ("proxy.example", 8443, 587, True)),
    (["--host", "a-b.example.net", "--media-port", "1", "--chat-port", "65535"],
     ("a-b.example.net", 65535, 1, True)),
    (["--chat-port", "80", "--no-tls", "--host", "198.51.100.1"],
     ("198.51.100.1", 80, 587, False)),
])
def test_link_explicit(args, want):
    r, lines = link_cli(*args)
    assert parse_link(lines[0]) == want


@pytest.mark.parametrize("args", [
    [],
    ["--chat-port", "443"],
    ["--host"],
    ["--host", ""],
    ["--host", "relay.example.org", "--chat-port", "0"],
    ["--host", "relay.example.org", "--chat-port", "70000"],
    ["--host", "relay.example.org", "--media-port", "0"],
    ["--host", "relay.example.org", "--media-port", "70000"],
    ["--host", "relay.example.org", "--chat-port", "44x"],
    ["--host", "relay.example.org", "--chat-port", "-1"],
    ["--host", "relay example.org"],
    ["--host", "relay.example.org&chatPort=1"],
    ["--host", "evil.example/#"],
    ["--host", "relay.example.org", "--bogus"],
], ids=lambda a: " ".join(a) or "no-args")
def test_link_bad_input(args):
    r = run_cli(["link", *args])
    assert r.returncode == 2, f"link {args}: exit {r.returncode}, stdout {r.stdout!r}"
    assert r.stderr.strip(), f"link {args}: no message on stderr"
    assert "wa.me" not in r.stdout, f"link {args} printed a link: {r.stdout!r}"


@pytest.mark.parametrize("args", [
    ["--host", "relay.example.org"],
    ["--host", "203.0.113.7", "--chat-port", "5222", "--media-port", "7777", "--no-tls"],
])
def test_link_qr_scans(tmp_path, args):
    require_tool("zbarimg")
    r, lines = link_cli(*args, "--qr")
    link = lines[0]
    parse_link(link)
    qr = lines[1:]
    while qr and qr[-1] == "":
        qr.pop()
    while qr and qr[0] == "":
        qr.pop(0)
    assert len(qr) >= 10, f"no QR code after the link:\n{r.stdout}"
    widths = {len(l) for l in qr}
    assert len(widths) == 1, f"QR lines of unequal width {sorted(widths)}"
    bitmap = halfblocks_to_bitmap(qr)
    png = write_png(tmp_path / "qr.png", bitmap)
    got = zbar_decode(png)
    assert got == [link], f"terminal QR decodes to {got}, want {link!r}"
    # the same QR code without --qr's extras: the link line is unchanged
    _, plain = link_cli(*args)
    assert plain[0] == link


# --------------------------------------------------------------------------
# /qr.svg and the share link of a running relay


def _relay(tmp_path, echo, public_host):
    return start_daemon(tmp_path, stats_config(
        {"chat": [echo.spec], "media": [echo.spec]},
        {"jabber": {"upstream": "chat"}, "media": {"upstream": "media"},
         "chat-tls": {"upstream": "chat", "tls": "on"},
         "chat-lb": {"upstream": "chat", "accept-proxy": "on"}},
        public_host=public_host))


def test_qr_svg_scans_and_matches_share_link(tmp_path, echo):
    require_tool("zbarimg")
    d = _relay(tmp_path, echo, "relay.example.org")
    st = d.addr("stats")
    j = get_json(st)
    assert j["public_host"] == "relay.example.org"
    link = j["share_link"]
    host, chat, media, tls = parse_link(link)
    assert host == "relay.example.org"
    # the link leads to this relay's own direct (not PROXY) listeners
    assert (chat, tls) in {(d.port("jabber"), False), (d.port("chat-tls"), True)}, \
        f"chatPort {chat} chatTLS {tls}; listeners {d.ports}"
    assert media == d.port("media"), f"mediaPort {media}; listeners {d.ports}"
    r = get(st, "/qr.svg")
    assert r.headers.get("content-type", "").startswith("image/svg+xml"), r.headers
    bitmap = svg_to_bitmap(r.text)
    png = write_png(tmp_path / "svg.png", bitmap, scale=2)
    got = zbar_decode(png)
    assert got == [link], f"/qr.svg decodes to {got}, want {link!r}"
    # HEAD works for it too
    h = http(st, "/qr.svg", method="HEAD")
    assert h.status == 200 and h.body == b""


def test_no_public_host_no_link(tmp_path, echo):
    d = _relay(tmp_path, echo, None)
    st = d.addr("stats")
    j = get_json(st)
    assert j["public_host"] is None and j["share_link"] is None, j
    assert http(st, "/qr.svg").status == 404


# --------------------------------------------------------------------------
# lifeline health


def health(url):
    t0 = time.monotonic()
    r = run_cli(["health", "--url", url], timeout=30)
    return r, time.monotonic() - t0


def test_health_ready_and_not(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    d = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}}), name="ready")
    st = d.addr("stats")
    assert http(st, "/readyz").status == 200
    r, el = health(f"http://127.0.0.1:{st[1]}/readyz")
    assert r.returncode == 0, f"ready relay: exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert el < 5 * SLOW

    r, _ = health(f"http://127.0.0.1:{st[1]}/no-such-page")
    assert r.returncode == 1, f"404: exit {r.returncode}"

    d2 = start_daemon(tmp_path, stats_config(
        {"up": [echo.spec], "dead": {"server": [dead], "check-interval": "1s"}},
        {"plain": {"upstream": "up"}, "nowhere": {"upstream": "dead"}}), name="unready")
    st2 = d2.addr("stats")
    wait_metric(st2, "lifeline_upstream_server_up", 0, 3 * SLOW, upstream="dead", server=dead)
    assert http(st2, "/readyz").status == 503
    r, el = health(f"http://127.0.0.1:{st2[1]}/readyz")
    assert r.returncode == 1, f"unready relay (503): exit {r.returncode}\n{r.stderr}"
    assert el < 5 * SLOW


def test_health_nothing_listening():
    r, el = health(f"http://127.0.0.1:{free_port()}/readyz")
    assert r.returncode == 1, f"connection refused: exit {r.returncode}\n{r.stderr}"
    assert el < 5 * SLOW


def test_health_unanswered_connect_times_out():
    hole = Blackhole()
    r, el = health(f"http://{hole.spec}/readyz")
    assert r.returncode == 1, f"black hole: exit {r.returncode}\n{r.stderr}"
    assert el < 8 * SLOW, f"health probe took {el:.1f}s against a black hole"


def test_health_silent_server_times_out():
    lsock = socket.socket()
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)  # connects complete in the kernel; nobody answers
        r, el = health(f"http://127.0.0.1:{lsock.getsockname()[1]}/readyz")
    finally:
        lsock.close()
    assert r.returncode == 1, f"silent server: exit {r.returncode}\n{r.stderr}"
    assert el < 8 * SLOW, f"health probe took {el:.1f}s against a silent server"


def test_link_media_through_the_tls_port(tmp_path, echo):
    """A TLS chat listener that passes media through: one port for both,
    mediaPort is the chat port (no plain media listener)."""
    d = start_daemon(tmp_path, stats_config(
        {"chat": [echo.spec], "media": [echo.spec]},
        {"one": {"upstream": "chat", "tls": "on", "passthrough": "media"}},
        public_host="relay.example.org"))
    host, chat, media, tls = parse_link(get_json(d.addr("stats"))["share_link"])
    assert (chat, media, tls) == (d.port("one"), d.port("one"), True)
