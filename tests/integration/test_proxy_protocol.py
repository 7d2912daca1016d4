"""PROXY protocol end to end: accept-proxy listeners, send-proxy upstreams.

Real peers: HAProxy (Debian's haproxy 2.6) in front of lifeline and behind
it, nginx behind it, started by each test with its own config in tmp_path
on loopback ports picked by binding port 0 (they cannot bind port 0 and
report it), in the foreground, and stopped at teardown.  The upstreams
written in Python parse the header they receive, so each test checks the
address that arrives, not only that bytes flow.
"""

import os
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

import conftest
from conftest import (
    IO_TIMEOUT, Server, connect, make_config, read_until_closed, recv_exact,
    start_daemon, start_thread)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"

# A client address distinct from the relay's own 127.0.0.1.
CLIENT4 = "127.0.0.2"
CLIENT6 = "::1"


# --------------------------------------------------------------------------
# PROXY headers in Python


def v1_header(src, dst):
    """src, dst: (host, port) of the same family, or None for UNKNOWN."""
    if src is None:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def v2_header(src=None, dst=None, command=1, family=None, tlvs=b"",
              body=None):
    if body is None:
        if src is None:
            body = b""
            family = 0x00 if family is None else family
        elif ":" in src[0]:
            body = (socket.inet_pton(socket.AF_INET6, src[0])
                    + socket.inet_pton(socket.AF_INET6, dst[0])
                    + struct.pack("!HH", src[1], dst[1]))
            family = 0x21 if family is None else family
        else:
            body = (socket.inet_aton(src[0]) + socket.inet_aton(dst[0])
                    + struct.pack("!HH", src[1], dst[1]))
            family = 0x11 if family is None else family
    body += tlvs
    return SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def tlv(t, v):
    return bytes([t]) + struct.pack("!H", len(v)) + v


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    return c ^ 0xFFFFFFFF


def header(version, src, dst):
    return v1_header(src, dst) if version == "v1" else v2_header(src, dst)


def read_pp_header(c):
    """Reads one PROXY header (v1 or v2) from socket c, byte-exact.

    Returns a dict: version, command ("PROXY"/"LOCAL"/"UNKNOWN"), family
    ("TCP4"/"TCP6"/...), src and dst as (host, port) when carried, raw."""
    first = recv_exact(c, 1)
    if first == b"P":
        line = first
        while not line.endswith(b"\r\n"):
            assert len(line) < 107, f"v1 line too long: {line!r}"
            line += recv_exact(c, 1)
        f = line[:-2].decode("ascii").split(" ")
        assert f[0] == "PROXY", line
        if f[1] == "UNKNOWN":
            return {"version": 1, "command": "UNKNOWN", "family": None,
                    "raw": line}
        assert f[1] in ("TCP4", "TCP6") and len(f) == 6, line
        return {"version": 1, "command": "PROXY", "family": f[1],
                "src": (f[2], int(f[4])), "dst": (f[3], int(f[5])),
                "raw": line}
    assert first == b"\r", f"not a PROXY header: {first!r}"
    fixed = first + recv_exact(c, 15)
    assert fixed[:12] == SIG, fixed
    ver_cmd, fam = fixed[12], fixed[13]
    (n,) = struct.unpack("!H", fixed[14:16])
    body = recv_exact(c, n) if n else b""
    assert ver_cmd >> 4 == 2, fixed
    d = {"version": 2, "command": "PROXY" if ver_cmd & 0xF else "LOCAL",
         "family": {0x00: "UNSPEC", 0x11: "TCP4", 0x21: "TCP6"}.get(fam, hex(fam)),
         "raw": fixed + body}
    if fam == 0x11:
        d["src"] = (socket.inet_ntop(socket.AF_INET, body[0:4]),
                    struct.unpack("!H", body[8:10])[0])
        d["dst"] = (socket.inet_ntop(socket.AF_INET, body[4:8]),
                    struct.unpack("!H", body[10:12])[0])
        d["tlvs"] = body[12:]
    elif fam == 0x21:
        d["src"] = (socket.inet_ntop(socket.AF_INET6, body[0:16]),
                    struct.unpack("!H", body[32:34])[0])
        d["dst"] = (socket.inet_ntop(socket.AF_INET6, body[16:32]),
                    struct.unpack("!H", body[34:36])[0])
        d["tlvs"] = body[36:]
    return d


