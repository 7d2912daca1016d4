"""Privacy: at the default log level no client address or port is logged,
served or written."""

import ipaddress
import re
import signal
import socket
import struct
import time

import conftest
from conftest import (
    SLOW, connect, echo_roundtrip, expect_rejected, free_port, h_echo,
    make_config, read_until_closed, recv_exact, rst_close, start_daemon)
from netns import host_factory  # noqa: F401 (fixture)
from stats_helpers import http, read_all, request_bytes
from tls_helpers import client_ctx

CLIENT_IP = "127.0.0.2"  # distinct from every configured address


def test_no_client_address_or_port_in_output(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    cfg = make_config(
        {"up": [echo.spec], "dead": [dead]},
        {"plain": {"upstream": "up"},
         "nowhere": {"upstream": "dead"},
         "capped": {"upstream": "up", "maxconn": "1"}},
        timeouts={"client": "1s", "server": "1s"})
    d = start_daemon(tmp_path, cfg)  # default log level
    client_ports = []

    def client(name):
        s = connect(d.addr(name), source=CLIENT_IP)
        client_ports.append(s.getsockname()[1])
        return s

    for _ in range(3):  # ordinary relays
        s = client("plain")
        echo_roundtrip(s, b"x" * 1000)
        s.close()
    for _ in range(2):  # upstream connect failures
        s = client("nowhere")
        s.sendall(b"hi")
        read_until_closed(s, 5)
    held = client("capped")  # maxconn rejection
    echo_roundtrip(held)
    expect_rejected(client("capped"))
    held.close()
    s = client("plain")  # client reset mid-connection
    echo_roundtrip(s)
    rst_close(s)
    s = client("plain")  # idle timeout
    echo_roundtrip(s)
    read_until_closed(s, 5)
    d.reload(cfg)
    assert d.stop() == 0
    # nothing written to disk but the ports file (and our own files)
    ours = {d.conf.name, d.ports_file.name, d.stderr_path.name, d.stdout_path.name}
    assert set(p.name for p in tmp_path.iterdir()) <= ours, list(tmp_path.iterdir())

    out = d.stderr_text() + d.stdout_text()
    assert CLIENT_IP not in out, f"client address logged:\n{out}"
    configured = {d.pid, echo.port, int(dead.rsplit(":", 1)[1])}
    configured |= {p for addrs in d.ports.values() for _, p in addrs}
    numbers = {int(n) for n in re.findall(r"(?<!\d)(\d+)(?!\d)", out)}
    leaked = sorted((set(client_ports) - configured) & numbers)
    assert not leaked, f"client source ports {leaked} appear in the output:\n{out}"


# --------------------------------------------------------------------------
# everything the daemon printed, served and wrote, searched for recognisable
# client addresses in every form (issue 14)

# The clients' own addresses (sockets bound to them on the host's loopback),
# and the addresses PROXY headers carry: IPv4, IPv6, v4-mapped.  Every
# port is above the ephemeral range (32768-60999), so no port of the
# daemon, its listeners or its upstream connections can be one of them.
SRC4, SRC6 = "192.0.2.177", "2001:db8:c0:ffee::177"
PP4 = ("203.0.113.77", 61777)
PP6 = ("2001:db8:dead:beef::77", 62777)
PPM = ("::ffff:198.51.100.77", 63777)
SRC4_PORT0, SRC6_PORT0 = 61100, 62100


def address_forms(ip):
    """(text forms, binary forms) of an address: text lower-case."""
    a = ipaddress.ip_address(ip)
    text, binary = set(), set()
    if a.version == 6 and a.ipv4_mapped is None:
        p = a.packed
        groups = [int.from_bytes(p[i:i + 2], "big") for i in range(0, 16, 2)]
        text |= {a.compressed, a.exploded,
                 ":".join(f"{g:x}" for g in groups),  # uncompressed
                 p.hex(),  # one hex run
                 "".join(p[i:i + 4][::-1].hex() for i in range(0, 16, 4)),
                 a.reverse_pointer.replace(".ip6.arpa", ""),  # nibbles
                 # its /64, what per-source limits would group by
                 ":".join(f"{g:x}" for g in groups[:4]),
                 a.exploded[:19], p[:8].hex()}
        binary |= {p}
        return text, binary
    if a.version == 6:  # v4-mapped: the mapped forms and the IPv4 ones
        p = a.packed
        text |= {a.compressed, a.exploded, p.hex(),
                 "ffff:" + p[12:14].hex() + ":" + p[14:16].hex()}
        binary |= {p}
        a = a.ipv4_mapped
    b = a.packed
    text |= {str(a),
             ".".join(f"{x:03d}" for x in b),  # zero-padded
             ".".join(str(x) for x in b[::-1]),  # in-addr.arpa order
             b.hex(), b[::-1].hex(),  # network and host byte order
             str(int.from_bytes(b, "big")), str(int.from_bytes(b, "little")),
             b[:2].hex() + ":" + b[2:].hex()}
    binary |= {b, b[::-1]}
    return text, binary


def find_address(ip, hay):
    """The forms of ip found in hay (bytes)."""
    low = hay.decode("latin-1").lower()
    text, binary = address_forms(ip)
    found = [t for t in text if t in low]
    found += [b.hex() for b in binary if b in hay]
    return found


def find_port(port, hay):
    """The port as a decimal number of its own, or as 4 hex digits of
    their own (network or host byte order)."""
    low = hay.decode("latin-1").lower()
    found = [m.group(0) for m in re.finditer(rf"(?<![0-9]){port}(?![0-9])", low)]
    for h in (f"{port:04x}", struct.pack("<H", port).hex()):
        found += [m.group(0) for m in re.finditer(
            rf"(?<![0-9a-f]){h}(?![0-9a-f])", low)]
    return found


def test_privacy_scanner_sees_every_form():
    """The scan below can fail: each form of each address, and each port,
    dropped into a line of log is found; the bare text is clean."""
    line = "2026-01-01T00:00:00Z info: worker 1: {} closed\n"
    for ip in (SRC4, SRC6, PP4[0], PP6[0], PPM[0]):
        text, binary = address_forms(ip)
        assert find_address(ip, line.format("").encode()) == []
        for t in text:
            for v in (t, t.upper()):
                assert find_address(ip, line.format(v).encode()), (ip, v)
        for b in binary:
            assert find_address(ip, line.encode() + b), (ip, b)
    for port in (PP4[1], SRC6_PORT0 + 7):
        assert find_port(port, line.format("").encode()) == []
        for v in (str(port), f"[::1]:{port}", f"{port:04X}", f"0x{port:x}",
                  struct.pack("<H", port).hex()):
            assert find_port(port, line.format(v).encode()), (port, v)
        assert not find_port(port, line.format(f"{port}0 0.{port}1").encode())


def read_pp(c):
    """The PROXY header lifeline sends upstream (v1 or v2), raw."""
    first = recv_exact(c, 16)
    if first.startswith(b"PROXY "):
        data = first
        while not data.endswith(b"\r\n"):
            data += recv_exact(c, 1)
        return data
    return first + recv_exact(c, struct.unpack("!H", first[14:16])[0])


def h_pp_echo(c, rec):
    rec["pp"] = read_pp(c)
    h_echo(c, rec)


class Clients:
    """Connections from the recognisable addresses, each from its own
    recognisable port, in the host's namespace."""

    def __init__(self, host, d):
        self.host, self.d = host, d
        self.next = {4: SRC4_PORT0, 6: SRC6_PORT0}
        self.used = {4: [], 6: []}

    def connect(self, name, fam=4):
        addr = [a for a in self.d.ports[name] if (":" in a[0]) == (fam == 6)][0]
        port = self.next[fam]
        self.next[fam] += 1
        self.used[fam].append(port)
        with self.host.inside():
            s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET)
            conftest._SOCKETS.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((SRC6 if fam == 6 else SRC4, port))
            s.settimeout(5.0 * SLOW)
            s.connect(addr)
        return s

    def tls(self, name, fam=4, preamble=b""):
        raw = self.connect(name, fam)
        raw.sendall(preamble)
        s = client_ctx().wrap_socket(raw, server_hostname="relay.example")
        conftest._SOCKETS.append(s)
        return s


