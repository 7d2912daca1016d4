"""Reliability under hostile networks (issue 14): the upstream link, both
links at once, TLS and PROXY listeners over a harsh link, reordering,
small and black-holed path MTUs, link flaps.

The topology is netns.py's: a router on each link (client link, upstream
link), each able to delay, jitter, reorder, rate-limit, drop, narrow or
cut it.  As in test_hostile.py, every test checks the SHA-256 of every
relayed byte both ways, how each peer saw the end (FIN or RST), that the
daemon still relays afterwards and that its descriptors are back at the
baseline.  docs/RELIABILITY.md says what each test proves.
"""

import re
import socket
import struct
import threading
import time

import pytest

from conftest import (
    SLOW, check_duplex, duplex_client, h_duplex, half_close,
    read_until_closed, recv_exact,
)
from netns import (  # noqa: F401 (fixtures)
    CLIENT_IP, RELAY_IP, RELAY_UP_IP, UPSTREAM_IPS, net, netns_shim, nsx,
    wait_clean_end,
)
from test_hostile import (
    CHAT_MSGS, CHAT_STALL, KiB, MiB, Relay, answering, assert_chats_intact,
    chat_client, h_chat, read_hashed, send_hashed, sink,
)
from test_proxy_protocol import v2_header
from tls_helpers import read_pp2, tls_duplex_client

# --------------------------------------------------------------------------
# helpers

# The `connect` timeout across a lossy upstream link.  A lost SYN (or
# SYN-ACK) is sent again after 1 s, 3 s, 7 s: with test_hostile's 1 s,
# 9 of 100 chats were cut (RST) at 3% loss each way; 5 s (the default)
# allows three tries, which all fail for one connection in about 5,000
# at 3% each way; 10 s four, one in 80,000.
LOSSY_CONNECT = "10s"


def h_duplex_end(c, rec):
    """conftest.h_duplex, then how the connection ended (rec["end"])."""
    h_duplex(c, rec)
    rec["end"] = wait_clean_end(c, 20)


def h_pp_duplex_end(c, rec):
    """A send-proxy upstream: the PROXY v2 header first, then
    h_duplex_end (a second header would be read as the duplex header
    and the hashes would differ)."""
    rec["pp"] = read_pp2(c)
    h_duplex_end(c, rec)


def duplex_in_client(net, addr, cid, up, down, **kw):
    with net.inside("client"):
        return duplex_client(addr, cid, up, down, **kw)


def check_ended(res, srv, ends=("fin", "fin")):
    """A duplex result: whole both ways (conftest.check_duplex), and the
    ending seen by the client and the upstream."""
    check_duplex(res, srv)
    rec = [r for r in srv.records if r.get("id") == res["id"]][0]
    assert (res.get("end"), rec.get("end")) == ends, \
        f"conn {res['id']}: client {res.get('end')}, upstream {rec.get('end')}"


def run_all(fn, args_list, timeout):
    """fn(*args) in a thread each; returns their results (an exception is
    a result), failing if one is still running after `timeout`."""
    outs = [None] * len(args_list)

    def go(i, args):
        try:
            outs[i] = fn(*args)
        except Exception as e:  # reported with its index
            outs[i] = e

    ts = [threading.Thread(target=go, args=(i, a), daemon=True)
          for i, a in enumerate(args_list)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(0.5, t0 + timeout - time.monotonic()))
    stuck = [i for i, t in enumerate(ts) if t.is_alive()]
    assert not stuck, f"{len(stuck)} still running after {timeout}s: {stuck}"
    return outs


def shim_counter(link, dev, name):
    """A counter the link's stopped shims printed for `dev`, summed."""
    return sum(int(m.group(1)) for m in re.finditer(
        rf"delayshim: {dev}: .*?{name} (\d+)", link.shim_text()))


# --------------------------------------------------------------------------
# the upstream link's impairments are real; reordering is real


