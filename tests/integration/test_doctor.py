"""`lifeline doctor` (issue 13, part 4): each check driven both ways, a
setup that passes and one that fails, with real sockets, certificates
and daemons.  Ports come from the kernel (port 0, the ports file, or a
socket the test holds); the daemon-backed cases give doctor a copy of
the daemon's configuration with the ports it actually bound.  The
unprivileged run happens in a network namespace of its own, where the
privileged ports 443 and 587 belong to nobody else."""

import datetime
import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import (LIFELINE_BIN, SANITIZER_MARKERS, SLOW, Blackhole, Server,
                      fmt_addr, free_port, h_echo, make_config, recv_exact,
                      start_daemon, wait_for)
from netns import host_factory  # noqa: F401 (fixture)
from stats_helpers import wait_metric
from tls_helpers import run

LINE = re.compile(r"^(ok|warn|fail) +(\S.*)$")
SUMMARY = re.compile(r"^doctor: (\d+) ok, (\d+) warn, (\d+) fail \(")
# doctor's own bound on a whole run (DOCTOR_BUDGET_MS), plus start-up.
RUN_TIMEOUT = 60 + 15 * SLOW


class Result:
    def __init__(self, proc, elapsed):
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.elapsed = elapsed
        self.lines = []
        for m in SANITIZER_MARKERS:
            assert m not in self.err, f"doctor: {m}\n{self.err[-4000:]}"
        lines = self.out.splitlines()
        assert lines and SUMMARY.match(lines[-1]), \
            f"no summary line:\n{self.out}\n{self.err}"
        for ln in lines[:-1]:
            m = LINE.match(ln)
            assert m, f"not an ok/warn/fail line: {ln!r}\n{self.out}"
            self.lines.append((m.group(1), m.group(2)))
        ok, warn, fail = map(int, SUMMARY.match(lines[-1]).groups())
        assert (ok, warn, fail) == tuple(
            sum(1 for lv, _ in self.lines if lv == w)
            for w in ("ok", "warn", "fail")), self.out
        # Exit status: 0 exactly when nothing failed.
        assert self.rc == (1 if fail else 0), \
            f"exit {self.rc} with {fail} fail lines:\n{self.out}"

    def find(self, prefix, contains=""):
        return [(lv, t) for lv, t in self.lines
                if t.startswith(prefix) and contains in t]

    def one(self, prefix, contains=""):
        got = self.find(prefix, contains)
        assert len(got) == 1, \
            f"want one line {prefix!r} with {contains!r}, got {got}:\n{self.out}"
        return got[0]

    def level(self, prefix, contains=""):
        return self.one(prefix, contains)[0]

    def __repr__(self):
        return self.out


def doctor(tmp_path, config, *args, nofile=None, env=None, name="doctor",
           wrap=(), conf_path=None):
    """Runs `lifeline doctor -c CONFIG ARGS`; returns a checked Result."""
    if conf_path is None:
        conf_path = tmp_path / f"{name}.conf"
        conf_path.write_text(config)

    def preexec():
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    e = dict(os.environ)
    e.update(env or {})
    t0 = time.monotonic()
    p = subprocess.run(list(wrap) + [LIFELINE_BIN, "doctor", "-c",
                                     str(conf_path)] + list(args),
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=RUN_TIMEOUT, preexec_fn=preexec,
                       env=e)
    return Result(p, time.monotonic() - t0)


def stats(addr):
    return f"\n[stats]\nlisten = {addr}\n"


def config(upstreams, listeners, stats_addr=None, global_=None, extra=""):
    """make_config with a stats listener on a free loopback port."""
    if stats_addr is None:
        stats_addr = f"127.0.0.1:{free_port()}"
    return make_config(upstreams, listeners, global_=global_,
                       extra=stats(stats_addr) + extra)


