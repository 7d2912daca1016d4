#!/usr/bin/python3
"""Checks what `kubectl kustomize` renders from deploy/kubernetes/ against
the lifeline configuration its ConfigMap carries: a small schema of our own,
for scripts/kube-check.sh.

    kube-schema.py --lifeline BIN [--base-config FILE] [--image IMAGE]
                   [--prefix P] RENDERED.yaml
        prints one line per problem and exits 1, or prints a summary
        and exits 0
    kube-schema.py --lifeline BIN --self-test RENDERED.yaml
        breaks the (good) rendering in many ways, one at a time; each
        must be refused, or the run fails (a check that cannot fail
        checks nothing)
    kube-schema.py --extract-config RENDERED.yaml
        prints the configuration file the ConfigMap carries

What is checked (a problem each):
- the kinds: exactly one ConfigMap, Deployment, LoadBalancer Service,
  ClusterIP metrics Service, HorizontalPodAutoscaler, PodDisruptionBudget
  and NetworkPolicy, at most one ServiceMonitor, nothing else; each with
  its current apiVersion;
- the configuration: the ConfigMap's name carries Kustomize's content
  hash; its one file passes `lifeline --check` with no warning; compared
  with --base-config, only its [listen] sections differ;
- the Deployment: no replicas (the autoscaler owns them); rolling update
  with maxUnavailable 0; non-root, seccomp RuntimeDefault, read-only root,
  no privilege escalation, every capability dropped and none added (all
  ports are above 1024); the command's -c file is the ConfigMap mounted
  whole (not subPath); container ports = the listeners' ports + stats;
  liveness /healthz and readiness /readyz on the stats listener, which
  binds the pod's address with public = on; resources requested (and a
  memory limit); a grace period longer than drain-timeout; a fixed
  number of workers;
- the LoadBalancer Service: every port goes to the listener of the port
  map (README, "A fleet (Kubernetes)": public port + 10000, or the -lb
  listener + 10000 with PROXY), with the right TLS and upstream group;
  every listener is reached; the NLB annotations; with the PROXY
  annotation (it covers every port) every listener has accept-proxy and a
  narrow trusted-proxies, and no source-preserving setting hands the pod
  the client's own address; without it, no listener expects a header;
- the metrics Service is ClusterIP and the only way to the stats port;
- the autoscaler targets the Deployment on CPU, from 2 pods up; the
  disruption budget selects the pods and lets one go;
- the NetworkPolicy: selects the pods; opens every listener port to
  anyone and the stats port only to given peers (no rule without ports);
  egress to DNS and to every upstream server's port;
- the ServiceMonitor, when present: selects the metrics Service, port
  and /metrics.
"""
import copy
import ipaddress
import os
import re
import subprocess
import sys
import tempfile

import yaml

API = {
    "ConfigMap": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
}

# The port map (README, "A fleet (Kubernetes)"): public port -> (port in
# the pod, tls, upstream group), without and with PROXY headers.
PORT_MAP = {
    False: {80: (10080, False, "chat"), 443: (10443, True, "chat"),
            5222: (15222, False, "chat"), 587: (10587, False, "media"),
            7777: (17777, False, "media")},
    True: {80: (18080, False, "chat"), 443: (18443, True, "chat"),
           5222: (18222, False, "chat"), 587: (18587, False, "media"),
           7777: (18587, False, "media")},
}
CONFIG_KEY = "lifeline.conf"
AWS = "service.beta.kubernetes.io/aws-load-balancer-"
PROXY_ANN = AWS + "proxy-protocol"


class Problems(list):
    def add(self, what, msg):
        self.append(f"{what}: {msg}")


# ---------------------------------------------------------------------------
# The lifeline configuration


def parse_effective(text):
    """`lifeline --print-config` output -> {section: {key: [values]}},
    sections in order."""
    sections = {}
    cur = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[(.+)\]", line)
        if m:
            cur = sections.setdefault(m.group(1), {})
            continue
        k, _, v = line.partition("=")
        cur.setdefault(k.strip(), []).append(v.strip())
    return sections


def split_addr(a):
    """'0.0.0.0:10080' or '[::]:443' -> (host, port)."""
    m = re.fullmatch(r"\[(.*)\]:(\d+)|([^:]*):(\d+)", a)
    if not m:
        return None, None
    if m.group(1) is not None:
        return m.group(1), int(m.group(2))
    return m.group(3), int(m.group(4))


