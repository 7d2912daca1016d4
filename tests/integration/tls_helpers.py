"""Helpers for the TLS integration tests (test_tls.py).

Client side TLS runs on Python's ssl module.  Bulk transfers use an
ssl.SSLObject over memory BIOs driven by one thread with select(), so a
single TLS connection can send and receive at the same time without two
threads touching one OpenSSL object.
"""

import hashlib
import os
import random
import select
import socket
import ssl
import struct
import subprocess
import time

import conftest
from conftest import (
    DUPLEX_HDR, IO_TIMEOUT, Daemon, chunks, connect, recv_exact, start_thread,
    join)

MiB = 1 << 20

# ----------------------------------------------------------------------------
# processes


def run(cmd, input=None, timeout=20.0, check=False, **kw):
    """Run a command to completion (bytes in, text out)."""
    r = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                       **kw)
    r.out = r.stdout.decode("utf-8", "replace")
    r.err = r.stderr.decode("utf-8", "replace")
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}:\n{r.out}\n{r.err}")
    return r


class TlsDaemon(Daemon):
    """Daemon started with a chosen environment and working directory."""

    def __init__(self, tmp_path, config, env=None, cwd=None, **kw):
        super().__init__(tmp_path, config, **kw)
        self.env = env
        self.cwd = cwd

    def start(self, wait=True):
        env = dict(os.environ)
        for k in ("SSL_DNS", "SSL_IP"):
            env.pop(k, None)
        env.update(self.env or {})
        with open(self.stdout_path, "wb") as out, \
                open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [conftest.LIFELINE_BIN, "-c", str(self.conf), "--ports-file",
                 str(self.ports_file)] + self.args,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                close_fds=True, env=env,
                cwd=str(self.cwd) if self.cwd else None)
        if wait:
            self.wait_ports()
        return self


def start_tls_daemon(tmp_path, config, **kw):
    return TlsDaemon(tmp_path, config, **kw).start()


# ----------------------------------------------------------------------------
# client contexts and connections


def client_ctx(minv=None, maxv=None, seclevel0=False):
    """A client context that does not verify the server (as WhatsApp)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # Python 3.11 with OpenSSL 3 reads a bare FIN as a clean close unless
    # this is cleared: tests must tell close_notify from a truncation.
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    if seclevel0:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minv is not None:
        ctx.minimum_version = minv
    if maxv is not None:
        ctx.maximum_version = maxv
    return ctx


def tls_connect(addr, ctx=None, sni=None, session=None, timeout=IO_TIMEOUT,
                source=None, preamble=b""):
    """Blocking TLS connection (handshake done).  `preamble` is sent in
    clear before the ClientHello (a PROXY header)."""
    ctx = ctx or client_ctx()
    raw = connect(addr, source=source, timeout=timeout)
    if preamble:
        raw.sendall(preamble)
    s = ctx.wrap_socket(raw, server_hostname=sni, session=session,
                        do_handshake_on_connect=False)
    conftest._SOCKETS.append(s)
    s.settimeout(timeout)
    s.do_handshake()
    return s


def tls_echo_roundtrip(s, payload=None):
    payload = payload if payload is not None else os.urandom(64)
    s.sendall(payload)
    got = recv_exact(s, len(payload))
    assert got == payload, "echo through TLS came back different"
    return True


def try_tls_echo(addr, timeout=3.0, **kw):
    """A fresh TLS connection; True when an echo round trip works."""
    try:
        s = tls_connect(addr, timeout=timeout, **kw)
        tls_echo_roundtrip(s)
        s.close()
        return True
    except (OSError, EOFError, ssl.SSLError):
        return False


def client_hello(sni="a.example"):
    """The bytes of a real ClientHello (as a TLS client would send first)."""
    ctx = client_ctx()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert data[:1] == b"\x16" and len(data) > 100, data[:16]
    return data


# ----------------------------------------------------------------------------
# certificates


def peer_cert_der(addr, sni=None):
    s = tls_connect(addr, sni=sni, timeout=5.0)
    try:
        return s.getpeercert(binary_form=True)
    finally:
        s.close()


def der_to_pem(der):
    return ssl.DER_cert_to_PEM_cert(der)


def x509_text(pem):
    r = run(["openssl", "x509", "-noout", "-text", "-fingerprint", "-sha256",
             "-serial", "-subject", "-issuer", "-dates"],
            input=pem.encode(), check=True)
    return r.out


def x509_field(text, name):
    """Value of a `name=value` line printed by openssl x509 (serial,
    subject, issuer, notBefore, notAfter, sha256 Fingerprint)."""
    for line in text.splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"no {name}= line in openssl x509 output:\n{text}")


def san_entries(text):
    """subjectAltName entries as a set of strings like 'DNS:a.example',
    'IP Address:192.0.2.7'."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "X509v3 Subject Alternative Name" in line:
            return {e.strip() for e in lines[i + 1].split(",") if e.strip()}
    return set()


