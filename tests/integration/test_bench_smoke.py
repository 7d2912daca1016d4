"""`bench/run.sh --smoke`: the benchmark runs end to end and reports.

No speed is asserted: only that it exits 0 and that its table has a row
for every case with a number for every path measured (direct has no relay
process, so the memory and CPU rows say n/a there).
"""

import os
import re
import signal
import subprocess

from conftest import LIFELINE_BIN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Below conftest's hard per-test bound (150 s); the smoke run takes ~25 s.
TIMEOUT = 130
PATH_COLUMNS = ["direct", "HAProxy official", "HAProxy tuned", "lifeline"]
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
# case number -> how many rows it has
CASES = {"1": 2, "2": 1, "3": 1, "4": 3, "5": 1, "6": 2}
RELAYS_ONLY = {"5", "6"}


def _run_smoke():
    env = dict(os.environ, LIFELINE_BIN=os.environ.get("LIFELINE_BIN", LIFELINE_BIN))
    p = subprocess.Popen([os.path.join(REPO, "bench", "run.sh"), "--smoke"], cwd=REPO,
                         env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)  # run.sh's trap stops what it started
        try:
            out, err = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        raise AssertionError(f"bench/run.sh --smoke took over {TIMEOUT}s:\n"
                             f"{err.decode(errors='replace')[-3000:]}")
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _table(text):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    assert len(lines) >= 3, f"no table in the output:\n{text}"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        rows.append(dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))))
    return header, rows


def test_bench_smoke():
    rc, out, err = _run_smoke()
    assert rc == 0, f"bench/run.sh --smoke exited {rc}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    header, rows = _table(out)
    for col in PATH_COLUMNS:
        assert col in header, f"no column {col!r} in {header}"
    for case, nrows in CASES.items():
        mine = [r for r in rows if r.get("#") == case]
        assert len(mine) == nrows, f"case {case}: {len(mine)} rows, want {nrows}:\n{out}"
        for r in mine:
            for col in PATH_COLUMNS:
                v = r[col]
                if col == "direct" and case in RELAYS_ONLY:
                    assert v == "n/a", f"case {case} {r['case']}: direct is {v!r}"
                else:
                    assert NUMBER.match(v), f"case {case} {r['case']}: {col} is {v!r}"
            for col in ("lifeline / HAProxy official", "lifeline / HAProxy tuned"):
                assert re.match(r"^(\d+\.\d+x|n/a)$", r[col]), \
                    f"case {case} {r['case']}: {col} is {r[col]!r}"
