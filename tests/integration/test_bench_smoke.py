"""`bench/run.sh --smoke`: the benchmark runs end to end and reports.

No speed is asserted: only that it exits 0 and that its tables have a row
for every case with a number for every path measured and a ratio (a signed
number: an added latency can be negative when a relay beats direct by noise)
or n/a in the ratio columns.  "n/a" stands where a path has nothing to
measure: direct has no relay process (the memory and relay CPU rows), the
two reference relays (minimal splice, minimal event-driven) run in the
throughput cases (1, 2, 6) only.
Case 7 (TLS) has its own table: its paths are HAProxy with an RSA-4096 and
with an EC P-256 certificate, and lifeline.  Cases 8 (a WhatsApp-like
population, two stages of a few dozen clients) and 9 (a reconnect storm)
have a table each (issue 16).
"""

import faulthandler
import os
import re
import signal
import subprocess

import pytest

from conftest import LIFELINE_BIN

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The smoke run takes ~65 s on an idle machine; this test re-arms conftest's
# hard bound (150 s) above its own.
TIMEOUT = 300
PATH_COLUMNS = ["direct", "HAProxy official", "HAProxy tuned", "lifeline",
                "minimal splice relay", "minimal event-driven relay"]
TLS_PATH_COLUMNS = ["HAProxy official (RSA-4096)", "HAProxy official, EC P-256",
                    "lifeline (EC P-256)"]
POP_PATH_COLUMNS = ["direct (plain)", "lifeline (EC P-256)", "HAProxy official (RSA-4096)",
                    "HAProxy official, EC P-256", "HAProxy tuned (EC P-256)"]
STORM_PATH_COLUMNS = ["lifeline (EC P-256)", "HAProxy official (RSA-4096)",
                      "HAProxy official, EC P-256"]
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
RATIO = re.compile(r"^(-?\d+\.\d+x|n/a)$")
# case number -> how many rows it has
CASES = {"1": 2, "2": 1, "3": 2, "4": 3, "5": 1, "6": 6}
TLS_CASES = {"7": 8}
# bench.py's SMOKE_POP_STAGES: 9 rows per stage, and two for the largest
POP_CASES = {"8": 9 * 2 + 2}
STORM_CASES = {"9": 7}
MINIMAL_CASES = {"1", "2", "6"}


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


def _relays_only(row):
    """Rows measured on the relay process only: direct says n/a there."""
    return row["case"].startswith(("Relay", "Memory per idle", "Chat latency",
                                   "Clients per"))


def _expected(case, row, col):
    """"num" or "n/a": what the cell of row in column col must hold."""
    if col in ("direct", "direct (plain)") and _relays_only(row):
        return "n/a"
    if col in ("minimal splice relay", "minimal event-driven relay") and \
            case not in MINIMAL_CASES:
        return "n/a"
    if row["case"].startswith("Clients per core"):
        return "num or n/a"  # n/a: no CPU tick (10 ms) in a smoke run's window
    return "num"


def _check(out, header, rows, columns, ratio_columns, cases):
    for col in columns + ratio_columns:
        assert col in header, f"no column {col!r} in {header}"
    for case, nrows in cases.items():
        mine = [r for r in rows if r.get("#") == case]
        assert len(mine) == nrows, f"case {case}: {len(mine)} rows, want {nrows}:\n{out}"
        for r in mine:
            for col in columns:
                v, want = r[col], _expected(case, r, col)
                if want == "n/a" or (want == "num or n/a" and v == "n/a"):
                    assert v == "n/a", f"case {case} {r['case']}: {col} is {v!r}"
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
    faulthandler.dump_traceback_later(TIMEOUT + 60, exit=True)
    rc, out, err = _run_smoke()
    assert rc == 0, f"bench/run.sh --smoke exited {rc}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    tables = _tables(out)
    assert len(tables) == 4, (f"want 4 tables (cases 1-6, 7, 8 and 9), got {len(tables)}:\n"
                              f"{out}")
    (header, rows), (tls_header, tls_rows), (pop_header, pop_rows), (st_header, st_rows) = tables
    _check(out, header, rows, PATH_COLUMNS,
           ["lifeline / HAProxy official", "lifeline / HAProxy tuned",
            "lifeline / minimal relay", "lifeline / event-driven relay"], CASES)
    _check(out, tls_header, tls_rows, TLS_PATH_COLUMNS,
           ["lifeline / HAProxy official", "lifeline / HAProxy EC P-256"], TLS_CASES)
    _check(out, pop_header, pop_rows, POP_PATH_COLUMNS,
           [f"lifeline / {c}" for c in POP_PATH_COLUMNS[2:]], POP_CASES)
    _check(out, st_header, st_rows, STORM_PATH_COLUMNS,
           [f"lifeline / {c}" for c in STORM_PATH_COLUMNS[1:]], STORM_CASES)
    # Both population stages and the storm report their sizes.
    assert any("(20 clients)" in r["case"] for r in pop_rows), out
    assert any("(40 clients)" in r["case"] for r in pop_rows), out
