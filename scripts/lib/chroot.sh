# shellcheck shell=bash
# A throwaway Debian 12 tree, for the checks that must never change the
# machine they run on: scripts/fresh-check.sh (the README's quick start)
# and scripts/deb-check.sh (the Debian package).  Sourced, not run.
#
# The caller sets `prog` (its name, for messages), optionally `keep` (keep
# the tree, unmounted, at exit) and `tree_cwd` (in_tree's directory,
# default /root), sources this file, then calls chroot_traps; after that:
#
#   chroot_host_tools   debootstrap and ip(8) on the host, when missing
#   chroot_pristine     the pristine tarball: a Debian 12 minbase tree with
#                       only git, make and ca-certificates, kept in
#                       $LIFELINE_FRESH_CACHE (default
#                       /var/cache/lifeline-fresh-check; built once, about
#                       40 s; delete the directory to refresh it); a
#                       caller may set `cache` and `include` (packages
#                       beyond minbase, comma-separated, maybe none) after
#                       sourcing (scripts/container-check.sh: its own
#                       cache, none)
#   chroot_workdir      $work, the run's directory under $LIFELINE_FRESH_TMP
#                       (default /var/tmp); $root=$work/root, the tree
#   chroot_unpack       a fresh copy of the pristine tree in $root
#   chroot_mount        what a booted system has: / a mount point, /proc,
#                       /sys, /dev (with /dev/pts, /dev/shm, /dev/net/tun),
#                       /run, /tmp
#   in_tree CMD         CMD (a shell command line) as root in the tree, in
#                       $tree_cwd, with the environment of a fresh login
#   in_tree_root ARG..  ARG.. in the tree, minimal environment, no shell
#   tree_pids_of PATH   the PIDs of the tree's processes running PATH
#   accepting A/P ...   every ADDRESS/PORT accepts a TCP connection
#   step / step_done / print_timings   step headers and timings
#
# On exit, failure, Ctrl-C, SIGTERM or SIGHUP every process left in the
# tree is killed, every mount under it undone, and $work deleted
# (unless $keep; a tree whose mounts or processes survive is never deleted).
# LIFELINE_FRESH_MIRROR and LIFELINE_FRESH_SECURITY override the Debian
# mirrors (default http://deb.debian.org/debian and .../debian-security;
# the tree's sources.list has bookworm, bookworm-updates and
# bookworm-security, as the installer writes it).