def live(tmp_path, upstreams, listeners, global_=None, name="relay"):
    """Starts a daemon on port 0; returns it with the configuration that
    describes it as it runs (the ports it bound), for doctor."""
    d = start_daemon(tmp_path, make_config(
        upstreams, listeners, global_=global_,
        extra=stats("127.0.0.1:0")), name=name)
    bound = {}
    for lname, spec in listeners.items():
        spec = dict(spec)
        spec["bind"] = [fmt_addr(*a) for a in d.ports[lname]]
        bound[lname] = spec
    return d, make_config(upstreams, bound, global_=global_,
                          extra=stats(fmt_addr(*d.addr("stats"))))


# --------------------------------------------------------------------------
# config


def test_config_loads_or_stops(tmp_path, echo):
    r = doctor(tmp_path, config({"up": [echo.spec]},
                                {"plain": {"upstream": "up"}}))
    assert r.level("config:") == "ok"
    assert "1 listener, 1 upstream group" in r.one("config:")[1]

    bad = config({"up": [echo.spec]}, {"plain": {"upstream": "up"}},
                 extra="\n[listen other]\nbind = 127.0.0.1:0\nupstream = up\n"
                       "no-such-key = 1\n")
    r = doctor(tmp_path, bad, name="bad")
    lv, text = r.one("config:")
    assert lv == "fail"
    assert re.search(r"bad\.conf:\d+", text), text
    assert "no-such-key" in text
    # Nothing that needs the configuration ran.
    assert len(r.lines) == 1, r.out
    assert r.rc == 1


# --------------------------------------------------------------------------
# ports


def test_port_free_busy(tmp_path, echo):
    free = free_port()
    r = doctor(tmp_path, config({"up": [echo.spec]},
                                {"plain": {"upstream": "up",
                                           "bind": f"127.0.0.1:{free}"}}))
    assert r.level("port: %d " % free) == "ok"
    assert "is free" in r.one("port: %d " % free)[1]

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = doctor(tmp_path, config(
            {"up": [echo.spec]},
            {"plain": {"upstream": "up", "bind": f"127.0.0.1:{port}"}}),
            name="busy")
    finally:
        busy.close()
    lv, text = r.one("port: %d " % port)
    assert lv == "fail", r.out
    assert "in use by another program" in text and "listen plain" in text
    # The port and the listener, never the process holding it.
    assert "python" not in r.out and str(os.getpid()) not in r.out
    assert r.rc == 1


def test_port_held_by_lifeline(tmp_path, echo):
    d, conf = live(tmp_path, {"up": [echo.spec]},
                   {"plain": {"upstream": "up"}})
    r = doctor(tmp_path, conf)
    port = d.port("plain")
    lv, text = r.one("port: %d " % port)
    assert lv == "ok" and "held by the running lifeline" in text, r.out
    lv, text = r.one("port: %d " % d.port("stats"))
    assert lv == "ok" and "held by the running lifeline" in text, r.out
    assert r.level("relay:", "answers on its stats listener") == "ok"
    assert r.rc == 0, r.out

    # The same port, the relay gone and something else on it: fail.
    d.stop()
    squat = socket.socket()
    squat.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squat.bind(("127.0.0.1", port))
    squat.listen(1)
    try:
        r = doctor(tmp_path, conf, name="squat")
    finally:
        squat.close()
    assert r.level("port: %d " % port) == "fail", r.out
    assert r.level("relay:") == "ok" and not r.find("relay:", "ready")


def test_port_held_by_lifeline_as_written(tmp_path, host_factory, echo):
    """The file may write a wildcard as "*": the relay lists the address
    it bound, 0.0.0.0:PORT, and doctor compares addresses, not text.  In
    a namespace of its own: the relay binds the wildcard there."""
    host = host_factory(name="star")
    with host.inside():
        up = Server(h_echo, name="star-echo")
        d = start_daemon(tmp_path, make_config(
            {"up": [up.spec]}, {"any": {"upstream": "up",
                                        "bind": "0.0.0.0:0"}},
            extra=stats("127.0.0.1:0")), name="star")
    port = d.port("any")
    conf = make_config({"up": [up.spec]},
                       {"any": {"upstream": "up", "bind": f"*:{port}"}},
                       extra=stats(fmt_addr(*d.addr("stats"))))
    r = doctor(tmp_path, conf, wrap=["ip", "netns", "exec", host.ns])
    lv, text = r.one("port: %d " % port)
    assert lv == "ok" and "held by the running lifeline" in text, r.out
    assert r.level("relay: serves") == "ok", r.out


