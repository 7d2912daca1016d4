"""Headless Chromium opening https://relay.test:PORT/ on lifeline's
camouflage TLS listener sees the decoy site (issue 15, tests): lifeline
terminates TLS with a certificate for relay.test signed by a test CA, the
browser's request goes to the decoy (Debian's nginx, decoy.py, on its
plain port) and the page comes back; the chat upstream never hears of it,
and /metrics counts the connection as decoy.

The browser trusts only the leaf's key (--ignore-certificate-errors-spki-
list, honoured with --user-data-dir); the chain itself is checked against
the test CA for the name relay.test by openssl s_client."""

import base64
import hashlib
import os
import shutil
import subprocess

import pytest

from conftest import SLOW, Server, start_daemon
from decoy import CAMO_TIMEOUTS, CAMO_TLS, Nginx
from stats_helpers import require_tool, scrape, stats_config

HOST = "relay.test"
MARKER = "lifeline-decoy-" + os.urandom(8).hex()
PAGE = (f"<!DOCTYPE html>\n<html><head><title>Welcome</title></head>\n"
        f"<body><p id=\"m\">{MARKER}</p></body></html>\n")



def openssl(*args, input=None):
    if not shutil.which("openssl"):
        pytest.fail("openssl is missing (Debian package openssl; "
                    "scripts/deps.sh test installs it)")
    r = subprocess.run(["openssl", *args], input=input, capture_output=True,
                       timeout=30)
    assert r.returncode == 0, f"openssl {args[0]}: {r.stderr.decode()}"
    return r.stdout


@pytest.fixture
def pki(tmp_path):
    """A test CA and a leaf for relay.test signed by it."""
    d = tmp_path / "pki"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    openssl("req", "-x509", *ec, "-nodes", "-days", "2",
            "-subj", "/CN=lifeline test CA", "-addext",
            "basicConstraints=critical,CA:TRUE", "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    openssl("req", "-new", *ec, "-nodes", "-subj", f"/CN={HOST}",
            "-keyout", str(d / "leaf.key"), "-out", str(d / "leaf.csr"))
    (d / "leaf.ext").write_text(
        f"subjectAltName=DNS:{HOST}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(d / "leaf.csr"), "-CA",
            str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", str(d / "leaf.ext"),
            "-out", str(d / "leaf.crt"))
    # lifeline serves the chain: the leaf, then the CA.
    (d / "chain.crt").write_text((d / "leaf.crt").read_text()
                                 + (d / "ca.crt").read_text())
    return d


def spki_sha256(cert):
    """base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo."""
    pub = openssl("x509", "-in", str(cert), "-noout", "-pubkey")
    der = openssl("pkey", "-pubin", "-outform", "DER", input=pub)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def h_chat(c, rec):
    rec["data"] = c.recv(65536)


def test_chromium_sees_the_decoy_site(tmp_path, pki):
    chromium = require_tool("chromium")
    nginx = Nginx(tmp_path, index=PAGE)
    chat = Server(h_chat, name="chat")
    listen = dict(CAMO_TLS, cert=str(pki / "chain.crt"),
                  key=str(pki / "leaf.key"), upstream="chat", decoy="web")
    d = start_daemon(tmp_path, stats_config(
        {"chat": [chat.spec], "web": [nginx.spec]}, {"https": listen},
        timeouts=CAMO_TIMEOUTS))
    host, port = d.addr("https")

    # The chain lifeline serves verifies against the test CA for the name.
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername",
         HOST, "-CAfile", str(pki / "ca.crt"), "-verify_hostname", HOST,
         "-verify_return_error"], input=b"", capture_output=True, timeout=30)
    out = r.stdout.decode("latin-1")
    assert r.returncode == 0 and "Verify return code: 0 (ok)" in out, \
        out[-1500:] + r.stderr.decode("latin-1")[-500:]

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    url = f"https://{HOST}:{port}/"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-extensions",
           f"--user-data-dir={profile}",
           f"--host-resolver-rules=MAP {HOST} {host}",
           "--ignore-certificate-errors-spki-list="
           + spki_sha256(pki / "leaf.crt"),
           "--timeout=20000", "--dump-dom", url]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=60 * SLOW,
                           env=dict(os.environ, HOME=str(tmp_path)))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"chromium still running after {60 * SLOW}s: "
                             f"{(e.stderr or b'')[-2000:]!r}")
    dom = r.stdout.decode("utf-8", "replace")
    assert MARKER in dom, (
        f"chromium did not get the decoy's page from {url} (exit "
        f"{r.returncode}):\nDOM: {dom[:1000]}\nstderr: "
        f"{r.stderr.decode('utf-8', 'replace')[-2000:]}")

    # nginx served it: the request is in its access log.
    log = (nginx.prefix / "access.log").read_text()
    assert '"GET / HTTP/1.1" 200' in log, log
    assert chat.accepted == 0, "the browser's connection reached chat"
    m = scrape(d.addr("stats"))
    decoy = m.get("lifeline_camouflage_total", listener="https",
                  **{"class": "decoy"})
    assert decoy and decoy >= 1, f"class decoy not counted: {decoy}"
    whatsapp = m.get("lifeline_camouflage_total", listener="https",
                     **{"class": "whatsapp"})
    assert not whatsapp, f"class whatsapp counted {whatsapp}"
