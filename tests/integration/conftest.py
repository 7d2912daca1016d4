"""Shared helpers for the lifeline integration tests.

Everything here drives the real binary (LIFELINE_BIN, default
build/lifeline) on port 0 and finds its ports through --ports-file.  Every
socket has a timeout, every thread is joined with a timeout, and every
process, socket and server a test creates is torn down by the autouse
fixture `_cleanup`, even when the test fails.
"""

import errno
import faulthandler
import hashlib
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

LIFELINE_BIN = os.environ.get("LIFELINE_BIN", "/work/main/build/lifeline")

# Upper bound for any single blocking socket operation.  Generous because the
# sanitizer build is 2-3x slower; tests assert their own (tighter) deadlines.
IO_TIMEOUT = 20.0
# How long the daemon may take to bind everything and write the ports file.
START_TIMEOUT = 15.0
# Hard bound per test: dump all stacks and abort the run if exceeded.
TEST_HARD_TIMEOUT = 150
# Timing tolerance factor: the sanitizer build (build-san) runs slower.
SLOW = 2.0 if "san" in os.path.basename(os.path.dirname(LIFELINE_BIN)) else 1.0

# Shared pool of random bytes; payloads are random slices of it, so data is
# incompressible and position-dependent without paying os.urandom per test.
RANDOM = os.urandom((4 << 20) + (256 << 10))
RANDOM_VIEW = memoryview(RANDOM)

_SOCKETS = []
_SERVERS = []
_DAEMONS = []
_THREADS = []

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "WARNING: ThreadSanitizer",
    "runtime error:",
    "invariant broken:",
)


# --------------------------------------------------------------------------
# small utilities


def wait_for(pred, timeout, interval=0.02, what="condition"):
    """Poll pred() until it returns a truthy value; return it.

    Raises AssertionError naming `what` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def listening(port):
    """True while a socket of this network namespace listens on TCP `port`
    (/proc/net/tcp{,6}: state 0A is LISTEN)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and \
                        int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def start_thread(target, *args, name=None):
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    t.start()
    _THREADS.append(t)
    return t


def join(t, timeout=IO_TIMEOUT):
    t.join(timeout)
    assert not t.is_alive(), f"thread {t.name} did not finish within {timeout}s"


def free_port(host="127.0.0.1"):
    """A port on which nothing listens (connect -> refused), held for the
    rest of the test: a socket stays bound to it, never listening, with
    SO_REUSEADDR.  The kernel gives the port to no other socket bound to
    port 0 (pytest runs several processes at once: a port merely freed was
    taken by another test's server in CI), while the daemon, nginx or a
    test server, which set SO_REUSEADDR too, can still bind it and listen.
    _cleanup closes the holder."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    _SOCKETS.append(s)
    return s.getsockname()[1]


def fmt_addr(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def chunks(size, rng, max_chunk=128 << 10):
    """Yield `size` random bytes as memoryviews of random lengths.

    Mixes tiny writes (1-16 bytes), packet-sized ones and large ones so the
    relay sees every kind of boundary."""
    left = size
    while left > 0:
        r = rng.random()
        if r < 0.1:
            n = rng.randint(1, 16)
        elif r < 0.4:
            n = rng.randint(1, 1500)
        else:
            n = rng.randint(1, max_chunk)
        n = min(n, left)
        off = rng.randrange(0, len(RANDOM) - n + 1)
        yield RANDOM_VIEW[off:off + n]
        left -= n


def connect(addr, source=None, timeout=IO_TIMEOUT):
    """Blocking TCP connect to (host, port); the socket is closed at teardown."""
    host = addr[0]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    _SOCKETS.append(s)
    s.settimeout(timeout)
    if source is not None:
        s.bind((source, 0))
    s.connect(addr)
    s.settimeout(IO_TIMEOUT)
    return s


def rst_close(sock):
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(n - len(buf))
        if not d:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


def half_close(sock):
    """shutdown(SHUT_WR), the way a test peer ends its direction.  A reset
    that arrived after the last byte was accepted and before this call
    leaves the socket unconnected (ENOTCONN, the only way a connected
    socket gets there): returns "reset" then, else "sent"."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE):
            return "reset"
        raise
    return "sent"


