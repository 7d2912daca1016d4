"""Reliability under hostile networks (issue 14), first increment.

The daemon runs on its own host (a network namespace); clients reach it
across a router that delays, jitters, rate-limits and drops packets;
upstream servers sit on a third host whose firewall refuses or blackholes
new connections (netns.py draws the topology).  Every relayed byte is
checked by SHA-256 both ways, every ending by what each peer's socket
reports (EOF for FIN, ECONNRESET for RST), and every test ends by proving
that the daemon still relays and that its descriptor count is back at its
baseline.  docs/RELIABILITY.md says what each test proves.
"""

import hashlib
import os
import random
import signal
import socket
import struct
import threading
import time

import pytest

from conftest import (
    SLOW, chunks, h_echo, half_close, make_config,
    read_until_closed, recv_exact, rst_close, try_echo, wait_for,
)
from netns import (  # noqa: F401 (fixtures)
    RELAY_IP, UPSTREAM_IPS, net, netns_shim, wait_clean_end,
)

KiB = 1 << 10
MiB = 1 << 20


# --------------------------------------------------------------------------
# helpers


def relay_config(servers, listeners=None, up_opts=None, **timeouts):
    """`plain` relays to `servers` (group `up`, with `up_opts`); `probe`
    to the probe echo server; `listeners` adds more ({name: options},
    bound on the relay's client side, relaying to `up` unless they say)."""
    t = {"connect": "1s", "client": "30s", "server": "30s",
         "client-fin": "5s", "server-fin": "5s"}
    t.update({k.replace("_", "-"): v for k, v in timeouts.items()})
    lst = {"plain": {"bind": f"{RELAY_IP}:0", "upstream": "up"},
           "probe": {"bind": f"{RELAY_IP}:0", "upstream": "probe"}}
    for name, opts in (listeners or {}).items():
        lst[name] = dict({"bind": f"{RELAY_IP}:0", "upstream": "up"}, **opts)
    return make_config(
        {"up": dict(up_opts or {}, server=list(servers)),
         "probe": [f"{UPSTREAM_IPS[1]}:{PROBE_PORT[0]}"]},
        lst, timeouts=t,
        global_={"log-level": os.environ.get("LL_LOG", "info")})


PROBE_PORT = [0]


class Relay:
    """The daemon on the relay host, a probe echo server, and the
    descriptor baseline taken once the daemon has relayed something."""

    def __init__(self, net, tmp_path, servers, listeners=None, up_opts=None,
                 **timeouts):
        self.net = net
        self.probe = net.server(h_echo, name="probe")
        PROBE_PORT[0] = self.probe.port
        self.d = net.daemon(tmp_path, relay_config(servers, listeners,
                                                   up_opts, **timeouts))
        assert self.echo_ok(), "the relay does not relay before any fault"
        self.base = self.d.stable_fd_count()

    def addr(self, name="plain"):
        return self.d.addr(name)

    def echo_ok(self):
        with self.net.inside("client"):
            return try_echo(self.d.addr("probe"), timeout=5.0)

    def assert_recovered(self, timeout=8.0):
        """Still serving, every descriptor of the fault given back."""
        assert self.d.alive(), f"daemon died:\n{self.d.stderr_text()[-2000:]}"
        assert self.echo_ok(), "the relay no longer relays"
        n = self.d.wait_fds_at_most(self.base, timeout=timeout)
        assert n <= self.base, \
            f"descriptors: {n}, baseline {self.base} (leak after the fault)"
        assert self.net.shim_alive(), self.net.shim_text()


def send_hashed(sock, size, seed, max_chunk=64 * KiB):
    """Send `size` random bytes; returns (how, sent, sha of what was sent,
    sha per prefix length is not kept: `sent` bytes are those accepted)."""
    h = hashlib.sha256()
    sent = 0
    try:
        for ch in chunks(size, random.Random(seed), max_chunk=max_chunk):
            sock.sendall(ch)
            h.update(ch)
            sent += len(ch)
    except OSError as e:
        return type(e).__name__, sent, h.hexdigest()
    return "sent", sent, h.hexdigest()


def stream_bytes(size, seed, max_chunk=64 * KiB):
    """The exact bytes send_hashed(size, seed) sends."""
    return b"".join(bytes(c) for c in chunks(size, random.Random(seed),
                                             max_chunk=max_chunk))


