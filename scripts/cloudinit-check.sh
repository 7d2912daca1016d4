#!/usr/bin/env bash
# deploy/cloud-init.yaml, checked without a cloud: its schema, then its
# first-boot script in a fresh Debian 12 tree, as a new server runs it.
#
#   scripts/cloudinit-check.sh    (as root; CI runs it after kube-check)
#
# 1. `cloud-init schema --config-file` (Debian's cloud-init, installed by
#    scripts/deps.sh deploy) accepts the file; a copy with one
#    write_files entry broken is refused (the schema check can fail).
#    runcmd runs /usr/local/sbin/lifeline-firstboot, a 0755 script of
#    write_files, whose settings file (the first entry) names
#    LIFELINE_REPO.
# 2. A fresh copy of scripts/fresh-check.sh's pristine Debian 12 minbase
#    tree (scripts/lib/chroot.sh: its mounts and cleanup); write_files
#    written into it as cloud-init would, this checkout's HEAD as a git
#    bundle in /root (LIFELINE_REPO points there: committed work only).
# 3. `lifeline-firstboot install`: apt, the clone, the build dependencies,
#    dpkg-buildpackage, the .deb installed (with the mirror).  The package
#    must be installed at the Makefile's version and its unit enabled.
# 4. `lifeline-firstboot firewall` (this tree has none: it says so) and
#    `start` (no systemd in a chroot: it says so and starts nothing).
#    The firewall step again with nftables (a dropping input chain, in
#    step 5's namespace: a rule for 22, 443 and 587 must come first) and
#    with ufw installed and inactive (the three rules added, ufw left
#    inactive).
# 5. In a network namespace of its own, the installed relay started as the
#    unit starts it (its ExecStart, as root here), its upstreams' names
#    resolving in the namespace (the tree's /etc/hosts): 443 and 587
#    accept; then `lifeline-firstboot announce` must find it
#    ready and print the share link for LIFELINE_PUBLIC_HOST (chat 443
#    with TLS, media 587) and save it in /root/lifeline-link.txt; SIGTERM
#    ends the relay with status 0.
# Every process left in the tree is killed, every mount undone and the
# tree deleted on exit (LIFELINE_CLOUDINIT_KEEP=1 keeps it, unmounted).
# Each step prints its time; the build in the tree is most of it.
set -euo pipefail

prog=cloudinit-check
keep=${LIFELINE_CLOUDINIT_KEEP:-}
install_timeout=${LIFELINE_CLOUDINIT_TIMEOUT:-900} # seconds, the install step
public_host=203.0.113.7                            # a documentation address
script=/usr/local/sbin/lifeline-firstboot

self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
yaml=$repo/deploy/cloud-init.yaml
# shellcheck source=scripts/lib/chroot.sh
. "$repo/scripts/lib/chroot.sh"
chroot_traps

