"""Helpers for the stats listener, dashboard and share link tests
(test_stats.py, test_dashboard.py, test_link.py).

Everything is stdlib: a one-shot HTTP/1.1 client, a Prometheus text parser,
a PNG writer and QR rasterisers (terminal half blocks, SVG) for zbarimg, and
a small Chrome DevTools Protocol client (websocket framing included) to
drive headless Chromium.

External tools (promtool, zbarimg, chromium) are installed from Debian when
missing and the machine allows it; a test that needs one fails, never skips,
when it is still missing.
"""

import base64
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

import conftest
from conftest import (
    IO_TIMEOUT, chunks, connect, make_config, start_thread, wait_for)

# The sanitizer build is 2-3x slower: widen wall-clock bounds for it.
SLOW = 2.0 if "san" in os.path.basename(os.path.dirname(conftest.LIFELINE_BIN)) else 1.0

REPO = Path(__file__).resolve().parents[2]

MiB = 1 << 20

# --------------------------------------------------------------------------
# external tools

TOOLS = {  # command -> Debian package
    "promtool": "prometheus",
    "zbarimg": "zbar-tools",
    "chromium": "chromium",
}

_apt_updated = False


def require_tool(cmd):
    """Path of `cmd`; installs its Debian package when missing (as root).

    Fails the calling test (never skips) when the tool cannot be had."""
    global _apt_updated
    path = shutil.which(cmd)
    if path:
        return path
    pkg = TOOLS[cmd]
    log = ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # keep Debian from starting the packaged service (prometheus)
        policy = Path("/usr/sbin/policy-rc.d")
        own_policy = not policy.exists()
        try:
            if own_policy:
                policy.write_text("#!/bin/sh\nexit 101\n")
                policy.chmod(0o755)
            for attempt in range(2):
                if attempt or not _apt_updated:
                    r = subprocess.run(["apt-get", "update", "-qq"], env=env,
                                       capture_output=True, text=True, timeout=300)
                    log += r.stdout + r.stderr
                    _apt_updated = True
                r = subprocess.run(
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg],
                    env=env, capture_output=True, text=True, timeout=600)
                log += r.stdout + r.stderr
                if r.returncode == 0:
                    break
        except (OSError, subprocess.TimeoutExpired) as e:
            log += repr(e)
        finally:
            if own_policy:
                try:
                    policy.unlink()
                except OSError:
                    pass
    path = shutil.which(cmd)
    if not path:
        pytest.fail(f"{cmd} is missing (Debian package {pkg!r}; scripts/deps.sh test "
                    f"installs it){': ' + log[-2000:] if log else ''}")
    return path


# --------------------------------------------------------------------------
# config


STATS_SECTION = "\n[stats]\nlisten = 127.0.0.1:0\n"


def stats_config(upstreams, listeners, public_host=None, global_=None,
                 timeouts=None, extra=""):
    """make_config plus a [stats] listener on 127.0.0.1:0 (and public-host)."""
    g = dict(global_ or {})
    if public_host:
        g["public-host"] = public_host
    return make_config(upstreams, listeners, global_=g, timeouts=timeouts,
                       extra=STATS_SECTION + extra)


def lifeline_version():
    r = conftest.run_cli(["--version"])
    assert r.returncode == 0, r.stderr
    m = re.search(r"\d+\.\d+\.\d+\S*", r.stdout + r.stderr)
    assert m, f"no version in --version output: {r.stdout!r} {r.stderr!r}"
    return m.group(0)


# --------------------------------------------------------------------------
# HTTP


class Response:
    def __init__(self, status, reason, headers, body, raw, elapsed):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> value (last wins)
        self.body = body
        self.raw = raw
        self.elapsed = elapsed

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.reason!r} {len(self.body)} bytes>"


