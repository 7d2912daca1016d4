#!/usr/bin/env bash
# The Kubernetes manifests (deploy/kubernetes/), rendered and checked as
# kubectl 1.20 sees them; nothing is applied to a cluster.
#
#   scripts/kube-check.sh         (as root: network and mount namespaces;
#                                  CI runs it after deb-check)
#
# 1. scripts/deps.sh deploy; kubectl 1.20 (Kustomize v2.0.3) from Debian's
#    kubernetes-client: the installed one, or, when another package owns
#    /usr/bin/kubectl (Google's, on some images), the package unpacked
#    into $LIFELINE_KUBE_CACHE (default /var/cache/lifeline-kube-check).
#    Any other version fails: a newer Kustomize accepts more.
# 2. Every kustomization under deploy/kubernetes (the base and each
#    overlay) renders with `kubectl kustomize`; scripts/kube-schema.py
#    checks the objects against the configuration the ConfigMap carries
#    (kinds, fields, ports, probes, security context, `lifeline --check`
#    with no warning, overlays changing listeners only; its docstring
#    lists it all), and scripts/kube-run.py starts that configuration as
#    the Deployment would, in namespaces of its own (its uid, no
#    capability, read-only files): probes answer 200, every container
#    port accepts, media goes through and back (with a PROXY v2 header
#    from the trusted range behind the PROXY overlay), SIGTERM exits 0.
# 3. tests/kubernetes/renamed (namePrefix and images) passes with the
#    new names and image.
# 4. tests/kubernetes/bad-config (a key spelt wrong) renders, the check
#    refuses it because `lifeline --check` does, and the daemon given it
#    exits at once with status 2 and one line: what a new pod does in the
#    cluster, where it never becomes ready and, with maxUnavailable 0,
#    the old pods keep serving (README, "A fleet (Kubernetes)").
# 5. An edited configuration (one comment more) renders to a ConfigMap of
#    another name, which the Deployment's pod template follows (a
#    rollout), and nothing else changes.
# 6. When the machine has another kubectl on PATH (a newer one: its
#    Kustomize merges lists by other keys), every kustomization rendered
#    by it passes the same check.
# 7. kube-schema.py --self-test on the base's and the PROXY overlay's
#    renderings: each of some fifty breaks (a field removed or changed, a
#    port moved, the configuration altered) must be refused.
# Bounded: each rendering 60 s, each run of the daemon 60 s.
set -euo pipefail

self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
kube=$repo/deploy/kubernetes
cache=${LIFELINE_KUBE_CACHE:-/var/cache/lifeline-kube-check}
lifeline=$repo/build/lifeline
t_start=$SECONDS

say() { printf '%s\n' "$*"; }
die() {
	say "kube-check: FAILED: $*" >&2
	exit 1
}
work=""
cleanup() {
	[ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM HUP

[ "$(id -u)" -eq 0 ] || die "must run as root (network and mount namespaces)"
"$repo/scripts/deps.sh" deploy >/dev/null || die "scripts/deps.sh deploy failed"
make -C "$repo" -s >/dev/null || die "make failed"
work=$(mktemp -d "${TMPDIR:-/tmp}/kube-check.XXXXXX")
chmod 755 "$work" # the pod's user reads its configuration below it

# -- kubectl 1.20 -----------------------------------------------------------
kubectl=""
if [ "$(dpkg-query -W -f '${Status}' kubernetes-client 2>/dev/null)" = "install ok installed" ]; then
	kubectl=/usr/bin/kubectl
else
	debs=("$cache"/kubernetes-client_*.deb)
	deb=${debs[-1]}
	if [ ! -f "$deb" ]; then
		mkdir -p "$cache"
		say "kube-check: fetching Debian's kubernetes-client into $cache"
		(cd "$cache" && chown _apt: . 2>/dev/null; apt-get download -q kubernetes-client) \
			>"$work/download.log" 2>&1 || {
			cat "$work/download.log"
			die "apt-get download kubernetes-client failed"
		}
		debs=("$cache"/kubernetes-client_*.deb)
		deb=${debs[-1]}
		[ -f "$deb" ] || die "no kubernetes-client_*.deb in $cache"
	fi
	dpkg-deb -x "$deb" "$work/kubectl" || die "cannot unpack $deb"
	kubectl=$work/kubectl/usr/bin/kubectl
fi
version=$("$kubectl" version --client --short 2>/dev/null || "$kubectl" version --client)
case "$version" in
*v1.20.*) ;;
*) die "$kubectl is not kubectl 1.20 (Kustomize v2.0.3): $version" ;;
esac
say "kube-check: $kubectl: ${version//$'\n'/ }"

render() { # render DIR OUT [KUBECTL]
	timeout 60 "${3:-$kubectl}" kustomize "$1" >"$2" 2>"$2.err" || {
		cat "$2.err" >&2
		die "kubectl kustomize ${1#"$repo"/} failed"
	}
}
schema() { timeout 60 python3 "$repo/scripts/kube-schema.py" --lifeline "$lifeline" "$@"; }
pod_run() { # pod_run RENDERED [--expect-refusal]
	local d rc=0
	d=$(mktemp -d "$work/run.XXXXXX")
	chmod 755 "$d"
	timeout -k 5 60 unshare -n -m --propagation private \
		python3 "$repo/scripts/kube-run.py" --lifeline "$lifeline" --workdir "$d" "${@:2}" "$1" || rc=$?
	return "$rc"
}

