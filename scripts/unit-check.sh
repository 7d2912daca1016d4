#!/usr/bin/env bash
# The installed systemd unit, for real: boots a Debian tree that has
# systemd and the lifeline package installed (scripts/deb-check.sh makes
# one; never this machine's own root) with `systemd-nspawn --boot` on a
# private network (loopback only), and checks, under the unit's own
# restrictions:
#
#  1. lifeline came up at boot from the shipped configuration (enabled by
#     the package; Type=notify: "active" means READY=1 arrived), although
#     no upstream name resolves on a private network;
#  2. every thread of the main process runs as the system user with no
#     capability in any set, NoNewPrivs 1 and Seccomp 2 (the daemon's own
#     filter under the unit's SystemCallFilter);
#  3. `systemctl reload` to a configuration whose upstream is a name
#     (localhost: resolution under RestrictAddressFamilies) ends when the
#     daemon says READY=1 again, and a transfer relays through 587 to an
#     echo server with its bytes checked;
#  4. STATUS= reaches `systemctl show -p StatusText`;
#  5. a refused reload keeps the unit active with the old configuration,
#     and the journal records it at priority err;
#  6. a crash (SIGKILL) is restarted (Restart=on-failure), and `systemctl
#     stop` ends it with status 0 and Result=success.
#
#   scripts/unit-check.sh ROOT        (as root)
#
# The container is powered off and waited for on exit, whatever happens.
set -euo pipefail

root=${1:?usage: $0 ROOT (a Debian tree with systemd and lifeline installed)}
root=$(readlink -f "$root")
[ -x "$root/lib/systemd/systemd" ] || {
	echo "unit-check: $root has no systemd" >&2
	exit 2
}
boot_timeout=${LIFELINE_UNIT_BOOT_TIMEOUT:-90}
log=$(mktemp /tmp/lifeline-unit-check.XXXXXX)
npid=""
leader=""

say() { printf '%s\n' "$*"; }
die() {
	say "unit-check: FAILED: $*" >&2
	exit 1
}

# Runs a command line in the booted container (all its namespaces).
in_ct() {
	nsenter --target "$leader" --mount --uts --ipc --net --pid -- \
		/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		SYSTEMD_PAGER= SYSTEMD_COLORS=0 /bin/sh -c "$1"
}

prop() { # prop NAME: the lifeline unit's property value
	in_ct "systemctl show -P $1 lifeline.service"
}

# Polls the command line $1 in the container for up to 10 s.  systemd 252
# (bookworm) ends a reload job when ExecReload's kill exits, not at the
# daemon's READY=1 (Type=notify-reload came with 253), and journald may
# lag behind: what a reload did is waited for, not assumed.
eventually() {
	local i
	for i in $(seq 100); do
		in_ct "$1" && return 0
		sleep 0.1
	done
	return 1
}

cleanup() {
	local rc=$? i
	trap - EXIT INT TERM HUP
	set +e
	if [ "$rc" -ne 0 ] && [ -n "$leader" ]; then
		say "---- unit-check: the unit's journal (last 30 lines):" >&2
		in_ct "journalctl -b -u lifeline --no-pager | tail -n 30" >&2
	fi
	if [ -n "$npid" ] && kill -0 "$npid" 2>/dev/null; then
		[ -n "$leader" ] && in_ct "systemctl poweroff" >/dev/null 2>&1
		for i in $(seq 100); do
			kill -0 "$npid" 2>/dev/null || break
			sleep 0.2
		done
		# nspawn turns SIGTERM into a clean shutdown, then we insist.
		kill -0 "$npid" 2>/dev/null && kill -TERM "$npid"
		for i in $(seq 50); do
			kill -0 "$npid" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$npid" 2>/dev/null
		wait "$npid" 2>/dev/null
	fi
	if [ "$rc" -ne 0 ]; then
		say "---- unit-check: the container's console (last 40 lines):" >&2
		tail -n 40 "$log" >&2
		[ -n "$leader" ] || say "(the container never booted)" >&2
	fi
	rm -f "$log"
	exit "$rc"
}
trap cleanup EXIT
trap 'die "interrupted"' INT
trap 'die "terminated"' TERM
trap 'die "hung up"' HUP

t0=$SECONDS
systemd-nspawn --quiet --register=no --keep-unit --private-network \
	--directory="$root" --boot >"$log" 2>&1 </dev/null &