def parse_response(raw, head=False):
    """Parse one HTTP/1.x response (read until close).  None when raw is
    empty; raises AssertionError when it is not HTTP."""
    if not raw:
        return None
    end = raw.find(b"\r\n\r\n")
    assert end >= 0, f"response without end of headers: {raw[:300]!r}"
    lines = raw[:end].decode("iso-8859-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
    assert m, f"bad status line {lines[0]!r}"
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        assert sep, f"bad header line {line!r}"
        headers[name.strip().lower()] = value.strip()
    body = raw[end + 4:]
    if "content-length" in headers and not head:
        n = int(headers["content-length"])
        assert len(body) == n, \
            f"Content-Length {n} but {len(body)} body bytes before close"
    return int(m.group(1)), m.group(2) or "", headers, body


def request_bytes(method, path, addr, extra_headers=()):
    host = f"{addr[0]}:{addr[1]}"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}",
             "User-Agent: lifeline-tests", "Accept: */*"]
    lines += list(extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_all(sock, timeout):
    """Read until EOF; returns (bytes, how) with how in eof|reset|timeout."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(buf), "timeout"
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return bytes(buf), "timeout"
        except (ConnectionResetError, ConnectionAbortedError):
            return bytes(buf), "reset"
        if not d:
            return bytes(buf), "eof"
        buf += d


def http(addr, path="/", method="GET", raw=None, timeout=5.0 * SLOW, source=None):
    """One request on a fresh connection; the server must close it after
    the response (one request per connection).  Returns a Response."""
    t0 = time.monotonic()
    s = connect(addr, source=source, timeout=timeout)
    try:
        s.sendall(raw if raw is not None else request_bytes(method, path, addr))
        data, how = read_all(s, timeout)
    finally:
        s.close()
    assert how != "timeout", \
        f"{method} {path}: connection not closed within {timeout}s " \
        f"after {len(data)} bytes: {data[:200]!r}"
    assert data, f"{method} {path}: closed ({how}) without a response"
    status, reason, headers, body = parse_response(data, head=(method == "HEAD"))
    return Response(status, reason, headers, body, data, time.monotonic() - t0)


def get(addr, path, expect=200, **kw):
    r = http(addr, path, **kw)
    if expect is not None:
        assert r.status == expect, f"GET {path}: {r.status} {r.reason}\n{r.text[:1000]}"
    return r


def get_json(addr):
    r = get(addr, "/stats.json")
    ct = r.headers.get("content-type", "")
    assert ct.startswith("application/json"), f"/stats.json Content-Type {ct!r}"
    return r.json()


# --------------------------------------------------------------------------
# Prometheus text format

_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*$')
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*(,|$)')


def _unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def _value(s):
    specials = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    return specials[s] if s in specials else float(s)


class Metrics:
    """Samples of one /metrics scrape."""

    def __init__(self, text):
        self.text = text
        self.samples = []  # (name, {labels}, value)
        self.types = {}
        self.helps = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3] if len(parts) > 3 else ""
                elif len(parts) >= 3 and parts[1] == "HELP":
                    self.helps[parts[2]] = parts[3] if len(parts) > 3 else ""
                continue
            m = _SAMPLE.match(line)
            assert m, f"unparsable metrics line {line!r}"
            name, ltext, val = m.groups()
            labels = {}
            if ltext:
                pos = 0
                while pos < len(ltext):
                    lm = _LABEL.match(ltext, pos)
                    assert lm, f"bad labels in {line!r}"
                    labels[lm.group(1)] = _unescape(lm.group(2))
                    pos = lm.end()
            self.samples.append((name, labels, _value(val)))

    def select(self, name, **labels):
        return [(l, v) for n, l, v in self.samples if n == name
                and all(l.get(k) == str(want) for k, want in labels.items())]

    def get(self, name, **labels):
        """The value of the one sample of `name` whose labels include
        `labels`; None when there is none."""
        found = self.select(name, **labels)
        assert len(found) <= 1, f"{name}{labels}: {len(found)} samples: {found}"
        return found[0][1] if found else None

    def need(self, name, **labels):
        v = self.get(name, **labels)
        assert v is not None, f"no sample {name}{labels} in /metrics:\n{self.text}"
        return v

    def total(self, name, **labels):
        return sum(v for _, v in self.select(name, **labels))

    def names(self):
        return {n for n, _, _ in self.samples}


def scrape(addr):
    r = get(addr, "/metrics")
    ct = r.headers.get("content-type", "")
    assert ct.startswith("text/plain") and "version=0.0.4" in ct, \
        f"/metrics Content-Type {ct!r}, want text/plain; version=0.0.4"
    return Metrics(r.text)


def wait_metric(addr, name, want, timeout=5.0 * SLOW, **labels):
    """Wait until sample name{labels} == want; returns the last Metrics."""
    last = {}

    def check():
        m = scrape(addr)
        last["m"] = m
        last["v"] = m.get(name, **labels)
        return m if last["v"] == want else None
    try:
        return wait_for(check, timeout, interval=0.1, what=f"{name}{labels} == {want}")
    except AssertionError:
        raise AssertionError(
            f"{name}{labels} is {last.get('v')} after {timeout}s, want {want}")


def promtool_check(text):
    promtool = require_tool("promtool")
    r = subprocess.run([promtool, "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, \
        f"promtool check metrics failed ({r.returncode}):\n{r.stdout}{r.stderr}"
    return r.stdout + r.stderr


# --------------------------------------------------------------------------
# upstream handlers and servers


def h_sink_then_reply(c, rec):
    """Read until EOF (counting), then send as many bytes as the first 8
    bytes asked for (big-endian), then close.

    A connection that sends nothing (a health check) gets nothing."""
    buf = bytearray()
    n = 0
    while True:
        d = c.recv(1 << 18)
        if not d:
            break
        if len(buf) < 8:
            buf += d[:8 - len(buf)]
        n += len(d)
    rec["bytes"] = n
    if n >= 8:
        want = struct.unpack("!Q", bytes(buf[:8]))[0]
        rng = random.Random(want)
        for ch in chunks(want, rng):
            c.sendall(ch)
        rec["sent"] = want


def sink_then_reply_client(addr, up, down, source=None):
    """Send `up` bytes (>= 8; the first 8 ask for `down` bytes back),
    half-close, read until EOF.  Returns the number of bytes received."""
    assert up >= 8
    s = connect(addr, source=source)
    s.sendall(struct.pack("!Q", down))
    left = up - 8
    rng = random.Random(up)
    for ch in chunks(left, rng):
        s.sendall(ch)
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        d = s.recv(1 << 18)
        if not d:
            break
        got += len(d)
    s.close()
    return got


class PortServer:
    """Echo server on a chosen port (SO_REUSEADDR) that can be stopped and
    started again on the same port: port 0 takes conftest.free_port(),
    held for the test, so no other process gets the port while the server
    is stopped.  Registered for conftest's cleanup."""

    def __init__(self, port=0, host="127.0.0.1"):
        self.host = host
        self.port = port or conftest.free_port(host)
        self.lsock = None
        self.thread = None
        self.stopping = threading.Event()
        self.conns = []
        self.lock = threading.Lock()
        conftest._SERVERS.append(self)

    @property
    def spec(self):
        return f"{self.host}:{self.port}"

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        s.settimeout(0.05)
        self.port = s.getsockname()[1]
        self.lsock = s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(s, self.stopping),
                                       daemon=True, name="portserver")
        self.thread.start()
        return self

    def _loop(self, lsock, stopping):
        while not stopping.is_set():
            try:
                c, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            c.settimeout(IO_TIMEOUT)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
            self.thread = None
        if self.lsock is not None:
            self.lsock.close()
            self.lsock = None
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class PacedEcho:
    """Background client: `size` bytes through an echo relay at `rate`
    bytes/s, reading the echo concurrently; result() checks it came back
    intact."""

    def __init__(self, addr, size, rate, seed=7):
        self.size = size
        self.error = None
        self.sent_sha = None
        self.recv_sha = None
        self.recv_len = 0
        self.elapsed = None
        self.sock = connect(addr)
        rng = random.Random(seed)
        t0 = time.monotonic()

        def sender():
            try:
                h = hashlib.sha256()
                sent = 0
                for ch in chunks(size, rng, max_chunk=64 << 10):
                    self.sock.sendall(ch)
                    h.update(ch)
                    sent += len(ch)
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
                self.sent_sha = h.hexdigest()
                self.sock.shutdown(socket.SHUT_WR)
            except Exception as e:
                self.error = e

        def receiver():
            try:
                h = hashlib.sha256()
                while True:
                    d = self.sock.recv(1 << 18)
                    if not d:
                        break
                    h.update(d)
                    self.recv_len += len(d)
                self.recv_sha = h.hexdigest()
                self.elapsed = time.monotonic() - t0
            except Exception as e:
                self.error = e

        self.threads = [start_thread(sender, name="paced-send"),
                        start_thread(receiver, name="paced-recv")]

    def result(self, timeout):
        for t in self.threads:
            conftest.join(t, timeout)
        if self.error is not None:
            raise self.error
        assert self.recv_len == self.size, \
            f"echo transfer got {self.recv_len} of {self.size} bytes back"
        assert self.recv_sha == self.sent_sha, "echo transfer corrupted"
        return self.elapsed


