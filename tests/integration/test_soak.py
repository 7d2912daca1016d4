"""Soak (issue 14): connection loops over an impaired client link for
SOAK_DURATION seconds (default 180; `make soak DURATION=600`).

Each of LOOPS loops opens one connection after another, each to a random
listener kind (plain, TLS, accept-proxy with a PROXY v2 header first,
accept-proxy + TLS), with random sizes each way (0 B to 8 MiB, most
chat-sized, some bulk), random pauses while sending and reading (shorter
than the timeouts), a random order (both ways at once, the client
half-closing first, or the upstream first: half-closes each way with the
other direction still moving), and a fraction of resets mid-stream by the
client or by the upstream.  The client tells the upstream what to do in
a preamble, the first bytes of its upload.

Every connection is checked: completed ones by SHA-256 of every byte both
ways, a FIN each way (TLS: close_notify, then FIN) and a clean end on
both peers (the TCP state closes, no error); reset ones by the other peer
seeing the RST, and what each side got being an exact prefix of what the
other sent.  The daemon's resident memory must grow by less than 5% from
after the warm-up to the end, its descriptors come back to the baseline,
and it still relays on every listener kind afterwards.  One summary line
gives the figures.

The clients and the upstream are driven by this one thread over epoll.
500 loops (about 400 connections open at any moment, some 300 new ones a
second, 90 Mbit/s each way on average) is what this 2-core machine
sustains next to the daemon and the link's delay shim: the peers use
about half a core, the shim half a core, the daemon a quarter; with more
loops the timers run late.  SOAK_LOOPS changes it.  docs/RELIABILITY.md
says what this proves.
"""

import collections
import errno
import faulthandler
import hashlib
import heapq
import os
import random
import re
import resource
import select
import socket
import ssl
import struct
import time

import pytest

from conftest import SLOW, chunks, make_config
from netns import (  # noqa: F401 (fixtures)
    CLIENT_IP, RELAY_IP, UPSTREAM_IPS, net, netns_shim, nsx, tcp_state)
from test_proxy_protocol import v2_header
from tls_helpers import client_ctx

KiB = 1 << 10
MiB = 1 << 20

DURATION = float(os.environ.get("SOAK_DURATION", "180"))
# Connection loops, each opening one connection after another.
LOOPS = int(os.environ.get("SOAK_LOOPS", "500"))
# Resident memory: the mean of the per-second samples over the WINDOW
# (share of the duration) that follows the warm-up (WARMUP of the
# duration, WARMUP_MIN seconds at least), against the mean over the last
# WINDOW: the same load in both.  Under this load the daemon's memory
# grows for about a minute, then moves by 3-5% from one second to the
# next and back (buffers of the connections open at that second,
# allocator trimming); means over a fifth of the time each are steady
# within about 1.5% (measured), and a leak of 25 bytes per connection
# would still add 5%.  Under RSS_MIN_DURATION seconds there is no room
# for both windows after the warm-up: the figures are printed, not
# checked.
WARMUP, WARMUP_MIN, WINDOW, RSS_MIN_DURATION = 0.2, 60, 0.2, 120
KINDS = ("plain", "tls", "pp", "pp-tls")

# The client link: 20 ms +-5 ms each way, 1% loss each way, 200 Mbit/s
# each way (the workload's peaks reach it: the bottleneck drops too).
DELAY_MS, JITTER_MS, LOSS_PCT, RATE_KBIT = 20, 5, 1, 200_000
# The daemon's timeouts, all 30 s but `connect` (the upstream link is not
# impaired): every pause (3 s at most) is well under them, and so are the
# stalls of the lossy link.  With `client-fin` at 10 s, 1 connection in
# about 50,000 was cut by it while the machine was overloaded by other
# work (a client's last 59 bytes were not relayed within 10 s; not
# seen again, even with a capture under load).  A relay that never read
# bytes it had would still be caught: it cuts at 30 s as well.  The
# timeouts themselves are tested in test_hostile.py.
TIMEOUTS = {"connect": "2s", "handshake": "30s", "client": "30s",
            "server": "30s", "client-fin": "30s", "server-fin": "30s"}
MAX_PAUSE = 3.0
MAX_CHUNK = 64 * KiB

# What the client sends first (inside TLS, after the PROXY header): who
# it is, how much each side sends, in which order, who resets, and when
# the upstream does.
PRE = struct.Struct("!4sQQQBBQQ")
MAGIC = b"SOAK"
ORDERS = ("both", "client-first", "upstream-first")
FATES = ("normal", "client-reset", "upstream-reset")


# --------------------------------------------------------------------------
# the workload