# ---------------------------------------------------------------------------
# Step 5: this script again, under unshare -n.
if [ "${1:-}" = "--in-netns" ]; then
	root=$2
	work=$3
	trap - EXIT INT TERM HUP # the caller cleans the tree up
	ip link set lo up
	# The upstreams' names resolve here (the tree's /etc/hosts): a server
	# counts as up until its first check, a minute on, so the relay is
	# ready at once.  (A listener on their ports would take 443 from the
	# relay.)
	names=$(awk '$1 == "server" { sub(/:[0-9]+$/, "", $3); print $3 }' \
		"$root/etc/lifeline/lifeline.conf" | sort -u | tr '\n' ' ')
	echo "127.0.0.1 localhost $names" >"$root/etc/hosts"
	# The unit's ExecStart, as written in the installed unit.
	exec_start=$(sed -n 's/^ExecStart=//p' "$root/lib/systemd/system/lifeline.service")
	[ -n "$exec_start" ] || die "no ExecStart= in the installed unit"
	mkdir -p "$root/run/lifeline"
	in_tree "exec $exec_start" >"$work/relay.log" 2>&1 &
	job=$!
	up=""
	for ((i = 0; i < 150; i++)); do
		kill -0 "$job" 2>/dev/null || break
		if [ -s "$root/run/lifeline/ports" ] && accepting 127.0.0.1/443 127.0.0.1/587; then
			up=1
			break
		fi
		sleep 0.1
	done
	[ -n "$up" ] || {
		cat "$work/relay.log"
		die "the installed relay ($exec_start) did not bring up 443 and 587"
	}
	say "the installed relay, started as the unit starts it: 443 and 587 accept"
	in_tree "LIFELINE_PUBLIC_HOST=$public_host timeout 90 $script announce" \
		>"$work/announce.log" 2>&1 || {
		cat "$work/announce.log"
		die "lifeline-firstboot announce failed"
	}
	sed 's/^/    /' "$work/announce.log"
	link="https://wa.me/proxy?host=$public_host&chatPort=443&mediaPort=587&chatTLS=true"
	grep -qxF "$link" "$work/announce.log" || die "announce did not print $link"
	grep -q "relay ready on $public_host" "$work/announce.log" ||
		die "announce did not find the relay ready"
	grep -qxF "$link" "$root/root/lifeline-link.txt" ||
		die "/root/lifeline-link.txt lacks the link"
	# nftables with a dropping input chain (this namespace's own): the
	# firewall step must let SSH, 443 and 587 in, and nothing else.
	in_tree "nft add table inet filter && nft add chain inet filter input \
		'{ type filter hook input priority 0; policy drop; }'" ||
		die "cannot make an nftables input chain"
	out=$(in_tree "$script firewall" 2>&1) || die "firewall step (nftables): $out"
	say "    $out"
	rules=$(in_tree 'nft list chain inet filter input')
	grep -q 'tcp dport { 22, 443, 587 } accept' <<<"$rules" ||
		die "nftables: no rule for 22, 443 and 587: $rules"
	[ "$(grep -c accept <<<"$rules")" -eq 1 ] || die "nftables: more than one rule: $rules"
	say "nftables: tcp dport { 22, 443, 587 } accept, policy drop kept"
	lpid=$(tree_pids_of /usr/sbin/lifeline)
	[ -n "$lpid" ] || die "no /usr/sbin/lifeline process in the tree"
	kill -TERM "$lpid"
	rc=0
	wait "$job" || rc=$?
	[ "$rc" -eq 0 ] || die "the relay exited $rc on SIGTERM (want 0)"
	exit 0
fi

# ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, mounts)"
head=$(git -C "$repo" rev-parse HEAD) || die "$repo is not a git checkout"
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] ||
	say "cloudinit-check: note: uncommitted changes are not checked (HEAD only)"

step "host packages: scripts/deps.sh deploy"
"$repo/scripts/deps.sh" deploy
step_done "deps.sh deploy"

step "cloud-init schema --config-file deploy/cloud-init.yaml"
out=$(cloud-init schema --config-file "$yaml" 2>&1) || die "cloud-init schema: $out"
say "$out"
chroot_workdir
sed 's/^  - path: \/etc\/default\/lifeline-firstboot$/  - pth: \/etc\/default\/lifeline-firstboot/' \
	"$yaml" >"$work/broken.yaml"
! cmp -s "$yaml" "$work/broken.yaml" || die "could not break a copy of $yaml"
if out=$(cloud-init schema --config-file "$work/broken.yaml" 2>&1); then
	die "cloud-init schema accepts a write_files entry without its path: $out"
fi
say "a copy with a write_files entry broken is refused: ${out##*Error: }"
# The structure the rest relies on, and write_files as a list of
# path, mode and content for step 2.
python3 - "$yaml" "$script" >"$work/files.txt" <<-'EOF' || die "deploy/cloud-init.yaml: the above"
	import sys, yaml
	doc = yaml.safe_load(open(sys.argv[1]))
	script = sys.argv[2]
	files = doc.get("write_files") or []
	byp = {f.get("path"): f for f in files}
	def fail(msg):
	    print(msg, file=sys.stderr)
	    sys.exit(1)
	runs = [c for c in doc.get("runcmd") or []
	        if (c[0] if isinstance(c, list) else str(c).split()[0]) == script]
	if len(runs) != 1:
	    fail(f"runcmd does not run {script} once: {doc.get('runcmd')}")
	if script not in byp or byp[script].get("permissions") != "0755":
	    fail(f"{script} is not a 0755 file of write_files")
	if not byp[script]["content"].startswith("#!/bin/sh\n"):
	    fail(f"{script} is not a /bin/sh script")
	first = files[0]
	if first.get("path") != "/etc/default/lifeline-firstboot" or \
	        "LIFELINE_REPO=" not in first.get("content", ""):
	    fail("the first write_files entry is not the settings file naming LIFELINE_REPO")
	for f in files:
	    print(f["path"], f.get("permissions", "0644"), f["content"].encode().hex())