def pp1(src, dst):
    fam = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {fam} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def pp2(src, dst):
    if ":" in src[0]:
        body = (socket.inet_pton(socket.AF_INET6, src[0])
                + socket.inet_pton(socket.AF_INET6, dst[0]))
        fam = 0x21
    else:
        body = socket.inet_aton(src[0]) + socket.inet_aton(dst[0])
        fam = 0x11
    body += struct.pack("!HH", src[1], dst[1])
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, fam])
            + struct.pack("!H", len(body)) + body)


def roundtrip_fin(s, payload=b"x" * 1000):
    s.sendall(payload)
    assert recv_exact(s, len(payload)) == payload
    s.shutdown(socket.SHUT_WR)
    how, n, _ = read_until_closed(s, 5.0 * SLOW)
    assert (how, n) == ("eof", 0), (how, n)


def tls_roundtrip_close(s, payload=b"y" * 1000):
    s.sendall(payload)
    assert recv_exact(s, len(payload)) == payload
    raw = s.unwrap()
    raw.shutdown(socket.SHUT_WR)
    how, n, _ = read_until_closed(raw, 5.0 * SLOW)
    assert (how, n) == ("eof", 0), (how, n)


def test_no_client_address_anywhere_in_any_form(host_factory, tmp_path):
    """A varied workload from recognisable addresses (the clients' own,
    IPv4 and IPv6, and IPv4, IPv6 and v4-mapped ones in PROXY headers),
    with recognisable ports: relays on plain, TLS, PROXY and PROXY + TLS
    listeners, a refused upstream, garbage, handshake, header, stats and
    idle timeouts, maxconn refusals, an untrusted PROXY source, a client
    reset, a reload, SIGUSR1.  At the default log level, nothing the
    daemon printed (stdout, stderr), served (/metrics, /stats.json, the
    dashboard, /qr.svg, /healthz, /readyz, a 404) or wrote (the ports
    file) holds any of those addresses in any form (dotted, zero-padded,
    reversed, hex in either byte order, as integers, binary, IPv6
    compressed, expanded, nibble-reversed, its /64) or any of those ports
    (decimal, hex).  Control: the same scan finds every one of them in
    the PROXY headers the daemon sent upstream, so it can see them."""
    host = host_factory([SRC4, SRC6])
    with host.inside():
        fwd1 = conftest.Server(h_pp_echo, name="fwd-v1")
        fwd2 = conftest.Server(h_pp_echo, name="fwd-v2")
        echo = conftest.Server(h_echo, name="echo")
        dead = f"127.0.0.1:{free_port()}"
    both = ["127.0.0.1:0", "[::1]:0"]
    pp = {"accept-proxy": "on"}
    cfg = make_config(
        {"v1": {"server": [fwd1.spec], "send-proxy": "v1"},
         "v2": {"server": [fwd2.spec], "send-proxy": "v2"},
         "echo": [echo.spec], "dead": [dead]},
        {"plain": {"bind": both, "upstream": "v2"},
         "tls": {"bind": both, "tls": "on", "upstream": "v1"},
         "pp": dict(pp, bind=both, upstream="v1"),
         "pp-tls": dict(pp, bind=both, tls="on", upstream="v2"),
         "strict": dict(pp, bind=both, upstream="echo",
                        **{"trusted-proxies": "10.0.0.0/8"}),
         "nowhere": {"bind": both, "upstream": "dead"},
         "capped": {"bind": both, "upstream": "echo", "maxconn": "1"}},
        global_={"public-host": "relay.example.org"},
        timeouts={"handshake": "1s", "client": "1s", "server": "1s"},
        extra="\n[stats]\nlisten = 127.0.0.1:0\nlisten = [::1]:0\n")
    with host.inside():
        d = start_daemon(tmp_path, cfg)  # default log level
    cl = Clients(host, d)
    t0 = time.monotonic()

    # waits that end by a timeout: opened first, checked at the end
    waiting = {
        "tls silent": cl.connect("tls", 4),
        "pp half header": cl.connect("pp", 6),
        "stats half request": cl.connect("stats", 4),
        "plain idle": cl.connect("plain", 6),
    }
    waiting["pp half header"].sendall(pp1(PP4, ("192.0.2.1", 443))[:20])
    waiting["stats half request"].sendall(b"GET /metr")

    for fam in (4, 6):
        for _ in range(2):
            roundtrip_fin(cl.connect("plain", fam))
        tls_roundtrip_close(cl.tls("tls", fam))
        for src, dst in ((PP4, ("192.0.2.1", 443)), (PP6, ("2001:db8::1", 443)),
                         (PPM, ("::ffff:192.0.2.1", 443))):
            for hdr in (pp1, pp2):
                s = cl.connect("pp", fam)
                s.sendall(hdr(src, dst))
                roundtrip_fin(s)
            tls_roundtrip_close(cl.tls("pp-tls", fam, preamble=pp2(src, dst)))
        # errors
        s = cl.connect("strict", fam)  # not a trusted proxy
        s.sendall(pp1(PP4, ("192.0.2.1", 443)))
        assert read_until_closed(s, 5.0 * SLOW)[1] == 0
        s = cl.connect("nowhere", fam)  # upstream refuses
        assert read_until_closed(s, 5.0 * SLOW)[1] == 0
        for name, junk in (("tls", b"GET / HTTP/1.1\r\n\r\n"),
                           ("pp", b"SSH-2.0-OpenSSH_9.2\r\n"),
                           ("stats", b"\x16\x03\x01\x00\x05hello\r\n\r\n")):
            s = cl.connect(name, fam)
            s.sendall(junk)
            data, how = read_all(s, 5.0 * SLOW)
            assert how in ("eof", "reset"), (name, how)
        held = cl.connect("capped", fam)  # maxconn 1
        roundtrip = b"held"
        held.sendall(roundtrip)
        assert recv_exact(held, len(roundtrip)) == roundtrip
        assert conftest.expect_rejected(cl.connect("capped", fam)) in (
            "eof", "reset")
        held.close()
        s = cl.connect("plain", fam)  # the client resets mid-stream
        s.sendall(b"z" * 100)
        recv_exact(s, 100)
        rst_close(s)
        # the operator's view, asked from the recognisable addresses
        for path in ("/metrics", "/stats.json", "/", "/qr.svg", "/healthz",
                     "/readyz", "/nope"):
            s = cl.connect("stats", fam)
            s.sendall(request_bytes("GET", path, ("relay.example.org", 80)))
            data, how = read_all(s, 5.0 * SLOW)
            assert how == "eof" and data.startswith(b"HTTP/1."), (path, how)

    ends = {k: read_until_closed(s, 5.0 * SLOW) for k, s in waiting.items()}
    assert all(how == "eof" for how, _, _ in ends.values()), ends
    served = {}
    d.send(signal.SIGUSR1)
    d.reload(cfg)
    for path in ("/metrics", "/stats.json", "/", "/qr.svg", "/healthz",
                 "/readyz", "/nope"):
        with host.inside():
            r = http(d.addr("stats"), path)
        assert r.status == (404 if path == "/nope" else 200), (path, r)
        served[path] = r.raw
    ports_file = d.ports_file.read_bytes()  # removed at exit
    assert d.stop() == 0
    elapsed = time.monotonic() - t0

    ours = {d.conf.name, d.ports_file.name, d.stderr_path.name,
            d.stdout_path.name}
    assert set(p.name for p in tmp_path.iterdir()) <= ours, \
        list(tmp_path.iterdir())
    places = dict(served)
    places["stdout"] = d.stdout_path.read_bytes()
    places["stderr"] = d.stderr_path.read_bytes()
    places["ports file"] = ports_file
    assert b"info" in places["stderr"], places["stderr"][:500]
    addrs = [SRC4, SRC6, PP4[0], PP6[0], PPM[0]]
    ports = cl.used[4] + cl.used[6] + [PP4[1], PP6[1], PPM[1]]
    leaks = []
    for where, hay in places.items():
        for ip in addrs:
            leaks += [(where, ip, f) for f in find_address(ip, hay)]
        for port in ports:
            leaks += [(where, port, f) for f in find_port(port, hay)]
    assert not leaks, f"client addresses or ports exposed: {leaks[:20]}"

    # Control: what the daemon itself sent upstream names them all, and the
    # scan finds each there.
    upstream = b"".join(r["pp"] for srv in (fwd1, fwd2)
                        for r in srv.wait_done() if "pp" in r)
    for ip in addrs:
        assert find_address(ip, upstream), \
            f"the scan does not see {ip} in the headers sent upstream"
    v1 = b"".join(r["pp"] for r in fwd1.wait_done() if "pp" in r)
    for port in (PP4[1], PP6[1], PPM[1]):
        assert find_port(port, v1), port
    print(f"privacy: {len(cl.used[4]) + len(cl.used[6])} connections from "
          f"{SRC4} and {SRC6} in {elapsed:.1f}s; scanned "
          f"{sum(len(v) for v in places.values())} bytes in "
          f"{len(places)} places")