def read_until_closed(sock, timeout):
    """Read and discard until EOF or reset.

    Returns (how, nbytes, elapsed) with how in {"eof", "reset"}; raises
    AssertionError if the peer keeps the connection open past `timeout`."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    n = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"connection still open after {timeout:.1f}s ({n} bytes read)")
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return "reset", n, time.monotonic() - t0
        except socket.timeout:
            continue
        if not d:
            return "eof", n, time.monotonic() - t0
        n += len(d)


def expect_rejected(sock, timeout=3.0):
    """The relay accepted `sock` but must close it without relaying anything.

    Sends a probe byte (which an echo upstream would return) and requires EOF
    or reset with no data back."""
    try:
        sock.sendall(b"?")
    except (BrokenPipeError, ConnectionResetError):
        return "reset"
    how, n, _ = read_until_closed(sock, timeout)
    assert n == 0, f"rejected connection received {n} bytes"
    return how


# how a TCP connection ended (for the netns tests, and duplex_client)

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


def echo_roundtrip(sock, payload=b"ping"):
    sock.sendall(payload)
    got = recv_exact(sock, len(payload))
    assert got == payload
    return True


def try_echo(addr, timeout=2.0, source=None):
    """One fresh connection through the relay to an echo upstream.

    Returns True when the payload comes back intact, False when the relay
    refused or closed the connection."""
    try:
        s = connect(addr, source=source, timeout=timeout)
        s.settimeout(timeout)
        payload = os.urandom(32)
        s.sendall(payload)
        got = recv_exact(s, len(payload))
        s.close()
        return got == payload
    except (OSError, EOFError):
        return False


# --------------------------------------------------------------------------
# the daemon


class Daemon:
    """One lifeline process with its own config and ports file in tmp_path."""

    _seq = 0

    def __init__(self, tmp_path, config, args=(), nofile=None, name=None,
                 env=None, wrap=()):
        Daemon._seq += 1
        name = name or f"lifeline{Daemon._seq}"
        self.dir = tmp_path
        self.conf = tmp_path / f"{name}.conf"
        self.ports_file = tmp_path / f"{name}.ports"
        self.stderr_path = tmp_path / f"{name}.stderr"
        self.stdout_path = tmp_path / f"{name}.stdout"
        self.conf.write_text(config)
        self.args = list(args)
        self.nofile = nofile
        self.env = env  # added to (or, as None values, removed from) ours
        self.wrap = list(wrap)  # a command that execs the daemon
        self.proc = None
        self.ports = {}
        self.returncode = None
        _DAEMONS.append(self)

    # -- lifecycle

    def start(self, wait=True):
        nofile = self.nofile

        def preexec():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # only a test that sets it
        for k, v in (self.env or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.wrap + [LIFELINE_BIN, "-c", str(self.conf),
                             "--ports-file", str(self.ports_file)] + self.args,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                close_fds=True, preexec_fn=preexec, env=env)
        if wait:
            self.wait_ports()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig):
        assert self.alive(), f"daemon already exited:\n{self.stderr_text()}"
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout:.1f}s")
        return self.returncode

    def stop(self, timeout=10.0):
        """SIGTERM and wait; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    # -- ports file

    @staticmethod
    def parse_ports(text):
        ports = {}
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            name, addr = line.split(None, 1)
            host, port = addr.rsplit(":", 1)
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            ports.setdefault(name, []).append((host, int(port)))
        return ports

    def _ports_state(self):
        try:
            st = os.stat(self.ports_file)
            text = self.ports_file.read_text()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, text)

    def wait_ports(self, timeout=START_TIMEOUT, previous=None):
        """Wait until the ports file exists (and differs from `previous`)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self._ports_state()
            if state is not None and state != previous and state[2].endswith("\n"):
                self.ports = self.parse_ports(state[2])
                self._last_ports_state = state
                return self.ports
            if not self.alive():
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} before writing "
                    f"the ports file; stderr:\n{self.stderr_text()}")
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"ports file not written within {timeout}s; stderr:\n"
                    f"{self.stderr_text()}")
            time.sleep(0.02)

    def ports_state(self):
        return self._ports_state()

    def addr(self, name, i=0):
        assert name in self.ports, f"listener {name!r} not in ports file: {self.ports}"
        return self.ports[name][i]

    def port(self, name, i=0):
        return self.addr(name, i)[1]

    # -- observation

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_fds_at_most(self, limit, timeout=5.0):
        """Poll until the fd count is <= limit; returns the count seen."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.fd_count()
            if n <= limit or time.monotonic() >= deadline:
                return n
            time.sleep(0.05)

    def stable_fd_count(self, settle=0.3, timeout=5.0):
        """Fd count once it has not changed for `settle` seconds."""
        deadline = time.monotonic() + timeout
        last = self.fd_count()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            n = self.fd_count()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
        return last

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state); utime and stime are fields 14, 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stderr_text(self):
        try:
            return self.stderr_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self):
        try:
            return self.stdout_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stderr_size(self):
        try:
            return os.path.getsize(self.stderr_path)
        except FileNotFoundError:
            return 0

    def wait_stderr(self, since, pred, timeout=5.0, what="log output"):
        """Wait until the stderr written after byte offset `since` satisfies
        pred(text); returns that text."""
        def check():
            data = self.stderr_path.read_bytes()[since:].decode("utf-8", "replace")
            return data if pred(data) else None
        try:
            return wait_for(check, timeout, what=what)
        except AssertionError:
            raise AssertionError(
                f"timed out waiting for {what}; stderr after offset:\n"
                f"{self.stderr_path.read_bytes()[since:].decode('utf-8', 'replace')}")

    def reload(self, config, timeout=START_TIMEOUT):
        """Write a new (valid) config, SIGHUP, wait for the ports file rewrite."""
        prev = self._ports_state()
        self.conf.write_text(config)
        self.send(signal.SIGHUP)
        return self.wait_ports(timeout=timeout, previous=prev)

    def sanitizer_report(self):
        text = self.stderr_text()
        return [m for m in SANITIZER_MARKERS if m in text]