def h_mute(c, rec):
    """Takes the request and never answers (until the peer leaves)."""
    c.settimeout(30)
    while c.recv(4096):
        pass


def test_stats_listener_never_answers(tmp_path, echo):
    """Something on the stats port accepts and says nothing: doctor waits
    2 s for it (DOCTOR_HTTP_MS), not more, and finds no relay there."""
    mute = Server(h_mute, name="mute")
    r = doctor(tmp_path, config({"up": [echo.spec]},
                                {"plain": {"upstream": "up"}},
                                stats_addr=mute.spec))
    assert r.level("relay:", "no lifeline answers") == "ok", r.out
    lv, text = r.one("port: %d " % mute.port)
    assert lv == "fail" and "another program" in text, r.out
    assert r.elapsed < 2.0 + 2.0 * SLOW, f"doctor took {r.elapsed:.1f}s"


# --------------------------------------------------------------------------
# fd limit


def test_fd_limit(tmp_path, echo):
    conf = config({"up": [echo.spec]}, {"plain": {"upstream": "up"}},
                  global_={"maxconn": "1000", "workers": "2"})
    # 2 per connection plus listening sockets and pipes: above 2000.
    r = doctor(tmp_path, conf, nofile=(4096, 4096))
    lv, text = r.one("fd limit:")
    assert lv == "ok" and "4096" in text, r.out

    r = doctor(tmp_path, conf, nofile=(256, 256), name="low")
    lv, text = r.one("fd limit:")
    assert lv == "fail", r.out
    assert "maxconn 1000" in text and "256" in text and "LimitNOFILE" in text
    assert r.rc == 1

    # Near the arithmetic: 2 x 1000 + 2 workers x (2 addresses + 8) + 300.
    r = doctor(tmp_path, conf, nofile=(2319, 2319), name="near")
    lv, text = r.one("fd limit:")
    assert lv == "fail" and "needs about 2320" in text, r.out
    r = doctor(tmp_path, conf, nofile=(2320, 2320), name="enough")
    assert r.level("fd limit:") == "ok", r.out

    # Soft limit low, hard limit enough: the shell can raise it.
    r = doctor(tmp_path, conf, nofile=(256, 4096), name="soft")
    lv, text = r.one("fd limit:")
    assert lv == "warn" and "ulimit -n" in text, r.out


# --------------------------------------------------------------------------
# clock and certificates


def test_clock_after_build(tmp_path, echo):
    r = doctor(tmp_path, config({"up": [echo.spec]},
                                {"plain": {"upstream": "up"}}))
    lv, text = r.one("clock:")
    assert lv == "ok" and "after the build date" in text, r.out


@pytest.mark.hooks_only
def test_clock_before_build(tmp_path, echo):
    """Tests cannot set the clock back: the sanitized build lets them put
    the build date in the future instead (LIFELINE_TEST_BUILD_EPOCH)."""
    future = int(time.time()) + 86400 * 30
    r = doctor(tmp_path, config({"up": [echo.spec]},
                                {"plain": {"upstream": "up"}}),
               env={"LIFELINE_TEST_BUILD_EPOCH": str(future)})
    lv, text = r.one("clock:")
    assert lv == "fail" and "before this build" in text, r.out
    assert r.rc == 1


def openssl_cert(dirpath, name, days, cn="relay.test",
                 san="DNS:relay.test,DNS:alt.relay.test"):
    cert, key = dirpath / f"{name}.crt", dirpath / f"{name}.key"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", str(days),
         "-subj", f"/CN={cn}", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(cert)], check=True)
    return cert, key