def pick_size(rng):
    """0 B to 8 MiB, skewed small: most chat-sized, some bulk."""
    r = rng.random()
    if r < 0.05:
        return 0
    if r < 0.68:
        return rng.randint(1, 2 * KiB)
    lo, hi = ((2 * KiB, 64 * KiB) if r < 0.95 else
              (64 * KiB, MiB) if r < 0.995 else (MiB, 8 * MiB))
    return min(hi, int(lo * (hi / lo) ** rng.random()))


def pick_pauses(rng, size):
    """Pauses at byte offsets of one direction: [(offset, seconds)],
    latest first (popped from the end)."""
    if rng.random() >= 0.6:
        return []
    out = []
    for _ in range(rng.randint(1, 3)):
        dur = (rng.uniform(0.01, 0.5) if rng.random() < 0.6
               else rng.uniform(0.5, MAX_PAUSE))
        out.append((rng.randint(0, size), dur))
    return sorted(out, reverse=True)


def stream_seed(cid, direction):
    return cid * 2 + (direction == "down")


def stream(size, seed):
    """The bytes a side sends: random slices of conftest.RANDOM."""
    return chunks(size, random.Random(seed), max_chunk=MAX_CHUNK)


def prefix_sha(size, seed, n):
    """SHA-256 of the first n bytes of stream(size, seed)."""
    h = hashlib.sha256()
    for ch in stream(size, seed):
        if n <= 0:
            break
        h.update(ch[:n])
        n -= len(ch)
    return h.hexdigest()


def make_plan(rng, cid, kind):
    up, down = pick_size(rng), pick_size(rng)
    order = rng.choices(ORDERS, (2, 1, 1))[0]
    fate = rng.choices(FATES, (86, 7, 7))[0]
    p = {"cid": cid, "kind": kind, "up": up, "down": down, "order": order,
         "fate": fate, "c_limit": up, "c_after": 0, "u_limit": down,
         "u_after": 0, "rst_delay": rng.uniform(0.0, 0.2)}
    if fate == "client-reset":
        # The client sends part of its upload, never a FIN, and resets
        # once the upstream is known to be there (bytes or its FIN came).
        if order == "client-first":
            order = p["order"] = "both"
        if order == "both" and down == 0:
            down = p["down"] = p["u_limit"] = rng.randint(1, 2 * KiB)
        p["c_limit"] = rng.randint(0, up)
        p["c_after"] = rng.randint(1, down) if order == "both" else down
    elif fate == "upstream-reset":
        p["u_limit"] = rng.randint(0, down)
        p["u_after"] = rng.randint(0, up) if order == "both" else 0
    p["c_spauses"] = pick_pauses(rng, p["c_limit"])
    p["c_rpauses"] = pick_pauses(rng, down)
    return p


def preamble(p):
    return PRE.pack(MAGIC, p["cid"], p["up"], p["down"],
                    ORDERS.index(p["order"]), FATES.index(p["fate"]),
                    p["u_limit"], p["u_after"])


# --------------------------------------------------------------------------
# one thread, one epoll, many sockets


class Engine:
    def __init__(self):
        self.ep = select.epoll()
        self.objs = {}
        self.masks = {}
        self.timers = []
        self.seq = 0
        self.lags = []

    def watch(self, obj, fd, mask):
        old = self.masks.get(fd, 0)
        if mask == old:
            return
        if mask == 0:
            self.ep.unregister(fd)
            del self.masks[fd], self.objs[fd]
        elif old == 0:
            self.ep.register(fd, mask)
            self.masks[fd], self.objs[fd] = mask, obj
        else:
            self.ep.modify(fd, mask)
            self.masks[fd] = mask

    def at(self, delay, fn, *args):
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self.seq, fn,
                                     args))

    def run(self, done, deadline):
        """Serve sockets and timers until done() or the deadline."""
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return False
            timeout = 0.05
            if self.timers:
                timeout = min(timeout, max(0.0, self.timers[0][0] - now))
            for fd, ev in self.ep.poll(timeout, 512):
                obj = self.objs.get(fd)
                if obj is not None:
                    obj.on_event(ev)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                when, _, fn, args = heapq.heappop(self.timers)
                self.lags.append(now - when)
                fn(*args)
        return True


IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERRS = select.EPOLLERR | select.EPOLLHUP
RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Side:
    """One end of one relayed connection (client or upstream): sends its
    stream (pausing at offsets, holding it back until the peer's FIN when
    the order says so), hashes what it receives, and ends with a FIN
    (TLS: close_notify first) or, when it is the resetter, an RST."""

    def __init__(self, soak, sock):
        self.soak, self.eng = soak, soak.eng
        self.sock, self.fd = sock, sock.fileno()
        self.t0 = time.monotonic()
        self.tls = None
        self.hs_done = True
        self.rout = bytearray()  # raw bytes to send (header, TLS records)
        self.src, self.cur = None, None
        self.total = 0  # payload bytes to send (the resetter: its limit)
        self.sent = 0
        self.shash = hashlib.sha256()
        self.gated = False  # the payload waits for the peer's FIN
        self.spauses, self.spaused = [], False
        self.fin = 0  # 1: close_notify queued, 2: FIN sent
        self.rn = 0
        self.rhash = hashlib.sha256()
        self.rpauses, self.rpaused = [], False
        self.eof = None  # "eof", "close_notify", "truncated"
        self.raw_eof = False
        self.resetter = False
        self.rst_due = False
        self.state = "open"  # "connecting", "closing", "done"
        self.end = None
        self.error = None
        self.t_fin = self.t_eof = None  # when our FIN went, theirs came

    # -- what we wait for

    def describe(self):
        st = "-"
        if self.state not in ("done", "connecting"):
            try:
                st = tcp_state(self.sock)
            except OSError:
                pass
        cur = None if self.cur is None else len(self.cur)
        return (f"{type(self).__name__} {self.state} tcp {st} age "
                f"{time.monotonic() - self.t0:.1f}s sent {self.sent}/"
                f"{self.total} cur {cur} rout {len(self.rout)} fin {self.fin} got {self.rn} eof "
                f"{self.eof} raw_eof {self.raw_eof} paused s{self.spaused} "
                f"r{self.rpaused} gated {self.gated} hs {self.hs_done} "
                f"rst_due {self.rst_due} end {self.end} err {self.error} "
                f"mask {self.eng.masks.get(self.fd)}")

    def peer_fin(self):
        return self.eof == ("close_notify" if self.tls else "eof")

    def want_read(self):
        return (self.state == "open" and not self.rpaused
                and not self.raw_eof)

    def can_produce(self):
        return (not self.spaused and self.hs_done and
                (self.cur is not None or self.sent < self.total) and
                (not self.gated or self.peer_fin()))

    def want_write(self):
        return self.state == "open" and (bool(self.rout) or
                                         self.can_produce())

    def update(self):
        if self.state == "connecting":
            return
        mask = (IN if self.want_read() else 0) | (
            OUT if self.want_write() else 0)
        self.eng.watch(self, self.fd, mask)

    # -- events

    def on_event(self, ev):
        if self.state == "connecting":
            self.on_connected()
        else:
            if ev & (IN | ERRS) and self.want_read():
                self.do_read()
            if ev & (OUT | ERRS) and self.want_write():
                self.do_write()
            self.progress()
        if self.state != "done":
            self.update()

    def do_read(self):
        for _ in range(8):
            try:
                d = self.sock.recv(256 * KiB)
            except BlockingIOError:
                return
            except RESET_ERRORS:
                return self.got_reset("recv")
            if self.tls is not None:
                if d:
                    self.tls_in(d)
                else:
                    self.raw_eof = True
                    self.inc.write_eof()
                    self.tls_in(b"")
                if self.state != "open" or self.rpaused or self.raw_eof:
                    return
                continue
            if not d:
                self.raw_eof = True
                self.eof = "eof"
                return
            self.got(d)
            if self.rpaused:
                return

    def tls_in(self, d):
        if d:
            self.inc.write(d)
        if not self.hs_done:
            self.handshake()
            if not self.hs_done:
                return
        self.tls_drain()

    def tls_drain(self):
        while self.state == "open" and not self.rpaused:
            if self.eof is not None:
                if self.inc.pending:  # bytes after close_notify
                    self.fail(f"{self.inc.pending} bytes after {self.eof}")
                return
            try:
                d = self.tls.read(256 * KiB)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.eof = "close_notify"
                continue
            except ssl.SSLEOFError:
                self.eof = "truncated"  # TCP FIN without close_notify
                return
            except ssl.SSLError as e:
                return self.fail(f"TLS: {e!r}")
            if not d:
                self.eof = "close_notify"
                continue
            self.got(d)

    def got(self, d):
        self.rn += len(d)
        self.rhash.update(d)
        if self.rpauses and self.rn >= self.rpauses[-1][0]:
            self.rpaused = True
            self.eng.at(self.rpauses.pop()[1], self.resume_read)

    def resume_read(self):
        if self.state != "open":
            return
        self.rpaused = False
        if self.tls is not None and self.hs_done:
            self.tls_drain()
        self.progress()
        if self.state != "done":
            self.update()

    def resume_send(self):
        if self.state != "open":
            return
        self.spaused = False
        self.progress()
        if self.state != "done":
            self.update()

    def flush(self):
        while self.rout:
            try:
                n = self.sock.send(self.rout)
            except BlockingIOError:
                return False
            except RESET_ERRORS:
                self.got_reset("send")
                return False
            del self.rout[:n]
        return True

    def next_chunk(self):
        ch = next(self.src)
        return ch[:self.total - self.sent]

    def do_write(self):
        if not self.flush():
            return
        budget = 512 * KiB
        while budget > 0 and self.can_produce():
            if self.cur is None:
                self.cur = self.next_chunk()
            cur = self.cur
            if self.tls is not None:
                self.tls.write(cur)
                self.rout += self.outg.read()
                n = len(cur)
            else:
                try:
                    n = self.sock.send(cur)
                except BlockingIOError:
                    return
                except RESET_ERRORS:
                    return self.got_reset("send")
            self.shash.update(cur[:n])
            self.sent += n
            budget -= n
            self.cur = cur[n:] if n < len(cur) else None
            if self.spauses and self.sent >= self.spauses[-1][0]:
                self.spaused = True
                self.eng.at(self.spauses.pop()[1], self.resume_send)
            if self.rout and not self.flush():
                return
            if self.cur is not None:
                return  # the socket is full
        self.flush()

    def progress(self):
        """FIN when all is sent, RST when the resetter's time has come,
        the clean ending once both FINs have crossed."""
        if self.state != "open":
            return
        done_sending = (self.hs_done and self.cur is None
                        and self.sent >= self.total
                        and (not self.gated or self.peer_fin()))
        if self.resetter:
            if (done_sending and not self.rout and not self.rst_due
                    and self.rst_ready()):
                self.rst_due = True
                self.eng.at(self.plan["rst_delay"], self.reset)
        elif self.fin == 0 and done_sending:
            if self.tls is None:
                self.fin = 1
            elif (not self.rpaused and not self.inc.pending
                  and not self.tls.pending()):
                # close_notify while nothing undecrypted waits (the
                # second SSL_shutdown inside unwrap() reads records)
                try:
                    self.tls.unwrap()
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as e:
                    return self.fail(f"TLS close_notify: {e!r}")
                self.rout += self.outg.read()
                self.fin = 1
                self.flush()
                if self.state != "open":
                    return
        if self.fin == 1 and not self.rout:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                return self.got_reset("shutdown")
            self.fin = 2
            self.t_fin = time.monotonic()
        if self.eof == "truncated" or (self.tls is not None and self.raw_eof
                                       and self.eof is None):
            return self.finish("truncated")
        if self.t_eof is None and self.peer_fin():
            self.t_eof = time.monotonic()
        if self.fin == 2 and self.peer_fin() and self.raw_eof:
            self.state = "closing"
            self.eng.watch(self, self.fd, 0)
            self.eng.at(0.02, self.check_closed)

    def check_closed(self):
        """Both FINs seen: wait for our FIN's ACK (the TCP state closes;
        it comes after every byte queued before it, which may take long
        through the bottleneck), and make sure no RST came after all."""
        if self.state != "closing":
            return
        st = tcp_state(self.sock)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return self.finish(f"{os.strerror(err)} after both FINs")
        if st in ("CLOSE", "TIME_WAIT"):
            return self.finish("fin")
        self.eng.at(0.05, self.check_closed)

    def reset(self):
        if self.state != "open":
            return
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))
        self.finish("rst-sent")

    def got_reset(self, where):
        self.reset_where = where
        self.finish("reset")

    def fail(self, why):
        self.error = why
        self.finish("error")

    def finish(self, end):
        if self.state == "done":
            return
        self.eng.watch(self, self.fd, 0)
        self.state = "done"
        self.end = end
        self.t_end = time.monotonic()
        self.sock.close()
        self.record()