def run_cli(args, timeout=15.0):
    """Run the binary to completion; returns CompletedProcess (text)."""
    return subprocess.run([LIFELINE_BIN] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------
# config builder


def make_config(upstreams, listeners, global_=None, timeouts=None, extra=""):
    """Build an INI file.

    upstreams: {name: [ "host:port", ... ]} or {name: {"server": [...], k: v}}
    listeners: {name: {"bind": [..] or str, "upstream": name, k: v}}"""
    g = {"workers": "2", "maxconn": "1000", "drain-timeout": "5s"}
    g.update(global_ or {})
    t = {"connect": "1s", "client": "30s", "server": "30s",
         "client-fin": "5s", "server-fin": "5s"}
    t.update(timeouts or {})
    out = ["[global]"]
    out += [f"{k} = {v}" for k, v in g.items()]
    out += ["", "[timeouts]"]
    out += [f"{k} = {v}" for k, v in t.items()]
    for name, spec in upstreams.items():
        if isinstance(spec, (list, tuple)):
            spec = {"server": list(spec)}
        spec = dict(spec)
        servers = spec.pop("server")
        spec.setdefault("send-proxy", "none")
        # Health checks connect to upstreams too; tests that count the
        # connections an upstream receives must not see them.
        spec.setdefault("check-interval", "1h")
        out += ["", f"[upstream {name}]"]
        out += [f"server = {s}" for s in servers]
        out += [f"{k} = {v}" for k, v in spec.items()]
    for name, spec in listeners.items():
        spec = dict(spec)
        binds = spec.pop("bind", ["127.0.0.1:0"])
        if isinstance(binds, str):
            binds = [binds]
        out += ["", f"[listen {name}]"]
        out += [f"bind = {b}" for b in binds]
        out += [f"{k} = {v}" for k, v in spec.items()]
    out.append(extra)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# upstream servers


class Server:
    """Threaded TCP server running handler(conn, record) per connection.

    `records` has one dict per accepted connection (peer, error, and whatever
    the handler stores).  A handler exception is stored in record["error"]."""

    def __init__(self, handler, host="127.0.0.1", backlog=128, name="server",
                 port=0):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.handler = handler
        self.name = name
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(backlog)
        self.lsock.settimeout(0.05)
        self.port = self.lsock.getsockname()[1]
        self.records = []
        self.conns = []
        self.threads = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name=f"{name}-accept")
        self.thread.start()
        _SERVERS.append(self)

    @property
    def addr(self):
        return (self.host, self.port)

    @property
    def spec(self):
        """host:port as written in a config file."""
        return fmt_addr(self.host, self.port)

    @property
    def accepted(self):
        with self.lock:
            return len(self.records)

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                c, peer = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            c.settimeout(IO_TIMEOUT)
            rec = {"peer": peer, "error": None, "done": threading.Event()}
            t = threading.Thread(target=self._run, args=(c, rec), daemon=True,
                                 name=f"{self.name}-conn")
            with self.cond:
                self.records.append(rec)
                self.conns.append(c)
                self.threads.append(t)
                self.cond.notify_all()
            t.start()

    def _run(self, c, rec):
        try:
            self.handler(c, rec)
        except Exception as e:  # recorded; tests decide whether it matters
            rec["error"] = e
        finally:
            try:
                c.close()
            except OSError:
                pass
            rec["done"].set()

    def wait_accepted(self, n, timeout=5.0):
        wait_for(lambda: self.accepted >= n, timeout,
                 what=f"{self.name}: {n} accepted connections")

    def wait_done(self, n=None, timeout=IO_TIMEOUT):
        """Wait until the first n (default: all accepted so far)
        connections have been accepted and have finished (a connection
        the relay dialled may not be accepted by the server's thread yet
        when the client is through)."""
        if n is not None:
            self.wait_accepted(n, timeout)
        with self.lock:
            recs = list(self.records if n is None else self.records[:n])
        for r in recs:
            assert r["done"].wait(timeout), f"{self.name}: handler did not finish"
        return recs

    def errors(self):
        with self.lock:
            return [r["error"] for r in self.records if r["error"] is not None]

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
            threads = list(self.threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)


