"""A decoy web server for the camouflage tests (test_camouflage.py):
Debian's nginx, run by the test as a foreground subprocess with its own
prefix, config, pid file, logs and temp directories under tmp_path, on a
loopback port of its own.

No fixed port: a free port is found by binding port 0 and releasing it
just before nginx starts; when something took it meanwhile, nginx exits
with EADDRINUSE and is started again on another.  Short client header and
keepalive timeouts keep the probes fast.  The instance is stopped by
conftest's `_cleanup` (it registers itself like a Server).

With `tls=[(cert, key), ...]`, the same site is also served over TLS on a
second port of its own (`tls_port`), with Mozilla's "intermediate"
settings (TLS 1.2 and 1.3, ECDHE with AEAD suites, the client's suite
preference, no HTTP/2) plus session tickets of 5 minutes: the web server
lifeline's camouflage preset imitates (test_tls_parity.py).
"""

import os
import signal
import socket
import subprocess
import time

import pytest

import conftest
from conftest import fmt_addr, free_port

NGINX = "/usr/sbin/nginx"

# The site: a page big enough to cross several TCP segments and TLS
# records, so that relaying a whole answer is exercised.
INDEX = ("<!DOCTYPE html>\n<html><head><title>Welcome</title></head><body>\n"
         + "".join(f"<p>Paragraph {i}: nothing to see here.</p>\n"
                   for i in range(600))
         + "</body></html>\n")

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 512;
}}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    sendfile on;
    client_header_timeout {header_timeout};
    client_body_timeout {header_timeout};
    keepalive_timeout {keepalive_timeout};
{tls_settings}    server {{
        listen {listen} default_server;
{tls_listen}        root {prefix}/html;
        index index.html;
        server_name _;
        location / {{
            try_files $uri $uri/ =404;
        }}
    }}
}}
"""


# Mozilla's "intermediate" configuration (ssl-config.mozilla.org, nginx
# 1.22, OpenSSL 3.0), with tickets on and the 5-minute session timeout
# that the camouflage preset's tls-ticket-lifetime copies.  No
# ssl_session_cache: Debian's nginx.conf sets none either (so nginx's
# default, "none").  No http2 on the listen line: ALPN is http/1.1 only.
MOZILLA_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                   "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                   "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")

# What the camouflage preset sets on its 443 listener (lifeline
# --print-config --preset camouflage; test_tls_parity checks they agree),
# for a listener in front of this nginx.
CAMO_TLS = {
    "tls": "on",
    "tls-alpn": "http/1.1, http/1.0, http/0.9",
    "tls-tickets": "2",
    "tls-ticket-lifetime": "5m",
    "tls-ciphers": MOZILLA_CIPHERS,
    "tls-prefer-server-ciphers": "off",
    "client-keepalive": "off",
}

# lifeline's waits longer than nginx's: the decoy decides when a
# connection ends.
CAMO_TIMEOUTS = {"connect": "1s", "client": "30s", "server": "30s",
                 "client-fin": "5s", "server-fin": "5s", "handshake": "60s"}

TLS_SETTINGS = """\
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {ciphers};
    ssl_prefer_server_ciphers off;
    ssl_session_timeout 5m;
    ssl_session_tickets on;
"""


def require_nginx():
    """Fail (never skip) when Debian's nginx is missing."""
    if not os.path.exists(NGINX):
        pytest.fail(f"{NGINX} is missing (Debian package nginx; "
                    "scripts/deps.sh test installs it)")
    return NGINX


class Nginx:
    """One foreground nginx on 127.0.0.1:<free port> serving a static site.

    `header_timeout` is nginx's client_header_timeout (and so how long it
    keeps an empty connection), `keepalive_timeout` how long it keeps a
    connection after a complete answer."""

    def __init__(self, tmp_path, header_timeout=3, keepalive_timeout=3,
                 name="nginx", host="127.0.0.1", tls=None, index=INDEX):
        require_nginx()
        self.prefix = tmp_path / name
        self.host = host
        self.tls = list(tls or [])  # [(cert path, key path), ...]
        self.tls_port = None
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.proc = None
        self.port = None
        for d in ("html", "tmp"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)
        (self.prefix / "html" / "index.html").write_text(index)
        conftest._SERVERS.append(self)
        self._start()

    @property
    def addr(self):
        return (self.host, self.port)

    @property
    def spec(self):
        return fmt_addr(self.host, self.port)

    @property
    def tls_addr(self):
        return (self.host, self.tls_port)

    def error_log(self):
        try:
            return (self.prefix / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _start(self, attempts=8):
        last = ""
        for _ in range(attempts):
            port = free_port(self.host)
            tls_port, tls_settings, tls_listen = None, "", ""
            if self.tls:
                tls_port = free_port(self.host)
                while tls_port == port:
                    tls_port = free_port(self.host)
                tls_settings = TLS_SETTINGS.format(ciphers=MOZILLA_CIPHERS)
                for cert, key in self.tls:
                    tls_settings += (f"    ssl_certificate {cert};\n"
                                     f"    ssl_certificate_key {key};\n")
                tls_listen = (f"        listen {fmt_addr(self.host, tls_port)}"
                              " ssl default_server;\n")
            conf = self.prefix / "nginx.conf"
            conf.write_text(CONF.format(
                prefix=self.prefix, listen=fmt_addr(self.host, port),
                header_timeout=f"{self.header_timeout}s",
                keepalive_timeout=f"{self.keepalive_timeout}s",
                tls_settings=tls_settings, tls_listen=tls_listen))
            log = self.prefix / "error.log"
            if log.exists():
                log.unlink()
            with open(self.prefix / "stderr", "wb") as err:
                self.proc = subprocess.Popen(
                    [NGINX, "-p", str(self.prefix), "-c", str(conf),
                     "-e", str(log)],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                    close_fds=True)
            if self._wait_listening(port) and (
                    tls_port is None or self._wait_listening(tls_port)):
                self.port = port
                self.tls_port = tls_port
                return
            text = self.error_log() + (self.prefix / "stderr").read_text(
                errors="replace")
            self.stop()
            last = text
            if "Address already in use" not in text:
                break
        pytest.fail(f"nginx did not start:\n{last[-3000:]}")

    def _wait_listening(self, port, timeout=10.0):
        """True once nginx accepts on `port`; False when it exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            # nginx writes its pid file once its listening sockets are
            # open; a connect() before that could reach a stranger that
            # took the port meanwhile.
            if (self.prefix / "nginx.pid").exists():
                s = socket.socket(socket.AF_INET6 if ":" in self.host
                                  else socket.AF_INET)
                s.settimeout(1.0)
                try:
                    s.connect((self.host, port))
                    return True
                except OSError:
                    pass
                finally:
                    s.close()
            time.sleep(0.02)
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


__all__ = ["Nginx", "require_nginx", "INDEX", "MOZILLA_CIPHERS"]
