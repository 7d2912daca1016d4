"""The dashboard at "/" in headless Chromium, driven over the DevTools
protocol: self-contained, live, with a share link QR code that scans.

Leaves a screenshot in build/dashboard.png (or $DASHBOARD_SCREENSHOT) for
people to look at."""

import base64
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import connect, echo_roundtrip, start_daemon, wait_for
from stats_helpers import (
    REPO, SLOW, Browser, MiB, PacedEcho, get, get_json, http, lifeline_version,
    require_tool, stats_config, zbar_decode)

SCREENSHOT = Path(os.environ.get("DASHBOARD_SCREENSHOT") or REPO / "build" / "dashboard.png")
IDS = ("active", "uptime", "version", "share-link", "listeners", "upstreams", "qr")
CLIENT_IP = "127.0.0.2"


@pytest.fixture(scope="module")
def browser():
    require_tool("zbarimg")
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def relay_config(echo, public_host="relay.example.org"):
    return stats_config(
        {"chat": [echo.spec], "media": [echo.spec]},
        {"jabber": {"upstream": "chat"}, "media": {"upstream": "media"}},
        public_host=public_host)


def _is_favicon(url):
    # Chromium asks for /favicon.ico on its own; that is not the page's load
    return urlsplit(url).path == "/favicon.ico"


def check_page_load(b, origin):
    """Every request the page made went to origin and succeeded; no script
    error.  Returns the list of URLs requested."""
    urls = [e["request"]["url"] for e in b.page_events("Network.requestWillBeSent")]
    foreign = [u for u in urls if not (u == origin or u.startswith(origin + "/")
                                       or u.startswith(("data:", "blob:")))]
    assert not foreign, f"the dashboard loaded other origins: {foreign}"
    bad = [(e["response"]["url"], e["response"]["status"])
           for e in b.page_events("Network.responseReceived")
           if e["response"]["status"] != 200 and not _is_favicon(e["response"]["url"])]
    assert not bad, f"requests that failed: {bad}"
    ids = {e["requestId"]: e["request"]["url"]
           for e in b.page_events("Network.requestWillBeSent")}
    failed = [(ids.get(e["requestId"]), e.get("errorText"))
              for e in b.page_events("Network.loadingFailed")
              if not _is_favicon(ids.get(e["requestId"], ""))]
    assert not failed, f"requests that failed to load: {failed}"
    exc = b.page_events("Runtime.exceptionThrown")
    assert not exc, f"script errors: {[e['exceptionDetails'] for e in exc]}"
    errs = [e["args"] for e in b.page_events("Runtime.consoleAPICalled")
            if e["type"] in ("error", "assert")]
    assert not errs, f"console errors: {errs}"
    return urls


def browser_errors(b):
    """Errors the browser itself logged for the page (blocked loads, CSP
    violations, ...)."""
    return [e["entry"] for e in b.page_events("Log.entryAdded")
            if e["entry"]["level"] == "error"
            and not _is_favicon(e["entry"].get("url", ""))]


def active_number(b):
    t = b.text_of("#active")
    m = re.search(r"\d+", t or "")
    return int(m.group(0)) if m else None


def qr_decode_from_page(b, tmp_path, name="qr.png"):
    """Screenshot of #qr only, rendered at ~400 px wide, decoded."""
    rect = b.eval("(() => { const r = document.getElementById('qr')"
                  ".getBoundingClientRect(); return [r.x + scrollX, r.y + scrollY,"
                  " r.width, r.height]; })()")
    x, y, w, h = rect
    assert w >= 64 and h >= 64, f"QR code drawn at {w}x{h} px: too small to scan"
    pad = 8
    clip = {"x": max(0, x - pad), "y": max(0, y - pad), "width": w + 2 * pad,
            "height": h + 2 * pad, "scale": 400 / w}
    r = b.page("Page.captureScreenshot", {"format": "png", "clip": clip,
                                          "captureBeyondViewport": True}, timeout=30)
    path = tmp_path / name
    path.write_bytes(base64.b64decode(r["data"]))
    return zbar_decode(path)


