#!/usr/bin/env bash
# The README's quick start on a bare Debian 12, as a new volunteer meets it.
#
#   scripts/fresh-check.sh        (as root; CI runs it after `make check`)
#
# 1. A Debian 12 minbase tree (debootstrap, installed when missing) with
#    only git, make and ca-certificates, kept as a pristine tarball in
#    $LIFELINE_FRESH_CACHE (default /var/cache/lifeline-fresh-check; built
#    once, about 3 minutes; delete the directory to refresh it).
# 2. Each run unpacks a fresh copy under $LIFELINE_FRESH_TMP (default
#    /var/tmp), mounts what a booted system has (/proc, /sys, /dev with
#    /dev/pts and /dev/shm, /run, /tmp) and clones this checkout's HEAD
#    into /root/lifeline (committed work only).
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
# (LIFELINE_FRESH_KEEP=1 keeps it, unmounted, for a look).
# LIFELINE_FRESH_MIRROR and LIFELINE_FRESH_SECURITY override the Debian
# mirrors (default http://deb.debian.org/debian and .../debian-security;
# the tree's sources.list has bookworm, bookworm-updates and
# bookworm-security, as the installer writes it).
set -euo pipefail

cache=${LIFELINE_FRESH_CACHE:-/var/cache/lifeline-fresh-check}
tmpbase=${LIFELINE_FRESH_TMP:-/var/tmp}
mirror=${LIFELINE_FRESH_MIRROR:-http://deb.debian.org/debian}
security=${LIFELINE_FRESH_SECURITY:-http://deb.debian.org/debian-security}
suite=bookworm
include=git,make,ca-certificates
check_timeout=${LIFELINE_FRESH_CHECK_TIMEOUT:-1500} # seconds, make check
run_timeout=${LIFELINE_FRESH_RUN_TIMEOUT:-600}      # seconds, make run up
# The whatsapp preset's listeners (README), then its stats listener.
ports="80 443 5222 587 7777 8080 8443 8222 8587"
stats_port=8199

self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
work="" # the run's directory: root/ (the tree) and logs
root=""

t_start=$SECONDS
t_step=$SECONDS
timings=()

say() { printf '%s\n' "$*"; }
die() {
	say "fresh-check: FAILED: $*" >&2
	exit 1
}
step() {
	t_step=$SECONDS
	say ""
	say "==== fresh-check: $*"
}
step_done() {
	local d=$((SECONDS - t_step))
	timings+=("$(printf '%-34s %4d s' "$1" "$d")")
	say "---- $1: ${d} s"
}

# PIDs of the processes whose root directory is inside the tree.
tree_pids() {
	local p r
	for p in /proc/[0-9]*; do
		r=$(readlink "$p/root" 2>/dev/null) || continue
		case "$r" in
		"$root" | "$root"/*) echo "${p#/proc/}" ;;
		esac
	done
}

kill_tree_procs() {
	local pids i
	pids=$(tree_pids)
	[ -z "$pids" ] && return 0
	say "fresh-check: killing processes left in the tree:" "${pids//$'\n'/ }"
	# shellcheck disable=SC2086
	kill -TERM $pids 2>/dev/null || true
	for i in $(seq 50); do
		pids=$(tree_pids)
		[ -z "$pids" ] && return 0
		sleep 0.1
	done
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
	for i in $(seq 50); do
		[ -z "$(tree_pids)" ] && return 0
		sleep 0.1
	done
	say "fresh-check: processes survive SIGKILL:" "$(tree_pids)" >&2
	return 1
}

# Mount points at or below the tree, from /proc/self/mountinfo.
tree_mounts() {
	awk -v r="$root" '$5 == r || index($5, r "/") == 1 { print $5 }' \
		/proc/self/mountinfo
}

cleanup() {
	local rc=$? ok=1 m
	trap - EXIT INT TERM HUP
	set +e
	if [ -n "$root" ]; then
		kill_tree_procs || ok=""
		# Ours and any debootstrap left, innermost (latest) first.
		for m in $(tree_mounts | tac); do
			umount "$m" 2>/dev/null || {
				sleep 1
				umount "$m" || ok=""
			}
		done
		if [ -n "$(tree_mounts)" ]; then
			say "fresh-check: still mounted:" "$(tree_mounts)" >&2
			ok=""
		fi
	fi
	if [ -n "$work" ] && [ -d "$work" ]; then
		if [ -z "$ok" ]; then
			say "fresh-check: $work NOT deleted (mounts or processes remain)" >&2
		elif [ -n "${LIFELINE_FRESH_KEEP:-}" ]; then
			say "fresh-check: tree kept in $work"
		else
			rm -rf --one-file-system "$work"
		fi
	fi
	if [ -z "$ok" ]; then
		say "fresh-check: FAILED: cleanup incomplete" >&2
		[ "$rc" -eq 0 ] && rc=1
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'die "interrupted"' INT
trap 'die "terminated"' TERM
trap 'die "hung up"' HUP

# Runs "$@" (a shell command line) as root in the tree, in /root/lifeline,
# with the environment of a fresh login: nothing of ours leaks in.
in_tree() {
	chroot "$root" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		/bin/sh -c "cd /root/lifeline && $1"
}

# Runs "$@" in the background and waits: a signal to this script runs its
# trap at once (bash defers traps while a foreground command runs).
bg_wait() {
	"$@" &
	wait "$!"
}

do_mount() { # do_mount DIR mount-args...: mount at $root/DIR
	local dir=$root/$1
	shift
	mkdir -p "$dir"
	mount "$@" "$dir"
}

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
		if [ -s "$root/tmp/ports" ]; then
			up=1
			for p in $ports; do
				(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || up=""
				(exec 3<>"/dev/tcp/::1/$p") 2>/dev/null || up=""
			done
			(exec 3<>"/dev/tcp/127.0.0.1/$stats_port") 2>/dev/null || up=""
			[ -n "$up" ] && break
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
	lpid=""
	for p in $(tree_pids); do
		case "$(readlink "/proc/$p/exe" 2>/dev/null)" in
		*/build/lifeline) lpid=$p ;;
		esac
	done
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
for t in ip debootstrap; do
	command -v "$t" >/dev/null 2>&1 && continue
	pkg=$t
	[ "$t" = ip ] && pkg=iproute2
	say "fresh-check: installing $pkg on the host"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "$pkg" >/dev/null
done
head=$(git -C "$repo" rev-parse HEAD) || die "$repo is not a git checkout"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
	say "fresh-check: note: uncommitted changes are not checked (HEAD only)"
fi

# The tarball's name carries everything it is built from.
key=$(printf '%s %s %s %s minbase' "$suite" "$include" "$mirror" "$security" |
	md5sum | cut -c1-8)
tarball=$cache/debian12-minbase-$key.tar.gz
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one builder (and one user) of the cache at a time
if [ ! -s "$tarball" ]; then
	step "debootstrap $suite minbase + $include (first run: no $tarball)"
	build=$(mktemp -d "$cache/build.XXXXXX")
	root=$build/root # the cleanup trap unmounts what debootstrap leaves
	work=$build
	bg_wait timeout 1200 debootstrap --variant=minbase --include="$include" \
		"$suite" "$root" "$mirror" >"$build/debootstrap.log" 2>&1 || {
		tail -n 20 "$build/debootstrap.log" >&2
		[ -f "$root/debootstrap/debootstrap.log" ] &&
			tail -n 20 "$root/debootstrap/debootstrap.log" >&2
		die "debootstrap failed"
	}
	kill_tree_procs || die "debootstrap left processes behind"
	[ -z "$(tree_mounts)" ] || die "debootstrap left mounts: $(tree_mounts)"
	# As the installer leaves it: the suite, its updates and security.
	cat >"$root/etc/apt/sources.list" <<-EOF
		deb $mirror $suite main
		deb $mirror $suite-updates main
		deb $security $suite-security main
	EOF
	# A booted system's /etc/hosts, hostname; no package lists yet.
	printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
		>"$root/etc/hosts"
	echo fresh >"$root/etc/hostname"
	chroot "$root" apt-get clean
	rm -rf "$root"/var/lib/apt/lists/* "$root/etc/resolv.conf"
	tar -C "$root" --numeric-owner -czf "$tarball.tmp" .
	mv "$tarball.tmp" "$tarball"
	rm -rf --one-file-system "$build"
	root=""
	work=""
	say "tarball: $tarball ($(du -h "$tarball" | cut -f1))"
	step_done "debootstrap + tarball (first run)"
else
	say "fresh-check: pristine tree $tarball (delete it to rebuild)"
fi

step "unpack a fresh tree"
mkdir -p "$tmpbase"
work=$(mktemp -d "$tmpbase/lifeline-fresh.XXXXXX")
root=$work/root
mkdir "$root"
tar -C "$root" --numeric-owner -xzf "$tarball"
exec 9>&- # the cache is free for another run
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
step_done "unpack"

step "mount /proc /sys /dev /dev/pts /dev/shm /run /tmp"
# The tree's / must be a mount point, as on a booted system: `ip netns`
# (the hostile-network tests) remounts / as a slave.
mount --bind "$root" "$root"
do_mount proc -t proc -o nosuid,nodev,noexec proc
do_mount sys -t sysfs -o nosuid,nodev,noexec,ro sysfs
do_mount dev -t tmpfs -o nosuid,mode=0755,size=64k dev
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
	IFS=: read -r name major minor <<<"$n"
	mknod -m 0666 "$root/dev/$name" c "$major" "$minor"
done
# The hostile-network tests' delay line needs TUN, as on any booted system.
mkdir -m 0755 "$root/dev/net"
mknod -m 0666 "$root/dev/net/tun" c 10 200
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
ln -s pts/ptmx "$root/dev/ptmx"
do_mount dev/pts -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts
do_mount dev/shm -t tmpfs -o nosuid,nodev,mode=1777 shm
do_mount run -t tmpfs -o nosuid,nodev,mode=0755 run
do_mount tmp -t tmpfs -o nosuid,nodev,mode=1777 tmp
step_done "mounts"

step "clone $head into /root/lifeline"
git -C "$repo" bundle create "$root/root/lifeline.bundle" HEAD 2>/dev/null
in_tree_root() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin "$@"; }
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
bg_wait in_tree "timeout -k 30 $check_timeout make check" || rc=$?
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
say ""
say "==== fresh-check: timings"
printf '  %s\n' "${timings[@]}"
say "  total $((SECONDS - t_start)) s"
say "fresh-check: OK (make run and make check pass on a fresh Debian 12 at $head)"
