"""`lifeline health` (the readiness probe): connection failures and
timeouts reported as such, the status line parsed strictly (issue #10)."""

import re
import socket
import threading
import time

import pytest

import conftest
from conftest import free_port, run_cli, start_thread
from stats_helpers import SLOW

# the probe's documented overall timeout (lifeline.8)
PROBE_TIMEOUT = 3.0


def health(url):
    t0 = time.monotonic()
    r = run_cli(["health", "--url", url], timeout=30)
    return r, time.monotonic() - t0


class FakeServer:
    """Answers each connection with `reply` once a request has come, then
    closes (or, with hold, keeps the connection open until stopped)."""

    def __init__(self, reply, hold=False):
        self.reply, self.hold = reply, hold
        self.lsock = socket.socket()
        conftest._SOCKETS.append(self.lsock)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.lsock.settimeout(0.2)
        self.stop = threading.Event()
        self.requests = []
        self.thread = start_thread(self._run, name="fake-http")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.lsock.getsockname()[1]}/readyz"

    def _run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conftest._SOCKETS.append(c)
            c.settimeout(5)
            req = b""
            try:
                while b"\r\n\r\n" not in req:
                    d = c.recv(4096)
                    if not d:
                        break
                    req += d
                self.requests.append(req)
                c.sendall(self.reply)
                if self.hold:
                    self.stop.wait(10)
            except OSError:
                pass
            finally:
                c.close()

    def close(self):
        self.stop.set()
        conftest.join(self.thread, 5)
        self.lsock.close()


def test_health_connection_refused_is_reported():
    port = free_port()
    r, el = health(f"http://127.0.0.1:{port}/readyz")
    assert r.returncode == 1, f"exit {r.returncode}\n{r.stderr}"
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused" in r.stderr, r.stderr
    assert "not ready" not in r.stderr, r.stderr
    assert el < 2 * SLOW


def test_health_silent_server_is_a_timeout():
    srv = FakeServer(b"", hold=True)  # accepts, reads, never answers
    try:
        r, el = health(srv.url)
    finally:
        srv.close()
    assert r.returncode == 1, f"exit {r.returncode}\n{r.stderr}"
    assert re.search(r"timed out after 3 s", r.stderr), r.stderr
    assert "not ready" not in r.stderr, r.stderr
    assert PROBE_TIMEOUT - 0.2 <= el <= PROBE_TIMEOUT + 1.5 * SLOW, f"took {el:.2f}s"


MALFORMED = [
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 2000\r\n\r\n",
    b"HTTP/1.1 200",              # no SP, no reason, no CRLF, then close
    b"HTTP/1.1 200\r\n\r\n",      # the SP after the code is required
    b"HTTP/1.1 200OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\n\n",       # CRLF required
    b"HTTP/1.1 200 OK\rX\r\n\r\n",
    b"HTTP/1.1 200 O\x00K\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.x 200 OK\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
    b" HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 " + b"K" * 600 + b"\r\n\r\n",  # longer than any sane line
    b"",
]
NOT_READY = [
    b"HTTP/1.1 503 Service Unavailable\r\n\r\n",
    b"HTTP/1.1 201 Created\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\n\r\n",
]
HEALTHY = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nready\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 200 \r\n\r\n",     # empty reason phrase: allowed
    b"HTTP/1.1 200 All good\there\r\n\r\n",
]


@pytest.mark.parametrize("reply", MALFORMED + NOT_READY + HEALTHY,
                         ids=lambda b: repr(b[:24]))
def test_health_status_line_strict(reply):
    srv = FakeServer(reply)
    try:
        r, el = health(srv.url)
    finally:
        srv.close()
    assert srv.requests and srv.requests[0].startswith(b"GET /readyz HTTP/1.1\r\n")
    want = 0 if reply in HEALTHY else 1
    assert r.returncode == want, f"{reply[:40]!r}: exit {r.returncode}\n{r.stderr}"
    if reply in MALFORMED:
        assert "malformed" in r.stderr or "without a response" in r.stderr, r.stderr
    if reply in NOT_READY:
        code = reply[9:12].decode()
        assert f"not ready (HTTP {code})" in r.stderr, r.stderr
    assert el < PROBE_TIMEOUT + 1.0 * SLOW
