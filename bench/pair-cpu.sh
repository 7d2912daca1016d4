#!/bin/sh
# Relay CPU per GiB of two lifeline binaries, in interleaved pairs, each
# relay pinned to its own CPU (issue 11: does a change cost speed?).
#
#   bench/pair-cpu.sh NEW_BIN BASE_BIN [PAIRS]     (default 6 pairs)
#
# Either binary may be a reference relay, named as its source: the minimal
# blocking splice relay (bench/minirelay.c, built by hand: cc -O2 -pthread
# -o minirelay bench/minirelay.c) or the minimal event-driven one
# (bench/epollrelay.c: cc -O2 -o epollrelay bench/epollrelay.c).  Either
# is run with the iperf3 server's port and prints its own.
#
# For 1 stream client to server, 1 stream server to client (-R) and 8
# streams: PAIRS times each binary (the order alternating), `iperf3 -t 4`
# through a fresh relay (two workers, or $WORKERS; one plain listener) on
# 127.0.0.1.
# The relay runs on CPU 1 (`taskset`), iperf3's client and server on CPU
# 0, so that the relay's CPU is its own work and not the share of the
# others' interrupt and softirq work that happens to land in its calls.
# CPU is read from the relay's process CPU clock (the scheduler's exact
# runtime of all its threads); beside it, the whole machine's busy time
# from /proc/stat (10 ms ticks: the relay's work done by kernel threads
# shows there, with iperf3's).  Prints each run, then per case the
# medians of both and NEW / BASE.  Needs iperf3 and python3; 2+ CPUs; about 2.5 minutes
# at 6 pairs.
set -eu
new=$1
base=$2
pairs=${3:-6}
# lifeline's workers (both on the relay's one CPU); the reference relays
# have one thread (epollrelay) or one per direction (minirelay).
workers=${WORKERS:-2}
[ -x "$new" ] && [ -x "$base" ] || {
	echo "usage: $0 NEW_BIN BASE_BIN [PAIRS]" >&2
	exit 2
}
tmp=$(mktemp -d)
srv=""
relay=""
cleanup() {
	[ -n "$relay" ] && kill "$relay" 2>/dev/null
	[ -n "$srv" ] && kill "$srv" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# An iperf3 server on a free port (bound by python, handed over by number).
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 iperf3 -s -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
srv=$!
cat >"$tmp/relay.conf" <<EOF
[global]
workers = $workers
log-level = warn
[upstream up]
server = 127.0.0.1:$port
[listen bench]
bind = 127.0.0.1:0
upstream = up
EOF
sleep 0.5

# one BIN ARGS...: prints "CPU_SECONDS GIB" of one iperf3 run through BIN.
one() {
	bin=$1
	shift
	rm -f "$tmp/ports"
	case "$(basename "$bin")" in minirelay | epollrelay) ref=1 ;; *) ref="" ;; esac
	if [ -n "$ref" ]; then
		taskset -c 1 "$bin" "$port" >"$tmp/ports" 2>"$tmp/relay.log" &
	else
		taskset -c 1 "$bin" -c "$tmp/relay.conf" \
			--ports-file "$tmp/ports" >"$tmp/relay.log" 2>&1 &
	fi
	relay=$!
	for _ in $(seq 50); do
		[ -s "$tmp/ports" ] && break
		sleep 0.1
	done
	rport=$(sed -n 's/^\([0-9]*\)$/\1/p; s/.*:\([0-9]*\)$/\1/p' "$tmp/ports" | head -n 1)
	[ -n "$rport" ] || {
		cat "$tmp/relay.log" >&2
		exit 1
	}
	clk="import time,sys; print(time.clock_gettime(((~int(sys.argv[1]))<<3)|2))"
	c0=$(/usr/bin/python3 -c "$clk" "$relay")
	s0=$(busy)
	taskset -c 0 iperf3 -c 127.0.0.1 -p "$rport" -t 4 "$@" -J >"$tmp/out.json"
	sleep 0.2
	c1=$(/usr/bin/python3 -c "$clk" "$relay")
	s1=$(busy)
	kill "$relay"
	wait "$relay" 2>/dev/null || true
	relay=""
	/usr/bin/python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print(float(sys.argv[3]) - float(sys.argv[2]), j["end"]["sum_received"]["bytes"] / 2**30,
      (int(sys.argv[5]) - int(sys.argv[4])) / 100)
' "$tmp/out.json" "$c0" "$c1" "$s0" "$s1"
}

# Busy ticks of the whole machine (every CPU, /proc/stat: all but idle and
# iowait; USER_HZ is 100 on Linux): the relay's work that kernel threads
# (ksoftirqd) did, which the relay's own clock does not see.
busy() {
	awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

for case in "1 stream up:-P 1" "1 stream down:-P 1 -R" "8 streams:-P 8"; do
	name=${case%%:*}
	args=${case#*:}
	: >"$tmp/new"
	: >"$tmp/base"
	i=0
	while [ "$i" -lt "$pairs" ]; do
		for who in $(if [ $((i % 2)) -eq 0 ]; then echo new base; else echo base new; fi); do
			eval "bin=\$$who"
			# shellcheck disable=SC2086
			set -- $(one "$bin" $args)
			echo "$name  $who  $(awk -v c="$1" -v g="$2" -v s="$3" 'BEGIN { printf "%.3f s/GiB, whole system %.3f s/GiB (%.1f GiB)", c / g, s / g, g }')"
			awk -v c="$1" -v g="$2" -v s="$3" 'BEGIN { printf "%.4f %.4f\n", c / g, s / g }' >>"$tmp/$who"
		done
		i=$((i + 1))
	done
	/usr/bin/python3 -c '
import statistics, sys
n = [[float(v) for v in x.split()] for x in open(sys.argv[2])]
b = [[float(v) for v in x.split()] for x in open(sys.argv[3])]
for i, what in enumerate(("relay CPU", "whole system")):
    mn = statistics.median(x[i] for x in n)
    mb = statistics.median(x[i] for x in b)
    print(f"== {sys.argv[1]}, {what}: new {mn:.3f} s/GiB, base {mb:.3f} s/GiB: new / base {mn / mb:.2f}x")
' "$name" "$tmp/new" "$tmp/base"
done
