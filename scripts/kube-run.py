#!/usr/bin/python3
"""Starts the lifeline configuration that a `kubectl kustomize` rendering
carries the way its Deployment starts it, and checks the pod's view of it:
for scripts/kube-check.sh, which runs this under
`unshare -n -m --propagation private` (a network and a mount namespace of
its own: the pod's fixed ports never touch the host's, and nothing done
to mounts here leaves the namespace).

    kube-run.py --lifeline BIN --workdir DIR RENDERED.yaml
        the Deployment's pod: as its runAsUser/runAsGroup, no capability,
        no_new_privs, every file system read-only but /proc, /sys and /dev
        (readOnlyRootFilesystem; the configuration file read-only, as a
        ConfigMap volume is); WhatsApp's names resolve to this namespace
        (a private /etc/hosts), where an echo server answers on each
        upstream port.  Then: liveness 200 and readiness 200 on the
        probes' port and paths; every container port accepts; a transfer
        through each media port comes back byte for byte (behind a PROXY
        overlay: with a PROXY v2 header, sent from an address of the
        trusted range, as the NLB does; a header from an untrusted
        address is refused); SIGTERM ends it with status 0 within the
        grace period.
    kube-run.py --lifeline BIN --workdir DIR --expect-refusal RENDERED.yaml
        the same start with a configuration that does not load: the
        daemon must exit at once (2 s) with status 2 and one line naming
        file and line, never listening.
Exit status 0 when all holds; otherwise one line per problem, status 1.
"""
import argparse
import ipaddress
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ks = __import__("kube-schema")


def sh(*args):
    subprocess.run(args, check=True)


def echo_server(port):
    """An echo server on 127.0.0.1:port (thread); returns the socket."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)

    def serve(c):
        with c:
            while True:
                try:
                    b = c.recv(65536)
                except OSError:
                    return
                if not b:
                    return
                c.sendall(b)

    def loop():
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return ls


def http_get(port, path, timeout=3):
    """(status, body) of GET path on 127.0.0.1:port, or (None, error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: pod\r\n"
                      "Connection: close\r\n\r\n".encode())
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
    except OSError as e:
        return None, str(e)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(m.group(1)) if m else None), data.decode("latin-1")


def pp2_header(src, dst, sport, dport):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs


def transfer(port, payload, source=None, proxy=False):
    """Sends payload through 127.0.0.1:port (from source), returns what
    comes back, or an error string."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5,
                                     source_address=(source, 0) if source else None)
    except OSError as e:
        return f"connect: {e}"
    with s:
        try:
            if proxy:
                s.sendall(pp2_header("198.51.100.7", "203.0.113.9", 40000, 587))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
            return got
        except OSError as e:
            return f"transfer: {e}"


def make_readonly():
    """Every mount but /proc, /sys, /dev (and below) read-only, in this
    (private) mount namespace only."""
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4] for ln in f]
    for mp in points:
        mp = mp.replace("\\040", " ")
        if re.match(r"^/(proc|sys|dev)(/|$)", mp):
            continue
        subprocess.run(["mount", "-o", "remount,bind,ro", mp],
                       stderr=subprocess.DEVNULL)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--lifeline", required=True)
    ap.add_argument("--expect-refusal", action="store_true")
    ap.add_argument("--workdir", required=True, help="an empty directory "
                    "for the run's files; the caller deletes it")
    ap.add_argument("rendered")
    a = ap.parse_args(argv)
    problems = []
    with open(a.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    dep = ks.find(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    conf_text = ks.find(docs, "ConfigMap")["data"][ks.CONFIG_KEY]
    cfg = ks.parse_effective(conf_text)  # the file itself: bind, accept-proxy
    uid = pod["securityContext"]["runAsUser"]
    gid = pod["securityContext"].get("runAsGroup", uid)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    cports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    def port_of(probe):
        p = c[probe]["httpGet"]["port"]
        return cports[p] if isinstance(p, str) else p

    # The namespace: loopback up; WhatsApp's names here (private hosts
    # file); an echo server on every upstream port.
    sh("ip", "link", "set", "lo", "up")
    work = a.workdir
    os.chmod(work, 0o755)
    hosts = os.path.join(work, "hosts")
    upstream_ports = set()
    names = set()
    for sec, v in cfg.items():
        if sec.startswith("upstream "):
            for srv in v.get("server", []):
                h, p = ks.split_addr(srv)
                names.add(h)
                upstream_ports.add(p)
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost " + " ".join(sorted(names)) + "\n")
    sh("mount", "--bind", hosts, "/etc/hosts")
    echoes = [echo_server(p) for p in sorted(upstream_ports)]
    # The trusted range's first address, as the NLB's (PROXY overlays).
    trusted = None
    for sec, v in cfg.items():
        for n in v.get("trusted-proxies", []):
            trusted = str(next(ipaddress.ip_network(n, strict=False).hosts()))
    if trusted:
        sh("ip", "addr", "add", trusted + "/32", "dev", "lo")
        sh("ip", "addr", "add", "192.0.2.77/32", "dev", "lo")  # untrusted
    conf_dir = os.path.join(work, "config")
    os.mkdir(conf_dir)
    conf = os.path.join(conf_dir, ks.CONFIG_KEY)
    with open(conf, "w") as f:
        f.write(conf_text)
    os.chmod(conf, 0o644)
    make_readonly()

    # The container's command, with this build's binary and the file's path.
    cmd = list(c["command"]) + list(c.get("args") or [])
    cmd[0] = a.lifeline
    cmd[cmd.index("-c") + 1] = conf
    # PID 1 of the pod has no capability at all and no_new_privs.
    full = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"] + cmd
    # Its output through a pipe: nothing here is writable any more.
    t0 = time.monotonic()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = []
    reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
    reader.start()

    def out():
        if proc.poll() is not None:
            reader.join(2)
        return b"".join(log).decode(errors="replace").strip()

    try:
        if a.expect_refusal:
            try:
                rc = proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                problems.append("a configuration that does not load: still "
                                "running after 2 s")
                return report(problems)
            lines = out().replace(conf, ks.CONFIG_KEY).splitlines()
            if rc != 2:
                problems.append(f"exit status {rc}, want 2 (a configuration error)")
            if len(lines) != 1 or not re.search(re.escape(ks.CONFIG_KEY) + r":\d+: ", lines[0]):
                problems.append(f"want one line naming file:line, got {lines}")
            if not problems:
                print(f"refused at start in {time.monotonic() - t0:.2f} s, exit {rc}: "
                      f"{lines[0]}")
            return report(problems)

        live = port_of("livenessProbe")
        ready = port_of("readinessProbe")
        status = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                problems.append(f"exited {proc.returncode} at start: {out()}")
                return report(problems)
            status, _ = http_get(live, c["livenessProbe"]["httpGet"]["path"], 1)
            if status == 200:
                break
            time.sleep(0.1)
        if status != 200:
            problems.append(f"liveness {c['livenessProbe']['httpGet']['path']} on "
                            f"{live}: {status}")
        status, body = http_get(ready, c["readinessProbe"]["httpGet"]["path"])
        if status != 200:
            problems.append(f"readiness {c['readinessProbe']['httpGet']['path']} on "
                            f"{ready}: {status} {body[-80:]!r}")
        for name, port in sorted(cports.items()):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=3).close()
            except OSError as e:
                problems.append(f"container port {name} ({port}): {e}")
        # Media through each media listener (plain: the echo answers).
        payload = os.urandom(256 << 10)
        moved = []
        for lname, sec in ks.listeners(cfg).items():
            if sec.get("upstream", [""])[-1] != "media":
                continue
            port = ks.split_addr(sec["bind"][0])[1]
            proxy = sec.get("accept-proxy", ["off"])[-1] == "on"
            got = transfer(port, payload, trusted if proxy else None, proxy)
            if got != payload:
                problems.append(f"listener {lname}: the transfer came back "
                                f"{'different' if isinstance(got, bytes) else got}")
            else:
                moved.append(lname)
            if proxy:
                got = transfer(port, payload, "192.0.2.77", True)
                if got == payload:
                    problems.append(f"listener {lname}: a PROXY header from "
                                    "192.0.2.77 (untrusted) was believed")
        if proc.poll() is not None:
            problems.append(f"exited {proc.returncode}: {out()[-300:]}")
            return report(problems)
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=grace)
            if rc != 0:
                problems.append(f"exit status {rc} after SIGTERM, want 0")
        except subprocess.TimeoutExpired:
            problems.append(f"still running {grace} s after SIGTERM "
                            "(terminationGracePeriodSeconds)")
        if not problems:
            print(f"pod view: uid {uid}, no capability, read-only files; "
                  f"liveness and readiness 200 on {live}; "
                  f"{len(cports)} container ports accept; 256 KiB echoed through "
                  f"{', '.join(moved)}{' with PROXY v2 from ' + trusted if trusted else ''}"
                  f"{' (192.0.2.77 refused)' if trusted else ''}; "
                  f"SIGTERM: exit 0 in {time.monotonic() - t1:.1f} s")
        return report(problems)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for e in echoes:
            e.close()


def report(problems):
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