def load_config(lifeline, text, p):
    """Runs lifeline --check and --print-config on text; returns the
    effective configuration, or None."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        r = subprocess.run([lifeline, "--check", "-c", path],
                           capture_output=True, text=True, timeout=30)
        out = (r.stdout + r.stderr).replace(path, CONFIG_KEY).strip()
        if r.returncode != 0:
            p.add("ConfigMap", f"lifeline --check refuses the configuration "
                  f"(exit {r.returncode}): {out}")
            return None
        extra = [ln for ln in out.splitlines()
                 if not ln.endswith("configuration OK")]
        if extra:
            p.add("ConfigMap", "lifeline --check warns: " + " / ".join(extra))
        r = subprocess.run([lifeline, "--print-config", "-c", path],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            p.add("ConfigMap", f"lifeline --print-config exit {r.returncode}")
            return None
        return parse_effective(r.stdout)
    finally:
        os.unlink(path)


def listeners(cfg):
    """{name: section} of the [listen NAME] sections."""
    return {s.split(None, 1)[1]: v for s, v in cfg.items()
            if s.startswith("listen ")}


def listener_ports(cfg):
    """{port: listener name} over every bind of every listener."""
    ports = {}
    for name, sec in listeners(cfg).items():
        for b in sec.get("bind", []):
            ports[split_addr(b)[1]] = name
    return ports


def on(sec, key):
    return sec.get(key, ["off"])[-1] == "on"


def duration_s(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)?", v)
    if not m:
        return None
    n = int(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


# ---------------------------------------------------------------------------
# The rendered objects


def get(obj, *path, default=None):
    for k in path:
        if isinstance(obj, dict) and k in obj:
            obj = obj[k]
        elif isinstance(obj, list) and isinstance(k, int) and k < len(obj):
            obj = obj[k]
        else:
            return default
    return obj


def matches(selector, labels):
    """A matchLabels-style selector (non-empty) selects labels."""
    return bool(selector) and all(labels.get(k) == v
                                  for k, v in selector.items())


def check(docs, lifeline, base_cfg=None, image=None, prefix=""):
    p = Problems()
    by_kind = {}
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d:
            p.add("document", f"not a Kubernetes object: {str(d)[:60]}")
            continue
        kind = d["kind"]
        name = get(d, "metadata", "name")
        if kind not in API:
            p.add(kind, f"unexpected kind (object {name})")
            continue
        if d.get("apiVersion") != API[kind]:
            p.add(f"{kind} {name}", f"apiVersion {d.get('apiVersion')}, "
                  f"want {API[kind]}")
        if not name:
            p.add(kind, "no metadata.name")
        elif not name.startswith(prefix):
            p.add(f"{kind} {name}", f"name lacks the prefix {prefix!r}")
        by_kind.setdefault(kind, []).append(d)

    def one(kind, pick=None):
        objs = [o for o in by_kind.get(kind, []) if pick is None or pick(o)]
        if len(objs) != 1:
            p.add(kind, f"{len(objs)} found, want exactly 1")
            return None
        return objs[0]

    cm = one("ConfigMap")
    dep = one("Deployment")
    lb = one("Service", lambda s: get(s, "spec", "type") == "LoadBalancer")
    metrics = one("Service", lambda s: get(s, "spec", "type", default="ClusterIP") == "ClusterIP")
    hpa = one("HorizontalPodAutoscaler")
    pdb = one("PodDisruptionBudget")
    netpol = one("NetworkPolicy")
    others = [s for s in by_kind.get("Service", [])
              if s is not lb and s is not metrics]
    for s in others:
        p.add(f"Service {get(s, 'metadata', 'name')}",
              f"type {get(s, 'spec', 'type')}: only one LoadBalancer and one "
              "ClusterIP Service are expected")
    sms = by_kind.get("ServiceMonitor", [])
    if len(sms) > 1:
        p.add("ServiceMonitor", f"{len(sms)} found, want at most 1")

    # -- the configuration ---------------------------------------------------
    cfg = None
    if cm is not None:
        name = get(cm, "metadata", "name", default="")
        if not re.fullmatch(re.escape(prefix) + r"lifeline-config-[a-z0-9]{10}", name):
            p.add(f"ConfigMap {name}", "name lacks Kustomize's content hash "
                  "(want lifeline-config-XXXXXXXXXX: configMapGenerator)")
        data = cm.get("data") or {}
        if sorted(data) != [CONFIG_KEY]:
            p.add(f"ConfigMap {name}", f"keys {sorted(data)}, want [{CONFIG_KEY}]")
        if CONFIG_KEY in data:
            cfg = load_config(lifeline, data[CONFIG_KEY], p)
    if cfg is not None and base_cfg is not None:
        for sec in sorted(set(cfg) | set(base_cfg)):
            if sec.startswith("listen "):
                continue
            if cfg.get(sec) != base_cfg.get(sec):
                p.add("ConfigMap", f"[{sec}] differs from the base's "
                      "(overlays change listeners only)")
    lports = listener_ports(cfg) if cfg else {}
    lsts = listeners(cfg) if cfg else {}
    stats_port = None
    if cfg is not None:
        st = cfg.get("stats", {})
        addrs = st.get("listen", [])
        if len(addrs) != 1:
            p.add("config [stats]", f"listen {addrs}: want one address")
        else:
            host, stats_port = split_addr(addrs[0])
            if host not in ("0.0.0.0", "::"):
                p.add("config [stats]", f"listen {addrs[0]}: the kubelet "
                      "probes the pod's address, want 0.0.0.0 or [::]")
        if not on(st, "public"):
            p.add("config [stats]", "public = off: a pod address needs public = on")
        workers = get(cfg, "global", "workers", -1)
        if workers == "auto":
            p.add("config [global]", "workers = auto counts the node's CPUs, "
                  "not the pod's: set a number")
        for port in lports:
            if port is None or port < 1024:
                p.add("config", f"listener port {port}: a pod with no "
                      "capability binds ports above 1024 only")

    # -- the Deployment ---------------------------------------------------
    pod_labels = {}
    cports = {}
    c = None
    if dep is not None:
        what = f"Deployment {get(dep, 'metadata', 'name')}"
        spec = dep.get("spec") or {}
        if "replicas" in spec:
            p.add(what, "replicas set: the autoscaler owns the count (an apply "
                  "would scale a grown fleet down)")
        st = spec.get("strategy") or {}
        if st.get("type") != "RollingUpdate":
            p.add(what, f"strategy {st.get('type')}, want RollingUpdate")
        mu = get(st, "rollingUpdate", "maxUnavailable")
        if mu not in (0, "0%"):
            p.add(what, f"maxUnavailable {mu}: want 0 (old pods serve until "
                  "new ones are ready)")
        ms = get(st, "rollingUpdate", "maxSurge", default=0)
        if ms in (0, "0%"):
            p.add(what, "maxSurge 0 with maxUnavailable 0: the rollout cannot move")
        pod_labels = get(spec, "template", "metadata", "labels", default={}) or {}
        if not matches(get(spec, "selector", "matchLabels", default={}), pod_labels):
            p.add(what, "selector does not select the pod template's labels")
        pspec = get(spec, "template", "spec", default={}) or {}
        psc = pspec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            p.add(what, "pod securityContext.runAsNonRoot is not true")
        if not isinstance(psc.get("runAsUser"), int) or psc.get("runAsUser") == 0:
            p.add(what, f"pod securityContext.runAsUser {psc.get('runAsUser')}: "
                  "want a non-zero uid")
        if get(psc, "seccompProfile", "type") != "RuntimeDefault":
            p.add(what, "pod seccompProfile is not RuntimeDefault")
        conts = pspec.get("containers") or []
        if len(conts) != 1:
            p.add(what, f"{len(conts)} containers, want 1")
        c = conts[0] if conts else None
        if pspec.get("initContainers"):
            p.add(what, "init containers are not expected")
        if pspec.get("hostNetwork"):
            p.add(what, "hostNetwork: the pod must have its own address")
    if c is not None:
        what = f"container {c.get('name')}"
        img = c.get("image")
        if not img:
            p.add(what, "no image")
        elif image is not None and img != image:
            p.add(what, f"image {img}, want {image}")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            p.add(what, "allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            p.add(what, "readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            p.add(what, "privileged")
        if "ALL" not in (get(sc, "capabilities", "drop", default=[]) or []):
            p.add(what, "capabilities.drop lacks ALL")
        added = get(sc, "capabilities", "add", default=[]) or []
        low = [pt for pt in lports if pt is not None and pt < 1024]
        for cap in added:
            if cap != "NET_BIND_SERVICE" or not low:
                p.add(what, f"capability {cap} added: nothing needs it")
        if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
            p.add(what, "the container overrides the pod's non-root user")
        for pt in c.get("ports") or []:
            n = pt.get("name")
            if n in cports:
                p.add(what, f"port name {n} twice")
            if n is not None and len(n) > 15:
                p.add(what, f"port name {n} longer than 15 characters")
            cports[n if n is not None else pt.get("containerPort")] = pt.get("containerPort")
            if pt.get("protocol", "TCP") != "TCP":
                p.add(what, f"port {n} is not TCP")
        # The configuration file: -c PATH, PATH's directory the ConfigMap.
        cmd = (c.get("command") or []) + (c.get("args") or [])
        conf_path = None
        if "-c" in cmd and cmd.index("-c") + 1 < len(cmd):
            conf_path = cmd[cmd.index("-c") + 1]
        if not cmd or os.path.basename(cmd[0]) != "lifeline":
            p.add(what, f"command {cmd}: want lifeline -c FILE")
        if conf_path is None:
            p.add(what, "no -c FILE in the command")
        else:
            mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
            m = mounts.get(os.path.dirname(conf_path))
            vols = {v.get("name"): v for v in get(dep, "spec", "template", "spec",
                                                 "volumes", default=[]) or []}
            if m is None:
                p.add(what, f"nothing mounted at {os.path.dirname(conf_path)} "
                      f"(the directory of -c {conf_path})")
            else:
                if m.get("subPath"):
                    p.add(what, "the configuration is mounted with subPath")
                if m.get("readOnly") is not True:
                    p.add(what, "the configuration mount is not readOnly")
                v = vols.get(m.get("name"), {})
                ref = get(v, "configMap", "name")
                if cm is not None and ref != get(cm, "metadata", "name"):
                    p.add(what, f"the mounted volume is ConfigMap {ref}, not "
                          f"{get(cm, 'metadata', 'name')}")
                if os.path.basename(conf_path) != CONFIG_KEY:
                    p.add(what, f"-c {conf_path}: the ConfigMap's file is {CONFIG_KEY}")
        if cfg is not None:
            want = set(lports) | {stats_port}
            have = set(cports.values())
            if have != want:
                p.add(what, f"container ports {sorted(have)}, the configuration "
                      f"binds {sorted(x for x in want if x is not None)}")

        def probe(kind, path):
            pr = c.get(kind) or {}
            hg = pr.get("httpGet")
            if not hg:
                p.add(what, f"no {kind} httpGet")
                return
            if hg.get("path") != path:
                p.add(what, f"{kind} path {hg.get('path')}, want {path}")
            port = hg.get("port")
            port = cports.get(port, port) if isinstance(port, str) else port
            if stats_port is not None and port != stats_port:
                p.add(what, f"{kind} port {hg.get('port')} is not the stats "
                      f"listener's ({stats_port})")
            if (pr.get("timeoutSeconds") or 1) < 1:
                p.add(what, f"{kind} timeout under 1 s")

        probe("livenessProbe", "/healthz")
        probe("readinessProbe", "/readyz")
        res = c.get("resources") or {}
        for k in ("cpu", "memory"):
            if not get(res, "requests", k):
                p.add(what, f"no {k} request")
        if not get(res, "limits", "memory"):
            p.add(what, "no memory limit")
        if cfg is not None and dep is not None:
            dt = duration_s(get(cfg, "global", "drain-timeout", -1, default="30s"))
            gp = get(dep, "spec", "template", "spec", "terminationGracePeriodSeconds",
                     default=30)
            if dt is not None and gp <= dt:
                p.add(what, f"terminationGracePeriodSeconds {gp} is not longer "
                      f"than drain-timeout ({dt:g} s): SIGKILL cuts the drain")

    def target(port):
        return cports.get(port, None) if isinstance(port, str) else port

    # -- the LoadBalancer Service -----------------------------------------
    if lb is not None:
        what = f"Service {get(lb, 'metadata', 'name')}"
        ann = get(lb, "metadata", "annotations", default={}) or {}
        spec = lb.get("spec") or {}
        if not matches(spec.get("selector"), pod_labels):
            p.add(what, "selector does not select the relay pods")
        if ann.get(AWS + "type") not in ("nlb", "external"):
            p.add(what, f"annotation {AWS}type {ann.get(AWS + 'type')}: want "
                  "nlb or external (an NLB)")
        if ann.get(AWS + "type") == "external" and \
                ann.get(AWS + "nlb-target-type") not in ("ip", "instance"):
            p.add(what, f"{AWS}nlb-target-type missing")
        proxy = ann.get(PROXY_ANN)
        if proxy not in (None, "*"):
            p.add(what, f"{PROXY_ANN} {proxy!r}: the NLB takes '*' only")
        proxy = proxy == "*"
        pmap = PORT_MAP[proxy]
        reached = set()
        for sp in spec.get("ports") or []:
            pub = sp.get("port")
            tp = target(sp.get("targetPort", pub))
            pw = f"{what} port {pub}"
            if sp.get("protocol", "TCP") != "TCP":
                p.add(pw, "not TCP")
            if pub not in pmap:
                p.add(pw, f"not a public port of the official map {sorted(pmap)}")
                continue
            want_port, want_tls, want_up = pmap[pub]
            if tp != want_port:
                p.add(pw, f"targets {sp.get('targetPort')} ({tp}): the port map "
                      f"says {want_port}")
            if tp == stats_port:
                p.add(pw, "reaches the stats listener from outside")
            if tp not in set(cports.values()):
                p.add(pw, f"targets {tp}, not a container port")
            if cfg is None:
                continue
            name = lports.get(tp)
            if name is None:
                p.add(pw, f"no listener binds {tp}")
                continue
            reached.add(name)
            sec = lsts[name]
            if on(sec, "tls") != want_tls:
                p.add(pw, f"listener {name}: tls = {'on' if on(sec, 'tls') else 'off'}, "
                      f"port {pub} wants {'on' if want_tls else 'off'}")
            if get(sec, "upstream", -1) != want_up:
                p.add(pw, f"listener {name}: upstream {get(sec, 'upstream', -1)}, "
                      f"port {pub} carries {want_up}")
        for name in sorted(set(lsts) - reached):
            p.add(what, f"listener {name} is reached by no port of the load balancer")
        for name, sec in sorted(lsts.items()):
            ap = on(sec, "accept-proxy")
            if proxy and not ap:
                p.add(what, f"PROXY on every port of the NLB, but listener "
                      f"{name} has accept-proxy = off")
            if not proxy and ap:
                p.add(what, f"listener {name} expects a PROXY header the load "
                      "balancer does not send")
            if ap:
                nets = sec.get("trusted-proxies", [])
                if not nets:
                    p.add(what, f"listener {name}: accept-proxy without "
                          "trusted-proxies")
                for n in nets:
                    if ipaddress.ip_network(n, strict=False).prefixlen < 8:
                        p.add(what, f"listener {name}: trusted-proxies {n} "
                              "trusts (nearly) everyone")
        etp = spec.get("externalTrafficPolicy", "Cluster")
        preserve = ann.get(AWS + "target-group-attributes", "")
        if proxy:
            if etp == "Local":
                p.add(what, "externalTrafficPolicy Local with PROXY headers: "
                      "with instance targets the pod sees the client's own "
                      "address, which trusted-proxies refuses")
            if "preserve_client_ip.enabled=true" in preserve or \
                    (ann.get(AWS + "nlb-target-type") == "ip" and
                     "preserve_client_ip.enabled=false" not in preserve):
                p.add(what, "the NLB preserves client addresses with PROXY "
                      "headers: the source is then no trusted proxy")
        else:
            if ann.get(AWS + "nlb-target-type") == "ip":
                if "preserve_client_ip.enabled=true" not in preserve:
                    p.add(what, "no PROXY headers and the client address not "
                          "preserved: every client looks like the NLB")
            elif etp != "Local":
                p.add(what, "no PROXY headers and externalTrafficPolicy "
                      f"{etp}: the source address is a node's")
        hp = ann.get(AWS + "healthcheck-port")
        if hp is not None and stats_port is not None and str(stats_port) != hp:
            p.add(what, f"health check port {hp} is not the stats port")
        if hp is not None and ann.get(AWS + "healthcheck-path") != "/readyz":
            p.add(what, "health check path is not /readyz")

    # -- the metrics Service ----------------------------------------------
    if metrics is not None:
        what = f"Service {get(metrics, 'metadata', 'name')}"
        spec = metrics.get("spec") or {}
        if not matches(spec.get("selector"), pod_labels):
            p.add(what, "selector does not select the relay pods")
        tps = [target(sp.get("targetPort", sp.get("port")))
               for sp in spec.get("ports") or []]
        if stats_port is not None and tps != [stats_port]:
            p.add(what, f"targets {tps}, want the stats port [{stats_port}] only")
        if spec.get("externalIPs") or spec.get("loadBalancerIP"):
            p.add(what, "exposed outside the cluster")

    # -- autoscaler, disruption budget ------------------------------------
    minr = None
    if hpa is not None:
        what = f"HorizontalPodAutoscaler {get(hpa, 'metadata', 'name')}"
        ref = get(hpa, "spec", "scaleTargetRef", default={}) or {}
        if dep is not None and (ref.get("kind") != "Deployment" or
                                ref.get("name") != get(dep, "metadata", "name")):
            p.add(what, f"targets {ref.get('kind')} {ref.get('name')}, not the Deployment")
        minr = get(hpa, "spec", "minReplicas", default=1)
        maxr = get(hpa, "spec", "maxReplicas", default=0)
        if minr < 2:
            p.add(what, f"minReplicas {minr}: one pod is no fleet")
        if maxr < minr:
            p.add(what, f"maxReplicas {maxr} < minReplicas {minr}")
        cpu = [m for m in get(hpa, "spec", "metrics", default=[]) or []
               if m.get("type") == "Resource" and get(m, "resource", "name") == "cpu"
               and get(m, "resource", "target", "type") == "Utilization"]
        if not cpu:
            p.add(what, "no CPU utilization metric")
    if pdb is not None:
        what = f"PodDisruptionBudget {get(pdb, 'metadata', 'name')}"
        if not matches(get(pdb, "spec", "selector", "matchLabels"), pod_labels):
            p.add(what, "selector does not select the relay pods")
        spec = pdb.get("spec") or {}
        if "maxUnavailable" in spec:
            if spec["maxUnavailable"] in (0, "0%"):
                p.add(what, "maxUnavailable 0: no node can ever be drained")
        elif "minAvailable" in spec:
            ma = spec["minAvailable"]
            if isinstance(ma, int) and minr is not None and ma >= minr:
                p.add(what, f"minAvailable {ma} >= minReplicas {minr}: no "
                      "node can be drained at the minimum")
        else:
            p.add(what, "neither maxUnavailable nor minAvailable")

    # -- NetworkPolicy ----------------------------------------------------
    if netpol is not None:
        what = f"NetworkPolicy {get(netpol, 'metadata', 'name')}"
        spec = netpol.get("spec") or {}
        if not matches(get(spec, "podSelector", "matchLabels"), pod_labels):
            p.add(what, "podSelector does not select the relay pods")
        types = spec.get("policyTypes") or []
        if "Ingress" not in types:
            p.add(what, "policyTypes lacks Ingress")
        open_ports = set()
        for i, rule in enumerate(spec.get("ingress") or []):
            ports = rule.get("ports")
            if not ports:
                p.add(what, f"ingress rule {i} has no ports: it admits the "
                      "stats port too")
                continue
            nums = {target(pt.get("port")) for pt in ports}
            peers = rule.get("from")
            if not peers:
                open_ports |= nums
                if stats_port in nums:
                    p.add(what, f"ingress rule {i} opens the stats port to anyone")
                continue
            for peer in peers:
                cidr = get(peer, "ipBlock", "cidr")
                if cidr and ipaddress.ip_network(cidr.split("#")[0].strip(),
                                                 strict=False).prefixlen < 8:
                    p.add(what, f"ingress rule {i} admits {cidr}: (nearly) everyone")
                if "namespaceSelector" in peer and not get(peer, "namespaceSelector",
                                                           "matchLabels"):
                    p.add(what, f"ingress rule {i} admits every namespace")
        for pt in sorted(set(lports) - open_ports):
            p.add(what, f"listener port {pt} is not open to clients")
        for pt in sorted(open_ports - set(lports) if cfg is not None else ()):
            p.add(what, f"port {pt} is open but no listener binds it")
        if "Egress" in types and cfg is not None:
            eg = spec.get("egress") or []
            allowed = set()
            for rule in eg:
                for pt in rule.get("ports") or []:
                    allowed.add((pt.get("port"), pt.get("protocol", "TCP")))
            if (53, "UDP") not in allowed:
                p.add(what, "egress lacks DNS (53/UDP): upstream names never resolve")
            for sec, v in cfg.items():
                if not sec.startswith("upstream "):
                    continue
                for srv in v.get("server", []):
                    port = split_addr(srv)[1]
                    if (port, "TCP") not in allowed:
                        p.add(what, f"egress does not allow {srv} ({sec})")

    # -- ServiceMonitor ---------------------------------------------------
    for sm in sms:
        what = f"ServiceMonitor {get(sm, 'metadata', 'name')}"
        mlabels = get(metrics, "metadata", "labels", default={}) if metrics else {}
        if not matches(get(sm, "spec", "selector", "matchLabels"), mlabels):
            p.add(what, "selector does not select the metrics Service")
        if lb is not None and matches(get(sm, "spec", "selector", "matchLabels"),
                                      get(lb, "metadata", "labels", default={}) or {}):
            p.add(what, "selector also selects the public Service")
        names = [sp.get("name") for sp in get(metrics, "spec", "ports", default=[]) or []]
        eps = get(sm, "spec", "endpoints", default=[]) or []
        if not eps:
            p.add(what, "no endpoints")
        for ep in eps:
            if ep.get("port") not in names:
                p.add(what, f"endpoint port {ep.get('port')} is not the metrics "
                      f"Service's {names}")
            if ep.get("path", "/metrics") != "/metrics":
                p.add(what, f"path {ep.get('path')}, want /metrics")

    summary = None
    if cfg is not None and lb is not None:
        pub = [f"{sp.get('port')}->{target(sp.get('targetPort'))}"
               for sp in get(lb, "spec", "ports", default=[])]
        summary = (f"{len(docs)} objects ({', '.join(sorted(by_kind))}); "
                   f"ports {' '.join(pub)}; stats {stats_port}; "
                   f"PROXY {'on every port' if get(lb, 'metadata', 'annotations', PROXY_ANN) else 'off'}")
    return p, summary


# ---------------------------------------------------------------------------
# Self-test: each break of a good rendering must be refused.


def find(docs, kind, pick=None):
    for d in docs:
        if d.get("kind") == kind and (pick is None or pick(d)):
            return d
    raise KeyError(kind)


def dep_c(docs):
    return find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def lb_svc(docs):
    return find(docs, "Service", lambda s: s["spec"].get("type") == "LoadBalancer")


def set_conf(docs, fn):
    cm = find(docs, "ConfigMap")
    cm["data"][CONFIG_KEY] = fn(cm["data"][CONFIG_KEY])


def conf_sub(old, new):
    def f(text):
        if old not in text:
            raise KeyError(old)
        return text.replace(old, new, 1)
    return f


class NotApplicable(Exception):
    pass


def only_proxy(fn):
    """fn, for a rendering with PROXY headers (its argument tells)."""
    def f(x):
        text = x if isinstance(x, str) else yaml.safe_dump(x)
        if "accept-proxy = on" not in text and PROXY_ANN not in text:
            raise NotApplicable()
        return fn(x)
    return f


def only_plain(fn):
    def f(x):
        if PROXY_ANN in yaml.safe_dump(x):
            raise NotApplicable()
        return fn(x)
    return f


def conf_re(pattern, repl):
    def f(text):
        out, n = re.subn(pattern, repl, text, count=1)
        if not n:
            raise KeyError(pattern)
        return out
    return f


BREAKS = [
    ("an unknown kind", lambda d: d.append({"apiVersion": "v1", "kind": "Pod",
                                            "metadata": {"name": "x"}})),
    ("Deployment apiVersion extensions/v1beta1",
     lambda d: find(d, "Deployment").update(apiVersion="extensions/v1beta1")),
    ("no NetworkPolicy", lambda d: d.remove(find(d, "NetworkPolicy"))),
    ("no PodDisruptionBudget", lambda d: d.remove(find(d, "PodDisruptionBudget"))),
    ("no HorizontalPodAutoscaler", lambda d: d.remove(find(d, "HorizontalPodAutoscaler"))),
    ("ConfigMap name without its hash",
     lambda d: find(d, "ConfigMap")["metadata"].update(name="lifeline-config")),
    ("the configuration does not load", lambda d: set_conf(
        d, lambda t: t + "\n[global]\nno-such-key = 1\n")),
    ("the configuration warns (stats public = off)",
     lambda d: set_conf(d, conf_sub("public = on", "public = off"))),
    ("stats on loopback", lambda d: set_conf(d, conf_sub("listen = 0.0.0.0:8199",
                                                         "listen = 127.0.0.1:8199"))),
    ("workers = auto", lambda d: set_conf(d, conf_sub("workers = 2", "workers = auto"))),
    ("a listener below 1024", lambda d: set_conf(d, conf_re(
        r"(bind = [^\n]*:)1\d{4}\n", r"\g<1>443\n"))),
    ("replicas in the Deployment",
     lambda d: find(d, "Deployment")["spec"].update(replicas=3)),
    ("maxUnavailable 1", lambda d: find(d, "Deployment")["spec"]["strategy"]
     ["rollingUpdate"].update(maxUnavailable=1)),
    ("runAsNonRoot false", lambda d: find(d, "Deployment")["spec"]["template"]["spec"]
     ["securityContext"].update(runAsNonRoot=False)),
    ("runAsUser 0", lambda d: find(d, "Deployment")["spec"]["template"]["spec"]
     ["securityContext"].update(runAsUser=0)),
    ("no seccomp profile", lambda d: find(d, "Deployment")["spec"]["template"]["spec"]
     ["securityContext"].pop("seccompProfile")),
    ("root filesystem writable",
     lambda d: dep_c(d)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("privilege escalation allowed",
     lambda d: dep_c(d)["securityContext"].update(allowPrivilegeEscalation=True)),
    ("capabilities not dropped",
     lambda d: dep_c(d)["securityContext"]["capabilities"].update(drop=["NET_RAW"])),
    ("NET_BIND_SERVICE added without a low port",
     lambda d: dep_c(d)["securityContext"]["capabilities"].update(add=["NET_BIND_SERVICE"])),
    ("liveness probe path /", lambda d: dep_c(d)["livenessProbe"]["httpGet"].update(path="/")),
    ("readiness probe on /healthz",
     lambda d: dep_c(d)["readinessProbe"]["httpGet"].update(path="/healthz")),
    ("readiness probe on another port",
     lambda d: dep_c(d)["readinessProbe"]["httpGet"].update(port=8200)),
    ("no liveness probe", lambda d: dep_c(d).pop("livenessProbe")),
    ("a container port the config does not bind",
     lambda d: dep_c(d)["ports"].append({"name": "extra", "containerPort": 19999})),
    ("config mounted with subPath",
     lambda d: dep_c(d)["volumeMounts"][0].update(subPath=CONFIG_KEY)),
    ("the volume names another ConfigMap",
     lambda d: find(d, "Deployment")["spec"]["template"]["spec"]["volumes"][0]
     ["configMap"].update(name="lifeline-config-old0000000")),
    ("-c names another file", lambda d: dep_c(d).update(
        command=["lifeline", "-c", "/etc/other/lifeline.conf"])),
    ("no memory limit", lambda d: dep_c(d)["resources"].pop("limits")),
    ("grace period within the drain",
     lambda d: find(d, "Deployment")["spec"]["template"]["spec"].update(
         terminationGracePeriodSeconds=30)),
    ("Service targets a port no listener binds",
     lambda d: lb_svc(d)["spec"]["ports"][0].update(targetPort=19998)),
    ("Service port 443 to the plain listener",
     lambda d: [sp.update(targetPort=[q for q in lb_svc(d)["spec"]["ports"]
                                      if q["port"] != 443][0]["targetPort"])
                for sp in lb_svc(d)["spec"]["ports"] if sp["port"] == 443]),
    ("Service exposes the stats port",
     lambda d: lb_svc(d)["spec"]["ports"].append({"name": "stats", "port": 8199,
                                                   "targetPort": 8199})),
    ("Service selects nothing",
     lambda d: lb_svc(d)["spec"].update(selector={"app": "other"})),
    ("no NLB annotation", lambda d: lb_svc(d)["metadata"]["annotations"].pop(AWS + "type")),
    ("PROXY annotation flipped", lambda d: (
        lb_svc(d)["metadata"]["annotations"].pop(PROXY_ANN)
        if PROXY_ANN in lb_svc(d)["metadata"]["annotations"]
        else lb_svc(d)["metadata"]["annotations"].update({PROXY_ANN: "*"}))),
    ("a listener's accept-proxy flipped", lambda d: set_conf(d, lambda t: (
        re.sub(r"accept-proxy = on\ntrusted-proxies = [^\n]*\n", "", t, count=1)
        if "accept-proxy = on" in t
        else t.replace("upstream = chat\n",
                       "upstream = chat\naccept-proxy = on\ntrusted-proxies = 10.0.0.0/16\n", 1)))),
    ("PROXY trusted from everyone", lambda d: set_conf(d, only_proxy(conf_re(
        r"(?m)^trusted-proxies = [^\n]*\n", "trusted-proxies = 0.0.0.0/0\n")))),
    ("PROXY with externalTrafficPolicy Local", lambda d: only_proxy(
        lambda s: s["spec"].update(externalTrafficPolicy="Local"))(lb_svc(d))),
    ("PROXY with client addresses preserved", lambda d: only_proxy(
        lambda s: s["metadata"]["annotations"].update(
            {AWS + "target-group-attributes": "preserve_client_ip.enabled=true"}))(lb_svc(d))),
    ("no PROXY and client addresses not preserved", lambda d: only_plain(
        lambda s: s["metadata"]["annotations"].update(
            {AWS + "target-group-attributes": "preserve_client_ip.enabled=false"}))(lb_svc(d))),
    ("metrics Service made NodePort",
     lambda d: find(d, "Service", lambda s: s["spec"].get("type", "ClusterIP") == "ClusterIP")
     ["spec"].update(type="NodePort")),
    ("HPA targets another Deployment",
     lambda d: find(d, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(name="x")),
    ("HPA minReplicas 1",
     lambda d: find(d, "HorizontalPodAutoscaler")["spec"].update(minReplicas=1)),
    ("PDB maxUnavailable 0",
     lambda d: find(d, "PodDisruptionBudget")["spec"].update(maxUnavailable=0)),
    ("NetworkPolicy opens the stats port to anyone",
     lambda d: find(d, "NetworkPolicy")["spec"]["ingress"][0]["ports"].append(
         {"port": 8199, "protocol": "TCP"})),
    ("NetworkPolicy rule without ports",
     lambda d: find(d, "NetworkPolicy")["spec"]["ingress"].append({})),
    ("NetworkPolicy closes a listener port",
     lambda d: find(d, "NetworkPolicy")["spec"]["ingress"][0]["ports"].pop(0)),
    ("NetworkPolicy egress without DNS",
     lambda d: find(d, "NetworkPolicy")["spec"]["egress"].pop(0)),
    ("NetworkPolicy selects other pods",
     lambda d: find(d, "NetworkPolicy")["spec"]["podSelector"].update(
         matchLabels={"app": "other"})),
]


def self_test(docs, lifeline):
    p, _ = check(copy.deepcopy(docs), lifeline)
    if p:
        print("kube-schema self-test: the rendering to break is not good:")
        for x in p:
            print("  " + x)
        return 1
    failed = skipped = 0
    for name, brk in BREAKS:
        d = copy.deepcopy(docs)
        try:
            brk(d)
        except NotApplicable:
            skipped += 1
            continue
        except (KeyError, IndexError, ValueError) as e:
            print(f"  cannot apply break '{name}': {e!r}")
            failed += 1
            continue
        p, _ = check(d, lifeline)
        if p:
            print(f"  refused: {name}: {p[0]}")
        else:
            print(f"  NOT REFUSED: {name}")
            failed += 1
    tried = len(BREAKS) - skipped
    print(f"kube-schema self-test: {tried - failed} of {tried} breaks refused "
          f"({skipped} apply to the other kind of rendering)")
    return 1 if failed else 0


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lifeline")
    ap.add_argument("--base-config")
    ap.add_argument("--image")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--extract-config", action="store_true")
    ap.add_argument("rendered")
    a = ap.parse_args(argv)
    with open(a.rendered) as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            print(f"{a.rendered}: not YAML: {e}")
            return 1
    if a.extract_config:
        sys.stdout.write(find(docs, "ConfigMap")["data"][CONFIG_KEY])
        return 0
    if not a.lifeline:
        ap.error("--lifeline is required")
    if a.self_test:
        return self_test(docs, a.lifeline)
    base = None
    if a.base_config:
        p = Problems()
        with open(a.base_config) as f:
            base = load_config(a.lifeline, f.read(), p)
        if base is None:
            print("\n".join(p))
            return 1
    p, summary = check(docs, a.lifeline, base, a.image, a.prefix)
    if p:
        for x in p:
            print(x)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
