"""Command line and configuration: errors with file:line, --check,
--print-config round trip, presets, unsupported listeners, exit codes."""

import os
import pathlib
import re
import shutil
import signal
import socket
import tempfile

import pytest

from conftest import (
    Daemon, free_port, make_config, run_cli, start_daemon, try_echo)

GOOD = """\
[global]
workers = 2
maxconn = 1000
drain-timeout = 5s

[timeouts]
connect = 1s   # inline comment
client = 3s    ; other inline comment
server = 3s
client-fin = 1s
server-fin = 1s

# a full-line comment
; another one
[upstream up]
server = 127.0.0.1:{p1}
server = localhost:{p2}
send-proxy = none

[listen plain]
bind = 127.0.0.1:0
upstream = up
maxconn = 100
"""


def good(p1=1, p2=2):
    return GOOD.format(p1=p1, p2=p2)


def parse_ini(text):
    """Tiny INI reader keeping repeated keys: {section: {key: [values]}}."""
    out = {}
    cur = None
    for raw in text.splitlines():
        line = re.split(r"\s[#;]", raw, maxsplit=1)[0].strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            cur = " ".join(line.strip("[]").split())
            assert cur not in out, f"section {cur} printed twice"
            out[cur] = {}
            continue
        k, v = line.split("=", 1)
        assert cur is not None, f"key outside section: {raw}"
        out[cur].setdefault(k.strip(), []).append(v.strip())
    return out


def duration_ms(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", v)
    assert m, f"bad duration printed: {v}"
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}[m.group(2)]


def strip_comments(text):
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith(("#", ";")))


# --- configuration errors: (name, text, marker of the line to report, exact?)
# exact=False: a semantic error about a whole section; any line from the
# section header to the marker is accepted.

BASE_TAIL = """\
[upstream up]
server = 127.0.0.1:9
[listen a]
bind = 127.0.0.1:0
upstream = up
"""

ERRORS = [
    ("unknown-key", "[global]\nworkers = 1\n" + BASE_TAIL + "foo = 1\n", "foo = 1", True),
    ("unknown-section-kind", BASE_TAIL + "[frobnicate x]\nkey = 1\n", "[frobnicate x]", True),
    ("duration-5x", "[timeouts]\nconnect = 5x\n" + BASE_TAIL, "connect = 5x", True),
    ("duration-abc", "[timeouts]\nclient = abc\n" + BASE_TAIL, "client = abc", True),
    ("duration-no-unit", "[timeouts]\nserver = 5\n" + BASE_TAIL, "server = 5", True),
    ("maxconn-negative", "[global]\nmaxconn = -1\n" + BASE_TAIL, "maxconn = -1", True),
    ("maxconn-lots", BASE_TAIL + "maxconn = lots\n", "maxconn = lots", True),
    ("bind-bad-ip", BASE_TAIL.replace("bind = 127.0.0.1:0", "bind = 300.1.1.1:80"),
     "bind = 300.1.1.1:80", True),
    ("bind-bad-port", BASE_TAIL.replace("bind = 127.0.0.1:0", "bind = 127.0.0.1:99999"),
     "bind = 127.0.0.1:99999", True),
    ("bind-no-port", BASE_TAIL.replace("bind = 127.0.0.1:0", "bind = 127.0.0.1"),
     "bind = 127.0.0.1", True),
    ("unknown-upstream", BASE_TAIL.replace("upstream = up", "upstream = nosuch"),
     "upstream = nosuch", False),
    ("upstream-without-server", BASE_TAIL + "[upstream empty]\nsend-proxy = none\n"
     "[listen b]\nbind = 127.0.0.1:0\nupstream = empty\n", "[upstream empty]", False),
    ("listener-without-bind", BASE_TAIL + "[listen nobind]\nupstream = up\n",
     "[listen nobind]", False),
    ("duplicate-section", BASE_TAIL + "[listen a]\nbind = 127.0.0.1:0\nupstream = up\n",
     "DUP", True),
    ("key-outside-section", "workers = 2\n" + BASE_TAIL, "workers = 2", True),
    ("send-proxy-v3", BASE_TAIL.replace("server = 127.0.0.1:9",
                                        "server = 127.0.0.1:9\nsend-proxy = v3"),
     "send-proxy = v3", True),
    ("log-level-loud", "[global]\nlog-level = loud\n" + BASE_TAIL, "log-level = loud", True),
]


