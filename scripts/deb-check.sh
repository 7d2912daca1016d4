#!/usr/bin/env bash
# The Debian package, built and tried as an operator would: on a fresh
# Debian 12, never on the machine running this.
#
#   scripts/deb-check.sh          (as root; CI runs it after fresh-check)
#
# 1. scripts/deps.sh deb on the host (debhelper, dpkg-dev, lintian, ...).
# 2. A clean clone of HEAD (committed work only) in a temporary directory,
#    where `dpkg-buildpackage -us -uc` builds the source package and the
#    .deb (the very .deb `dpkg-buildpackage -us -uc -b` builds).  Its
#    version (debian/changelog) must be the Makefile's VERSION, which the
#    binary reports (LIFELINE_VERSION).
# 3. lintian on all of it: an E: or W: fails the run (a warning we accept
#    is overridden in debian/, with its reason).
# 4. systemd-analyze verify on the unit as the .deb ships it, with the
#    package's binary and man pages laid over /usr/sbin and /usr/share/man
#    in a private mount namespace (ExecStart= and Documentation= checked);
#    any message fails the run.
# 5. In a fresh copy of scripts/fresh-check.sh's pristine Debian 12 minbase
#    tree (scripts/lib/chroot.sh: its mounts, its cleanup): the package's
#    dependencies from the mirror, a list of the tree's files, then
#    `apt-get install ./lifeline_*.deb` (nothing else may come with it).
#    The installed `lifeline --check` accepts /etc/lifeline/lifeline.conf;
#    the system user and group exist; the unit is enabled.  In a network
#    namespace of its own, the installed binary, switching to that user,
#    relays 4 MiB to a local echo server (perl: minbase has it) and back,
#    byte for byte, with no capability, no_new_privs and its seccomp filter
#    on every thread; the shipped configuration binds 443 and 587.
# 6. `dpkg --purge lifeline`: the binary, /etc/lifeline, the unit and its
#    enablement, the man pages, the user and the group are gone; the tree
#    has the same files as before the install (dpkg's and apt's databases,
#    caches and logs aside, and the shadow tools' backups /etc/passwd- and
#    the like) and the same /etc/passwd, group, shadow and gshadow.
# 7. The package again, with systemd, in the same tree, unmounted and booted
#    with systemd-nspawn: scripts/unit-check.sh checks the unit for real
#    (start at boot, Type=notify, sandbox under the unit, reload, restart,
#    stop).  LIFELINE_DEB_BOOT=0 skips it.
#
# Every process left in the tree is killed, every mount undone and the
# temporary directory deleted on exit, failure, Ctrl-C or SIGTERM
# (LIFELINE_DEB_KEEP=1 keeps it, unmounted).  Each step prints its time.
# SC2016: $ in single quotes is for dpkg-query, eval and the tree's shell.
# SC2015: A && B || die: die when either fails.
# shellcheck disable=SC2016,SC2015
set -euo pipefail

prog="deb-check"
keep=${LIFELINE_DEB_KEEP:-}
relay_port=7000 # the test relay's listener, in its own network namespace
echo_port=7001  # its upstream, the echo server
payload_size=$((4 << 20))

self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
# shellcheck source=scripts/lib/chroot.sh
. "$repo/scripts/lib/chroot.sh"
chroot_traps

# Waits up to $2 seconds for the command line $1 to succeed.
wait_for() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		eval "$1" && return 0
		sleep 0.1
	done
	return 1
}