class Client(Side):
    def __init__(self, soak, plan, addr):
        sock = socket.socket()
        sock.setblocking(False)
        # An RST is never retransmitted: when the link drops the relay's,
        # a client that has nothing left to send would wait forever.  A
        # keep-alive probe draws the RST again, as from a phone's stack.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 20)
        super().__init__(soak, sock)
        self.plan = p = plan
        self.state = "connecting"
        self.total = p["c_limit"]
        self.src = stream(p["up"], stream_seed(p["cid"], "up"))
        self.gated = p["order"] == "upstream-first"
        self.spauses, self.rpauses = p["c_spauses"], p["c_rpauses"]
        self.resetter = p["fate"] == "client-reset"
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        self.port = sock.getsockname()[1]
        self.eng.watch(self, self.fd, OUT)

    def rst_ready(self):
        p = self.plan
        if p["order"] == "upstream-first":
            return self.peer_fin()
        return self.rn >= p["c_after"]

    def on_connected(self):
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return self.fail(f"connect: {os.strerror(err)}")
        self.state = "open"
        p = self.plan
        if p["kind"] in ("pp", "pp-tls"):
            port = 1024 + p["cid"] % 60000
            self.rout += v2_header(("198.51.100.7", port), (RELAY_IP, 443))
        if p["kind"] in ("tls", "pp-tls"):
            self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = self.soak.ctx.wrap_bio(self.inc, self.outg,
                                              server_hostname="soak.example")
            self.hs_done = False
            self.handshake()
        else:
            self.rout += preamble(p)
        self.flush()
        self.progress()
        if self.state != "done":
            self.update()

    def handshake(self):
        try:
            self.tls.do_handshake()
            self.hs_done = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as e:
            return self.fail(f"TLS handshake: {e!r}")
        if self.hs_done:
            self.tls.write(preamble(self.plan))
        self.rout += self.outg.read()

    def record(self):
        self.soak.client_done(self)