def h_raw(c, rec):
    """Upstream without send-proxy: record every byte until EOF, echo them."""
    data = bytearray()
    while True:
        d = c.recv(65536)
        if not d:
            break
        data += d
        c.sendall(d)
    rec["data"] = bytes(data)
    c.shutdown(socket.SHUT_WR)


def h_pp_echo(c, rec):
    """Upstream behind send-proxy: parse the header, then as h_raw."""
    rec["pp"] = read_pp_header(c)
    h_raw(c, rec)


def recv_until_eof(s, timeout=IO_TIMEOUT):
    s.settimeout(timeout)
    out = bytearray()
    while True:
        d = s.recv(65536)
        if not d:
            return bytes(out)
        out += d


def exchange(s, payload):
    """Send payload, half-close, return everything until EOF."""
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    return recv_until_eof(s)


def proxy_listener(**kw):
    spec = {"bind": "127.0.0.1:0", "upstream": "up", "accept-proxy": "on"}
    spec.update(kw)
    return spec


def pp_daemon(tmp_path, srv, send_proxy="v2", listen=None, handshake="5s",
              extra=""):
    return start_daemon(tmp_path, make_config(
        {"up": {"server": [srv.spec], "send-proxy": send_proxy}},
        {"pp": listen or proxy_listener()},
        timeouts={"handshake": handshake}, extra=extra))


def only_record(srv, timeout=5.0):
    srv.wait_accepted(1, timeout)
    recs = srv.wait_done()
    assert len(recs) == 1, f"{len(recs)} upstream connections"
    r = recs[0]
    assert r["error"] is None, f"upstream handler: {r['error']!r}"
    return r


def assert_nothing_upstream(srv, settle=0.3):
    time.sleep(settle)
    assert srv.accepted == 0, f"{srv.accepted} connection(s) reached the upstream"


def norm(hostport):
    host, port = hostport
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    return (socket.inet_ntop(fam, socket.inet_pton(fam, host)), port)


def expect_origin(pp, version, src, dst):
    """pp (parsed upstream header) says src -> dst, as PROXY in `version`."""
    want_fam = "TCP6" if ":" in src[0] else "TCP4"
    assert pp["version"] == (1 if version == "v1" else 2), pp
    assert pp["command"] == "PROXY", pp
    assert pp["family"] == want_fam, pp
    assert norm(pp["src"]) == norm(src), pp
    assert norm(pp["dst"]) == norm(dst), pp


# --------------------------------------------------------------------------
# HAProxy and nginx as real peers