prog=${prog:-chroot}
cache=${LIFELINE_FRESH_CACHE:-/var/cache/lifeline-fresh-check}
tmpbase=${LIFELINE_FRESH_TMP:-/var/tmp}
mirror=${LIFELINE_FRESH_MIRROR:-http://deb.debian.org/debian}
security=${LIFELINE_FRESH_SECURITY:-http://deb.debian.org/debian-security}
suite=bookworm
include=git,make,ca-certificates

work="" # the run's directory: root/ (the tree) and logs
root=""
tarball=""

t_start=$SECONDS
t_step=$SECONDS
timings=()

say() { printf '%s\n' "$*"; }
die() {
	say "$prog: FAILED: $*" >&2
	exit 1
}
step() {
	t_step=$SECONDS
	say ""
	say "==== $prog: $*"
}
step_done() {
	local d=$((SECONDS - t_step))
	timings+=("$(printf '%-34s %4d s' "$1" "$d")")
	say "---- $1: ${d} s"
}
print_timings() {
	say ""
	say "==== $prog: timings"
	printf '  %s\n' "${timings[@]}"
	say "  total $((SECONDS - t_start)) s"
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
	local pids _
	pids=$(tree_pids)
	[ -z "$pids" ] && return 0
	say "$prog: killing processes left in the tree:" "${pids//$'\n'/ }"
	# shellcheck disable=SC2086
	kill -TERM $pids 2>/dev/null || true
	for _ in $(seq 50); do
		pids=$(tree_pids)
		[ -z "$pids" ] && return 0
		sleep 0.1
	done
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
	for _ in $(seq 50); do
		[ -z "$(tree_pids)" ] && return 0
		sleep 0.1
	done
	say "$prog: processes survive SIGKILL:" "$(tree_pids)" >&2
	return 1
}

# The PIDs of the tree's processes running program $1 (a path in the tree).
tree_pids_of() {
	local p
	for p in $(tree_pids); do
		[ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$root$1" ] && echo "$p"
	done
	return 0
}

# True when every ADDRESS/PORT argument accepts a TCP connection (run in
# the tree's network namespace).
accepting() {
	local a
	for a in "$@"; do
		(exec 3<>"/dev/tcp/$a") 2>/dev/null || return 1
	done
}

# Mount points at or below the tree, from /proc/self/mountinfo.
tree_mounts() {
	awk -v r="$root" '$5 == r || index($5, r "/") == 1 { print $5 }' \
		/proc/self/mountinfo
}

# Kills every process in the tree and undoes every mount under it; false
# when one survives.
chroot_umount() {
	local ok=1 m
	kill_tree_procs || ok=""
	# Ours and any debootstrap left, innermost (latest) first.
	for m in $(tree_mounts | tac); do
		umount "$m" 2>/dev/null || {
			sleep 1
			umount "$m" || ok=""
		}
	done
	if [ -n "$(tree_mounts)" ]; then
		say "$prog: still mounted:" "$(tree_mounts)" >&2
		ok=""
	fi
	[ -n "$ok" ]
}

chroot_cleanup() {
	local rc=$? ok=1
	trap - EXIT INT TERM HUP
	set +e
	if [ -n "$root" ]; then
		chroot_umount || ok=""
	fi
	if [ -n "$work" ] && [ -d "$work" ]; then
		if [ -z "$ok" ]; then
			say "$prog: $work NOT deleted (mounts or processes remain)" >&2
		elif [ -n "${keep:-}" ]; then
			say "$prog: tree kept in $work"
		else
			rm -rf --one-file-system "$work"
		fi
	fi
	if [ -z "$ok" ]; then
		say "$prog: FAILED: cleanup incomplete" >&2
		[ "$rc" -eq 0 ] && rc=1
	fi
	exit "$rc"
}

chroot_traps() {
	trap chroot_cleanup EXIT
	trap 'die "interrupted"' INT
	trap 'die "terminated"' TERM
	trap 'die "hung up"' HUP
}

# Runs "$1" (a shell command line) as root in the tree, in $tree_cwd, with
# the environment of a fresh login: nothing of ours leaks in.
in_tree() {
	chroot "$root" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		/bin/sh -c "cd ${tree_cwd:-/root} && $1"
}

in_tree_root() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin "$@"; }

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

chroot_host_tools() {
	local t pkg
	for t in ip debootstrap; do
		command -v "$t" >/dev/null 2>&1 && continue
		pkg=$t
		[ "$t" = ip ] && pkg=iproute2
		say "$prog: installing $pkg on the host"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends "$pkg" >/dev/null
	done
}

# Sets $tarball, building it when missing.  Holds the cache's lock (fd 9)
# until chroot_unpack has its copy: one builder and one reader at a time.
chroot_pristine() {
	local key build
	# The tarball's name carries everything it is built from.
	key=$(printf '%s %s %s %s minbase' "$suite" "$include" "$mirror" "$security" |
		md5sum | cut -c1-8)
	tarball=$cache/debian12-minbase-$key.tar.gz
	mkdir -p "$cache"
	exec 9>"$cache/.lock"
	flock 9
	if [ -s "$tarball" ]; then
		say "$prog: pristine tree $tarball (delete it to rebuild)"
		return 0
	fi
	step "debootstrap $suite minbase${include:+ + $include} (first run: no $tarball)"
	build=$(mktemp -d "$cache/build.XXXXXX")
	root=$build/root # the cleanup trap unmounts what debootstrap leaves
	work=$build
	bg_wait timeout 1200 debootstrap --variant=minbase ${include:+"--include=$include"} \
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
}

# $work: lifeline-NAME.XXXXXX under $tmpbase, NAME from $prog.
chroot_workdir() {
	mkdir -p "$tmpbase"
	work=$(mktemp -d "$tmpbase/lifeline-${prog%-check}.XXXXXX")
	root=$work/root
}

chroot_unpack() {
	[ -n "$work" ] || chroot_workdir
	mkdir "$root"
	bg_wait tar -C "$root" --numeric-owner -xzf "$tarball"
	exec 9>&- # the cache is free for another run
	cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}

chroot_mount() {
	local n name major minor
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
}
