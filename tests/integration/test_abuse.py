"""Abuse (issue 14): never an open proxy, slowloris on every listener
kind, and the memory a stalled connection may hold.

Each test gives the daemon a host of its own (a network namespace,
netns.py): the open-proxy test the five-host topology, so that every SYN
leaving the relay host can be counted by nftables on that host; the
others a one-namespace host, so that thousands of connections use
nobody else's ports.  docs/RELIABILITY.md says what each test proves.
"""

import array
import errno
import hashlib
import heapq
import fcntl
import os
import re
import resource
import selectors
import socket
import ssl
import struct
import threading
import time

import pytest

import conftest
from conftest import (
    SLOW, h_echo, make_config, read_until_closed, recv_exact, start_daemon,
    wait_for)
from netns import (  # noqa: F401 (fixtures)
    CLIENT_IP, RELAY_IP, UPSTREAM_IPS, host_factory, net, netns_shim, nsx)
from stats_helpers import http, parse_response, read_all, request_bytes
from tls_helpers import client_ctx, client_hello, manual_tls

KiB = 1 << 10

# --------------------------------------------------------------------------
# requests for somewhere else: PROXY headers, HTTP, SOCKS, TLS names

PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def pp_v1(src, dst):
    if src is None:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def pp_v2(src=None, dst=None, local=False, tlvs=b""):
    """A v2 header: PROXY (or LOCAL) over TCP4/TCP6, TLVs appended."""
    if src is None:
        body, fam = b"", 0x00
    elif ":" in src[0]:
        body = (socket.inet_pton(socket.AF_INET6, src[0])
                + socket.inet_pton(socket.AF_INET6, dst[0])
                + struct.pack("!HH", src[1], dst[1]))
        fam = 0x21
    else:
        body = (socket.inet_aton(src[0]) + socket.inet_aton(dst[0])
                + struct.pack("!HH", src[1], dst[1]))
        fam = 0x11
    body += tlvs
    return (PP2_SIG + bytes([0x20 | (0 if local else 1), fam])
            + struct.pack("!H", len(body)) + body)


def pp2_tlv(t, v):
    return bytes([t]) + struct.pack("!H", len(v)) + v


PP2_TYPE_AUTHORITY = 0x02  # the host name the client asked for (SNI)


def elsewhere_requests(ip, port, name):
    """Ways a client asks a proxy for another destination: ip:port (a
    listening bait server) or the host name `name`."""
    p = struct.pack("!H", port)
    n = name.encode()
    return {
        "http-connect": (f"CONNECT {ip}:{port} HTTP/1.1\r\n"
                         f"Host: {ip}:{port}\r\n\r\n").encode(),
        "http-connect-name": (f"CONNECT {name}:443 HTTP/1.1\r\n"
                              f"Host: {name}:443\r\n\r\n").encode(),
        "http-absolute": (f"GET http://{ip}:{port}/ HTTP/1.1\r\n"
                          f"Host: {ip}:{port}\r\n\r\n").encode(),
        "http-host": f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode(),
        # greeting (no auth), then CONNECT to an IPv4 address / a name
        "socks5": (b"\x05\x01\x00" + b"\x05\x01\x00\x01"
                   + socket.inet_aton(ip) + p),
        "socks5-name": (b"\x05\x01\x00" + b"\x05\x01\x00\x03"
                        + bytes([len(n)]) + n + struct.pack("!H", 443)),
        "socks4": b"\x04\x01" + p + socket.inet_aton(ip) + b"u\x00",
        "socks4a": (b"\x04\x01" + struct.pack("!H", 443) + b"\x00\x00\x00\x01"
                    + b"u\x00" + n + b"\x00"),
    }


class Egress:
    """nftables on the relay host counting what leaves it: every TCP SYN
    (a connection attempt) per IPv4 destination and in total, IPv6 SYNs,
    and new flows of any other protocol (a DNS query, say)."""

    def __init__(self, net):
        self.ns = net.ns["relay"]
        nsx(self.ns, "nft", "-f", "-", input=(
            "table inet llr_egress {\n"
            " set dests { type ipv4_addr . inet_service; size 65536;\n"
            "             flags dynamic; counter; }\n"
            " chain out {\n"
            "  type filter hook output priority 0;\n"
            "  tcp flags & (syn | ack) == syn update @dests"
            " { ip daddr . tcp dport }\n"
            "  tcp flags & (syn | ack) == syn counter comment \"syn\"\n"
            "  meta nfproto ipv6 tcp flags & (syn | ack) == syn counter"
            " comment \"syn6\"\n"
            "  meta l4proto != tcp ct state new counter comment \"other\"\n"
            " }\n"
            "}\n"))

    def read(self):
        out = nsx(self.ns, "nft", "list", "table", "inet", "llr_egress").stdout
        dests = {(m.group(1), int(m.group(2))): int(m.group(3))
                 for m in re.finditer(
                     r"(\d+\.\d+\.\d+\.\d+) \. (\d+) counter packets (\d+)",
                     out)}
        rules = {m.group(2): int(m.group(1)) for m in re.finditer(
            r"counter packets (\d+) bytes \d+ comment \"(\w+)\"", out)}
        assert set(rules) == {"syn", "syn6", "other"}, out
        return dests, rules


def h_count(c, rec):
    """Bait: records that someone connected, and what came."""
    rec["data"] = b""
    c.settimeout(1.0)
    try:
        rec["data"] = c.recv(4096)
    except OSError:
        pass


def expect_echo_then_fin(s, payload, header=b""):
    """A relayed connection: the echo upstream returns the payload (not
    the PROXY header before it), and after our FIN the relay's FIN (EOF,
    not a reset)."""
    s.sendall(header + payload)
    assert recv_exact(s, len(payload)) == payload, "echo differs"
    s.shutdown(socket.SHUT_WR)
    how, n, _ = read_until_closed(s, 5.0 * SLOW)
    assert (how, n) == ("eof", 0), (how, n)


def tls_in_client(net, addr, sni, preamble=b"", alpn=None):
    """A TLS connection from the client host, handshake done."""
    ctx = client_ctx()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with net.inside("client"):
        raw = conftest.connect(addr, timeout=5.0 * SLOW)
    if preamble:
        raw.sendall(preamble)
    s = ctx.wrap_socket(raw, server_hostname=sni, do_handshake_on_connect=False)
    conftest._SOCKETS.append(s)
    s.settimeout(5.0 * SLOW)
    s.do_handshake()
    return s


def tls_expect_echo_then_close(s, payload):
    """Relayed inside TLS: the echo comes back; our close_notify and FIN
    bring the relay's close_notify and FIN."""
    s.sendall(payload)
    assert recv_exact(s, len(payload)) == payload, "echo through TLS differs"
    raw = s.unwrap()  # sends close_notify, waits for the relay's
    raw.shutdown(socket.SHUT_WR)
    how, n, _ = read_until_closed(raw, 5.0 * SLOW)
    assert (how, n) == ("eof", 0), (how, n)