class Upstream(Side):
    def __init__(self, soak, sock):
        super().__init__(soak, sock)
        self.pre = bytearray()
        self.plan = None
        self.eng.watch(self, self.fd, IN)

    def got(self, d):
        if self.plan is None:
            need = PRE.size - len(self.pre)
            self.pre += d[:need]
            d = d[need:]
            if len(self.pre) < PRE.size:
                return
            magic, cid, up, down, order, fate, limit, after = PRE.unpack(
                self.pre)
            if magic != MAGIC:
                return self.fail(f"bad preamble {bytes(self.pre)!r}")
            rng = random.Random(cid * 7 + 3)
            self.plan = {"cid": cid, "up": up, "down": down,
                         "order": ORDERS[order], "fate": FATES[fate],
                         "u_after": after, "rst_delay": rng.uniform(0, 0.2)}
            self.total = limit
            self.src = stream(down, stream_seed(cid, "down"))
            self.gated = self.plan["order"] == "client-first"
            self.resetter = self.plan["fate"] == "upstream-reset"
            self.spauses = pick_pauses(rng, limit)
            self.rpauses = pick_pauses(rng, up)
            if not d:
                return
        super().got(d)

    def can_produce(self):
        return self.plan is not None and super().can_produce()

    def progress(self):
        if self.plan is not None or self.state != "open":
            super().progress()
        elif self.raw_eof:
            self.fail(f"EOF after {len(self.pre)} bytes of preamble")

    def rst_ready(self):
        if self.plan["order"] == "client-first":
            return self.peer_fin()
        return self.rn >= self.plan["u_after"]

    def record(self):
        self.soak.upstream_done(self)


class Listener:
    def __init__(self, soak, sock):
        self.soak, self.sock = soak, sock
        soak.eng.watch(self, sock.fileno(), IN)

    def on_event(self, ev):
        for _ in range(64):
            try:
                c, _ = self.sock.accept()
            except BlockingIOError:
                return
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.soak.live.add(Upstream(self.soak, c))


# --------------------------------------------------------------------------
# the soak


def machine_cpu():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def link_stats(topo):
    """Per direction ("up": toward the relay): packets that crossed the
    shim, and those lost to the loss rule, to the bottleneck (tbf: its
    queue full) and to the shim's own queue (its TUN device: packets the
    shim did not read in time; none expected)."""
    w = topo.ns["wire"]
    rule = topo.loss_counts()
    out = {}
    for way, egress, tun in (("up", "w1", "tup"), ("down", "w0", "tdn")):
        text = nsx(w, "tc", "-s", "qdisc", "show", "dev", egress).stdout
        tbf = int(re.search(r"dropped (\d+)", text).group(1))
        lines = nsx(w, "ip", "-s", "link", "show", "dev", tun).stdout
        lines = lines.splitlines()
        tx = next(i for i, x in enumerate(lines) if x.strip()[:3] == "TX:")
        packets, dropped = (int(lines[tx + 1].split()[i]) for i in (1, 3))
        out[way] = {"packets": packets, "rule": rule.get(egress, 0),
                    "tbf": tbf, "shim": dropped}
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