def _expected_lines(text, marker, exact):
    lines = text.splitlines()
    if marker == "DUP":  # the second header of a duplicated section
        idx = [i for i, l in enumerate(lines, 1) if l.strip() == "[listen a]"]
        return {idx[1]}
    hit = next(i for i, l in enumerate(lines, 1) if l.strip() == marker)
    if exact:
        return {hit}
    # the enclosing section: from its header to its last line
    start = max(i for i, l in enumerate(lines[:hit], 1) if l.startswith("["))
    end = start
    for i in range(start + 1, len(lines) + 1):
        if lines[i - 1].startswith("["):
            break
        end = i
    return set(range(start, end + 1))


@pytest.mark.parametrize("mode", ["run", "check"])
@pytest.mark.parametrize("name,text,marker,exact", ERRORS, ids=[e[0] for e in ERRORS])
def test_config_error_names_file_and_line(tmp_path, mode, name, text, marker, exact):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    pf = tmp_path / "ports"
    if mode == "run":
        r = run_cli(["-c", str(conf), "--ports-file", str(pf)])
        assert r.returncode == 2, f"exit {r.returncode}, stderr: {r.stderr!r}"
        assert not pf.exists(), "ports file written for an invalid config"
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1, f"expected a one-line message, got: {r.stderr!r}"
        msg = lines[0]
    else:
        r = run_cli(["--check", "-c", str(conf)])
        assert r.returncode == 1, f"--check exit {r.returncode}, output: {r.stderr!r}"
        msg = r.stdout + r.stderr
    want = _expected_lines(text, marker, exact)
    m = re.search(re.escape(str(conf)) + r":(\d+)", msg)
    assert m, f"message does not name {conf}:LINE: {msg!r}"
    assert int(m.group(1)) in want, f"names line {m.group(1)}, expected {sorted(want)}: {msg!r}"


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.conf"
    r = run_cli(["-c", str(missing), "--ports-file", str(tmp_path / "p")])
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and str(missing) in lines[0], r.stderr
    r = run_cli(["--check", "-c", str(missing)])
    assert r.returncode == 1
    assert str(missing) in r.stdout + r.stderr