# --------------------------------------------------------------------------
# bitmaps, PNG, zbarimg


def write_png(path, bitmap, scale=8, quiet=4):
    """bitmap: rows of booleans (True = dark).  Adds `quiet` light modules
    around it and scales every module to scale x scale pixels (8-bit gray)."""
    h = len(bitmap)
    w = max(len(r) for r in bitmap) if h else 0
    W, H = (w + 2 * quiet) * scale, (h + 2 * quiet) * scale
    light_row = b"\x00" + b"\xff" * W
    rows = []
    for _ in range(quiet * scale):
        rows.append(light_row)
    for r in bitmap:
        line = bytearray(b"\xff" * (quiet * scale))
        for x in range(w):
            dark = x < len(r) and r[x]
            line += (b"\x00" if dark else b"\xff") * scale
        line += b"\xff" * (quiet * scale)
        row = b"\x00" + bytes(line)
        rows.extend([row] * scale)
    for _ in range(quiet * scale):
        rows.append(light_row)
    raw = b"".join(rows)

    def chunk(tag, data):
        c = struct.pack("!I", len(data)) + tag + data
        return c + struct.pack("!I", zlib.crc32(tag + data) & 0xffffffff)

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack("!IIBBBBB", W, H, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6))
    png += chunk(b"IEND", b"")
    Path(path).write_bytes(png)
    return path


