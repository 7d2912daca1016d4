#!/usr/bin/python3
"""make mutate: does the test suite notice deliberate breaks?

Each tests/mutants/NN-name.patch is a small unified diff against src/ with
a header of comment lines:

    # NN what the break is
    # why it matters (free text)
    # tests: PYTEST ARGS          (repeatable: node ids, files, -k EXPR)
    # unit: NAME ...              (optional: tests/unit/test_NAME binaries)

The working tree's files (tracked and untracked, not ignored) are copied
once into a temporary directory and built there (-O0: faster to build,
and the relay's hot path is splice(2) anyway).  Before any mutant, every
selection runs against that unmutated build: a selection that fails there
proves nothing, so the run stops.  Then each mutant gets a copy of the
built tree, its patch (GNU patch without fuzz: a patch whose context has
moved must be refreshed, never applied to a look-alike line elsewhere),
an incremental build and its selections, stopping at the first failure.  The working tree itself is never touched.

One line per mutant: caught, survived, or broken (the patch does not apply,
the build fails, or a selection is not a valid pytest selection: a fault
of the tool or the patch, never counted as caught).  Last line:
"N mutants: C caught, S survived" (", B broken" when any).  Exit status 0
only when every mutant was caught.

Environment: MUTANTS="03 17" runs those only (prefixes of file names);
MUTATE_JOBS (default 2) mutants at once; MUTATE_KEEP=1 keeps the
temporary trees; logs go to build-mutate/NN-name.log.
"""

import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTANT_DIR = os.path.join(ROOT, "tests", "mutants")
LOG_DIR = os.path.join(ROOT, "build-mutate")
PYTHON = "/usr/bin/python3"
# A selection that takes longer than this hangs: the mutant is caught.
SELECTION_TIMEOUT = 900
BUILD_ENV = {"CFLAGS": "-O0", "BUILD": "build"}


class Mutant:
    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)[:-len(".patch")]
        self.selections = []  # lists of pytest args
        self.units = []
        self.errors = []
        with open(path) as f:
            for line in f:
                if line.startswith(("--- ", "diff ")):
                    break
                m = re.match(r"#\s*(tests|unit):\s*(.*)$", line.strip())
                if m and m.group(1) == "tests":
                    self.selections.append(shlex.split(m.group(2)))
                elif m:
                    self.units += m.group(2).split()
        if not self.selections and not self.units:
            self.errors.append("no '# tests:' or '# unit:' line")


def run(cmd, cwd, log, timeout=None, env=None):
    """Runs cmd, appending its output to log; returns its exit status
    (None on timeout)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log, "a") as out:
        out.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        out.flush()
        try:
            return subprocess.run(cmd, cwd=cwd, stdout=out, stderr=out,
                                  stdin=subprocess.DEVNULL, env=full_env,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n(timed out after {timeout}s)\n")
            return None


def log_tail(log, since):
    """The last non-empty line written to log after offset since."""
    with open(log) as f:
        f.seek(since)
        lines = [l.strip() for l in f.read().splitlines() if l.strip()]
    return lines[-1] if lines else ""


def make_cmd(targets):
    return ["make", "-s", "-j2"] + [f"{k}={v}" for k, v in BUILD_ENV.items()] + targets


def copy_worktree(dst):
    """The working tree's files (tracked + untracked, not ignored) -> dst."""
    files = subprocess.run(
        ["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
         "--exclude-standard"], capture_output=True, check=True).stdout
    os.makedirs(dst)
    for rel in files.decode().split("\0"):
        if not rel:
            continue
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):  # deleted in the working tree
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))


def run_selection(tree, sel, i, log, first_failure_stops):
    """One pytest selection against tree's build.

    Returns ("pass" | "fail" | "error", what failed)."""
    start = os.path.getsize(log)
    cmd = [PYTHON, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
           f"--basetemp={tree}/pytest-{i}"]
    if first_failure_stops:
        cmd.append("-x")
    rc = run(cmd + sel, tree, log, timeout=SELECTION_TIMEOUT,
             env={"LIFELINE_BIN": os.path.join(tree, "build", "lifeline")})
    if rc == 0:
        return "pass", ""
    with open(log) as f:
        f.seek(start)
        text = f.read()
    failed = re.findall(r"^FAILED (\S+)", text, re.M)
    what = failed[0] if failed else " ".join(sel)
    if rc == 1:
        return "fail", what
    if rc is None:
        return "fail", f"{what} (hung)"
    # 2: interrupted (the hard per-test timeout); 3: internal error; 4:
    # usage (a node id that does not exist); 5: nothing selected.
    if rc == 2:
        return "fail", f"{what} (interrupted)"
    return "error", f"pytest exit {rc} for {' '.join(sel)}"