EOF
step_done "cloud-init schema"

chroot_pristine
step "unpack and mount a fresh Debian 12 tree; write_files; the repository"
chroot_unpack
chroot_mount
while read -r path mode hex; do
	mkdir -p "$root$(dirname "$path")"
	python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]))' \
		"$hex" >"$root$path"
	chmod "$mode" "$root$path"
	say "  $path ($mode, $(wc -c <"$root$path") bytes)"
done <"$work/files.txt"
git -C "$repo" bundle create "$root/root/lifeline.bundle" HEAD 2>/dev/null
version=$(sed -n 's/^VERSION := *//p' "$repo/Makefile")
step_done "fresh tree"

step "lifeline-firstboot install (LIFELINE_REPO=/root/lifeline.bundle)"
rc=0
bg_wait in_tree "LIFELINE_REPO=/root/lifeline.bundle timeout -k 10 $install_timeout $script install" \
	>"$work/install.log" 2>&1 || rc=$?
grep '^lifeline-firstboot:' "$work/install.log" | sed 's/^/    /'
if [ "$rc" -ne 0 ]; then
	tail -n 30 "$work/install.log"
	die "lifeline-firstboot install exited $rc (timeout: 124)"
fi
# shellcheck disable=SC2016 # dpkg-query's format
got=$(in_tree_root dpkg-query -W -f '${Version} ${Status}' lifeline) ||
	die "the package lifeline is not installed"
[ "$got" = "$version install ok installed" ] || die "lifeline: $got, want $version installed"
[ "$(in_tree_root git -C /usr/local/src/lifeline-build/lifeline rev-parse HEAD)" = "$head" ] ||
	die "the build is not of $head"
[ -L "$root/etc/systemd/system/multi-user.target.wants/lifeline.service" ] ||
	die "the unit is not enabled"
if ! grep -q '^\[listen chat-tls\]' "$root/etc/lifeline/lifeline.conf" ||
	! grep -q '^\[listen media\]' "$root/etc/lifeline/lifeline.conf"; then
	die "/etc/lifeline/lifeline.conf is not the minimal preset"
fi
say "lifeline $version installed from $head, unit enabled, minimal preset"
step_done "install (clone, build, .deb)"

step "lifeline-firstboot firewall, start"
out=$(in_tree "$script firewall" 2>&1) || die "firewall step: $out"
say "    $out"
grep -q "no firewall on this server" <<<"$out" || die "firewall: unexpected: $out"
out=$(in_tree "$script start" 2>&1) || die "start step: $out"
say "    $out"
grep -q "systemd is not running here" <<<"$out" || die "start: unexpected: $out"
[ -z "$(tree_pids_of /usr/sbin/lifeline)" ] || die "start started a relay without systemd"
step_done "firewall, start"

step "the relay as the unit starts it, lifeline-firstboot announce, firewall with nftables (own network namespace)"
bg_wait in_tree 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nftables' \
	>"$work/nft.log" 2>&1 || {
	cat "$work/nft.log"
	die "apt-get install nftables failed"
}
bg_wait unshare -n -- bash "$self" --in-netns "$root" "$work" ||
	die "the relay and announce in their network namespace (the reason is above)"
kill_tree_procs || die "processes survive in the tree"
step_done "relay, announce, nftables"

step "lifeline-firstboot firewall with ufw (installed, inactive)"
bg_wait in_tree 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ufw' \
	>"$work/ufw.log" 2>&1 || {
	cat "$work/ufw.log"
	die "apt-get install ufw failed"
}
out=$(in_tree "$script firewall" 2>&1) || die "firewall step (ufw): $out"
say "    $out"
added=$(in_tree 'ufw show added' 2>&1)
for p in 22 443 587; do
	grep -qx "ufw allow $p/tcp" <<<"$added" || die "ufw: no rule for $p/tcp: $added"
done
[ "$(grep -c '^ufw ' <<<"$added")" -eq 3 ] || die "ufw: other rules: $added"
in_tree 'ufw status' | grep -qx 'Status: inactive' || die "ufw was turned on"
say "ufw: allow 22, 443 and 587/tcp added, left inactive"
step_done "ufw"

print_timings
say "cloudinit-check: OK (deploy/cloud-init.yaml: valid; its first boot builds, installs and announces lifeline $version on a fresh Debian 12 at $head)"
