"""Our TLS answers like the decoy's (issue 15, point 4): a spread of
ClientHellos, as JARM-style scanners send them, gets the same answer from
lifeline's camouflage listener as from the decoy web server itself.

The decoy is Debian's nginx (decoy.py) with Mozilla's "intermediate" TLS
settings, session tickets on, a 5-minute session timeout and no HTTP/2;
lifeline's TLS listener is set up like the camouflage preset's 443
(tls-alpn = http/1.1, http/1.0, http/0.9, two tickets of 5 minutes, the same suites in the
client's preference, client-keepalive = off), with decoy = the same
nginx's plain HTTP port.  Both use the same certificate and key files (an
EC P-256 pair and an RSA-2048 pair, made here with openssl); every test
runs with each.

Each probe is sent to both by Debian's `openssl s_client -msg`, whose
dump of every handshake message (TLS 1.3's decrypted ones too) is parsed
here, and, where Python's ssl can express the hello, by Python's ssl as
well.  Compared field by field: whether the handshake completes or the
alert that ends it (and s_client's error reason), the negotiated version
and suite, the ServerHello (session id length, compression, downgrade
sentinel, extensions in order with their contents, the key share's
group), TLS 1.3's EncryptedExtensions, ALPN, the Certificate message byte
for byte, the key exchange group and signature scheme, the session
tickets (how many, lifetime hint, nonce length, extensions) and the
alerts the server sends (close_notify after the answer included).  Any
difference fails the test and names the field.

Each difference has one test that reports it: the server_name
acknowledgement (test_sni_acknowledged_like_nginx) and the tickets' length
(test_tickets_like_nginx) are left out of the per-probe comparison.  The
one documented difference (conf.5, tls-alpn: a client that offers none of
our protocols gets a handshake without ALPN where nginx sends
no_application_protocol) is asserted as such, and the rest of that answer
is compared with nginx's answer to the same hello without ALPN.  Last,
the HTTP answer inside TLS through lifeline equals the one from nginx's
own TLS port, Date aside, and so do the close (close_notify) and its time.
"""
import hashlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import (SLOW, Server, make_config, run_cli, start_daemon)
from decoy import CAMO_TIMEOUTS, CAMO_TLS, Nginx

HOST = "relay.test"

# The TLS 1.1 probe asks Python's ssl for a deprecated version on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")

# What the camouflage preset sets on its 443 listener (lifeline
# --print-config --preset camouflage), pointed at the test's nginx.

# nginx's keepalive_timeout in decoy.Nginx (seconds)
NGINX_KEEPALIVE = 3

RUN_TIMEOUT = 15.0 * SLOW


def openssl():
    path = shutil.which("openssl")
    if not path:
        pytest.fail("openssl is missing (Debian package openssl; "
                    "scripts/deps.sh test installs it)")
    return path


