"""Data path: integrity, half-close, resets, IPv6, host names, splice."""

import hashlib
import os
import random
import socket
import threading
import time

import pytest

from conftest import (
    BackgroundDuplex, Server, check_all_duplex, check_duplex, chunks, connect,
    duplex_client, h_duplex, h_sink, join, make_config, make_source, read_until_closed,
    recv_exact, rst_close, start_daemon, start_thread, try_echo, wait_for)

MiB = 1 << 20


def test_64mib_each_way_one_connection(tmp_path, duplex):
    d = start_daemon(tmp_path, make_config(
        {"up": [duplex.spec]}, {"plain": {"upstream": "up"}}))
    t0 = time.monotonic()
    res = duplex_client(d.addr("plain"), 1, 64 * MiB, 64 * MiB)
    check_duplex(res, duplex)
    assert time.monotonic() - t0 < 90
    assert d.alive()


def test_50_concurrent_random_sizes_and_chunking(tmp_path, duplex):
    d = start_daemon(tmp_path, make_config(
        {"up": [duplex.spec]}, {"plain": {"upstream": "up"}}))
    rng = random.Random(20240611)
    sizes = [(0, 0), (1, 0), (0, 1), (1, 1), (65535, 65537)]
    while len(sizes) < 50:
        sizes.append((rng.randint(0, 3 * MiB), rng.randint(0, 3 * MiB)))
    results = [None] * len(sizes)
    errors = []

    def one(i):
        try:
            up, down = sizes[i]
            results[i] = duplex_client(d.addr("plain"), 1000 + i, up, down,
                                       seed=rng.randint(0, 1 << 30) + i)
        except Exception as e:
            errors.append((i, e))

    threads = [start_thread(one, i, name=f"c{i}") for i in range(len(sizes))]
    for t in threads:
        join(t, 60)
    assert not errors, errors
    check_all_duplex(results, duplex)
    assert duplex.accepted == 50


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_one_way_bulk_transfer(tmp_path, direction):
    """16 MiB to a hashing sink / from a hashing source, ended by half-close."""
    size = 16 * MiB + 7
    srv = Server(h_sink if direction == "upload" else make_source(size, seed=3),
                 name=direction)
    d = start_daemon(tmp_path, make_config(
        {"up": [srv.spec]}, {"plain": {"upstream": "up"}}))
    s = connect(d.addr("plain"))
    h = hashlib.sha256()
    n = 0
    if direction == "upload":
        for ch in chunks(size, random.Random(4)):
            s.sendall(ch)
            h.update(ch)
        n = size
        s.shutdown(socket.SHUT_WR)
        read_until_closed(s, 10)
    else:
        while True:
            data = s.recv(1 << 18)
            if not data:
                break
            h.update(data)
            n += len(data)
        s.shutdown(socket.SHUT_WR)
    rec = srv.wait_done()[0]
    assert rec["error"] is None, rec["error"]
    assert rec["bytes"] == n == size, (rec["bytes"], n, size)
    assert rec["sha"] == h.hexdigest()


def test_half_close_client_first(tmp_path, duplex):
    """Client sends A and shuts its write side; upstream sees EOF, replies B
    later; B reaches the client completely."""
    A, B = 1 * MiB + 17, 2 * MiB + 3

    def handler(c, rec):
        h = hashlib.sha256()
        n = 0
        while True:
            data = c.recv(1 << 16)
            if not data:
                break
            h.update(data)
            n += len(data)
        rec["got"] = (n, h.hexdigest())
        time.sleep(0.3)  # reply well after the EOF
        h2 = hashlib.sha256()
        for ch in chunks(B, random.Random(5)):
            c.sendall(ch)
            h2.update(ch)
        rec["sent"] = h2.hexdigest()
        c.shutdown(socket.SHUT_WR)

    srv = Server(handler, name="half-close")
    d = start_daemon(tmp_path, make_config(
        {"up": [duplex.spec], "hc": [srv.spec]},
        {"plain": {"upstream": "up"}, "hc": {"upstream": "hc"}}))
    base = _warm_baseline(d, d.addr("plain"))
    s = connect(d.addr("hc"))
    h = hashlib.sha256()
    for ch in chunks(A, random.Random(6)):
        s.sendall(ch)
        h.update(ch)
    s.shutdown(socket.SHUT_WR)
    rh = hashlib.sha256()
    n = 0
    while True:
        data = s.recv(1 << 16)
        if not data:
            break
        rh.update(data)
        n += len(data)
    rec = srv.wait_done()[0]
    assert rec["error"] is None, rec["error"]
    assert rec["got"] == (A, h.hexdigest()), "upstream did not get all of A"
    assert n == B, f"client got {n} of {B} reply bytes after its half-close"
    assert rh.hexdigest() == rec["sent"]
    s.close()
    n = d.wait_fds_at_most(base, timeout=5)
    assert n <= base, f"fd count {n} did not return to baseline {base}"