# -- handlers


def h_echo(c, rec):
    """Echo until EOF, then half-close (so client half-close is visible)."""
    n = 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
        n += len(d)
    rec["bytes"] = n
    c.shutdown(socket.SHUT_WR)


def recv_hashed(c):
    """Read until EOF; return (bytes read, their sha256 hex)."""
    h = hashlib.sha256()
    n = 0
    while True:
        d = c.recv(65536)
        if not d:
            return n, h.hexdigest()
        h.update(d)
        n += len(d)


def h_sink(c, rec):
    """Hash everything received until EOF."""
    h = hashlib.sha256()
    n = 0
    rec["sha"] = None
    while True:
        d = c.recv(1 << 18)
        if not d:
            break
        h.update(d)
        n += len(d)
        rec["bytes"] = n
    rec["bytes"] = n
    rec["sha"] = h.hexdigest()


def make_source(size, seed=0, then_wait_eof=True):
    """Handler sending `size` random bytes; records their sha256."""
    def h_source(c, rec):
        rng = random.Random(seed)
        h = hashlib.sha256()
        for ch in chunks(size, rng):
            c.sendall(ch)
            h.update(ch)
        rec["sha"] = h.hexdigest()
        rec["bytes"] = size
        c.shutdown(socket.SHUT_WR)
        if then_wait_eof:
            while c.recv(65536):
                pass
    return h_source


DUPLEX_HDR = struct.Struct("!QQQ")  # conn id, bytes to send back, rate (B/s)