# The status line KEY of every thread of process $1, deduplicated.
thread_status() {
	cat "/proc/$1"/task/*/status 2>/dev/null | awk -v k="$2:" '$1 == k' | sort -u
}

# ---------------------------------------------------------------------------
# Step 5's run of the installed binary: this script again, under unshare -n.
if [ "${1:-}" = "--in-netns" ]; then
	root=$2
	work=$3
	uid=$4
	trap - EXIT INT TERM HUP # the caller cleans the tree up
	ip link set lo up

	cat >"$root/tmp/echo.pl" <<-EOF
		use IO::Socket::INET;
		my \$l = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$echo_port",
		    Listen => 16, ReuseAddr => 1) or die "echo: listen: \$!";
		open(my \$f, ">", "/tmp/echo.ready") or die; close(\$f);
		while (my \$c = \$l->accept) {
		    my \$buf;
		    while (my \$n = sysread(\$c, \$buf, 65536)) {
		        for (my \$o = 0; \$o < \$n;) {
		            my \$w = syswrite(\$c, \$buf, \$n - \$o, \$o);
		            defined \$w or die "echo: write: \$!";
		            \$o += \$w;
		        }
		    }
		    close(\$c);
		}
	EOF
	cat >"$root/tmp/relay.conf" <<-EOF
		# deb-check: the installed binary as the package's system user.
		[global]
		workers = 2
		user = lifeline
		drain-timeout = 2s
		[upstream echo]
		server = 127.0.0.1:$echo_port
		[listen relay]
		bind = 127.0.0.1:$relay_port
		upstream = echo
	EOF
	cat >"$root/tmp/client.sh" <<-EOF
		exec 3<>/dev/tcp/127.0.0.1/$relay_port
		cat /tmp/payload >&3 &
		head -c $payload_size <&3 >/tmp/echoed
		wait
	EOF

	in_tree 'exec perl /tmp/echo.pl' >"$work/echo.log" 2>&1 &
	wait_for '[ -e "$root/tmp/echo.ready" ]' 10 || {
		cat "$work/echo.log"
		die "the echo server did not start"
	}
	in_tree 'exec lifeline -c /tmp/relay.conf --ports-file /run/relay.ports' \
		>"$work/relay.log" 2>&1 &
	job=$! # its exit status is lifeline's
	wait_for '[ -s "$root/run/relay.ports" ] || ! kill -0 $job 2>/dev/null' 15
	[ -s "$root/run/relay.ports" ] || {
		cat "$work/relay.log"
		die "the installed lifeline did not start (its log is above)"
	}
	lpid=$(tree_pids_of /usr/sbin/lifeline)
	[ -n "$lpid" ] || die "no /usr/sbin/lifeline process in the tree"
	# The filter comes after the first name resolution.
	wait_for '[ "$(thread_status $lpid Seccomp)" = "Seccomp:	2" ]' 10 ||
		die "not every thread has a seccomp filter: $(thread_status "$lpid" Seccomp)"
	[ "$(thread_status "$lpid" Uid)" = "Uid:	$uid	$uid	$uid	$uid" ] ||
		die "not running as user lifeline ($uid): $(thread_status "$lpid" Uid)"
	[ "$(thread_status "$lpid" NoNewPrivs)" = "NoNewPrivs:	1" ] ||
		die "no_new_privs not set on every thread"
	for c in CapInh CapPrm CapEff CapBnd CapAmb; do
		[ "$(thread_status "$lpid" $c)" = "$c:	0000000000000000" ] ||
			die "a thread has capabilities: $(thread_status "$lpid" $c)"
	done
	tasks=("/proc/$lpid/task"/*)
	say "running as lifeline (uid $uid), ${#tasks[@]} threads:" \
		"no capability, no_new_privs, seccomp filter"

	in_tree "head -c $payload_size /dev/urandom >/tmp/payload"
	in_tree 'timeout 30 bash /tmp/client.sh' || die "the transfer through the relay failed"
	cmp "$root/tmp/payload" "$root/tmp/echoed" ||
		die "the bytes relayed back differ from the bytes sent"
	say "relayed $payload_size bytes to the echo server and back, byte for byte"
	kill -TERM "$lpid"
	rc=0
	wait "$job" || rc=$?
	[ "$rc" -eq 0 ] || {
		cat "$work/relay.log"
		die "the relay exited $rc on SIGTERM (want 0)"
	}

	# The shipped configuration, as the unit starts it (as root here: it
	# keeps uid 0 without 'user', with no capability left).
	in_tree 'exec lifeline -c /etc/lifeline/lifeline.conf --ports-file /run/shipped.ports' \
		>"$work/shipped.log" 2>&1 &
	job=$!
	up=""
	for ((i = 0; i < 150; i++)); do
		kill -0 "$job" 2>/dev/null || break
		if [ -s "$root/run/shipped.ports" ] &&
			accepting 127.0.0.1/443 ::1/443 127.0.0.1/587 ::1/587 127.0.0.1/8199; then
			up=1
			break
		fi
		sleep 0.1
	done
	[ -n "$up" ] || {
		cat "$work/shipped.log"
		die "the shipped configuration did not bring up 443, 587 and 8199"
	}
	say "/etc/lifeline/lifeline.conf: 443 and 587 (IPv4 and IPv6) and 127.0.0.1:8199 accept"
	lpid=$(tree_pids_of /usr/sbin/lifeline)
	[ -n "$lpid" ] || die "no /usr/sbin/lifeline process in the tree"
	kill -TERM "$lpid"
	rc=0
	wait "$job" || rc=$?
	[ "$rc" -eq 0 ] || die "lifeline with the shipped configuration exited $rc on SIGTERM"
	pids=$(tree_pids_of /usr/bin/perl)
	# shellcheck disable=SC2086
	[ -z "$pids" ] || kill $pids
	wait
	exit 0
fi

# ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (dpkg, debootstrap, chroot, mounts)"
head=$(git -C "$repo" rev-parse HEAD) || die "$repo is not a git checkout"
status_before=$(git -C "$repo" status --porcelain)
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] ||
	say "deb-check: note: uncommitted changes are not checked (HEAD only)"

step "host packages: scripts/deps.sh deb"
"$repo/scripts/deps.sh" deb
step_done "deps.sh deb"

step "dpkg-buildpackage -us -uc in a clean clone of $head"
chroot_workdir
src=$work/src/lifeline
mkdir -p "$work/src"
git -C "$repo" bundle create "$work/src/head.bundle" HEAD 2>/dev/null
git -c advice.detachedHead=false clone -q "$work/src/head.bundle" "$src"
[ "$(git -C "$src" rev-parse HEAD)" = "$head" ] || die "the clone is not at $head"
version=$(sed -n 's/^VERSION := *//p' "$src/Makefile")
changelog=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
[ -n "$version" ] && [ "$changelog" = "$version" ] ||
	die "debian/changelog is at '$changelog', the Makefile's VERSION at '$version'"
bg_wait env -C "$src" dpkg-buildpackage -us -uc >"$work/build.log" 2>&1 || {
	tail -n 30 "$work/build.log"
	die "dpkg-buildpackage failed (the end of its log is above)"
}
debs=("$work"/src/lifeline_*.deb)
[ "${#debs[@]}" -eq 1 ] && [ -f "${debs[0]}" ] || die "no single lifeline_*.deb: ${debs[*]}"
deb=${debs[0]}
contents=$(dpkg-deb -c "$deb" | awk '{ print $6 }')
for f in ./usr/sbin/lifeline ./lib/systemd/system/lifeline.service \
	./usr/share/man/man8/lifeline.8.gz ./usr/share/man/man5/lifeline.conf.5.gz \
	./etc/lifeline/lifeline.conf; do
	grep -qxF "$f" <<<"$contents" || die "$(basename "$deb") lacks $f"
done
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)" = /etc/lifeline/lifeline.conf ] ||
	die "/etc/lifeline/lifeline.conf is not the package's one conffile"