npid=$!

# The container's init: nspawn's child once it runs systemd (before, the
# child is still nspawn setting up the namespaces).
for ((i = 0; i < boot_timeout * 5; i++)); do
	kill -0 "$npid" 2>/dev/null || die "systemd-nspawn exited while booting"
	leader=$(pgrep -P "$npid" -x systemd | head -n 1) || true
	[ -n "$leader" ] && break
	sleep 0.2
done
[ -n "$leader" ] || die "no init process after ${boot_timeout}s"
# systemctl answers once systemd listens on its private socket: until then
# (a loaded machine) it prints nothing but "Failed to connect to bus".
state=""
for ((i = 0; i < boot_timeout * 5; i++)); do
	state=$(timeout "$boot_timeout" nsenter --target "$leader" --mount --pid \
		-- systemctl is-system-running --wait 2>/dev/null) || true
	[ -n "$state" ] && break
	sleep 0.2
done
say "unit-check: booted in $((SECONDS - t0)) s (system $state)"

# 1. Up at boot from the shipped configuration.
[ "$(prop ActiveState)" = active ] || {
	in_ct "journalctl -b -u lifeline --no-pager | tail -n 30" >&2
	die "lifeline.service is $(prop ActiveState) after boot, not active"
}
[ "$(prop Type)" = notify ] || die "the unit is not Type=notify"
pid=$(prop MainPID)
say "unit-check: active at boot, main pid $pid; $(prop StatusText)"
in_ct "journalctl -b -u lifeline --no-pager" |
	grep -q "started:" || die "no start line in the journal"

# 2. Identity, capabilities, no_new_privs, seccomp on every thread.
uid=$(in_ct "id -u lifeline")
gid=$(in_ct "id -g lifeline")
nt=0
for tid in $(in_ct "ls /proc/$pid/task"); do
	status=$(in_ct "cat /proc/$pid/task/$tid/status")
	nt=$((nt + 1))
	for want in "Uid:	$uid	$uid	$uid	$uid" "Gid:	$gid	$gid	$gid	$gid" \
		"CapInh:	0000000000000000" "CapPrm:	0000000000000000" \
		"CapEff:	0000000000000000" "CapBnd:	0000000000000000" \
		"CapAmb:	0000000000000000" "NoNewPrivs:	1" "Seccomp:	2"; do
		grep -qxF "$want" <<<"$status" ||
			die "thread $tid: no '$want' in its status:
$(grep -E '^(Uid|Gid|Cap[A-Za-z]+|NoNewPrivs|Seccomp):' <<<"$status")"
	done
done
[ "$nt" -ge 3 ] || die "only $nt threads in the main process"
say "unit-check: $nt threads: user lifeline, no capability, NoNewPrivs, seccomp"

# 3. Reload to a configuration with a named upstream; relay through it.
# perl-base (essential in every Debian tree) is the echo server and the
# client: nothing else needs installing.
in_ct "cp /etc/lifeline/lifeline.conf /etc/lifeline/lifeline.conf.shipped"
in_ct "cat >/etc/lifeline/lifeline.conf" <<'EOF'
[global]
workers = 2
[upstream echo]
server = localhost:9999
send-proxy = none
[listen chat-tls]
bind = 0.0.0.0:443
tls = on
upstream = echo
[listen media]
bind = 0.0.0.0:587
bind = [::]:587
upstream = echo
EOF
in_ct "systemd-run --quiet --unit=echo9999 --property=DynamicUser=yes \
	perl -MIO::Socket::INET -e '
	my \$l = IO::Socket::INET->new(LocalAddr => \"127.0.0.1:9999\",
	    Listen => 16, ReuseAddr => 1) or die \$!;
	while (my \$c = \$l->accept) { my \$b;
	    while (sysread(\$c, \$b, 65536)) { syswrite(\$c, \$b) } close \$c }'"
t=$SECONDS
in_ct "timeout 30 systemctl reload lifeline" || die "systemctl reload failed"
say "unit-check: reload acknowledged in $((SECONDS - t)) s"
[ "$(prop MainPID)" = "$pid" ] || die "reload restarted the daemon"
eventually "journalctl -u lifeline --no-pager | tail -n 5 | grep -q 'configuration reloaded'" ||
	die "the reload did not apply"
