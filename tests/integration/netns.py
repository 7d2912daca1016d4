"""Hosts in network namespaces, and the impairments between them.

The reliability tests (issue 14, docs/RELIABILITY.md) run the real daemon
on its own "host", with clients and upstream servers on others, joined by
links that can be slow, lossy, delayed, jittery, reordering, narrow (a
small path MTU, with or without ICMP) or cut for a while.  Five
namespaces per test, named llr-PID-N-ROLE (PID: the pytest process, so
that a run that died is swept by the next one):

    client    10.77.1.2  c0
                          |
    wire      10.77.1.1  w0    w0 -> tup --[delayshim]--> tup -> w1
    (router)  10.77.2.1  w1    w1 -> tdn --[delayshim]--> tdn -> w0
                          |
    relay     10.77.2.2  r0    (clients reach the relay here)
              10.77.3.1  r1    (the relay dials upstreams from here)
                          |
    uwire     10.77.3.2  v0    v0 -> uup --[delayshim]--> uup -> v1
    (router)  10.77.4.1  v1    v1 -> udn --[delayshim]--> udn -> v0
                          |
    upstream  10.77.4.2  u0
              10.77.4.3

- Each link crosses a router (class Link): "wire" for the client link,
  "uwire" for the upstream link.  "Up" is the direction away from the
  client (client to relay, relay to upstream), "down" toward it.
  Policy routing sends every packet that arrives on the router's near
  side (w0, v0) into the TUN device for "up", every packet from its far
  side (w1, v1) into the one for "down"; tests/tools/delayshim holds
  each packet for the configured time and writes it back into its
  device, whence the router forwards it to the other side.  Neither
  end's TCP stack is touched: the relay's own sockets see the delay.
  The client link always crosses its shim (at zero delay unless a test
  says otherwise); the upstream link only once a test sets a delay on it
  (a plain routed hop otherwise, so that the soak's upstream traffic
  costs no shim).
- Rate: a tbf qdisc on the router's egress (far side for up, near side
  for down), so the queue builds in the network, as at a real
  bottleneck.
- Loss: nftables in the router's forward chain, `numgen random mod 100 <
  N drop`, per direction (matched on the egress veth: each packet once).
- Path MTU: the TUN devices' MTU (the router answers a larger packet
  with ICMP "fragmentation needed", as a router should), or a black hole
  (nftables drops packets longer than N on the egress veth, no ICMP).
  Both need the link's shim in the path: the TUN device, which offers
  no segmentation offload, is where the senders' GSO super-packets are
  cut into real segments.
- Flaps: the router's veth toward the relay set down, then up.
- nftables in the upstream namespace refuses (TCP RST) or blackholes
  (drops) new connections to one server address, leaving established
  ones alone.

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
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import LIFELINE_BIN, tcp_state, wait_clean_end  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_SRC = os.path.join(HERE, "..", "tools", "delayshim.c")

CLIENT_IP = "10.77.1.2"
WIRE_CLIENT_IP = "10.77.1.1"
WIRE_RELAY_IP = "10.77.2.1"
RELAY_IP = "10.77.2.2"  # where clients reach the relay
RELAY_UP_IP = "10.77.3.1"  # the relay's address toward upstreams
UWIRE_RELAY_IP = "10.77.3.2"
UWIRE_UP_IP = "10.77.4.1"
UPSTREAM_IPS = ("10.77.4.2", "10.77.4.3")
UPSTREAM_NET = "10.77.4.0/24"

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


class Link:
    """One router namespace between two hosts, and its impairments.

    `near` is the router's veth toward the client's side (w0, v0), `far`
    the one toward the relay or the upstream (w1, v1).  Up traffic comes
    in on near and leaves by far; down traffic the other way."""

    def __init__(self, net, name, ns, near, far, tun_up, tun_dn,
                 always_shimmed):
        self.net = net
        self.name = name
        self.ns = ns
        self.near, self.far = near, far
        self.tun_up, self.tun_dn = tun_up, tun_dn
        self.always_shimmed = always_shimmed
        self.shim_proc = None
        self.shim_log = None
        self.shim_logs = []
        self.routed = False  # the policy rules send packets to the shim
        self.impair = {"delay": (0, 0, 0), "reorder": False, "rate": None,
                       "loss": (0, 0), "mtu": None, "max_packet": (None, None)}

    def _build(self):
        w = self.ns
        nsx(w, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0")
        for dev, table in ((self.tun_up, "100"), (self.tun_dn, "101")):
            sh("ip", "-n", w, "tuntap", "add", "dev", dev, "mode", "tun")
            nsx(w, "sysctl", "-q", "-w", f"net.ipv4.conf.{dev}.rp_filter=0")
            sh("ip", "-n", w, "link", "set", dev, "up")
            sh("ip", "-n", w, "route", "add", "default", "dev", dev, "table",
               table)
        nsx(w, "nft", "-f", "-", input=(
            "table inet impair {\n"
            " chain links { type filter hook forward priority 0; }\n"
            " chain mtu { type filter hook forward priority 1; }\n}\n"))
        if self.always_shimmed:
            self.set_delay()

    def _route(self, on):
        """Send the link's packets through the shim's devices (on) or
        straight across the router (off)."""
        if on == self.routed:
            return
        verb = "add" if on else "del"
        for src, table in ((self.near, "100"), (self.far, "101")):
            sh("ip", "-n", self.ns, "rule", verb, "iif", src, "lookup", table)
        self.routed = on

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

    def set_delay(self, up_ms=0, down_ms=0, jitter_ms=0, seed=1,
                  reorder=False):
        """(Re)start the shim: each up packet waits up_ms, each down one
        down_ms, both +- jitter_ms (uniform); with `reorder` a packet may
        overtake others (delayshim.c), else never.  Packets held by a
        previous shim are lost: call before traffic.  On the upstream
        link, no delay and no reordering take the shim out of the path."""
        if not self.always_shimmed and not (up_ms or down_ms or jitter_ms
                                            or reorder):
            self._route(False)
            self._stop_shim()
            self.impair.update(delay=(0, 0, 0), reorder=False)
            return
        self._stop_shim()
        self.shim_log = os.path.join(
            self.net.logdir, f"delayshim-{self.name}-{time.monotonic_ns()}.log")
        self.shim_logs.append(self.shim_log)
        tail = ":reorder" if reorder else ""
        with open(self.shim_log, "wb") as err, inside(self.ns):
            self.shim_proc = subprocess.Popen(
                [self.net.shim_bin, "-s", str(seed),
                 f"{self.tun_up}:{up_ms}:{jitter_ms}{tail}",
                 f"{self.tun_dn}:{down_ms}:{jitter_ms}{tail}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                close_fds=True)
        line = self.shim_proc.stdout.readline()
        if line.strip() != b"ready":
            raise AssertionError(f"delayshim did not start: {self.shim_text()}")
        self._route(True)
        self.impair.update(delay=(up_ms, down_ms, jitter_ms), reorder=reorder)

    def shim_text(self):
        """Everything this link's shims printed (their counters, once
        stopped)."""
        out = []
        for path in self.shim_logs:
            try:
                with open(path, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "".join(out)

    def shim_alive(self):
        """The shim runs if the link's packets go through it."""
        return not self.routed or (self.shim_proc is not None and
                                   self.shim_proc.poll() is None)

    def set_rate(self, up_kbit=None, down_kbit=None, queue_ms=200):
        """A tbf bottleneck on the router's egress, per direction; None
        removes it.  The queue holds queue_ms worth at that rate."""
        for dev, kbit in ((self.far, up_kbit), (self.near, down_kbit)):
            sh("ip", "netns", "exec", self.ns, "tc", "qdisc", "del", "dev", dev,
               "root", check=False)
            if kbit:
                nsx(self.ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                    "rate", f"{kbit}kbit", "burst", "4kb",
                    "latency", f"{queue_ms}ms")
        self.impair["rate"] = (up_kbit, down_kbit)

    def set_loss(self, up_pct=0, down_pct=0):
        """Drop this percentage of the packets crossing the router, per
        direction, at random (nftables numgen)."""
        rules = ["flush chain inet impair links"]
        for dev, pct in ((self.far, up_pct), (self.near, down_pct)):
            if pct:
                rules.append(f'add rule inet impair links oifname "{dev}" '
                             f"numgen random mod 100 < {int(pct)} counter drop")
        nsx(self.ns, "nft", "-f", "-", input="\n".join(rules) + "\n")
        self.impair["loss"] = (up_pct, down_pct)

    def _counts(self, chain):
        out = nsx(self.ns, "nft", "list", "chain", "inet", "impair",
                  chain).stdout
        return {m.group(1): int(m.group(2)) for m in re.finditer(
            r'oifname "(\w+)".*counter packets (\d+)', out)}

    def loss_counts(self):
        """Packets dropped so far by the loss rules, {egress dev: n}."""
        return self._counts("links")

    def drops(self, what="loss"):
        """Packets dropped so far by the loss rules (or, with
        what="max_packet", by the black hole), {"up": n, "down": n}."""
        c = self._counts("links" if what == "loss" else "mtu")
        return {"up": c.get(self.far, 0), "down": c.get(self.near, 0)}

    def set_path_mtu(self, mtu=None):
        """The path MTU across the router: its shim devices' MTU, so that
        a larger packet (DF set, as TCP sends them) is answered with ICMP
        "fragmentation needed"; None restores 1500.  The shim must be in
        the path (always on the client link; set_delay on the other)."""
        assert self.routed, f"{self.name} link: no shim in the path"
        for dev in (self.tun_up, self.tun_dn):
            sh("ip", "-n", self.ns, "link", "set", "dev", dev, "mtu",
               str(mtu or 1500))
        self.impair["mtu"] = mtu

    def set_max_packet(self, up_len=None, down_len=None):
        """A path-MTU black hole: packets longer than this many bytes (IP
        length) leaving the router in that direction are dropped without
        ICMP, and counted; None lets everything through.  Needs the shim
        in the path (the packets seen are then real segments)."""
        assert self.routed or not (up_len or down_len), \
            f"{self.name} link: no shim in the path"
        rules = ["flush chain inet impair mtu"]
        for dev, n in ((self.far, up_len), (self.near, down_len)):
            if n:
                rules.append(f'add rule inet impair mtu oifname "{dev}" '
                             f"ip length > {int(n)} counter drop")
        nsx(self.ns, "nft", "-f", "-", input="\n".join(rules) + "\n")
        self.impair["max_packet"] = (up_len, down_len)

    def set_down(self, down):
        """Take the router's veth toward the relay (far side on the client
        link, near side on the upstream one) down or bring it back up:
        the relay's interface loses its carrier, nothing crosses the link
        either way.  The router's own routes return with it."""
        dev = self.far if self.name == "client" else self.near
        sh("ip", "-n", self.ns, "link", "set", "dev", dev,
           "down" if down else "up")

    def clear(self):
        """Every impairment off (the shim restarted at zero delay)."""
        self.set_loss()
        self.set_rate()
        if self.routed:
            self.set_max_packet()
            self.set_path_mtu()
        self.set_delay()