# ---------------------------------------------------------------------------
# certificates: one EC P-256 and one RSA-2048 pair, both for relay.test


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity-certs")
    out = {}
    for kind, newkey in (("ec", ["-newkey", "ec", "-pkeyopt",
                                 "ec_paramgen_curve:prime256v1"]),
                         ("rsa", ["-newkey", "rsa:2048"])):
        cert, key = d / f"{kind}.crt", d / f"{kind}.key"
        subprocess.run(
            [openssl(), "req", "-x509", *newkey, "-nodes", "-days", "2",
             "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=30)
        out[kind] = (cert, key)
    return out


def h_chat(c, rec):
    """The chat upstream: no probe here may ever reach it."""
    rec["data"] = c.recv(65536)


class Pair:
    """nginx (plain and TLS ports) and lifeline in front of its plain port,
    with the same certificate."""

    def __init__(self, tmp_path, cert, key, **listen_overrides):
        self.nginx = Nginx(tmp_path, tls=[(cert, key)],
                           keepalive_timeout=NGINX_KEEPALIVE)
        self.chat = Server(h_chat, name="chat")
        listen = dict(CAMO_TLS, cert=str(cert), key=str(key),
                      upstream="chat", decoy="web")
        for k, v in listen_overrides.items():
            k = k.replace("_", "-")
            if v is None:
                listen.pop(k, None)
            else:
                listen[k] = v
        self.daemon = start_daemon(tmp_path, make_config(
            {"chat": [self.chat.spec], "web": [self.nginx.spec]},
            {"https": listen}, timeouts=CAMO_TIMEOUTS))
        self.lifeline = self.daemon.addr("https")

    def check_chat_untouched(self):
        assert self.chat.accepted == 0, \
            "a probe reached the chat upstream: it must go to the decoy"


@pytest.fixture(params=["ec", "rsa"])
def pair(request, tmp_path, certs):
    return Pair(tmp_path, *certs[request.param])


# ---------------------------------------------------------------------------
# openssl s_client -msg: run and parse

ALERTS = {0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
          22: "record_overflow", 40: "handshake_failure",
          42: "bad_certificate", 47: "illegal_parameter", 48: "unknown_ca",
          50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
          71: "insufficient_security", 80: "internal_error",
          86: "inappropriate_fallback", 90: "user_canceled",
          109: "missing_extension", 110: "unsupported_extension",
          112: "unrecognized_name", 116: "certificate_required",
          120: "no_application_protocol"}

EXT_NAMES = {0: "server_name", 11: "ec_point_formats", 16: "alpn",
             23: "extended_master_secret", 35: "session_ticket",
             41: "pre_shared_key", 42: "early_data",
             43: "supported_versions", 51: "key_share",
             65281: "renegotiation_info"}

GROUPS = {0x17: "secp256r1", 0x18: "secp384r1", 0x19: "secp521r1",
          0x1d: "x25519", 0x1e: "x448", 0x100: "ffdhe2048"}

HEADER = re.compile(r"^(<<<|>>>) (\S+ \S+), (\w+) \[length ([0-9a-f]+)\]"
                    r"(?:, (.*))?$")

# The request s_client sends once the handshake is done; the answer comes
# after the tickets, so waiting for the close sees them all.
REQUEST = (f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
           .encode())


def s_client(addr, args):
    """(messages, output): every record s_client -msg dumped, as (dir,
    content type, name, bytes), and its whole output.  The client sends
    REQUEST after the handshake and waits (-ign_eof) for the server to
    close."""
    host, port = addr
    cmd = [openssl(), "s_client", "-connect", f"{host}:{port}", "-msg",
           "-ign_eof", *args]
    try:
        r = subprocess.run(cmd, input=REQUEST, capture_output=True,
                           timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(cmd)}: still running after "
                             f"{RUN_TIMEOUT}s")
    out = (r.stdout + r.stderr).decode("latin-1")
    msgs = []
    cur = None
    for line in out.splitlines():
        m = HEADER.match(line)
        if m:
            cur = [m.group(1), m.group(3), m.group(5) or "", bytearray()]
            msgs.append(cur)
            continue
        if cur is not None and re.fullmatch(r"    (?:[0-9a-f]{2} ?)+", line):
            cur[3] += bytes.fromhex(line)
        else:
            cur = None
    return [(d, ct, name, bytes(b)) for d, ct, name, b in msgs], out


def u16(b, i):
    return int.from_bytes(b[i:i + 2], "big")


def extensions(b):
    """[(type, data)] of an extensions block (with its 2-byte length)."""
    out = []
    end = 2 + u16(b, 0)
    i = 2
    while i < end:
        t, n = u16(b, i), u16(b, i + 2)
        out.append((t, b[i + 4:i + 4 + n]))
        i += 4 + n
    return out


def ext_view(exts):
    """Extensions as compared: names in order, with their contents, except
    key_share's key (random), for which only the group counts."""
    view = []
    for t, data in exts:
        name = EXT_NAMES.get(t, str(t))
        if t == 51:
            view.append((name, GROUPS.get(u16(data, 0), hex(u16(data, 0)))))
        else:
            view.append((name, data.hex()))
    return view


def server_answer(addr, args):
    """What the server answered to one hello, as a dict of fields."""
    msgs, out = s_client(addr, args)
    got = {}
    hs = [(name, b) for d, ct, name, b in msgs
          if d == "<<<" and ct == "Handshake"]
    alerts = [ALERTS.get(b[1], str(b[1])) if len(b) == 2 else b.hex()
              for d, ct, name, b in msgs if d == "<<<" and ct == "Alert"]
    got["alerts from the server"] = alerts
    reasons = sorted({line.split(":")[5] for line in out.splitlines()
                      if ":error:" in line and line.count(":") >= 6})
    got["s_client error"] = reasons
    names = [n for n, _ in hs]
    got["handshake messages"] = names
    sh = next((b for n, b in hs if n == "ServerHello"), None)
    if sh is None:
        got["outcome"] = "failed"
        return got, out
    body = sh[4:]
    sid_len = body[34]
    i = 35 + sid_len
    suite = u16(body, i)
    exts = extensions(body[i + 3:]) if len(body) > i + 3 else []
    version = u16(body, 0)
    for t, data in exts:
        if t == 43:
            version = u16(data, 0)
    got["outcome"] = "completed" if "Finished" in names else "failed"
    got["version"] = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2"}.get(
        version, hex(version))
    got["cipher suite"] = f"0x{suite:04x}"
    m = re.search(r"Cipher is (\S+)", out)
    got["cipher name"] = m.group(1) if m else None
    got["ServerHello session id length"] = sid_len
    got["ServerHello compression"] = body[i + 2]
    got["ServerHello extensions"] = ext_view(exts)
    # the last 8 bytes of the random: TLS 1.3's downgrade sentinel, if any
    got["ServerHello random tail"] = (body[26:34].hex()
                                      if body[26:33] == b"DOWNGRD" else "")
    all_exts = list(exts)
    ee = next((b for n, b in hs if n == "EncryptedExtensions"), None)
    if ee is not None:
        ee_exts = extensions(ee[4:])
        got["EncryptedExtensions"] = ext_view(ee_exts)
        all_exts += ee_exts
    alpn = next((d for t, d in all_exts if t == 16), None)
    got["alpn"] = alpn[3:3 + alpn[2]].decode() if alpn else None
    cert = next((b for n, b in hs if n == "Certificate"), None)
    got["certificate message"] = cert.hex() if cert else None
    ske = next((b for n, b in hs if n == "ServerKeyExchange"), None)
    if ske is not None:  # ECDHE: curve_type 3, group, key, sigalg, sig
        p = ske[4:]
        got["key exchange group"] = GROUPS.get(u16(p, 1), hex(u16(p, 1)))
        got["signature scheme"] = f"0x{u16(p, 4 + p[3]):04x}"
    ks = next((d for t, d in exts if t == 51), None)
    if ks is not None:
        got["key exchange group"] = GROUPS.get(u16(ks, 0), hex(u16(ks, 0)))
    cv = next((b for n, b in hs if n == "CertificateVerify"), None)
    if cv is not None:
        got["signature scheme"] = f"0x{u16(cv, 4):04x}"
    tickets = []
    for n, b in hs:
        if n != "NewSessionTicket":
            continue
        p = b[4:]
        if got["version"] == "TLSv1.3":
            nonce = p[8]
            j = 9 + nonce
            tlen = u16(p, j)
            tickets.append({"lifetime": int.from_bytes(p[:4], "big"),
                            "nonce length": nonce, "ticket length": tlen,
                            "extensions": ext_view(
                                extensions(p[j + 2 + tlen:]))})
        else:
            tickets.append({"lifetime": int.from_bytes(p[:4], "big"),
                            "ticket length": u16(p, 4)})
    got["tickets"] = tickets
    return got, out