def zbar_decode(png_path):
    """Texts of the barcodes zbarimg finds in the image (list)."""
    zbarimg = require_tool("zbarimg")
    r = subprocess.run([zbarimg, "-q", "--raw", str(png_path)],
                       capture_output=True, timeout=30)
    # exit 4: no symbol found
    assert r.returncode in (0, 4), \
        f"zbarimg exited {r.returncode}: {r.stderr.decode('utf-8', 'replace')}"
    return [l for l in r.stdout.decode("utf-8", "replace").splitlines() if l]


HALF_BLOCKS = {" ": (False, False), "\u2580": (True, False),
               "\u2584": (False, True), "\u2588": (True, True)}


def halfblocks_to_bitmap(lines):
    """Terminal QR (one text line = two module rows) -> rows of booleans."""
    width = max(len(l) for l in lines)
    top_rows = []
    for l in lines:
        l = l.ljust(width)
        bad = set(l) - set(HALF_BLOCKS)
        assert not bad, f"unexpected characters {bad!r} in QR line {l!r}"
        top_rows.append([HALF_BLOCKS[c][0] for c in l])
        top_rows.append([HALF_BLOCKS[c][1] for c in l])
    return top_rows


_LIGHT = {"#fff", "#ffffff", "white", "none", "transparent", "#ffff", "#ffffffff"}