@pytest.mark.plain_only
def test_upstream_link_delays_limits_drops_and_reorders(net, tmp_path):
    """The upstream link adds its delay to a relayed round trip, its
    bottleneck holds the rate, its loss rule drops about the configured
    share; the shim's reorder mode reorders (and its default mode never
    does).  Without this the tests below could pass on links that
    impair nothing."""
    r = Relay(net, tmp_path, [f"{UPSTREAM_IPS[1]}:1"])
    ul = net.upstream_link
    assert not ul.routed, "the upstream link crosses a shim unasked"

    def rtt():
        with net.inside("client"):
            s = socket.create_connection(r.addr("probe"), timeout=5)
        try:
            best = 9.0
            for _ in range(5):
                t0 = time.monotonic()
                s.sendall(b"x")
                assert s.recv(1) == b"x"
                best = min(best, time.monotonic() - t0)
            return best, s
        except BaseException:
            s.close()
            raise

    base, s = rtt()
    s.close()
    assert base < 0.05, f"unimpaired RTT {base * 1000:.1f} ms"
    ul.set_delay(up_ms=60, down_ms=40)
    assert ul.routed
    best, s = rtt()
    try:
        # the client link adds nothing: 100 ms, late only by scheduling
        assert 0.1 <= best <= 0.1 + 0.02 * SLOW + base, best
        # upstream to relay at 2 Mbit/s: 256 KiB take ~1.05 s (+ RTT)
        ul.set_rate(down_kbit=2000)
        payload = bytes(range(256)) * 1024
        t0 = time.monotonic()
        t = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        t.start()
        s.settimeout(10)
        got = recv_exact(s, len(payload))
        elapsed = time.monotonic() - t0
        t.join(5)
        assert got == payload
        ideal = len(payload) * 8 / 2e6
        assert ideal * 0.9 <= elapsed <= ideal * 1.5 + 0.5, \
            f"256 KiB in {elapsed:.2f}s at 2 Mbit/s (ideal {ideal:.2f}s)"
    finally:
        s.close()
    ul.set_rate()

    def udp_seqs(src_role, dst_role, dst_ip, n=600, gap=0.001):
        """n numbered datagrams, one every `gap` s; the numbers in the
        order they arrived."""
        with net.inside(dst_role):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with net.inside(src_role):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # read after the last one: room for all of them (root)
            rx.setsockopt(socket.SOL_SOCKET, 33, 8 * MiB)  # SO_RCVBUFFORCE
            rx.bind((dst_ip, 0))
            rx.settimeout(0.3)  # the longest delay is 18 ms
            for i in range(n):
                tx.sendto(struct.pack("!I", i), rx.getsockname())
                time.sleep(gap)
            got = []
            try:
                while True:
                    got.append(struct.unpack("!I", rx.recv(16))[0])
            except socket.timeout:
                pass
            return got
        finally:
            rx.close()
            tx.close()

    def late(seqs):
        """Datagrams that arrived after one sent later."""
        hi, n = -1, 0
        for x in seqs:
            if x < hi:
                n += 1
            hi = max(hi, x)
        return n

    # loss: 10% of the datagrams from the relay host to the upstream host
    ul.set_delay()
    assert not ul.routed
    ul.set_loss(up_pct=10)
    got = udp_seqs("relay", "up", UPSTREAM_IPS[0], n=1000, gap=0.0002)
    hits = ul.drops()["up"]
    # every lost datagram was the rule's (it may also have met the last
    # packets of the connections above)
    lost = 1000 - len(got)
    assert 50 <= lost <= 150 and lost <= hits <= lost + 5, (hits, lost)
    ul.set_loss()

    # jitter without reorder mode bunches, never reorders; with it,
    # a share of the packets overtake (10 +-8 ms, one every 1 ms)
    ul.set_delay(up_ms=10, jitter_ms=8, seed=3)
    fifo = udp_seqs("relay", "up", UPSTREAM_IPS[0])
    ul.set_delay(up_ms=10, jitter_ms=8, seed=3, reorder=True)
    mixed = udp_seqs("relay", "up", UPSTREAM_IPS[0])
    net.client_link.set_delay(up_ms=10, jitter_ms=8, seed=4, reorder=True)
    mixed_c = udp_seqs("client", "relay", RELAY_IP)
    net.clear()
    assert sorted(fifo) == list(range(600)) and late(fifo) == 0, late(fifo)
    assert sorted(mixed) == list(range(600)), "the reorder mode lost packets"
    assert sorted(mixed_c) == list(range(600)), "the reorder mode lost packets"
    # about two thirds arrive after a later one (simulated: 64-69% at a
    # 1 ms gap, 51-56% at 2 ms, 76-79% at 0.5 ms); the sender's own
    # timing blurs the gap
    for seqs in (mixed, mixed_c):
        assert 0.3 * 600 <= late(seqs) <= 0.9 * 600, late(seqs)
    assert shim_counter(ul, "uup", "reordered") == late(mixed), ul.shim_text()
    print(f"reordered: upstream link {late(mixed)}/600, client link "
          f"{late(mixed_c)}/600")
    r.assert_recovered()


