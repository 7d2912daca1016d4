#!/usr/bin/env bash
# The README's quick start on a bare Debian 12, as a new volunteer meets it.
#
#   scripts/fresh-check.sh        (as root; CI runs it after `make check`)
#
# 1. A Debian 12 minbase tree (debootstrap, installed when missing) with
#    only git, make and ca-certificates, kept as a pristine tarball in
#    $LIFELINE_FRESH_CACHE (default /var/cache/lifeline-fresh-check; built
#    once, about 40 s; delete the directory to refresh it).
# 2. Each run unpacks a fresh copy under $LIFELINE_FRESH_TMP (default
#    /var/tmp), mounts what a booted system has (/proc, /sys, /dev with
#    /dev/pts and /dev/shm, /run, /tmp) and clones this checkout's HEAD
#    into /root/lifeline (committed work only).  The tree's life, from the
#    tarball to its cleanup, is scripts/lib/chroot.sh (shared with
#    scripts/deb-check.sh).
# 3. `make run`: its first step (`make deps`, apt needs the mirror) runs
#    in the chroot; then the whole `make run` runs in a network namespace
#    of its own (`unshare -n`, loopback up: the preset binds fixed ports)
#    until every listener of the `whatsapp` preset accepts connections,
#    and must exit 0 on SIGTERM.
# 4. `make check`, the whole of it, in the chroot (build outputs of step 3
#    removed first, so that it builds from scratch with -Werror).
# 5. Every package installed in the tree must have been asked for by
#    scripts/deps.sh: one installed any other way (the tests fetch a
#    missing tool themselves) fails the run.
#
# Every process left in the tree is killed and every mount undone on exit,
# failure, Ctrl-C or SIGTERM; the tree is then deleted
# (LIFELINE_FRESH_KEEP=1 keeps it, unmounted, for a look).  The mirrors
# (LIFELINE_FRESH_MIRROR, LIFELINE_FRESH_SECURITY): scripts/lib/chroot.sh.
set -euo pipefail

prog=fresh-check
keep=${LIFELINE_FRESH_KEEP:-}
tree_cwd=/root/lifeline
check_timeout=${LIFELINE_FRESH_CHECK_TIMEOUT:-1500} # seconds, make check
run_timeout=${LIFELINE_FRESH_RUN_TIMEOUT:-600}      # seconds, make run up
# The whatsapp preset's listeners (README), then its stats listener.
ports="80 443 5222 587 7777 8080 8443 8222 8587"
stats_port=8199

self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
# shellcheck source=scripts/lib/chroot.sh
. "$repo/scripts/lib/chroot.sh"
chroot_traps

# ---------------------------------------------------------------------------
# The netns half of `make run`: this script again, under `unshare -n`.
if [ "${1:-}" = "--in-netns" ]; then
	root=$2
	log=$3
	trap - EXIT INT TERM HUP
	ip link set lo up
	in_tree 'exec make run ARGS="--ports-file /tmp/ports"' >"$log" 2>&1 &
	mpid=$!
	up=""
	for ((i = 0; i < run_timeout * 5; i++)); do
		if ! kill -0 "$mpid" 2>/dev/null; then
			wait "$mpid" && rc=0 || rc=$?
			tail -n 30 "$log"
			die "make run exited ($rc) before its listeners were up"
		fi
		# The ports file is written once every listener is bound.
		# shellcheck disable=SC2046
		if [ -s "$root/tmp/ports" ] && accepting 127.0.0.1/$stats_port \
			$(for p in $ports; do echo "127.0.0.1/$p ::1/$p"; done); then
			up=1
			break
		fi
		sleep 0.2
	done
	if [ -z "$up" ]; then
		tail -n 30 "$log"
		kill -KILL "$mpid" 2>/dev/null
		die "make run: listeners not up after ${run_timeout} s"
	fi
	say "listeners up: $(wc -l <"$root/tmp/ports") sockets in the ports file;"
	say "ports $ports (127.0.0.1 and ::1) and $stats_port accept connections"
	sed 's/^/    /' "$root/tmp/ports"
	lpid=$(tree_pids_of "$tree_cwd/build/lifeline")
	[ -n "$lpid" ] || die "make run: no lifeline process found in the tree"
	kill -TERM "$lpid"
	rc=0
	for ((i = 0; i < 150; i++)); do
		kill -0 "$mpid" 2>/dev/null || break
		sleep 0.2
	done
	if kill -0 "$mpid" 2>/dev/null; then
		kill -KILL "$lpid" 2>/dev/null
		die "make run: lifeline still running 30 s after SIGTERM"
	fi
	wait "$mpid" || rc=$?
	tail -n 5 "$log" | sed 's/^/    /'
	[ "$rc" -eq 0 ] || die "make run exited $rc after SIGTERM (want 0)"
	exit 0
fi

# ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, mounts)"
chroot_host_tools
head=$(git -C "$repo" rev-parse HEAD) || die "$repo is not a git checkout"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
	say "fresh-check: note: uncommitted changes are not checked (HEAD only)"
fi

chroot_pristine

step "unpack a fresh tree"
chroot_unpack
step_done "unpack"

step "mount /proc /sys /dev /dev/pts /dev/shm /run /tmp"
chroot_mount
step_done "mounts"

step "clone $head into /root/lifeline"
git -C "$repo" bundle create "$root/root/lifeline.bundle" HEAD 2>/dev/null
in_tree_root git -c advice.detachedHead=false clone -q /root/lifeline.bundle /root/lifeline
rm -f "$root/root/lifeline.bundle"
got=$(in_tree_root git -C /root/lifeline rev-parse HEAD)
[ "$got" = "$head" ] || die "clone is at $got, want $head"
manual_before=$(in_tree_root apt-mark showmanual | sort)
step_done "clone"

step "make run (1/2): its install step, make deps, with the mirror"
bg_wait in_tree 'make deps' || die "make deps (the first step of make run) failed"
step_done "make run: make deps"

step "make run (2/2): whole, in its own network namespace, until the listeners are up"
bg_wait unshare -n -- bash "$self" --in-netns "$root" "$work/make-run.log" ||
	die "make run in its network namespace (the reason is above)"
step_done "make run: build, listen, SIGTERM"

step "make check, in the chroot (build outputs of make run removed first)"
in_tree 'git clean -q -d -f -x' || die "git clean failed"
rc=0
# The soak runs 60 s here (its memory check needs 120 s and more, and
# runs in the host's make check): this run proves the install steps.
bg_wait in_tree "SOAK_DURATION=60 timeout -k 30 $check_timeout make check" || rc=$?
[ "$rc" -eq 0 ] || die "make check in a fresh Debian 12 exited $rc (timeout: 124)"
step_done "make check in the chroot"

step "every package installed came from scripts/deps.sh"
declared=$(in_tree 'scripts/deps.sh list' | tr ' ' '\n' | sort -u)
extra=$(in_tree_root apt-mark showmanual | sort |
	comm -23 - <(printf '%s\n' "$manual_before") | comm -23 - <(printf '%s\n' "$declared"))
if [ -n "$extra" ]; then
	die "installed during the run but not by scripts/deps.sh: ${extra//$'\n'/ }"
fi
say "no package installed outside scripts/deps.sh"
step_done "install audit"

kill_tree_procs || die "processes survive in the tree"
print_timings
say "fresh-check: OK (make run and make check pass on a fresh Debian 12 at $head)"