def _listening_ports(pid):
    """Ports of the listening sockets that process `pid` holds (a port
    alone would also match another process's listener on some other
    address, and a peer that failed to bind would seem up)."""
    mine = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                mine.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in mine:  # LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def pick_port(host):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Peer:
    """A foreground HAProxy or nginx with its config in tmp_path.

    make(ports) returns (config text, argv); ports are picked free on
    `hosts` and the start is retried when one was taken meanwhile.  The
    process is registered with conftest's teardown (stop())."""

    def __init__(self, tmp_path, name, hosts, make, tries=5):
        self.name = name
        self.proc = None
        self.stderr_path = tmp_path / f"{name}.stderr"
        conftest._SERVERS.append(self)
        for _ in range(tries):
            self.ports = [pick_port(h) for h in hosts]
            if len(set(self.ports)) != len(self.ports):
                continue
            conf, argv = make(self.ports)
            (tmp_path / f"{name}.conf").write_text(conf)
            with open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                    close_fds=True, cwd=tmp_path)
            if self._wait_listening():
                return
            text = self.stderr_text()
            self.stop()
            if not re.search(r"in use|cannot bind|bind\(\)", text, re.I):
                raise AssertionError(f"{name} did not start:\n{text}")
        raise AssertionError(f"{name}: no free ports after {tries} tries")

    def _wait_listening(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if set(self.ports) <= _listening_ports(self.proc.pid):
                return True
            time.sleep(0.02)
        return False

    def stderr_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _hp(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


HAPROXY_HEAD = """\
global
    maxconn 200

defaults
    mode {mode}
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""


def haproxy_in_front(tmp_path, backend, send_proxy, host):
    """HAProxy mode tcp on host:P, forwarding to `backend` with send_proxy."""
    def make(ports):
        conf = HAPROXY_HEAD.format(mode="tcp") + f"""
frontend fe
    bind {_hp(host, ports[0])}
    default_backend be

backend be
    server s1 {_hp(*backend)} {send_proxy}
"""
        return conf, ["haproxy", "-db", "-f", str(tmp_path / "haproxy.conf")]
    return Peer(tmp_path, "haproxy", [host], make)


def haproxy_http_behind(tmp_path):
    """HAProxy mode http, bind ... accept-proxy, answers "src:src_port"."""
    def make(ports):
        conf = HAPROXY_HEAD.format(mode="http") + f"""
frontend fe
    bind 127.0.0.1:{ports[0]} accept-proxy
    http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port]"
"""
        return conf, ["haproxy", "-db", "-f", str(tmp_path / "haproxy.conf")]
    return Peer(tmp_path, "haproxy", ["127.0.0.1"], make)


def haproxy_tcp_behind(tmp_path, recorder):
    """HAProxy mode tcp, bind ... accept-proxy, send-proxy-v2 to recorder."""
    def make(ports):
        conf = HAPROXY_HEAD.format(mode="tcp") + f"""
frontend fe
    bind 127.0.0.1:{ports[0]} accept-proxy
    default_backend be

backend be
    server s1 {recorder.spec} send-proxy-v2
"""
        return conf, ["haproxy", "-db", "-f", str(tmp_path / "haproxy.conf")]
    return Peer(tmp_path, "haproxy", ["127.0.0.1"], make)


def nginx_behind(tmp_path):
    """nginx http, listen ... proxy_protocol, answers
    "$proxy_protocol_addr:$proxy_protocol_port"."""
    prefix = tmp_path / "nginx"
    prefix.mkdir(exist_ok=True)

    def make(ports):
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{ports[0]} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 "$proxy_protocol_addr:$proxy_protocol_port";
        }}
    }}
}}
"""
        return conf, ["nginx", "-p", str(prefix), "-e", "stderr",
                      "-c", str(tmp_path / "nginx.conf"),
                      "-g", "daemon off;"]
    return Peer(tmp_path, "nginx", ["127.0.0.1"], make)


# --------------------------------------------------------------------------
# HAProxy in front of lifeline's accept-proxy listener


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("hap_send", ["send-proxy", "send-proxy-v2"])
@pytest.mark.parametrize("ll_send", ["v1", "v2"])
def test_haproxy_in_front_client_address_end_to_end(tmp_path, family,
                                                    hap_send, ll_send):
    """client -> HAProxy (send-proxy[-v2]) -> lifeline accept-proxy ->
    upstream (send-proxy v1/v2): the upstream sees the client's address."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, send_proxy=ll_send,
                  listen=proxy_listener(**{"trusted-proxies": "127.0.0.1/32"}))
    client = CLIENT6 if family == "ipv6" else CLIENT4
    hap = haproxy_in_front(tmp_path, d.addr("pp"), hap_send, client)
    s = connect((client, hap.ports[0]), source=client)
    me = s.getsockname()[:2]
    payload = os.urandom(3000) + b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n"
    assert exchange(s, payload) == payload
    r = only_record(up)
    expect_origin(r["pp"], ll_send, me, (client, hap.ports[0]))
    assert r["data"] == payload
    assert d.alive()


# --------------------------------------------------------------------------
# lifeline send-proxy in front of nginx and HAProxy accept-proxy


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("ll_send", ["v1", "v2"])
def test_send_proxy_to_nginx(tmp_path, family, ll_send):
    ngx = nginx_behind(tmp_path)
    client = CLIENT6 if family == "ipv6" else CLIENT4
    bind = "[::1]:0" if family == "ipv6" else "127.0.0.1:0"
    d = start_daemon(tmp_path, make_config(
        {"up": {"server": [f"127.0.0.1:{ngx.ports[0]}"], "send-proxy": ll_send}},
        {"plain": {"bind": bind, "upstream": "up"}}))
    for _ in range(3):
        s = connect(d.addr("plain"), source=client)
        me = s.getsockname()
        resp = exchange(s, b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (resp, ngx.stderr_text())
        assert body.decode() == f"{me[0]}:{me[1]}"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("ll_send", ["v1", "v2"])
def test_send_proxy_to_haproxy_http(tmp_path, family, ll_send):
    hap = haproxy_http_behind(tmp_path)
    client = CLIENT6 if family == "ipv6" else CLIENT4
    bind = "[::1]:0" if family == "ipv6" else "127.0.0.1:0"
    d = start_daemon(tmp_path, make_config(
        {"up": {"server": [f"127.0.0.1:{hap.ports[0]}"], "send-proxy": ll_send}},
        {"plain": {"bind": bind, "upstream": "up"}}))
    s = connect(d.addr("plain"), source=client)
    me = s.getsockname()
    resp = exchange(s, b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), (resp, hap.stderr_text())
    assert body.decode() == f"{me[0]}:{me[1]}"


@pytest.mark.parametrize("ll_send", ["v1", "v2"])
def test_send_proxy_to_haproxy_tcp(tmp_path, ll_send):
    """lifeline -> HAProxy (accept-proxy, mode tcp, send-proxy-v2) ->
    recorder: HAProxy took lifeline's header and passed the client on."""
    rec = Server(h_pp_echo, name="recorder")
    hap = haproxy_tcp_behind(tmp_path, rec)
    d = start_daemon(tmp_path, make_config(
        {"up": {"server": [f"127.0.0.1:{hap.ports[0]}"], "send-proxy": ll_send}},
        {"plain": {"upstream": "up"}}))
    s = connect(d.addr("plain"), source=CLIENT4)
    me = s.getsockname()
    payload = os.urandom(200000)
    assert exchange(s, payload) == payload
    r = only_record(rec)
    expect_origin(r["pp"], "v2", me, d.addr("plain"))
    assert r["data"] == payload


# --------------------------------------------------------------------------
# accept-proxy directly


@pytest.mark.parametrize("ll_send", ["v1", "v2"])
@pytest.mark.parametrize("hdr_version", ["v1", "v2"])
@pytest.mark.parametrize("origin", [
    (("192.0.2.1", 56324), ("198.51.100.7", 443)),
    (("2001:db8::1", 1), ("2001:db8::2", 65535)),
])
def test_header_then_payload_same_packet(tmp_path, ll_send, hdr_version, origin):
    """Header and payload in one sendall: the payload is relayed byte-exact
    (even when it looks like a header or a TLV), the header's addresses
    reach the upstream; IPv6 origins go through an IPv4 listener."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, send_proxy=ll_send)
    src, dst = origin
    payload = (b"\x03\x00\x04\xde\xad\xbe\xef" + v2_header(("10.0.0.1", 1), ("10.0.0.2", 2))
               + b"PROXY UNKNOWN\r\n" + os.urandom(1000))
    s = connect(d.addr("pp"), source=CLIENT4)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert exchange(s, header(hdr_version, src, dst) + payload) == payload
    r = only_record(up)
    expect_origin(r["pp"], ll_send, src, dst)
    assert r["data"] == payload


@pytest.mark.parametrize("ll_send", ["v1", "v2"])
@pytest.mark.parametrize("first", ["refused", "blackholed"])
def test_send_proxy_after_failover(tmp_path, ll_send, first):
    """The first server refuses (or never answers: the connect timeout);
    the server reached by failover gets the header too, first, with the
    client's address, then the payload byte-exact."""
    dead = (f"127.0.0.1:{conftest.free_port()}" if first == "refused"
            else conftest.Blackhole().spec)
    up = Server(h_pp_echo, name="pp-upstream")
    d = start_daemon(tmp_path, make_config(
        {"up": {"server": [dead, up.spec], "send-proxy": ll_send}},
        {"plain": {"upstream": "up"}}, timeouts={"connect": "500ms"}))
    s = connect(d.addr("plain"), source=CLIENT4)
    payload = os.urandom(1000)
    assert exchange(s, payload) == payload
    r = only_record(up)
    expect_origin(r["pp"], ll_send, s.getsockname()[:2], d.addr("plain"))
    assert r["data"] == payload


FFFF6 = ":".join(["ffff"] * 8)
BOUNDARY = {
    # The longest v2 header accepted (16 + 1536, NOOP padding) ...
    "v2-max": (v2_header(("192.0.2.1", 1), ("192.0.2.2", 2),
                         tlvs=tlv(0x04, b"\0" * (1536 - 12 - 3))),
               (("192.0.2.1", 1), ("192.0.2.2", 2))),
    # ... the longest TCP6 line (104 bytes) and the longest line (107).
    "v1-tcp6-max": (f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
                    ((FFFF6, 65535), (FFFF6, 65535))),
    "v1-unknown-107": (f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
                       None),
}


@pytest.mark.parametrize("kind", sorted(BOUNDARY))
def test_longest_headers_then_bulk_payload(tmp_path, kind):
    """Headers at the size limits, followed in the same sendall by 256 KiB:
    exactly the header is consumed, all the rest is relayed."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up)
    hdr, origin = BOUNDARY[kind]
    assert len(hdr) in (1552, 104, 107)
    payload = os.urandom(256 << 10)
    s = connect(d.addr("pp"), source=CLIENT4)
    me = s.getsockname()[:2]
    got = bytearray()

    def reader():
        got.extend(recv_until_eof(s))

    t = start_thread(reader, name="reader")
    s.sendall(hdr + payload)
    s.shutdown(socket.SHUT_WR)
    t.join(IO_TIMEOUT)
    assert bytes(got) == payload
    r = only_record(up)
    if origin is None:
        expect_origin(r["pp"], "v2", me, d.addr("pp"))
    else:
        expect_origin(r["pp"], "v2", *origin)
    assert r["data"] == payload


def test_header_fed_in_pieces(tmp_path):
    """A header dribbled in 1-byte segments (within the timeout) works."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, handshake="5s")
    src, dst = ("203.0.113.5", 5555), ("192.0.2.80", 80)
    for hdr in (v1_header(src, dst),
                v2_header(src, dst, tlvs=tlv(0x01, b"h2") + tlv(0x04, b"\0" * 8))):
        s = connect(d.addr("pp"))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(hdr)):
            s.sendall(hdr[i:i + 1])
            time.sleep(0.01)
        assert exchange(s, b"after") == b"after"
    recs = up.wait_done()
    assert len(recs) == 2
    for r in recs:
        assert r["error"] is None
        expect_origin(r["pp"], "v2", src, dst)
        assert r["data"] == b"after"


