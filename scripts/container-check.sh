#!/usr/bin/env bash
# The container image, built and run in a real engine (Podman), with no
# registry: what an operator gets from deploy/container/.
#
#   scripts/container-check.sh       (as root; CI runs it after deb-check)
#
# 1. scripts/deps.sh container on the host: podman, runc, netavark,
#    iptables, podman-compose, debootstrap, python3.  Podman reads a
#    containers.conf of this run's own (CONTAINERS_CONF; /etc is left
#    alone) with what this machine kind needs: runc (crun fails where
#    cgroup v1 and v2 are mixed), cgroup_manager cgroupfs and a file event
#    log (no systemd), default ulimits within the hard limits.
# 2. The base image: a Debian 12 `debootstrap --variant=minbase` tree,
#    kept as a tarball in $LIFELINE_CONTAINER_CACHE (default
#    /var/cache/lifeline-container; built once, 45-90 s; the tree's
#    life is scripts/lib/chroot.sh's), imported with `podman import`.
# 3. `podman build --format docker` (the OCI format drops HEALTHCHECK) of
#    deploy/container/Containerfile, from HEAD (git archive: committed
#    work only), with BASE that image and apt pointed at the mirror
#    (LIFELINE_FRESH_MIRROR, LIFELINE_FRESH_SECURITY, as for the other
#    checks).  The image runs as 'lifeline', has the HEALTHCHECK, the man
#    pages, and deploy/container/lifeline.conf, which its lifeline accepts
#    (tests/integration/test_container_files.py holds that file to the
#    whatsapp preset at 10000 + each port).
# 4. A configuration that does not load (mounted over the image's): the
#    container exits at once, status 2, its log one line naming file:line.
# 5. The relay, as `podman run` starts it (default capabilities), with
#    WhatsApp's names resolving to loopback inside the container and an
#    echo server there (tests/container/peer.py, run in the container's
#    network namespace with nsenter): lifeline is PID 1, not root, with no
#    capability, no_new_privs and its seccomp filter on every thread;
#    4 MiB there and back, byte for byte, over TLS to the chat upstream
#    (which must get a PROXY v2 header) and plain to the media upstream
#    (which must get none), through ports the engine published on
#    loopback; `podman healthcheck run` then `podman inspect` say healthy;
#    SIGHUP reloads; SIGTERM during a live transfer: the transfer
#    completes, the container exits 0 well before drain-timeout.
# 6. deploy/container/compose.yaml, then compose.minimal.yaml, brought up
#    and down with podman-compose and tests/container/compose.test.yaml
#    (every port published on loopback, on ports the engine picks): each
#    published port accepts a connection; no capability even in the
#    bounding set (cap_drop: ALL), read-only root; with no upstream
#    answering, `podman healthcheck run` says unhealthy; `down` removes
#    the container.
#
# Nothing is dialled outside loopback and the containers' own network
# namespaces.  Every container, network, image and process this run
# creates is removed on exit, failure, Ctrl-C or SIGTERM, and IPv4
# forwarding (netavark turns it on) is put back as found when no
# container is left.  Each step prints its time.
# SC2016: Go templates in single quotes.  SC2015: A && B || die: die when
# either fails.
# shellcheck disable=SC2016,SC2015
set -euo pipefail

prog=container-check
self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
# shellcheck source=scripts/lib/chroot.sh
. "$repo/scripts/lib/chroot.sh"
chroot_traps
# chroot.sh's pristine tree, with nothing added, in a cache of its own.
cache=${LIFELINE_CONTAINER_CACHE:-/var/cache/lifeline-container}
include=""

payload=$((4 << 20))
run=lifeline-check-$$ # every name this run gives starts so
base_image=localhost/$run-base:latest
image=localhost/$run:latest
# The listeners inside (deploy/container/lifeline.conf: 10000 + the
# official port), in the preset's order.
inner_ports="10080 18080 10443 18443 15222 18222 10587 17777 18587"
containers=()
networks=()
pids=()
base_id="" # the imported base image
# netavark turns IPv4 forwarding on for its bridge; put back as found.
forward=$(cat /proc/sys/net/ipv4/ip_forward)

# True when container $1's log has a line matching the pattern $2.  (Not
# `podman logs | grep -q`: under pipefail, podman's SIGPIPE when grep
# stops early would make a match a failure.)
logged() { pm logs "$1" 2>&1 | grep -e "$2" >/dev/null; }