class Net:
    """Five namespaces joined as drawn in the module docstring."""

    ROLES = ("client", "wire", "relay", "uwire", "up")

    def __init__(self, shim, logdir):
        global _seq
        with _seq_lock:
            _seq += 1
            n = _seq
        self.shim_bin = shim
        self.logdir = logdir
        self.ns = {r: f"{_PREFIX}{n}-{r}" for r in self.ROLES}
        self.links = {
            "client": Link(self, "client", self.ns["wire"], "w0", "w1",
                           "tup", "tdn", always_shimmed=True),
            "upstream": Link(self, "upstream", self.ns["uwire"], "v0", "v1",
                             "uup", "udn", always_shimmed=False)}
        self._created = []
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    @property
    def client_link(self):
        return self.links["client"]

    @property
    def upstream_link(self):
        return self.links["upstream"]

    # -- construction

    def _build(self):
        c, w, r, v, u = (self.ns[x] for x in self.ROLES)
        for ns in (c, w, r, v, u):
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
           "v0", "netns", v)
        sh("ip", "-n", v, "link", "add", "v1", "type", "veth", "peer", "name",
           "u0", "netns", u)
        for ns, dev, addr in ((c, "c0", f"{CLIENT_IP}/24"),
                              (w, "w0", f"{WIRE_CLIENT_IP}/24"),
                              (w, "w1", f"{WIRE_RELAY_IP}/24"),
                              (r, "r0", f"{RELAY_IP}/24"),
                              (r, "r1", f"{RELAY_UP_IP}/24"),
                              (v, "v0", f"{UWIRE_RELAY_IP}/24"),
                              (v, "v1", f"{UWIRE_UP_IP}/24"),
                              (u, "u0", f"{UPSTREAM_IPS[0]}/24"),
                              (u, "u0", f"{UPSTREAM_IPS[1]}/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        for ns, dev in ((c, "c0"), (w, "w0"), (w, "w1"), (r, "r0"), (r, "r1"),
                        (v, "v0"), (v, "v1"), (u, "u0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c, "route", "add", "default", "via", WIRE_CLIENT_IP)
        sh("ip", "-n", r, "route", "add", "default", "via", WIRE_RELAY_IP)
        sh("ip", "-n", r, "route", "add", UPSTREAM_NET, "via",
           UWIRE_RELAY_IP)
        sh("ip", "-n", u, "route", "add", "default", "via", UWIRE_UP_IP)
        # the routers: every forwarded packet of the client link crosses
        # its shim; the upstream link's once a test sets a delay on it
        for link in self.links.values():
            link._build()
        nsx(u, "nft", "-f", "-", input=(
            "table inet upstream {\n"
            " chain newconn { type filter hook input priority 0; }\n}\n"))
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
        report is written), the shims, kill whatever else runs in our
        namespaces, delete them."""
        import conftest
        for d in conftest._DAEMONS:
            if d.alive():
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(8)
                except subprocess.TimeoutExpired:
                    d.kill()
        for link in self.links.values():
            link._stop_shim()
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

    # -- impairments: the client link's, as before the upstream link had
    # any (tests name self.upstream_link for the other)

    @property
    def impair(self):
        return self.client_link.impair

    @property
    def shim_proc(self):
        return self.client_link.shim_proc

    def set_delay(self, up_ms=0, down_ms=0, jitter_ms=0, seed=1, reorder=False):
        """The client link's delay: Link.set_delay."""
        self.client_link.set_delay(up_ms, down_ms, jitter_ms, seed, reorder)

    def set_rate(self, up_kbit=None, down_kbit=None, queue_ms=200):
        """The client link's bottleneck: Link.set_rate."""
        self.client_link.set_rate(up_kbit, down_kbit, queue_ms)

    def set_loss(self, up_pct=0, down_pct=0):
        """The client link's loss: Link.set_loss."""
        self.client_link.set_loss(up_pct, down_pct)

    def loss_counts(self):
        """The client link's drops so far, {egress dev: n}."""
        return self.client_link.loss_counts()

    def shim_text(self):
        return "".join(link.shim_text() for link in self.links.values())

    def shim_alive(self):
        """Every shim that carries a link's packets is running."""
        return all(link.shim_alive() for link in self.links.values())

    def clear(self):
        """Both links back to unimpaired."""
        for link in self.links.values():
            link.clear()

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


# tcp_state and wait_clean_end live in conftest (duplex_client uses them);
# imported here, where the netns tests have always found them.


@pytest.fixture(scope="session")
def netns_shim(tmp_path_factory):
    return check_features(tmp_path_factory.mktemp("netns"))


@pytest.fixture
def net(netns_shim, tmp_path):
    """A fresh five-namespace topology, destroyed after the test even when
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
