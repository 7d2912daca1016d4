#!/usr/bin/python3
"""Summarises a `make check` run in one closing line that CI reads:

    check: 372 integration tests x2 (plain, sanitized), 5 unit suites
    (1001 assertions) x2 (plain, sanitized), 351 fuzz corpus entries: all passed

(one line), or, when anything failed or was skipped, the same counts
followed by what went wrong.  Exit status: 0 when everything passed, 1
when a test failed or was skipped or an input could not be read.

Inputs, as scripts/check.sh passes them:
  *.xml             pytest JUnit XML: one integration test case per <testcase>
  *fuzz*.log        replay lines "replay_NAME: N passed, N failed": N corpus
                    entries replayed through the parsers
  other *.log       unit-test lines "test_NAME: N passed, N failed" (N
                    assertions of one suite), and scripts/run-unit.sh's
                    "test_NAME: exited with status N" for a suite that
                    failed, so a suite that crashed before its summary line
                    still counts as failed
A file under a build-san* directory belongs to the sanitized run, any other
to the plain run.

Unit assertions, fuzz inputs and test cases are counted apart: adding them
up would let one loop of a thousand checks outweigh a hundred real tests.
"""
import os
import re
import sys
import xml.etree.ElementTree as ET

SUMMARY = re.compile(r"^(\S+): (\d+) passed, (\d+) failed$")
EXITED = re.compile(r"^(\S+): exited with status (\d+)$")


def plural(n, one, many=None):
    return f"{n} {one if n == 1 else (many or one + 's')}"


class Tally:
    """Counts of one kind of test (integration, unit, fuzz) in one run."""

    def __init__(self):
        self.cases = 0  # test cases, or corpus entries
        self.failed = 0
        self.skipped = 0
        self.suites = {}  # unit: name -> [assertions passed, failed, exited]

    def problems(self, kind):
        """What went wrong, as phrases ('2 tests failed')."""
        out = []
        if kind == "unit":
            bad = sum(f for _, f, _ in self.suites.values())
            if bad:
                out.append(plural(bad, "assertion") + " failed")
            # A suite that exited non-zero without a failed assertion
            # crashed, or its summary line is missing.
            out += [f"{name} exited with an error"
                    for name, (_, f, ex) in sorted(self.suites.items())
                    if ex and not f]
            if not self.suites:
                out.append("no suite ran")
            return out
        what = ("corpus entry", "corpus entries") if kind == "fuzz" else (
            "test", "tests")
        if self.failed:
            out.append(plural(self.failed, *what) + " failed")
        if self.skipped:
            # Skipped tests are not passes: they count against the run.
            out.append(plural(self.skipped, *what) + " skipped")
        if not self.cases:
            out.append("nothing ran")
        return out


def run_of(path):
    parts = os.path.normpath(path).split(os.sep)
    return "sanitized" if any(p.startswith("build-san") for p in parts) else "plain"


def read_junit(path, t):
    root = ET.parse(path).getroot()
    for suite in root.iter("testsuite"):
        tests = int(suite.get("tests", 0))
        bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skip = int(suite.get("skipped", 0))
        t.cases += tests
        t.failed += bad
        t.skipped += skip


def read_log(path, t, fuzz):
    with open(path) as f:
        for line in f:
            line = line.strip()
            m = SUMMARY.match(line)
            if m and fuzz:
                t.cases += int(m.group(2)) + int(m.group(3))
                t.failed += int(m.group(3))
            elif m:
                s = t.suites.setdefault(m.group(1), [0, 0, False])
                s[0] += int(m.group(2))
                s[1] += int(m.group(3))
            elif not fuzz and (m := EXITED.match(line)):
                t.suites.setdefault(m.group(1), [0, 0, False])[2] = True


def describe(kind, runs):
    """'372 integration tests x2 (plain, sanitized)' or, when the runs
    differ, '372 integration tests (plain), 370 (sanitized)'."""
    def count(t):
        if kind == "unit":
            n = sum(p + f for p, f, _ in t.suites.values())
            return (plural(len(t.suites), "unit suite")
                    + f" ({plural(n, 'assertion')})")
        if kind == "fuzz":
            return plural(t.cases, "fuzz corpus entry",
                          "fuzz corpus entries")
        return plural(t.cases, "integration test")

    names = list(runs)
    texts = [count(runs[r]) for r in names]
    if kind == "fuzz":
        # The corpus is replayed once, by an ASan build of the parsers.
        return ", ".join(texts)
    if len(set(texts)) == 1:
        mult = f" x{len(names)}" if len(names) > 1 else ""
        return f"{texts[0]}{mult} ({', '.join(names)})"
    return ", ".join(f"{x} ({r})" for x, r in zip(texts, names))


def main(paths):
    kinds = {"integration": {}, "unit": {}, "fuzz": {}}
    unreadable = []
    for path in paths:
        if path.endswith(".xml"):
            kind = "integration"
        elif "fuzz" in os.path.basename(path):
            kind = "fuzz"
        else:
            kind = "unit"
        t = kinds[kind].setdefault(run_of(path), Tally())
        try:
            if kind == "integration":
                read_junit(path, t)
            else:
                read_log(path, t, kind == "fuzz")
        except (OSError, ET.ParseError) as e:
            print(f"summary: cannot read {path}: {e}")
            unreadable.append(path)

    counts, problems = [], []
    for kind, runs in kinds.items():
        if not runs:
            continue
        counts.append(describe(kind, runs))
        for run, t in runs.items():
            what = kind if kind == "fuzz" else f"{kind} {run}"
            problems += [f"{what}: {p}" for p in t.problems(kind)]
    if unreadable:
        problems.append(f"{plural(len(unreadable), 'input')} unreadable")

    line = "check: " + ", ".join(counts)
    line += ": " + ("; ".join(problems) if problems else "all passed")
    print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