def _path_polygons(d):
    """Closed polygons of an SVG path made of M/L/H/V/Z (either case)."""
    toks = re.findall(r"[MmLlHhVvZz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", d)
    bad = re.sub(r"[MmLlHhVvZz\d\s,.eE+-]", "", d)
    if bad:
        raise ValueError(f"unsupported SVG path commands {sorted(set(bad))}")
    polys, cur = [], []
    x = y = 0.0
    start = (0.0, 0.0)
    cmd = None
    i = 0

    def num():
        nonlocal i
        v = float(toks[i])
        i += 1
        return v

    while i < len(toks):
        t = toks[i]
        if re.match(r"[A-Za-z]", t):
            cmd = t
            i += 1
            if cmd in "Zz":
                if cur:
                    polys.append(cur)
                cur = []
                x, y = start
                continue
        elif cmd is None:
            raise ValueError("path data without a command")
        if cmd in "Mm":
            nx, ny = num(), num()
            if cmd == "m":
                nx, ny = x + nx, y + ny
            if cur:
                polys.append(cur)
            x, y = nx, ny
            start = (x, y)
            cur = [(x, y)]
            cmd = "L" if cmd == "M" else "l"  # implicit lineto after moveto
        elif cmd in "Ll":
            nx, ny = num(), num()
            if cmd == "l":
                nx, ny = x + nx, y + ny
            x, y = nx, ny
            cur.append((x, y))
        elif cmd in "Hh":
            v = num()
            x = x + v if cmd == "h" else v
            cur.append((x, y))
        elif cmd in "Vv":
            v = num()
            y = y + v if cmd == "v" else v
            cur.append((x, y))
        elif cmd in "Zz":
            pass
    if cur:
        polys.append(cur)
    return polys