def test_never_an_open_proxy(net, tmp_path):
    """Whatever a client names (a PROXY header's destination or authority
    TLV, a TLS server name or ALPN, an HTTP CONNECT, absolute URI or Host
    line, a SOCKS4/4a/5 request), on every listener kind (plain, TLS,
    accept-proxy, accept-proxy + TLS, stats): the only SYNs that leave the
    relay host go to the configured upstream, one per relayed connection,
    and nothing else leaves it (no DNS, no IPv6).  A bait server listening
    at the named address:port is never reached."""
    up_ip, bait_ip = UPSTREAM_IPS[1], UPSTREAM_IPS[0]
    echo = net.server(h_echo, ip=up_ip, name="echo")
    # the destinations clients ask for: listening, so a dial would succeed
    baits = [net.server(h_count, ip=bait_ip, name="bait"),
             net.server(h_count, ip=up_ip, name="bait-same-host")]
    egress = Egress(net)  # before the daemon starts: it sees everything
    tls = {"tls": "on"}
    pp = {"accept-proxy": "on", "trusted-proxies": f"{CLIENT_IP}/32"}
    cfg = make_config(
        {"up": [echo.spec]},  # check-interval 1h: no health check SYN
        {"plain": {"bind": f"{RELAY_IP}:0", "upstream": "up"},
         "tls": dict(tls, bind=f"{RELAY_IP}:0", upstream="up"),
         "pp": dict(pp, bind=f"{RELAY_IP}:0", upstream="up"),
         "pp-tls": dict(pp, **tls, bind=f"{RELAY_IP}:0", upstream="up")},
        timeouts={"handshake": "3s"},
        extra=f"\n[stats]\nlisten = {RELAY_IP}:0\npublic = on\n")
    d = net.daemon(tmp_path, cfg)

    def client(name):
        with net.inside("client"):
            return conftest.connect(d.addr(name), timeout=5.0 * SLOW)

    relayed = 0
    for bait in baits:
        reqs = elsewhere_requests(bait_ip if bait.name == "bait" else up_ip,
                                  bait.port, "bait.example")
        here = (CLIENT_IP, 40000)
        there = (bait.host, bait.port)
        headers = {
            "v1": pp_v1(here, there),
            "v1-unknown": pp_v1(None, None),
            "v2": pp_v2(here, there,
                        tlvs=pp2_tlv(PP2_TYPE_AUTHORITY, b"bait.example")),
            "v2-local": pp_v2(local=True),
            "v2-tcp6": pp_v2(("2001:db8::1", 40000),
                             ("2001:db8::bad", bait.port)),
        }
        # plain: every byte is payload, relayed as is to the upstream
        for kind, req in reqs.items():
            expect_echo_then_fin(client("plain"), req)
            relayed += 1
        # PROXY listeners: the header's destination is information only
        for i, (hk, hdr) in enumerate(headers.items()):
            req = list(reqs.values())[i % len(reqs)]
            expect_echo_then_fin(client("pp"), req, header=hdr)
            relayed += 1
        # TLS: any server name, any ALPN; inside, requests are payload
        for i, sni in enumerate(("bait.example", f"{bait_ip}.nip.example")):
            s = tls_in_client(net, d.addr("tls"), sni,
                              alpn=["h2", "http/1.1"] if i else None)
            tls_expect_echo_then_close(s, list(reqs.values())[i])
            relayed += 1
            s = tls_in_client(net, d.addr("pp-tls"), sni,
                              preamble=[headers["v1"], headers["v2"]][i])
            tls_expect_echo_then_close(s, list(reqs.values())[i + 4])
            relayed += 1
        # Not a handshake, not a header, not a stats request: closed,
        # nothing dialled.  TLS: an alert, then FIN (DESIGN.md).
        for kind, req in reqs.items():
            s = client("tls")
            s.sendall(req)
            data, how = read_all(s, 5.0 * SLOW)
            assert how == "eof" and (data == b"" or data[:1] == b"\x15"), \
                f"tls listener, {kind}: {how} after {data!r} (want FIN, " \
                "after an alert if any)"
            # PROXY listeners: not a header.  DESIGN.md's table does not
            # say how this ends; today it is an RST (the bytes were only
            # peeked, so close(2) finds them unread), unlike the FIN of a
            # TLS listener's refusal.  Pinned so that a change is seen.
            for name in ("pp", "pp-tls"):
                s = client(name)
                s.sendall(req)
                how, n, _ = read_until_closed(s, 5.0 * SLOW)
                assert (how, n) == ("reset", 0), \
                    f"{name}, {kind}: {how} after {n} bytes"
            # stats: an HTTP answer (an error, or the dashboard for a
            # plain GET /), never a tunnel; our FIN ends what is not a
            # whole request at once instead of at the 2 s header timeout
            s = client("stats")
            s.sendall(req)
            s.shutdown(socket.SHUT_WR)
            data, how = read_all(s, 5.0 * SLOW)
            assert how == "eof", f"stats, {kind}: {how} after {data[:80]!r}"
            if data:
                status = parse_response(data)[0]
                assert status == 200 if kind == "http-host" else \
                    400 <= status < 500, f"stats, {kind}: {data[:200]!r}"

    # every connection is closed: nothing can still be dialling
    wait_for(lambda: echo.accepted == relayed, 5.0 * SLOW,
             what=f"{relayed} connections at the echo upstream")
    time.sleep(0.2)
    dests, rules = egress.read()
    assert dests == {(up_ip, echo.port): relayed}, \
        f"SYNs left the relay host for {dests}; expected only " \
        f"{relayed} to {up_ip}:{echo.port}"
    assert rules == {"syn": relayed, "syn6": 0, "other": 0}, rules
    for bait in baits:
        assert bait.accepted == 0, f"{bait.name} was reached"
    assert echo.accepted == relayed
    with net.inside("client"):
        stats = http(d.addr("stats"), "/stats.json").json()
    servers = stats["upstreams"][0]["servers"]
    assert [s_["connects"] for s_ in servers] == [relayed], servers
    assert d.alive()