def read_hashed(sock, rate=None, pause_at=None, pause=0.0, timeout=30.0,
                keep=False):
    """Read until EOF or reset: paced at `rate` B/s when given, pausing
    once `pause` s after `pause_at` bytes.  Returns (how, n, sha[, data])."""
    h = hashlib.sha256()
    data = bytearray() if keep else None
    n = 0
    t0 = time.monotonic()
    paused = pause_at is None
    sock.settimeout(timeout)
    while True:
        if not paused and n >= pause_at:
            time.sleep(pause)
            paused = True
            t0 = time.monotonic() - n / rate if rate else t0
        if rate:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        try:
            d = sock.recv(8 * KiB if rate else 64 * KiB)
        except (ConnectionResetError, ConnectionAbortedError):
            how = "reset"
            break
        if not d:
            how = "eof"
            break
        h.update(d)
        if keep:
            data += d
        n += len(d)
    return (how, n, h.hexdigest()) + ((bytes(data),) if keep else ())


# --------------------------------------------------------------------------
# the tools themselves: the impairments are real


def test_topology_delays_limits_and_drops(net, tmp_path):
    """The link adds the configured delay each way, the bottleneck holds
    the rate, the loss rule drops about the configured share; a relayed
    echo crosses all of it intact.  Without this the other tests could
    pass on a link that impairs nothing."""
    r = Relay(net, tmp_path, [f"{UPSTREAM_IPS[1]}:1"])
    with net.inside("client"):
        s = socket.create_connection(r.addr("probe"), timeout=5)
    try:
        rtts = []
        for _ in range(5):
            t0 = time.monotonic()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            rtts.append(time.monotonic() - t0)
        base_rtt = min(rtts)
        assert base_rtt < 0.05, f"unimpaired RTT {base_rtt * 1000:.1f} ms"
    finally:
        s.close()

    net.set_delay(up_ms=60, down_ms=40, jitter_ms=0)
    with net.inside("client"):
        s = socket.create_connection(r.addr("probe"), timeout=5)
    try:
        rtts = []
        for _ in range(5):
            t0 = time.monotonic()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            rtts.append(time.monotonic() - t0)
        # 100 ms added to the round trip, late only by scheduling
        assert 0.1 <= min(rtts) <= 0.1 + 0.02 * SLOW + base_rtt, rtts

        # bottleneck: 2 Mbit/s down; 256 KiB take ~1.05 s (+ RTT)
        net.set_rate(down_kbit=2000)
        payload = random.Random(1).randbytes(256 * KiB)
        got = bytearray()
        t0 = time.monotonic()

        def pump():
            s.sendall(payload)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        s.settimeout(10)
        while len(got) < len(payload):
            d = s.recv(65536)
            assert d, "EOF"
            got += d
        elapsed = time.monotonic() - t0
        t.join(5)
        assert bytes(got) == payload
        ideal = len(payload) * 8 / 2e6
        assert ideal * 0.9 <= elapsed <= ideal * 1.5 + 0.5, \
            f"256 KiB in {elapsed:.2f}s at 2 Mbit/s (ideal {ideal:.2f}s)"
    finally:
        s.close()

    net.set_rate()
    net.set_delay()
    net.set_loss(up_pct=10, down_pct=10)
    # UDP across the router: exactly what the rule drops is measurable
    # 1000 datagrams toward the relay host: the router drops ~100
    with net.inside("client"):
        cs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(1000):
            cs.sendto(b"%d" % i, (RELAY_IP, 9))
            if i % 50 == 0:
                time.sleep(0.001)
        time.sleep(0.2)
        hits = net.loss_counts()
        assert 50 <= hits.get("w1", 0) <= 150, hits
    finally:
        cs.close()
    net.set_loss()
    r.assert_recovered()


# --------------------------------------------------------------------------
# a. a lossy, slow, far client link and many chat-like connections

CHAT_CONNS = 200
CHAT_MSGS = 5
# How long a chat's peers and the relay wait for a byte.  With 5% loss on
# each hop, a segment lost four times running waits out 1+2+4+8 s or more
# of retransmission backoff; among the ~4,000 messages of a run that comes
# up now and then (we estimate a few runs in a hundred).  It did in CI:
# the test's upstream, at the 20 s socket timeout then, gave up and closed,
# and the relay rightly passed its FIN on to the client.
CHAT_STALL = 60
FRAME = struct.Struct("!H")


def recv_frame(sock, h):
    """One length-prefixed message (hashed into h); None at a clean EOF
    between messages."""
    first = sock.recv(1)
    if not first:
        return None
    hdr = first + recv_exact(sock, 1)
    body = recv_exact(sock, FRAME.unpack(hdr)[0])
    h.update(hdr)
    h.update(body)
    return body


def send_frame(sock, body, h):
    data = FRAME.pack(len(body)) + body
    sock.sendall(data)
    h.update(data)