# -- every kustomization of deploy/kubernetes ---------------------------------
n=0
for k in "$kube"/base/kustomization.yaml "$kube"/overlays/*/kustomization.yaml; do
	dir=$(dirname "$k")
	name=${dir#"$kube"/}
	out=$work/${name//\//-}.yaml
	render "$dir" "$out"
	base_opt=()
	[ "$name" = base ] || base_opt=(--base-config "$kube/base/lifeline.conf")
	res=$(schema "${base_opt[@]}" "$out") || {
		say "$res"
		die "$name: the rendering does not pass (above)"
	}
	say "$name: $res"
	res=$(pod_run "$out") || {
		say "$res"
		die "$name: the pod's configuration, run (above)"
	}
	say "$name: $res"
	n=$((n + 1))
done
[ "$n" -ge 4 ] || die "only $n kustomizations under $kube"

# -- an operator's overlay: name prefix and image ----------------------------
render "$repo/tests/kubernetes/renamed" "$work/renamed.yaml"
res=$(schema --prefix relay- --image registry.example.org/relays/lifeline:0.1.0 \
	"$work/renamed.yaml") || {
	say "$res"
	die "tests/kubernetes/renamed does not pass (above)"
}
say "renamed (namePrefix relay-, images): $res"

# -- a configuration that does not load --------------------------------------
render "$repo/tests/kubernetes/bad-config" "$work/bad.yaml"
if res=$(schema "$work/bad.yaml"); then
	die "tests/kubernetes/bad-config passes the check: $res"
fi
grep -q "lifeline --check refuses the configuration" <<<"$res" ||
	die "tests/kubernetes/bad-config refused, but not for its configuration: $res"
say "bad-config: refused: $(head -n 1 <<<"$res")"
res=$(pod_run "$work/bad.yaml" --expect-refusal) || {
	say "$res"
	die "bad-config: the daemon given it (above)"
}
say "bad-config: the pod's start: $res"

# -- an edited configuration is a new ConfigMap: the Deployment rolls --------
cp -r "$kube" "$work/tree"
mkdir "$work/tree/overlays/edited"
cat >"$work/tree/overlays/edited/kustomization.yaml" <<-EOF
	bases:
	  - ../../base
	configMapGenerator:
	  - name: lifeline-config
	    behavior: replace
	    files:
	      - lifeline.conf
EOF
{
	cat "$kube/base/lifeline.conf"
	echo "# one comment more"
} >"$work/tree/overlays/edited/lifeline.conf"
render "$work/tree/overlays/edited" "$work/edited.yaml"
res=$(python3 - "$work/base.yaml" "$work/edited.yaml" <<-'EOF'
	import sys, yaml
	a, b = ([d for d in yaml.safe_load_all(open(f)) if d] for f in sys.argv[1:])
	cm = lambda docs: next(d for d in docs if d["kind"] == "ConfigMap")["metadata"]["name"]
	old, new = cm(a), cm(b)
	if old == new:
	    sys.exit(f"the edited configuration keeps the ConfigMap name {old}")
	text = lambda docs: [yaml.safe_dump(d).replace(cm(docs), "CM") for d in docs
	                     if d["kind"] != "ConfigMap"]
	if text(a) != text(b):
	    sys.exit("an edited configuration changed more than the ConfigMap's name")
	ref = [v["configMap"]["name"] for d in b if d["kind"] == "Deployment"
	       for v in d["spec"]["template"]["spec"]["volumes"]]
	if ref != [new]:
	    sys.exit(f"the Deployment mounts {ref}, not {new}")
	print(f"ConfigMap {old} -> {new}; the pod template follows (a rollout)")
EOF
) || die "an edited configuration: $res"
say "edited configuration: $res"

# -- a newer kubectl, when the machine has one --------------------------------
# Its Kustomize (v4 and later: kyaml) merges lists by other keys (a
# Service port by port and protocol): a patch that works with v2.0.3 may
# silently not apply there.
other=$(command -v kubectl || true)
if [ -n "$other" ] && [ "$(readlink -f "$other")" != "$(readlink -f "$kubectl")" ]; then
	v2=$("$other" version --client 2>/dev/null | head -n 1 || true)
	m=0
	for k in "$kube"/base/kustomization.yaml "$kube"/overlays/*/kustomization.yaml \
		"$repo/tests/kubernetes/renamed/kustomization.yaml"; do
		dir=$(dirname "$k")
		out=$work/other-$m.yaml
		render "$dir" "$out" "$other"
		opt=()
		[ "${dir##*/}" = renamed ] &&
			opt=(--prefix relay- --image registry.example.org/relays/lifeline:0.1.0)
		res=$(schema "${opt[@]}" "$out") || {
			say "$res"
			die "${dir#"$repo"/} rendered by $other ($v2) does not pass (above)"
		}
		m=$((m + 1))
	done
	say "$other ($v2): the same $m kustomizations render and pass"
fi

# -- the check itself can fail -------------------------------------------------
for r in base overlays-nlb-proxy; do
	res=$(schema --self-test "$work/$r.yaml") || {
		say "$res"
		die "kube-schema.py --self-test on $r (above)"
	}
	say "self-test on $r: $(tail -n 1 <<<"$res")"
done

say "kube-check: OK ($n kustomizations render with kubectl 1.20 and pass;" \
	"bad configuration refused; $((SECONDS - t_start)) s)"