say "$(basename "$deb"): $(du -k "$deb" | cut -f1) KiB; Depends: $(dpkg-deb -f "$deb" Depends)"
step_done "dpkg-buildpackage"

step "lintian (E: or W: fails)"
rc=0
bg_wait lintian --allow-root -I --pedantic --show-overrides "$work"/src/lifeline_*.changes \
	>"$work/lintian.log" 2>&1 || rc=$?
sed 's/^/    /' "$work/lintian.log"
say "lintian: $(grep -c '^E:' "$work/lintian.log") errors, $(grep -c '^W:' "$work/lintian.log") warnings," \
	"$(grep -c '^[IP]:' "$work/lintian.log") info/pedantic," \
	"$(grep -c '^O:' "$work/lintian.log") overridden (exit $rc)"
! grep -q '^[EW]:' "$work/lintian.log" || die "lintian reports errors or warnings"
[ "$rc" -eq 0 ] || die "lintian exited $rc"
step_done "lintian"

step "systemd-analyze verify, the unit as installed"
pkg=$work/pkg
dpkg-deb -x "$deb" "$pkg"
man_opt=""
command -v man >/dev/null 2>&1 || {
	man_opt=--man=no
	say "deb-check: no man(1) on this machine: Documentation= not checked"
}
out=$(unshare -m --propagation private sh -c '
	mount -t overlay overlay -o "lowerdir=$1/usr/sbin:/usr/sbin" /usr/sbin &&
	mount -t overlay overlay -o "lowerdir=$1/usr/share/man:/usr/share/man" /usr/share/man &&
	systemd-analyze verify $2 "$1/lib/systemd/system/lifeline.service"' _ "$pkg" "$man_opt" 2>&1) ||
	die "systemd-analyze verify: ${out:-failed}"
[ -z "$out" ] || die "systemd-analyze verify: $out"
say "lib/systemd/system/lifeline.service: no complaint"
step_done "systemd-analyze verify"

chroot_pristine
step "unpack and mount a fresh Debian 12 tree"
chroot_unpack
chroot_mount
cp "$deb" "$root/tmp/"
debname=$(basename "$deb")
step_done "fresh tree"

# The tree's files, dpkg's and apt's databases, caches and logs aside, and
# the shadow tools' backups of passwd, group, shadow and gshadow.
tree_files() {
	(cd "$root" && find . -xdev \( -path ./var/lib/dpkg -o -path ./var/lib/apt \
		-o -path ./var/cache/apt -o -path ./var/cache/debconf -o -path ./var/log \) \
		-prune -o -print) | grep -vxE '\./etc/(passwd|group|shadow|gshadow)-' | sort
}
accounts() { cat "$root"/etc/{passwd,group,shadow,gshadow}; }

step "the package's dependencies from the mirror"
depends=$(dpkg-deb -f "$deb" Depends)
bg_wait in_tree "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq &&
	apt-get satisfy -y -qq --no-install-recommends '$depends'" >"$work/deps.log" 2>&1 || {
	cat "$work/deps.log"
	die "the package's dependencies do not install from the mirror"
}
files_before=$(tree_files)
accounts_before=$(accounts)
pkgs_before=$(in_tree_root dpkg-query -W -f '${Package}\n' | sort)
step_done "dependencies"