WA_INTRO = b"ED\x00\x01\x00\x00\x01\x08WA\x06\x03\x00\x00\x02\x12\x01"
DECOY_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def h_web(c, rec):
    """The decoy: reads what comes within 0.5 s, answers 400, closes."""
    c.settimeout(0.5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            d = c.recv(4096)
            if not d:
                break
            data += d
    except OSError:
        pass
    rec["data"] = data
    if data:
        c.sendall(DECOY_REPLY)
    c.close()


def test_never_an_open_proxy_with_camouflage(net, tmp_path):
    """Camouflage adds ways to be sent elsewhere: the decoy, the decoy's
    TLS port, the passthrough group for ClientHellos naming media hosts.
    Whatever a client sends (proxy requests of every kind, WhatsApp's
    intro, TLS names of the bait, of media hosts, plain HTTP on the TLS
    port), the SYNs that leave the relay host go to those configured
    groups only, in exactly the numbers the classification implies."""
    up_ip, bait_ip = UPSTREAM_IPS[1], UPSTREAM_IPS[0]
    chat = net.server(h_echo, ip=up_ip, name="chat")
    web = net.server(h_web, ip=up_ip, name="web")
    webtls = net.server(h_web, ip=up_ip, name="webtls")
    media = net.server(h_echo, ip=up_ip, name="media")
    baits = [net.server(h_count, ip=bait_ip, name="bait")]
    egress = Egress(net)
    camo = {"upstream": "chat", "decoy": "web"}
    cfg = make_config(
        {"chat": [chat.spec], "web": [web.spec], "webtls": [webtls.spec],
         "media": [media.spec]},
        {"camo": dict(camo, bind=f"{RELAY_IP}:0"),
         "camo-tls": dict(camo, bind=f"{RELAY_IP}:0", tls="on",
                          **{"decoy-tls": "webtls", "passthrough": "media"})},
        timeouts={"handshake": "2s"})
    d = net.daemon(tmp_path, cfg)

    def client(name):
        with net.inside("client"):
            return conftest.connect(d.addr(name), timeout=5.0 * SLOW)

    want = {"chat": 0, "web": 0, "webtls": 0, "media": 0}
    reqs = elsewhere_requests(bait_ip, baits[0].port, "bait.example")
    for kind, req in reqs.items():
        # plain: proxy requests are not WhatsApp's: the decoy answers
        s = client("camo")
        s.sendall(req)
        data, how = read_all(s, 5.0 * SLOW)
        assert (data, how) == (DECOY_REPLY, "eof"), (kind, data, how)
        want["web"] += 1
        # TLS port, in clear: the decoy's TLS port answers
        s = client("camo-tls")
        s.sendall(req)
        data, how = read_all(s, 5.0 * SLOW)
        assert (data, how) == (DECOY_REPLY, "eof"), (kind, data, how)
        want["webtls"] += 1
    # inside our TLS, whatever the name: the decoy (over plain HTTP)
    for i, sni in enumerate(("bait.example", f"{bait_ip}.nip.example")):
        s = tls_in_client(net, d.addr("camo-tls"), sni)
        s.sendall(list(reqs.values())[i])
        assert recv_exact(s, len(DECOY_REPLY)) == DECOY_REPLY
        s.close()
        want["web"] += 1
    # WhatsApp's intro: the decoy was dialled at once, then chat
    for name in ("camo", "camo-tls"):
        if name == "camo":
            s = client(name)
        else:
            s = tls_in_client(net, d.addr(name), None)
        s.sendall(WA_INTRO)
        assert recv_exact(s, len(WA_INTRO)) == WA_INTRO
        s.close()
        want["web"] += 1
        want["chat"] += 1
    # a ClientHello naming a media host: raw to the media group (an echo
    # here, which sends the hello back), and never to the name's address
    hello = client_hello("mmg.whatsapp.net")
    s = client("camo-tls")
    s.sendall(hello)
    assert recv_exact(s, len(hello)) == hello
    s.close()
    want["media"] += 1
    servers = {"chat": chat, "web": web, "webtls": webtls, "media": media}
    wait_for(lambda: all(servers[k].accepted >= v for k, v in want.items()),
             5.0 * SLOW, what=f"connections {want}")
    time.sleep(0.2)
    dests, rules = egress.read()
    expect = {(up_ip, servers[k].port): v for k, v in want.items() if v}
    assert dests == expect, f"SYNs left for {dests}; expected {expect}"
    assert rules == {"syn": sum(want.values()), "syn6": 0, "other": 0}, rules
    assert baits[0].accepted == 0, "the bait was reached"
    assert d.alive()


# --------------------------------------------------------------------------
# many connections, one thread


@pytest.fixture
def nofile():
    """nofile(n): our descriptor limit raised to n for this test (the
    daemon inherits it), put back afterwards; fails, never skips, when
    the hard limit is lower."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)

    def need(n):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft >= n:
            return
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.fail(f"this test needs {n} file descriptors; the hard "
                        f"limit is {hard} (raise it: ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))

    yield need
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


class Swarm:
    """Client connections driven by one thread with epoll, and an echo
    upstream in the same thread.  Each client connects (paced), then
    sends its script, [(seconds after its connect, bytes)], and records
    when and how its connection ended: "eof" (the relay's FIN), "reset",
    or None while open.  Each upstream connection echoes and records the
    same.  Sockets are made in the host's namespace."""

    def __init__(self, host, pace=4000.0):
        self.host = host
        self.pace = pace  # connects per second
        self.clients = []  # dicts: addr, script, tag, t_conn, t_end, how, got
        self.ups = []  # dicts: t_acc, t_end, how, got
        self.stop = threading.Event()
        self.error = None
        self.sel = selectors.EpollSelector()
        with host.inside():
            self.lsock = socket.socket()
            self.lsock.bind(("127.0.0.1", 0))
            self.lsock.listen(4096)
        self.lsock.setblocking(False)
        self.upstream = f"127.0.0.1:{self.lsock.getsockname()[1]}"

    def add(self, addr, script, tag):
        self.clients.append({"addr": addr, "script": list(script), "tag": tag,
                             "t_conn": None, "t_end": None, "how": None,
                             "got": 0, "sent": 0})

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="swarm")
        self.thread.start()
        conftest._THREADS.append(self.thread)

    def join(self, timeout):
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "swarm thread stuck"
        if self.error is not None:
            raise self.error

    def _end(self, rec, sock, how, now):
        rec["how"], rec["t_end"] = how, now
        self.sel.unregister(sock)
        sock.close()

    def _run(self):
        try:
            with self.host.inside():
                self._loop()
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            for key in list(self.sel.get_map().values()):
                key.fileobj.close()
            self.sel.close()

    def _loop(self):
        sel = self.sel
        sel.register(self.lsock, selectors.EVENT_READ, ("listen", None))
        t0 = time.monotonic()
        todo = list(range(len(self.clients)))
        todo.reverse()
        due = []  # (time, client index) of pending script steps
        while not self.stop.is_set():
            now = time.monotonic()
            # connects, paced
            started = len(self.clients) - len(todo)
            while todo and (now - t0) * self.pace >= started:
                i = todo.pop()
                rec = self.clients[i]
                s = socket.socket(socket.AF_INET6 if ":" in rec["addr"][0]
                                  else socket.AF_INET)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                rec["t_start"] = time.monotonic()  # before the daemon's accept
                err = s.connect_ex(rec["addr"])
                assert err in (0, errno.EINPROGRESS), os.strerror(err)
                sel.register(s, selectors.EVENT_WRITE, ("connecting", i))
                started += 1
            timeout = 0.05
            if due:
                timeout = max(0.0, min(timeout, due[0][0] - now))
            if todo:
                timeout = min(timeout, 0.001)
            for key, ev in sel.select(timeout):
                kind, i = key.data
                s = key.fileobj
                now = time.monotonic()
                if kind == "listen":
                    while True:
                        try:
                            c, _ = s.accept()
                        except BlockingIOError:
                            break
                        c.setblocking(False)
                        self.ups.append({"t_acc": now, "t_end": None,
                                         "how": None, "got": 0})
                        sel.register(c, selectors.EVENT_READ,
                                     ("up", len(self.ups) - 1))
                elif kind == "connecting":
                    rec = self.clients[i]
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self._end(rec, s, f"connect: {os.strerror(err)}", now)
                        continue
                    rec["t_conn"] = now
                    sel.modify(s, selectors.EVENT_READ, ("client", i))
                    rec["sock"] = s
                    for off, _ in rec["script"]:
                        heapq.heappush(due, (now + off, i))
                else:
                    rec = self.clients[i] if kind == "client" else self.ups[i]
                    try:
                        data = s.recv(65536)
                    except ConnectionResetError:
                        self._end(rec, s, "reset", now)
                        continue
                    except BlockingIOError:
                        continue
                    except OSError as e:  # EPIPE: a FIN, then an RST
                        self._end(rec, s, f"error {e!r}", now)
                        continue
                    if not data:
                        self._end(rec, s, "eof", now)
                        continue
                    rec["got"] += len(data)
                    if kind == "up":
                        try:
                            s.send(data)  # echo (probes are small)
                        except OSError:
                            pass
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, i = heapq.heappop(due)
                rec = self.clients[i]
                if rec["how"] is not None:
                    continue
                step = rec["script"][rec["sent"]]
                rec["sent"] += 1
                try:
                    rec["sock"].send(step[1])
                except OSError as e:
                    rec["send_error"] = repr(e)


# --------------------------------------------------------------------------
# slowloris on every listener kind


def probe_loop(host, d, stop, lat, errors):
    """Until stop: a normal client on each listener kind and GET /healthz,
    one after the other, each on a fresh connection; latencies (seconds)
    per kind into lat."""
    payload = os.urandom(1000)
    hdr = pp_v1(("192.0.2.1", 1000), ("192.0.2.2", 443))
    with host.inside():
        while not stop.is_set():
            for kind in ("plain", "tls", "pp", "healthz"):
                t0 = time.monotonic()
                try:
                    if kind == "healthz":
                        r = http(d.addr("stats"), "/healthz", timeout=5.0)
                        assert r.status == 200 and r.body == b"ok\n", r
                    elif kind == "tls":
                        s = conftest.connect(d.addr("tls"), timeout=5.0)
                        s.settimeout(5.0)
                        c = manual_tls(s, timeout=5.0)
                        c.send(payload)
                        assert c.recv_exact(len(payload)) == payload
                        s.close()
                    else:
                        s = conftest.connect(d.addr(kind), timeout=5.0)
                        s.settimeout(5.0)
                        s.sendall((hdr if kind == "pp" else b"") + payload)
                        assert recv_exact(s, len(payload)) == payload
                        s.close()
                except Exception as e:  # noqa: BLE001 (reported)
                    errors.append(f"{kind}: {e!r}")
                lat.setdefault(kind, []).append(time.monotonic() - t0)
            stop.wait(0.1)


SLOWLORIS_PER_KIND = 400  # x 5 kinds = 2,000 connections
STATS_HEADER = 2.0  # the stats listener's request deadline (stats.c)
# Two speeds.  "scaled": a byte every 0.8 s against 3 s deadlines, quick.
# "real": a byte every 10 s, as the issue describes a slowloris, against
# 25 s deadlines (handshake, client and server), so that three bytes come
# before the deadline; a deadline counted from the last byte would come
# at 30.5 s.  In each, the last byte comes well before the deadline: a
# byte that crossed the relay's FIN would draw an RST, and blur how the
# connection ended.
SLOWLORIS_SPEEDS = {
    "scaled": {"deadline": 3.0, "dribble": [0.3, 1.1, 1.9],
               "stats": [0.3, 0.7, 1.1]},
    "real": {"deadline": 25.0, "dribble": [0.5, 10.5, 20.5],
             "stats": [0.5]},
}


@pytest.mark.plain_only
@pytest.mark.parametrize("speed", [
    "scaled",
    # 25 s of 2,000 connections against a CPU budget: alone, after the
    # passes that run at once, whose load would be counted against it
    pytest.param("real", marks=pytest.mark.serial),
])
def test_slowloris_on_every_listener_kind(host_factory, nofile, tmp_path,
                                          speed):
    """2,000 connections, 400 on each listener kind (plain, TLS, PROXY,
    PROXY + TLS, stats); half say nothing, half dribble their first
    message (a ClientHello, a PROXY header, an HTTP request) a byte at a
    time, every 0.8 s against 3 s deadlines, or every 10 s against 25 s
    ones.  Each is reaped at its deadline counted from its accept (not
    from its last byte: dribbling buys nothing) with a FIN, plain ones at
    the idle timeout with a FIN to both sides; the stats listener's
    oldest half-sent requests make room for newcomers (256 clients at
    most).  Meanwhile a normal client on each kind, and GET /healthz,
    are served within 0.5 s."""
    sp = SLOWLORIS_SPEEDS[speed]
    HANDSHAKE = IDLE = sp["deadline"]
    n = SLOWLORIS_PER_KIND
    nofile(6 * n + 1000)
    host = host_factory()
    swarm = Swarm(host)
    tls = {"tls": "on"}
    pp = {"accept-proxy": "on"}
    cfg = make_config(
        {"up": [swarm.upstream]},
        {"plain": {"upstream": "up"},
         "tls": dict(tls, upstream="up"),
         "pp": dict(pp, upstream="up"),
         "pp-tls": dict(pp, **tls, upstream="up")},
        global_={"maxconn": "10000"},
        timeouts={"handshake": f"{HANDSHAKE:g}s", "client": f"{IDLE:g}s",
                  "server": f"{IDLE:g}s"},
        extra="\n[stats]\nlisten = 127.0.0.1:0\n")
    with host.inside():
        d = start_daemon(tmp_path, cfg)
    fd0 = d.stable_fd_count()
    hello = client_hello()
    header = pp_v1(("192.0.2.1", 1000), ("192.0.2.2", 443))
    request = request_bytes("GET", "/healthz", d.addr("stats"))
    dribble = sp["dribble"]
    scripts = {
        "tls": [(t, hello[i:i + 1]) for i, t in enumerate(dribble)],
        "pp": [(t, header[i:i + 1]) for i, t in enumerate(dribble)],
        "pp-tls": [(0.0, header)] + [(t, hello[i:i + 1])
                                     for i, t in enumerate(dribble)],
        "stats": [(t, request[i:i + 1]) for i, t in
                  enumerate(sp["stats"])],
    }
    kinds = ("tls", "pp", "pp-tls", "stats", "plain")
    for i in range(n):  # interleaved, so each listener's burst is spread
        for kind in kinds:
            silent = i % 2 == 0 or kind == "plain"
            swarm.add(d.addr(kind), [] if silent else scripts[kind],
                      (kind, "silent" if silent else "dribble"))
    stop, lat, errors = threading.Event(), {}, []
    cpu0 = d.cpu_seconds()
    swarm.start()
    prober = threading.Thread(target=probe_loop, daemon=True,
                              args=(host, d, stop, lat, errors))
    prober.start()
    conftest._THREADS.append(prober)
    deadline = time.monotonic() + 5 * n / swarm.pace + IDLE + 4.0 * SLOW
    try:
        wait_for(lambda: all(c["how"] is not None for c in swarm.clients)
                 or time.monotonic() > deadline, deadline - time.monotonic()
                 + 1, interval=0.1, what="every slowloris connection closed")
        # the plain ones' upstream sides end in the same iteration
        wait_for(lambda: all(u["how"] is not None for u in swarm.ups),
                 2.0, what="every upstream connection closed")
    finally:
        stop.set()
        prober.join(10)
        swarm.join(10)
    cpu = d.cpu_seconds() - cpu0

    # every connection of every kind, its end and when
    open_ = [c["tag"] for c in swarm.clients if c["how"] is None]
    assert not open_, f"{len(open_)} still open: {open_[:5]}"
    # A dribbler whose latest byte is still unread when it is closed gets
    # an RST from the kernel, as from any server (a race with a loaded
    # machine: seen for a few of 400 evicted stats clients); the rest end
    # with a FIN, and nobody gets a byte.
    bad = [(c["tag"], c["how"], c["got"]) for c in swarm.clients
           if c["got"] != 0 or c["how"] not in ("eof", "reset") or
           (c["how"] == "reset" and c["tag"][1] != "dribble")]
    assert not bad, f"{len(bad)} did not end with a FIN and no byte: {bad[:5]}"
    resets = sum(c["how"] == "reset" for c in swarm.clients)
    assert resets <= len(swarm.clients) // 20, \
        f"{resets} dribblers reset, not closed with a FIN"
    sends = [(c["tag"], c["send_error"]) for c in swarm.clients
             if "send_error" in c]
    assert not sends, f"a byte was refused before the deadline: {sends[:5]}"
    life = {}
    for c in swarm.clients:
        life.setdefault(c["tag"], []).append(c["t_end"] - c["t_start"])
    tol = 0.5 * SLOW
    want = {"tls": HANDSHAKE, "pp": HANDSHAKE, "pp-tls": HANDSHAKE,
            "stats": STATS_HEADER, "plain": IDLE}
    report = {f"{k}/{m}": (round(min(v), 3), round(max(v), 3))
              for (k, m), v in sorted(life.items())}
    for (kind, mode), v in life.items():
        # the daemon's clock is read once per loop iteration: an accept
        # late in a busy iteration may date from a few ms earlier
        early = [t for t in v if t < want[kind] - 0.05]
        late = [t for t in v if t > want[kind] + tol]
        assert not late, \
            f"{kind}/{mode}: {len(late)} reaped late, up to {max(late):.2f}s " \
            f"(deadline {want[kind]}s): {report}"
        if kind != "stats":
            assert not early, \
                f"{kind}/{mode}: {len(early)} closed early, from " \
                f"{min(early):.2f}s (deadline {want[kind]}s): {report}"
    # stats: 256 clients at most; the oldest half-sent requests give way
    stats_early = sum(t < STATS_HEADER - 0.05 for (k, _), v in life.items()
                      if k == "stats" for t in v)
    probes = len(lat.get("healthz", []))
    assert stats_early <= n + probes - 256, (stats_early, probes, report)

    # the plain ones' upstream sides: FIN at the idle timeout too
    silent_ups = [u for u in swarm.ups if u["got"] == 0]
    assert len(silent_ups) == n, \
        f"{len(silent_ups)} silent upstream connections, want {n}"
    bad = [u["how"] for u in silent_ups if u["how"] != "eof"]
    assert not bad, f"upstream sides: {bad[:5]}"
    ups_life = [u["t_end"] - u["t_acc"] for u in silent_ups]
    assert max(ups_life) <= IDLE + tol, max(ups_life)
    # nothing but the plain ones and the probes reached the upstream
    relayed_probes = len(lat["plain"]) + len(lat["tls"]) + len(lat["pp"])
    assert len(swarm.ups) == n + relayed_probes, (len(swarm.ups), n,
                                                   relayed_probes)

    # a normal client and /healthz were served meanwhile, promptly
    assert not errors, errors[:5]
    worst = {k: round(max(v), 3) for k, v in lat.items()}
    print(f"slowloris: {len(swarm.clients)} connections, reaped after "
          f"(min, max) s {report}; probe latency max {worst} over "
          f"{probes} rounds; {stats_early} stats clients evicted early; "
          f"daemon CPU {cpu:.2f}s")
    assert probes >= 10, f"only {probes} probe rounds"
    # waiting costs no CPU: no spinning over 2,000 half-open connections
    # (a spinning loop burns the whole attack: 3 s or 25 s of CPU).  The
    # probes cost some: a TLS handshake a round, 1-3 ms; measured 0.52 s
    # over the 25 s attack on a quiet day, 0.88 s on a slower one (243 and
    # 235 rounds): the budget is twice that, still a tenth of a spin.
    budget = (0.6 + 0.004 * probes) * SLOW
    assert cpu < budget, f"daemon used {cpu:.2f}s of CPU, budget {budget:.2f}s"
    for kind, t in worst.items():
        assert t <= 0.5 * SLOW, f"{kind} took {t:.3f}s during the slowloris"
    assert d.alive()
    n_fd = d.wait_fds_at_most(fd0, timeout=3.0)
    assert n_fd <= fd0, f"descriptors {n_fd}, baseline {fd0}"


# --------------------------------------------------------------------------
# memory held by stalled connections

COPY_PIPE_SIZE = 256 * KiB  # src/copy.h: a direction's usual splice pipe
COPY_PIPE_BIG = 1024 * KiB  # src/copy.h: a fast direction's pipe
COPY_PIPES_BIG = 8  # src/copy.h: at most this many in the process
COPY_BUF = 16 * KiB  # src/copy.h: a direction's buffer
PAGE = os.sysconf("SC_PAGE_SIZE")


def daemon_pipes(pid):
    """{pipe inode: (capacity, bytes held)} of every pipe the process has
    open, each counted once.  Read from outside: opening
    /proc/PID/fd/N opens the same pipe, where F_GETPIPE_SZ and FIONREAD
    answer (nothing is read from it)."""
    import termios
    pipes = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            link = os.readlink(path)
        except FileNotFoundError:
            continue
        if not link.startswith("pipe:") or link in pipes:
            continue
        try:
            f = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        try:
            cap = fcntl.fcntl(f, fcntl.F_GETPIPE_SZ)
            held = array.array("i", [0])
            fcntl.ioctl(f, termios.FIONREAD, held)
        finally:
            os.close(f)
        pipes[link] = (cap, held[0])
    return pipes


def socket_mem(host, pid):
    """The kernel buffers of the process's TCP sockets, one dict per
    socket (ss's skmem: r, bytes received; w, queued to send, with their
    overhead; tb, the send buffer that bounds w)."""
    out = nsx(host.ns, "ss", "-tmpnH").stdout
    socks = []
    for line, mem in re.findall(r"(.*?)\n?\s*skmem:\((.*?)\)", out):
        if f"pid={pid}," not in line:
            continue
        f = dict(re.findall(r"([a-z]+)(\d+)", mem))
        socks.append({k: int(v) for k, v in f.items()})
    return socks


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) * 1024


