"""Hosts in network namespaces, and the impairments between them.

The reliability tests (issue 14, docs/RELIABILITY.md) run the real daemon
on its own "host", with clients and upstream servers on others, joined by
links that can be slow, lossy, delayed and jittery.  Four namespaces per
test, named llr-PID-N-ROLE (PID: the pytest process, so that a run that
died is swept by the next one):

    client            wire (a router)                    relay                upstream
    10.77.1.2 c0 ---- w0 10.77.1.1                        
                       |  w0 -> tup --[delayshim]--> tup -> w1
                       |  w1 -> tdn --[delayshim]--> tdn -> w0
                      w1 10.77.2.1 ---------------- r0 10.77.2.2
                                                    r1 10.77.3.1 ---- u0 10.77.3.2
                                                                         10.77.3.3

- The client link crosses the wire router.  Policy routing sends every
  packet that arrives on w0 (client to relay, "up") into the TUN device
  tup, and every packet from w1 ("down") into tdn; tests/tools/delayshim
  holds each packet for the configured time and writes it back into its
  device, whence the router forwards it to the other side.  Neither end's
  TCP stack is touched: the relay's own sockets see the delay.
- Rate: a tbf qdisc on the router's egress (w1 for up, w0 for down), so
  the queue builds in the network, as at a real bottleneck.
- Loss: nftables in the router's forward chain, `numgen random mod 100 <
  N drop`, per direction (matched on the egress veth: each packet once).
- The upstream link is a plain veth.  nftables in the upstream namespace
  refuses (TCP RST) or blackholes (drops) new connections to one server
  address, leaving established ones alone.

How test code gets into a namespace: Python 3.11 has no os.setns, so
`inside(ns)` calls setns(2) through ctypes on the calling thread only
(network namespaces are per thread), and returns it home afterwards.  A
socket belongs to the namespace it was created in for its whole life, so
conftest's helpers work unchanged: create the Server, connect() the
client, or start the daemon (a child process inherits the forking
thread's namespace) inside the block; use the sockets anywhere.
"""

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import LIFELINE_BIN

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_SRC = os.path.join(HERE, "..", "tools", "delayshim.c")

CLIENT_IP = "10.77.1.2"
WIRE_CLIENT_IP = "10.77.1.1"
WIRE_RELAY_IP = "10.77.2.1"
RELAY_IP = "10.77.2.2"  # where clients reach the relay
RELAY_UP_IP = "10.77.3.1"  # the relay's address toward upstreams
UPSTREAM_IPS = ("10.77.3.2", "10.77.3.3")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# pytest's own namespace, where every thread returns after inside().
_HOME = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
_PREFIX = f"llr-{os.getpid()}-"
_seq = 0
_seq_lock = threading.Lock()


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def inside(ns):
    """Run the block with this thread in network namespace `ns`."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(_HOME)
    finally:
        os.close(fd)


def sh(*argv, check=True, timeout=10, input=None):
    """Run a command; on failure raise with its stderr."""
    r = subprocess.run(list(argv), capture_output=True, text=True,
                       timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: "
                           f"{r.stderr.strip()}")
    return r


def nsx(ns, *argv, **kw):
    return sh("ip", "netns", "exec", ns, *argv, **kw)


# --------------------------------------------------------------------------
# kernel features and the shim, checked once per session


def _sweep_stale():
    """Delete namespaces left by a pytest run that died (its PID is gone),
    killing what still runs in them."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return
    for name in names:
        m = re.match(r"llr-(\d+)-", name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its run is alive (another engineer's): leave it
        except ProcessLookupError:
            pass
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", name, check=False)


def check_features(workdir):
    """Fail (never skip) with a clear message when the kernel or the
    machine lacks something the topology needs; returns the shim path."""
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2"),
                      ("nft", "nftables"), ("cc", "gcc")):
        if shutil.which(tool) is None:
            pytest.fail(f"netns tests need `{tool}` (Debian package {pkg}; "
                        "scripts/deps.sh test installs it)")
    if os.geteuid() != 0:
        pytest.fail("netns tests need root (namespaces, nftables, qdiscs)")
    if not os.path.exists("/dev/net/tun"):
        pytest.fail("netns tests need /dev/net/tun (TUN driver)")
    _sweep_stale()
    shim = os.path.join(str(workdir), "delayshim")
    r = sh("cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", shim,
           SHIM_SRC, check=False, timeout=60)
    if r.returncode != 0:
        pytest.fail(f"cannot build tests/tools/delayshim.c:\n{r.stderr}")
    ns = f"{_PREFIX}probe"
    steps = [
        ("network namespaces", ["ip", "netns", "add", ns]),
        ("veth", ["ip", "-n", ns, "link", "add", "pa", "type", "veth",
                  "peer", "name", "pb"]),
        ("tbf qdisc", ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev",
                       "pa", "root", "tbf", "rate", "1mbit", "burst", "4kb",
                       "latency", "100ms"]),
        ("nftables", ["ip", "netns", "exec", ns, "nft", "add", "table", "inet",
                      "probe"]),
        ("nftables base chain", ["ip", "netns", "exec", ns, "nft",
                                 "add chain inet probe f { type filter hook "
                                 "forward priority 0; }"]),
        ("nftables numgen random", ["ip", "netns", "exec", ns, "nft",
                                    "add rule inet probe f numgen random "
                                    "mod 100 < 5 drop"]),
        ("TUN devices", ["ip", "-n", ns, "tuntap", "add", "dev", "pt", "mode",
                         "tun"]),
        ("TUN attach (delayshim)", ["ip", "netns", "exec", ns, "timeout", "-s",
                                    "INT", "0.3", shim, "pt:0"]),
    ]
    try:
        for what, argv in steps:
            r = sh(*argv, check=False)
            if r.returncode != 0 and not (argv[-1] == "pt:0" and
                                          "ready" in r.stdout):
                pytest.fail(f"kernel feature missing for the netns tests: "
                            f"{what}: `{' '.join(argv)}` failed: "
                            f"{r.stderr.strip()}")
    finally:
        sh("ip", "netns", "del", ns, check=False)
    return shim


