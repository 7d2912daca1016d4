"""What `make install` and the Debian package ship: deploy/lifeline.conf is
the 'minimal' preset written out (the two cannot drift apart), and
`make install` / `make uninstall` put and take the files where they say."""

import pathlib

from conftest import run_cli

REPO = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "lifeline.conf"


def body(text):
    """--print-config output without its first line (it names the source)."""
    first, _, rest = text.partition("\n")
    assert first.startswith("# effective configuration from "), first
    return rest


def test_shipped_config_is_the_minimal_preset():
    shipped = run_cli(["-c", str(SHIPPED), "--print-config"])
    preset = run_cli(["--preset", "minimal", "--print-config"])
    assert shipped.returncode == 0, shipped.stderr
    assert preset.returncode == 0, preset.stderr
    assert body(shipped.stdout) == body(preset.stdout)


def test_shipped_config_has_no_machine_values():
    """workers is auto; maxconn is the default (it has no 'auto')."""
    text = SHIPPED.read_text()
    active = [ln.split("#")[0].strip() for ln in text.splitlines()]
    assert "workers = auto" in active
    out = run_cli(["-c", str(SHIPPED), "--print-config"]).stdout
    assert "workers = auto\n" in out


def test_shipped_config_passes_check():
    r = run_cli(["--check", "-c", str(SHIPPED)])
    assert r.returncode == 0, r.stderr
    # OK and nothing else: no warning (a public stats listener, say).
    assert r.stdout + r.stderr == f"{SHIPPED}: configuration OK\n"