def test_v2_tlvs_and_crc_accepted(tmp_path):
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up)
    src, dst = ("198.51.100.9", 4242), ("192.0.2.1", 443)
    h = bytearray(v2_header(src, dst, tlvs=tlv(0x01, b"h2")
                            + tlv(0x02, b"relay.example") + tlv(0x03, b"\0" * 4)))
    h[-4:] = struct.pack("!I", crc32c(bytes(h)))
    s = connect(d.addr("pp"))
    assert exchange(s, bytes(h) + b"data") == b"data"
    r = only_record(up)
    expect_origin(r["pp"], "v2", src, dst)
    assert r["pp"]["tlvs"] == b"", "TLVs must not be forwarded upstream"

    # The same header with a wrong checksum is refused.
    h[-1] ^= 0xFF
    s = connect(d.addr("pp"))
    s.sendall(bytes(h) + b"data")
    how, n, _ = read_until_closed(s, 3.0)
    assert n == 0
    time.sleep(0.3)
    assert up.accepted == 1


def test_v4_mapped_origin_goes_upstream_as_ipv4(tmp_path):
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, send_proxy="v2")
    s = connect(d.addr("pp"))
    hdr = b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.7 1000 443\r\n"
    assert exchange(s, hdr + b"x") == b"x"
    r = only_record(up)
    expect_origin(r["pp"], "v2", ("192.0.2.1", 1000), ("198.51.100.7", 443))