def test_check_accepts_valid_config(tmp_path):
    conf = tmp_path / "good.conf"
    conf.write_text(good())
    r = run_cli(["--check", "-c", str(conf)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_print_config_round_trip(tmp_path, echo):
    conf = tmp_path / "good.conf"
    conf.write_text(good(free_port(), echo.port))
    r = run_cli(["--print-config", "-c", str(conf)])
    assert r.returncode == 0, r.stderr
    printed = r.stdout
    ini = parse_ini(printed)
    # our values survive
    assert ini["global"]["workers"] == ["2"]
    assert ini["global"]["maxconn"] == ["1000"]
    assert duration_ms(ini["global"]["drain-timeout"][0]) == 5000
    assert duration_ms(ini["timeouts"]["connect"][0]) == 1000
    assert duration_ms(ini["timeouts"]["client"][0]) == 3000
    up = ini["upstream up"]["server"]
    assert len(up) == 2 and up[1] == f"localhost:{echo.port}", up
    assert ini["listen plain"]["bind"] == ["127.0.0.1:0"]
    assert ini["listen plain"]["upstream"] == ["up"]
    assert ini["listen plain"]["maxconn"] == ["100"]
    # defaults are included
    assert "log-level" in ini["global"]
    assert "handshake" in ini["timeouts"]
    assert "send-proxy" in ini["upstream up"]
    # the printed config is valid, and printing it again changes nothing
    out = tmp_path / "printed.conf"
    out.write_text(printed)
    r2 = run_cli(["--check", "-c", str(out)])
    assert r2.returncode == 0, r2.stdout + r2.stderr
    r3 = run_cli(["--print-config", "-c", str(out)])
    assert r3.returncode == 0
    assert strip_comments(r3.stdout) == strip_comments(printed)
    # and the daemon runs with it (failover to localhost included)
    d = Daemon(tmp_path, printed, name="printed").start()
    assert try_echo(d.addr("plain"))


WHATSAPP_LISTENERS = {
    "http": 80, "http-lb": 8080, "https": 443, "https-lb": 8443,
    "jabber": 5222, "jabber-lb": 8222, "media": 587, "media-alt": 7777,
    "media-lb": 8587,
}


# Where a load balancer talks from: loopback and private ranges.
LB_TRUSTED = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
              "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]


def _printed_preset(tmp_path, name):
    r = run_cli(["--print-config", "--preset", name])
    assert r.returncode == 0, r.stderr
    f = tmp_path / f"{name}.conf"
    f.write_text(r.stdout)
    chk = run_cli(["--check", "-c", str(f)])
    assert chk.returncode == 0, f"printed preset {name} fails --check: {chk.stdout}{chk.stderr}"
    return parse_ini(r.stdout)


def test_preset_whatsapp_prints(tmp_path):
    ini = _printed_preset(tmp_path, "whatsapp")
    # without -c the whatsapp preset applies
    r = run_cli(["--print-config"])
    assert r.returncode == 0, r.stderr
    assert parse_ini(r.stdout) == ini
    listeners = {k.split(" ", 1)[1]: v for k, v in ini.items() if k.startswith("listen ")}
    assert set(listeners) == set(WHATSAPP_LISTENERS)
    for name, port in WHATSAPP_LISTENERS.items():
        binds = listeners[name]["bind"]
        assert binds and all(b.endswith(f":{port}") for b in binds), (name, binds)
        want_up = "media" if name.startswith("media") else "chat"
        assert listeners[name]["upstream"] == [want_up]
        assert listeners[name]["tls"] == ["on" if name.startswith("https") else "off"]
        assert listeners[name]["accept-proxy"] == ["on" if name.endswith("-lb") else "off"]
        want_trusted = LB_TRUSTED if name.endswith("-lb") else []
        assert listeners[name].get("trusted-proxies", []) == want_trusted, name
    chat = ini["upstream chat"]
    assert sorted(chat["server"]) == sorted(
        f"{h}:{p}" for h in ("g.whatsapp.net", "g-fallback.whatsapp.net")
        for p in (5222, 443, 80))
    assert chat["send-proxy"] == ["v2"]
    assert ini["upstream media"]["server"] == ["whatsapp.net:443"]
    assert ini["upstream media"]["send-proxy"] == ["none"]
    assert ini["stats"]["listen"] == ["127.0.0.1:8199"]


def test_preset_minimal_prints(tmp_path):
    ini = _printed_preset(tmp_path, "minimal")
    ports = set()
    for k, v in ini.items():
        if k.startswith("listen "):
            for b in v["bind"]:
                ports.add(int(b.rsplit(":", 1)[1]))
    assert ports == {443, 587}, ports


def test_preset_camouflage_prints(tmp_path):
    """443 (chat, media passed through, the decoy) and 80 (chat, decoy),
    answering like nginx; printed text parses back to the same."""
    ini = _printed_preset(tmp_path, "camouflage")
    listeners = {k.split(" ", 1)[1]: v for k, v in ini.items()
                 if k.startswith("listen ")}
    assert set(listeners) == {"https", "http"}
    https, http = listeners["https"], listeners["http"]
    assert all(b.endswith(":443") for b in https["bind"])
    assert all(b.endswith(":80") for b in http["bind"])
    assert https["decoy"] == http["decoy"] == ["web"]
    assert https["decoy-tls"] == ["web-tls"]
    assert https["passthrough"] == ["media"]
    assert "mmg.whatsapp.net" in https["passthrough-sni"]
    assert https["client-keepalive"] == http["client-keepalive"] == ["off"]
    assert https["tls-alpn"] == ["http/1.1", "http/1.0", "http/0.9"]
    assert https["tls-tickets"] == ["2"]
    assert https["tls-prefer-server-ciphers"] == ["off"]
    assert ini["timeouts"]["handshake"] == ["1m"]
    assert ini["upstream web"]["server"] == ["127.0.0.1:8080"]
    assert ini["upstream web-tls"]["server"] == ["127.0.0.1:8443"]


def test_unknown_preset_is_usage_error():
    r = run_cli(["--print-config", "--preset", "nosuch"])
    assert r.returncode == 2
    assert "nosuch" in r.stderr


def test_version_help_and_bad_option():
    r = run_cli(["--version"])
    assert r.returncode == 0 and re.search(r"\d", r.stdout), r
    r = run_cli(["--help"])
    assert r.returncode == 0 and "--check" in r.stdout + r.stderr
    r = run_cli(["--no-such-option"])
    assert r.returncode == 2
    assert r.stderr.strip()


def test_tls_and_proxy_listeners_are_served(tmp_path, echo):
    """Every kind of listener starts: none is skipped any more."""
    cfg = make_config(
        {"up": [echo.spec]},
        {"plain": {"upstream": "up"},
         "sec": {"upstream": "up", "tls": "on"},
         "pp": {"upstream": "up", "accept-proxy": "on"}})
    d = start_daemon(tmp_path, cfg)
    assert set(d.ports) == {"plain", "sec", "pp"}, d.ports
    err = d.stderr_text()
    assert "skipping" not in err, err
    assert try_echo(d.addr("plain"))
    r = run_cli(["--check", "-c", str(d.conf)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "configuration OK" in r.stdout, r.stdout


def test_check_loads_supplied_certificates(tmp_path, echo):
    """--check fails, naming the listener, when a cert file is unusable."""
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    cfg = make_config(
        {"up": [echo.spec]},
        {"sec": {"upstream": "up", "tls": "on", "cert": str(bad), "key": str(bad)}})
    conf = tmp_path / "c.conf"
    conf.write_text(cfg)
    r = run_cli(["--check", "-c", str(conf)])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "[listen sec]" in r.stderr and str(bad) in r.stderr, r.stderr


def test_bind_failure_exits_1(tmp_path, echo):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        cfg = make_config({"up": [echo.spec]},
                          {"a": {"upstream": "up"},
                           "b": {"bind": f"127.0.0.1:{port}", "upstream": "up"}})
        d = Daemon(tmp_path, cfg).start(wait=False)
        rc = d.wait_exit(10)
        assert rc == 1, f"exit {rc}: {d.stderr_text()}"
        err = d.stderr_text()
        assert str(port) in err or re.search(r"\bb\b", err), err
        assert not d.ports_file.exists(), "ports file written although a bind failed"
    finally:
        taken.close()


# --- warnings: the daemon starts, --check passes, one line says why


def _proxy_listeners(echo, binds, **extra):
    listeners = {n: {"bind": b, "upstream": "up", "accept-proxy": "on"}
                 for n, b in binds.items()}
    for n, kv in extra.items():
        listeners[n].update(kv)
    return make_config({"up": [echo.spec]}, listeners)


def _warning_lines(text, word):
    return [l for l in text.splitlines() if word in l]


def test_open_proxy_listeners_warn_once(tmp_path, echo):
    """accept-proxy on 0.0.0.0 with no trusted-proxies: one warning line
    naming every such listener, at start and from --check (exit 0)."""
    cfg = _proxy_listeners(
        echo, {"pa": "0.0.0.0:0", "pb": "0.0.0.0:0", "lo": "127.0.0.1:0",
               "tr": "0.0.0.0:0"},
        tr={"trusted-proxies": "10.0.0.0/8"})
    d = start_daemon(tmp_path, cfg)
    lines = _warning_lines(d.stderr_text(), "trusted-proxies")
    assert len(lines) == 1, d.stderr_text()
    assert "[listen pa]" in lines[0] and "[listen pb]" in lines[0], lines
    assert "[listen lo]" not in lines[0] and "[listen tr]" not in lines[0]
    assert "warn" in lines[0], lines
    r = run_cli(["--check", "-c", str(d.conf)])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = _warning_lines(r.stdout + r.stderr, "trusted-proxies")
    assert len(lines) == 1 and "[listen pa]" in lines[0], r.stdout + r.stderr


def test_loopback_proxy_listeners_do_not_warn(tmp_path, echo):
    cfg = _proxy_listeners(echo, {"pa": "127.0.0.1:0", "pb": "127.0.0.1:0"})
    d = start_daemon(tmp_path, cfg)
    assert _warning_lines(d.stderr_text(), "trusted-proxies") == [], \
        d.stderr_text()
    r = run_cli(["--check", "-c", str(d.conf)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trusted-proxies" not in r.stdout + r.stderr


# --- privileges


def _uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_ports_file_written_before_dropping_root(tmp_path, echo):
    """user = nobody, ports file in a root-only (0700) directory: written
    while still root, then the daemon serves as nobody."""
    os.chmod(tmp_path, 0o700)
    assert os.stat(tmp_path).st_uid == 0
    cfg = make_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}},
                      global_={"user": "nobody"})
    d = start_daemon(tmp_path, cfg)
    assert "plain" in d.ports
    assert try_echo(d.addr("plain"))
    assert all(u != 0 for u in _uid_of(d.pid)), _uid_of(d.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_ports_file_unwritable_after_reload_is_a_warning(echo):
    """After the drop, a reload cannot rewrite a root-only ports file: a
    warning, and the daemon keeps serving.  (The config must be readable
    by nobody, so this one lives outside pytest's root-only tmp_path.)"""
    top = pathlib.Path(tempfile.mkdtemp(prefix="lifeline-"))
    try:
        os.chmod(top, 0o755)
        priv = top / "priv"
        priv.mkdir(mode=0o700)
        cfg = make_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}},
                          global_={"user": "nobody"})
        d = Daemon(top, cfg)
        os.chmod(d.conf, 0o644)
        d.ports_file = priv / "ports"
        d.start()
        since = d.stderr_size()
        d.send(signal.SIGHUP)
        d.wait_stderr(since, lambda t: "configuration reloaded" in t,
                      what="reload")
        err = d.stderr_path.read_bytes()[since:].decode()
        assert "warn: cannot rewrite ports file" in err, err
        assert d.alive() and try_echo(d.addr("plain"))
        d.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- [stats] public


def _stats_config(echo, listen, public=None):
    extra = f"\n[stats]\nlisten = {listen}\n"
    if public is not None:
        extra += f"public = {public}\n"
    return make_config({"up": [echo.spec]}, {"plain": {"upstream": "up"}},
                       extra=extra)


def test_public_stats_without_public_on_warns_once(tmp_path, echo):
    d = start_daemon(tmp_path, _stats_config(echo, "0.0.0.0:0"))
    assert "stats" in d.ports
    lines = _warning_lines(d.stderr_text(), "public = on")
    assert len(lines) == 1, d.stderr_text()
    assert "0.0.0.0:0" in lines[0] and "warn" in lines[0], lines
    r = run_cli(["--check", "-c", str(d.conf)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(_warning_lines(r.stderr, "public = on")) == 1, r.stderr
    r = run_cli(["--print-config", "-c", str(d.conf)])
    assert parse_ini(r.stdout)["stats"]["public"] == ["off"], r.stdout


def test_public_stats_with_public_on_is_quiet(tmp_path, echo):
    d = start_daemon(tmp_path, _stats_config(echo, "0.0.0.0:0", "on"))
    assert "stats" in d.ports
    assert "public" not in d.stderr_text(), d.stderr_text()
    r = run_cli(["--check", "-c", str(d.conf)])
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = run_cli(["--print-config", "-c", str(d.conf)])
    assert parse_ini(r.stdout)["stats"]["public"] == ["on"], r.stdout
    # loopback needs no 'public'
    d2 = start_daemon(tmp_path, _stats_config(echo, "127.0.0.1:0"))
    assert "public" not in d2.stderr_text(), d2.stderr_text()


def test_stats_public_bad_value(tmp_path, echo):
    conf = tmp_path / "c.conf"
    conf.write_text(_stats_config(echo, "127.0.0.1:0", "maybe"))
    r = run_cli(["--check", "-c", str(conf)])
    assert r.returncode == 1 and "public" in r.stderr, r.stderr


# --- a UTF-8 byte-order mark (as Windows editors write)

BOM = b"\xef\xbb\xbf"


def test_bom_config_passes_check(tmp_path):
    conf = tmp_path / "bom.conf"
    conf.write_bytes(BOM + good().encode())
    r = run_cli(["--check", "-c", str(conf)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_bom_config_error_names_right_line(tmp_path):
    conf = tmp_path / "bom.conf"
    conf.write_bytes(BOM + b"[global]\nworkers = 2\nbogus = 1\n" +
                     BASE_TAIL.encode())
    for args in (["--check"], []):
        r = run_cli(args + ["-c", str(conf)])
        assert r.returncode == (1 if args else 2), r.stderr
        assert f"{conf}:3: unknown key 'bogus'" in r.stderr, r.stderr


# --- empty values: "FILE:LINE: KEY: empty value", whatever the key

EMPTY_CASES = [
    ("global", k) for k in ("workers", "maxconn", "user", "drain-timeout",
                            "log-level", "ports-file", "public-host")
] + [
    ("timeouts", k) for k in ("connect", "client", "server", "client-fin",
                              "server-fin", "handshake")
] + [
    ("stats", "listen"), ("stats", "public"),
    ("upstream up", "server"), ("upstream up", "send-proxy"),
    ("upstream up", "check-interval"),
] + [
    ("listen a", k) for k in ("bind", "upstream", "maxconn", "tls", "cert",
                              "key", "tls-key-type", "tls-names", "tls-ips",
                              "accept-proxy", "trusted-proxies")
]


@pytest.mark.parametrize("section,key", EMPTY_CASES,
                         ids=[f"{s.split()[0]}-{k}" for s, k in EMPTY_CASES])
def test_empty_value_is_named(tmp_path, section, key):
    head = "" if section in ("upstream up", "listen a") else f"[{section}]\n"
    text = head + BASE_TAIL
    if section in ("upstream up", "listen a"):
        text = text.replace(f"[{section}]\n", f"[{section}]\n{key} =\n")
    else:
        text = text.replace(head, head + f"{key} =\n", 1)
    line = text.splitlines().index(f"{key} =") + 1
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    r = run_cli(["--check", "-c", str(conf)])
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{conf}:{line}: {key}: empty value" in r.stderr, r.stderr


def test_unloadable_certificate_exits_2_naming_file(tmp_path, echo):
    """A certificate that does not load is a configuration error: exit 2,
    one line naming the file, no ports file; --check refuses it too."""
    bad = tmp_path / "garbage.pem"
    bad.write_bytes(b"this is not a certificate\n")
    cfg = make_config(
        {"up": [echo.spec]},
        {"sec": {"upstream": "up", "tls": "on", "cert": str(bad),
                 "key": str(bad)}})
    d = Daemon(tmp_path, cfg).start(wait=False)
    rc = d.wait_exit(10)
    lines = [l for l in d.stderr_text().splitlines() if l.strip()]
    assert rc == 2, f"exit {rc}: {d.stderr_text()}"
    assert len(lines) == 1 and str(bad) in lines[0], lines
    assert not d.ports_file.exists()
    r = run_cli(["--check", "-c", str(d.conf)])
    assert r.returncode == 1 and str(bad) in r.stderr, r.stderr


# --- address conflicts: --check refuses what start-up could not bind

# (listener a binds, listener b binds, stats binds, conflict?) with P a port
BIND_CASES = {
    "stats-equals-listener": (["127.0.0.1:P"], [], ["127.0.0.1:P"], True),
    "two-listeners-same": (["127.0.0.1:P"], ["127.0.0.1:P"], [], True),
    "wildcard-and-loopback": (["0.0.0.0:P"], ["127.0.0.1:P"], [], True),
    "stats-wildcard": (["127.0.0.1:P"], [], ["0.0.0.0:P"], True),
    "stats-v6-wildcard-takes-v4": (["0.0.0.0:P"], [], ["[::]:P"], True),
    "v6-wildcards": (["[::]:P"], ["[::1]:P"], [], True),
    "v4-and-v6-listeners": (["0.0.0.0:P"], ["[::]:P"], [], False),
    "different-ports": (["127.0.0.1:P"], [], ["127.0.0.1:Q"], False),
    "port-0-never": (["0.0.0.0:0", "127.0.0.1:0"], ["127.0.0.1:0"],
                     ["127.0.0.1:0", "0.0.0.0:0"], False),
}


def _bind_config(echo, a, b, stats):
    p, q = free_port(), free_port()
    fix = lambda l: [x.replace(":P", f":{p}").replace(":Q", f":{q}") for x in l]
    listeners = {"a": {"bind": fix(a), "upstream": "up"}}
    if b:
        listeners["b"] = {"bind": fix(b), "upstream": "up"}
    extra = "".join(f"listen = {x}\n" for x in fix(stats))
    return make_config({"up": [echo.spec]}, listeners,
                       extra=f"\n[stats]\n{extra}" if stats else "")


@pytest.mark.parametrize("case", sorted(BIND_CASES))
def test_check_catches_address_conflicts(tmp_path, echo, case):
    a, b, stats, conflict = BIND_CASES[case]
    if any("::" in x for x in a + b + stats) and not socket.has_ipv6:
        pytest.skip("no IPv6")
    conf = tmp_path / "c.conf"
    conf.write_text(_bind_config(echo, a, b, stats))
    r = run_cli(["--check", "-c", str(conf)])
    if not conflict:
        assert r.returncode == 0, r.stdout + r.stderr
        # The ports were free when picked; another test (the other pass
        # runs at the same time) may take one before the daemon binds:
        # then pick again, a few times.
        for attempt in range(3):
            try:
                d = Daemon(tmp_path, conf.read_text()).start()
                break
            except AssertionError as e:
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
                conf.write_text(_bind_config(echo, a, b, stats))
        assert d.alive()
        return
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(re.escape(str(conf)) + r":\d+: .*address", r.stderr), \
        r.stderr
    pf = tmp_path / "ports"
    r = run_cli(["-c", str(conf), "--ports-file", str(pf)])
    assert r.returncode == 2, r.stderr
    assert not pf.exists()
