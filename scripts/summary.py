#!/usr/bin/python3
"""Adds up unit-test lines ("name: N passed, N failed") and pytest JUnit XML
files into one closing line "check: N passed, N failed"."""
import re
import sys
import xml.etree.ElementTree as ET

passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        if path.endswith(".xml"):
            root = ET.parse(path).getroot()
            for suite in root.iter("testsuite"):
                tests = int(suite.get("tests", 0))
                bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
                skip = int(suite.get("skipped", 0))
                passed += tests - bad - skip
                failed += bad
                skipped += skip
        else:
            with open(path) as f:
                for line in f:
                    m = re.search(r"(\d+) passed, (\d+) failed", line)
                    if m:
                        passed += int(m.group(1))
                        failed += int(m.group(2))
    except (OSError, ET.ParseError) as e:
        print(f"summary: cannot read {path}: {e}")
        failed += 1
line = f"check: {passed} passed, {failed} failed"
if skipped:
    # Skipped tests are not passes: they count against the run.
    line += f", {skipped} skipped"
    failed += skipped
print(line)
sys.exit(1 if failed else 0)