def stall_both_ways(host, lsock, addr, n, peer_buf, chunk, state, wrap=None):
    """n connections to addr, each paired with the upstream side accepted
    on lsock; every socket with small fixed buffers, so that the bytes
    wait in the relay.  Each writes STALL_WRITE and nobody reads: writes
    until nothing moves and state() (what the daemon holds) has not
    changed for 0.5 s.  Returns ({socket: bytes left unwritten}, the
    client sockets)."""
    socks = []
    with host.inside():
        for _ in range(n):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_buf)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, peer_buf)
            c.settimeout(5.0)
            c.connect(addr)
            if wrap is not None:
                c = wrap(c)
            socks.append(c)
            conftest._SOCKETS.append(c)
    lsock.settimeout(5.0)
    for _ in range(n):
        u, _ = lsock.accept()
        socks.append(u)
        conftest._SOCKETS.append(u)
    left = {s: STALL_WRITE for s in socks}
    for s in socks:
        s.setblocking(False)
    t0 = time.monotonic()
    quiet_since, last = None, None
    while True:
        moved = 0
        for s, k in left.items():
            if k == 0:
                continue
            try:
                sent = s.send(chunk[:min(k, len(chunk))])
            except (BlockingIOError, ssl.SSLWantWriteError,
                    ssl.SSLWantReadError):
                continue
            left[s] -= sent
            moved += sent
        held = state()
        now = time.monotonic()
        if moved or held != last:
            quiet_since, last = now, held
        elif now - quiet_since >= 0.5:
            break
        assert now - t0 < 60, "the stalled connections never settled"
        if not moved:
            time.sleep(0.05)
    return left, socks