# --------------------------------------------------------------------------
# 1. the upstream link impaired

BULK = 2 * MiB


@pytest.mark.plain_only
def test_bulk_both_ways_over_lossy_slow_far_upstream_link(net, tmp_path):
    """2 MiB each way at once across the upstream link at 2% loss each
    way, 4 Mbit/s each way, 50 ms +-5 ms each way (100 ms round trip):
    every byte arrives, FIN both ways, and the loss rule really dropped
    packets both ways."""
    srv = net.server(h_duplex_end, name="duplex")
    r = Relay(net, tmp_path, [srv.spec], connect=LOSSY_CONNECT)
    ul = net.upstream_link
    ul.set_delay(up_ms=75, down_ms=75, jitter_ms=5, seed=21)
    ul.set_rate(up_kbit=4000, down_kbit=4000)
    ul.set_loss(up_pct=3, down_pct=3)
    t0 = time.monotonic()
    res = duplex_in_client(net, r.addr(), 1, BULK, BULK, end_wait=20,
                           timeout=60)
    elapsed = time.monotonic() - t0
    drops = ul.drops()
    check_ended(res, srv)
    assert drops["up"] > 0 and drops["down"] > 0, drops
    net.clear()
    r.assert_recovered()
    print(f"bulk: 2 x {BULK // MiB} MiB in {elapsed:.1f}s, drops {drops}")


CHAT_BOTH = 100


@pytest.mark.plain_only
def test_chat_over_both_links_impaired(net, tmp_path):
    """100 concurrent chat connections (test_hostile's chat: 5 messages
    each way, then FIN each way) with both links impaired at once: the
    client link at 3% loss, 1 Mbit/s, 150 ms +-20 ms each way; the
    upstream link at 3% loss, 2 Mbit/s, 50 ms +-10 ms each way.  Every
    message arrives intact, every connection ends with FIN to both
    peers."""
    srv = net.server(h_chat, name="chat", backlog=512)
    # The relay's timeouts as long as the peers' (CHAT_STALL), as in
    # test_hostile's chat test: with loss, a message or a FIN can come
    # many seconds late
    stall = f"{CHAT_STALL}s"
    r = Relay(net, tmp_path, [srv.spec], client=stall, server=stall,
              client_fin=stall, server_fin=stall, connect=LOSSY_CONNECT)
    net.set_delay(up_ms=150, down_ms=150, jitter_ms=20, seed=22)
    net.set_rate(up_kbit=1000, down_kbit=1000)
    net.set_loss(up_pct=3, down_pct=3)
    ul = net.upstream_link
    ul.set_delay(up_ms=50, down_ms=50, jitter_ms=10, seed=23)
    ul.set_rate(up_kbit=2000, down_kbit=2000)
    ul.set_loss(up_pct=3, down_pct=3)
    outs = [{} for _ in range(CHAT_BOTH)]
    t0 = time.monotonic()
    run_all(chat_client, [(net, r.addr(), i, outs[i])
                          for i in range(CHAT_BOTH)], timeout=90)
    elapsed = time.monotonic() - t0
    assert_chats_intact(r, srv, outs)
    drops = {"client": net.client_link.drops(), "upstream": ul.drops()}
    assert all(n > 0 for d in drops.values() for n in d.values()), drops
    net.clear()
    r.assert_recovered()
    print(f"chat both links: {CHAT_BOTH} x {CHAT_MSGS} messages in "
          f"{elapsed:.1f}s, drops {drops}")