def _paced_send(sock, size, rng, rate, h):
    t0 = time.monotonic()
    sent = 0
    for ch in chunks(size, rng, max_chunk=(64 << 10) if rate else (256 << 10)):
        sock.sendall(ch)
        h.update(ch)
        sent += len(ch)
        if rate:
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def h_duplex(c, rec):
    """Full-duplex hash protocol.

    The client sends a header (id, n, rate) then its payload until EOF; the
    server concurrently sends n random bytes (paced at `rate` B/s when
    non-zero), then half-closes.  Records both digests under rec."""
    hdr = recv_exact(c, DUPLEX_HDR.size)
    cid, n, rate = DUPLEX_HDR.unpack(hdr)
    rec["id"] = cid
    out = {}

    def sender():
        try:
            h = hashlib.sha256()
            _paced_send(c, n, random.Random(cid * 7919 + n), rate, h)
            out["sha"] = h.hexdigest()
            c.shutdown(socket.SHUT_WR)
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    h = hashlib.sha256()
    got = 0
    while True:
        d = c.recv(1 << 18)
        if not d:
            break
        h.update(d)
        got += len(d)
    t.join(IO_TIMEOUT)
    if t.is_alive():
        raise RuntimeError("duplex sender stuck")
    if "error" in out:
        raise out["error"]
    rec["recv_sha"] = h.hexdigest()
    rec["recv_len"] = got
    rec["sent_sha"] = out["sha"]
    rec["sent_len"] = n


def duplex_client(addr, cid, up, down, seed=None, rate=0, source=None,
                  preamble=(), gap=0.0, end_wait=None, timeout=IO_TIMEOUT):
    """Client half of h_duplex.  Returns a dict with both digests.

    `preamble`: pieces (a PROXY header) sent before the duplex header,
    each in a segment of its own (TCP_NODELAY), `gap` seconds apart.
    `end_wait`: after both FINs, wait that long for the connection to
    close and put how it ended (wait_clean_end) in out["end"]."""
    s = connect(addr, source=source, timeout=timeout)
    s.settimeout(timeout)
    rng = random.Random(cid if seed is None else seed)
    out = {"id": cid, "up_len": up}
    if preamble:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(preamble):
            if i and gap:
                time.sleep(gap)
            s.sendall(piece)

    def sender():
        try:
            h = hashlib.sha256()
            s.sendall(DUPLEX_HDR.pack(cid, down, rate))
            _paced_send(s, up, rng, rate, h)
            out["up_sha"] = h.hexdigest()
            s.shutdown(socket.SHUT_WR)
        except Exception as e:
            out["send_error"] = e

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    h = hashlib.sha256()
    got = 0
    try:
        while True:
            d = s.recv(1 << 18)
            if not d:
                break
            h.update(d)
            got += len(d)
    except Exception as e:
        out["recv_error"] = e
    t.join(timeout)
    assert not t.is_alive(), "client sender stuck"
    if end_wait is not None and "recv_error" not in out and \
            "send_error" not in out:
        out["end"] = wait_clean_end(s, end_wait)
    s.close()
    out["down_sha"] = h.hexdigest()
    out["down_len"] = got
    return out


def check_duplex(client_result, server):
    """Compare a duplex_client result with the matching server record."""
    cid = client_result["id"]
    assert "send_error" not in client_result, client_result["send_error"]
    assert "recv_error" not in client_result, client_result["recv_error"]
    recs = [r for r in server.wait_done() if r.get("id") == cid]
    assert len(recs) == 1, f"conn {cid}: {len(recs)} server records"
    r = recs[0]
    assert r["error"] is None, f"conn {cid}: server error {r['error']!r}"
    assert r["recv_len"] == client_result["up_len"], \
        f"conn {cid}: upstream got {r['recv_len']} of {client_result['up_len']} bytes"
    assert r["recv_sha"] == client_result["up_sha"], f"conn {cid}: upload corrupted"
    assert client_result["down_len"] == r["sent_len"], \
        f"conn {cid}: client got {client_result['down_len']} of {r['sent_len']} bytes"
    assert client_result["down_sha"] == r["sent_sha"], f"conn {cid}: download corrupted"