# --------------------------------------------------------------------------
# the topology


class Net:
    """Four namespaces joined as drawn in the module docstring."""

    ROLES = ("client", "wire", "relay", "up")

    def __init__(self, shim, logdir):
        global _seq
        with _seq_lock:
            _seq += 1
            n = _seq
        self.shim_bin = shim
        self.logdir = logdir
        self.ns = {r: f"{_PREFIX}{n}-{r}" for r in self.ROLES}
        self.shim_proc = None
        self.shim_log = None
        self.impair = {"delay": (0, 0, 0), "rate": None, "loss": (0, 0)}
        self._created = []
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    # -- construction

    def _build(self):
        c, w, r, u = (self.ns[x] for x in self.ROLES)
        for ns in (c, w, r, u):
            sh("ip", "netns", "add", ns)
            self._created.append(ns)
            nsx(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # links, created directly in their namespaces (no name in ours)
        sh("ip", "-n", c, "link", "add", "c0", "type", "veth", "peer", "name",
           "w0", "netns", w)
        sh("ip", "-n", w, "link", "add", "w1", "type", "veth", "peer", "name",
           "r0", "netns", r)
        sh("ip", "-n", r, "link", "add", "r1", "type", "veth", "peer", "name",
           "u0", "netns", u)
        for ns, dev, addr in ((c, "c0", f"{CLIENT_IP}/24"),
                              (w, "w0", f"{WIRE_CLIENT_IP}/24"),
                              (w, "w1", f"{WIRE_RELAY_IP}/24"),
                              (r, "r0", f"{RELAY_IP}/24"),
                              (r, "r1", f"{RELAY_UP_IP}/24"),
                              (u, "u0", f"{UPSTREAM_IPS[0]}/24"),
                              (u, "u0", f"{UPSTREAM_IPS[1]}/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        for ns, dev in ((c, "c0"), (w, "w0"), (w, "w1"), (r, "r0"), (r, "r1"),
                        (u, "u0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c, "route", "add", "default", "via", WIRE_CLIENT_IP)
        sh("ip", "-n", r, "route", "add", "default", "via", WIRE_RELAY_IP)
        # the wire: a router whose every forwarded packet crosses the shim
        nsx(w, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0")
        for dev, table, src in (("tup", "100", "w0"), ("tdn", "101", "w1")):
            sh("ip", "-n", w, "tuntap", "add", "dev", dev, "mode", "tun")
            nsx(w, "sysctl", "-q", "-w", f"net.ipv4.conf.{dev}.rp_filter=0")
            sh("ip", "-n", w, "link", "set", dev, "up")
            sh("ip", "-n", w, "route", "add", "default", "dev", dev, "table",
               table)
            sh("ip", "-n", w, "rule", "add", "iif", src, "lookup", table)
        nft = ("table inet impair {\n"
               " chain links { type filter hook forward priority 0; }\n}\n"
               )
        nsx(w, "nft", "-f", "-", input=nft)
        nsx(u, "nft", "-f", "-", input=(
            "table inet upstream {\n"
            " chain newconn { type filter hook input priority 0; }\n}\n"))
        self.set_delay()
        if os.environ.get("LLR_PCAP"):
            # Debugging aid: the relay host's packets, both links, headers
            # only, in the test's tmp_path (LLR_PCAP=1).
            with inside(r):
                subprocess.Popen(
                    ["tcpdump", "-q", "-i", "any", "-U", "-s", "96", "-w",
                     os.path.join(self.logdir, "relay.pcap")],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
            time.sleep(0.5)

    def destroy(self):
        """Stop daemons (SIGTERM, as conftest does, so that a sanitizer
        report is written), the shim, kill whatever else runs in our
        namespaces, delete them."""
        import conftest
        for d in conftest._DAEMONS:
            if d.alive():
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(8)
                except subprocess.TimeoutExpired:
                    d.kill()
        self._stop_shim()
        for ns in self._created:
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in reversed(self._created):
            sh("ip", "netns", "del", ns, check=False)
        self._created = []

    # -- impairments

    def _stop_shim(self):
        p = self.shim_proc
        self.shim_proc = None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def set_delay(self, up_ms=0, down_ms=0, jitter_ms=0, seed=1):
        """(Re)start the shim: each packet from the client waits up_ms,
        each toward it down_ms, both +- jitter_ms (uniform, no reordering).
        Packets held by a previous shim are lost: call before traffic."""
        self._stop_shim()
        self.shim_log = os.path.join(self.logdir, f"delayshim-{time.monotonic_ns()}.log")
        with open(self.shim_log, "wb") as err, inside(self.ns["wire"]):
            self.shim_proc = subprocess.Popen(
                [self.shim_bin, "-s", str(seed), f"tup:{up_ms}:{jitter_ms}",
                 f"tdn:{down_ms}:{jitter_ms}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                close_fds=True)
        line = self.shim_proc.stdout.readline()
        if line.strip() != b"ready":
            raise AssertionError(f"delayshim did not start: {self.shim_text()}")
        self.impair["delay"] = (up_ms, down_ms, jitter_ms)

    def shim_text(self):
        try:
            with open(self.shim_log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def shim_alive(self):
        return self.shim_proc is not None and self.shim_proc.poll() is None

    def set_rate(self, up_kbit=None, down_kbit=None, queue_ms=200):
        """A tbf bottleneck on the router's egress, per direction; None
        removes it.  The queue holds queue_ms worth at that rate."""
        w = self.ns["wire"]
        for dev, kbit in (("w1", up_kbit), ("w0", down_kbit)):
            sh("ip", "netns", "exec", w, "tc", "qdisc", "del", "dev", dev,
               "root", check=False)
            if kbit:
                nsx(w, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                    "rate", f"{kbit}kbit", "burst", "4kb",
                    "latency", f"{queue_ms}ms")
        self.impair["rate"] = (up_kbit, down_kbit)

    def set_loss(self, up_pct=0, down_pct=0):
        """Drop this percentage of the packets crossing the router, per
        direction, at random (nftables numgen)."""
        rules = ["flush chain inet impair links"]
        for dev, pct in (("w1", up_pct), ("w0", down_pct)):
            if pct:
                rules.append(f'add rule inet impair links oifname "{dev}" '
                             f"numgen random mod 100 < {int(pct)} counter drop")
        nsx(self.ns["wire"], "nft", "-f", "-", input="\n".join(rules) + "\n")
        self.impair["loss"] = (up_pct, down_pct)

    def loss_counts(self):
        """Packets dropped so far by the loss rules, {dev: n}."""
        out = nsx(self.ns["wire"], "nft", "list", "chain", "inet", "impair",
                  "links").stdout
        return {m.group(1): int(m.group(2)) for m in re.finditer(
            r'oifname "(\w+)".*counter packets (\d+)', out)}

    def set_upstream(self, ip, port, state):
        """New connections to ip:port in the upstream namespace: 'up'
        (untouched), 'refuse' (TCP RST, as with no listener) or 'blackhole'
        (SYN dropped).  Established connections are never touched."""
        assert state in ("up", "refuse", "blackhole"), state
        handle = getattr(self, "_up_rules", {})
        self._up_rules = handle
        u = self.ns["up"]
        key = (ip, port)
        if key in handle:
            nsx(u, "nft", "delete", "rule", "inet", "upstream", "newconn",
                "handle", str(handle.pop(key)))
        if state == "up":
            return
        verdict = "drop" if state == "blackhole" else "reject with tcp reset"
        r = nsx(u, "nft", "--echo", "--handle", "add", "rule", "inet",
                "upstream", "newconn", "ip", "daddr", ip, "tcp", "dport", str(port),
                "tcp", "flags", "&", "(syn|ack)", "==", "syn", "counter",
                *verdict.split())
        m = re.search(r"# handle (\d+)", r.stdout)
        assert m, r.stdout
        handle[key] = int(m.group(1))

    def upstream_rule_hits(self):
        """{(ip, port): SYNs matched} for the rules now in place."""
        out = nsx(self.ns["up"], "nft", "--handle", "list", "chain", "inet",
                  "upstream", "newconn").stdout
        hits = {}
        for m in re.finditer(r"ip daddr (\S+) tcp dport (\d+) .*counter "
                             r"packets (\d+)", out):
            hits[(m.group(1), int(m.group(2)))] = int(m.group(3))
        return hits

    # -- running things in the namespaces

    def inside(self, role):
        return inside(self.ns[role])

    def connect(self, addr, timeout=20.0):
        """conftest.connect() from the client host."""
        from conftest import connect
        with inside(self.ns["client"]):
            return connect(addr, timeout=timeout)

    def server(self, handler, ip=UPSTREAM_IPS[1], **kw):
        """conftest.Server on the upstream host."""
        from conftest import Server
        with inside(self.ns["up"]):
            return Server(handler, host=ip, **kw)

    def daemon(self, tmp_path, config, **kw):
        """conftest's Daemon, started on the relay host."""
        from conftest import start_daemon
        with inside(self.ns["relay"]):
            return start_daemon(tmp_path, config, **kw)


# --------------------------------------------------------------------------
# observing how a TCP connection ended


TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
              5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT",
              9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def tcp_state(sock):
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return TCP_STATES.get(info[0], str(info[0]))


def wait_clean_end(sock, timeout):
    """After both FINs were seen: wait until the connection is closed on our
    side, and return 'fin' when no error (RST) came, 'reset' otherwise, or
    the TCP state name when it is still not closed at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in (errno.ECONNRESET, errno.EPIPE):
            return "reset"
        st = tcp_state(sock)
        if st in ("CLOSE", "TIME_WAIT"):
            return "fin"
        if time.monotonic() >= deadline:
            return st
        time.sleep(0.02)


@pytest.fixture(scope="session")
def netns_shim(tmp_path_factory):
    return check_features(tmp_path_factory.mktemp("netns"))


@pytest.fixture
def net(netns_shim, tmp_path):
    """A fresh four-namespace topology, destroyed after the test even when
    it fails (conftest's _cleanup stops the daemon and servers first)."""
    n = Net(netns_shim, str(tmp_path))
    try:
        yield n
    finally:
        n.destroy()


class Host:
    """One namespace with only its loopback device, and extra addresses on
    it: a host of its own for tests that need recognisable addresses
    (IPv4 and IPv6), many connections without touching the machine's
    ephemeral ports, or nftables rules of their own.  Client, daemon and
    servers all live in it, so no shim and no router: cheaper than Net."""

    def __init__(self, addrs=(), name="host"):
        global _seq
        with _seq_lock:
            _seq += 1
            n = _seq
        self.ns = f"{_PREFIX}{n}-{name}"
        self._created = False
        try:
            sh("ip", "netns", "add", self.ns)
            self._created = True
            sh("ip", "-n", self.ns, "link", "set", "lo", "up")
            for a in addrs:
                plen = 128 if ":" in a else 32
                sh("ip", "-n", self.ns, "addr", "add", f"{a}/{plen}", "dev",
                   "lo")
        except BaseException:
            self.destroy()
            raise

    def inside(self):
        return inside(self.ns)

    def destroy(self):
        """Stop daemons (SIGTERM, for the sanitizer report), kill what else
        runs here, delete the namespace."""
        import conftest
        if not self._created:
            return
        for d in conftest._DAEMONS:
            if d.alive():
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(8)
                except subprocess.TimeoutExpired:
                    d.kill()
        pids = sh("ip", "netns", "pids", self.ns, check=False).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", self.ns, check=False)
        self._created = False


@pytest.fixture
def host_factory():
    """Makes Hosts (Host(addrs)); every one is deleted after the test, even
    when it fails.  Fails (never skips) without root or iproute2."""
    if shutil.which("ip") is None:
        pytest.fail("netns tests need `ip` (Debian package iproute2)")
    if os.geteuid() != 0:
        pytest.fail("netns tests need root (namespaces)")
    _sweep_stale()
    made = []

    def make(addrs=(), name="host"):
        h = Host(addrs, name)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.destroy()


def relay_listen_spec():
    return f"{RELAY_IP}:0"


__all__ = ["Net", "Host", "host_factory", "inside", "net", "netns_shim",
           "wait_clean_end", "tcp_state", "CLIENT_IP", "RELAY_IP",
           "UPSTREAM_IPS", "LIFELINE_BIN"]
