#!/bin/sh
# Installs the Debian packages lifeline needs, only those missing.
#   deps.sh build   compiler, C headers (libc6-dev: gcc only recommends
#                   it), make, pkg-config, libinih, OpenSSL, libqrencode,
#                   libseccomp
#   deps.sh test    the above plus what the test suite drives
#   deps.sh bench   the above plus what `make bench` compares against
#   deps.sh deb     the build packages plus what building and checking the
#                   Debian package takes (scripts/deb-check.sh): debhelper,
#                   dpkg-dev, lintian; systemd for systemd-analyze,
#                   systemd-container to boot the unit (scripts/unit-check.sh);
#                   and for the throwaway Debian 12 tree, debootstrap and
#                   iproute2
#   deps.sh container  what scripts/container-check.sh drives: podman with
#                   runc (crun fails on hosts that mix cgroup v1 and v2),
#                   netavark and iptables (the engine's network and its
#                   published ports), podman-compose, debootstrap (the
#                   local base image), python3 (the test's client and
#                   upstream); the image itself builds with the build group
#   deps.sh deploy  what checks the deployment files takes
#                   (scripts/kube-check.sh, scripts/cloudinit-check.sh):
#                   kubernetes-client (kubectl, whose built-in kustomize
#                   renders deploy/kubernetes/), python3-yaml (reads what
#                   it renders), cloud-init (`cloud-init schema` checks
#                   deploy/cloud-init.yaml; when installed here it is
#                   disabled at boot: /etc/cloud/cloud-init.disabled); the
#                   cloud-init check's Debian 12 tree also needs debootstrap
#                   and iproute2
#   deps.sh list    print every package named here, installs nothing
#                   (scripts/fresh-check.sh checks nothing else got in)
# Services that Debian would start on install (nginx, haproxy, iperf3) are
# kept from starting: tests and benchmarks start their own, on loopback.
set -eu

build_pkgs="gcc libc6-dev make pkg-config libinih-dev libssl-dev libqrencode-dev libseccomp-dev"
test_pkgs="python3 python3-pytest python3-pytest-xdist python3-cryptography iproute2 nftables clang-format haproxy nginx iperf3 wrk openssl curl prometheus chromium zbar-tools"
bench_pkgs="haproxy nginx iperf3 wrk procps"
deb_pkgs="dpkg-dev debhelper lintian systemd systemd-container debootstrap iproute2"
container_pkgs="podman runc netavark iptables podman-compose debootstrap python3"
deploy_pkgs="kubernetes-client python3 python3-yaml cloud-init debootstrap iproute2"

case "${1:-build}" in
build) pkgs=$build_pkgs ;;
test) pkgs="$build_pkgs $test_pkgs" ;;
bench) pkgs="$build_pkgs $bench_pkgs" ;;
deb) pkgs="$build_pkgs $deb_pkgs" ;;
container) pkgs=$container_pkgs ;;
deploy) pkgs="$build_pkgs $deploy_pkgs" ;;
list)
	echo "$build_pkgs $test_pkgs $bench_pkgs $deb_pkgs $container_pkgs $deploy_pkgs"
	exit 0
	;;
*) echo "usage: $0 build|test|bench|deb|container|deploy|list" >&2; exit 2 ;;
esac

# kubernetes-client's /usr/bin/kubectl clashes with another package's (the
# Google Cloud SDK's `kubectl`, on some images): that one stays, and
# scripts/kube-check.sh unpacks Debian's kubectl into its cache instead.
if [ "${1:-}" = deploy ] && owner=$(dpkg-query -S /usr/bin/kubectl 2>/dev/null) &&
	[ "${owner%%:*}" != kubernetes-client ]; then
	echo "deps.sh: /usr/bin/kubectl belongs to ${owner%%:*}: kubernetes-client not installed"
	# shellcheck disable=SC2086
	pkgs=$(printf '%s\n' $pkgs | grep -vx kubernetes-client)
fi

missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "missing Debian packages:$missing (run as root, or install them)" >&2
	exit 1
fi
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e $policy ]; then
	printf '#!/bin/sh\nexit 101\n' >$policy
	chmod +x $policy
	own_policy=1
fi
trap '[ -n "$own_policy" ] && rm -f $policy' EXIT
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
# cloud-init is here for `cloud-init schema` only: a machine that did not
# have it must not be reconfigured by it at its next boot.
case " $missing " in
*" cloud-init "*) touch /etc/cloud/cloud-init.disabled ;;
esac
