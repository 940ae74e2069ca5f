#!/usr/bin/env bash
# Build (or reuse) the test images of Dockerfile.api and Dockerfile.worker with podman, on a
# Python 3.11 base made here from Debian's packages; print where they are.
#
#   tests/images/build.sh   -> stdout, one `name=value` a line:
#       podman=<the podman command line that sees these images, space separated>
#       base=localhost/downloader-base:<key>
#       api=localhost/downloader-api:<key>     worker=localhost/downloader-worker:<key>
#       tools_seconds=N base_seconds=N api_seconds=N worker_seconds=N   (0: nothing to do)
#
# No registry is reachable here, so the official python:3.11-slim-bookworm (the Dockerfiles'
# default BASE) cannot be pulled: the base is `mmdebstrap --variant=minbase` of bookworm with
# python3, python3-venv, python-is-python3 and ca-certificates, imported with `podman import`.
#
# Everything lives outside the repository, in ${DOWNLOADER_IMAGES_CACHE:-${XDG_CACHE_HOME:-
# ~/.cache}/downloader-images}: base-<key>.tar (key: the mmdebstrap arguments and version) and
# a podman store of its own (storage/, so pruning it touches nobody else's images), where
# each image is tagged with a hash of its inputs (this script, its Dockerfile, .dockerignore,
# every file of the build context the Dockerfiles copy, the base's key). A run with the same
# inputs prints the cached tags at once; a changed source reuses the dependency layer.
#
# pip inside the build reaches the package index only through this machine's TLS proxy: the
# host's CA bundle is mounted read-only at the same path for the RUN steps and PIP_CERT (a
# builder-stage ARG) points at it. It is never copied into an image. Logs go to stderr.
set -euo pipefail
export LC_ALL=C # stable sorting (the context hash)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${DOWNLOADER_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/downloader-images}
RUNROOT=${DOWNLOADER_IMAGES_RUNROOT:-/run/downloader-images}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
SUITE=bookworm
MMDEBSTRAP_ARGS=(--variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates "$SUITE")
# podman as the issue measured it works on this cgroup v1 (hybrid) host: runc (crun refuses
# hybrid cgroups) and cgroupfs (no systemd here); a store of our own.
PODMAN=(podman --root "$CACHE/storage" --runroot "$RUNROOT" --storage-driver overlay
    --runtime /usr/sbin/runc --cgroup-manager=cgroupfs)

log() { printf 'images/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "runs as root (mmdebstrap's root mode and podman's rootful store)"
start=$(date +%s)
"$ROOT/scripts/bootstrap" images # podman, runc, mmdebstrap from Debian's packages, when missing
tools_seconds=$(($(date +%s) - start))
for tool in podman mmdebstrap /usr/sbin/runc; do
    command -v "$tool" >/dev/null || die "$tool is missing after scripts/bootstrap images"
done

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one build at a time: the store and the tar are shared by every checkout

# ---- the base: a Debian bookworm with Python 3.11, from Debian's packages
base_key=$({
    mmdebstrap --version
    printf '%s\n' "${MMDEBSTRAP_ARGS[@]}"
} | sha256sum | cut -c1-16)
base_tar=$CACHE/base-$base_key.tar
base_ref=localhost/downloader-base:$base_key
base_seconds=0
if [[ ! -s $base_tar ]]; then
    start=$(date +%s)
    log "mmdebstrap ${MMDEBSTRAP_ARGS[*]} -> $base_tar"
    mmdebstrap --quiet --format=tar "${MMDEBSTRAP_ARGS[@]}" "$base_tar.partial" >&2
    mv -f "$base_tar.partial" "$base_tar"
    base_seconds=$(($(date +%s) - start))
fi
if ! "${PODMAN[@]}" image exists "$base_ref"; then
    start=$(date +%s)
    log "podman import $base_tar $base_ref"
    "${PODMAN[@]}" import --quiet "$base_tar" "$base_ref" >/dev/null
    base_seconds=$((base_seconds + $(date +%s) - start))
fi

# ---- the images
context_hash() { # the files of the build context the Dockerfiles copy (bytecode aside)
    (cd "$ROOT" && find pyproject.toml README.md COPYING downloader api worker k8s_operator \
        -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]' -print0 |
        sort -z | xargs -0 sha256sum)
}
context=$(context_hash | sha256sum | cut -c1-16)

declare -A refs seconds
for name in api worker; do
    dockerfile=$ROOT/Dockerfile.$name
    key=$(cat "$HERE/build.sh" "$dockerfile" "$ROOT/.dockerignore" <(printf '%s %s\n' "$base_key" "$context") |
        sha256sum | cut -c1-16)
    ref=localhost/downloader-$name:$key
    refs[$name]=$ref
    seconds[$name]=0
    if "${PODMAN[@]}" image exists "$ref"; then
        log "cached: $ref"
        continue
    fi
    start=$(date +%s)
    log "podman build -f Dockerfile.$name --build-arg BASE=$base_ref -> $ref"
    # --layers: the dependency layer of the builder stage is reused while pyproject.toml and
    # the Dockerfile's lines before it are unchanged (and the worker reuses the api's builder);
    # docker format keeps the api's HEALTHCHECK, which OCI's image config cannot hold.
    "${PODMAN[@]}" build --layers --format docker --network host \
        --volume "$CA_BUNDLE:$CA_BUNDLE:ro" \
        --build-arg "BASE=$base_ref" --build-arg "PIP_CERT=$CA_BUNDLE" \
        --file "$dockerfile" --tag "$ref" "$ROOT" >&2
    seconds[$name]=$(($(date +%s) - start))
    log "built $ref in ${seconds[$name]}s"
done

# ---- keep the newest few builds of each image (untagged build layers stay: the layer cache)
keep=${DOWNLOADER_IMAGES_KEEP:-3}
for name in api worker; do
    "${PODMAN[@]}" images --noheading --sort created --format '{{.Repository}}:{{.Tag}}' \
        "localhost/downloader-$name" | tail -n +"$((keep + 1))" | while read -r old; do
        [[ $old == "${refs[$name]}" ]] && continue
        # another checkout's test may still run a container of it: then it stays for now
        "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 && log "removed the old image $old" || log "kept $old (in use)"
    done
done
for old in "$CACHE"/base-*.tar; do
    [[ $old == "$base_tar" ]] || { log "removing the old base $old"; rm -f "$old"; }
done

printf 'podman=%s\n' "${PODMAN[*]}"
printf 'base=%s\napi=%s\nworker=%s\n' "$base_ref" "${refs[api]}" "${refs[worker]}"
printf 'tools_seconds=%s\nbase_seconds=%s\napi_seconds=%s\nworker_seconds=%s\n' "$tools_seconds" "$base_seconds" "${seconds[api]}" "${seconds[worker]}"