def run_unit(tree, name, log):
    if run(make_cmd([f"build/unit/test_{name}"]), tree, log) != 0:
        return "error", f"unit test_{name} does not build"
    if run([f"build/unit/test_{name}"], tree, log, timeout=120) != 0:
        return "fail", f"unit test_{name}"
    return "pass", ""


def baseline(base, mutants, jobs, log_dir):
    """Every distinct selection must pass on the unmutated tree (the same
    number of jobs at once as the mutants will run with)."""
    units, sels = [], []
    for m in mutants:
        units += [u for u in m.units if u not in units]
        sels += [s for s in m.selections if s not in sels]
    log = os.path.join(log_dir, "baseline.log")
    for u in units:
        status, what = run_unit(base, u, log)
        if status != "pass":
            return status, what, log

    def one(i):
        slog = os.path.join(log_dir, f"baseline-{i}.log")
        open(slog, "w").close()
        return run_selection(base, sels[i], i, slog, False) + (slog,)

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        for status, what, slog in ex.map(one, range(len(sels))):
            if status != "pass":
                return status, what, slog
    return "pass", "", log


def one_mutant(base, work, m):
    log = os.path.join(LOG_DIR, m.name + ".log")
    open(log, "w").close()
    t0 = time.monotonic()
    if m.errors:
        return m, "broken", "; ".join(m.errors), 0.0
    tree = os.path.join(work, m.name)
    # The base run's pytest directories are not part of the build.
    shutil.copytree(base, tree, symlinks=True,
                    ignore=shutil.ignore_patterns("pytest-*"))
    try:
        since = os.path.getsize(log)
        rc = run(["patch", "-p1", "-F0", "--no-backup-if-mismatch",
                  "-r", "-", "-i", m.path], tree, log)
        if rc != 0:
            return m, "broken", f"does not apply: {log_tail(log, since)}", 0.0
        since = os.path.getsize(log)
        rc = run(make_cmd(["all"]), tree, log)
        if rc != 0:
            return m, "broken", f"does not build: {log_tail(log, since)}", 0.0
        status, what = "pass", ""
        for u in m.units:
            status, what = run_unit(tree, u, log)
            if status != "pass":
                break
        for i, sel in enumerate(m.selections):
            if status != "pass":
                break
            status, what = run_selection(tree, sel, i, log, True)
        dt = time.monotonic() - t0
        if status == "fail":
            return m, "caught", what, dt
        if status == "error":
            return m, "broken", what, dt
        return m, "survived", "", dt
    finally:
        if not os.environ.get("MUTATE_KEEP"):
            shutil.rmtree(tree, ignore_errors=True)


def main():
    t_start = time.monotonic()
    only = os.environ.get("MUTANTS", "").split()
    jobs = int(os.environ.get("MUTATE_JOBS", "2"))
    paths = sorted(os.path.join(MUTANT_DIR, p) for p in os.listdir(MUTANT_DIR)
                   if p.endswith(".patch"))
    if only:
        paths = [p for p in paths if any(os.path.basename(p).startswith(o) for o in only)]
    if not paths:
        print("mutate: no mutants selected")
        return 2
    mutants = [Mutant(p) for p in paths]
    os.makedirs(LOG_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix="lifeline-mutate.")
    base = os.path.join(work, "base")
    try:
        copy_worktree(base)
        blog = os.path.join(LOG_DIR, "baseline.log")
        open(blog, "w").close()
        if run(make_cmd(["all"]), base, blog) != 0:
            print(f"mutate: the unmutated tree does not build (see {blog})")
            return 2
        status, what, slog = baseline(base, mutants, jobs, LOG_DIR)
        if status != "pass":
            print(f"mutate: the unmutated tree fails {what}: fix the suite "
                  f"first (see {os.path.relpath(slog, ROOT)})")
            return 2
        print(f"baseline: every selection passes unmutated "
              f"({time.monotonic() - t_start:.0f}s)", flush=True)
        counts = {"caught": 0, "survived": 0, "broken": 0}
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
            results = ex.map(lambda m: one_mutant(base, work, m), mutants)
            for m, status, what, dt in results:
                counts[status] += 1
                detail = f" ({dt:.0f}s: {what})" if status == "caught" else \
                    (f" ({what})" if what else "")
                print(f"{status:<8} {m.name}{detail}", flush=True)
    finally:
        if not os.environ.get("MUTATE_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"mutate: trees kept in {work}")
    elapsed = time.monotonic() - t_start
    print(f"mutate: {elapsed / 60:.1f} min, logs in {os.path.relpath(LOG_DIR, ROOT)}/")
    last = f"{len(mutants)} mutants: {counts['caught']} caught, {counts['survived']} survived"
    if counts["broken"]:
        last += f", {counts['broken']} broken"
    print(last)
    return 0 if counts["caught"] == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