def test_half_close_upstream_first(tmp_path, duplex):
    """Upstream sends B and shuts its write side; client sees EOF, sends A
    later; A reaches the upstream completely."""
    A, B = 2 * MiB + 5, 1 * MiB + 11

    def handler(c, rec):
        h2 = hashlib.sha256()
        for ch in chunks(B, random.Random(7)):
            c.sendall(ch)
            h2.update(ch)
        rec["sent"] = h2.hexdigest()
        c.shutdown(socket.SHUT_WR)
        h = hashlib.sha256()
        n = 0
        while True:
            data = c.recv(1 << 16)
            if not data:
                break
            h.update(data)
            n += len(data)
        rec["got"] = (n, h.hexdigest())

    srv = Server(handler, name="half-close-up")
    d = start_daemon(tmp_path, make_config(
        {"up": [duplex.spec], "hc": [srv.spec]},
        {"plain": {"upstream": "up"}, "hc": {"upstream": "hc"}}))
    base = _warm_baseline(d, d.addr("plain"))
    s = connect(d.addr("hc"))
    rh = hashlib.sha256()
    n = 0
    while True:
        data = s.recv(1 << 16)
        if not data:
            break
        rh.update(data)
        n += len(data)
    time.sleep(0.3)  # send well after the EOF
    h = hashlib.sha256()
    for ch in chunks(A, random.Random(8)):
        s.sendall(ch)
        h.update(ch)
    s.shutdown(socket.SHUT_WR)
    how, extra, _ = read_until_closed(s, 5)
    assert extra == 0
    rec = srv.wait_done()[0]
    assert rec["error"] is None, rec["error"]
    assert n == B and rh.hexdigest() == rec["sent"], "client did not get all of B"
    assert rec["got"] == (A, h.hexdigest()), \
        f"upstream got {rec['got'][0]} of {A} bytes sent after its half-close"
    s.close()
    n = d.wait_fds_at_most(base, timeout=5)
    assert n <= base, f"fd count {n} did not return to baseline {base}"


def _warm_baseline(d, addr, n=6):
    """Run a few concurrent transfers (so per-worker pools exist), then
    return the settled fd count: the baseline for leak checks."""
    bg = [BackgroundDuplex(addr, 9000 + i, 256 << 10, 256 << 10) for i in range(n)]
    for b in bg:
        b.join()
    return d.stable_fd_count()


FLOWS = ["both", "client-sends", "upstream-sends"]


def _make_streamer(send):
    """Upstream that reads until the connection breaks (recording how and
    when) and, when `send`, keeps sending meanwhile."""
    def handler(c, rec):
        stop = threading.Event()
        rec["bytes"] = 0

        def reader():
            try:
                while True:
                    d = c.recv(1 << 16)
                    if not d:
                        break
                    rec["bytes"] += len(d)
                rec["end"] = "eof"
            except OSError as e:
                rec["end"] = type(e).__name__
            rec["end_at"] = time.monotonic()
            stop.set()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        buf = b"s" * 65536
        try:
            while send and not stop.is_set():
                c.sendall(buf)
        except OSError as e:
            # A reset is reported once, to whichever call comes first.
            rec["send_end"] = type(e).__name__
        t.join(15)
    return handler


@pytest.mark.parametrize("flow", FLOWS)
def test_rst_from_client_mid_stream(tmp_path, duplex, flow):
    streamer = Server(_make_streamer(flow != "client-sends"), name="streamer")
    d = start_daemon(tmp_path, make_config(
        {"up": [duplex.spec], "st": [streamer.spec]},
        {"plain": {"upstream": "up"}, "rst": {"upstream": "st"}}))
    base = _warm_baseline(d, d.addr("plain"))
    s = connect(d.addr("rst"))
    if flow != "upstream-sends":
        s.sendall(b"c" * (1 << 20))
        wait_for(lambda: streamer.records and streamer.records[0].get("bytes", 0) >= 512 << 10,
                 5, what="upload to flow")
    if flow != "client-sends":
        got = 0
        while got < 512 << 10:  # the download is flowing
            got += len(s.recv(1 << 16))
    assert d.fd_count() > base, "fd count does not reflect the live connection"
    rst_close(s)
    t0 = time.monotonic()
    rec = streamer.wait_done(timeout=10)[0]
    assert "end_at" in rec, rec
    assert "ConnectionResetError" in (rec["end"], rec.get("send_end")), \
        f"upstream saw {rec['end']} after the client's reset"
    assert rec["end_at"] - t0 < 2.0, \
        f"upstream side closed {rec['end_at'] - t0:.2f}s after the client reset"
    n = d.wait_fds_at_most(base, timeout=5)
    assert n <= base, f"fd count {n} did not return to baseline {base}"
    assert try_echo_duplex(d)