def chat_reply(msg):
    """The upstream's answer to a message: 16 to 526 bytes derived from it."""
    seed = hashlib.sha256(msg).digest()
    return random.Random(seed).randbytes(16 + 2 * seed[0])


def h_chat(c, rec):
    """Upstream: answers each message; at the client's FIN, a last message
    and its own FIN; then how the connection ended."""
    hin, hout = hashlib.sha256(), hashlib.sha256()
    c.settimeout(CHAT_STALL)
    while True:
        msg = recv_frame(c, hin)
        if msg is None:
            break
        rec.setdefault("id", msg[:4])
        send_frame(c, chat_reply(msg), hout)
    send_frame(c, b"bye", hout)
    c.shutdown(socket.SHUT_WR)
    rec["recv_sha"], rec["sent_sha"] = hin.hexdigest(), hout.hexdigest()
    rec["end"] = wait_clean_end(c, 20)


def chat_client(net, addr, cid, out):
    """Client: CHAT_MSGS messages of 20-400 bytes with think time, each
    answer checked; then FIN, the last message, the relay's FIN."""
    rng = random.Random(cid)
    hin, hout = hashlib.sha256(), hashlib.sha256()
    try:
        s = net.connect(addr, timeout=30)
        s.settimeout(CHAT_STALL)
        for i in range(CHAT_MSGS):
            out["stage"] = f"message {i}"
            msg = struct.pack("!I", cid) + rng.randbytes(rng.randint(16, 396))
            send_frame(s, msg, hout)
            assert recv_frame(s, hin) == chat_reply(msg), f"{cid}: bad answer"
            time.sleep(rng.random() * 0.2)
        out["stage"] = "closing"
        s.shutdown(socket.SHUT_WR)
        assert recv_frame(s, hin) == b"bye", f"{cid}: no last message"
        assert s.recv(1) == b"", f"{cid}: bytes after the last message"
        out["end"] = wait_clean_end(s, 20)
        out["sent_sha"], out["recv_sha"] = hout.hexdigest(), hin.hexdigest()
        s.close()
    except Exception as e:  # reported with its connection id
        out["error"] = f"{out.get('stage', 'connect')}: {e!r}"


def assert_chats_intact(r, srv, outs):
    """Every chat of `outs` (chat_client's reports, upstream `srv`
    running h_chat, relay `r`) went through whole both ways and ended with
    FIN both ways.  A failure names what the upstream saw of the failed
    chats and the relay's counters (how it ended connections)."""
    errors = [(i, o["error"]) for i, o in enumerate(outs) if "error" in o]
    if errors:  # with what the upstream saw and the relay's counters
        since = r.d.stderr_size()
        r.d.send(signal.SIGUSR1)
        r.d.wait_stderr(since, lambda t: "counters:" in t, what="SIGUSR1 summary")
        with srv.lock:
            seen = {r_["id"]: r_ for r_ in srv.records if "id" in r_}
        up = lambda i: seen.get(struct.pack("!I", i), {}).get("error", "not seen")
        pytest.fail(f"{len(errors)} clients failed: " + "; ".join(
            f"{i}: {e[:300]}; upstream: {up(i)!r}" for i, e in errors[:5])
            + "\n" + r.d.stderr_text()[-1000:])
    recs = srv.wait_done(timeout=30)
    by_id = {r_["id"]: r_ for r_ in recs if "id" in r_}
    assert len(by_id) == len(outs), f"upstream saw {len(by_id)} chats"
    bad = []
    for i, o in enumerate(outs):
        rec = by_id[struct.pack("!I", i)]
        if rec["error"] is not None:
            bad.append((i, "upstream error", repr(rec["error"])))
        elif o["sent_sha"] != rec["recv_sha"]:
            bad.append((i, "upload corrupted"))
        elif o["recv_sha"] != rec["sent_sha"]:
            bad.append((i, "download corrupted"))
        elif (o["end"], rec["end"]) != ("fin", "fin"):
            bad.append((i, "ending", o["end"], rec["end"]))
    assert not bad, f"{len(bad)} bad connections: {bad[:5]}"