def test_dashboard_loads_self_contained_and_live(tmp_path, browser, echo):
    d = start_daemon(tmp_path, relay_config(echo))
    st = d.addr("stats")
    origin = f"http://{st[0]}:{st[1]}"

    # the document itself
    r = get(st, "/")
    assert r.headers.get("content-type", "").startswith("text/html"), r.headers
    html = r.text
    for ref in re.findall(r"""(?:\bsrc|\bhref)\s*=\s*["']([^"']*)""", html) + \
            re.findall(r"""url\(\s*["']?([^"')]*)""", html):
        assert not re.match(r"(?i)(https?:)?//", ref) or ref.startswith("https://wa.me/"), \
            f"the page refers to an external resource: {ref}"
    assert "@import" not in html

    b = browser
    b.navigate(origin + "/")
    t_load = time.monotonic()
    for i in IDS:
        assert b.eval(f"document.getElementById('{i}') !== null"), f"no element #{i}"
    assert b.eval("document.querySelectorAll('canvas').length") >= 1, "no chart canvas"
    j = get_json(st)
    assert j["share_link"], j
    version = lifeline_version()
    wait_for(lambda: version in (b.text_of("#version") or ""), 5 * SLOW,
             what=f"#version showing {version}")
    assert b.text_of("#share-link") == j["share_link"]
    assert b.text_of("#uptime")
    assert b.eval("document.getElementById('qr').tagName") == "IMG"
    assert b.eval("new URL(document.getElementById('qr').src).pathname") == "/qr.svg"
    wait_for(lambda: b.eval("(() => { const q = document.getElementById('qr');"
                            " return q.complete && q.naturalWidth > 0; })()"),
             5 * SLOW, what="the QR image loaded")
    wait_for(lambda: active_number(b) == 0, 5 * SLOW, what="#active showing 0")
    listeners_idle = b.text_of("#listeners")
    for name in ("jabber", "media"):
        assert name in listeners_idle, f"{name} not in #listeners: {listeners_idle!r}"
    ups = b.text_of("#upstreams")
    for name in ("chat", "media", echo.spec):
        assert name in ups, f"{name} not in #upstreams: {ups!r}"

    # it refreshes every 2 s: /stats.json asked for again and again
    b.pump_for(max(0.0, 4.5 - (time.monotonic() - t_load)))
    polls = [u for u in (e["request"]["url"] for e in b.page_events("Network.requestWillBeSent"))
             if urlsplit(u).path == "/stats.json"]
    assert len(polls) >= 2, f"/stats.json fetched {len(polls)} times in 4.5 s"

    # live traffic: 5 connections held open from another address, bytes flowing
    held = []
    ports = []
    for _ in range(5):
        s = connect(d.addr("jabber"), source=CLIENT_IP)
        echo_roundtrip(s, b"h" * 1000)
        held.append(s)
        ports.append(s.getsockname()[1])
    xfer = PacedEcho(d.addr("media"), 12 * MiB, rate=2 * MiB)
    try:
        last = {}

        def six():
            last["n"] = active_number(b)
            return last["n"] == 6
        try:
            wait_for(six, 6 * SLOW, interval=0.2, what="#active")
        except AssertionError:
            raise AssertionError(f"#active shows {last.get('n')}, 6 connections are open")
        listeners_busy = b.text_of("#listeners")
        assert listeners_busy != listeners_idle, "#listeners did not change with traffic"
        b.pump_for(3)  # a few more points on the charts
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        b.screenshot(SCREENSHOT)
        dom = b.eval("document.documentElement.outerHTML")
        assert CLIENT_IP not in dom, "a client address appears on the dashboard"
        numbers = {int(n) for n in re.findall(r"(?<![\d.])(\d+)(?![\d.])", dom)}
        configured = {p for addrs in d.ports.values() for _, p in addrs} | {echo.port}
        leaked = sorted((set(ports) & numbers) - configured)
        assert not leaked, f"client source ports {leaked} appear on the dashboard"
    finally:
        xfer.result(30 * SLOW)
        for s in held:
            s.close()
    wait_for(lambda: active_number(b) == 0, 6 * SLOW, interval=0.2,
             what="#active back to 0")
    check_page_load(b, origin)
    assert SCREENSHOT.stat().st_size > 10000


def test_dashboard_qr_scans(tmp_path, browser, echo):
    d = start_daemon(tmp_path, relay_config(echo, public_host="203.0.113.7"))
    st = d.addr("stats")
    origin = f"http://{st[0]}:{st[1]}"
    browser.navigate(origin + "/")
    wait_for(lambda: browser.eval("(() => { const q = document.getElementById('qr');"
                                  " return q !== null && q.complete && q.naturalWidth > 0;"
                                  " })()"), 5 * SLOW, what="the QR image loaded")
    link = get_json(st)["share_link"]
    assert "host=203.0.113.7" in link
    got = qr_decode_from_page(browser, tmp_path)
    assert got == [link], f"QR code on the page decodes to {got}, want {link}"
    check_page_load(browser, origin)


def test_dashboard_without_public_host(tmp_path, browser, echo):
    d = start_daemon(tmp_path, relay_config(echo, public_host=None))
    st = d.addr("stats")
    origin = f"http://{st[0]}:{st[1]}"
    assert http(st, "/qr.svg").status == 404
    browser.navigate(origin + "/")
    browser.pump_for(2.5)
    urls = check_page_load(browser, origin)  # in particular: no /qr.svg 404
    assert not any(urlsplit(u).path == "/qr.svg" for u in urls), urls
    shown = browser.eval("(() => { const q = document.getElementById('qr');"
                         " return q !== null && q.offsetParent !== null"
                         " && q.getAttribute('src') !== null; })()")
    assert not shown, "a QR code is shown without public-host"
    link = browser.text_of("#share-link")
    assert not link or "wa.me" not in link, f"#share-link shows {link!r} without public-host"
    wait_for(lambda: active_number(browser) == 0, 5 * SLOW, what="#active showing 0")


def test_dashboard_no_browser_errors(tmp_path, browser, echo):
    """Nothing the page asks for is blocked: every resource it references
    is allowed by the Content-Security-Policy it is served with."""
    d = start_daemon(tmp_path, relay_config(echo))
    st = d.addr("stats")
    origin = f"http://{st[0]}:{st[1]}"
    browser.navigate(origin + "/")
    browser.pump_for(2.5)
    check_page_load(browser, origin)
    errors = browser_errors(browser)
    csp = http(st, "/").headers.get("content-security-policy")
    assert not errors, f"the browser logged errors loading the dashboard " \
                       f"(Content-Security-Policy: {csp}):\n" + \
                       "\n".join(e["text"] for e in errors)