step "apt-get install ./$debname"
bg_wait in_tree "cd /tmp && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	--no-install-recommends ./$debname" >"$work/install.log" 2>&1 || {
	cat "$work/install.log"
	die "apt-get install ./$debname failed"
}
new=$(in_tree_root dpkg-query -W -f '${Package}\n' | sort | comm -13 <(printf '%s\n' "$pkgs_before") -)
[ "$new" = lifeline ] || die "installed with the package: ${new//$'\n'/ } (want lifeline alone)"
out=$(in_tree 'lifeline --check -c /etc/lifeline/lifeline.conf' 2>&1) ||
	die "the installed lifeline --check refuses the shipped configuration: $out"
say "$out"
[ "$(in_tree 'lifeline --version')" = "lifeline $version" ] ||
	die "the installed binary is not version $version"
IFS=: read -r _ _ uid gid _ home shell < <(in_tree_root getent passwd lifeline) ||
	die "no user lifeline after the install"
[ "$uid" -lt 1000 ] && [ "$home" = /nonexistent ] && [ "$shell" = /usr/sbin/nologin ] ||
	die "user lifeline: uid $uid, home $home, shell $shell (want a system user)"
[ "$(in_tree_root getent group lifeline | cut -d: -f3)" = "$gid" ] ||
	die "no group lifeline, or not the user's"
