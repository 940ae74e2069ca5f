#!/usr/bin/env bash
# Build (or reuse) the binaries of the real test node (tests/node/node.py): kubelet,
# containerd, its runc shim, ctr and the pod sandbox's `pause`; print the directory holding them.
#
#   tests/node/build.sh   -> prints ${DOWNLOADER_NODE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/downloader-node}/<key>
#
# - kubelet: k8s.io/kubernetes/cmd/kubelet at K8S_VERSION, the k8s.io/kubernetes the test control
#   plane (tests/controlplane) is built from, through the module in kubelet/ beside this script
#   (`tool k8s.io/kubernetes/cmd/kubelet` and the control plane's staging replacements). A module
#   of its own: adding the kubelet to tests/controlplane/go.mod would change the control plane's
#   cache key. Most of its packages are the control plane's, already in Go's build cache.
#   Version stamped with the control plane's ldflags (the Node reports kubeletVersion v1.37.2).
# - containerd, containerd-shim-runc-v2, ctr: `go install` of github.com/containerd/containerd/v2
#   at CONTAINERD_VERSION (its go.mod has no replace directives: no module of ours is needed).
# - pause: k8s.io/kubernetes's own build/pause/linux/pause.c, compiled static with gcc; the
#   sandbox image is made of it by pause_image.py (no registry here: registry.k8s.io/pause
#   cannot be pulled).
#
# The key is a hash of this script, kubelet/go.mod, kubelet/go.sum, the Go and gcc versions: a
# run with the same inputs prints the cached directory at once. Logs (with the seconds each
# build took) go to stderr; stdout is the directory alone. Heavy builds run under `nice -n 19`,
# on every core unless the caller sets GOMAXPROCS (the tests build before their first test).
set -euo pipefail
export LC_ALL=C

K8S_VERSION=v1.37.2
CONTAINERD_VERSION=v2.4.2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE_ROOT=${DOWNLOADER_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/downloader-node}

log() { printf 'node/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# gcc + libc6-dev (static pause), runc, the CNI plugins, openssl (the kubelet's client
# certificate): installed from Debian's packages when missing, as for the image tests
"$ROOT/scripts/bootstrap" images
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
    export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || die "the go command is not on PATH"
command -v gcc >/dev/null || die "gcc is not on PATH after scripts/bootstrap images"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export CGO_ENABLED=0
NICE=(nice -n 19)

key=$({
    go env GOVERSION GOOS GOARCH CGO_ENABLED
    gcc --version | head -1
    for f in "$HERE/build.sh" "$HERE/kubelet/go.mod" "$HERE/kubelet/go.sum"; do
        printf '== %s\n' "${f#"$HERE"/}"
        cat "$f"
    done
} | sha256sum | cut -c1-16)
out=$CACHE_ROOT/$key
BINARIES=(kubelet containerd containerd-shim-runc-v2 ctr pause)

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock 9 # one build at a time: checkouts share the cache

have_all() { local b; for b in "${BINARIES[@]}"; do [[ -x $out/$b ]] || return 1; done; }
if have_all; then
    log "cached: $out"
    printf '%s\n' "$out"
    exit 0
fi
mkdir -p "$out"
timings=$out/build-seconds.txt

timed() { # name command... : run it, append "name seconds" to build-seconds.txt
    local name=$1 t0
    shift
    t0=$(date +%s)
    "$@"
    printf '%s %s\n' "$name" "$(($(date +%s) - t0))" | tee -a "$timings" >&2
}

module_field() { # module@version field (run inside kubelet/)
    go mod download -json "$1" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p"
}

if [[ ! -x $out/kubelet ]]; then
    log "building k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION (GOMAXPROCS=${GOMAXPROCS:-all cores})"
    k8s_sum=$(cd "$HERE/kubelet" && module_field "k8s.io/kubernetes@$K8S_VERSION" Sum)
    minor=${K8S_VERSION#v1.}
    minor=${minor%%.*}
    build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitCommit=$k8s_sum -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
    done
    (cd "$HERE/kubelet" && timed kubelet "${NICE[@]}" go build -mod=readonly -trimpath \
        -ldflags "$ldflags" -o "$out/kubelet.tmp.$$" k8s.io/kubernetes/cmd/kubelet)
    mv -f "$out/kubelet.tmp.$$" "$out/kubelet"
fi

if [[ ! -x $out/containerd || ! -x $out/containerd-shim-runc-v2 || ! -x $out/ctr ]]; then
    log "installing github.com/containerd/containerd/v2 $CONTAINERD_VERSION: containerd, containerd-shim-runc-v2, ctr"
    tmpbin=$(mktemp -d "$out/gobin.XXXXXX")
    pkg=github.com/containerd/containerd/v2
    ldflags="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Revision=module"
    # the module's own build tags of a static build without cgo (no btrfs, devmapper, zfs)
    (cd "$tmpbin" && GOBIN=$tmpbin GOFLAGS='' timed containerd "${NICE[@]}" go install -trimpath \
        -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ldflags" \
        "$pkg/cmd/containerd@$CONTAINERD_VERSION" \
        "$pkg/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
        "$pkg/cmd/ctr@$CONTAINERD_VERSION")
    mv -f "$tmpbin"/* "$out/"
    rmdir "$tmpbin"
fi

if [[ ! -x $out/pause ]]; then
    src=$(cd "$HERE/kubelet" && module_field "k8s.io/kubernetes@$K8S_VERSION" Dir)/build/pause/linux/pause.c
    [[ -s $src ]] || die "$src is missing"
    timed pause gcc -Os -Wall -static -DVERSION="$K8S_VERSION-downloader" -o "$out/pause.tmp.$$" "$src"
    strip "$out/pause.tmp.$$"
    mv -f "$out/pause.tmp.$$" "$out/pause"
fi

have_all || die "missing binaries in $out"
# keep the newest 3 builds (other checkouts may use them), drop older ones (~170 MB each); only
# key-named directories: anything else in the cache directory is not ours to remove
# shellcheck disable=SC2012 # hash-named directories: plain names, newest first
ls -1dt "$CACHE_ROOT"/*/ 2>/dev/null | tail -n +4 | while read -r old; do
    old=${old%/}
    [[ ${old##*/} =~ ^[0-9a-f]{16}$ && $old != "$out" ]] || continue
    log "removing the old build $old"
    rm -rf "$old"
done
log "built: $out ($(tr '\n' ' ' <"$timings"))"
printf '%s\n' "$out"