def both(pair, args):
    """(nginx's answer, lifeline's answer) to the same hello, sent at once."""
    res = {}

    def go(which, addr):
        try:
            res[which] = server_answer(addr, args)[0]
        except BaseException as e:  # re-raised below
            res[which] = e

    threads = [threading.Thread(target=go, args=(w, a), daemon=True)
               for w, a in (("nginx", pair.nginx.tls_addr),
                            ("lifeline", pair.lifeline))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RUN_TIMEOUT + 5)
    for w in ("nginx", "lifeline"):
        if isinstance(res.get(w), BaseException):
            raise res[w]
        assert w in res, f"s_client against {w} did not finish"
    return res["nginx"], res["lifeline"]


# Each difference found is reported by one test of its own: the probes
# leave out the server_name acknowledgement (test_sni_acknowledged_like_nginx)
# and the tickets' length (test_tickets_like_nginx).
OWNED_EXTENSIONS = {"server_name"}


def comparable(field, value, owned=True):
    if not owned or value is None:
        return value
    if field in ("ServerHello extensions", "EncryptedExtensions"):
        return [(n, v) for n, v in value if n not in OWNED_EXTENSIONS]
    if field == "tickets":
        return [{f: v for f, v in t.items() if f != "ticket length"}
                for t in value]
    return value


