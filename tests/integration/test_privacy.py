"""Privacy: at the default log level no client address or port is logged."""

import re

from conftest import (
    connect, echo_roundtrip, expect_rejected, free_port, make_config,
    read_until_closed, rst_close, start_daemon)

CLIENT_IP = "127.0.0.2"  # distinct from every configured address


def test_no_client_address_or_port_in_output(tmp_path, echo):
    dead = f"127.0.0.1:{free_port()}"
    cfg = make_config(
        {"up": [echo.spec], "dead": [dead]},
        {"plain": {"upstream": "up"},
         "nowhere": {"upstream": "dead"},
         "capped": {"upstream": "up", "maxconn": "1"}},
        timeouts={"client": "1s", "server": "1s"})
    d = start_daemon(tmp_path, cfg)  # default log level
    client_ports = []

    def client(name):
        s = connect(d.addr(name), source=CLIENT_IP)
        client_ports.append(s.getsockname()[1])
        return s

    for _ in range(3):  # ordinary relays
        s = client("plain")
        echo_roundtrip(s, b"x" * 1000)
        s.close()
    for _ in range(2):  # upstream connect failures
        s = client("nowhere")
        s.sendall(b"hi")
        read_until_closed(s, 5)
    held = client("capped")  # maxconn rejection
    echo_roundtrip(held)
    expect_rejected(client("capped"))
    held.close()
    s = client("plain")  # client reset mid-connection
    echo_roundtrip(s)
    rst_close(s)
    s = client("plain")  # idle timeout
    echo_roundtrip(s)
    read_until_closed(s, 5)
    d.reload(cfg)
    assert d.stop() == 0
    # nothing written to disk but the ports file (and our own files)
    ours = {d.conf.name, d.ports_file.name, d.stderr_path.name, d.stdout_path.name}
    assert set(p.name for p in tmp_path.iterdir()) <= ours, list(tmp_path.iterdir())

    out = d.stderr_text() + d.stdout_text()
    assert CLIENT_IP not in out, f"client address logged:\n{out}"
    configured = {d.pid, echo.port, int(dead.rsplit(":", 1)[1])}
    configured |= {p for addrs in d.ports.values() for _, p in addrs}
    numbers = {int(n) for n in re.findall(r"(?<!\d)(\d+)(?!\d)", out)}
    leaked = sorted((set(client_ports) - configured) & numbers)
    assert not leaked, f"client source ports {leaked} appear in the output:\n{out}"
