#!/usr/bin/python3
"""The `make bench` driver: lifeline against HAProxy and against no relay.

Started by bench/run.sh (which installs what is missing, raises the fd
limit, builds bench/loadgen.c and owns the process group).  Everything runs
on loopback; every listener is on a port the kernel chose (port 0) or, for
programs that cannot report theirs (HAProxy, nginx, iperf3), on a port
found free by binding port 0 and releasing it.

Paths compared in every case:
  direct            the client talks to the server itself
  haproxy-official  HAProxy with WhatsApp's official proxy settings
  haproxy-tuned     the same with 16 KiB buffers and `option splice-auto`
  lifeline          build/lifeline (or $LIFELINE_BIN) with its defaults

Case 7 (TLS) has its own paths and table: HAProxy with the official
settings and the official kind of certificate (RSA-4096), the same HAProxy
with an EC P-256 certificate, and lifeline with `tls = on` (its default
in-memory EC P-256 certificate).  Its load generator is bench/tlsclient.c.

Cases 1, 2 and 6 also run two reference paths: the minimal splice relay
(bench/minirelay.c, a blocking thread per direction), the floor of a
splice relay, and the minimal event-driven one (bench/epollrelay.c, one
thread and edge-triggered epoll, as lifeline), the floor of a relay that
serves thousands of connections from a thread.  Case 7 adds the RSS per
idle TLS connection.  Cases 8 (`population`: WhatsApp-like clients, chat
over TLS and plain, media downloads) and 9 (`storm`: every client reset at
once, reconnecting within a second) have their own relays with three
listeners each and tables (issue 16); see case_population and case_storm.

Repetitions are interleaved (rep 1 of every path, then rep 2, ...) and the
path order rotates between repetitions, so slow drifts of a noisy machine
hit every path alike; the table shows medians.

The markdown report goes to stdout; progress and per-run numbers to stderr.
Exit status: 0 when every run produced a number, 1 otherwise.
"""

import argparse
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PATHS = ["direct", "haproxy-official", "haproxy-tuned", "lifeline"]
RELAYS = PATHS[1:]
LABEL = {
    "direct": "direct",
    "haproxy-official": "HAProxy official",
    "haproxy-tuned": "HAProxy tuned",
    "lifeline": "lifeline",
    "lifeline-base": "lifeline (base)",
    "minimal": "minimal splice relay",
    "minimal-epoll": "minimal event-driven relay",
}
# bench/minirelay.c: the floor of a splice relay, a path of cases 1, 2 and 6.
MINIMAL = "minimal"
# bench/epollrelay.c: the floor of an event-driven splice relay, the same.
EPOLL_MIN = "minimal-epoll"
REFERENCES = [MINIMAL, EPOLL_MIN]
# With --base BIN, a second lifeline binary (say, the previous commit's)
# runs beside the first in the same interleaved rounds: "lifeline-base".
BASE = "lifeline-base"


def add_base_path():
    PATHS.append(BASE)
    RELAYS.append(BASE)
    TLS_PATHS.append(BASE)
    TLS_LABEL[BASE] = "lifeline base (EC P-256)"

FULL = dict(
    reps=3,
    iperf_time=4,  # seconds per iperf3 run
    wrk_time=4,  # seconds per wrk run
    wrk_conns=32,
    lat_conns=1000,
    lat_size=100,
    lat_interval_ms=100,  # mean pause between a reply and the next request
    lat_warmup=1.0,
    lat_time=4.0,
    idle_conns=5000,
    hs_threads=4,  # tlsclient threads looping connect + handshake + close
    hs_time=4,  # seconds per handshake run
    tls_mib=512,  # MiB per TLS throughput run
    tls_idle_conns=2000,  # case 7's memory row
    # case 8 (population): stages are 1,000 and the largest N the fd limit
    # allows (pop_max); seconds measured at each, after a warm-up
    pop_max=8000,
    pop_time=[30, 60],
    pop_direct_time=[20, 20],
    pop_warmup=3,
    pop_interval=30,  # mean seconds between a client's messages
    pop_media_every=50,  # one client in 50 downloads media ...
    pop_media_period=60,  # ... every 60 s
    pop_ramp_timeout=180,  # a stage's clients must be up within this
    # case 9 (storm): as many clients as the population's largest stage
    storm_timeout=60,  # all must be back within this (bounds the run)
    storm_settle=1,
)
SMOKE = dict(
    reps=1,
    iperf_time=1,
    wrk_time=1,
    wrk_conns=8,
    lat_conns=200,
    lat_size=100,
    lat_interval_ms=100,
    lat_warmup=0.3,
    lat_time=0.7,
    idle_conns=100,
    hs_threads=4,
    hs_time=0.5,
    tls_mib=32,
    tls_idle_conns=50,
    pop_max=40,
    pop_time=[1.0, 1.0],
    pop_direct_time=[1.0, 1.0],
    pop_warmup=0.2,
    pop_interval=0.5,  # so that a second holds samples; not WhatsApp-like
    pop_media_every=5,
    pop_media_period=0.5,
    pop_ramp_timeout=60,
    storm_timeout=20,
    storm_settle=0.3,
)
SMOKE_POP_STAGES = [20, 40]

T0 = time.monotonic()
CLK_TCK = os.sysconf("SC_CLK_TCK")
FAILURES = []


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------
# processes: every child is tracked and stopped on the way out


class Procs:
    def __init__(self):
        self.live = []

    def start(self, argv, name, logdir, stdout=None, **kw):
        errlog = open(os.path.join(logdir, f"{name}.log"), "ab")
        p = subprocess.Popen(
            argv,
            stdin=kw.pop("stdin", subprocess.DEVNULL),
            stdout=stdout if stdout is not None else errlog,
            stderr=errlog,
            **kw,
        )
        p.bench_name = name
        p.bench_log = errlog.name
        errlog.close()
        self.live.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, grace=10.0):
        """Signal p, wait up to `grace` seconds, then SIGKILL.  Returns rc."""
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{p.bench_name} (pid {p.pid}) ignored {sig!s}; killing")
                p.kill()
                p.wait(5)
            except ProcessLookupError:
                pass
        if p in self.live:
            self.live.remove(p)
        if p.stdout:
            p.stdout.close()
        return p.returncode

    def stop_all(self):
        for p in reversed(list(self.live)):
            try:
                self.stop(p, grace=5.0)
            except Exception as e:  # keep going: stop the others too
                print(f"cleanup: {e}", file=sys.stderr)


PROCS = Procs()