def make_cert(dirpath, cn, kind="ec", name=None):
    """A fresh key and self-signed certificate; returns (cert, key) paths."""
    name = name or cn
    cert = dirpath / f"{name}.crt"
    key = dirpath / f"{name}.key"
    if kind == "ec":
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    else:
        newkey = ["-newkey", "rsa:2048"]
    run(["openssl", "req", "-x509", *newkey, "-nodes", "-days", "2",
         "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert)],
        check=True)
    return cert, key


def served_cn(addr):
    text = x509_text(der_to_pem(peer_cert_der(addr)))
    subj = x509_field(text, "subject")
    for part in subj.split(","):
        k, _, v = part.strip().partition("=")
        if k.strip() == "CN":
            return v.strip()
    return subj


# ----------------------------------------------------------------------------
# PROXY v2 (what the daemon sends upstream)

PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def read_pp2(c):
    """Read one PROXY v2 header; returns a dict (cmd, fam, src, dst, raw)."""
    hdr = recv_exact(c, 16)
    assert hdr[:12] == PP2_SIG, f"no PROXY v2 signature: {hdr!r}"
    ver_cmd, fam, length = hdr[12], hdr[13], struct.unpack("!H", hdr[14:16])[0]
    body = recv_exact(c, length)
    out = {"ver_cmd": ver_cmd, "fam": fam, "len": length, "raw": hdr + body}
    if fam == 0x11:
        assert length >= 12, f"v2 TCP4 header length {length} < 12"
        src, dst, sp, dp = struct.unpack("!4s4sHH", body[:12])
        out["src"] = (socket.inet_ntop(socket.AF_INET, src), sp)
        out["dst"] = (socket.inet_ntop(socket.AF_INET, dst), dp)
    elif fam == 0x21:
        assert length >= 36, f"v2 TCP6 header length {length} < 36"
        src, dst, sp, dp = struct.unpack("!16s16sHH", body[:36])
        out["src"] = (socket.inet_ntop(socket.AF_INET6, src), sp)
        out["dst"] = (socket.inet_ntop(socket.AF_INET6, dst), dp)
    return out


def h_pp2_echo(c, rec):
    """Upstream expecting a PROXY v2 header, then echoing until EOF."""
    rec["pp"] = read_pp2(c)
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)


# ----------------------------------------------------------------------------
# full-duplex hashed transfer over TLS (client half of conftest.h_duplex)