for i in $(seq 50); do
	in_ct "perl -MIO::Socket::INET -e 'exit !IO::Socket::INET->new(\"127.0.0.1:9999\")'" &&
		break
	sleep 0.1
done
got=$(in_ct "perl -MIO::Socket::INET -MDigest::MD5=md5_hex -e '
	my \$s = IO::Socket::INET->new(\"127.0.0.1:587\") or die \"connect: \$!\";
	srand(7); my \$d = join \"\", map { chr(int(rand(256))) } 1 .. 1000000;
	my \$w = 0; my \$r = \"\"; my \$b;
	while (\$w < length \$d) { \$w += syswrite(\$s, \$d, 65536, \$w) or die;
	    while (length(\$r) < \$w - 131072) { sysread(\$s, \$b, 65536) or die; \$r .= \$b } }
	shutdown(\$s, 1);
	while (sysread(\$s, \$b, 65536)) { \$r .= \$b }
	print md5_hex(\$d) eq md5_hex(\$r) ? \"same\" : \"differ \" . length(\$r)'") ||
	die "the transfer through 587 failed: $got"
[ "$got" = same ] || die "1 MB through 587 came back $got"
say "unit-check: 1 MB relayed through 587 to localhost:9999, bytes intact"

# 4. STATUS= with the live figures.
st=$(prop StatusText)
case "$st" in
*"live connection"*) ;;
*) die "StatusText is '$st', not the live figures" ;;
esac
say "unit-check: StatusText: $st"

# 5. A refused reload: still active, same process, still relaying.
in_ct "echo '[global]' >/etc/lifeline/lifeline.conf; echo 'workers = many' >>/etc/lifeline/lifeline.conf"
in_ct "timeout 30 systemctl reload lifeline" || die "refused reload: systemctl reload failed"
eventually "systemctl show -P StatusText lifeline.service | grep -q '^reload refused'" ||
	die "StatusText after a refused reload: $(prop StatusText)"
[ "$(prop ActiveState)" = active ] && [ "$(prop MainPID)" = "$pid" ] ||
	die "a refused reload did not leave the daemon running"
in_ct "perl -MIO::Socket::INET -e '
	my \$s = IO::Socket::INET->new(\"127.0.0.1:587\") or die;
	syswrite(\$s, \"ping\"); sysread(\$s, my \$b, 4); exit(\$b ne \"ping\")'" ||
	die "not relaying after a refused reload"
# The journal has each line's level (JOURNAL_STREAM: "<3>" prefixes).
eventually "journalctl -b -u lifeline -p err --no-pager -o cat | grep -q '^error: reload refused'" ||
	die "no 'reload refused' line at priority err in the journal"
errs=$(in_ct "journalctl -b -u lifeline -p err --no-pager -o cat")
! grep -q "reloaded" <<<"$errs" ||
	die "the journal's priority-err lines are not the daemon's errors: $errs"
say "unit-check: a refused reload keeps the running configuration (logged at priority err)"
in_ct "mv /etc/lifeline/lifeline.conf.shipped /etc/lifeline/lifeline.conf"

# 6. A crash is restarted; a stop is clean.
in_ct "kill -KILL $pid"
for i in $(seq 100); do
	npid2=$(prop MainPID)
	[ "$(prop ActiveState)" = active ] && [ "$npid2" != 0 ] &&
		[ "$npid2" != "$pid" ] && break
	sleep 0.1
done
[ "$(prop ActiveState)" = active ] && [ "$npid2" != "$pid" ] ||
	die "not restarted after SIGKILL ($(prop ActiveState))"
[ "$(prop NRestarts)" = 1 ] || die "NRestarts is $(prop NRestarts)"
say "unit-check: restarted after SIGKILL (pid $npid2)"
in_ct "timeout 60 systemctl stop lifeline" || die "systemctl stop failed"
[ "$(prop ActiveState)" = inactive ] || die "still $(prop ActiveState) after stop"
[ "$(prop Result)" = success ] || die "stop result $(prop Result)"
[ "$(prop ExecMainStatus)" = 0 ] || die "exit status $(prop ExecMainStatus)"
eventually "journalctl -b _PID=$npid2 --no-pager -o cat | grep -qx 'info: stopped'" ||
	die "no 'stopped' line from pid $npid2 in the journal"
say "unit-check: stopped cleanly (status 0); all checks passed in $((SECONDS - t0)) s"