# Waits up to $2 seconds for the command line $1 to succeed.
wait_for() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		eval "$1" && return 0
		sleep 0.1
	done
	return 1
}

pm() { timeout 120 podman "$@"; }

# Runs podman-compose for project $1 with compose file $2 (in
# deploy/container) and the test override, both as HEAD has them (the
# build context), every port published on loopback; the rest of the
# arguments are its command.  Logs to $work/compose.log.
compose() {
	local project=$1 file=$2 v
	shift 2
	local env=(LIFELINE_IMAGE="$image" LIFELINE_CHECK_NAME="$project")
	for v in HTTP HTTPS JABBER MEDIA MEDIA_ALT HTTP_LB HTTPS_LB JABBER_LB \
		MEDIA_LB; do
		env+=("LIFELINE_$v=127.0.0.1:")
	done
	(cd "$work/context/deploy/container" &&
		env "${env[@]}" timeout 120 podman-compose -p "$project" -f "$file" \
			-f "$work/context/tests/container/compose.test.yaml" "$@") \
		>>"$work/compose.log" 2>&1
}

container_cleanup() {
	local rc=$? p c left ours
	trap - EXIT INT TERM HUP
	set +e
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do
		timeout 5 tail --pid="$p" -f /dev/null || kill -KILL "$p" 2>/dev/null
	done
	for c in "${containers[@]}"; do
		pm container exists "$c" && pm rm -f -t 0 "$c" >/dev/null 2>&1
	done
	for c in "${networks[@]}"; do
		pm network exists "$c" && pm network rm -f "$c" >/dev/null 2>&1
	done
	if [ -n "$base_id" ]; then
		# The images this run made: the base and every one made since
		# (the build's stages too, when it was interrupted), and the
		# working containers an interrupted build leaves.
		ours=$(pm images -a -q --no-trunc --filter "since=$base_id"
			echo "$base_id")
		pm ps -a --external --format '{{.ID}} {{.ImageID}}' |
			while read -r c img; do
				case "$ours" in *"sha256:$img"*)
					pm rm -f "$c" >/dev/null 2>&1 ;;
				esac
			done
		pm rmi -f "$image" "$base_image" >/dev/null 2>&1
		for c in $ours; do
			pm image exists "$c" && pm rmi -f "$c" >/dev/null 2>&1
		done
		left=$(pm ps -a -q --filter "name=$run"
			pm network ls -q --filter "name=$run"
			for c in $ours; do pm image exists "$c" && echo "$c"; done)
		if [ -n "$left" ]; then
			say "$prog: left behind: ${left//$'\n'/ }" >&2
			[ "$rc" -eq 0 ] && rc=1
		fi
	fi
	if [ "$forward" = 0 ] && [ -z "$(pm ps -a -q)" ]; then
		echo 0 >/proc/sys/net/ipv4/ip_forward
	fi
	# chroot.sh's cleanup reads the status from $?.
	(exit "$rc")
	chroot_cleanup
}
trap container_cleanup EXIT