def short_digest(hexdata):
    data = bytes.fromhex(hexdata or "")
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def differences(nginx, ours, owned=True):
    """['field: nginx X, lifeline Y', ...] for every field that differs."""
    out = []
    for k in sorted(set(nginx) | set(ours)):
        a = comparable(k, nginx.get(k), owned)
        b = comparable(k, ours.get(k), owned)
        if a != b:
            if k == "certificate message":
                a, b = (short_digest(x) for x in (a, b))
            out.append(f"{k}: nginx {a!r}, lifeline {b!r}")
    return out


def assert_same(nginx, ours, what, owned=True):
    diffs = differences(nginx, ours, owned)
    assert not diffs, (f"{what}: lifeline's TLS answers unlike nginx's:\n  "
                       + "\n  ".join(diffs))


# ---------------------------------------------------------------------------
# the probes


def all_suites(reverse=False):
    """Every TLS 1.2 suite OpenSSL knows (security level 0), in OpenSSL's
    order or reversed (as JARM sends them)."""
    r = subprocess.run([openssl(), "ciphers", "ALL:@SECLEVEL=0"],
                       capture_output=True, check=True, timeout=10)
    names = [n for n in r.stdout.decode().strip().split(":")
             if not n.startswith("TLS_")]
    if reverse:
        names.reverse()
    return ":".join(names) + ":@SECLEVEL=0"


T13 = {"chacha": "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:"
                 "TLS_AES_256_GCM_SHA384",
       "aes128": "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                 "TLS_CHACHA20_POLY1305_SHA256",
       "aes256": "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:"
                 "TLS_AES_128_GCM_SHA256"}