# (reader, expected): a steady 256 KiB/s reader takes 1 MiB in 4 s
# against 2 s idle and 1 s half-close timeouts; one that stops for 4 s
# after 256 KiB is idle beyond its own timeout.
SLOW_UP_READERS = {
    "slow": (dict(rate=256 * KiB), "whole"),
    "stalled": (dict(rate=256 * KiB, pause_at=256 * KiB, pause=4.0), "cut"),
}


@pytest.mark.parametrize("reader", list(SLOW_UP_READERS))
def test_slow_upstream_reader_over_impaired_upstream_link(net, tmp_path,
                                                          reader):
    """The client uploads 1 MiB at once and half-closes; the upstream
    reads it slowly across an impaired upstream link (1% loss, 50 ms +-5
    ms each way, 8 Mbit/s), so the relay's FIN waits behind most of it
    in the relay's socket for 4 s, against server-fin = 1 s and
    server = 2 s.  A reader that keeps reading gets it all, then FIN
    both ways; one that stops for longer than its timeout is cut with RST
    to both peers, never a FIN on the cut stream."""
    how_read, want = SLOW_UP_READERS[reader]
    size = MiB
    srv = net.server(sink(**how_read), name="sink")
    r = Relay(net, tmp_path, [srv.spec], client="2s", server="2s",
              client_fin="1s", server_fin="1s", connect=LOSSY_CONNECT)
    ul = net.upstream_link
    ul.set_delay(up_ms=50, down_ms=50, jitter_ms=5, seed=24)
    ul.set_rate(up_kbit=8000, down_kbit=8000, queue_ms=50)
    ul.set_loss(up_pct=1, down_pct=1)
    s = net.connect(r.addr())
    t0 = time.monotonic()
    how, sent, sha = send_hashed(s, size, 25)
    if how == "sent":
        how = half_close(s)
    after = read_until_closed(s, 20)[:2] if how == "sent" else None
    elapsed = time.monotonic() - t0
    rec = srv.wait_done()[0]
    if want == "whole":
        assert how == "sent", how
        assert after == ("eof", 0), f"client: {after} after {elapsed:.1f}s"
        assert (rec["how"], rec["got"]) == ("eof", size), rec
        assert rec["sha"] == sha, "upload corrupted"
        assert elapsed > 3.0, f"{elapsed:.2f}s: the reader was not slow"
        assert wait_clean_end(s, 10) == "fin"
    else:
        client_end = after[0] if how == "sent" else how
        assert client_end in ("reset", "ConnectionResetError",
                              "BrokenPipeError"), client_end
        assert rec["how"] == "reset", \
            f"a cut stream reached the upstream as {rec['how']} ({rec['got']} bytes)"
        assert rec["got"] < size
    s.close()
    net.clear()
    r.assert_recovered()


# (listener, bytes the client sends before the relay gives up, ending)
HELD = {
    # bytes in the kernel's queue, never read: the kernel's RST
    "plain": ("plain", 8 * KiB, "rst"),
    # bytes read with the client's Finished into the relay's buffer
    "tls": ("tls", 8 * KiB, "rst"),
    # nothing sent, nothing held: FIN, like a server that is down
    "tls-empty": ("tls", 0, "fin"),
}