def svg_to_bitmap(svg_text, px_per_unit=None):
    """Rasterise a simple SVG (rects and M/L/H/V/Z paths, painted in order,
    nonzero fill) into rows of booleans, sampling pixel centres."""
    root = ET.fromstring(svg_text)
    assert root.tag.endswith("svg"), f"not an SVG document: {root.tag}"
    vb = root.get("viewBox")
    if vb:
        vx, vy, vw, vh = (float(v) for v in re.split(r"[\s,]+", vb.strip()))
    else:
        vx = vy = 0.0
        vw = float(re.match(r"[\d.]+", root.get("width")).group(0))
        vh = float(re.match(r"[\d.]+", root.get("height")).group(0))
    if px_per_unit is None:
        px_per_unit = max(1, math.ceil(200 / max(vw, vh)))
    W, H = int(round(vw * px_per_unit)), int(round(vh * px_per_unit))
    img = [[False] * W for _ in range(H)]

    def fill_of(el):
        f = el.get("fill")
        style = el.get("style") or ""
        m = re.search(r"fill\s*:\s*([^;]+)", style)
        if m:
            f = m.group(1).strip()
        return f

    def paint(polys, dark):
        # nonzero winding, one scanline per pixel row
        edges = []
        for p in polys:
            for (x0, y0), (x1, y1) in zip(p, p[1:] + p[:1]):
                if y0 != y1:
                    edges.append((x0, y0, x1, y1))
        rows = {}
        for e in edges:
            x0, y0, x1, y1 = e
            lo, hi = min(y0, y1), max(y0, y1)
            r0 = max(0, math.ceil((lo - vy) * px_per_unit - 0.5))
            r1 = min(H - 1, math.ceil((hi - vy) * px_per_unit - 0.5) - 1)
            for r in range(r0, r1 + 1):
                rows.setdefault(r, []).append(e)
        for r, es in rows.items():
            sy = vy + (r + 0.5) / px_per_unit
            xs = []
            for x0, y0, x1, y1 in es:
                if min(y0, y1) <= sy < max(y0, y1):
                    t = (sy - y0) / (y1 - y0)
                    xs.append((x0 + t * (x1 - x0), 1 if y1 > y0 else -1))
            xs.sort()
            wind = 0
            for k, (x, dwind) in enumerate(xs):
                wind += dwind
                if wind != 0 and k + 1 < len(xs):
                    xa, xb = x, xs[k + 1][0]
                    c0 = max(0, math.ceil((xa - vx) * px_per_unit - 0.5))
                    c1 = min(W - 1, math.ceil((xb - vx) * px_per_unit - 0.5) - 1)
                    for c in range(c0, c1 + 1):
                        img[r][c] = dark

    def walk(el, inherited_fill):
        f = fill_of(el) or inherited_fill
        tag = el.tag.rsplit("}", 1)[-1]
        if tag in ("defs", "title", "desc", "style", "metadata"):
            return
        if el.get("transform"):
            raise ValueError("SVG transforms are not supported by this rasteriser")
        dark = (f or "#000").strip().lower() not in _LIGHT
        if tag == "rect":
            x = float(el.get("x", 0))
            y = float(el.get("y", 0))
            w = float(el.get("width"))
            h = float(el.get("height"))
            paint([[(x, y), (x + w, y), (x + w, y + h), (x, y + h)]], dark)
        elif tag == "path":
            paint(_path_polygons(el.get("d", "")), dark)
        elif tag in ("svg", "g"):
            for ch in el:
                walk(ch, f)
        else:
            raise ValueError(f"unsupported SVG element <{tag}>")

    walk(root, None)
    return img


# --------------------------------------------------------------------------
# headless Chromium over the DevTools protocol