class Soak:
    def __init__(self, d, lsock, loops, duration):
        self.d = d
        self.eng = Engine()
        self.ctx = client_ctx()
        self.rng = random.Random()
        self.addrs = {k: d.addr(k) for k in KINDS}
        self.loops, self.duration = loops, duration
        self.clients = {}  # cid -> finished Client
        self.ups = {}  # cid -> finished Upstream
        self.strays = []  # upstream sides without a (valid) preamble
        self.live = set()
        self.next_cid = 0
        self.open_max = 0
        self.clients_open = 0
        self.open_samples = []
        self.rss = []  # (seconds since start, KiB)
        self.listener = Listener(self, lsock)
        self.t0 = time.monotonic()
        self.stop_at = None

    def start_conn(self, loop, kind=None):
        """The next connection of a loop; with `kind`, a small, normal
        one on that listener (outside the loops)."""
        if kind is None and time.monotonic() >= self.stop_at:
            return
        cid = self.next_cid
        self.next_cid += 1
        rng = random.Random(self.rng.random())
        plan = make_plan(rng, cid, kind or rng.choice(KINDS))
        if kind is not None:
            up, down = plan["up"] % 4096, plan["down"] % 4096
            plan.update(fate="normal", order="both", up=up, c_limit=up,
                        down=down, u_limit=down, c_spauses=[], c_rpauses=[])
        c = Client(self, plan, self.addrs[plan["kind"]])
        c.loop = loop
        self.live.add(c)
        self.clients_open += 1
        self.open_max = max(self.open_max, self.clients_open)

    def client_done(self, c):
        self.live.discard(c)
        self.clients_open -= 1
        self.clients[c.plan["cid"]] = c
        if c.loop is not None:
            think = min(2.0, self.rng.expovariate(1 / 0.3))
            self.eng.at(think, self.start_conn, c.loop)

    def upstream_done(self, u):
        self.live.discard(u)
        if u.plan is None or u.plan["cid"] in self.ups:
            self.strays.append(u)
        else:
            self.ups[u.plan["cid"]] = u

    def sample(self):
        t = time.monotonic() - self.t0
        self.rss.append((t, rss_kib(self.d.pid)))
        self.open_samples.append(self.clients_open)
        if t + 1.0 < self.duration:
            self.eng.at(1.0, self.sample)

    def rss_window(self, start):
        """Mean RSS (KiB) of the samples from `start` (share of the
        duration) over WINDOW."""
        lo, hi = start * self.duration, (start + WINDOW) * self.duration
        v = [k for t, k in self.rss if lo <= t <= hi + 0.5]
        return sum(v) / len(v)

    def run(self):
        self.t0 = time.monotonic()
        self.stop_at = self.t0 + self.duration
        for i in range(self.loops):  # ramp up over 2 s
            self.eng.at(self.rng.uniform(0, 2.0), self.start_conn, i)
        self.eng.at(0.0, self.sample)
        self.eng.run(lambda: False, self.stop_at)
        self.open_at_end = len(self.live)
        # no new connection from here: those open finish
        drained = self.eng.run(lambda: not self.live,
                               time.monotonic() + 60.0 * SLOW)
        self.drain = time.monotonic() - self.stop_at
        return drained

    def last_round(self):
        """One small, normal connection per listener kind."""
        for kind in KINDS:
            self.start_conn(None, kind=kind)
        return self.eng.run(lambda: not self.live,
                            time.monotonic() + 20.0 * SLOW)

    def close_all(self):
        for obj in list(self.live) + [self.listener]:
            obj.sock.close()
        self.eng.ep.close()


def verify(soak):
    """Every connection against its plan; returns (counts, problems)."""
    n = collections.Counter()
    bad = []
    mism = []

    def prob(c, what):
        p = c.plan
        u = soak.ups.get(p["cid"])
        def when(side):
            return " ".join(f"{k} {t - soak.t0:.2f}" for k, t in (
                ("start", side.t0), ("fin", side.t_fin),
                ("peer-fin", side.t_eof), ("end", side.t_end))
                if t is not None)
        times = f"client :{c.port} {when(c)}"
        if u is not None:
            times += f"; upstream {when(u)}, sent {u.sent}"
        bad.append(f"#{p['cid']} {p['kind']} {p['order']} {p['fate']} "
                   f"up {p['up']} down {p['down']}: {what} ({times})")

    for cid, c in sorted(soak.clients.items()):
        p = c.plan
        u = soak.ups.get(cid)
        n[p["kind"]] += 1
        n["up_bytes"] += u.rn if u else 0
        n["down_bytes"] += c.rn
        if c.error:
            prob(c, f"client: {c.error}")
            continue
        if u is None:
            prob(c, f"client ended {c.end}; the upstream never saw it")
            continue
        if u.error:
            prob(c, f"upstream: {u.error}")
            continue
        up_seed, down_seed = stream_seed(cid, "up"), stream_seed(cid, "down")
        if p["fate"] == "normal":
            n["completed"] += 1
            if (c.end, u.end) != ("fin", "fin"):
                prob(c, f"ended {c.end} at the client, {u.end} upstream "
                     f"(up {u.rn}, down {c.rn} bytes)")
            if u.rn != p["up"] or c.rn != p["down"]:
                prob(c, f"upstream got {u.rn} of {p['up']}, client got "
                     f"{c.rn} of {p['down']}")
            elif c.shash.hexdigest() != u.rhash.hexdigest():
                mism.append((cid, "up"))
            elif u.shash.hexdigest() != c.rhash.hexdigest():
                mism.append((cid, "down"))
            continue
        n["reset"] += 1
        n[p["fate"]] += 1
        resetter, other = (c, u) if p["fate"] == "client-reset" else (u, c)
        if resetter.end != "rst-sent" or other.end != "reset":
            prob(c, f"the resetter ended {resetter.end}, the other peer "
                 f"{other.end} (want an RST seen)")
        if u.rn > c.sent or c.rn > u.sent:
            prob(c, f"more received than sent: up {u.rn}/{c.sent}, "
                 f"down {c.rn}/{u.sent}")
        elif u.rhash.hexdigest() != prefix_sha(p["up"], up_seed, u.rn):
            mism.append((cid, "up prefix"))
        elif c.rhash.hexdigest() != prefix_sha(p["down"], down_seed, c.rn):
            mism.append((cid, "down prefix"))
    for u in soak.strays:
        bad.append(f"upstream connection without a client: "
                   f"{u.end} {u.error} after {len(u.pre)} preamble bytes")
    for cid, c in sorted(soak.clients.items()):
        if cid in soak.ups:
            continue
    return n, bad, mism


