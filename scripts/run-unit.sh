#!/bin/sh
# Runs each unit-test binary; prints their lines and exits non-zero if any
# failed.  A binary that fails also gets the line "NAME: exited with status
# N", so that scripts/summary.py counts a suite that crashed before printing
# its own summary line.
status=0
for t in "$@"; do
	"$t"
	rc=$?
	if [ $rc -ne 0 ]; then
		echo "$(basename "$t"): exited with status $rc"
		status=1
	fi
done
exit $status