def dated_cert(dirpath, name, not_before, not_after):
    """A certificate valid from not_before to not_after (datetimes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            "relay.test")])
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    cp, kp = dirpath / f"{name}.crt", dirpath / f"{name}.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cp, kp


def tls_conf(echo, cert, key):
    return config({"up": [echo.spec]},
                  {"tls": {"upstream": "up", "tls": "on",
                           "cert": str(cert), "key": str(key)}})


def test_cert_fine_and_expiring(tmp_path, echo):
    cert, key = openssl_cert(tmp_path, "long", 90)
    r = doctor(tmp_path, tls_conf(echo, cert, key))
    lv, text = r.one("certificate (listen tls):")
    assert lv == "ok", r.out
    assert "key matches" in text
    assert "DNS:relay.test, DNS:alt.relay.test" in text
    assert re.search(r"\((89|90) days\)", text), text

    cert, key = openssl_cert(tmp_path, "short", 3)
    r = doctor(tmp_path, tls_conf(echo, cert, key), name="short")
    lv, text = r.one("certificate (listen tls):")
    assert lv == "warn", r.out
    assert re.search(r"\([23] days: renew it soon", text), text
    assert r.rc == 0


def test_cert_key_mismatch(tmp_path, echo):
    cert, _ = openssl_cert(tmp_path, "a", 90)
    _, other = openssl_cert(tmp_path, "b", 90)
    r = doctor(tmp_path, tls_conf(echo, cert, other))
    lv, text = r.one("certificate (listen tls):")
    assert lv == "fail" and "does not match" in text, r.out
    assert r.rc == 1


def test_cert_outside_validity(tmp_path, echo):
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    cert, key = dated_cert(tmp_path, "future", now + 10 * day, now + 100 * day)
    r = doctor(tmp_path, tls_conf(echo, cert, key))
    lv, text = r.one("certificate (listen tls):")
    assert lv == "fail" and "the clock is behind" in text, r.out

    cert, key = dated_cert(tmp_path, "old", now - 100 * day, now - day)
    r = doctor(tmp_path, tls_conf(echo, cert, key), name="old")
    lv, text = r.one("certificate (listen tls):")
    assert lv == "fail" and "expired" in text, r.out


# --------------------------------------------------------------------------
# upstreams


def test_upstream_accepts_refuses(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    r = doctor(tmp_path, config(
        {"up": [echo.spec], "gone": [dead]},
        {"a": {"upstream": "up"}, "b": {"upstream": "gone"}}))
    lv, text = r.one(f"upstream up: {echo.spec}")
    assert lv == "ok" and "accepted a TCP connection" in text, r.out
    lv, text = r.one(f"upstream gone: {dead}")
    assert lv == "fail" and "refused" in text, r.out
    assert r.rc == 1


def test_upstream_blackholed_within_timeout(tmp_path):
    hole = Blackhole()
    r = doctor(tmp_path, config(
        {"hole": [hole.spec]}, {"a": {"upstream": "hole"}}),
        "--outside", "127.0.0.1")
    lv, text = r.one(f"upstream hole: {hole.spec}")
    assert lv == "fail" and "did not answer within 1000 ms" in text, r.out
    # connect = 1s (make_config), the outside probe of a closed port
    # is refused at once: the whole run stays near one connect timeout.
    assert r.elapsed < 1.0 + 3.0 * SLOW, f"doctor took {r.elapsed:.1f}s"


def h_pp_quiet(c, rec):
    """Reads a PROXY v2 header and waits, silent, until the peer leaves."""
    c.settimeout(5)
    hdr = recv_exact(c, 16)
    rec["header"] = hdr + recv_exact(c, int.from_bytes(hdr[14:16], "big"))
    while c.recv(100):
        pass


def h_close_on_bytes(c, rec):
    """A server that does not expect a PROXY header: closes on one."""
    c.settimeout(5)
    rec["got"] = c.recv(100)


def test_upstream_send_proxy(tmp_path):
    quiet = Server(h_pp_quiet, name="pp-quiet")
    picky = Server(h_close_on_bytes, name="picky")
    r = doctor(tmp_path, config(
        {"pp": {"server": [quiet.spec], "send-proxy": "v2"},
         "nopp": {"server": [picky.spec]},
         "wrongpp": {"server": [picky.spec], "send-proxy": "v2"}},
        {"a": {"upstream": "pp"}, "b": {"upstream": "nopp"},
         "c": {"upstream": "wrongpp"}}))
    lv, text = r.one(f"upstream pp: {quiet.spec}")
    assert lv == "ok" and "and a PROXY v2 LOCAL" in text, r.out
    quiet.wait_done(1)
    hdr = quiet.records[0]["header"]
    assert hdr[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and hdr[12] == 0x20, hdr
    assert r.level(f"upstream nopp: {picky.spec}") == "ok"
    lv, text = r.one(f"upstream wrongpp: {picky.spec}")
    assert lv == "fail" and "closed it within 500 ms" in text, r.out
    assert "send-proxy = none" in text
    assert r.rc == 1


# --------------------------------------------------------------------------
# exposure


def test_stats_public_address(tmp_path, echo):
    lst = {"plain": {"upstream": "up"}}
    port = free_port()
    r = doctor(tmp_path, config({"up": [echo.spec]}, lst,
                                stats_addr=f"0.0.0.0:{port}"))
    lv, text = r.one("stats:")
    assert lv == "fail" and "public = on" in text and "wildcard" in text, r.out
    assert r.rc == 1

    r = doctor(tmp_path, config({"up": [echo.spec]}, lst,
                                stats_addr=f"0.0.0.0:{port}",
                                extra="public = on\n"), name="meant")
    lv, text = r.one("stats:")
    assert lv == "ok" and "as 'public = on' says" in text, r.out

    # A private address: reachable from that network only, a warning.
    r = doctor(tmp_path, config({"up": [echo.spec]}, lst,
                                stats_addr=f"10.77.99.1:{port}"),
               name="private")
    lv, text = r.one("stats:")
    assert lv == "warn" and "private address" in text, r.out

    r = doctor(tmp_path, config({"up": [echo.spec]}, lst), name="lo")
    lv, text = r.one("stats:")
    assert lv == "ok" and "from this host only" in text, r.out


def test_unusual_port_on_wildcard(tmp_path, echo):
    port = free_port("0.0.0.0")
    r = doctor(tmp_path, config({"up": [echo.spec]},
                                {"odd": {"upstream": "up",
                                         "bind": f"0.0.0.0:{port}"}}))
    lv, text = r.one("exposure:")
    assert lv == "warn" and f"{port} (odd)" in text, r.out
    assert "fingerprint" in text or "tell apart" in text

    r = doctor(tmp_path, config({"up": [echo.spec]},
                                {"odd": {"upstream": "up",
                                         "bind": f"127.0.0.1:{port}"}}),
               name="lo")
    lv, text = r.one("exposure:")
    assert lv == "ok" and "no listener binds a public address" in text, r.out


# --------------------------------------------------------------------------
# the running relay


def test_relay_ready_quiet(tmp_path, echo):
    d, conf = live(tmp_path, {"up": [echo.spec]},
                   {"plain": {"upstream": "up"}, "other": {"upstream": "up"}})
    r = doctor(tmp_path, conf)
    assert r.level("relay: ready") == "ok", r.out
    lv, text = r.one("relay: serves")
    assert lv == "ok" and "the 2 configured listeners" in text, r.out
    assert r.level("relay: no connection refused") == "ok", r.out
    assert r.rc == 0, r.out

    # A configuration the relay does not serve (a listener it lacks).
    extra = make_config({"up": [echo.spec]}, {"new": {"upstream": "up"}})
    more = conf + extra[extra.index("[listen new]"):]
    r = doctor(tmp_path, more, name="more")
    lv, text = r.one("relay: serves another configuration")
    assert lv == "fail" and "listen new is not served" in text, r.out


class Knocker:
    """Connects to addr again and again from source until stopped: each
    connection is refused or cut by the relay (its upstream is dead)."""

    def __init__(self, addr, source="127.0.0.77"):
        self.addr, self.source = addr, source
        self.stop_ev = threading.Event()
        self.n = 0
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            s = socket.socket()
            s.settimeout(2)
            try:
                s.bind((self.source, 0))
                s.connect(self.addr)
                s.recv(10)
            except OSError:
                pass
            finally:
                s.close()
            self.n += 1
            self.stop_ev.wait(0.05)

    def stop(self):
        self.stop_ev.set()
        self.t.join(5)
        assert not self.t.is_alive()


def test_relay_not_ready_and_failures_growing(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    d, conf = live(tmp_path,
                   {"up": [echo.spec],
                    "dead": {"server": [dead], "check-interval": "1s"}},
                   {"plain": {"upstream": "up"},
                    "nowhere": {"upstream": "dead"}})
    wait_metric(d.addr("stats"), "lifeline_upstream_server_up", 0, 3 * SLOW,
                upstream="dead", server=dead)
    r = doctor(tmp_path, conf)
    lv, text = r.one("relay: not ready")
    assert lv == "fail" and "503" in text, r.out
    assert r.level("relay: no connection refused") == "ok", r.out

    k = Knocker(d.addr("nowhere"))
    try:
        wait_for(lambda: k.n >= 3, 5 * SLOW, what="first knocks")
        r = doctor(tmp_path, conf, name="knocked")
    finally:
        k.stop()
    lv, text = r.one("relay: in 2 s")
    assert lv == "fail" and "closed because no upstream server answered" in \
        text, r.out
    # doctor never prints a client's address: it has none, and the
    # relay's stats expose none.
    assert "127.0.0.77" not in r.out + r.err


# --------------------------------------------------------------------------
# --outside


def test_outside_plain_and_tls(tmp_path, echo):
    d, conf = live(tmp_path, {"up": [echo.spec]},
                   {"plain": {"upstream": "up"},
                    "tls": {"upstream": "up", "tls": "on",
                            "tls-names": "relay.test"}})
    r = doctor(tmp_path, conf, "--outside", "127.0.0.1")
    p, t = d.port("plain"), d.port("tls")
    lv, text = r.one(f"outside: 127.0.0.1:{p} (listen plain): TCP")
    assert lv == "ok" and "TCP connect ok" in text, r.out
    assert r.level(f"outside: 127.0.0.1:{t} (listen tls): TCP") == "ok"
    lv, text = r.one(f"outside: 127.0.0.1:{t} (listen tls): TLS with SNI "
                     "relay.test")
    assert lv == "ok" and "handshake ok, TLSv1.3" in text, r.out
    assert "CN=relay.test" in text
    lv, text = r.one(f"outside: 127.0.0.1:{t} (listen tls): TLS without SNI")
    assert lv == "ok" and "handshake ok" in text, r.out
    # A plain listener gets no TLS probe.
    assert not r.find(f"outside: 127.0.0.1:{p} (listen plain): TLS")
    assert r.rc == 0, r.out


def test_outside_closed_and_not_tls(tmp_path, echo):
    closed = free_port()
    r = doctor(tmp_path, config(
        {"up": [echo.spec]},
        {"shut": {"upstream": "up", "bind": f"127.0.0.1:{closed}"},
         # An echo server where a TLS listener should be.
         "fake": {"upstream": "up", "tls": "on",
                  "bind": f"127.0.0.1:{echo.port}"}}),
        "--outside", "127.0.0.1")
    lv, text = r.one(f"outside: 127.0.0.1:{closed} (listen shut)")
    assert lv == "fail" and "refused" in text, r.out
    assert r.level(f"outside: 127.0.0.1:{echo.port} (listen fake): TCP") == "ok"
    lv, text = r.one(f"outside: 127.0.0.1:{echo.port} (listen fake): TLS "
                     "without SNI")
    assert lv == "fail", r.out
    assert r.rc == 1


def test_outside_blackholed(tmp_path, echo):
    hole = Blackhole()
    r = doctor(tmp_path, config(
        {"up": [echo.spec]},
        {"hole": {"upstream": "up", "bind": hole.spec}}),
        "--outside", "127.0.0.1")
    lv, text = r.one(f"outside: 127.0.0.1:{hole.addr[1]} (listen hole)")
    assert lv == "fail" and "no answer within the timeout" in text, r.out
    assert r.elapsed < 3.0 + 3.0 * SLOW, f"doctor took {r.elapsed:.1f}s"


# --------------------------------------------------------------------------
# no root needed


@pytest.fixture
def world_dir():
    """A directory user nobody can read (pytest's tmp_path is root's)."""
    d = tempfile.mkdtemp(prefix="lifeline-doctor-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_unprivileged(tmp_path, host_factory, world_dir):
    """As nobody, in a namespace of its own: ports 443 and 587 are the
    real ones (nothing else can hold them there), the stats port too."""
    if shutil.which("setpriv") is None:
        pytest.fail("needs setpriv (util-linux)")
    host = host_factory(name="doctor")
    with host.inside():
        up = Server(h_echo, name="ns-echo")
    conf = os.path.join(world_dir, "relay.conf")
    with open(conf, "w") as f:
        f.write(make_config(
            {"up": [up.spec]},
            {"chat": {"upstream": "up", "tls": "on", "bind": "0.0.0.0:443",
                      "tls-names": "relay.test"},
             "media": {"upstream": "up", "bind": "0.0.0.0:587"}},
            global_={"maxconn": "1000"}, extra=stats("127.0.0.1:8199")))
    os.chmod(conf, 0o644)
    wrap = ["ip", "netns", "exec", host.ns, "setpriv", "--reuid=nobody",
            "--regid=nogroup", "--clear-groups"]
    r = doctor(tmp_path, None, wrap=wrap, conf_path=conf,
               nofile=(4096, 4096))
    lv, text = r.one("port: 443 ")
    assert lv == "ok" and "needs root or CAP_NET_BIND_SERVICE" in text, r.out
    assert r.level(f"upstream up: {up.spec}") == "ok", r.out
    assert r.level("certificate (listen chat):") == "ok", r.out
    assert r.level("exposure:") == "ok", r.out
    assert r.rc == 0, r.out

    # A privileged port held by someone else is still seen, unprivileged.
    with host.inside():
        squat = socket.socket()
        squat.bind(("0.0.0.0", 443))
        squat.listen(1)
    try:
        r = doctor(tmp_path, None, wrap=wrap, conf_path=conf,
                   nofile=(4096, 4096))
    finally:
        squat.close()
    lv, text = r.one("port: 443 ")
    assert lv == "fail" and "in use by another program" in text, r.out


# --------------------------------------------------------------------------
# command line


def test_usage(tmp_path):
    p = subprocess.run([LIFELINE_BIN, "doctor", "--help"], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == 0 and "--outside HOST" in p.stdout, p
    assert "within 60 s" in p.stdout
    p = subprocess.run([LIFELINE_BIN, "--help"], capture_output=True,
                       text=True, timeout=10)
    assert "lifeline doctor" in p.stdout, p.stdout
    for bad in (["--nope"], ["-c"], ["-c", "a", "--preset", "minimal"],
                ["extra"]):
        p = subprocess.run([LIFELINE_BIN, "doctor"] + bad, capture_output=True,
                           text=True, timeout=10)
        assert p.returncode == 2 and p.stderr.startswith("lifeline doctor:"), \
            (bad, p)
        assert p.stdout == ""


def test_preset_without_file(tmp_path, host_factory):
    """--preset works like -c.  In an empty namespace: the preset's
    upstreams are WhatsApp's servers, never to be dialled by a test (their
    names cannot resolve there, or their addresses be reached)."""
    host = host_factory(name="preset")
    p = subprocess.run(["ip", "netns", "exec", host.ns, LIFELINE_BIN,
                        "doctor", "--preset", "minimal"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert p.stdout.splitlines()[0].startswith(
        "ok    config: <preset minimal> loads"), p.stdout
    assert "ok    exposure: public listeners use only 443, 80 and 587" in \
        p.stdout, p.stdout
    assert "upstream chat: g.whatsapp.net:443" in p.stdout, p.stdout