STALL_WRITE = 512 * KiB  # written each way: more than the relay can hold
# The send buffer's maximum in the first case's namespace (net.ipv4.
# tcp_wmem, per namespace): what the kernel queues toward a stalled
# reader, beyond the relay's pipe.  The default, 4 MiB, would swallow the
# writers' bytes before any pipe filled.
STALL_WMEM_MAX = 128 * KiB
# The second case bounds the kernel's queues with the daemon's own
# `socket-buffers` instead, under the default tcp_wmem and tcp_rmem.
STALL_SOCKBUF = 16 * KiB
# What a socket may hold beyond its buffer: the kernel charges whole
# skbs, and one may come in or be queued beyond the limit.
SKB_SLACK = 64 * KiB


@pytest.mark.plain_only
@pytest.mark.parametrize("n,sockbuf", [(500, None), (2000, STALL_SOCKBUF)],
                         ids=["500-tcp-wmem-128k", "2000-socket-buffers-16k"])
def test_memory_bound_per_stalled_connection(host_factory, nofile, tmp_path,
                                             n, sockbuf):
    """Connections through a plain (splicing) listener, each stalled both
    ways: the client does not read while the upstream writes, and the
    upstream does not read while the client writes, 512 KiB each way,
    more than the relay can hold.  What the daemon holds for them (its
    resident memory, and the kernel pages of its pipes, each counted at
    its capacity, the most pages it can pin) stays at or under one pipe
    (256 KiB) plus one buffer (16 KiB) per direction per connection; and
    all of it is given back when they go.

    Beyond that, the kernel queues bytes on the daemon's sockets: toward
    a stalled reader what the send buffer takes, and from a writer what
    the receive buffer takes; both autotuned up to net.ipv4.tcp_wmem's
    and tcp_rmem's maximum (4 and 6 MiB by default).  500 connections:
    the namespace sets tcp_wmem's maximum to 128 KiB, and each of the
    daemon's send queues must stay within it (a relay that raised its
    send buffer would not).  2,000 connections: `socket-buffers = 16k`
    under the default sysctls, and every one of the daemon's sockets must
    keep both buffers at the kernel's double of it (32 KiB) and its
    queues within them: the whole cost of a stalled connection is then
    bounded, kernel included."""
    nofile(8 * n + 1000)
    host = host_factory()
    if sockbuf is None:
        nsx(host.ns, "sysctl", "-q", "-w",
            f"net.ipv4.tcp_wmem=4096 16384 {STALL_WMEM_MAX}")
    peer_buf = 4 * KiB
    with host.inside():
        probe = conftest.Server(h_echo, name="probe")
        lsock = socket.socket()
        # the stalled peers' buffers: small and fixed, so that the bytes
        # wait in the relay, not in them
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_buf)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, peer_buf)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4096)
        global_ = {"maxconn": "10000"}
        if sockbuf is not None:
            global_["socket-buffers"] = str(sockbuf)
        d = start_daemon(tmp_path, make_config(
            {"stall": [f"127.0.0.1:{lsock.getsockname()[1]}"],
             "probe": [probe.spec]},
            {"plain": {"upstream": "stall"}, "probe": {"upstream": "probe"}},
            global_=global_,
            timeouts={"client": "60s", "server": "60s"}))
    conftest._SOCKETS.append(lsock)

    def relays():
        with host.inside():
            return conftest.try_echo(d.addr("probe"), timeout=5.0)

    assert relays()  # warm: a worker has relayed, its pools exist
    fd0 = d.stable_fd_count()
    rss0, pipes0 = rss_bytes(d.pid), daemon_pipes(d.pid)

    def held():
        pipes = daemon_pipes(d.pid)
        return sum(h for _, h in pipes.values()), len(pipes)

    left, socks = stall_both_ways(host, lsock, d.addr("plain"), n, peer_buf,
                                  os.urandom(64 * KiB), held)
    rss1 = rss_bytes(d.pid)
    pipes1 = daemon_pipes(d.pid)
    ksocks = socket_mem(host, d.pid)
    kernel_sent = sum(k.get("w", 0) for k in ksocks)
    kernel_rcvd = sum(k.get("r", 0) for k in ksocks)

    caps = sorted(c for c, _ in pipes1.values())
    held = sum(h for _, h in pipes1.values())
    full = sum(1 for c, h in pipes1.values() if h >= c - PAGE)
    extra_pipes = len(pipes1) - len(pipes0)
    pipe_mem = sum(caps) - sum(c for c, _ in pipes0.values())
    rss = rss1 - rss0
    per_conn = (rss + pipe_mem) / n
    bound = 2 * (COPY_PIPE_SIZE + COPY_BUF)
    sizes = {c // KiB: caps.count(c) for c in set(caps)}
    print(f"stalled: {n} connections x 2 directions: {len(pipes1)} pipes "
          f"(KiB: count {sizes}), {full} full, {held / 2**20:.1f} MiB held "
          f"in them; RSS +{rss / 2**20:.1f} MiB; per connection "
          f"{per_conn / KiB:.0f} KiB (RSS {rss / n / KiB:.1f} KiB + pipes "
          f"{pipe_mem / n / KiB:.0f} KiB), bound {bound // KiB} KiB; "
          f"unsent by the writers {sum(left.values()) / 2**20:.0f} MiB; "
          f"in the daemon's socket buffers (the kernel's, not counted in "
          f"the bound) per connection: {kernel_sent / n / KiB:.0f} KiB to "
          f"send, {kernel_rcvd / n / KiB:.0f} KiB received; send buffers "
          f"at most {max(k.get('tb', 0) for k in ksocks) // KiB} KiB")
    # The workload holds what the relay can hold: every direction holds a
    # full pipe, or, once the user's pipe pages are spent (a pipe smaller
    # than the buffer is refused), a full buffer, counted in RSS (else the
    # figure would flatter the relay).
    # (Less the buffers the workers' pools kept from the warm-up, already
    # in the baseline: 64 each, at most.)
    buffered = max(0, 2 * n - 8 - extra_pipes - 64 * os.cpu_count())
    assert rss >= buffered * COPY_BUF * 0.9, \
        f"{extra_pipes} new pipes for {2 * n} stalled directions, and RSS " \
        f"+{rss / KiB:.0f} KiB: not a buffer for each of the other {buffered}"
    assert full >= extra_pipes - 8, f"only {full} of {len(pipes1)} pipes full"
    # a stalled direction never moves half a pipe in one splice, so it
    # never gets a 1 MiB pipe (COPY_PIPE_BIG)
    assert max(caps) <= COPY_PIPE_SIZE, sizes
    # one pipe per direction, at most: no pipe for nothing
    assert extra_pipes <= 2 * n, f"{extra_pipes} pipes for {2 * n} directions"
    assert per_conn <= bound, \
        f"{per_conn / KiB:.0f} KiB per stalled connection, bound {bound // KiB}"
    # user space: at most a buffer per direction and the connection's own
    # state, whatever the pipes hold
    assert rss / n <= 2 * COPY_BUF + 4 * KiB, \
        f"RSS grew {rss / n / KiB:.1f} KiB per connection"
    if sockbuf is None:
        # the kernel's side: every send queue toward a stalled reader
        # within the send buffer's maximum (an skb beyond it at most)
        over = [k for k in ksocks
                if k.get("tb", 0) > STALL_WMEM_MAX or
                k.get("w", 0) > STALL_WMEM_MAX + SKB_SLACK]
        assert not over, f"{len(over)} sockets beyond tcp_wmem's " \
            f"maximum: {over[:3]}"
        assert kernel_sent <= 2 * n * (STALL_WMEM_MAX + SKB_SLACK), \
            f"{kernel_sent / n / KiB:.0f} KiB queued to send per connection"
    else:
        # socket-buffers: both buffers of every socket at the kernel's
        # double of the setting, whatever the autotuning would have done,
        # and what each queues within them
        assert len(ksocks) >= 2 * n, f"{len(ksocks)} sockets for {n}"
        off = [k for k in ksocks
               if k.get("rb") != 2 * sockbuf or k.get("tb") != 2 * sockbuf]
        assert not off, f"{len(off)} sockets with other buffers: {off[:3]}"
        over = [k for k in ksocks
                if k.get("r", 0) > 2 * sockbuf + SKB_SLACK or
                k.get("w", 0) > 2 * sockbuf + SKB_SLACK]
        assert not over, f"{len(over)} sockets beyond their buffers: " \
            f"{over[:3]}"
        kernel = kernel_sent + kernel_rcvd
        kbound = 2 * 2 * (2 * sockbuf + SKB_SLACK)
        assert kernel <= n * kbound, \
            f"{kernel / n / KiB:.0f} KiB per connection in the daemon's " \
            f"socket queues, bound {kbound // KiB} KiB"

    for s in socks:  # the peers give up: RST both ways
        conftest.rst_close(s)
    n_fd = d.wait_fds_at_most(fd0, timeout=5.0 * SLOW)
    assert n_fd <= fd0, f"descriptors {n_fd}, baseline {fd0}"
    assert len(daemon_pipes(d.pid)) <= len(pipes0) + 2 * 256 * 2, \
        "pipes beyond the pools' bound kept"
    assert relays()


# OpenSSL's part of a stalled TLS connection, beyond the relay's two
# buffers: its SSL object and, while bytes wait (SSL_MODE_RELEASE_BUFFERS
# frees them only when idle), a read and a write buffer of a record each
# (16 KiB + overhead).
TLS_STATE = 48 * KiB


@pytest.mark.plain_only
def test_memory_bound_per_stalled_tls_connection(host_factory, nofile,
                                                 tmp_path):
    """500 TLS connections, each stalled both ways like the plain ones
    above (the client writes 512 KiB and does not read; so does the
    upstream), with `socket-buffers = 16k` so that the bytes reach the
    relay.  TLS directions never splice: each holds its 16 KiB buffer, and
    OpenSSL its record buffers; the daemon's resident memory grows by at
    most two buffers and TLS_STATE per connection, and all of it is given
    back when the peers reset."""
    n = 500
    nofile(8 * n + 1000)
    host = host_factory()
    peer_buf = 4 * KiB
    with host.inside():
        probe = conftest.Server(h_echo, name="probe")
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_buf)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, peer_buf)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4096)
        d = start_daemon(tmp_path, make_config(
            {"stall": [f"127.0.0.1:{lsock.getsockname()[1]}"],
             "probe": [probe.spec]},
            {"tls": {"upstream": "stall", "tls": "on"},
             "probe": {"upstream": "probe"}},
            global_={"maxconn": "10000", "socket-buffers": "16k"},
            timeouts={"client": "60s", "server": "60s"}))
    conftest._SOCKETS.append(lsock)

    def relays():
        with host.inside():
            return conftest.try_echo(d.addr("probe"), timeout=5.0)

    assert relays()
    ctx = client_ctx()
    with host.inside():  # warm: a TLS handshake and a stalled pair
        warm = ctx.wrap_socket(conftest.connect(d.addr("tls"), timeout=5.0))
    conftest._SOCKETS.append(warm)
    lsock.settimeout(5.0)
    warm_up, _ = lsock.accept()
    conftest._SOCKETS.append(warm_up)
    fd0 = d.stable_fd_count()
    rss0 = rss_bytes(d.pid)

    left, socks = stall_both_ways(host, lsock, d.addr("tls"), n, peer_buf,
                                  os.urandom(16 * KiB),
                                  lambda: rss_bytes(d.pid),
                                  wrap=ctx.wrap_socket)
    grown = rss_bytes(d.pid) - rss0
    ksocks = socket_mem(host, d.pid)
    held = sum(STALL_WRITE - k for k in left.values())
    bound = 2 * COPY_BUF + TLS_STATE
    print(f"stalled TLS: {n} connections x 2 directions: RSS "
          f"+{grown / 2**20:.1f} MiB, {grown / n / KiB:.1f} KiB per "
          f"connection (bound {bound // KiB} KiB); accepted from the "
          f"writers {held / n / KiB:.0f} KiB per connection; socket "
          f"queues {sum(k.get('r', 0) + k.get('w', 0) for k in ksocks) / n / KiB:.0f}"
          f" KiB per connection")
    # the workload stalls the relay: every direction holds a full buffer
    # (else the figure would flatter it)
    assert grown >= n * 2 * COPY_BUF * 0.9, \
        f"RSS +{grown / n / KiB:.1f} KiB per connection: not a full " \
        f"buffer each way"
    assert grown <= n * bound, \
        f"{grown / n / KiB:.1f} KiB per stalled TLS connection, " \
        f"bound {bound // KiB} KiB"

    for s in socks:  # the peers give up: RST both ways
        conftest.rst_close(s)
    conftest.rst_close(warm)
    conftest.rst_close(warm_up)
    n_fd = d.wait_fds_at_most(fd0 - 2, timeout=5.0 * SLOW)
    assert n_fd <= fd0 - 2, f"descriptors {n_fd}, baseline {fd0 - 2}"
    assert relays()