def check_all_duplex(client_results, server):
    """check_duplex for each result; reports every mismatch at once."""
    bad = []
    for r in client_results:
        try:
            check_duplex(r, server)
        except AssertionError as e:
            bad.append(str(e))
    assert bad == [], (bad, server.errors())


class BackgroundDuplex:
    """duplex_client running in a thread (for transfers across signals)."""

    def __init__(self, addr, cid, up, down, rate=0):
        self.result = None
        self.error = None

        def run():
            try:
                self.result = duplex_client(addr, cid, up, down, rate=rate)
            except Exception as e:
                self.error = e

        self.thread = start_thread(run, name=f"duplex-{cid}")

    def join(self, timeout=IO_TIMEOUT):
        join(self.thread, timeout)
        if self.error is not None:
            raise self.error
        return self.result


# --------------------------------------------------------------------------
# a loopback black hole


class Blackhole:
    """A loopback address:port that silently drops SYNs.

    A listener with backlog 0 whose accept queue is filled by connections we
    never accept: the kernel then drops further SYNs, so connect() neither
    succeeds nor fails until the caller's timeout.  verify() proves it."""

    def __init__(self, host="127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.fam = fam
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.bind((host, 0))
        self.lsock.listen(0)
        self.addr = self.lsock.getsockname()[:2]
        self.fill = []
        for _ in range(4):
            s = socket.socket(fam, socket.SOCK_STREAM)
            self.fill.append(s)
            s.settimeout(0.3)
            try:
                s.connect(self.addr)
            except socket.timeout:
                break
        self.verify()
        _SERVERS.append(self)

    @property
    def spec(self):
        return fmt_addr(*self.addr)

    def verify(self, timeout=0.4):
        s = socket.socket(self.fam, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.addr)
        except socket.timeout:
            return True
        finally:
            s.close()
        raise AssertionError("loopback black hole accepted a connection")

    def stop(self):
        for s in self.fill:
            s.close()
        self.lsock.close()


# --------------------------------------------------------------------------
# fixtures


def pytest_configure(config):
    # Slow tests the sanitized pass of `make check` deselects (the
    # Makefile's check-integration adds -m "not plain_only" when SANITIZE
    # is set): they test the network more than the code.
    config.addinivalue_line(
        "markers", "plain_only: slow; run in the plain pass of make check only")
    config.addinivalue_line(
        "markers", "serial: CPU-heavy and load-sensitive (the soak, the "
        "benchmark smoke run, CPU and time budgets under a flood): make "
        "check runs them alone, plain build, after the two passes that run "
        "at once")
    config.addinivalue_line(
        "markers", "hooks_only: needs the test hooks of the sanitized build "
        "(LIFELINE_TEST_HOOKS); run in the sanitized pass only")


@pytest.fixture(autouse=True)
def _cleanup():
    """Bound every test's time and tear down whatever it started."""
    if not os.path.exists(LIFELINE_BIN):
        pytest.fail(f"lifeline binary not found at {LIFELINE_BIN} "
                    "(build it or set LIFELINE_BIN)")
    faulthandler.dump_traceback_later(TEST_HARD_TIMEOUT, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        for s in _SOCKETS:
            try:
                s.close()
            except OSError:
                pass
        _SOCKETS.clear()
        reports = []
        for d in _DAEMONS:
            if d.alive():
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(8)
                except subprocess.TimeoutExpired:
                    d.kill()
            if d.proc is not None:
                found = d.sanitizer_report()
                if found:
                    reports.append(f"{d.conf.name}: {found}\n{d.stderr_text()[-4000:]}")
        _DAEMONS.clear()
        for srv in _SERVERS:
            srv.stop()
        _SERVERS.clear()
        for t in _THREADS:
            t.join(5)
        _THREADS.clear()
        if reports:
            pytest.fail("sanitizer reported errors:\n" + "\n".join(reports))


@pytest.fixture
def echo():
    return Server(h_echo, name="echo")


@pytest.fixture
def duplex():
    return Server(h_duplex, name="duplex")


def start_daemon(tmp_path, config, **kw):
    return Daemon(tmp_path, config, **kw).start()
