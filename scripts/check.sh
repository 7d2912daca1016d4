#!/bin/sh
# The whole test suite, as `make check` and CI run it:
#   1. formatting (clang-format), a one-way include order between
#      modules (scripts/include-order.py), warnings as errors;
#   2. unit tests and integration tests against build/lifeline;
#   3. the same under AddressSanitizer + UndefinedBehaviorSanitizer, and
#      the fuzz corpus replayed through the parsers (gcc + ASan).
# Ends with one line from scripts/summary.py that counts integration tests,
# unit suites (and their assertions) and fuzz corpus entries apart:
# "check: N integration tests x2 (plain, sanitized), ...: all passed".
set -u
cd "$(dirname "$0")/.."

failed_steps=""
step() {
	name=$1
	shift
	echo "== $name"
	if ! "$@"; then
		failed_steps="$failed_steps $name"
	fi
}

# Objects a plain `make` built without -Werror would be reused: start over.
rm -rf build/obj build-san/obj
mkdir -p build build-san
step format make -s format-check
step include-order /usr/bin/python3 scripts/include-order.py
step build make -s -j2 WERROR=1 all
step unit sh -c 'make -s -j2 WERROR=1 check-unit | tee build/unit.log'
step build-san make -s -j2 WERROR=1 SANITIZE=address,undefined all
step unit-san sh -c 'make -s -j2 WERROR=1 SANITIZE=address,undefined check-unit | tee build-san/unit.log'
step fuzz-replay sh -c 'make -s check-fuzz-replay | tee build/fuzz.log'

# The two integration passes at once, each in TEST_JOBS pytest processes
# (Makefile; pytest-xdist): they spend their time waiting on timeouts and
# peers (measured: 44 s of CPU in a 6.5-minute plain pass in one
# process), so together they take the time of the longer one: ~5
# minutes at TEST_JOBS=2 (the default), ~10 at 1.  Each logs to its build
# directory; the logs are printed whole once both are done.
echo "== integration, integration-san (at once)"
make -s check-integration >build/integration.log 2>&1 &
plain=$!
ASAN_OPTIONS=abort_on_error=0:halt_on_error=1:detect_leaks=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	make -s SANITIZE=address,undefined check-integration \
	>build-san/integration.log 2>&1 &
san=$!
wait $plain
plain_rc=$?
wait $san
san_rc=$?
echo "== integration"
cat build/integration.log
[ $plain_rc -eq 0 ] || failed_steps="$failed_steps integration"
echo "== integration-san"
cat build-san/integration.log
[ $san_rc -eq 0 ] || failed_steps="$failed_steps integration-san"
# The CPU-heavy, load-sensitive ones (soak, benchmark smoke, floods with
# CPU and time budgets: pytest's `serial` mark) alone.
step serial make -s check-serial

/usr/bin/python3 scripts/summary.py build/unit.log build/junit.xml build/fuzz.log \
	build-san/unit.log build-san/junit.xml
summary=$?
if [ -n "$failed_steps" ]; then
	echo "failed steps:$failed_steps"
	exit 1
fi
exit $summary