@pytest.fixture
def nofile_restored():
    """Our descriptor limit, put back after the test."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


@pytest.mark.plain_only
@pytest.mark.serial
def test_soak(net, tmp_path, nofile_restored):
    """LOOPS connection loops for DURATION seconds across a 20 ms (+-5 ms),
    1% loss, 200 Mbit/s client link, on every listener kind: zero
    checksum mismatches, every ending as planned (FIN or close_notify and
    FIN both ways, or an RST seen by the other peer), resident memory
    after warm-up growing under 5%, descriptors back to the baseline, and
    the daemon still relaying on every listener kind."""
    t_begin = time.monotonic()
    duration = DURATION
    faulthandler.dump_traceback_later(duration + 150 * SLOW, exit=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 8 * LOOPS + 1000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.fail(f"the soak needs {need} descriptors; the hard limit "
                        f"is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    for role in ("client", "relay"):  # room for TIME_WAIT
        nsx(net.ns[role], "sysctl", "-q", "-w",
            "net.ipv4.ip_local_port_range=1024 65000")
    with net.inside("up"):
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((UPSTREAM_IPS[1], 0))
        lsock.listen(4096)
    lsock.setblocking(False)
    pp = {"accept-proxy": "on", "trusted-proxies": f"{CLIENT_IP}/32"}
    cfg = make_config(
        {"up": [f"{UPSTREAM_IPS[1]}:{lsock.getsockname()[1]}"]},
        {"plain": {"bind": f"{RELAY_IP}:0", "upstream": "up"},
         "tls": {"bind": f"{RELAY_IP}:0", "upstream": "up", "tls": "on"},
         "pp": dict(pp, bind=f"{RELAY_IP}:0", upstream="up"),
         "pp-tls": dict(pp, bind=f"{RELAY_IP}:0", upstream="up", tls="on")},
        global_={"maxconn": str(4 * LOOPS + 100)}, timeouts=TIMEOUTS)
    d = net.daemon(tmp_path, cfg)
    net.set_delay(up_ms=DELAY_MS, down_ms=DELAY_MS, jitter_ms=JITTER_MS,
                  seed=18)
    # The shim's TUN devices queue 500 packets by default: at this load
    # their bursts overflowed and were dropped unseen (tens of thousands
    # a minute, beyond the loss rule).  A longer queue lets them wait for
    # the shim instead; link_stats() counts any drop left.
    for dev in ("tup", "tdn"):
        nsx(net.ns["wire"], "ip", "link", "set", "dev", dev, "txqueuelen",
            "10000")
    net.set_rate(up_kbit=RATE_KBIT, down_kbit=RATE_KBIT, queue_ms=50)
    net.set_loss(up_pct=LOSS_PCT, down_pct=LOSS_PCT)

    soak = Soak(d, lsock, LOOPS, duration)
    try:
        with net.inside("client"):
            # the baseline once every listener kind has relayed
            assert soak.last_round(), "the first round did not finish"
            fd0 = d.stable_fd_count()
            cpu0, pcpu0 = d.cpu_seconds(), time.process_time()
            shim0, mach0 = proc_cpu(net.shim_proc.pid), machine_cpu()
            setup = time.monotonic() - t_begin
            drained = soak.run()
            cpu = d.cpu_seconds() - cpu0
            pcpu = time.process_time() - pcpu0
            shim = proc_cpu(net.shim_proc.pid) - shim0
            mach = [b - a for a, b in zip(mach0, machine_cpu())]
            fd_end = d.wait_fds_at_most(fd0, timeout=10.0 * SLOW)
            rss_after = rss_kib(d.pid)
            last = soak.last_round()
    finally:
        open_ = len(soak.live)
        with open(tmp_path / "stuck.txt", "w") as f:
            for o in soak.live:
                f.write(f"{getattr(o, 'plan', None)}\n  {o.describe()}\n")
                if isinstance(o, Client):
                    u = soak.ups.get(o.plan["cid"])
                    f.write(f"  {u and u.describe()}\n")
        soak.close_all()
        lsock.close()
    link = link_stats(net)

    n, bad, mism = verify(soak)
    lags = sorted(soak.eng.lags) or [0.0]
    busy = soak.open_samples[int(len(soak.open_samples) * WARMUP):] or [0]
    open_mean = sum(busy) / len(busy)
    lag99 = lags[int(len(lags) * 0.99)]
    checked = duration >= RSS_MIN_DURATION
    rss_warm = soak.rss_window(max(WARMUP, WARMUP_MIN / duration)
                               if checked else WARMUP)
    rss_end = soak.rss_window(1.0 - WINDOW)
    rss_peak = max(k for _, k in soak.rss)
    growth = (rss_end - rss_warm) / rss_warm * 100
    lost = ", ".join(
        f"{way} {100 * v['rule'] / v['packets']:.1f}% + "
        f"{100 * v['tbf'] / v['packets']:.1f}%"
        + (f" + {v['shim']} in the shim" if v["shim"] else "")
        for way, v in link.items())
    print(f"\nsoak: {duration:.0f} s, {LOOPS} loops ({open_mean:.0f} "
          f"connections open on average, peak {soak.open_max}), "
          f"{len(soak.clients)} connections ("
          + ", ".join(f"{k} {n[k]}" for k in KINDS) + "): "
          f"{n['completed']} completed, {n['reset']} reset "
          f"({n['client-reset']} by the client, {n['upstream-reset']} by "
          f"the upstream), up {n['up_bytes'] / MiB:.0f} MiB, down "
          f"{n['down_bytes'] / MiB:.0f} MiB, {len(mism)} mismatches, "
          f"{len(bad)} bad endings; RSS {rss_warm / 1024:.1f} -> "
          f"{rss_end / 1024:.1f} MiB ({growth:+.1f}%"
          + ("" if checked else ", not checked under "
             f"{RSS_MIN_DURATION} s") + "; peak "
          f"{rss_peak / 1024:.1f}, {rss_after / 1024:.1f} once idle); fds "
          f"{fd0} -> {fd_end}; setup {setup:.1f} s, drain {soak.drain:.1f} "
          f"s; packets lost {lost} (loss rule + bottleneck); CPU daemon "
          f"{cpu:.0f} s, peers {pcpu:.0f} s, shim {shim:.0f} s, machine "
          f"{100 * mach[0] / mach[1]:.0f}% busy; timer lag p99 "
          f"{lag99 * 1000:.0f} ms")
    with open(tmp_path / "bad.txt", "w") as f:
        f.write("\n".join(bad) + "\n")
    with open(tmp_path / "rss.txt", "w") as f:
        f.write("".join(f"{t:.0f} {k} {o}\n" for (t, k), o in
                        zip(soak.rss, soak.open_samples)))
    assert drained, f"{soak.open_at_end} sides open at the end, {open_} " \
        f"still {60 * SLOW:.0f} s later (see stuck.txt in {tmp_path})"
    assert not mism, f"{len(mism)} checksum mismatches: {mism[:10]}"
    assert not bad, f"{len(bad)} bad connections (all in bad.txt in " \
        f"{tmp_path}):\n" + "\n".join(bad[:20])
    assert last, "the daemon no longer relays"
    assert d.alive(), d.stderr_text()[-2000:]
    # nothing went wrong that the daemon noticed itself
    noticed = [x for x in d.stderr_text().splitlines()
               if re.search(r"Z (warn|error): ", x)]
    assert not noticed, "\n".join(noticed[:20])
    assert fd_end <= fd0, f"descriptors {fd_end}, baseline {fd0}"
    assert growth < 5.0 or not checked, \
        f"RSS grew {growth:.1f}% after warm-up (rss.txt in {tmp_path}: " \
        "seconds, KiB, connections open)"
    # the link was impaired, as claimed
    assert all(v["rule"] > 0 for v in link.values()), link