class WebSocket:
    """Minimal RFC 6455 client (text frames, masking, fragmentation)."""

    def __init__(self, url, timeout=15.0):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        assert m, url
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = self.sock.recv(4096)
            assert d, "websocket handshake: connection closed"
            buf += d
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), f"websocket handshake: {head!r}"
        self.lock = threading.Lock()

    def _recv_exact(self, n):
        while len(self.buf) < n:
            d = self.sock.recv(1 << 20)
            if not d:
                raise EOFError("websocket closed")
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        hdr = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        with self.lock:
            self.sock.sendall(hdr + mask + masked)

    def send(self, text):
        self._send_frame(0x1, text.encode())

    def recv(self, timeout):
        """One complete text message, or None on timeout."""
        self.sock.settimeout(timeout)
        msg = b""
        try:
            while True:
                b0, b1 = self._recv_exact(2)
                self.sock.settimeout(IO_TIMEOUT)  # the rest of a started frame
                n = b1 & 0x7f
                if n == 126:
                    n = struct.unpack("!H", self._recv_exact(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._recv_exact(8))[0]
                if b1 & 0x80:
                    mask = self._recv_exact(4)
                    data = bytes(b ^ mask[i & 3] for i, b in enumerate(self._recv_exact(n)))
                else:
                    data = self._recv_exact(n)
                op = b0 & 0x0f
                if op == 0x9:
                    self._send_frame(0xA, data)
                    continue
                if op == 0x8:
                    raise EOFError("websocket closed by peer")
                if op in (0x0, 0x1, 0x2):
                    msg += data
                    if b0 & 0x80:
                        return msg.decode("utf-8")
        except socket.timeout:
            if msg:
                raise
            return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Browser:
    """Headless Chromium with a DevTools websocket, one page (flat session)."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--no-default-browser-check",
             "--disable-default-apps", "--disable-extensions", "--mute-audio",
             "--hide-scrollbars", "--disable-dev-shm-usage",
             "--window-size=1280,900"]

    def __init__(self, width=1280, height=900):
        chromium = require_tool("chromium")
        self.tmp = tempfile.mkdtemp(prefix="lifeline-chromium-")
        self.log = open(os.path.join(self.tmp, "chromium.log"), "wb")
        self.proc = subprocess.Popen(
            [chromium] + self.FLAGS + [f"--user-data-dir={self.tmp}",
                                       "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            start_new_session=True)
        self.ws = None
        self.events = []
        self.pending = {}
        self.next_id = 0
        try:
            portfile = Path(self.tmp) / "DevToolsActivePort"

            def ready():
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"chromium exited {self.proc.returncode}:\n{self.log_text()}")
                try:
                    lines = portfile.read_text().split("\n")
                except FileNotFoundError:
                    return None
                return lines if len(lines) >= 2 and lines[1].strip() else None
            lines = wait_for(ready, 30 * SLOW, interval=0.05,
                             what="chromium's DevToolsActivePort")
            self.ws = WebSocket(f"ws://127.0.0.1:{int(lines[0])}{lines[1].strip()}")
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget",
                                     {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=self.session)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1,
                       "mobile": False}, session=self.session)
        except BaseException:
            self.close()
            raise

    def log_text(self):
        try:
            return Path(self.tmp, "chromium.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _pump(self, timeout):
        msg = self.ws.recv(timeout)
        if msg is None:
            return False
        m = json.loads(msg)
        if "id" in m:
            self.pending[m["id"]] = m
        else:
            self.events.append(m)
        return True

    def call(self, method, params=None, session=None, timeout=20.0):
        self.next_id += 1
        mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while mid not in self.pending:
            left = deadline - time.monotonic()
            assert left > 0, f"DevTools {method}: no answer within {timeout}s"
            self._pump(min(left, 0.5))
        m = self.pending.pop(mid)
        assert "error" not in m, f"DevTools {method}: {m['error']}"
        return m.get("result", {})

    def page(self, method, params=None, timeout=20.0):
        return self.call(method, params, session=self.session, timeout=timeout)

    def wait_event(self, pred, timeout, what="DevTools event"):
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if pred(ev):
                    return ev
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            self._pump(min(left, 0.2))

    def pump_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(max(0.01, min(0.2, deadline - time.monotonic())))

    def navigate(self, url, timeout=15.0 * SLOW):
        self.events.clear()
        r = self.page("Page.navigate", {"url": url})
        assert not r.get("errorText"), f"navigate {url}: {r.get('errorText')}"
        self.wait_event(lambda e: e.get("method") == "Page.loadEventFired"
                        and e.get("sessionId") == self.session, timeout,
                        what=f"load event of {url}")

    def eval(self, expr, timeout=10.0):
        r = self.page("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": True}, timeout=timeout)
        assert "exceptionDetails" not in r, \
            f"evaluate {expr!r}: {r['exceptionDetails']}"
        return r["result"].get("value")

    def text_of(self, selector):
        return self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f" return e === null ? null : e.textContent.trim(); }})()")

    def screenshot(self, path):
        """The whole page (beyond the viewport's height) as a PNG file."""
        w, h = self.eval("[document.documentElement.scrollWidth,"
                         " document.documentElement.scrollHeight]")
        r = self.page("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": max(w, 1), "height": min(max(h, 1), 6000),
                     "scale": 1}}, timeout=30)
        data = base64.b64decode(r["data"])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return path

    def page_events(self, method):
        return [e["params"] for e in self.events
                if e.get("method") == method and e.get("sessionId") == self.session]

    def close(self):
        if self.ws is not None:
            try:
                self.call("Browser.close", timeout=3)
            except Exception:
                pass
            self.ws.close()
            self.ws = None
        if self.proc.poll() is None:
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        # the session's helpers (zygote, renderers) share its process group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