def log_tail(p, n=15):
    try:
        with open(p.bench_log, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join("    " + x for x in lines[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# small helpers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """True when some socket listens on 127.0.0.1:port (or 0.0.0.0)."""
    want = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split(None, 4)
            if parts[3] == "0A" and parts[1] in want:
                return True
    return False


def wait_until(pred, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{proc.bench_name} exited ({proc.returncode}) while waiting "
                             f"for {what}:\n{log_tail(proc)}")
        time.sleep(0.02)
    raise BenchError(f"timed out after {timeout}s waiting for {what}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_cpu_seconds():
    """CPU seconds the whole machine spent busy (all CPUs, /proc/stat):
    user, nice, system, irq, softirq and steal; guest time is in user."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for pid {pid}")


def vmrss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def ncpu():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run(argv, timeout):
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} took longer than {timeout}s")
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


# --------------------------------------------------------------------------
# relays


class Relay:
    """One running relay (HAProxy or lifeline) in front of 127.0.0.1:upstream."""

    def __init__(self, kind, upstream_port, ctx, tls_pem=None):
        """tls_pem: for HAProxy, the cert+key PEM of a TLS (`ssl crt`)
        listener; for lifeline, any true value makes its listener `tls = on`
        (its default in-memory EC P-256 certificate)."""
        self.kind = kind
        self.ctx = ctx
        self.dir = tempfile.mkdtemp(prefix=f"{kind}-", dir=ctx.tmp)
        name = f"{kind}-{upstream_port}-{len(PROCS.live)}"
        if kind in REFERENCES:
            exe = ctx.minirelay if kind == MINIMAL else ctx.epollrelay
            self.proc = PROCS.start([exe, str(upstream_port)], name, ctx.tmp,
                                    stdout=subprocess.PIPE)
            line = self.proc.stdout.readline().decode().strip()
            if not line.isdigit():
                raise BenchError(f"{os.path.basename(exe)} did not report its port:\n"
                                 f"{log_tail(self.proc)}")
            self.port = int(line)
        elif kind.startswith("lifeline"):
            conf = os.path.join(self.dir, "lifeline.conf")
            pf = os.path.join(self.dir, "ports")
            with open(conf, "w") as f:
                f.write(LIFELINE_CONF.format(up=upstream_port,
                                             tls="tls = on\n" if tls_pem else ""))
            exe = ctx.lifeline_base if kind == BASE else ctx.lifeline
            self.proc = PROCS.start([exe, "-c", conf, "--ports-file", pf],
                                    name, ctx.tmp)
            line = wait_until(lambda: _ports_line(pf), 30, "lifeline's ports file",
                              self.proc)
            self.port = int(line.rsplit(":", 1)[1])
        else:
            self.port = free_port()
            cfg = os.path.join(self.dir, "haproxy.cfg")
            tuned = kind == "haproxy-tuned"
            with open(cfg, "w") as f:
                f.write(HAPROXY_CFG.format(
                    nbthread=ncpu(),
                    bufsize=16384 if tuned else 4096,
                    splice="  option splice-auto\n" if tuned else "",
                    maxconn=ctx.hap_maxconn,
                    fe_maxconn=ctx.hap_maxconn - 5,
                    port=self.port,
                    bindopts=f" ssl crt {tls_pem}" if tls_pem else "",
                    up=upstream_port))
            self.proc = PROCS.start(["haproxy", "-db", "-f", cfg], name, ctx.tmp)
            wait_until(lambda: listening(self.port), 15, f"{kind} to listen", self.proc)
        self.pid = self.proc.pid

    def stop(self):
        rc = PROCS.stop(self.proc, grace=40.0)
        if self.kind.startswith("lifeline") and rc != 0:
            log(f"warning: lifeline exited {rc} on SIGTERM (expected 0)\n{log_tail(self.proc)}")


def _ports_line(pf):
    try:
        with open(pf) as f:
            for line in f:
                if line.startswith("bench "):
                    return line.strip()
    except FileNotFoundError:
        pass
    return None


LIFELINE_CONF = """\
[global]
workers = auto
maxconn = 27500
[timeouts]
connect = 5s
client = 200s
server = 200s
[upstream up]
server = 127.0.0.1:{up}
# no health check during a run (HAProxy's configurations have none
# either): its connection would reach iperf3's or nginx's server as a
# stray client, and iperf3's serves one test at a time
check-interval = 24h
[listen bench]
bind = 127.0.0.1:0
upstream = up
maxconn = 27495
{tls}"""

# WhatsApp/proxy proxy/src/proxy_config.cfg, reduced to one plain listener
# (like its media frontend on 587) in front of one server.  Left out: the
# stats listener, TLS, `check inter 60000 observe layer4` health checks
# (they would open stray connections to iperf3/nginx) and `send-proxy`
# (our servers do not speak PROXY; lifeline runs without it too).
HAPROXY_CFG = """\
global
  tune.bufsize {bufsize}
  maxconn {maxconn}
  nbthread {nbthread}
  # no `log`: logging is off, as in the official image

defaults
  mode tcp
  timeout client-fin 1s
  timeout server-fin 1s
  timeout connect 5s
  timeout client 200s
  timeout server 200s
{splice}
frontend bench
  maxconn {fe_maxconn}
  bind 127.0.0.1:{port}{bindopts}
  default_backend up

backend up
  server s1 127.0.0.1:{up}
"""


class Paths:
    """Starts one relay of each kind in front of `upstream_port`."""

    def __init__(self, upstream_port, ctx, extra=()):
        self.upstream = upstream_port
        self.relays = {}
        try:
            for k in RELAYS + list(extra):
                self.relays[k] = Relay(k, upstream_port, ctx)
        except BaseException:
            self.stop()
            raise

    def port(self, path):
        return self.upstream if path == "direct" else self.relays[path].port

    def pid(self, path):
        return None if path == "direct" else self.relays[path].pid

    def check_alive(self):
        for k, r in self.relays.items():
            if r.proc.poll() is not None:
                raise BenchError(f"{k} died (exit {r.proc.returncode}):\n{log_tail(r.proc)}")

    def stop(self):
        for r in self.relays.values():
            r.stop()
        self.relays = {}


def rotated(rep, paths=None):
    paths = PATHS if paths is None else paths
    k = rep % len(paths)
    return paths[k:] + paths[:k]


# --------------------------------------------------------------------------
# results


class Results:
    def __init__(self):
        self.samples = {}  # (metric, path) -> [values]

    def add(self, metric, path, value):
        self.samples.setdefault((metric, path), []).append(value)

    def fail(self, metric, path, why):
        FAILURES.append(f"{metric} / {path}: {why}")
        log(f"FAILED {metric} / {path}: {why}")

    def median(self, metric, path):
        v = self.samples.get((metric, path))
        return statistics.median(v) if v else None


R = Results()


def attempt(metric, paths, fn):
    """Run fn(path) for one repetition; record failures without stopping."""
    for path in paths:
        try:
            fn(path)
        except BenchError as e:
            R.fail(metric, path, str(e).splitlines()[0])
            extra = "\n".join(str(e).splitlines()[1:])
            if extra:
                print(extra, file=sys.stderr)


# --------------------------------------------------------------------------
# cases 1, 2 and 6: iperf3


# iperf3 errors of a test that never started (the server between two tests,
# or busy finishing the last one): the run is tried again, up to 3 times.
IPERF_NOT_STARTED = re.compile(r"unable to connect to server|control socket has closed "
                               r"unexpectedly|unable to receive control message|server is busy")


def case_iperf(ctx):
    c = ctx.cfg
    port = free_port()
    srv = PROCS.start(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)], "iperf3-server",
                      ctx.tmp)
    paths = None
    try:
        wait_until(lambda: listening(port), 10, "iperf3 server", srv)
        paths = Paths(port, ctx, extra=REFERENCES)
        # metric, iperf3 options, suffix of its CPU metrics
        runs = [("tput1_up", [], "up"), ("tput1_down", ["-R"], "down"),
                ("tput8", ["-P", "8"], "8")]
        for rep in range(c["reps"]):
            for metric, extra, cpu in runs:
                def one(path, metric=metric, extra=extra, cpu=cpu):
                    pid = paths.pid(path)
                    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(paths.port(path)),
                            "-t", str(c["iperf_time"]), "-J", "--connect-timeout", "5000"] + extra
                    for tries in range(3):
                        # iperf3's server closes its listening socket after
                        # a test and opens it again: a client in between is
                        # refused, or cut before the test starts
                        wait_until(lambda: listening(port), 10, "iperf3 server", srv)
                        cpu0 = cpu_seconds(pid) if pid else None
                        sys0 = system_cpu_seconds()
                        rc, out, err = run(argv, c["iperf_time"] + 30)
                        cpu1 = cpu_seconds(pid) if pid else None
                        sys1 = system_cpu_seconds()
                        try:
                            j = json.loads(out)
                        except ValueError:
                            raise BenchError(f"iperf3 output is not JSON (rc {rc}): "
                                             f"{err.strip()[:200]}")
                        why = j.get("error", "") if rc != 0 or "error" in j else ""
                        if not why or not IPERF_NOT_STARTED.search(why) or tries == 2:
                            break
                        log(f"{metric:11} rep {rep + 1} {path:16} not started ({why}): again")
                        time.sleep(0.5)
                    if rc != 0 or "error" in j:
                        raise BenchError(f"iperf3 rc {rc}: {j.get('error', err.strip()[:200])}")
                    recv = j["end"]["sum_received"]
                    gbps = recv["bits_per_second"] / 1e9
                    R.add(metric, path, gbps)
                    msg = f"{metric:11} rep {rep + 1} {path:16} {gbps:7.2f} Gbit/s"
                    gib = recv["bytes"] / 2**30
                    if gib > 0:
                        if pid:
                            cps = (cpu1 - cpu0) / gib
                            R.add("cpu_" + cpu, path, cps)
                            msg += f"  relay CPU {cpu1 - cpu0:.2f}s for {gib:.2f} GiB = {cps:.3f} s/GiB"
                        sps = (sys1 - sys0) / gib
                        R.add("sys_" + cpu, path, sps)
                        msg += f"  system {sps:.3f} s/GiB"
                    log(msg)
                    paths.check_alive()
                attempt(metric, rotated(rep, PATHS + REFERENCES), one)
    finally:
        if paths:
            paths.stop()
        PROCS.stop(srv)


# --------------------------------------------------------------------------
# case 3: new connections per second (wrk -> [relay] -> nginx)

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile {nofile};
events {{
  worker_connections 4096;
}}
http {{
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp;
  scgi_temp_path {dir}/tmp;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {dir}/www;
  }}
}}
"""


def case_wrk(ctx):
    c = ctx.cfg
    d = tempfile.mkdtemp(prefix="nginx-", dir=ctx.tmp)
    os.chmod(d, 0o755)
    os.makedirs(os.path.join(d, "www"))
    os.makedirs(os.path.join(d, "tmp"))
    with open(os.path.join(d, "www", "small.txt"), "w") as f:
        f.write("x" * 1023 + "\n")  # a small static file: 1 KiB
    for p in ("www", "www/small.txt"):
        os.chmod(os.path.join(d, p), 0o755 if p == "www" else 0o644)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=d, port=port, nofile=min(ctx.nofile, 65536)))
    srv = PROCS.start(["nginx", "-p", d + "/", "-e", os.path.join(d, "error.log"), "-c", conf],
                      "nginx", ctx.tmp)
    paths = None
    try:
        wait_until(lambda: listening(port), 10, "nginx", srv)
        paths = Paths(port, ctx)
        for rep in range(c["reps"]):
            def one(path):
                url = f"http://127.0.0.1:{paths.port(path)}/small.txt"
                argv = ["wrk", "-t1", f"-c{c['wrk_conns']}", f"-d{c['wrk_time']}s",
                        "--timeout", "5s", "-H", "Connection: close", url]
                pid = paths.pid(path)
                cpu0 = cpu_seconds(pid) if pid else None
                rc, out, err = run(argv, c["wrk_time"] + 30)
                cpu1 = cpu_seconds(pid) if pid else None
                m = re.search(r"Requests/sec:\s*([\d.]+)", out)
                nreq = re.search(r"(\d+) requests in", out)
                if rc != 0 or not m:
                    raise BenchError(f"wrk rc {rc}: {(err or out).strip()[:200]}")
                rps = float(m.group(1))
                bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
                sockerr = re.search(r"Socket errors: (.*)", out)
                note = ""
                if sockerr:
                    note += f"  socket errors: {sockerr.group(1)}"
                if bad:
                    raise BenchError(f"wrk: {bad.group(1)} non-2xx responses")
                R.add("conns", path, rps)
                if pid and nreq and int(nreq.group(1)) > 0:
                    # One request per connection (Connection: close).
                    us = (cpu1 - cpu0) * 1e6 / int(nreq.group(1))
                    R.add("conn_cpu", path, us)
                    note += f"  relay CPU {us:.0f} us per connection"
                log(f"{'conns':11} rep {rep + 1} {path:16} {rps:9.0f} conn/s{note}")
                paths.check_alive()
            attempt("conns", rotated(rep), one)
    finally:
        if paths:
            paths.stop()
        PROCS.stop(srv, sig=signal.SIGQUIT)


# --------------------------------------------------------------------------
# case 4: chat-like latency (loadgen pingpong -> [relay] -> loadgen echo)


def case_latency(ctx):
    c = ctx.cfg
    srv = PROCS.start([ctx.loadgen, "echo"], "echo-server", ctx.tmp, stdout=subprocess.PIPE)
    paths = None
    try:
        line = srv.stdout.readline().decode().strip()
        if not line.isdigit():
            raise BenchError(f"echo server did not report its port:\n{log_tail(srv)}")
        port = int(line)
        paths = Paths(port, ctx)
        for rep in range(c["reps"]):
            def one(path):
                argv = [ctx.loadgen, "pingpong", "127.0.0.1", str(paths.port(path)),
                        str(c["lat_conns"]), str(c["lat_size"]), str(c["lat_interval_ms"]),
                        str(c["lat_warmup"]), str(c["lat_time"])]
                rc, out, err = run(argv, c["lat_warmup"] + c["lat_time"] + 60)
                try:
                    j = json.loads(out)
                except ValueError:
                    raise BenchError(f"loadgen rc {rc}: {err.strip()[:200]}")
                if rc != 0 or j["errors"] or not j["samples"]:
                    raise BenchError(f"loadgen rc {rc}: {j['errors']} broken connections, "
                                     f"{j['samples']} samples {err.strip()[:200]}")
                R.add("lat_p50", path, j["p50_us"])
                R.add("lat_p99", path, j["p99_us"])
                log(f"{'latency':11} rep {rep + 1} {path:16} p50 {j['p50_us']} us  "
                    f"p99 {j['p99_us']} us  p99.9 {j['p999_us']} us  "
                    f"({j['samples']} round trips, {j['rate']:.0f}/s)")
                paths.check_alive()
            attempt("latency", rotated(rep), one)
    finally:
        if paths:
            paths.stop()
        PROCS.stop(srv)


# --------------------------------------------------------------------------
# case 5: memory per idle proxied connection


def hold_idle(relay_port, upstream, n, deadline_s=60):
    """Open n client connections to relay_port and accept the relay's n
    upstream connections on `upstream`.  Returns (clients, accepted)."""
    sel = selectors.DefaultSelector()
    upstream.setblocking(False)
    sel.register(upstream, selectors.EVENT_READ)
    clients, accepted = [], []
    deadline = time.monotonic() + deadline_s

    def drain_accepts(timeout):
        for _key, _ in sel.select(timeout):
            while True:
                try:
                    s, _ = upstream.accept()
                except BlockingIOError:
                    break
                accepted.append(s)

    while len(clients) < n:
        # Batches keep the relay's accept queue and ours short.
        for _ in range(min(200, n - len(clients))):
            s = socket.socket()
            s.setblocking(False)
            if s.connect_ex(("127.0.0.1", relay_port)) not in (0, 115):  # EINPROGRESS
                s.close()
                raise BenchError("connect to relay failed")
            clients.append(s)
        while len(accepted) < len(clients) - 400:
            drain_accepts(0.05)
            if time.monotonic() > deadline:
                break
        drain_accepts(0)
        if time.monotonic() > deadline:
            break
    while len(accepted) < n and time.monotonic() < deadline:
        drain_accepts(0.1)
    sel.close()
    if len(accepted) < n:
        for s in clients + accepted:
            s.close()
        raise BenchError(f"only {len(accepted)} of {n} connections reached the upstream")
    # Every client socket must be connected (not refused or reset).
    for s in clients:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            for x in clients + accepted:
                x.close()
            raise BenchError(f"a client connection failed: {os.strerror(err)}")
    return clients, accepted


def case_memory(ctx):
    c = ctx.cfg
    n = c["idle_conns"]
    for rep in range(c["reps"]):
        for path in rotated(rep):
            if path == "direct":
                continue

            def one(path):
                up = socket.socket()
                up.bind(("127.0.0.1", 0))
                up.listen(4096)
                relay = None
                socks = ([], [])
                try:
                    relay = Relay(path, up.getsockname()[1], ctx)
                    time.sleep(0.3)
                    rss0 = vmrss_kib(relay.pid)
                    socks = hold_idle(relay.port, up, n)
                    time.sleep(1.0 if n > 1000 else 0.3)  # let the relay settle
                    if relay.proc.poll() is not None:
                        raise BenchError(f"{path} died:\n{log_tail(relay.proc)}")
                    rss1 = vmrss_kib(relay.pid)
                    per = (rss1 - rss0) * 1024 / n
                    R.add("mem", path, per)
                    log(f"{'memory':11} rep {rep + 1} {path:16} VmRSS {rss0} -> {rss1} KiB "
                        f"for {n} idle connections = {per:.0f} B each")
                finally:
                    for s in socks[0] + socks[1]:
                        s.close()
                    up.close()
                    if relay:
                        relay.stop()
            attempt("mem", [path], one)


# --------------------------------------------------------------------------
# case 7: TLS


TLS_PATHS = ["haproxy-official", "haproxy-ec256", "lifeline"]
TLS_LABEL = {
    "haproxy-official": "HAProxy official (RSA-4096)",
    "haproxy-ec256": "HAProxy official, EC P-256",
    "lifeline": "lifeline (EC P-256)",
}


def make_certs(ctx):
    """The HAProxy certificates, generated once per run like the official
    image's at every start: self-signed, cert and key in one PEM.  Returns
    {path: pem} (also kept in ctx.pems)."""
    if getattr(ctx, "pems", None):
        return ctx.pems
    pems = {}
    for path, newkey in (("haproxy-official", ["rsa:4096"]),
                         ("haproxy-ec256", ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        d = os.path.join(ctx.tmp, f"cert-{path}")
        os.makedirs(d, exist_ok=True)
        crt, key, pem = (os.path.join(d, x) for x in ("crt.pem", "key.pem", "all.pem"))
        t = time.monotonic()
        rc, _out, err = run(["openssl", "req", "-x509", "-newkey"] + newkey
                            + ["-nodes", "-keyout", key, "-out", crt, "-days", "30",
                               "-subj", "/CN=proxy.whatsapp.net"], 120)
        if rc != 0:
            raise BenchError(f"openssl req ({newkey[0]}) failed: {err.strip()[:200]}")
        with open(pem, "w") as f:
            f.write(open(crt).read() + open(key).read())
        pems[path] = pem
        log(f"certificate {newkey[0]} for {path}: {time.monotonic() - t:.1f} s")
    ctx.pems = pems
    return pems


class TlsPaths(Paths):
    """One TLS relay per TLS path in front of `upstream_port`."""

    def __init__(self, upstream_port, ctx, pems):
        self.upstream = upstream_port
        self.relays = {}
        try:
            for k in TLS_PATHS:
                self.relays[k] = Relay(k, upstream_port,
                                       ctx, tls_pem=pems.get(k, True))
        except BaseException:
            self.stop()
            raise


def tls_rotated(rep):
    k = rep % len(TLS_PATHS)
    return TLS_PATHS[k:] + TLS_PATHS[:k]


def tlsclient(ctx, args, timeout):
    rc, out, err = run([ctx.tlsclient] + [str(a) for a in args], timeout)
    try:
        j = json.loads(out)
    except ValueError:
        raise BenchError(f"tlsclient {args[0]} rc {rc}: {err.strip()[:200]}")
    if rc != 0:
        raise BenchError(f"tlsclient {args[0]} rc {rc}: {j} {err.strip()[:200]}")
    return j


def case_tls(ctx):
    """Case 7: TLS termination.  HAProxy with the official settings and the
    official kind of certificate (RSA-4096), HAProxy with the same settings
    and an EC P-256 certificate (lifeline's default key type), lifeline with
    `tls = on` and its default in-memory EC P-256 certificate.

    Handshakes: bench/tlsclient.c, `hs_threads` threads each looping
    connect + handshake + close (full: no ticket offered; resumed: the
    ticket of a first handshake), counted per wall-clock second, relay CPU
    per full handshake from /proc.  Upstream: loadgen's echo server (the
    client closes right after its handshake; a relay may or may not have
    connected upstream by then, the same for every path).
    Throughput: one TLS connection sending (up) or receiving (down)
    `tls_mib` MiB through the relay to/from a plain TCP sink/source."""
    c = ctx.cfg
    pems = make_certs(ctx)
    srv = PROCS.start([ctx.loadgen, "echo"], "tls-echo-server", ctx.tmp, stdout=subprocess.PIPE)
    paths = None
    try:
        line = srv.stdout.readline().decode().strip()
        if not line.isdigit():
            raise BenchError(f"echo server did not report its port:\n{log_tail(srv)}")
        paths = TlsPaths(int(line), ctx, pems)
        for rep in range(c["reps"]):
            def hs(path, resume, metric):
                pid = paths.pid(path)
                cpu0 = cpu_seconds(pid)
                j = tlsclient(ctx, ["hs", "127.0.0.1", paths.port(path), c["hs_threads"],
                                    c["hs_time"], "resume" if resume else "full"],
                              c["hs_time"] + 60)
                cpu1 = cpu_seconds(pid)
                if not j["handshakes"]:
                    raise BenchError(f"no handshake completed ({j['errors']} errors)")
                if resume and j["resumed"] < 0.99 * j["handshakes"]:
                    raise BenchError(f"only {j['resumed']} of {j['handshakes']} resumed")
                if not resume and j["resumed"]:
                    raise BenchError(f"{j['resumed']} full handshakes were resumed")
                R.add(metric, path, j["rate"])
                cpu_us = (cpu1 - cpu0) * 1e6 / j["handshakes"]
                if not resume:
                    R.add("tls_hs_cpu", path, cpu_us)
                log(f"{metric:11} rep {rep + 1} {path:16} {j['rate']:8.0f} handshakes/s  "
                    f"relay CPU {cpu_us:.0f} us each ({j['handshakes']} in {j['seconds']} s, "
                    f"{j['errors']} errors)")
                paths.check_alive()
            attempt("tls_hs", tls_rotated(rep), lambda p: hs(p, False, "tls_hs"))
            attempt("tls_resume", tls_rotated(rep), lambda p: hs(p, True, "tls_resume"))
    finally:
        if paths:
            paths.stop()
        PROCS.stop(srv)

    srv = PROCS.start([ctx.tlsclient, "serve"], "tls-sink-server", ctx.tmp,
                      stdout=subprocess.PIPE)
    paths = None
    try:
        line = srv.stdout.readline().decode().strip()
        if not line.isdigit():
            raise BenchError(f"sink server did not report its port:\n{log_tail(srv)}")
        paths = TlsPaths(int(line), ctx, pems)
        for rep in range(c["reps"]):
            for d in ("up", "down"):
                def one(path, d=d):
                    pid = paths.pid(path)
                    cpu0 = cpu_seconds(pid)
                    j = tlsclient(ctx, ["tput", "127.0.0.1", paths.port(path), c["tls_mib"], d],
                                  120)
                    cpu1 = cpu_seconds(pid)
                    per_gib = (cpu1 - cpu0) / (j["bytes"] / 2**30)
                    R.add(f"tls_{d}", path, j["gbps"])
                    R.add(f"tls_cpu_{d}", path, per_gib)
                    log(f"{'tls_' + d:11} rep {rep + 1} {path:16} {j['gbps']:6.2f} Gbit/s  "
                        f"relay {per_gib:.3f} CPU s/GiB")
                    paths.check_alive()
                attempt(f"tls_{d}", tls_rotated(rep), one)
    finally:
        if paths:
            paths.stop()
        PROCS.stop(srv)


# --------------------------------------------------------------------------
# generators of `loadgen population` / `loadgen storm`, driven by lines on
# their stdin and read from their stdout


class GenSet:
    """`procs` loadgen processes sharing the clients of one run."""

    def __init__(self, ctx, mode, ports, stages, extra, seed, procs):
        self.procs = []
        self.bufs = []
        self.sel = selectors.DefaultSelector()
        try:
            for i in range(procs):
                argv = [ctx.loadgen, mode, f"chat={ports['chat']}", f"tls={ports.get('tls', 0)}",
                        f"media={ports.get('media', 0)}",
                        "stages=" + ",".join(str(n) for n in stages),
                        f"procs={procs}", f"proc={i}", f"seed={seed * 64 + i + 1}"] + extra
                p = PROCS.start(argv, f"{mode}-gen{i}", ctx.tmp, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
                os.set_blocking(p.stdout.fileno(), False)
                self.sel.register(p.stdout, selectors.EVENT_READ, i)
                self.procs.append(p)
                self.bufs.append(b"")
        except BaseException:
            self.stop()
            raise

    def cpu(self):
        """CPU seconds the generator processes used so far."""
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def send(self, line):
        for p in self.procs:
            p.stdin.write(line.encode() + b"\n")
            p.stdin.flush()

    def lines(self, timeout, what, tick=None, tick_every=0.05):
        """One line from each process, within timeout seconds; calls
        tick() about every tick_every seconds while waiting."""
        deadline = time.monotonic() + timeout
        out = [None] * len(self.procs)
        while True:
            for i, b in enumerate(self.bufs):
                if out[i] is None and b"\n" in b:
                    line, self.bufs[i] = b.split(b"\n", 1)
                    out[i] = line.decode(errors="replace")
            if all(o is not None for o in out):
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
            for key, _ in self.sel.select(min(left, tick_every if tick else 0.5)):
                i = key.data
                try:
                    data = os.read(key.fileobj.fileno(), 1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    p = self.procs[i]
                    try:
                        p.wait(2)
                    except subprocess.TimeoutExpired:
                        pass
                    raise BenchError(f"{p.bench_name} exited ({p.returncode}) while waiting "
                                     f"for {what}:\n{log_tail(p)}")
                self.bufs[i] += data
            if tick:
                tick()

    def ready(self, timeout, n):
        """Waits for every process's "ready" line; returns (up, failed)."""
        up = failed = 0
        for line in self.lines(timeout, f"{n} clients to connect"):
            f = line.split()
            if len(f) != 4 or f[0] != "ready":
                raise BenchError(f"generator said {line[:100]!r}, not ready")
            up += int(f[2])
            failed += int(f[3])
        return up, failed

    def stop(self):
        for p in self.procs:
            try:
                p.stdin.write(b"quit\n")
                p.stdin.close()
            except (OSError, ValueError):
                pass
        for p in self.procs:
            PROCS.stop(p, grace=10.0)
        self.sel.close()
        self.procs = []


def sleep_until_ns(t):
    d = (t - time.monotonic_ns()) / 1e9
    if d > 0:
        time.sleep(d)


def pct(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * (len(sorted_values) - 1) + 0.5))]


# --------------------------------------------------------------------------
# relays with WhatsApp's three listener kinds: chat (plain), chat over TLS,
# media (plain here: the app's own TLS is opaque bytes to a relay)

POP_PATHS = ["direct", "lifeline", "haproxy-official", "haproxy-ec256", "haproxy-tuned"]
POP_RELAYS = POP_PATHS[1:]
POP_LABEL = {
    "direct": "direct (plain)",
    "lifeline": "lifeline (EC P-256)",
    "haproxy-official": "HAProxy official (RSA-4096)",
    "haproxy-ec256": "HAProxy official, EC P-256",
    "haproxy-tuned": "HAProxy tuned (EC P-256)",
}
STORM_PATHS = ["lifeline", "haproxy-official", "haproxy-ec256"]

POP_LIFELINE_CONF = """\
[global]
workers = auto
maxconn = 27500
[timeouts]
connect = 5s
client = 200s
server = 200s
[upstream chat]
server = 127.0.0.1:{echo}
[upstream media]
server = 127.0.0.1:{media}
[listen chat]
bind = 127.0.0.1:0
upstream = chat
maxconn = 27495
[listen chat-tls]
bind = 127.0.0.1:0
upstream = chat
maxconn = 27495
tls = on
[listen media]
bind = 127.0.0.1:0
upstream = media
maxconn = 27495
"""

# WhatsApp/proxy's proxy_config.cfg reduced to its three kinds of frontend
# (chat on 5222, chat TLS on 443, media on 587) without PROXY headers,
# health checks and the stats listener, as in HAPROXY_CFG.
POP_HAPROXY_CFG = """\
global
  tune.bufsize {bufsize}
  maxconn {maxconn}
  nbthread {nbthread}

defaults
  mode tcp
  timeout client-fin 1s
  timeout server-fin 1s
  timeout connect 5s
  timeout client 200s
  timeout server 200s
{splice}
frontend chat
  maxconn {fe_maxconn}
  bind 127.0.0.1:{chat}
  default_backend chat

frontend chat-tls
  maxconn {fe_maxconn}
  bind 127.0.0.1:{tls} ssl crt {pem}
  default_backend chat

frontend media
  maxconn {fe_maxconn}
  bind 127.0.0.1:{media}
  default_backend media

backend chat
  server s1 127.0.0.1:{echo}

backend media
  server s1 127.0.0.1:{mediasrv}
"""


class PopRelay:
    """One relay (or none: direct) in front of the echo and media servers.
    ports: chat, tls (0 for direct) and media, as the clients reach them."""

    def __init__(self, kind, echo, media, ctx):
        self.kind = kind
        self.proc = None
        self.pid = None
        if kind == "direct":
            self.ports = dict(chat=echo, tls=0, media=media)
            return
        d = tempfile.mkdtemp(prefix=f"pop-{kind}-", dir=ctx.tmp)
        name = f"pop-{kind}-{len(PROCS.live)}"
        if kind.startswith("lifeline"):
            conf, pf = os.path.join(d, "lifeline.conf"), os.path.join(d, "ports")
            with open(conf, "w") as f:
                f.write(POP_LIFELINE_CONF.format(echo=echo, media=media))
            exe = ctx.lifeline_base if kind == BASE else ctx.lifeline
            self.proc = PROCS.start([exe, "-c", conf, "--ports-file", pf], name, ctx.tmp)

            def ports():
                try:
                    with open(pf) as f:
                        got = dict(line.split() for line in f if line.strip())
                except (FileNotFoundError, ValueError):
                    return None
                if not {"chat", "chat-tls", "media"} <= got.keys():
                    return None
                return {k: int(got[n].rsplit(":", 1)[1])
                        for k, n in (("chat", "chat"), ("tls", "chat-tls"), ("media", "media"))}
            self.ports = wait_until(ports, 30, "lifeline's ports file", self.proc)
        else:
            self.ports = dict(chat=free_port(), tls=free_port(), media=free_port())
            tuned = kind == "haproxy-tuned"
            pem = ctx.pems["haproxy-official" if kind == "haproxy-official" else "haproxy-ec256"]
            cfg = os.path.join(d, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(POP_HAPROXY_CFG.format(
                    nbthread=ncpu(), bufsize=16384 if tuned else 4096,
                    splice="  option splice-auto\n" if tuned else "",
                    maxconn=ctx.hap_maxconn, fe_maxconn=ctx.hap_maxconn - 5,
                    chat=self.ports["chat"], tls=self.ports["tls"], media=self.ports["media"],
                    pem=pem, echo=echo, mediasrv=media))
            self.proc = PROCS.start(["haproxy", "-db", "-f", cfg], name, ctx.tmp)
            wait_until(lambda: all(listening(p) for p in self.ports.values()), 30,
                       f"{kind} to listen", self.proc)
        self.pid = self.proc.pid

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.kind} died (exit {self.proc.returncode}):\n"
                             f"{log_tail(self.proc)}")

    def stop(self):
        if self.proc is not None:
            PROCS.stop(self.proc, grace=40.0)


def start_servers(ctx):
    """The chat echo server (loadgen echo, one process per CPU sharing one
    port: the kernel spreads the connections and their descriptors) and the
    media server (tlsclient serve); returns (echo_port, media_port, [procs])."""
    procs = []

    def start(argv, name):
        p = PROCS.start(argv, name, ctx.tmp, stdout=subprocess.PIPE)
        procs.append(p)
        line = p.stdout.readline().decode().strip()
        if not line.isdigit():
            raise BenchError(f"{name} did not report its port:\n{log_tail(p)}")
        return int(line)
    try:
        echo = start([ctx.loadgen, "echo"], "pop-echo0")
        for i in range(1, ncpu()):
            start([ctx.loadgen, "echo", str(echo)], f"pop-echo{i}")
        media = start([ctx.tlsclient, "serve"], "pop-media")
    except BaseException:
        for p in procs:
            PROCS.stop(p)
        raise
    return echo, media, procs


def pop_key(metric, n):
    return f"{metric}@{n}"


# --------------------------------------------------------------------------
# case 8: a WhatsApp-like population


def case_population(ctx):
    """Case 8.  N WhatsApp-like clients (bench/loadgen.c population: 70%
    TLS, 30% plain; a 100-400 byte message at exponential intervals of mean
    pop_interval seconds, echoed; one client in pop_media_every downloads
    200 KiB-2 MiB through the media listener every pop_media_period) held
    through each relay, stage by stage (pop_stages: 1,000 and the largest N
    the fd limit allows).  After each stage is up and a warm-up, a window of
    pop_time seconds measures: relay RSS at its end, relay CPU over it (per
    client-hour), chat round trips of the messages sent in it, media
    downloads, errors.  A fresh relay per path and repetition; direct = the
    same clients, all plain, to the servers themselves."""
    c = ctx.cfg
    make_certs(ctx)
    echo, media, servers = start_servers(ctx)
    try:
        for rep in range(c["reps"]):
            k = rep % len(POP_PATHS)
            order = POP_PATHS[k:] + POP_PATHS[:k]
            attempt("population", order, lambda path: pop_run(ctx, path, rep, echo, media))
            for p in servers:
                if p.poll() is not None:
                    raise BenchError(f"{p.bench_name} died:\n{log_tail(p)}")
    finally:
        for p in servers:
            PROCS.stop(p)


def pop_run(ctx, path, rep, echo, media):
    c = ctx.cfg
    stages = ctx.pop_stages
    times = c["pop_direct_time"] if path == "direct" else c["pop_time"]
    relay = PopRelay(path, echo, media, ctx)
    gens = None
    try:
        time.sleep(0.5)
        rss0 = vmrss_kib(relay.pid) if relay.pid else None
        bound = len(stages) * (c["pop_ramp_timeout"] + c["pop_warmup"] + 30) + sum(times) + 60
        gens = GenSet(ctx, "population", relay.ports, stages,
                      [f"interval={c['pop_interval']}", f"media-every={c['pop_media_every']}",
                       f"media-period={c['pop_media_period']}", f"deadline={bound:.0f}"],
                      rep, ctx.gen_procs)
        for k, n in enumerate(stages):
            t_ramp = time.monotonic()
            up, failed = gens.ready(c["pop_ramp_timeout"], n)
            ramp = time.monotonic() - t_ramp
            if failed or up != n:
                raise BenchError(f"{up} of {n} clients connected, {failed} failed")
            relay.check_alive()
            t0 = time.monotonic_ns() + int(c["pop_warmup"] * 1e9)
            t1 = t0 + int(times[k] * 1e9)
            gens.send(f"window {t0} {t1}")
            sleep_until_ns(t0)
            cpu0 = cpu_seconds(relay.pid) if relay.pid else None
            gcpu0 = gens.cpu()
            sleep_until_ns(t1)
            cpu1 = cpu_seconds(relay.pid) if relay.pid else None
            gcpu1 = gens.cpu()
            rss1 = vmrss_kib(relay.pid) if relay.pid else None
            js = [json.loads(x) for x in gens.lines(30, f"the stage {n} report")]
            lat = sorted(v for j in js for v in j["lat_us"])
            mbps = sorted(v for j in js for v in j["media_mbps"])
            errors = sum(j["lost"] + j["broken"] + j["failed"] + j["media_failed"] for j in js)
            sent = sum(j["sent"] for j in js)
            hours = (t1 - t0) / 3.6e12
            msg = (f"population rep {rep + 1} {path:16} N={n:5} (up in {ramp:4.1f} s)  "
                   f"{len(lat)} of {sent} msgs  p50 {pct(lat, 0.5)} us  p99 {pct(lat, 0.99)} us  "
                   f"media {len(mbps)} downloads")
            if lat:
                R.add(pop_key("pop_p50", n), path, pct(lat, 0.5))
                R.add(pop_key("pop_p99", n), path, pct(lat, 0.99))
            if mbps:
                R.add(pop_key("pop_media", n), path, pct(mbps, 0.5))
                msg += f" at {pct(mbps, 0.5):.0f} Mbit/s (median)"
            R.add(pop_key("pop_err", n), path, errors)
            msg += f"  errors {errors}  generators' CPU {gcpu1 - gcpu0:.2f} s"
            if relay.pid:
                cpu_h = (cpu1 - cpu0) / (n * hours)
                R.add(pop_key("pop_cpu", n), path, cpu_h * 1e3)
                R.add(pop_key("pop_rss", n), path, rss1 / 1024)
                R.add(pop_key("pop_rss_per", n), path, (rss1 - rss0) * 1024 / n)
                msg += (f"  relay CPU {cpu1 - cpu0:.2f} s = {cpu_h * 1e3:.1f} ms per client-hour"
                        f"  RSS {rss0} -> {rss1} KiB")
            log(msg)
            if errors:
                log(f"population {path} N={n}: errors: " + "; ".join(
                    f"lost {j['lost']} broken {j['broken']} failed {j['failed']} "
                    f"media failed {j['media_failed']}" for j in js))
        relay.check_alive()
    finally:
        if gens:
            gens.stop()
        relay.stop()


# --------------------------------------------------------------------------
# case 9: reconnect storm


def case_storm(ctx):
    """Case 9.  storm_conns clients (70% TLS, 30% plain, each with one
    exchange done, TLS ones holding the ticket of their first handshake)
    through each relay all lose their connection at once (the generator
    resets them: SO_LINGER 0) and reconnect at uniform random points of the
    next second, half of the TLS clients offering their ticket.  A client
    is back when the echo of its first message after reconnecting is in.
    Measured: time until 99% and 100% are back, TLS handshake p99 (connect
    to Finished, full and resumed), failed attempts (refused, reset,
    timeout; each retried 0.5-1.5 s later), relay CPU per reconnect (from
    the reset until all are back), relay peak RSS (sampled every 50 ms, and
    VmHWM)."""
    c = ctx.cfg
    make_certs(ctx)
    echo, media, servers = start_servers(ctx)
    try:
        for rep in range(c["reps"]):
            k = rep % len(STORM_PATHS)
            order = STORM_PATHS[k:] + STORM_PATHS[:k]
            attempt("storm", order, lambda path: storm_run(ctx, path, rep, echo, media))
    finally:
        for p in servers:
            PROCS.stop(p)


def perf_record(pid, name):
    """With BENCH_PERF_DIR set: `perf record -g` on the relay from now
    until perf_stop, into BENCH_PERF_DIR/NAME.data (for `perf report
    --sort dso`); else None."""
    d = os.environ.get("BENCH_PERF_DIR")
    if not d:
        return None
    if shutil.which("perf") is None:
        raise BenchError("BENCH_PERF_DIR needs perf (Debian: apt-get install linux-perf)")
    os.makedirs(d, exist_ok=True)
    p = subprocess.Popen(["perf", "record", "-q", "-F", "1999", "-g", "-p", str(pid),
                          "-o", os.path.join(d, f"{name}.data")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the measured window opens
    return p


def perf_stop(p):
    if p is not None:
        p.send_signal(signal.SIGINT)
        p.wait(30)


def storm_run(ctx, path, rep, echo, media):
    c = ctx.cfg
    n = ctx.storm_conns
    relay = PopRelay(path, echo, media, ctx)
    gens = None
    try:
        bound = c["pop_ramp_timeout"] + c["storm_timeout"] + 60
        gens = GenSet(ctx, "storm", relay.ports, [n],
                      [f"storm-timeout={c['storm_timeout']}", f"deadline={bound:.0f}"],
                      rep, ctx.gen_procs)
        up, failed = gens.ready(c["pop_ramp_timeout"], n)
        if failed or up != n:
            raise BenchError(f"{up} of {n} clients connected, {failed} failed")
        time.sleep(c["storm_settle"])
        relay.check_alive()
        peak = [vmrss_kib(relay.pid)]

        def sample():
            try:
                peak[0] = max(peak[0], vmrss_kib(relay.pid))
            except (OSError, BenchError):
                pass
        perf = perf_record(relay.pid, f"storm-{path}-{rep + 1}")
        cpu0, gcpu0 = cpu_seconds(relay.pid), gens.cpu()
        t = time.monotonic_ns() + 200_000_000
        gens.send(f"storm {t}")
        js = [json.loads(x) for x in gens.lines(c["storm_timeout"] + 30, "the storm's report",
                                                 tick=sample)]
        cpu1, gcpu1 = cpu_seconds(relay.pid), gens.cpu()
        perf_stop(perf)
        wall = (time.monotonic_ns() - t) / 1e9
        sample()
        hwm = proc_status_kib(relay.pid, "VmHWM")
        relay.check_alive()
        back = sorted(v for j in js for v in j["up_us"])
        hs = sorted(v for j in js for k in ("hs_full_us", "hs_resumed_us") for v in j[k])
        bad = {k: sum(j[k] for j in js) for k in ("refused", "reset", "timeout", "other")}
        offered = sum(j["offered"] for j in js)
        resumed = sum(j["resumed"] for j in js)
        R.add("storm_fail", path, sum(bad.values()))
        R.add("storm_cpu", path, (cpu1 - cpu0) * 1e6 / n)
        R.add("storm_peak", path, peak[0] / 1024)
        R.add("storm_hwm", path, hwm / 1024)
        if hs:
            R.add("storm_hs99", path, pct(hs, 0.99) / 1e3)
        msg = (f"storm      rep {rep + 1} {path:16} {len(back)} of {n} back")
        if len(back) >= 0.99 * n:
            t99 = back[max(0, -(-99 * n // 100) - 1)] / 1e3
            R.add("storm_t99", path, t99)
            msg += f"  99% at {t99:.0f} ms"
        if len(back) >= n:
            R.add("storm_t100", path, back[-1] / 1e3)
            msg += f"  100% at {back[-1] / 1e3:.0f} ms"
        msg += (f"  TLS handshake p99 {pct(hs, 0.99)} us ({resumed} of {offered} offered "
                f"tickets resumed)  failed attempts {bad}  relay CPU "
                f"{(cpu1 - cpu0) * 1e6 / n:.0f} us per reconnect  peak RSS {peak[0]} KiB "
                f"(VmHWM {hwm})  CPU over {wall:.1f} s: relay {cpu1 - cpu0:.1f} s, generators "
                f"{gcpu1 - gcpu0:.1f} s")
        log(msg)
        if len(back) < n:
            raise BenchError(f"only {len(back)} of {n} clients reconnected within "
                             f"{c['storm_timeout']} s")
    finally:
        if gens:
            gens.stop()
        relay.stop()


# --------------------------------------------------------------------------
# case 7's memory row: RSS per idle TLS connection


def case_tls_idle(ctx):
    """RSS per idle TLS connection: tls_idle_conns clients (all TLS) through
    a fresh TLS relay each, each after its handshake and one exchange of
    100-400 bytes, nothing in flight; relay VmRSS after minus before / N."""
    c = ctx.cfg
    n = c["tls_idle_conns"]
    make_certs(ctx)
    echo, media, servers = start_servers(ctx)
    try:
        for rep in range(c["reps"]):
            def one(path):
                relay = PopRelay(path, echo, media, ctx)
                gens = None
                try:
                    time.sleep(0.5)
                    rss0 = vmrss_kib(relay.pid)
                    gens = GenSet(ctx, "population", relay.ports, [n],
                                  ["tls-pct=100", "interval=0", "media-every=0", "deadline=300"],
                                  rep, 1)
                    up, failed = gens.ready(c["pop_ramp_timeout"], n)
                    if failed or up != n:
                        raise BenchError(f"{up} of {n} TLS clients connected, {failed} failed")
                    time.sleep(1.0 if n > 1000 else 0.5)
                    relay.check_alive()
                    rss1 = vmrss_kib(relay.pid)
                    per = (rss1 - rss0) * 1024 / n
                    R.add("tls_mem", path, per)
                    log(f"{'tls memory':11} rep {rep + 1} {path:16} VmRSS {rss0} -> {rss1} KiB "
                        f"for {n} idle TLS connections = {per:.0f} B each")
                finally:
                    if gens:
                        gens.stop()
                    relay.stop()
            attempt("tls_mem", tls_rotated(rep), one)
    finally:
        for p in servers:
            PROCS.stop(p)


# --------------------------------------------------------------------------
# the report

# (case, metric, label, unit, format, higher_is_better, relays_only)
ROWS = [
    ("1", "tput1_up", "Throughput, 1 stream, client to server", "Gbit/s", "{:.2f}", True, False),
    ("1", "tput1_down", "Throughput, 1 stream, server to client (-R)", "Gbit/s", "{:.2f}", True,
     False),
    ("2", "tput8", "Throughput, 8 streams", "Gbit/s", "{:.2f}", True, False),
    ("3", "conns", "New connections (wrk, Connection: close)", "conn/s", "{:.0f}", True, False),
    ("3", "conn_cpu", "Relay CPU per new connection (process CPU / connections)", "CPU us",
     "{:.1f}", False, True),
    ("4", "lat_p50", "Latency p50, {lat_conns} conns x {lat_size} B ping-pong", "us", "{:.0f}",
     False, False),
    ("4", "lat_p99", "Latency p99, {lat_conns} conns x {lat_size} B ping-pong", "us", "{:.0f}",
     False, False),
    ("4", "lat_p99_added", "Latency p99 added vs direct", "us", "{:.0f}", False, False),
    ("5", "mem", "Memory per idle connection ({idle_conns} idle, VmRSS delta / N)", "bytes",
     "{:.0f}", False, True),
    ("6", "cpu_up", "Relay CPU per GiB, 1 stream, client to server", "CPU s/GiB", "{:.3f}",
     False, True),
    ("6", "cpu_down", "Relay CPU per GiB, 1 stream, server to client", "CPU s/GiB", "{:.3f}",
     False, True),
    ("6", "cpu_8", "Relay CPU per GiB, 8 streams", "CPU s/GiB", "{:.3f}", False, True),
    ("6", "sys_up", "Whole-system CPU per GiB (all CPUs), 1 stream, client to server",
     "CPU s/GiB", "{:.3f}", False, False),
    ("6", "sys_down", "Whole-system CPU per GiB (all CPUs), 1 stream, server to client",
     "CPU s/GiB", "{:.3f}", False, False),
    ("6", "sys_8", "Whole-system CPU per GiB (all CPUs), 8 streams", "CPU s/GiB", "{:.3f}",
     False, False),
]
# The rows the reference relays have a number in (they run in cases 1, 2, 6).
MINIMAL_METRICS = {"tput1_up", "tput1_down", "tput8", "cpu_up", "cpu_down", "cpu_8",
                   "sys_up", "sys_down", "sys_8"}


def value(metric, path):
    if metric == "lat_p99_added":
        d, v = R.median("lat_p99", "direct"), R.median("lat_p99", path)
        return None if d is None or v is None else v - d
    return R.median(metric, path)


def ratio(a, b):
    if a is None or b is None:
        return "ERR"
    if b <= 0 or float("inf") in (a, b):
        return "n/a"
    return f"{a / b:.2f}x"


def table(cfg, cases):
    base = BASE in PATHS
    cols = PATHS + REFERENCES
    out = ["| # | case | unit | " + " | ".join(LABEL[p] for p in cols)
           + " | lifeline / HAProxy official | lifeline / HAProxy tuned | lifeline % of direct |"
           + " lifeline / minimal relay | lifeline / event-driven relay |"
           + (" lifeline / base |" if base else ""),
           "|---|---|---|" + "---:|" * (len(cols) + 5 + base)]
    for case, metric, label, unit, fmt, higher, relays_only in ROWS:
        if case not in cases:
            continue
        cells = []
        for p in cols:
            if (p == "direct" and relays_only) or (p in REFERENCES
                                                   and metric not in MINIMAL_METRICS):
                cells.append("n/a")
                continue
            v = value(metric, p)
            cells.append("ERR" if v is None else fmt.format(v))
        ll = value(metric, "lifeline")
        r1 = ratio(ll, value(metric, "haproxy-official"))
        r2 = ratio(ll, value(metric, "haproxy-tuned"))
        r3 = ratio(ll, value(metric, MINIMAL)) if metric in MINIMAL_METRICS else "n/a"
        r4 = ratio(ll, value(metric, EPOLL_MIN)) if metric in MINIMAL_METRICS else "n/a"
        pct = "—"
        if higher and not relays_only:
            d = value(metric, "direct")
            pct = "ERR" if ll is None or not d else f"{100 * ll / d:.0f}%"
        arrow = "higher is better" if higher else "lower is better"
        rb = f" {ratio(ll, value(metric, BASE))} |" if base else ""
        out.append(f"| {case} | {label.format(**cfg)} | {unit} ({arrow}) | " + " | ".join(cells)
                   + f" | {r1} | {r2} | {pct} | {r3} | {r4} |" + rb)
    return "\n".join(out)


# (case, metric, label, unit, format, higher_is_better)
TLS_ROWS = [
    ("7", "tls_hs", "TLS full handshakes ({hs_threads} client threads, no resumption)",
     "handshakes/s", "{:.0f}", True),
    ("7", "tls_hs_cpu", "Relay CPU per full TLS handshake", "CPU us", "{:.0f}", False),
    ("7", "tls_resume", "TLS resumed handshakes (session ticket)", "handshakes/s", "{:.0f}",
     True),
    ("7", "tls_up", "TLS throughput, 1 stream, client to server", "Gbit/s", "{:.2f}", True),
    ("7", "tls_down", "TLS throughput, 1 stream, server to client", "Gbit/s", "{:.2f}", True),
    ("7", "tls_cpu_up", "Relay CPU per GiB, TLS, client to server", "CPU s/GiB", "{:.3f}",
     False),
    ("7", "tls_cpu_down", "Relay CPU per GiB, TLS, server to client", "CPU s/GiB", "{:.3f}",
     False),
    ("7", "tls_mem", "RSS per idle TLS connection ({tls_idle_conns}, after the handshake and "
     "one exchange)", "bytes", "{:.0f}", False),
]


def tls_table(cfg):
    base = BASE in TLS_PATHS
    out = ["| # | case | unit | " + " | ".join(TLS_LABEL[p] for p in TLS_PATHS)
           + " | lifeline / HAProxy official | lifeline / HAProxy EC P-256 |"
           + (" lifeline / base |" if base else ""),
           "|---|---|---|" + "---:|" * (len(TLS_PATHS) + 2 + base)]
    for case, metric, label, unit, fmt, higher in TLS_ROWS:
        cells = []
        for p in TLS_PATHS:
            v = value(metric, p)
            cells.append("ERR" if v is None else fmt.format(v))
        ll = value(metric, "lifeline")
        r1 = ratio(ll, value(metric, "haproxy-official"))
        r2 = ratio(ll, value(metric, "haproxy-ec256"))
        arrow = "higher is better" if higher else "lower is better"
        rb = f" {ratio(ll, value(metric, BASE))} |" if base else ""
        out.append(f"| {case} | {label.format(**cfg)} | {unit} ({arrow}) | " + " | ".join(cells)
                   + f" | {r1} | {r2} |" + rb)
    return "\n".join(out)


# (metric, label, unit, format, higher_is_better, relays_only); per N
POP_ROWS = [
    ("pop_rss", "Relay RSS with {n} clients", "MiB", "{:.1f}", False, True),
    ("pop_rss_per", "Relay RSS per client ({n}; above the idle relay)", "bytes", "{:.0f}", False,
     True),
    ("pop_cpu", "Relay CPU per client-hour ({n} clients)", "CPU ms", "{:.1f}", False, True),
    ("pop_p50", "Chat round trip p50 ({n} clients)", "us", "{:.0f}", False, False),
    ("pop_p99", "Chat round trip p99 ({n} clients)", "us", "{:.0f}", False, False),
    ("pop_add50", "Chat latency p50 added vs direct ({n} clients)", "us", "{:.0f}", False, True),
    ("pop_add99", "Chat latency p99 added vs direct ({n} clients)", "us", "{:.0f}", False, True),
    ("pop_media", "Media download throughput, median of downloads ({n} clients)", "Mbit/s",
     "{:.0f}", True, False),
    ("pop_err", "Errors: lost messages, broken or failed connections, failed downloads "
     "({n} clients)", "count", "{:.0f}", False, False),
]


def pop_value(metric, n, path):
    if metric in ("pop_add50", "pop_add99"):
        m = "pop_p50" if metric == "pop_add50" else "pop_p99"
        d, v = R.median(pop_key(m, n), "direct"), R.median(pop_key(m, n), path)
        return None if d is None or v is None else v - d
    if metric == "per_gib":  # clients per GiB of relay RSS
        v = R.median(pop_key("pop_rss", n), path)
        return None if not v else n * 1024 / v
    if metric == "per_core":  # clients per core at 10% CPU
        v = R.median(pop_key("pop_cpu", n), path)
        # No CPU tick in the window (a smoke run): unbounded, shown as n/a
        return None if v is None else float("inf") if v == 0 else 360e3 / v
    return R.median(pop_key(metric, n), path)


def ratio_cols(ll, others):
    return " | ".join(ratio(ll, o) for o in others)


def pop_table(ctx):
    refs = ["haproxy-official", "haproxy-ec256", "haproxy-tuned"]
    out = ["| # | case | unit | " + " | ".join(POP_LABEL[p] for p in POP_PATHS) + " | "
           + " | ".join(f"lifeline / {POP_LABEL[p]}" for p in refs) + " |",
           "|---|---|---|" + "---:|" * (len(POP_PATHS) + len(refs))]
    rows = [(m, lab, unit, fmt, hi, ro, n) for n in ctx.pop_stages
            for (m, lab, unit, fmt, hi, ro) in POP_ROWS]
    nmax = ctx.pop_stages[-1]
    rows.append(("per_gib", "Clients per GiB of relay RSS (at {n})", "clients", "{:.0f}", True,
                 True, nmax))
    rows.append(("per_core", "Clients per core at 10% CPU (360 CPU s an hour / CPU per "
                 "client-hour, at {n})", "clients", "{:.0f}", True, True, nmax))
    for m, lab, unit, fmt, hi, ro, n in rows:
        cells = []
        for p in POP_PATHS:
            v = pop_value(m, n, p)
            cells.append("n/a" if (ro and p == "direct") or v == float("inf") else
                         "ERR" if v is None else fmt.format(v))
        ll = pop_value(m, n, "lifeline")
        arrow = "higher is better" if hi else "lower is better"
        out.append(f"| 8 | {lab.format(n=n)} | {unit} ({arrow}) | " + " | ".join(cells) + " | "
                   + ratio_cols(ll, [pop_value(m, n, p) for p in refs]) + " |")
    return "\n".join(out)


# (metric, label, unit, format, higher_is_better)
STORM_ROWS = [
    ("storm_t99", "Time until 99% reconnected", "ms", "{:.0f}", False),
    ("storm_t100", "Time until 100% reconnected", "ms", "{:.0f}", False),
    ("storm_hs99", "TLS handshake p99 (connect to Finished, full and resumed)", "ms", "{:.1f}",
     False),
    ("storm_fail", "Failed attempts (refused, reset, timed out)", "count", "{:.0f}", False),
    ("storm_cpu", "Relay CPU per reconnect", "CPU us", "{:.0f}", False),
    ("storm_peak", "Relay peak RSS (sampled every 50 ms)", "MiB", "{:.1f}", False),
    ("storm_hwm", "Relay VmHWM (whole run)", "MiB", "{:.1f}", False),
]


def storm_table():
    refs = ["haproxy-official", "haproxy-ec256"]
    out = ["| # | case | unit | " + " | ".join(POP_LABEL[p] for p in STORM_PATHS) + " | "
           + " | ".join(f"lifeline / {POP_LABEL[p]}" for p in refs) + " |",
           "|---|---|---|" + "---:|" * (len(STORM_PATHS) + len(refs))]
    for m, lab, unit, fmt, hi in STORM_ROWS:
        cells = []
        for p in STORM_PATHS:
            v = value(m, p)
            cells.append("ERR" if v is None else fmt.format(v))
        arrow = "higher is better" if hi else "lower is better"
        out.append(f"| 9 | {lab} | {unit} ({arrow}) | " + " | ".join(cells) + " | "
                   + ratio_cols(value(m, "lifeline"), [value(m, p) for p in refs]) + " |")
    return "\n".join(out)


def targets16(ctx):
    """Issue 16's per-unit targets, for information."""
    v = value
    lines = []

    def chk(name, a, b, want, op="<="):
        if a is None or b is None or b == 0:
            lines.append(f"- {name}: **n/a** (not measured in this run)")
            return
        r = a / b
        ok = r <= want if op == "<=" else r >= want

        def num(x):
            return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.4g}"
        lines.append(f"- {name}: **{'met' if ok else 'MISSED'}** ({r:.2f}x; "
                     f"{num(a)} vs {num(b)})")

    chk("relay CPU per new plain connection <= 0.7x HAProxy official",
        v("conn_cpu", "lifeline"), v("conn_cpu", "haproxy-official"), 0.7)
    for m, what in (("cpu_up", "1 stream up"), ("cpu_down", "1 stream down"),
                    ("cpu_8", "8 streams")):
        chk(f"relay CPU per GiB, {what}, within 5% of the minimal splice relay",
            v(m, "lifeline"), v(m, MINIMAL), 1.05)
        chk(f"relay CPU per GiB, {what}, within 5% of the minimal event-driven relay",
            v(m, "lifeline"), v(m, EPOLL_MIN), 1.05)
        sm = "sys" + m[3:]
        chk(f"whole-system CPU per GiB, {what}, within 5% of the minimal splice relay's",
            v(sm, "lifeline"), v(sm, MINIMAL), 1.05)
        chk(f"relay CPU per GiB, {what}, <= 0.55x HAProxy tuned",
            v(m, "lifeline"), v(m, "haproxy-tuned"), 0.55)
    for m, what in (("sys_up", "up"), ("sys_down", "down")):
        chk(f"whole-system CPU per GiB, 1 stream {what}, <= HAProxy tuned's",
            v(m, "lifeline"), v(m, "haproxy-tuned"), 1.0)
    chk("RSS per idle TLS connection <= 0.6x HAProxy official",
        v("tls_mem", "lifeline"), v("tls_mem", "haproxy-official"), 0.6)
    if getattr(ctx, "pop_stages", None):
        n = ctx.pop_stages[-1]
        chk(f"population: clients per GiB of relay RSS at {n} >= 1.6x HAProxy official",
            pop_value("per_gib", n, "lifeline"), pop_value("per_gib", n, "haproxy-official"),
            1.6, ">=")
        chk(f"population: relay CPU per client-hour at {n} <= 0.6x HAProxy official",
            pop_value("pop_cpu", n, "lifeline"), pop_value("pop_cpu", n, "haproxy-official"),
            0.6)
        a, b = pop_value("pop_add99", n, "lifeline"), pop_value("pop_add99", n, "haproxy-official")
        name = f"population: p99 added chat latency at {n} <= HAProxy official's"
        if a is None or b is None:
            lines.append(f"- {name}: **n/a** (not measured in this run)")
        else:
            lines.append(f"- {name}: **{'met' if a <= b else 'MISSED'}** ({a:.0f} us vs "
                         f"{b:.0f} us)")
    chk("storm: relay CPU per reconnect <= 0.8x HAProxy with P-256",
        v("storm_cpu", "lifeline"), v("storm_cpu", "haproxy-ec256"), 0.8)
    f, t = v("storm_fail", "lifeline"), v("storm_t100", "lifeline")
    name = "storm: refused or reset connections = 0"
    if f is None:
        lines.append(f"- {name}: **n/a** (not measured in this run)")
    else:
        back = "not all back" if t is None else f"100% back after {t:.0f} ms"
        lines.append(f"- {name}: **{'met' if f == 0 else 'MISSED'}** ({f:.0f} failed "
                     f"attempts; {back})")
    return "\n".join(lines)


def targets():
    """The project's targets, for information: the numbers are not tuned to them."""
    v = value
    lines = []

    def chk(name, ok, detail):
        state = "n/a" if ok is None else ("met" if ok else "MISSED")
        lines.append(f"- {name}: **{state}** ({detail})")

    def safe(f):
        try:
            return f()
        except (TypeError, ZeroDivisionError):
            return None

    for m, what in (("tput1_up", "1 stream up"), ("tput1_down", "1 stream down"),
                    ("tput8", "8 streams")):
        d, ho, ht, ll = (v(m, p) for p in PATHS[:4])
        pd = safe(lambda: ll / d)
        ro = safe(lambda: ll / ho)
        rt = safe(lambda: ll / ht)
        chk(f"throughput {what} >= 50% of direct", None if pd is None else pd >= 0.5,
            "n/a" if pd is None else f"{100 * pd:.0f}%")
        chk(f"throughput {what} >= 1.5x HAProxy tuned", None if rt is None else rt >= 1.5,
            "n/a" if rt is None else f"{rt:.2f}x")
        chk(f"throughput {what} >= 3.5x HAProxy official", None if ro is None else ro >= 3.5,
            "n/a" if ro is None else f"{ro:.2f}x")
    r = safe(lambda: v("conns", "lifeline") / v("conns", "haproxy-official"))
    chk("new conn/s >= 1.3x HAProxy official", None if r is None else r >= 1.3,
        "n/a" if r is None else f"{r:.2f}x")
    a, b = v("lat_p99_added", "lifeline"), v("lat_p99_added", "haproxy-official")
    chk("p99 latency added <= HAProxy official's", None if a is None or b is None else a <= b,
        f"{a} us vs {b} us")
    m = v("mem", "lifeline")
    chk("memory per idle connection <= 512 B", None if m is None else m <= 512,
        "n/a" if m is None else f"{m:.0f} B")
    for d in ("up", "down"):
        r = safe(lambda: v(f"cpu_{d}", "lifeline") / v(f"cpu_{d}", "haproxy-official"))
        chk(f"CPU per GiB ({d}) <= 0.5x HAProxy official", None if r is None else r <= 0.5,
            "n/a" if r is None else f"{r:.2f}x")
    for other, want, what in (("haproxy-official", 4.0, "HAProxy official (RSA-4096)"),
                              ("haproxy-ec256", 1.0, "HAProxy official with EC P-256")):
        r = safe(lambda: v("tls_hs", "lifeline") / v("tls_hs", other))
        chk(f"TLS full handshakes/s >= {want:g}x {what}", None if r is None else r >= want,
            "n/a" if r is None else f"{r:.2f}x")
    for d in ("up", "down"):
        r = safe(lambda: v(f"tls_{d}", "lifeline") / v(f"tls_{d}", "haproxy-official"))
        chk(f"TLS throughput 1 stream {d} >= 1.2x HAProxy official",
            None if r is None else r >= 1.2, "n/a" if r is None else f"{r:.2f}x")
    return "\n".join(lines)


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    hv = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"machine: {ncpu()} CPUs ({os.cpu_count()} online), {model}; kernel {os.uname().release}; "
            f"{hv.strip()}; date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


# --------------------------------------------------------------------------


class Ctx:
    pass


def on_signal(sig, _frame):
    raise KeyboardInterrupt(f"signal {sig}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="every case once, tiny")
    ap.add_argument("--lifeline", required=True, help="the lifeline binary")
    ap.add_argument("--base", help="a second lifeline binary to run beside it")
    ap.add_argument("--loadgen", required=True, help="the built bench/loadgen.c")
    ap.add_argument("--tmp", required=True, help="scratch directory (removed by run.sh)")
    ap.add_argument("--json", help="also write every sample here")
    ap.add_argument("--tlsclient", required=True, help="the built bench/tlsclient.c")
    ap.add_argument("--minirelay", required=True, help="the built bench/minirelay.c")
    ap.add_argument("--epollrelay", required=True, help="the built bench/epollrelay.c")
    ap.add_argument("--cases", default="1,2,3,4,5,6,7,population,storm",
                    help="comma-separated cases to run (1,2,6 share one run; 8 = population, "
                    "9 = storm)")
    ap.add_argument("--reps", type=int, help="repetitions (full run: 3)")
    ap.add_argument("--pop-time", help="seconds measured at each population stage, "
                    "comma-separated (full run: 30,60)")
    ap.add_argument("--pop-paths", help="population paths, comma-separated, from "
                    + ",".join(POP_PATHS))
    args = ap.parse_args()
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    ctx = Ctx()
    ctx.cfg = dict(SMOKE if args.smoke else FULL)
    if args.reps:
        ctx.cfg["reps"] = max(1, args.reps)
    ctx.lifeline = os.path.abspath(args.lifeline)
    ctx.lifeline_base = os.path.abspath(args.base) if args.base else None
    if args.base:
        add_base_path()
    ctx.loadgen = os.path.abspath(args.loadgen)
    ctx.tlsclient = os.path.abspath(args.tlsclient)
    ctx.minirelay = os.path.abspath(args.minirelay)
    ctx.epollrelay = os.path.abspath(args.epollrelay)
    ctx.tmp = args.tmp
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    ctx.nofile = soft
    # HAProxy refuses to start when the fd limit cannot cover its maxsock:
    # 2 x maxconn, plus maxconn/2 with splicing (maxpipes = maxconn/4).
    # Where the hard limit is below that for 27500 (and cannot be raised:
    # no CAP_SYS_RESOURCE), both HAProxy configurations get the same lower
    # maxconn; no case comes near it.
    ctx.hap_maxconn = min(27500, (soft - 200) * 2 // 5 // 100 * 100)
    need = 2 * ctx.cfg["idle_conns"] + 200
    if soft < need:
        ctx.cfg["idle_conns"] = max(10, (soft - 200) // 2)
        log(f"warning: fd limit {soft}: idle connections lowered to {ctx.cfg['idle_conns']}")
    # Population and storm: the largest N leaves HAProxy (2 fds a
    # connection, pipes for the tuned one) 300 connections of its maxconn
    # for media and checks; the generators spread the clients over one
    # process per CPU, and the echo server holds one fd per client.
    pop_max = max(50, min(ctx.cfg["pop_max"], ctx.hap_maxconn - 300, soft - 1000))
    ctx.pop_stages = SMOKE_POP_STAGES if args.smoke else sorted({min(1000, pop_max), pop_max})
    if len(ctx.pop_stages) == 1:  # a low fd limit: the largest stage only
        for k in ("pop_time", "pop_direct_time"):
            ctx.cfg[k] = ctx.cfg[k][-1:]
    ctx.storm_conns = ctx.pop_stages[-1]
    ctx.gen_procs = ncpu()
    if args.pop_time:
        ctx.cfg["pop_time"] = [float(x) for x in args.pop_time.split(",")]
        ctx.cfg["pop_direct_time"] = [min(t, 20.0) for t in ctx.cfg["pop_time"]]
    if len(ctx.cfg["pop_time"]) != len(ctx.pop_stages):
        sys.exit(f"bench: --pop-time needs {len(ctx.pop_stages)} values")
    if args.pop_paths:
        keep = args.pop_paths.split(",")
        if not set(keep) <= set(POP_PATHS) or "lifeline" not in keep:
            sys.exit(f"bench: --pop-paths takes lifeline and some of {','.join(POP_PATHS)}")
        POP_PATHS[:] = [p for p in POP_PATHS if p in keep]
    for exe in (ctx.lifeline, ctx.loadgen, ctx.tlsclient, ctx.minirelay, ctx.epollrelay) + (
            (ctx.lifeline_base,) if args.base else ()):
        if not os.access(exe, os.X_OK):
            sys.exit(f"bench: {exe} is not executable")
    for tool in ("haproxy", "nginx", "iperf3", "wrk", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (scripts/deps.sh bench installs it)")

    cases = set(args.cases.split(","))
    cases = {"8" if x == "population" else "9" if x == "storm" else x for x in cases}
    if not cases <= set("123456789"):
        sys.exit(f"bench: unknown case in {args.cases}")
    ctx.load_start = open("/proc/loadavg").read().split()[:3]
    log(("smoke run" if args.smoke else "full run") + f": {ctx.cfg}")
    log(f"lifeline: {ctx.lifeline}; fd limit {soft}; HAProxy maxconn {ctx.hap_maxconn}; "
        f"{ncpu()} workers/threads")
    todo = [(cases & {"1", "2", "6"}, case_iperf), ("3" in cases, case_wrk),
            ("4" in cases, case_latency), ("5" in cases, case_memory),
            ("7" in cases, case_tls), ("7" in cases, case_tls_idle),
            ("8" in cases, case_population), ("9" in cases, case_storm)]
    try:
        for wanted, fn in todo:
            if not wanted:
                continue
            try:
                fn(ctx)
            except BenchError as e:
                FAILURES.append(f"{fn.__name__}: " + str(e).splitlines()[0])
                print(f"bench: {fn.__name__}: {e}", file=sys.stderr)
            finally:
                PROCS.stop_all()
    except KeyboardInterrupt as e:
        print(f"bench: interrupted ({e}); stopping everything", file=sys.stderr)
        PROCS.stop_all()
        return 130
    finally:
        PROCS.stop_all()

    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{m}/{p}": v for (m, p), v in R.samples.items()}, f, indent=1)
    c = ctx.cfg
    print(f"## lifeline benchmark ({'smoke' if args.smoke else 'full'})\n")
    print(machine() + "\n")
    load_end = open("/proc/loadavg").read().split()[:3]
    print(f"Load average (1/5/15 min) at start {' '.join(ctx.load_start)}, at end "
          f"{' '.join(load_end)}: the benchmark's own load is about 2; more means the "
          f"machine was shared and the numbers are noisier.\n")
    print(f"Medians of {c['reps']} repetition(s), interleaved. iperf3 {c['iperf_time']} s per run; "
          f"wrk -t1 -c{c['wrk_conns']} {c['wrk_time']} s against nginx (1 worker, 1 KiB file); "
          f"latency: {c['lat_conns']} connections, {c['lat_size']} B request/response, a mean "
          f"{c['lat_interval_ms']} ms pause between round trips on each, "
          f"{c['lat_time']} s measured after {c['lat_warmup']} s warm-up; memory: "
          f"{c['idle_conns']} idle connections. Relays: {ncpu()} threads/workers; HAProxy "
          f"maxconn {ctx.hap_maxconn} (fd limit {ctx.nofile}). Ratios: lifeline's value "
          f"divided by HAProxy's (for latency, memory and CPU lower is better).\n")
    if cases & set("123456"):
        print(table(c, cases))
        print("\nThe minimal splice relay (bench/minirelay.c: one blocking thread per direction, "
              "splice(2) through a 1 MiB pipe) and the minimal event-driven relay "
              "(bench/epollrelay.c: one thread, edge-triggered epoll, non-blocking splice(2) "
              "through a 1 MiB pipe, as lifeline's bulk directions) run in cases 1, 2 and 6 "
              "only. Whole-system CPU: "
              "busy time of all CPUs from /proc/stat over the run (relay, client, server and "
              "kernel threads), per GiB received.")
    if "7" in cases:
        print(f"\nCase 7, TLS termination (`tls = on` for lifeline, `bind ... ssl crt` for "
              f"HAProxy with the official settings: tune.bufsize 4096, mode tcp; "
              f"self-signed certificates generated at start). Handshakes: bench/tlsclient.c, "
              f"{c['hs_threads']} threads looping connect + handshake + close for "
              f"{c['hs_time']} s, per wall-clock second; throughput: one TLS connection "
              f"moving {c['tls_mib']} MiB to/from a plain TCP sink/source. TLS 1.3, X25519, "
              f"OpenSSL defaults on the client.\n")
        print(tls_table(c))
    if "8" in cases:
        n = ctx.pop_stages
        print(f"\nCase 8, a WhatsApp-like population (bench/loadgen.c population, "
              f"{ctx.gen_procs} generator processes): {' then '.join(str(x) for x in n)} "
              f"clients, 70% TLS on a chat listener, 30% plain on another, each sending a "
              f"100-400 byte message at exponential intervals of mean {c['pop_interval']} s "
              f"and waiting for its echo (loadgen echo behind the relay); one client in "
              f"{c['pop_media_every']} downloads 200 KiB-2 MiB through the media listener every "
              f"{c['pop_media_period']} s (tlsclient serve behind it). Each stage: all clients "
              f"up, {c['pop_warmup']} s warm-up, then {'/'.join(str(x) for x in c['pop_time'])} "
              f"s measured (direct: {'/'.join(str(x) for x in c['pop_direct_time'])} s; all "
              f"plain, no relay). RSS at the window's end; CPU = utime+stime over the window "
              f"per client-hour; round trips of the messages sent in the window. A fresh relay "
              f"per path and repetition. HAProxy tuned: 16 KiB buffers, splice-auto, EC P-256. "
              f"Clients per core at 10% CPU = 360 CPU s an hour / CPU per client-hour.\n")
        print(pop_table(ctx))
    if "9" in cases:
        print(f"\nCase 9, a reconnect storm: {ctx.storm_conns} clients (70% TLS, each after "
              f"one exchange, holding a session ticket) reset at once (SO_LINGER 0) and "
              f"reconnect at uniform random points of the next second, half of the TLS ones "
              f"offering their ticket; back = the echo of a first message is in; failed "
              f"attempts are retried after 0.5-1.5 s; bounded by {c['storm_timeout']} s. Relay "
              f"CPU from the reset until all are back, per client.\n")
        print(storm_table())
    print("\nTargets (information only):\n")
    print(targets())
    print("\nIssue 16's per-unit targets (information only):\n")
    print(targets16(ctx))
    if FAILURES:
        print("\nFailures:\n")
        for f in FAILURES:
            print(f"- {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
