"""What `make install` and the Debian package ship: deploy/lifeline.conf is
the 'minimal' preset written out (the two cannot drift apart), and
`make install` / `make uninstall` put and take the files where they say."""

import os
import pathlib
import subprocess

from conftest import LIFELINE_BIN, run_cli

REPO = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "lifeline.conf"
UNIT = REPO / "deploy" / "systemd" / "lifeline.service"


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


def make(tmp_path, *args):
    """make -C REPO ARGS..., installing the binary under test, never
    rebuilding it (-o)."""
    r = subprocess.run(
        ["make", "-s", "-C", str(REPO), f"BIN={LIFELINE_BIN}", "-o",
         LIFELINE_BIN, f"DESTDIR={tmp_path}", *args],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not p.is_dir())


def test_make_install_usr_local(tmp_path):
    make(tmp_path, "install")
    assert files(tmp_path) == [
        "etc/lifeline/lifeline.conf",
        "usr/local/lib/systemd/system/lifeline.service",
        "usr/local/sbin/lifeline",
        "usr/local/share/man/man5/lifeline.conf.5",
        "usr/local/share/man/man8/lifeline.8",
    ]
    sbin = tmp_path / "usr/local/sbin/lifeline"
    assert os.access(sbin, os.X_OK)
    assert sbin.read_bytes() == pathlib.Path(LIFELINE_BIN).read_bytes()
    assert (tmp_path / "etc/lifeline/lifeline.conf").read_text() == \
        SHIPPED.read_text()
    unit = (tmp_path / "usr/local/lib/systemd/system/lifeline.service"
            ).read_text()
    assert "ExecStart=/usr/local/sbin/lifeline -c /etc/lifeline/" in unit
    assert "ExecStartPre=/usr/local/sbin/lifeline --check" in unit
    assert "/usr/sbin/lifeline" not in unit
    # Nothing but those paths changed.
    assert unit == UNIT.read_text().replace("/usr/sbin/lifeline",
                                            "/usr/local/sbin/lifeline")
    make(tmp_path, "uninstall")
    assert files(tmp_path) == []
    assert not (tmp_path / "etc/lifeline").exists()


def test_make_install_debian_paths(tmp_path):
    """The paths the Debian package uses: the unit is the file in the
    repository, byte for byte."""
    make(tmp_path, "install", "PREFIX=/usr", "UNITDIR=/lib/systemd/system")
    assert (tmp_path / "lib/systemd/system/lifeline.service").read_text() \
        == UNIT.read_text()
    assert (tmp_path / "usr/sbin/lifeline").exists()


def test_make_install_keeps_an_existing_config(tmp_path):
    conf = tmp_path / "etc/lifeline/lifeline.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# mine\n")
    out = make(tmp_path, "install")
    assert "exists, kept" in out
    assert conf.read_text() == "# mine\n"
    out = make(tmp_path, "uninstall")
    assert "was changed, kept" in out
    assert conf.read_text() == "# mine\n"
    assert not (tmp_path / "usr/local/sbin/lifeline").exists()