class TlsPump:
    """One TLS client connection driven by select() over memory BIOs.

    send_chunks: iterable of bytes-like to send once the handshake is done
    (optionally paced at `rate` B/s); after the last one the client sends
    close_notify and, if `fin`, a TCP FIN.  Everything received is hashed.
    run() returns when the server side has closed (close_notify or TCP EOF)
    and everything has been sent, or raises on the deadline."""

    def __init__(self, addr, ctx=None, sni=None, session=None, fin=True,
                 source=None, preamble=(), gap=0.0):
        self.ctx = ctx or client_ctx()
        self.t_start = time.monotonic()
        self.handshake_s = None  # from before connect() to handshake done
        self.raw = connect(addr, source=source)
        if preamble:
            # pieces in clear before the ClientHello (a PROXY header),
            # each in a segment of its own
            self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i, piece in enumerate(preamble):
                if i and gap:
                    time.sleep(gap)
                self.raw.sendall(piece)
        self.raw.setblocking(False)
        self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = self.ctx.wrap_bio(self.inc, self.outg, server_hostname=sni,
                                     session=session)
        self.fin = fin
        self.out = bytearray()
        self.handshake_done = False
        self.close_sent = False
        self.fin_sent = False
        self.raw_eof = False
        self.closed_how = None  # "close_notify" | "eof" | "reset"
        self.recv_hash = hashlib.sha256()
        self.recv_len = 0
        self.sent_hash = hashlib.sha256()
        self.sent_len = 0
        self.on_data = None  # optional callback(bytes)

    def _flush(self):
        self.out += self.outg.read()
        while self.out:
            try:
                n = self.raw.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            del self.out[:n]

    def _read_app(self):
        while True:
            try:
                d = self.obj.read(1 << 18)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.closed_how = "close_notify"
                return
            except ssl.SSLEOFError:
                self.closed_how = "eof"
                return
            if not d:  # SSLObject.read gives b'' on a received close_notify
                self.closed_how = "close_notify"
                return
            self.recv_hash.update(d)
            self.recv_len += len(d)
            if self.on_data:
                self.on_data(d)

    def _send_close(self):
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass
        self.close_sent = True

    def run(self, send_chunks, rate=0, timeout=60.0):
        deadline = time.monotonic() + timeout
        it = iter(send_chunks)
        pending = None
        send_done = False
        t0 = None
        while True:
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(
                    f"TLS transfer not finished after {timeout}s: sent "
                    f"{self.sent_len}, received {self.recv_len}, "
                    f"handshake={self.handshake_done} closed={self.closed_how}")
            if not self.handshake_done:
                try:
                    self.obj.do_handshake()
                    self.handshake_done = True
                    t0 = time.monotonic()
                    self.handshake_s = t0 - self.t_start
                except ssl.SSLWantReadError:
                    pass
            wake = None
            # A close_notify ends only the server's direction (half-close):
            # the client goes on sending; a reset ends both.
            can_send = self.closed_how in (None, "close_notify")
            if self.handshake_done and not send_done and can_send:
                while len(self.out) + self.outg.pending < (1 << 19):
                    if pending is None:
                        pending = next(it, None)
                        if pending is None:
                            send_done = True
                            break
                    if rate:
                        ahead = self.sent_len / rate - (time.monotonic() - t0)
                        if ahead > 0:
                            wake = time.monotonic() + ahead
                            break
                    self.obj.write(pending)
                    self.sent_hash.update(pending)
                    self.sent_len += len(pending)
                    pending = None
                if send_done and not self.close_sent:
                    self._send_close()
            try:
                self._flush()
            except (BrokenPipeError, ConnectionResetError) as e:
                if send_done and not self.out:
                    pass
                else:
                    raise AssertionError(
                        f"send failed after {self.sent_len} bytes: {e!r}")
            if self.close_sent and not self.out and self.fin and not self.fin_sent:
                try:
                    self.raw.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.fin_sent = True
            if self.handshake_done and self.closed_how is None:
                self._read_app()
            done_sending = send_done and self.close_sent and not self.out
            if self.closed_how is not None and done_sending:
                return self
            if self.closed_how not in (None, "close_notify") and not send_done:
                raise AssertionError(
                    f"server closed ({self.closed_how}) while the client still "
                    f"had data to send ({self.sent_len} bytes sent)")
            if self.raw_eof and not self.handshake_done:
                raise AssertionError("connection closed during the handshake")
            rl = [] if self.raw_eof else [self.raw]
            wl = [self.raw] if self.out else []
            t = 0.5 if wake is None else max(0.0, min(0.5, wake - time.monotonic()))
            if not rl and not wl:
                time.sleep(t)
                continue
            r, w, _ = select.select(rl, wl, [], t)
            if r:
                try:
                    d = self.raw.recv(1 << 18)
                except (BlockingIOError, InterruptedError):
                    d = None
                except ConnectionResetError:
                    self.raw_eof = True
                    self.closed_how = self.closed_how or "reset"
                    self.inc.write_eof()
                    d = None
                if d == b"":
                    self.raw_eof = True
                    self.inc.write_eof()
                elif d:
                    self.inc.write(d)
                if self.handshake_done and self.closed_how is None:
                    self._read_app()

    def close(self):
        try:
            self.raw.close()
        except OSError:
            pass