[ -L "$root/etc/systemd/system/multi-user.target.wants/lifeline.service" ] ||
	die "the unit is not enabled (multi-user.target.wants)"
for f in /usr/share/man/man8/lifeline.8.gz /usr/share/man/man5/lifeline.conf.5.gz; do
	[ -s "$root$f" ] || die "$f not installed"
done
say "system user lifeline (uid $uid, group $gid, $home, $shell); unit enabled; man pages"
step_done "install"

step "the installed binary relays, in its own network namespace"
bg_wait unshare -n -- bash "$self" --in-netns "$root" "$work" "$uid" ||
	die "the installed binary in its network namespace (the reason is above)"
kill_tree_procs || die "processes survive in the tree"
step_done "relay"

step "dpkg --purge lifeline"
bg_wait in_tree 'dpkg --purge lifeline' >"$work/purge.log" 2>&1 || {
	cat "$work/purge.log"
	die "dpkg --purge lifeline failed"
}
for f in /usr/sbin/lifeline /etc/lifeline /lib/systemd/system/lifeline.service \
	/etc/systemd/system/multi-user.target.wants/lifeline.service \
	/var/lib/systemd/deb-systemd-helper-enabled/lifeline.service.dsh-also \
	/usr/share/man/man8/lifeline.8.gz /usr/share/man/man5/lifeline.conf.5.gz \
	/usr/share/doc/lifeline; do
	[ ! -e "$root$f" ] && [ ! -L "$root$f" ] || die "$f is left after the purge"
done
! in_tree_root getent passwd lifeline >/dev/null || die "user lifeline left after the purge"
! in_tree_root getent group lifeline >/dev/null || die "group lifeline left after the purge"
[ -z "$(in_tree_root dpkg-query -W -f '${Status}' lifeline 2>/dev/null)" ] ||
	die "dpkg still knows lifeline after the purge"
diff=$(diff <(printf '%s\n' "$files_before") <(tree_files)) ||
	die "files before the install and after the purge differ:"$'\n'"$diff"
diff=$(diff <(printf '%s\n' "$accounts_before") <(accounts)) ||
	die "/etc/passwd, group, shadow or gshadow differ after the purge:"$'\n'"$diff"
left=$(grep -rlw lifeline "$root/etc" --exclude='*-' 2>/dev/null || true)
[ -z "$left" ] || die "files in /etc still name lifeline: $left"
say "nothing left: the tree has the files and accounts it had before the install"
step_done "purge"

if [ "${LIFELINE_DEB_BOOT:-1}" != 0 ]; then
	step "the unit booted for real: scripts/unit-check.sh (systemd-nspawn --boot)"
	bg_wait in_tree "cd /tmp && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends systemd ./$debname" >"$work/boot-install.log" 2>&1 || {
		cat "$work/boot-install.log"
		die "apt-get install systemd ./$debname failed"
	}
	chroot_umount || die "the tree would not unmount for systemd-nspawn"
	bg_wait "$repo/scripts/unit-check.sh" "$root" ||
		die "scripts/unit-check.sh: the unit booted (the reason is above)"
	step_done "unit-check (boot)"
fi

[ "$(git -C "$repo" status --porcelain)" = "$status_before" ] ||
	die "the checkout changed during the run"
print_timings
say "deb-check: OK ($debname builds, passes lintian, installs, relays, boots and purges cleanly on a fresh Debian 12 at $head)"