@pytest.mark.plain_only
def test_chat_over_lossy_slow_far_link(net, tmp_path):
    """200 concurrent chat connections across 5% loss each way, 1 Mbit/s
    each way, 300 ms added each way (+-30 ms jitter): every message of
    every connection arrives intact both ways, every connection ends with
    FIN both ways, and the relay is fine afterwards."""
    srv = net.server(h_chat, name="chat", backlog=512)
    # client-fin/server-fin as long as the idle timeouts: a half-close
    # after a quiet spell longer than them is cut at once today (see
    # test_half_close_after_a_quiet_spell_is_not_cut); with 5% loss a
    # client's FIN can come seconds after its last message.
    stall = f"{CHAT_STALL}s"
    r = Relay(net, tmp_path, [srv.spec], client=stall, server=stall,
              client_fin=stall, server_fin=stall)
    net.set_delay(up_ms=300, down_ms=300, jitter_ms=30, seed=14)
    net.set_rate(up_kbit=1000, down_kbit=1000)
    net.set_loss(up_pct=5, down_pct=5)
    outs = [{} for _ in range(CHAT_CONNS)]
    threads = [threading.Thread(target=chat_client,
                                args=(net, r.addr(), i, outs[i]), daemon=True)
               for i in range(CHAT_CONNS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, t0 + 90 - time.monotonic()))
    elapsed = time.monotonic() - t0
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"{len(stuck)} clients still running after 90s: {stuck[:10]}"
    assert_chats_intact(r, srv, outs)
    drops = net.loss_counts()
    assert drops.get("w0", 0) > 0 and drops.get("w1", 0) > 0, drops
    net.set_loss()
    net.set_rate()
    net.set_delay()
    r.assert_recovered()
    print(f"chat: {CHAT_CONNS} connections in {elapsed:.1f}s, drops {drops}")


# --------------------------------------------------------------------------
# b. slow readers, and readers that pause, on either side

B_SIZE = 4 * MiB


def answering(size, seed):
    """Upstream: reads the 3-byte request, sends `size` bytes and FIN,
    then reads to the end (how it ended goes into rec["after"])."""
    def handler(c, rec):
        recv_exact(c, 3)
        rec["end"], rec["sent"], rec["sha"] = send_hashed(c, size, seed)
        if rec["end"] == "sent":
            rec["end"] = half_close(c)
        if rec["end"] == "sent":
            rec["after"] = read_until_closed(c, 20)[0]
    return handler


def sink(rate=None, pause_at=None, pause=0.0):
    """Upstream: a reader with a small receive buffer, paced or pausing."""
    def handler(c, rec):
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        rec["how"], rec["got"], rec["sha"] = read_hashed(
            c, rate=rate, pause_at=pause_at, pause=pause)
    return handler


# (reader behaviour, client timeout, server timeout, expected outcome)
READERS = {
    # a steady 1 MiB/s reader: 4 s of backpressure against 1 s timeouts
    "slow": (dict(rate=MiB), "1s", "1s", "whole"),
    # one 1.6 s pause: beyond the writer's timeout, within the reader's
    "pause-within": (dict(pause_at=MiB, pause=1.6), "3s", "3s", "whole"),
    # one 2 s pause: beyond the reader's own timeout (1 s)
    "pause-beyond": (dict(pause_at=MiB, pause=2.0), "1s", "1s", "cut"),
}


def b_link(net):
    """A plausible mobile path: 25 ms each way +-5 ms, 16 Mbit/s."""
    net.set_delay(up_ms=25, down_ms=25, jitter_ms=5, seed=2)
    net.set_rate(up_kbit=16000, down_kbit=16000, queue_ms=50)


@pytest.mark.parametrize("reader", list(READERS))
def test_slow_or_pausing_client_reader(net, tmp_path, reader):
    """Download: the upstream writes 4 MiB as fast as it can; the client
    reads slowly or pauses.  The writer's timeout never fires while it is
    blocked by backpressure; the reader's own timeout cuts with RST to
    both, never a FIN."""
    how_read, tmo_c, tmo_s, want = READERS[reader]
    if reader == "pause-within":
        tmo_s = "1s"  # the blocked writer's timeout is the short one
    srv = net.server(answering(B_SIZE, 11), name="answer")
    r = Relay(net, tmp_path, [srv.spec], client=tmo_c, server=tmo_s,
              client_fin="1s", server_fin="1s")
    b_link(net)
    with net.inside("client"):
        s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
    s.settimeout(10)
    s.connect(r.addr())
    s.sendall(b"GET")
    how, n, sha = read_hashed(s, **how_read)
    if how == "eof":
        s.close()
    rec = srv.wait_done()[0]
    if want == "whole":
        assert (how, n) == ("eof", B_SIZE), f"client: {how} after {n} bytes"
        assert sha == rec["sha"], "download corrupted"
        assert (rec["end"], rec["after"]) == ("sent", "eof"), rec
    else:
        assert how == "reset", f"a cut stream ended with {how} after {n} bytes"
        assert n < B_SIZE
        assert rec["end"] in ("ConnectionResetError", "BrokenPipeError",
                              "reset") or \
            rec.get("after") == "reset", f"upstream: {rec}"
    s.close()
    r.assert_recovered()


