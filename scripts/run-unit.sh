#!/bin/sh
# Runs each unit-test binary; prints their lines and exits non-zero if any failed.
status=0
for t in "$@"; do
	"$t" || status=1
done
exit $status