@pytest.mark.parametrize("case", list(HELD))
def test_unreachable_upstream_never_drops_held_bytes_with_a_fin(
        net, tmp_path, case):
    """The only upstream server is blackholed (SYNs dropped), so after
    the connect timeout (1 s) the relay gives up on a client whose bytes
    it has already taken (in its socket's queue, or, for a TLS client,
    read with the client's Finished): those bytes can never be
    delivered, so the client gets an RST, never a FIN, which many TLS
    clients (OpenSSL 3 with SSL_OP_IGNORE_UNEXPECTED_EOF, Python's
    default) take for a clean close.  A client that sent nothing gets a
    FIN.  (The TLS client holding bytes got a bare FIN before the fix;
    a plain one always got the kernel's RST: its bytes were never read.)"""
    from tls_helpers import manual_tls
    kind, size, want = HELD[case]
    srv = net.server(h_duplex, name="blackholed")
    r = Relay(net, tmp_path, [srv.spec], listeners={"tls": {"tls": "on"}},
              connect="1s")
    net.set_upstream(srv.host, srv.port, "blackhole")
    with net.inside("client"):
        s = socket.create_connection(r.addr(kind), timeout=5)
    data = bytes(range(256)) * (size // 256)
    if kind == "tls":
        manual_tls(s, early=data)
    elif data:
        s.sendall(data)
    s.settimeout(5)
    how = "fin"
    try:
        while s.recv(65536):  # TLS 1.3 session tickets, then the end
            pass
    except ConnectionResetError:
        how = "rst"
    s.close()
    assert how == want, f"{case}: the client saw {how}"
    assert srv.accepted == 0
    net.set_upstream(srv.host, srv.port, "up")
    r.assert_recovered()


# --------------------------------------------------------------------------
# 2. TLS and PROXY-protocol listeners over a harsh client link

KINDS = ("tls", "pp", "pp-tls")
# The handshake timeout (TLS handshake, PROXY header: each) on a link at
# 5% loss and 600 ms round trip.  The relay's first RTO there is about
# 1.8 s (600 ms + 4 x 300 ms of variance), doubling: a handshake whose
# ClientHello, server flight or Finished is lost once takes about 2.5 s,
# twice about 6 s (measured up to 5.9 s), three times about 13 s, beyond
# the default 10 s.  With some five such packets per handshake, that is
# one handshake in about 1,600 on this link: 20 s (four losses of one
# packet, about 28 s, being one in 30,000) is what such a link needs.
HARSH_HANDSHAKE = "20s"
PER_KIND = 8
PP_UP, PP_DOWN = 8 * KiB, 16 * KiB


def pp_src(cid):
    return (f"203.0.113.{10 + cid}", 40000 + cid)


def listener_client(net, d, kind, cid):
    """One connection of `kind`: a PROXY v2 header first on the pp kinds,
    in three segments 0.1 s apart; then a TLS handshake on the tls
    kinds; then the duplex transfer, close (close_notify) and FIN."""
    pre = ()
    if kind.startswith("pp"):
        hdr = v2_header(pp_src(cid), (RELAY_IP, d.port(kind)))
        pre = (hdr[:7], hdr[7:20], hdr[20:])
    with net.inside("client"):
        if kind.endswith("tls"):
            return tls_duplex_client(d.addr(kind), cid, PP_UP, PP_DOWN,
                                     preamble=pre, gap=0.1, end_wait=20,
                                     timeout=60)
        out = duplex_client(d.addr(kind), cid, PP_UP, PP_DOWN, preamble=pre,
                            gap=0.1, end_wait=20, timeout=60)
        return out


@pytest.mark.plain_only
def test_tls_and_proxy_listeners_over_harsh_links(net, tmp_path):
    """8 clients each on a TLS, an accept-proxy and an accept-proxy + TLS
    listener, all at once, across a client link at 5% loss, 1 Mbit/s,
    300 ms +-30 ms each way; the upstream group sends a PROXY v2 header
    across an upstream link at 2% loss, 4 Mbit/s, 50 ms each way.
    Every TLS handshake completes within the handshake timeout (20 s
    here: HARSH_HANDSHAKE), every PROXY header the clients send in three
    segments is read whole, every byte arrives both ways, the client gets
    close_notify then FIN, the upstream FIN; each upstream connection
    starts with exactly one PROXY header naming the client (its own
    address, or the one in its header)."""
    srv = net.server(h_pp_duplex_end, name="pp-up", backlog=128)
    pp = {"accept-proxy": "on", "trusted-proxies": f"{CLIENT_IP}/32"}
    r = Relay(net, tmp_path, [srv.spec], up_opts={"send-proxy": "v2"},
              listeners={"tls": {"tls": "on"}, "pp": pp,
                         "pp-tls": dict(pp, tls="on")},
              client_fin="30s", server_fin="30s", connect=LOSSY_CONNECT,
              handshake=HARSH_HANDSHAKE)
    net.set_delay(up_ms=300, down_ms=300, jitter_ms=30, seed=31)
    net.set_rate(up_kbit=1000, down_kbit=1000)
    net.set_loss(up_pct=5, down_pct=5)
    ul = net.upstream_link
    ul.set_delay(up_ms=50, down_ms=50, jitter_ms=5, seed=32)
    ul.set_rate(up_kbit=4000, down_kbit=4000)
    ul.set_loss(up_pct=2, down_pct=2)
    jobs = [(net, r.d, kind, k * 100 + i)
            for i in range(PER_KIND) for k, kind in enumerate(KINDS)]
    t0 = time.monotonic()
    outs = run_all(listener_client, jobs, timeout=100)
    elapsed = time.monotonic() - t0
    failed = [(j[2], j[3], o) for j, o in zip(jobs, outs)
              if isinstance(o, Exception)]
    assert not failed, failed[:5]
    recs = {rec["id"]: rec for rec in srv.wait_done(timeout=30)
            if "id" in rec}
    bad = []
    hs = []
    for (_, d, kind, cid), o in zip(jobs, outs):
        try:
            check_ended(o, srv)
            pp_rec = recs[cid]["pp"]
            want = pp_src(cid) if kind.startswith("pp") else o["src"]
            assert pp_rec["src"] == tuple(want), (pp_rec["src"], want)
            if kind.endswith("tls"):
                hs.append(o["handshake_s"])
                assert (o["closed_how"], o["after_notify"], o["raw_end"]) \
                    == ("close_notify", 0, "eof"), \
                    (o["closed_how"], o.get("after_notify"), o.get("raw_end"))
        except (AssertionError, KeyError) as e:
            bad.append((kind, cid, repr(e), o.get("closed_how"),
                        o.get("handshake_s")))
    assert not bad, f"{len(bad)} bad connections: {bad[:5]}"
    assert srv.accepted == len(jobs), srv.accepted
    assert max(hs) < 20.0, hs
    drops = {"client": net.client_link.drops(), "upstream": ul.drops()}
    assert all(n > 0 for d_ in drops.values() for n in d_.values()), drops
    net.clear()
    r.assert_recovered()
    print(f"listeners over harsh links: {len(jobs)} connections in "
          f"{elapsed:.1f}s, TLS handshakes {min(hs):.2f}-{max(hs):.2f}s, "
          f"drops {drops}")


# --------------------------------------------------------------------------
# 3. reordering, small and black-holed path MTUs, link flaps


def test_reordering_on_both_links_relays_intact(net, tmp_path):
    """Both links reorder packets (10 ms +-8 ms each way, each packet on
    its own draw: delayshim's reorder mode) while 2 MiB cross each way:
    every byte arrives in order both ways, FIN both ways, and the shims
    did reorder thousands of packets."""
    srv = net.server(h_duplex_end, name="duplex")
    r = Relay(net, tmp_path, [srv.spec])
    net.set_delay(up_ms=10, down_ms=10, jitter_ms=8, seed=41, reorder=True)
    net.upstream_link.set_delay(up_ms=10, down_ms=10, jitter_ms=8, seed=42,
                                reorder=True)
    res = duplex_in_client(net, r.addr(), 1, 2 * MiB, 2 * MiB, end_wait=20,
                           timeout=60)
    net.clear()  # stops the shims: they print their counters
    check_ended(res, srv)
    counts = {f"{link.name} {dev}": shim_counter(link, dev, "reordered")
              for link in net.links.values()
              for dev in (link.tun_up, link.tun_dn)}
    assert all(n >= 100 for n in counts.values()), counts
    r.assert_recovered()
    print(f"reordered packets: {counts}")


def route_mtu(net, role, dst):
    """The path MTU the kernel of `role` learnt toward dst (None: none)."""
    out = nsx(net.ns[role], "ip", "route", "get", dst).stdout
    m = re.search(r"\bmtu (\d+)", out)
    return int(m.group(1)) if m else None


def test_small_path_mtu_relays_intact(net, tmp_path):
    """A 576-byte path MTU on the client link and a 1280-byte one on the
    upstream link, every host's interface at 1500: the routers answer
    larger packets with ICMP "fragmentation needed", the hosts' TCP
    shrinks its segments (path MTU discovery), and 1 MiB each way
    arrives whole, FIN both ways.  The relay host's kernel did learn
    both path MTUs."""
    srv = net.server(h_duplex_end, name="duplex")
    r = Relay(net, tmp_path, [srv.spec])
    ul = net.upstream_link
    ul.set_delay(up_ms=1, down_ms=1)  # puts the shim devices in the path
    net.client_link.set_path_mtu(576)
    ul.set_path_mtu(1280)
    res = duplex_in_client(net, r.addr(), 1, MiB, MiB, end_wait=20,
                           timeout=60)
    learnt = {"relay->client": route_mtu(net, "relay", CLIENT_IP),
              "relay->upstream": route_mtu(net, "relay", UPSTREAM_IPS[1]),
              "client->relay": route_mtu(net, "client", RELAY_IP),
              "upstream->relay": route_mtu(net, "up", RELAY_UP_IP)}
    net.clear()
    check_ended(res, srv)
    assert learnt == {"relay->client": 576, "relay->upstream": 1280,
                      "client->relay": 576, "upstream->relay": 1280}, learnt
    r.assert_recovered()


BH_SIZE = MiB


@pytest.mark.plain_only
@pytest.mark.parametrize("probing", ["mtu-probing", "no-probing"])
def test_path_mtu_black_hole(net, tmp_path, probing):
    """The client link drops, without ICMP, every packet toward the
    client longer than 1280 bytes (a path-MTU black hole); the upstream
    answers 1 MiB.  The relay's segments of 1500 bytes vanish, and only
    the kernel's black-hole detection can help (net.ipv4.tcp_mtu_probing
    in the relay's namespace, 0 by default): with it (1), the relay's
    TCP drops to 1024-byte segments after about 3 s of retransmissions
    (then probes up to what passes) and the download completes, FIN
    both ways; without it, the transfer
    stalls until the client timeout (6 s) cuts it, RST to both peers,
    never a FIN on the cut stream."""
    nsx(net.ns["relay"], "sysctl", "-q", "-w",
        f"net.ipv4.tcp_mtu_probing={1 if probing == 'mtu-probing' else 0}")
    srv = net.server(answering(BH_SIZE, 51), name="answer")
    r = Relay(net, tmp_path, [srv.spec], client="6s", server="6s",
              client_fin="1s", server_fin="1s")
    net.set_delay(up_ms=10, down_ms=10)
    net.client_link.set_max_packet(down_len=1280)
    s = net.connect(r.addr())
    t0 = time.monotonic()
    s.sendall(b"GET")
    how, n, sha = read_hashed(s, timeout=30)
    elapsed = time.monotonic() - t0
    if how == "eof":
        s.close()  # within client-fin: a clean close both ways
    rec = srv.wait_done()[0]
    dropped = net.client_link.drops("max_packet")
    assert dropped["down"] > 0, "the black hole dropped nothing"
    if probing == "mtu-probing":
        assert (how, n) == ("eof", BH_SIZE), \
            f"client: {how} after {n} bytes, {elapsed:.1f}s"
        assert sha == rec["sha"], "download corrupted"
        assert (rec["end"], rec["after"]) == ("sent", "eof"), rec
    else:
        assert how == "reset", f"a cut stream ended with {how} after {n} bytes"
        assert n < BH_SIZE
        assert 6.0 <= elapsed <= 6.0 + 2.0 * SLOW, f"cut after {elapsed:.1f}s"
        assert rec["end"] in ("ConnectionResetError", "BrokenPipeError",
                              "reset") or rec.get("after") == "reset", rec
        s.close()
    net.clear()
    r.assert_recovered()
    print(f"black hole ({probing}): {how} after {n} bytes in {elapsed:.1f}s, "
          f"{dropped['down']} packets dropped")


def tx_dropped(net, dev):
    """Packets the relay host's interface could not hand to its peer."""
    import json
    out = nsx(net.ns["relay"], "ip", "-s", "-j", "link", "show", "dev",
              dev).stdout
    return json.loads(out)[0]["stats64"]["tx"]["dropped"]


@pytest.mark.plain_only
@pytest.mark.parametrize("which", ["client", "upstream"])
def test_link_flap_mid_stream(net, tmp_path, which):
    """The link (client or upstream; 2 Mbit/s each way, 10 ms each way)
    goes down for 2 s in the middle of a transfer of 512 KiB each way
    (2.1 s at that rate): the relay's interface loses its carrier and its
    packets are dropped; TCP retransmits once the link is back and,
    within the timeouts (30 s), the transfer completes whole, FIN both
    ways.  The bottleneck makes the outage visible: the 2 s are not made
    up afterwards."""
    srv = net.server(h_duplex_end, name="duplex")
    r = Relay(net, tmp_path, [srv.spec])
    link = net.links[which]
    dev = "r0" if which == "client" else "r1"
    link.set_delay(up_ms=10, down_ms=10)
    link.set_rate(up_kbit=2000, down_kbit=2000, queue_ms=100)
    size = 512 * KiB
    ideal = size * 8 / 2e6
    link_ev = {}

    def flap():
        time.sleep(0.7)
        link_ev["drops0"] = tx_dropped(net, dev)
        link.set_down(True)
        time.sleep(2.0)
        link.set_down(False)
        link_ev["drops1"] = tx_dropped(net, dev)

    f = threading.Thread(target=flap, daemon=True)
    f.start()
    t0 = time.monotonic()
    res = duplex_in_client(net, r.addr(), 1, size, size, end_wait=20,
                           timeout=40)
    elapsed = time.monotonic() - t0
    f.join(10)
    check_ended(res, srv)
    assert link_ev["drops1"] > link_ev["drops0"], \
        f"nothing was lost while the link was down: {link_ev}"
    # 2 s down, then up to two more of retransmission backoff (RTO 0.2 s
    # doubling through the outage: the next try comes 0-1.6 s after it)
    assert ideal + 1.8 <= elapsed <= ideal + 2.0 + 2.0 * SLOW + 1.0, \
        f"{elapsed:.1f}s for {ideal:.1f}s of transfer and a 2 s outage"
    net.clear()
    r.assert_recovered()
    print(f"flap ({which}): {elapsed:.1f}s, relay's {dev} dropped "
          f"{link_ev['drops1'] - link_ev['drops0']} packets")