@pytest.mark.parametrize("reader", list(READERS))
def test_slow_or_pausing_upstream_reader(net, tmp_path, reader):
    """Upload, the mirror: the client writes 4 MiB across the link; the
    upstream reads slowly or pauses."""
    how_read, tmo_c, tmo_s, want = READERS[reader]
    if reader == "pause-within":
        tmo_c = "1s"
    srv = net.server(sink(**how_read), name="sink")
    r = Relay(net, tmp_path, [srv.spec], client=tmo_c, server=tmo_s,
              client_fin="1s", server_fin="1s")
    b_link(net)
    s = net.connect(r.addr())
    how, sent, sha = send_hashed(s, B_SIZE, 12)
    if how == "sent":
        how = half_close(s)
    if how == "sent":
        after = read_until_closed(s, 20)[:2]
    rec = srv.wait_done()[0]
    if want == "whole":
        assert how == "sent", how
        assert after == ("eof", 0), after
        assert (rec["how"], rec["got"]) == ("eof", B_SIZE), rec
        assert rec["sha"] == sha, "upload corrupted"
    else:
        client_end = after[0] if how == "sent" else how
        assert client_end in ("reset", "ConnectionResetError",
                              "BrokenPipeError"), client_end
        assert rec["how"] == "reset", \
            f"a cut stream reached the upstream as {rec['how']} ({rec['got']} bytes)"
        assert rec["got"] < B_SIZE
    s.close()
    r.assert_recovered()


# --------------------------------------------------------------------------
# c. upstreams that refuse, blackhole, flap


def duplex_from_client(net, addr, cid, up, down):
    from conftest import duplex_client
    with net.inside("client"):
        return duplex_client(addr, cid, up, down)


def two_servers(net):
    """A (preferred) and B, both full-duplex hash servers, on the two
    upstream addresses."""
    from conftest import h_duplex
    a = net.server(h_duplex, ip=UPSTREAM_IPS[0], name="A")
    b = net.server(h_duplex, ip=UPSTREAM_IPS[1], name="B")
    return a, b


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_first_upstream_refusing_or_blackholed_fails_over(net, tmp_path, fault):
    """Server A refuses (TCP RST from its host) or blackholes (SYNs dropped
    by its host's firewall); B is fine.  Every client is relayed whole by
    B: at once after a refusal, after one `connect` timeout (1 s) after a
    black hole; after 3 failures A is marked down and clients go straight
    to B."""
    from conftest import check_duplex
    a, b = two_servers(net)
    r = Relay(net, tmp_path, [a.spec, b.spec], connect="1s")
    net.set_delay(up_ms=25, down_ms=25)
    net.set_upstream(a.host, a.port, fault)
    times = []
    for i in range(5):
        t0 = time.monotonic()
        res = duplex_from_client(net, r.addr(), i, 32 * KiB, 32 * KiB)
        times.append(time.monotonic() - t0)
        check_duplex(res, b)
    hits = net.upstream_rule_hits()[(a.host, a.port)]
    assert a.accepted == 0 and b.accepted == 5, (a.accepted, b.accepted)
    fast = 0.5 * SLOW  # a few round trips of 50 ms, no timeout
    if fault == "refuse":
        assert hits == 3, f"A refused {hits} SYNs; 3 failures mark it down"
        assert max(times) < fast, times
    else:
        assert 3 <= hits <= 6, f"{hits} SYNs dropped (3 attempts)"
        assert all(0.95 <= t <= 1.0 * 1.25 * SLOW + 0.5 for t in times[:3]), \
            f"failover after the 1 s connect timeout: {times}"
        assert max(times[3:]) < fast, f"A not marked down: {times}"
    r.assert_recovered()


