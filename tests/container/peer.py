#!/usr/bin/python3
"""Both ends of a relayed transfer, for scripts/container-check.sh.

  peer.py upstream --ready FILE ADDR:PORT:MODE...
      An echo server on each ADDR:PORT, until SIGTERM.  MODE says what
      must come first on a connection: 'v2' a PROXY v2 header (LOCAL, from
      a health check, then nothing; PROXY before data), 'none' no header
      (a LOCAL header alone, a health check, is allowed too).  A connection
      that breaks its rule is reset and never echoed.  FILE is written once
      every address listens.  One line per connection on stdout.

  peer.py client HOST PORT --size N [--tls] [--pace S] [--live FILE]
      Sends N random bytes (over S seconds, in 64 KiB pieces, when --pace
      is given), reads N bytes back and compares them: exit 0 when they
      are the same bytes.  FILE is written once the first echoed bytes
      are back (the transfer is live end to end).  TLS without
      verification: the relay's certificate is generated at start.

Every wait is bounded: 30 s without progress ends a connection.
"""
import argparse
import hashlib
import os
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CHUNK = 64 * 1024
IDLE = 30.0


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        b = s.recv(n - len(data))
        if not b:
            return None
        data += b
    return data


def reset(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def serve(conn, port, mode):
    conn.settimeout(IDLE)
    what = "none"
    try:
        first = conn.recv(16, socket.MSG_PEEK | socket.MSG_WAITALL)
        if first.startswith(SIG) and len(first) == 16:
            cmd = first[12] & 0x0F
            length = struct.unpack("!H", first[14:16])[0]
            if recv_exact(conn, 16 + length) is None:
                raise ConnectionError("short PROXY header")
            what = "v2-proxy" if cmd == 1 else "v2-local"
        elif mode == "v2" and first:
            raise ConnectionError("no PROXY v2 header")
        h = hashlib.sha256()
        n = 0
        while True:
            b = conn.recv(CHUNK)
            if not b:
                break
            if what == "v2-local":
                raise ConnectionError("data after a PROXY LOCAL header")
            if mode == "none" and what == "v2-proxy":
                raise ConnectionError("a PROXY header where none belongs")
            if mode == "v2" and what != "v2-proxy":
                raise ConnectionError("data without a PROXY header")
            conn.sendall(b)
            h.update(b)
            n += len(b)
        conn.shutdown(socket.SHUT_WR)
        conn.close()
        print(f"upstream {port}: {what}, {n} bytes echoed, "
              f"sha256 {h.hexdigest()}", flush=True)
    except (OSError, ConnectionError) as e:
        print(f"upstream {port}: {what}, refused: {e}", flush=True)
        reset(conn)


def upstream(args):
    socks = []
    for spec in args.listen:
        addr, port, mode = spec.rsplit(":", 2)
        if mode not in ("v2", "none"):
            sys.exit(f"peer.py: bad mode in {spec}")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, int(port)))
        s.listen(64)
        socks.append((s, f"{addr}:{port}", mode))
    for s, name, mode in socks:
        def loop(s=s, name=name, mode=mode):
            while True:
                c, _ = s.accept()
                threading.Thread(target=serve, args=(c, name, mode),
                                 daemon=True).start()
        threading.Thread(target=loop, daemon=True).start()
    with open(args.ready, "w") as f:
        f.write("ready\n")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def client(args):
    data = os.urandom(args.size)
    want = hashlib.sha256(data).hexdigest()
    s = socket.create_connection((args.host, args.port), timeout=IDLE)
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
    # One thread, non-blocking: an SSL object takes no concurrent calls.
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    back = bytearray()
    sent = 0
    start = last = time.monotonic()
    err = None
    while len(back) < args.size and err is None:
        now = time.monotonic()
        due = start + args.pace * sent / args.size
        writing = sent < args.size and now >= due
        sel.modify(s, selectors.EVENT_READ |
                   (selectors.EVENT_WRITE if writing else 0))
        wait = 1.0 if writing or sent == args.size else min(due - now, 1.0)
        if args.tls and s.pending():
            wait = 0
        sel.select(wait)
        try:
            while True:
                b = s.recv(CHUNK)
                if not b:
                    err = "connection closed"
                    break
                if not back and args.live:
                    with open(args.live, "w") as f:
                        f.write("live\n")
                back += b
                last = time.monotonic()
        except (BlockingIOError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError):
            pass
        except OSError as e:
            err = str(e)
        if writing and err is None:
            try:
                sent += s.send(data[sent:sent + CHUNK])
                last = time.monotonic()
            except (BlockingIOError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                pass
            except OSError as e:
                err = str(e)
        if time.monotonic() - last > IDLE:
            err = f"no progress for {IDLE:.0f} s"
    s.close()
    have = hashlib.sha256(back).hexdigest()
    if back != data:
        print(f"client: sent {sent} of {len(data)} bytes sha256 {want}, "
              f"got {len(back)} bytes sha256 {have} ({err})", flush=True)
        return 1
    print(f"client: {len(data)} bytes there and back, sha256 {want}",
          flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("upstream")
    u.add_argument("--ready", required=True)
    u.add_argument("listen", nargs="+")
    c = sub.add_parser("client")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--size", type=int, required=True)
    c.add_argument("--tls", action="store_true")
    c.add_argument("--pace", type=float, default=0.0)
    c.add_argument("--live")
    args = p.parse_args()
    if args.cmd == "upstream":
        signal.pthread_sigmask(signal.SIG_BLOCK,
                               {signal.SIGTERM, signal.SIGINT})
        upstream(args)
        return 0
    return client(args)


if __name__ == "__main__":
    sys.exit(main())