MAPPED_CASES = {
    # inbound src, dst -> what the upstream must receive (v1 line; v2 family)
    "mapped-src": (("::ffff:198.51.100.77", 5000), ("2001:db8::1", 443),
                   "TCP6"),
    "mapped-dst": (("2001:db8::7", 5000), ("::ffff:198.51.100.1", 443),
                   "TCP6"),
    "both-mapped": (("::ffff:198.51.100.77", 5000),
                    ("::ffff:198.51.100.1", 443), "TCP4"),
}


def _exact_header(version, fam, src, dst):
    """The header lifeline must write: mapped addresses stay IPv6 in TCP6
    and become plain IPv4 in TCP4."""
    if fam == "TCP4":
        src = (src[0].removeprefix("::ffff:"), src[1])
        dst = (dst[0].removeprefix("::ffff:"), dst[1])
    if version == "v1":
        return f"PROXY {fam} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()
    return v2_header(src, dst)


@pytest.mark.parametrize("ll_send", ["v1", "v2"])
@pytest.mark.parametrize("in_version", ["v1", "v2"])
@pytest.mark.parametrize("case", sorted(MAPPED_CASES))
def test_v4_mapped_with_ipv6_forwarded_exactly(tmp_path, ll_send, in_version,
                                               case):
    """A TCP6 header with one v4-mapped address keeps the client's address
    (TCP6, not UNKNOWN/AF_UNSPEC); both mapped go out as TCP4."""
    src, dst, fam = MAPPED_CASES[case]
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, send_proxy=ll_send)
    s = connect(d.addr("pp"))
    hdr = header(in_version, src, dst)
    assert exchange(s, hdr + b"x") == b"x"
    r = only_record(up)
    assert r["pp"]["raw"] == _exact_header(ll_send, fam, src, dst), r["pp"]


