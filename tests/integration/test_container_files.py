"""What deploy/container/ ships, checked without a container engine
(scripts/container-check.sh builds and runs the image): the image's
configuration is the 'whatsapp' preset with each listener at 10000 + its
port, and the Containerfile and both compose files agree with it and with
the official port map."""

import pathlib
import re

from conftest import run_cli

REPO = pathlib.Path(__file__).resolve().parents[2]
DIR = REPO / "deploy" / "container"
CONF = DIR / "lifeline.conf"


def body(text):
    """--print-config output without its first line (it names the source)."""
    first, _, rest = text.partition("\n")
    assert first.startswith("# effective configuration from "), first
    return rest


def preset_ports():
    """The whatsapp preset's listener ports, in its order."""
    out = run_cli(["--preset", "whatsapp", "--print-config"]).stdout
    return [int(p) for p in re.findall(r"^bind = 0\.0\.0\.0:(\d+)$", out,
                                       re.M)]


def test_container_config_is_the_whatsapp_preset_moved_up():
    """Each bind at 10000 + its port, IPv4 only; a shorter drain (inside
    the engines' stop grace) and 'user' (for --user 0) are the only other
    differences."""
    preset = run_cli(["--preset", "whatsapp", "--print-config"])
    shipped = run_cli(["-c", str(CONF), "--print-config"])
    assert preset.returncode == 0, preset.stderr
    assert shipped.returncode == 0, shipped.stderr
    want = []
    for line in body(preset.stdout).splitlines():
        m = re.fullmatch(r"bind = 0\.0\.0\.0:(\d+)", line)
        if line.startswith("bind = [::]:"):
            continue
        if m:
            line = f"bind = 0.0.0.0:{int(m.group(1)) + 10000}"
        if line == "drain-timeout = 30s":
            want.append("user = lifeline")
            line = "drain-timeout = 25s"
        want.append(line)
    assert body(shipped.stdout).splitlines() == want


def test_container_config_passes_check():
    r = run_cli(["--check", "-c", str(CONF)])
    assert r.returncode == 0, r.stderr
    assert r.stdout + r.stderr == f"{CONF}: configuration OK\n"


def test_containerfile_exposes_the_listeners():
    text = (DIR / "Containerfile").read_text()
    exposed = re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()
    assert sorted(int(p) for p in exposed) == \
        sorted(p + 10000 for p in preset_ports())


def published(name):
    """(default host port, container port) of each line of a compose
    file's 'ports'."""
    text = (DIR / name).read_text()
    return re.findall(r'^\s+- "\$\{LIFELINE_[A-Z_]+:-(\d+)\}:(\d+)"$',
                      text, re.M)


def test_compose_publishes_the_official_map():
    got = sorted((int(h), int(c)) for h, c in published("compose.yaml"))
    assert got == sorted((p, p + 10000) for p in preset_ports())


def test_compose_minimal_publishes_443_and_587():
    got = sorted((int(h), int(c)) for h, c in
                 published("compose.minimal.yaml"))
    assert got == [(443, 10443), (587, 10587)]