def try_echo_duplex(d):
    r = duplex_client(d.addr("plain"), 77, 1000, 1000)
    return r["down_len"] == 1000


@pytest.mark.parametrize("flow", FLOWS)
def test_rst_from_upstream_mid_stream(tmp_path, duplex, flow):
    def handler(c, rec):
        if flow != "upstream-sends":
            recv_exact(c, 256 << 10)
        if flow != "client-sends":
            c.sendall(b"u" * (256 << 10))
        time.sleep(0.1)
        rec["rst_at"] = time.monotonic()
        rst_close(c)

    srv = Server(handler, name="rst-upstream")
    d = start_daemon(tmp_path, make_config(
        {"up": [duplex.spec], "bad": [srv.spec]},
        {"plain": {"upstream": "up"}, "rst": {"upstream": "bad"}}))
    base = _warm_baseline(d, d.addr("plain"))
    s = connect(d.addr("rst"))
    stop = threading.Event()
    send_end = []

    def sender():
        try:
            while not stop.is_set():
                s.sendall(b"c" * 65536)
        except OSError as e:
            # A reset is reported once, to whichever call comes first.
            send_end.append(type(e).__name__)

    t = start_thread(sender) if flow != "upstream-sends" else None
    try:
        how, n, _ = read_until_closed(s, 10)
        closed_at = time.monotonic()
    except (ConnectionResetError, BrokenPipeError):
        how, closed_at = "reset", time.monotonic()
    finally:
        stop.set()
    if t is not None:
        join(t, 10)
    # The upstream's reset cut the stream: the client must see one too,
    # never a FIN that would claim the stream complete.
    assert how == "reset" or "ConnectionResetError" in send_end, \
        f"client saw {how} after the upstream's reset"
    rec = srv.wait_done()[0]
    assert "rst_at" in rec, rec
    assert closed_at - rec["rst_at"] < 2.0, \
        f"client closed {closed_at - rec['rst_at']:.2f}s after the upstream reset"
    n = d.wait_fds_at_most(base, timeout=5)
    assert n <= base, f"fd count {n} did not return to baseline {base}"
    assert try_echo_duplex(d)


def test_ipv6_listener_and_upstream(tmp_path):
    srv = Server(h_duplex, host="::1", name="duplex6")
    d = start_daemon(tmp_path, make_config(
        {"up6": [srv.spec]}, {"plain6": {"bind": "[::1]:0", "upstream": "up6"}}))
    assert d.ports["plain6"] == [("::1", d.port("plain6"))]
    assert "plain6 [::1]:" in d.ports_file.read_text()
    r = duplex_client(d.addr("plain6"), 6, 1 * MiB, 1 * MiB)
    check_duplex(r, srv)
    assert srv.records[0]["peer"][0] == "::1"


def test_listener_with_two_binds(tmp_path, echo):
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]},
        {"both": {"bind": ["127.0.0.1:0", "[::1]:0"], "upstream": "up"}}))
    hosts = sorted(h for h, _ in d.ports["both"])
    assert hosts == sorted(["127.0.0.1", "::1"]), d.ports
    for i in range(2):
        assert try_echo(d.addr("both", i)), f"bind {d.addr('both', i)} does not relay"


def test_upstream_host_name_localhost(tmp_path):
    """`localhost` is resolved; every address is tried.  The upstream listens
    only on the last address localhost resolves to, so a daemon that tries
    only the first one fails whenever there are several."""
    addrs = []
    for fam, _, _, _, sa in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM):
        if sa[0] not in addrs:
            addrs.append(sa[0])
    srv = Server(h_duplex, host=addrs[-1], name="duplex-localhost")
    d = start_daemon(tmp_path, make_config(
        {"up": [f"localhost:{srv.port}"]}, {"plain": {"upstream": "up"}}))
    for i in range(3):
        r = duplex_client(d.addr("plain"), 50 + i, 200000, 300000)
        check_duplex(r, srv)


