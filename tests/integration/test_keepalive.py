"""A client that vanishes: no FIN, no RST, nothing (issue 14).

A phone that loses its network, or a censor that starts dropping a
flow, leaves the relay holding a connection that will never speak
again.  TCP keep-alive toward clients (`client-keepalive`, on by
default, 60 s) finds it long before the idle timeout (200 s by default);
this test runs it at 1 s: probes every second after a second of silence,
six unanswered ones end it, about 7 s in all.  The link is cut by
dropping every packet at the router (nftables), so neither end's stack
sees anything but silence.
"""

import socket
import time

import pytest

from conftest import SLOW, h_echo, make_config, recv_exact, try_echo
from netns import (  # noqa: F401 (fixtures)
    RELAY_IP, net, netns_shim, nsx,
)


def cut(net, on):
    """Every packet of the client link dropped at the router (on), or
    none (off): the loss rules' chain, emptied or filled."""
    rules = ["flush chain inet impair links"]
    if on:
        rules += [f'add rule inet impair links oifname "{dev}" counter drop'
                  for dev in ("w0", "w1")]
    nsx(net.ns["wire"], "nft", "-f", "-", input="\n".join(rules) + "\n")


def h_hold(c, rec):
    """Echoes until the connection ends; records how and when."""
    try:
        while True:
            d = c.recv(65536)
            if not d:
                rec["end"] = "eof"
                break
            c.sendall(d)
    except ConnectionResetError:
        rec["end"] = "reset"
    except OSError as e:
        rec["end"] = type(e).__name__
    rec["t_end"] = time.monotonic()


@pytest.mark.plain_only
@pytest.mark.parametrize("keepalive", ["1s", "off"])
def test_vanished_client_found_by_keepalive(net, tmp_path, keepalive):
    """With client-keepalive = 1s, a client whose packets stop is found
    dead after its probes go unanswered (1 s + 6 x 1 s, well inside the
    60 s idle timeout), and the upstream gets an RST: the stream was cut,
    never a FIN that claims it is complete.  With keep-alive off, the
    same connection is still held 10 s later (the idle timeout would end
    it; the camouflage preset turns keep-alive off because a web server
    sends none)."""
    srv = net.server(h_hold, name="held")
    probe = net.server(h_echo, name="probe")
    d = net.daemon(tmp_path, make_config(
        {"up": [srv.spec], "probe": [probe.spec]},
        {"plain": {"bind": f"{RELAY_IP}:0", "upstream": "up",
                   "client-keepalive": keepalive},
         "probe": {"bind": f"{RELAY_IP}:0", "upstream": "probe"}},
        timeouts={"client": "60s", "server": "60s"}))

    def relays():
        with net.inside("client"):
            return try_echo(d.addr("probe"), timeout=5.0)

    assert relays()
    base = d.stable_fd_count()
    s = net.connect(d.addr("plain"))
    s.settimeout(5.0)
    s.sendall(b"hello")
    assert recv_exact(s, 5) == b"hello"
    srv.wait_accepted(1)

    cut(net, True)  # the client vanishes
    t_cut = time.monotonic()
    if keepalive == "off":
        time.sleep(10.0)
        assert "end" not in srv.records[0], srv.records[0]
        cut(net, False)
        s.sendall(b"back")  # the link returns: the stream goes on
        assert recv_exact(s, 4) == b"back"
        s.close()
        rec = srv.wait_done(1, timeout=5.0)[0]
        assert rec["end"] == "eof", rec
    else:
        rec = srv.wait_done(1, timeout=12.0 * SLOW)[0]
        took = rec["t_end"] - t_cut
        cut(net, False)
        print(f"keepalive {keepalive}: upstream {rec['end']} {took:.1f} s "
              f"after the client vanished")
        assert rec["end"] == "reset", rec
        # six probes a second apart after a second of silence: not before
        assert 6.0 <= took <= 9.0 * SLOW, f"{took:.1f} s"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    assert d.alive()
    assert relays()
    n = d.wait_fds_at_most(base, timeout=5.0)
    assert n <= base, f"descriptors {n}, baseline {base}"
