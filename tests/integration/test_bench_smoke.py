"""`bench/run.sh --smoke`: the benchmark runs end to end and reports.

No speed is asserted: only that it exits 0 and that its tables have a row
for every case with a number for every path measured (direct has no relay
process, so the memory and CPU rows say n/a there) and a ratio (a signed
number: an added latency can be negative when a relay beats direct by noise)
or n/a in the ratio columns.  Case 7 (TLS) has its own table: its paths are
HAProxy with an RSA-4096 and with an EC P-256 certificate, and lifeline.
"""

import os
import re
import signal
import subprocess

import pytest

from conftest import LIFELINE_BIN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Below conftest's hard per-test bound (150 s); the smoke run takes ~30 s.
TIMEOUT = 130
PATH_COLUMNS = ["direct", "HAProxy official", "HAProxy tuned", "lifeline"]
TLS_PATH_COLUMNS = ["HAProxy official (RSA-4096)", "HAProxy official, EC P-256",
                    "lifeline (EC P-256)"]
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
RATIO = re.compile(r"^(-?\d+\.\d+x|n/a)$")
# case number -> how many rows it has
CASES = {"1": 2, "2": 1, "3": 1, "4": 3, "5": 1, "6": 2}
TLS_CASES = {"7": 7}
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


def _tables(text):
    """Every markdown table in text (runs of lines starting with '|'), as
    (header, rows) pairs."""
    tables, block = [], []
    for ln in text.splitlines() + [""]:
        if ln.strip().startswith("|"):
            block.append(ln.strip())
            continue
        if block:
            assert len(block) >= 3, f"a table without rows:\n{text}"
            header = [c.strip() for c in block[0].strip("|").split("|")]
            rows = [dict(zip(header, (c.strip() for c in b.strip("|").split("|"))))
                    for b in block[2:]]
            tables.append((header, rows))
            block = []
    return tables


def _check(out, header, rows, columns, ratio_columns, cases):
    for col in columns + ratio_columns:
        assert col in header, f"no column {col!r} in {header}"
    for case, nrows in cases.items():
        mine = [r for r in rows if r.get("#") == case]
        assert len(mine) == nrows, f"case {case}: {len(mine)} rows, want {nrows}:\n{out}"
        for r in mine:
            for col in columns:
                v = r[col]
                if col == "direct" and case in RELAYS_ONLY:
                    assert v == "n/a", f"case {case} {r['case']}: direct is {v!r}"
                else:
                    assert NUMBER.match(v), f"case {case} {r['case']}: {col} is {v!r}"
            for col in ratio_columns:
                assert RATIO.match(r[col]), f"case {case} {r['case']}: {col} is {r[col]!r}"


# The benchmark script is the same whichever build it measures: the plain
# pass runs it, not the sanitized one (where it would also run at the same
# time as the plain pass's, two benchmarks disturbing each other).
@pytest.mark.plain_only
@pytest.mark.serial
def test_bench_smoke():
    rc, out, err = _run_smoke()
    assert rc == 0, f"bench/run.sh --smoke exited {rc}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    tables = _tables(out)
    assert len(tables) == 2, f"want 2 tables (cases 1-6, case 7), got {len(tables)}:\n{out}"
    (header, rows), (tls_header, tls_rows) = tables
    _check(out, header, rows, PATH_COLUMNS,
           ["lifeline / HAProxy official", "lifeline / HAProxy tuned"], CASES)
    _check(out, tls_header, tls_rows, TLS_PATH_COLUMNS,
           ["lifeline / HAProxy official", "lifeline / HAProxy EC P-256"], TLS_CASES)