@pytest.mark.parametrize("ll_send", ["v1", "v2"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("kind", ["v2-local", "v2-local-with-addresses",
                                  "v1-unknown", "v1-unknown-with-addresses"])
def test_local_and_unknown_use_socket_addresses(tmp_path, ll_send, family, kind):
    """LOCAL (v2) and UNKNOWN (v1): the upstream header carries the
    client's real socket addresses, never addresses from the header."""
    up = Server(h_pp_echo, name="pp-upstream")
    bind = "[::1]:0" if family == "ipv6" else "127.0.0.1:0"
    client = CLIENT6 if family == "ipv6" else CLIENT4
    d = pp_daemon(tmp_path, up, send_proxy=ll_send,
                  listen=proxy_listener(bind=bind))
    fake = (("10.9.9.9", 9999), ("10.8.8.8", 8888))
    hdr = {
        "v2-local": v2_header(command=0),
        "v2-local-with-addresses": v2_header(*fake, command=0),
        "v1-unknown": b"PROXY UNKNOWN\r\n",
        "v1-unknown-with-addresses": b"PROXY UNKNOWN 10.9.9.9 10.8.8.8 9999 8888\r\n",
    }[kind]
    s = connect(d.addr("pp"), source=client)
    me = s.getsockname()[:2]
    assert exchange(s, hdr + b"hello") == b"hello"
    r = only_record(up)
    expect_origin(r["pp"], ll_send, me, d.addr("pp"))
    assert r["data"] == b"hello"


# --------------------------------------------------------------------------
# refusals and timeouts


def test_header_with_urgent_byte_closed_at_timeout_with_fin(tmp_path):
    """A partial header with one byte sent urgent (MSG_OOB): at the
    handshake timeout the connection ends with FIN, as any header timeout
    does.  The relay's one read of what the client sent stopped at the
    urgent mark, the bytes after it stayed unread, and close(2) sent RST."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, handshake="1s")
    s = connect(d.addr("pp"))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(SIG[:5])
    s.send(SIG[5:6], socket.MSG_OOB)
    s.sendall(SIG[6:10])
    how, n, took = read_until_closed(s, 6.0)
    assert (how, n) == ("eof", 0), f"ended with {how} after {took:.2f}s ({n} bytes)"
    assert 0.9 <= took < 3.0, f"closed after {took:.2f}s, the timeout is 1 s"
    assert up.accepted == 0
    s.close()


def test_slowloris_header_closed_at_handshake_timeout(tmp_path):
    """1 byte every 0.5 s, and a header never sent: both closed at the
    1 s handshake timeout, nothing reaches upstream, the daemon keeps
    serving and does not spin while it waits."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, handshake="1s")
    hdr = v1_header(("192.0.2.1", 1), ("192.0.2.2", 2))

    # Before the connects: the daemon's deadlines count from its accepts,
    # which cannot precede t0 (a t0 taken later, or the waiters' own start,
    # lags them by however long a loaded machine keeps this thread off).
    t0 = time.monotonic()
    slow = connect(d.addr("pp"))
    slow.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    silent = connect(d.addr("pp"))
    cpu0 = d.cpu_seconds()
    stop = threading.Event()

    def dribble():
        for i in range(len(hdr)):
            if stop.is_set():
                return
            try:
                slow.sendall(hdr[i:i + 1])
            except OSError:
                return
            stop.wait(0.5)

    t = start_thread(dribble, name="dribble")
    results = {}

    def wait_closed(name, sock):
        how, n, _ = read_until_closed(sock, 6.0)
        results[name] = (how, n, time.monotonic() - t0)

    waiters = [start_thread(wait_closed, n, s, name=f"wait-{n}")
               for n, s in (("slow", slow), ("silent", silent))]
    for w in waiters:
        w.join(10)
    stop.set()
    t.join(5)
    cpu = d.cpu_seconds() - cpu0
    for name in ("slow", "silent"):
        how, n, elapsed = results[name]
        assert n == 0, f"{name}: {n} bytes came back"
        assert 0.9 <= elapsed <= 1.25 * conftest.SLOW + 0.25, \
            f"{name}: closed after {elapsed:.2f}s"
    # Nothing relayed yet: FIN, like an ordinary server (the dribbler's
    # byte due at 1.0 s may race the close and turn it into a reset).
    assert results["silent"][0] == "eof", results["silent"]
    assert time.monotonic() - t0 < 6
    assert cpu < 0.5, f"daemon used {cpu:.2f}s of CPU waiting for headers"
    assert_nothing_upstream(up)

    # Still serving.
    s = connect(d.addr("pp"))
    assert exchange(s, hdr + b"ok") == b"ok"
    assert d.alive()


def test_many_slowloris_do_not_block_service(tmp_path):
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, handshake="1s")
    idle = []
    for i in range(60):
        s = connect(d.addr("pp"))
        s.sendall(b"PROXY TCP4 "[: i % 11])
        idle.append(s)
    # Served meanwhile.
    s = connect(d.addr("pp"))
    t0 = time.monotonic()
    assert exchange(s, v2_header(("192.0.2.1", 1), ("192.0.2.2", 2)) + b"ok") == b"ok"
    assert time.monotonic() - t0 < 0.9
    for s in idle:
        how, n, elapsed = read_until_closed(s, 5.0)
        assert n == 0
    assert up.accepted == 1


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_untrusted_source_rejected(tmp_path, version):
    """trusted-proxies = 10.0.0.0/8, client on 127.0.0.1: closed without
    reaching upstream, even with a well-formed header."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up,
                  listen=proxy_listener(**{"trusted-proxies": "10.0.0.0/8"}))
    s = connect(d.addr("pp"), source="127.0.0.1")
    try:
        s.sendall(header(version, ("192.0.2.1", 1), ("192.0.2.2", 2)) + b"data")
    except (BrokenPipeError, ConnectionResetError):
        pass
    how, n, elapsed = read_until_closed(s, 4.0)
    assert n == 0
    assert elapsed < 2.0, f"closed only after {elapsed:.2f}s"
    assert_nothing_upstream(up)
    assert d.alive()


def test_trusted_proxies_repeatable(tmp_path):
    """Two trusted-proxies lines: each admits its source; others refused."""
    up = Server(h_pp_echo, name="pp-upstream")
    # make_config puts `extra` at the end of the file, i.e. in [listen pp].
    d = pp_daemon(tmp_path, up,
                  listen=proxy_listener(**{"trusted-proxies": "10.0.0.0/8"}),
                  extra="trusted-proxies = 127.0.0.2/32\n")
    hdr = v1_header(("192.0.2.1", 1), ("192.0.2.2", 2))
    s = connect(d.addr("pp"), source="127.0.0.2")
    assert exchange(s, hdr + b"yes") == b"yes"
    s = connect(d.addr("pp"), source="127.0.0.3")
    try:
        s.sendall(hdr + b"no")
    except (BrokenPipeError, ConnectionResetError):
        pass
    how, n, _ = read_until_closed(s, 4.0)
    assert n == 0
    time.sleep(0.3)
    assert up.accepted == 1
    r = up.wait_done()[0]
    expect_origin(r["pp"], "v2", ("192.0.2.1", 1), ("192.0.2.2", 2))


def test_trusted_proxies_ipv6(tmp_path):
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, listen=proxy_listener(
        bind="[::1]:0", **{"trusted-proxies": "::1/128"}))
    s = connect(d.addr("pp"), source="::1")
    assert exchange(s, v2_header(("2001:db8::7", 7), ("2001:db8::8", 8)) + b"v6") == b"v6"
    r = only_record(up)
    expect_origin(r["pp"], "v2", ("2001:db8::7", 7), ("2001:db8::8", 8))


def test_header_to_plain_listener_is_data(tmp_path):
    """Without accept-proxy, a PROXY header is the client's data: relayed
    byte-exact, never parsed."""
    up = Server(h_raw, name="raw-upstream")
    d = start_daemon(tmp_path, make_config(
        {"up": [up.spec]}, {"plain": {"upstream": "up"}}))
    for hdr in (v1_header(("192.0.2.1", 1), ("192.0.2.2", 2)),
                v2_header(("192.0.2.1", 1), ("192.0.2.2", 2)),
                v2_header(command=0), b"PROXY garbage\r\n"):
        s = connect(d.addr("plain"))
        assert exchange(s, hdr + b"tail") == hdr + b"tail"
    recs = up.wait_done()
    assert len(recs) == 4
    assert sorted(r["data"] for r in recs) == sorted(
        h + b"tail" for h in (v1_header(("192.0.2.1", 1), ("192.0.2.2", 2)),
                              v2_header(("192.0.2.1", 1), ("192.0.2.2", 2)),
                              v2_header(command=0), b"PROXY garbage\r\n"))


GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls-hello": bytes.fromhex("16030100f4010000f00303") + os.urandom(64),
    "whatsapp": b"WA\x06\x03" + b"\x00" * 8,
    "lowercase-proxy": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1-bad-address": b"PROXY TCP4 010.0.0.1 10.0.0.2 1 2\r\n",
    "v1-bad-port": b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 2\r\n",
    "v1-lone-lf": b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n",
    "v1-too-long": b"PROXY UNKNOWN " + b"A" * 10240,
    "v2-version": SIG + b"\x11\x11\x00\x0c" + b"\x00" * 12,
    "v2-command": SIG + b"\x22\x11\x00\x0c" + b"\x00" * 12,
    "v2-udp": SIG + b"\x21\x12\x00\x0c" + b"\x00" * 12,
    "v2-length-0": SIG + b"\x21\x11\x00\x00",
    "v2-too-long": SIG + b"\x21\x11\xff\xff" + b"\x00" * 100,
    "v2-tlv-past-end": SIG + b"\x21\x11\x00\x0f" + b"\x00" * 12 + b"\x01\x00\x09",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_instead_of_header_closed(tmp_path, kind):
    """Not a header: closed well before the handshake timeout, nothing
    upstream, the daemon keeps serving."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, handshake="5s")
    s = connect(d.addr("pp"))
    try:
        s.sendall(GARBAGE[kind])
    except (BrokenPipeError, ConnectionResetError):
        pass
    how, n, elapsed = read_until_closed(s, 8.0)
    assert n == 0
    assert elapsed < 2.0, f"closed only after {elapsed:.2f}s (handshake timeout?)"
    assert_nothing_upstream(up)
    s = connect(d.addr("pp"))
    assert exchange(s, v1_header(("192.0.2.1", 1), ("192.0.2.2", 2)) + b"ok") == b"ok"


def test_client_reset_mid_header(tmp_path):
    """RST in the middle of a header: the connection is freed, nothing
    reaches upstream, the daemon keeps serving."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, handshake="5s")
    fd0 = d.stable_fd_count()
    hdr = v2_header(("192.0.2.1", 1), ("192.0.2.2", 2))
    for i in range(1, len(hdr)):
        s = connect(d.addr("pp"))
        s.sendall(hdr[:i])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    n = d.wait_fds_at_most(fd0)
    assert n <= fd0, f"{n - fd0} fds still open after the clients reset"
    assert_nothing_upstream(up)
    s = connect(d.addr("pp"))
    assert exchange(s, hdr + b"ok") == b"ok"


@pytest.mark.parametrize("cut", [1, 6, 13, 27])
def test_client_eof_mid_header_closed_promptly(tmp_path, cut):
    """EOF (FIN) in the middle of a header: the header can never complete,
    so the connection is closed at once, not held until the handshake
    timeout; nothing reaches upstream."""
    up = Server(h_pp_echo, name="pp-upstream")
    d = pp_daemon(tmp_path, up, handshake="5s")
    hdr = v2_header(("192.0.2.1", 1), ("192.0.2.2", 2)) if cut != 27 else \
        v1_header(("192.0.2.1", 1), ("192.0.2.2", 2))
    s = connect(d.addr("pp"))
    s.sendall(hdr[:cut])
    s.shutdown(socket.SHUT_WR)
    how, n, elapsed = read_until_closed(s, 8.0)
    assert n == 0
    assert elapsed < 2.0, \
        f"half-closed client held {elapsed:.2f}s mid-header ({how})"
    assert_nothing_upstream(up)