def test_all_upstreams_blackholed_closes_clients_then_recovers(net, tmp_path):
    """Both servers blackholed: each client is closed with FIN (nothing was
    relayed) after one connect timeout per server (2 x 1 s), never left
    hanging; once B is back, clients are relayed again."""
    from conftest import check_duplex
    a, b = two_servers(net)
    r = Relay(net, tmp_path, [a.spec, b.spec], connect="1s")
    net.set_delay(up_ms=25, down_ms=25)
    net.set_upstream(a.host, a.port, "blackhole")
    net.set_upstream(b.host, b.port, "blackhole")
    socks, started = [], []
    for _ in range(4):
        # before the connect: the daemon's connect timeouts start at its
        # accept, never earlier (after it, a descheduled test thread would
        # eat into the 0.1 s margin below 2 s)
        started.append(time.monotonic())
        socks.append(net.connect(r.addr()))
    outs = [None] * len(socks)

    def wait(i):
        how, n, _ = read_until_closed(socks[i], 10)
        outs[i] = (how, n, time.monotonic() - started[i])

    ts = [threading.Thread(target=wait, args=(i,), daemon=True)
          for i in range(len(socks))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    for how, n, elapsed in outs:
        assert (how, n) == ("eof", 0), outs
        assert 1.9 <= elapsed <= 2 * 1.25 * SLOW + 0.5, outs
    assert a.accepted == b.accepted == 0
    net.set_upstream(b.host, b.port, "up")
    # both are marked down now: A (still a black hole) is tried first
    t0 = time.monotonic()
    check_duplex(duplex_from_client(net, r.addr(), 9, 16 * KiB, 16 * KiB), b)
    assert time.monotonic() - t0 <= 1.0 * 1.25 * SLOW + 0.5
    r.assert_recovered()


def test_flapping_upstream_loses_no_client(net, tmp_path):
    """A cycles up, refusing, up, blackholed (new connections only) every
    quarter to half second while three clients at a time keep arriving;
    B stays up.  Every client is relayed whole, none waits more than one
    connect timeout for a server, and the faults were actually met."""
    from conftest import check_all_duplex
    a, b = two_servers(net)
    r = Relay(net, tmp_path, [a.spec, b.spec], connect="1s")
    net.set_delay(up_ms=25, down_ms=25)
    stop = threading.Event()
    cycle = [("up", 0.5), ("refuse", 0.25), ("up", 0.5), ("blackhole", 0.25)]
    hits = {}

    def flap():
        i = 0
        while not stop.is_set():
            state, hold = cycle[i % len(cycle)]
            net.set_upstream(a.host, a.port, state)
            stop.wait(hold)
            for k, v in net.upstream_rule_hits().items():
                hits[(k, state)] = hits.get((k, state), 0) + v
            i += 1
        net.set_upstream(a.host, a.port, "up")

    results, times, errors = [], [], []
    lock = threading.Lock()

    def client(first):
        for j in range(10):
            cid = first + j
            t0 = time.monotonic()
            try:
                res = duplex_from_client(net, r.addr(), cid, 16 * KiB, 16 * KiB)
            except Exception as e:
                with lock:
                    errors.append((cid, repr(e)))
                continue
            with lock:
                results.append(res)
                times.append((time.monotonic() - t0, cid))
            time.sleep(0.15)

    f = threading.Thread(target=flap, daemon=True)
    f.start()
    cs = [threading.Thread(target=client, args=(k * 100,), daemon=True)
          for k in range(3)]
    for t in cs:
        t.start()
    for t in cs:
        t.join(60)
    stop.set()
    f.join(10)
    assert not any(t.is_alive() for t in cs), "clients stuck"
    assert not errors, errors
    assert len(results) == 30
    # a result belongs to whichever server took it
    by = {id(s): s for s in (a, b)}
    ids_a = {rec.get("id") for rec in a.wait_done()}
    check_all_duplex([x for x in results if x["id"] in ids_a], a)
    check_all_duplex([x for x in results if x["id"] not in ids_a], b)
    assert a.accepted + b.accepted == 30, (a.accepted, b.accepted)
    worst = max(times)
    assert worst[0] <= 1.0 * 1.25 * SLOW + 1.0, f"slowest client: {worst}"
    met = sum(hits.values())
    assert met >= 1, "no client met a fault: the flapping tested nothing"
    del by
    print(f"flap: A took {a.accepted}, B {b.accepted}; SYNs refused or "
          f"dropped {met}; slowest {worst[0]:.2f}s")
    r.assert_recovered()


# --------------------------------------------------------------------------
# d. resets mid-stream, half-closes with the other direction slow


def d_link(net, up_kbit=8000, down_kbit=8000):
    net.set_delay(up_ms=40, down_ms=40, jitter_ms=5, seed=4)
    net.set_rate(up_kbit=up_kbit, down_kbit=down_kbit, queue_ms=100)


def test_client_reset_mid_download_resets_upstream(net, tmp_path):
    """The client reads 256 KiB of a 4 MiB answer, then resets: the
    upstream, still writing, sees a reset within a round trip or two (not
    a FIN: the stream was cut); what the client got is an exact prefix."""
    srv = net.server(answering(4 * MiB, 21), name="answer")
    r = Relay(net, tmp_path, [srv.spec])
    d_link(net)
    s = net.connect(r.addr())
    s.sendall(b"GET")
    got = bytearray()
    while len(got) < 256 * KiB:
        d = s.recv(65536)
        assert d, "EOF before the reset"
        got += d
    t_rst = time.monotonic()
    rst_close(s)
    rec = srv.wait_done(timeout=10)[0]
    # all 4 MiB may have fitted in buffers along the way before the reset
    assert rec["end"] in ("ConnectionResetError", "BrokenPipeError") or \
        rec.get("after") == "reset", rec
    assert bytes(got) == stream_bytes(4 * MiB, 21)[:len(got)], "prefix corrupted"
    assert time.monotonic() - t_rst < 3.0 * SLOW
    r.assert_recovered()


def test_client_reset_mid_upload_resets_upstream(net, tmp_path):
    """The client uploads, then resets: the upstream sees a reset, never a
    clean EOF, and what it read is an exact prefix of what was sent."""
    def keeper(c, rec):
        rec["how"], rec["got"], rec["sha"], rec["data"] = read_hashed(c, keep=True)

    srv = net.server(keeper, name="keeper")
    r = Relay(net, tmp_path, [srv.spec])
    d_link(net)
    s = net.connect(r.addr())
    how, sent, _ = send_hashed(s, 512 * KiB, 22)
    assert how == "sent"
    wait_for(lambda: srv.records and "how" not in srv.records[0]
             and srv.records[0].get("error") is None, 5, what="upstream reading")
    time.sleep(0.1)
    rst_close(s)
    rec = srv.wait_done(timeout=10)[0]
    assert rec["how"] == "reset", f"upstream saw {rec['how']} after {rec['got']} bytes"
    assert rec["data"] == stream_bytes(512 * KiB, 22)[:rec["got"]]
    r.assert_recovered()


def test_upstream_reset_mid_download_resets_client(net, tmp_path):
    """The upstream sends 512 KiB and resets: the client sees a reset, not
    a FIN, and what it got is an exact prefix."""
    def resetter(c, rec):
        recv_exact(c, 3)
        rec["end"], rec["sent"], _ = send_hashed(c, 512 * KiB, 23)
        rst_close(c)

    srv = net.server(resetter, name="resetter")
    r = Relay(net, tmp_path, [srv.spec])
    d_link(net)
    s = net.connect(r.addr())
    s.sendall(b"GET")
    how, n, _, data = read_hashed(s, keep=True, timeout=15)
    assert how == "reset", f"client saw {how} after {n} bytes (a cut stream)"
    assert data == stream_bytes(512 * KiB, 23)[:n]
    r.assert_recovered()


def test_upstream_reset_mid_upload_resets_client(net, tmp_path):
    """The upstream reads 256 KiB of a 4 MiB upload and resets: the
    client's writes fail, or its read reports a reset; never EOF."""
    def resetter(c, rec):
        recv_exact(c, 256 * KiB)
        rst_close(c)

    srv = net.server(resetter, name="resetter")
    r = Relay(net, tmp_path, [srv.spec])
    d_link(net)
    s = net.connect(r.addr())
    how, sent, _ = send_hashed(s, 4 * MiB, 24)
    if how == "sent":
        how = read_until_closed(s, 10)[0]
    assert how in ("reset", "ConnectionResetError", "BrokenPipeError"), how
    r.assert_recovered()


def test_half_close_by_client_with_slow_download(net, tmp_path):
    """The client sends a 64 KiB request and FIN; the answer, 512 KiB,
    crosses a 1 Mbit/s downlink (over 4 s) against server-fin = 1 s: the
    upstream is held back by the link, not idle, so it all arrives, then
    FIN both ways."""
    def handler(c, rec):
        rec["req"] = read_hashed(c)
        rec["end"], rec["sent"], rec["sha"] = send_hashed(c, 512 * KiB, 25)
        c.shutdown(socket.SHUT_WR)
        rec["after"] = wait_clean_end(c, 10)

    srv = net.server(handler, name="answer")
    r = Relay(net, tmp_path, [srv.spec], client_fin="1s", server_fin="1s")
    d_link(net, down_kbit=1000)
    s = net.connect(r.addr())
    how, sent, req_sha = send_hashed(s, 64 * KiB, 26)
    assert how == "sent"
    s.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    how, n, sha = read_hashed(s, timeout=20)
    elapsed = time.monotonic() - t0
    rec = srv.wait_done()[0]
    assert rec["req"] == ("eof", 64 * KiB, req_sha), rec["req"]
    assert (how, n) == ("eof", 512 * KiB), f"client: {how} after {n} bytes"
    assert sha == rec["sha"]
    assert elapsed > 3.5, f"{elapsed:.2f}s: the downlink was not the bottleneck"
    assert rec["after"] == "fin", rec["after"]
    assert wait_clean_end(s, 10) == "fin"
    r.assert_recovered()


def test_half_close_by_upstream_with_slow_upload(net, tmp_path):
    """The upstream answers 64 KiB and FIN at once; the client's 512 KiB
    upload crosses a 1 Mbit/s uplink (over 4 s) against client-fin = 1 s:
    all of it arrives, then FIN both ways."""
    def handler(c, rec):
        rec["end"], rec["sent"], rec["sha"] = send_hashed(c, 64 * KiB, 27)
        c.shutdown(socket.SHUT_WR)
        rec["up"] = read_hashed(c, timeout=20)
        rec["after"] = wait_clean_end(c, 10)

    srv = net.server(handler, name="early-fin")
    r = Relay(net, tmp_path, [srv.spec], client_fin="1s", server_fin="1s")
    d_link(net, up_kbit=1000)
    s = net.connect(r.addr())
    down = {}

    def reader():
        down["r"] = read_hashed(s, timeout=20)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t0 = time.monotonic()
    how, sent, sha = send_hashed(s, 512 * KiB, 28)
    assert how == "sent", how
    s.shutdown(socket.SHUT_WR)
    t.join(25)
    rec = srv.wait_done()[0]
    assert time.monotonic() - t0 > 3.5, "the uplink was not the bottleneck"
    assert down["r"] == ("eof", 64 * KiB, rec["sha"]), down["r"]
    assert rec["up"] == ("eof", 512 * KiB, sha), rec["up"][:2]
    assert rec["after"] == "fin", rec["after"]
    assert wait_clean_end(s, 10) == "fin"
    r.assert_recovered()


def test_answer_then_fin_over_slow_far_link_arrives_whole(net, tmp_path):
    """A media-like download: the upstream sends 1 MiB and FIN at once;
    the client reads as fast as a 1 Mbit/s link with 300 ms each way
    lets it (over 8 s).  With the default client-fin (1 s) the relay's
    last bytes wait in its socket's send queue for longer than that,
    while the client keeps taking them: they must all arrive, then FIN.
    (It failed when the half-close timeout counted from the relay's last
    write, not from the peer's progress.)"""
    def handler(c, rec):
        recv_exact(c, 3)
        rec["end"], rec["sent"], rec["sha"] = send_hashed(c, MiB, 31)
        c.shutdown(socket.SHUT_WR)
        rec["after"] = read_until_closed(c, 30)[0]

    srv = net.server(handler, name="media")
    r = Relay(net, tmp_path, [srv.spec], client="200s", server="200s",
              client_fin="1s", server_fin="1s")
    net.set_delay(up_ms=300, down_ms=300, jitter_ms=10, seed=5)
    net.set_rate(up_kbit=1000, down_kbit=1000)
    s = net.connect(r.addr())
    s.sendall(b"GET")
    how, n, sha = read_hashed(s, timeout=30)
    s.close()  # within client-fin of the end: a clean close both ways
    rec = srv.wait_done(timeout=30)[0]
    assert (how, n) == ("eof", MiB), f"client: {how} after {n} of {MiB} bytes"
    assert sha == rec["sha"]
    assert rec["after"] == "eof", rec["after"]
    net.set_rate()
    net.set_delay()
    r.assert_recovered()


def test_half_close_after_a_quiet_spell_is_not_cut(net, tmp_path):
    """A chat goes quiet for 1.5 s (nothing held, nothing half-closed),
    then the client half-closes; the upstream answers "bye" and FIN
    within 50 ms.  server-fin (1 s) is lingering after a half-close: it
    must count from the FIN, not from the last byte before the quiet
    spell.  (It was cut at once, RST to both, when lingering counted from
    the last byte.)"""
    def handler(c, rec):
        while True:
            d = c.recv(100)
            if not d:
                break
            c.sendall(d)
        time.sleep(0.05)
        c.sendall(b"bye")
        c.shutdown(socket.SHUT_WR)
        rec["after"] = wait_clean_end(c, 5)

    srv = net.server(handler, name="bye")
    r = Relay(net, tmp_path, [srv.spec], client="30s", server="30s",
              client_fin="1s", server_fin="1s")
    net.set_delay(up_ms=25, down_ms=25)
    s = net.connect(r.addr())
    s.sendall(b"hi")
    assert recv_exact(s, 2) == b"hi"
    time.sleep(1.5)
    s.shutdown(socket.SHUT_WR)
    how, n, sha, data = read_hashed(s, timeout=5, keep=True)
    assert (how, data) == ("eof", b"bye"), f"client: {how} after {data!r}"
    assert wait_clean_end(s, 5) == "fin"
    rec = srv.wait_done()[0]
    assert rec["error"] is None and rec["after"] == "fin", rec
    r.assert_recovered()