def tls_duplex_client(addr, cid, up, down, seed=None, rate=0, ctx=None,
                      sni=None, timeout=60.0, preamble=(), gap=0.0,
                      end_wait=None):
    """TLS counterpart of conftest.duplex_client (result usable with
    conftest.check_duplex), plus 'closed_how' and 'handshake_s'.
    `preamble`, `gap`: pieces sent in clear first (TlsPump).  `end_wait`:
    once the server's close_notify came and ours went, read the TCP
    stream to its end ('after_notify': bytes after the close_notify,
    'raw_end': "eof" or "reset") and wait that long for the connection to
    close ('end', as conftest.wait_clean_end)."""
    rng = random.Random(cid if seed is None else seed)
    out = {"id": cid, "up_len": up}
    hdr = DUPLEX_HDR.pack(cid, down, rate)
    payload = chunks(up, rng, max_chunk=(64 << 10) if rate else (256 << 10))
    p = TlsPump(addr, ctx=ctx, sni=sni, preamble=preamble, gap=gap)
    out["src"] = p.raw.getsockname()[:2]

    def gen():
        yield hdr
        yield from payload

    # the header is not part of the hashed upload
    h = hashlib.sha256()
    state = {"skip": len(hdr)}

    class _H:
        def update(self, b):
            if state["skip"]:
                k = min(state["skip"], len(b))
                state["skip"] -= k
                b = b[k:]
            h.update(b)

    p.sent_hash = _H()
    try:
        p.run(gen(), rate=rate, timeout=timeout)
        if end_wait is not None and p.closed_how == "close_notify":
            out["after_notify"], out["raw_end"] = 0, "eof"
            p.raw.settimeout(end_wait)
            while not p.raw_eof:
                try:
                    d = p.raw.recv(65536)
                except ConnectionResetError:
                    out["raw_end"] = "reset"
                    break
                if not d:
                    break
                out["after_notify"] += len(d)
            out["end"] = conftest.wait_clean_end(p.raw, end_wait)
    except Exception as e:
        out["recv_error"] = e
    finally:
        p.close()
    out["handshake_s"] = p.handshake_s
    out["up_sha"] = h.hexdigest()
    out["down_sha"] = p.recv_hash.hexdigest()
    out["down_len"] = p.recv_len
    out["closed_how"] = p.closed_how
    return out


class BackgroundTlsDuplex:
    def __init__(self, addr, cid, up, down, rate=0, **kw):
        self.result = None
        self.error = None

        def go():
            try:
                self.result = tls_duplex_client(addr, cid, up, down, rate=rate,
                                                **kw)
            except Exception as e:
                self.error = e

        self.thread = start_thread(go, name=f"tls-duplex-{cid}")

    def join(self, timeout=IO_TIMEOUT):
        join(self.thread, timeout)
        if self.error is not None:
            raise self.error
        return self.result


# ----------------------------------------------------------------------------
# hand-driven handshake (control over how the ClientHello is written)


def manual_tls(raw, prefix=b"", piece=None, gap=0.0, sni="a.example",
               timeout=10.0, ctx=None, early=b"", close=False):
    """Handshake over a connected blocking socket with memory BIOs.

    `prefix` is sent in the same write as the ClientHello (a PROXY header);
    with `piece`, the first flight goes out in writes of that many bytes,
    `gap` seconds apart.  `early` application data goes out in the same
    write as the client's Finished; with `close`, so do a close_notify and
    the FIN (shutdown(SHUT_WR)) right after.  Returns an object with
    send(bytes)/recv_exact(n)/recv_to_eof()."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = (ctx or client_ctx()).wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    first = prefix + out.read()
    if piece:
        for i in range(0, len(first), piece):
            raw.sendall(first[i:i + piece])
            if gap:
                time.sleep(gap)
    else:
        raw.sendall(first)
    deadline = time.monotonic() + timeout
    raw.settimeout(timeout)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        pending = out.read()
        if pending:
            raw.sendall(pending)
        if time.monotonic() > deadline:
            raise AssertionError("handshake did not complete")
        b = raw.recv(65536)
        if not b:
            raise EOFError("closed during the handshake")
        inc.write(b)
    if early:
        obj.write(early)
    if close:
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
    pending = out.read()
    if pending:
        raw.sendall(pending)
    if close:
        raw.shutdown(socket.SHUT_WR)

    class Conn:
        version = obj.version()

        @staticmethod
        def send(data):
            obj.write(data)
            raw.sendall(out.read())

        @staticmethod
        def recv_exact(n):
            got = bytearray()
            while len(got) < n:
                try:
                    got += obj.read(n - len(got))
                except ssl.SSLWantReadError:
                    b = raw.recv(65536)
                    if not b:
                        raise EOFError(f"EOF after {len(got)} of {n} bytes")
                    inc.write(b)
            return bytes(got)

        @staticmethod
        def recv_to_eof():
            """Plaintext until the TCP stream ends: (bytes, close_notify
            seen)."""
            got = bytearray()
            notify = False
            while True:
                try:
                    data = obj.read(65536)
                    if data:
                        got += data
                        continue
                    notify = True  # read() returns b"" after close_notify
                except ssl.SSLZeroReturnError:
                    notify = True
                except ssl.SSLWantReadError:
                    pass
                b = raw.recv(65536)
                if not b:
                    return bytes(got), notify
                inc.write(b)

    return Conn
