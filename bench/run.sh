#!/usr/bin/env bash
# make bench: lifeline against HAProxy (official and tuned settings) and
# against no relay at all, on loopback.  See bench/bench.py for the cases.
#
#   bench/run.sh            the full benchmark (3 repetitions, ~40 min:
#                           cases 1-7 ~8 min, population ~25, storm ~5)
#   bench/run.sh --smoke    every case once, tiny (~1 min)
#   bench/run.sh --cases 3,4   only some cases (1,2,6 share one run; 7 is TLS;
#                              population (8) and storm (9) by name or number)
#   bench/run.sh --cases population --pop-time 60,60 --pop-paths \
#                direct,lifeline,haproxy-official   a longer, narrower run
#   bench/run.sh --reps 1 ...  one repetition instead of 3
#   bench/run.sh --json FILE   also write every sample
#   bench/run.sh --base BIN    also run a second lifeline binary (say, the
#                              previous commit's) beside it: column and ratio
#
# LIFELINE_BIN picks the binary (default build/lifeline, rebuilt with
# `make` first when LIFELINE_BIN is unset).  BENCH_PERF_DIR=DIR records
# each relay with `perf record -g` (linux-perf) through every storm, into
# DIR/storm-PATH-REP.data.  The markdown report goes to
# stdout, progress to stderr.  Every process this starts runs in one
# process group that is killed on exit, error, Ctrl-C or SIGTERM.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

for a in "$@"; do
	case "$a" in
	-h | --help)
		sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	esac
done

# Haproxy, nginx, iperf3, wrk: installed when missing, kept from starting.
scripts/deps.sh bench

if [ -n "${LIFELINE_BIN:-}" ]; then
	bin=$LIFELINE_BIN
else
	bin=build/lifeline
	if ! make -s all >&2; then
		[ -x "$bin" ] || { echo "bench: build failed and no $bin" >&2; exit 1; }
		echo "bench: build failed; using the existing $bin" >&2
	fi
fi
[ -x "$bin" ] || { echo "bench: $bin is not executable" >&2; exit 1; }

# Descriptors: 5,000 idle relayed connections need 10,000 in the relay and
# as many in the client.  Ask for 65536; settle for the hard limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lifeline-bench.XXXXXX")
chmod 755 "$tmp" # nginx workers (user nobody) read the files under it
pgid=""
cleanup() {
	rc=$?
	trap - EXIT INT TERM HUP
	if [ -n "$pgid" ] && kill -0 -- "-$pgid" 2>/dev/null; then
		kill -TERM -- "-$pgid" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 -- "-$pgid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL -- "-$pgid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

cc -O2 -Wall -Wextra -o "$tmp/loadgen" bench/loadgen.c -lssl -lcrypto -lm
cc -O2 -Wall -Wextra -pthread -o "$tmp/tlsclient" bench/tlsclient.c -lssl -lcrypto
cc -O2 -Wall -Wextra -pthread -o "$tmp/minirelay" bench/minirelay.c
cc -O2 -Wall -Wextra -o "$tmp/epollrelay" bench/epollrelay.c

# The driver and everything it starts get their own process group (job
# control), so the trap can end them all, whatever state they are in.
set -m
/usr/bin/python3 bench/bench.py --lifeline "$bin" --loadgen "$tmp/loadgen" \
	--tlsclient "$tmp/tlsclient" --minirelay "$tmp/minirelay" \
	--epollrelay "$tmp/epollrelay" --tmp "$tmp" "$@" &
pgid=$!
set +m
set +e
wait "$pgid"
rc=$?
set -e
exit "$rc"