T12 = {"chacha": "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                 "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384",
       "aes128": "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
       "aes256": "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                 "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"}
CBC_ONLY = ("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
            "ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:"
            "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:"
            "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384")
RSA_KX_ONLY = ("AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:"
               "AES256-SHA256:AES128-SHA:AES256-SHA")
SNI = ["-servername", HOST]
NO_SNI = ["-noservername"]

# name -> s_client arguments.  Probes that complete with nginx are
# compared field by field; probes that fail must fail alike.
PROBES = {
    # versions and suite orders, SNI and ALPN as a browser sends them
    "tls13": ["-tls1_3", *SNI, "-alpn", "h2,http/1.1"],
    "tls13-chacha-first": ["-tls1_3", "-ciphersuites", T13["chacha"], *SNI],
    "tls13-aes128-first": ["-tls1_3", "-ciphersuites", T13["aes128"], *SNI],
    "tls13-aes256-first": ["-tls1_3", "-ciphersuites", T13["aes256"], *SNI],
    "tls12": ["-tls1_2", *SNI, "-alpn", "h2,http/1.1"],
    "tls12-chacha-first": ["-tls1_2", "-cipher", T12["chacha"], *SNI],
    "tls12-aes128-first": ["-tls1_2", "-cipher", T12["aes128"], *SNI],
    "tls12-aes256-first": ["-tls1_2", "-cipher", T12["aes256"], *SNI],
    "tls12-all-suites": ["-tls1_2", "-cipher", "@ALL", *SNI],
    "tls12-all-suites-reversed": ["-tls1_2", "-cipher", "@ALL-REVERSED",
                                  *SNI],
    "tls12-or-13": [*SNI],
    # SNI
    "tls13-no-sni": ["-tls1_3", *NO_SNI],
    "tls12-no-sni": ["-tls1_2", *NO_SNI],
    "tls13-other-sni": ["-tls1_3", "-servername", "www.example.org"],
    "tls12-other-sni": ["-tls1_2", "-servername", "www.example.org"],
    # ALPN offers
    "tls13-alpn-none": ["-tls1_3", *SNI],
    "tls13-alpn-http1.1": ["-tls1_3", *SNI, "-alpn", "http/1.1"],
    "tls13-alpn-h2-http1.1": ["-tls1_3", *SNI, "-alpn", "h2,http/1.1"],
    "tls13-alpn-http1.1-h2": ["-tls1_3", *SNI, "-alpn", "http/1.1,h2"],
    "tls12-alpn-http1.1": ["-tls1_2", *SNI, "-alpn", "http/1.1"],
    "tls12-alpn-none-no-sni": ["-tls1_2", *NO_SNI],
    # JARM's "rare ALPN" list (no http/1.1, no h2) and http/1.0 alone
    "tls13-alpn-jarm-rare": ["-tls1_3", *SNI, "-alpn",
                             "hq,h2c,spdy/3,spdy/2,spdy/1,http/1.0,http/0.9"],
    "tls12-alpn-http1.0": ["-tls1_2", *SNI, "-alpn", "http/1.0"],
    # key exchange groups and signature algorithms
    "tls13-p256": ["-tls1_3", *SNI, "-groups", "P-256"],
    "tls13-p384-x448": ["-tls1_3", *SNI, "-groups", "P-384:X448"],
    "tls12-p521": ["-tls1_2", *SNI, "-groups", "P-521"],
    "tls12-sigalgs-sha512": ["-tls1_2", *SNI, "-sigalgs",
                             "ECDSA+SHA512:RSA+SHA512:RSA-PSS+SHA512"],
    "tls13-sigalgs-pss": ["-tls1_3", *SNI, "-sigalgs",
                          "rsa_pss_rsae_sha384:ecdsa_secp256r1_sha256"],
}

# Hellos both must refuse, with the same alert.
FAILING = {
    "tls11-only": ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", *SNI],
    "tls10-only": ["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0", *SNI],
    "tls12-cbc-only": ["-tls1_2", "-cipher", CBC_ONLY, *SNI],
    "tls12-rsa-kx-only": ["-tls1_2", "-cipher", RSA_KX_ONLY, *SNI],
    "tls13-ccm-only": ["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256",
                       *SNI],
    "tls12-ffdhe-only": ["-tls1_2", *SNI, "-groups", "ffdhe2048"],
}

# Offers with none of the protocols tls-alpn names: nginx ends the
# handshake with no_application_protocol, lifeline goes on without ALPN
# (conf.5, tls-alpn: a WhatsApp client must never be refused).
ALPN_MISMATCH = {
    "tls13-alpn-h2-only": (["-tls1_3", *SNI, "-alpn", "h2"],
                           ["-tls1_3", *SNI]),
    "tls12-alpn-h2-only": (["-tls1_2", *SNI, "-alpn", "h2"],
                           ["-tls1_2", *SNI]),
    "tls13-alpn-unknown": (["-tls1_3", *NO_SNI, "-alpn", "wa-chat/1"],
                           ["-tls1_3", *NO_SNI]),
}


def expand(args):
    return [all_suites() if a == "@ALL" else
            all_suites(reverse=True) if a == "@ALL-REVERSED" else a
            for a in args]


# ---------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("probe", list(PROBES))
def test_hello_answered_like_nginx(pair, probe):
    nginx, ours = both(pair, expand(PROBES[probe]))
    assert_same(nginx, ours, probe)
    pair.check_chat_untouched()


@pytest.mark.parametrize("probe", list(FAILING))
def test_refused_hello_fails_alike(pair, probe):
    nginx, ours = both(pair, expand(FAILING[probe]))
    assert nginx["outcome"] == "failed", \
        f"{probe}: nginx completed a handshake it should refuse: {nginx}"
    assert ours["outcome"] == "failed", \
        f"{probe}: lifeline completed a handshake nginx refuses: {ours}"
    assert_same(nginx, ours, probe, owned=False)
    pair.check_chat_untouched()


@pytest.mark.parametrize("probe", list(ALPN_MISMATCH))
def test_alpn_mismatch_is_the_documented_difference(pair, probe):
    offer, without = ALPN_MISMATCH[probe]
    nginx, ours = both(pair, offer)
    assert nginx["outcome"] == "failed" and \
        nginx["alerts from the server"] == ["no_application_protocol"], \
        f"{probe}: nginx's answer is no longer the alert: {nginx}"
    assert ours["outcome"] == "completed" and ours["alpn"] is None, \
        f"{probe}: lifeline must go on without ALPN (conf.5): {ours}"
    # Otherwise lifeline answers as nginx answers the same hello without
    # the ALPN extension.
    nginx_plain, _ = both(pair, without)
    assert_same(nginx_plain, ours, f"{probe} (against nginx without ALPN)")


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize("sni", [SNI, ["-servername", "www.example.org"],
                                 NO_SNI], ids=["sni", "other-sni", "no-sni"])
def test_sni_acknowledged_like_nginx(pair, version, sni):
    """A server that took the client's server name says so with an empty
    server_name extension (in TLS 1.2's ServerHello, where JARM reads
    it; in TLS 1.3's EncryptedExtensions)."""
    nginx, ours = both(pair, [version, *sni])
    assert nginx["outcome"] == ours["outcome"] == "completed", (nginx, ours)
    field = ("EncryptedExtensions" if version == "-tls1_3"
             else "ServerHello extensions")
    a = [n for n, _ in nginx[field] if n == "server_name"]
    b = [n for n, _ in ours[field] if n == "server_name"]
    assert a == b, (f"server_name acknowledged in {field}: nginx "
                    f"{'yes' if a else 'no'}, lifeline {'yes' if b else 'no'}")


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize("sni", [SNI, NO_SNI], ids=["sni", "no-sni"])
def test_tickets_like_nginx(pair, version, sni):
    """As many tickets, the same lifetime hint, and tickets of the same
    size: in TLS 1.2 the NewSessionTicket goes in clear, and its length
    shows which server made it."""
    nginx, ours = both(pair, [version, *sni])
    assert nginx["outcome"] == ours["outcome"] == "completed", (nginx, ours)
    assert nginx["tickets"], f"nginx sent no ticket: {nginx}"
    count = (len(nginx["tickets"]), len(ours["tickets"]))
    assert count[0] == count[1], \
        f"tickets per handshake: nginx {count[0]}, lifeline {count[1]}"
    for field in ("lifetime", "nonce length", "extensions", "ticket length"):
        a = [t.get(field) for t in nginx["tickets"]]
        b = [t.get(field) for t in ours["tickets"]]
        assert a == b, f"tickets, {field}: nginx {a}, lifeline {b}"


# ---------------------------------------------------------------------------
# Python's ssl: a second client, and the HTTP answer inside TLS


def py_ctx(maxv=None, minv=None, ciphers=None, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    if minv:
        ctx.minimum_version = minv
    if maxv:
        ctx.maximum_version = maxv
    if ciphers:
        ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


V12, V13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
PY_PROBES = {
    "tls13": dict(alpn=["h2", "http/1.1"]),
    "tls12": dict(maxv=V12, alpn=["h2", "http/1.1"]),
    "tls12-chacha-first": dict(maxv=V12, ciphers=T12["chacha"]),
    "tls12-aes128-first": dict(maxv=V12, ciphers=T12["aes128"]),
    "tls12-aes256-first": dict(maxv=V12, ciphers=T12["aes256"]),
    "tls13-alpn-http1.1": dict(minv=V13, alpn=["http/1.1"]),
    "tls11-only": dict(minv=ssl.TLSVersion.TLSv1_1,
                       maxv=ssl.TLSVersion.TLSv1_1,
                       ciphers="DEFAULT:@SECLEVEL=0"),
    "tls12-cbc-only": dict(maxv=V12, ciphers=CBC_ONLY),
    "tls12-rsa-kx-only": dict(maxv=V12, ciphers=RSA_KX_ONLY),
}


def py_answer(addr, sni, **kw):
    ctx = py_ctx(**kw)
    raw = socket.create_connection(addr, timeout=10 * SLOW)
    try:
        s = ctx.wrap_socket(raw, server_hostname=sni)
    except ssl.SSLError as e:
        raw.close()
        return {"error": e.reason}
    try:
        return {"version": s.version(), "cipher": s.cipher()[0],
                "alpn": s.selected_alpn_protocol(),
                "certificate": s.getpeercert(binary_form=True)}
    finally:
        s.close()


@pytest.mark.parametrize("sni", [HOST, None], ids=["sni", "no-sni"])
@pytest.mark.parametrize("probe", list(PY_PROBES))
def test_python_ssl_sees_the_same(pair, probe, sni):
    nginx = py_answer(pair.nginx.tls_addr, sni, **PY_PROBES[probe])
    ours = py_answer(pair.lifeline, sni, **PY_PROBES[probe])
    diffs = [f"{k}: nginx {nginx.get(k)!r}, lifeline {ours.get(k)!r}"
             for k in sorted(set(nginx) | set(ours))
             if nginx.get(k) != ours.get(k)]
    assert not diffs, f"{probe}: Python's ssl sees a difference:\n  " + \
        "\n  ".join(diffs)
    pair.check_chat_untouched()


def https_exchange(addr, request):
    """(answer bytes, close_notify seen, seconds until the close)."""
    ctx = py_ctx(alpn=["http/1.1"])
    raw = socket.create_connection(addr, timeout=10 * SLOW)
    s = ctx.wrap_socket(raw, server_hostname=HOST)
    assert s.selected_alpn_protocol() == "http/1.1"
    s.sendall(request)
    t0 = time.monotonic()
    data = b""
    notify = False
    try:
        while True:
            d = s.recv(65536)
            if not d:  # read() returns b'' only after close_notify
                notify = True
                break
            data += d
    except ssl.SSLEOFError:
        pass  # a bare FIN
    finally:
        s.close()
    return data, notify, time.monotonic() - t0


def without_date(answer):
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", answer,
                  count=1)


@pytest.mark.parametrize("req", [
    "GET / HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n",
    "HEAD / HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n",
    "GET /missing HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n",  # kept alive, then closed
], ids=["get", "head", "404", "keepalive"])
def test_http_inside_tls_like_nginx(pair, req):
    nginx = https_exchange(pair.nginx.tls_addr, req.encode())
    ours = https_exchange(pair.lifeline, req.encode())
    assert nginx[0].startswith(b"HTTP/1.1 "), nginx[0][:200]
    assert b"\r\nDate: " in nginx[0], nginx[0][:400]
    a, b = without_date(nginx[0]), without_date(ours[0])
    assert a == b, ("HTTP answer through lifeline differs from nginx's TLS "
                    f"port's:\nnginx:    {a[:600]!r}\nlifeline: {b[:600]!r}")
    assert nginx[1] == ours[1], \
        f"close_notify at the end: nginx {nginx[1]}, lifeline {ours[1]}"
    assert abs(nginx[2] - ours[2]) <= max(0.1 * nginx[2], 0.5 * SLOW), \
        f"close after: nginx {nginx[2]:.2f}s, lifeline {ours[2]:.2f}s"
    pair.check_chat_untouched()


def test_settings_are_the_camouflage_presets():
    """CAMO_TLS is what the preset's 443 listener sets: the parity above
    is the preset's."""
    r = run_cli(["--print-config", "--preset", "camouflage"])
    assert r.returncode == 0, r.stderr
    section, got = None, {}
    for line in r.stdout.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[listen https]" and " = " in line:
            k, v = line.split(" = ", 1)
            if k in CAMO_TLS:
                got[k] = f"{got[k]}, {v}" if k in got else v
    assert got == CAMO_TLS, got