@pytest.mark.serial
def test_big_pipes_for_fast_transfers_within_the_quota(tmp_path):
    """12 downloads through a plain listener (2 workers), each read at
    full speed for 8 MiB, then paused: the directions that went fast hold
    1 MiB pipes, no more than 8 in the process, and use them (more than
    256 KiB held in one); every download then ends whole with FIN, and the
    idle 1 MiB pipes are closed within two pool trims (a second each).
    Alone (serial): every process of the user shares its pipe pages, and
    the stalled-connection tests of the other pass spend them."""
    n, size, fast_part = 12, 32 * 2**20, 8 * 2**20
    block = os.urandom(2**20)
    want = hashlib.sha256(block * (size // len(block))).hexdigest()

    def h_source(c, rec):
        c.settimeout(60)  # it waits while the downloads pause
        recv_exact(c, 1)
        for _ in range(size // len(block)):
            c.sendall(block)
        c.shutdown(socket.SHUT_WR)
        rec["after"] = read_until_closed(c, 30)[0]

    up = conftest.Server(h_source, name="source")
    d = start_daemon(tmp_path, make_config(
        {"up": [up.spec]}, {"plain": {"upstream": "up"}},
        global_={"workers": "2"}))
    paused = threading.Semaphore(0)
    go = threading.Event()
    outs = [{} for _ in range(n)]

    def client(out):
        try:
            s = conftest.connect(d.addr("plain"), timeout=30)
            s.sendall(b"g")
            h, got, buf = hashlib.sha256(), 0, bytearray(2**20)
            while True:
                if got >= fast_part and not go.is_set():
                    paused.release()
                    go.wait(60)
                k = s.recv_into(buf)
                if k == 0:
                    break
                h.update(memoryview(buf)[:k])
                got += k
            out["got"], out["sha"] = got, h.hexdigest()
            s.close()
        except Exception as e:  # reported per client
            out["error"] = repr(e)
        finally:
            paused.release()

    threads = [threading.Thread(target=client, args=(o,), daemon=True)
               for o in outs]
    for t in threads:
        t.start()
    try:
        for _ in range(n):
            assert paused.acquire(timeout=30 * SLOW), "downloads not paused"
        assert not [o for o in outs if "error" in o], outs

        def caps():
            return sorted(c for c, _ in daemon_pipes(d.pid).values())

        # the paused downloads' pipes fill behind them
        wait_for(lambda: sum(h for _, h in daemon_pipes(d.pid).values())
                 >= n * 256 * KiB, 10 * SLOW, what="pipes filled")
        pipes = daemon_pipes(d.pid)
        big = [(c, h) for c, h in pipes.values() if c == COPY_PIPE_BIG]
        assert max(c for c, _ in pipes.values()) <= COPY_PIPE_BIG, caps()
        assert 1 <= len(big) <= COPY_PIPES_BIG, caps()
        assert max(h for _, h in big) > 256 * KiB, big
        print(f"big pipes: {len(big)}, held (KiB) {sorted(h // KiB for _, h in big)}")
    finally:
        go.set()
    for t in threads:
        t.join(60)
    errors = [o for o in outs if "error" in o]
    assert not errors, errors
    assert all((o["got"], o["sha"]) == (size, want) for o in outs), \
        [o["got"] for o in outs]
    recs = up.wait_done(n)
    assert all(r["error"] is None and r["after"] == "eof" for r in recs), recs
    # given back: no 1 MiB pipe left idle after two trims
    wait_for(lambda: not any(c == COPY_PIPE_BIG for c, _ in
                             daemon_pipes(d.pid).values()),
             3 * SLOW + 1, what="idle 1 MiB pipes closed")