def test_short_message_and_fin_together(tmp_path, echo):
    """A short message with the FIN right behind it (often in the same
    read): the daemon reads a short message without asking the socket again,
    so it must still notice the FIN, or the reply would never end."""
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    for i in range(100):
        payload = bytes([i % 251]) * (1 + i * 37)
        s = connect(d.addr("plain"))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        got = b""
        while True:
            b = s.recv(65536)  # a lost FIN: socket.timeout after 5 s
            if not b:
                break
            got += b
        assert got == payload, (i, len(got), len(payload))
        s.close()
    echo.wait_done(100)
    assert echo.errors() == []


def test_chat_then_bulk_then_chat_one_connection(tmp_path, echo):
    """One connection: small messages (buffered), a bulk burst (the
    direction turns to splice), then small messages again: every reply is
    whole and in order."""
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    s = connect(d.addr("plain"))
    rng = random.Random(7)
    sizes = [1, 100, 1500, 16383, 16384, 16385, 3 * MiB + 5, 100, 1, 70000, 2]
    for n in sizes:
        payload = rng.randbytes(n)
        result = {}

        def reader():
            result["got"] = recv_exact(s, n)

        t = start_thread(reader)
        s.sendall(payload)
        join(t, 30)
        assert result.get("got") == payload, n
    s.shutdown(socket.SHUT_WR)
    assert read_until_closed(s, 5)[:2] == ("eof", 0)
    rec = echo.wait_done(1)[0]
    assert rec["error"] is None
    assert rec["bytes"] == sum(sizes)


def test_urgent_byte_does_not_stall_the_stream(tmp_path, echo):
    """TCP urgent data (telnet's Synch, FTP's ABOR): recv stops short at the
    urgent mark, so a short read cannot be taken to mean an empty socket.
    The urgent byte is relayed inline, in its place (SO_OOBINLINE), and the
    bytes after it come through without the client sending more.  The
    spliced path: test_endings.py's test_urgent_byte_relayed_in_order."""
    d = start_daemon(tmp_path, make_config(
        {"up": [echo.spec]}, {"plain": {"upstream": "up"}}))
    for i in range(20):
        s = connect(d.addr("plain"))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        s.send(b"AB" * (i + 1))
        s.send(b"!", socket.MSG_OOB)
        s.send(b"CD" * (i + 1))
        want = b"AB" * (i + 1) + b"!" + b"CD" * (i + 1)
        s.settimeout(3)
        got = b""
        while len(got) < len(want):
            b = s.recv(4096)  # a stalled stream: socket.timeout
            assert b, f"EOF after {got!r}"
            got += b
        assert got == want
        s.close()


def pipe_fds(pid):
    """How many of the process's descriptors are pipe ends."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:["):
                n += 1
        except FileNotFoundError:  # closed while we looked
            pass
    return n


def _flood(sock, stop):
    """Sends zeros until stop is set or the connection fails."""
    block = bytes(1 << 20)
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            sock.sendall(block)
        except socket.timeout:
            continue
        except OSError:
            return


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_bulk_direction_turns_to_splice(tmp_path, direction):
    """A bulk direction goes socket -> pipe -> socket (splice(2)), not
    through a buffer.  Seen from outside: a stalled bulk direction holds
    its bytes in a pipe of its own.  With one worker, n stalled
    connections, n being the worker's idle pipes (its pool) plus two,
    need at least two pipes more than the daemon had at rest."""
    stop = threading.Event()

    def upstream(c, rec):
        if direction == "download":
            recv_exact(c, 3)
            _flood(c, stop)
        else:
            stop.wait(20)  # never reads: the upload stalls

    srv = Server(upstream, name="stall")
    d = start_daemon(tmp_path, make_config(
        {"up": [srv.spec]}, {"plain": {"upstream": "up"}},
        global_={"workers": "1"}))
    d.stable_fd_count()  # the workers have started
    rest = pipe_fds(d.pid)
    assert rest % 2 == 0, rest
    n = rest // 2 + 2
    socks = []
    for _ in range(n):
        s = connect(d.addr("plain"))
        socks.append(s)
        if direction == "download":
            s.sendall(b"GET")  # then never reads
        else:
            start_thread(_flood, s, stop, name="flood")
    srv.wait_accepted(n)
    try:
        wait_for(lambda: pipe_fds(d.pid) >= rest + 4, 5, what=(
            f"{n} stalled {direction}s holding pipes (pipe fds at rest: "
            f"{rest}, now: {pipe_fds(d.pid)})"))
    finally:
        stop.set()
    for s in socks:
        rst_close(s)
    assert d.alive()