# The status line KEY of every thread of process $1, deduplicated.
thread_status() {
	cat "/proc/$1"/task/*/status 2>/dev/null | awk -v k="$2:" '$1 == k' | sort -u
}

# Fails unless container $1 runs lifeline as PID 1, not as root, with no
# capability (also none in the bounding set when $2 is "bounding"),
# no_new_privs and the seccomp filter on every thread.
check_confined() {
	local pid line
	pid=$(pm inspect -f '{{.State.Pid}}' "$1")
	[ "$(readlink "/proc/$pid/exe")" = /usr/sbin/lifeline ] ||
		die "$1: PID $pid is $(readlink "/proc/$pid/exe"), not lifeline"
	[ "$(awk '$1 == "NSpid:" { print $NF }' "/proc/$pid/status")" = 1 ] ||
		die "$1: lifeline is not PID 1 in its container"
	line=$(thread_status "$pid" Uid)
	[ "$(echo "$line" | wc -l)" -eq 1 ] && ! echo "$line" | grep -qw 0 ||
		die "$1: a thread runs as root: $line"
	for k in CapInh CapPrm CapEff CapAmb ${2:+CapBnd}; do
		[ "$(thread_status "$pid" "$k")" = "$k:	0000000000000000" ] ||
			die "$1: $(thread_status "$pid" "$k" | head -1)"
	done
	[ "$(thread_status "$pid" NoNewPrivs)" = "NoNewPrivs:	1" ] ||
		die "$1: no_new_privs missing on a thread"
	[ "$(thread_status "$pid" Seccomp)" = "Seccomp:	2" ] ||
		die "$1: seccomp filter missing on a thread"
	say "$1: lifeline is PID 1, uid $(echo "$line" | awk '{print $2}'), no capability${2:+ (bounding set empty too)}, no_new_privs, seccomp, on $(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 | wc -l) threads"
}

# Waits up to 20 s for container $1 to log that it started.
wait_started() {
	wait_for "logged '$1' 'lifeline .* started'" 20 || {
		pm logs "$1" 2>&1 | tail -n 20 >&2
		die "$1: lifeline did not start within 20 s"
	}
}

# Fails unless `podman healthcheck run` on container $1 says $2.
check_health() {
	local out rc=0
	out=$(pm healthcheck run "$1" 2>/dev/null) || rc=$?
	case "$2" in
	healthy) [ "$rc" -eq 0 ] || die "$1: health check failed ($rc): $out" ;;
	unhealthy) [ "$rc" -eq 1 ] && [ "$out" = unhealthy ] ||
		die "$1: health check passed (exit $rc, '$out'), want unhealthy" ;;
	esac
	say "$1: podman healthcheck run: $2"
}

# ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (podman, nsenter, debootstrap)"
head=$(git -C "$repo" rev-parse HEAD) || die "$repo is not a git checkout"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
	say "$prog: note: uncommitted changes are not checked (HEAD only)"
fi

step "host tools (scripts/deps.sh container)"
"$repo/scripts/deps.sh" container
chroot_host_tools
step_done "host tools"

chroot_pristine

step "base image: podman import of the minbase tree"
chroot_workdir
# The mounted configurations are read by the container's user.
chmod 0755 "$work"
cat >"$work/containers.conf" <<-'EOF'
	# scripts/container-check.sh: what this machine kind needs.
	[containers]
	default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
	[engine]
	runtime = "runc"
	cgroup_manager = "cgroupfs"
	events_logger = "file"
	[network]
	network_backend = "netavark"
EOF
export CONTAINERS_CONF=$work/containers.conf
pm info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' >"$work/info" ||
	die "podman info failed"
say "podman $(podman --version | awk '{print $3}'): $(cat "$work/info")"
pm import --change 'CMD ["/bin/bash"]' "$tarball" "$base_image" \
	>/dev/null 2>>"$work/podman.log" ||
	die "podman import failed"
base_id=$(pm image inspect -f '{{.Id}}' "$base_image")
exec 9>&- # chroot_pristine's lock on the cache
step_done "base image"

step "podman build of deploy/container/Containerfile at $head"
mkdir "$work/context"
git -C "$repo" archive HEAD | tar -C "$work/context" -x
# In the background: a signal to this script stops the build too.
timeout 900 podman build --format docker --pull=never --layers=false \
	--build-arg BASE="$base_image" --build-arg DEBIAN_MIRROR="$mirror" \
	--build-arg DEBIAN_SECURITY="$security" \
	-f "$work/context/deploy/container/Containerfile" -t "$image" "$work/context" \
	>"$work/build.log" 2>&1 &
pids+=($!)
wait "$!" || {
	tail -n 30 "$work/build.log" >&2
	die "podman build failed"
}
say "image: $(pm image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
step_done "podman build"

step "the image: user, health check, ports, man pages, configuration"
got=$(pm image inspect -f '{{.Config.User}} {{json .Config.Entrypoint}} {{json .HealthCheck.Test}} {{.Config.StopSignal}}' "$image")
[ "$got" = 'lifeline ["lifeline"] ["CMD","lifeline","health"] SIGTERM' ] ||
	die "image config: $got"
got=$(pm image inspect -f '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$image" |
	tr ' ' '\n' | grep . | sort)
want=$(for p in $inner_ports; do echo "$p/tcp"; done | sort)
[ "$got" = "$want" ] || die "exposed ports: ${got//$'\n'/ }"
pm run --rm --network none --no-healthcheck --entrypoint /bin/ls "$image" \
	/usr/share/man/man8/lifeline.8 /usr/share/man/man5/lifeline.conf.5 >/dev/null ||
	die "man pages missing"
# The configuration is deploy/container/lifeline.conf (which
# tests/integration/test_container_files.py holds to the whatsapp preset,
# each listener at 10000 + its port), and the binary runs with it.
pm run --rm --network none --no-healthcheck --entrypoint /bin/cat "$image" \
	/etc/lifeline/lifeline.conf | cmp - "$work/context/deploy/container/lifeline.conf" ||
	die "the image's /etc/lifeline/lifeline.conf is not deploy/container/lifeline.conf"
got=$(pm run --rm --network none --no-healthcheck "$image" --check \
	-c /etc/lifeline/lifeline.conf 2>&1) || die "lifeline --check in the image: $got"
say "runs as lifeline; HEALTHCHECK lifeline health; ports $inner_ports; man pages;"
say "deploy/container/lifeline.conf: $got"
step_done "image contents"

step "a configuration that does not load: exit at once, one line in the log"
printf '[global]\nworkers = many\n' >"$work/bad.conf"
chmod 0644 "$work/bad.conf"
containers+=("$run-bad")
t0=$SECONDS
pm run -d --name "$run-bad" -v "$work/bad.conf:/etc/lifeline/lifeline.conf:ro" \
	"$image" >/dev/null 2>>"$work/podman.log" || die "podman run failed"
rc=$(timeout 10 podman wait "$run-bad") || die "still running 10 s after start"
log=$(pm logs "$run-bad" 2>&1)
[ "$rc" = 2 ] || die "exit status $rc, want 2 (log: $log)"
[ "$(printf '%s\n' "$log" | wc -l)" -eq 1 ] || die "log has more than one line: $log"
case "$log" in
"lifeline: /etc/lifeline/lifeline.conf:2: "*) ;;
*) die "log does not name file:line: $log" ;;
esac
say "exit 2 after $((SECONDS - t0)) s; podman logs: $log"
step_done "bad configuration"

step "relay: podman run, transfers through published loopback ports, health, SIGTERM drain"
relay=$run-relay
containers+=("$relay")
# The chat servers resolve to 127.0.0.1 inside, the media server to
# 127.0.0.2: each upstream's port knows what must come first.
pm run -d --name "$relay" -p 127.0.0.1::10443 -p 127.0.0.1::10587 \
	--add-host g.whatsapp.net:127.0.0.1 \
	--add-host g-fallback.whatsapp.net:127.0.0.1 \
	--add-host whatsapp.net:127.0.0.2 \
	"$image" >/dev/null 2>>"$work/podman.log" || die "podman run failed"
wait_started "$relay"
check_confined "$relay"
netns=$(pm inspect -f '{{.NetworkSettings.SandboxKey}}' "$relay")
[ -e "$netns" ] || die "no network namespace for $relay ($netns)"
nsenter --net="$netns" /usr/bin/python3 "$repo/tests/container/peer.py" \
	upstream --ready "$work/upstream.ready" 127.0.0.1:5222:v2 \
	127.0.0.1:443:v2 127.0.0.1:80:v2 127.0.0.2:443:none \
	>"$work/upstream.log" 2>&1 &
pids+=($!)
wait_for "[ -s '$work/upstream.ready' ]" 10 || {
	cat "$work/upstream.log" >&2
	die "the upstream did not start"
}
chat=$(pm port "$relay" 10443/tcp)
media=$(pm port "$relay" 10587/tcp)
case "$chat $media" in
127.0.0.1:*" 127.0.0.1:"*) ;;
*) die "published ports: $chat $media, want loopback" ;;
esac
client() { timeout 60 /usr/bin/python3 "$repo/tests/container/peer.py" client "$@"; }
client "${chat%:*}" "${chat##*:}" --size $payload --tls ||
	die "chat over TLS (:443 -> $chat)"
client "${media%:*}" "${media##*:}" --size $payload || die "media (:587 -> $media)"
grep -q "^upstream 127.0.0.1:5222: v2-proxy, $payload bytes echoed" "$work/upstream.log" &&
	grep -q "^upstream 127.0.0.2:443: none, $payload bytes echoed" "$work/upstream.log" || {
	cat "$work/upstream.log" >&2
	die "the upstreams did not see the transfers as they should"
}
check_health "$relay" healthy
got=$(pm inspect -f '{{.State.Health.Status}}' "$relay")
[ "$got" = healthy ] || die "podman inspect: health '$got'"
say "podman inspect: healthy"
# SIGHUP reaches PID 1 too: a reload, listeners kept.
pm kill --signal HUP "$relay" >/dev/null
wait_for "logged '$relay' 'configuration reloaded: 9 listeners'" 10 ||
	die "no reload after SIGHUP"
say "SIGHUP: configuration reloaded"
# SIGTERM while 4 MiB are on their way (paced over 4 s).
client "${media%:*}" "${media##*:}" --size $payload --pace 4 \
	--live "$work/live" >"$work/drain-client.log" 2>&1 &
cpid=$!
pids+=("$cpid")
wait_for "[ -e '$work/live' ]" 10 || die "the paced transfer did not start"
t0=$(date +%s%N)
pm kill --signal TERM "$relay" >/dev/null
rc=$(timeout 40 podman wait "$relay") || die "$relay still running 40 s after SIGTERM"
t1=$(date +%s%N)
wait "$cpid" || {
	cat "$work/drain-client.log" >&2
	die "the live transfer did not survive SIGTERM"
}
cat "$work/drain-client.log"
logged "$relay" 'stopping: no new connections; draining 1 live connection' || {
	pm logs "$relay" 2>&1 | tail -n 5 >&2
	die "no drain in the log"
}
[ "$rc" = 0 ] || die "exit status $rc after SIGTERM, want 0"
ms=$(((t1 - t0) / 1000000))
# drain-timeout is 25 s: an exit before it is the transfer's end.
[ "$ms" -lt 20000 ] || die "exit $ms ms after SIGTERM: the drain ran out"
say "SIGTERM: the live transfer completed, exit 0 after $ms ms"
step_done "relay"

# Brings compose file $1 up as project $2, expects the inner ports $3
# published, checks them, then takes it down.
compose_check() {
	local file=$1 project=$2 want=$3 p hostport got
	containers+=("$project")
	networks+=("${project}_default")
	compose "$project" "$file" up -d || die "podman-compose up ($file) failed"
	# podman-compose exits 0 when podman run fails: look.
	[ "$(pm inspect -f '{{.State.Status}}' "$project" 2>/dev/null)" = running ] || {
		tail -n 20 "$work/compose.log" >&2
		die "$file: the container is not running after podman-compose up"
	}
	wait_started "$project"
	got=$(pm port "$project" | awk '{print $1}' | sort | tr '\n' ' ')
	[ "$got" = "$(for p in $want; do echo "$p/tcp"; done | sort | tr '\n' ' ')" ] ||
		die "$file: published $got, want $want"
	for p in $want; do
		hostport=$(pm port "$project" "$p/tcp")
		case "$hostport" in 127.0.0.1:*) ;; *) die "$file: $p on $hostport" ;; esac
		timeout 5 bash -c "exec 3<>/dev/tcp/${hostport%:*}/${hostport##*:}" ||
			die "$file: $hostport (inside $p) refuses connections"
	done
	say "$file: up; $(echo "$want" | wc -w) ports published on loopback accept connections"
	check_confined "$project" bounding
	[ "$(pm inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$project")" = true ] ||
		die "$file: root file system not read-only"
	# Nothing answers upstream: three failed relays mark media down.
	hostport=$(pm port "$project" 10587/tcp)
	for p in 1 2 3; do
		timeout 5 bash -c "exec 3<>/dev/tcp/${hostport%:*}/${hostport##*:}; cat <&3" \
			>/dev/null 2>&1 || true
	done
	wait_for "logged '$project' 'whatsapp.net:443 marked down'" 10 ||
		die "$file: the media server was not marked down"
	check_health "$project" unhealthy
	compose "$project" "$file" down || die "podman-compose down ($file) failed"
	! pm container exists "$project" || die "$file: container left after down"
	pm network rm -f "${project}_default" >/dev/null 2>&1 || true
	say "$file: down"
}

step "compose.yaml with the loopback override: up, ports, confinement, health, down"
compose_check compose.yaml "$run-compose" "$inner_ports"
step_done "compose.yaml"

step "compose.minimal.yaml: 443 and 587 only"
compose_check compose.minimal.yaml "$run-minimal" "10443 10587"
step_done "compose.minimal.yaml"

print_timings
say "container-check: OK (image built and served in Podman at $head)"
