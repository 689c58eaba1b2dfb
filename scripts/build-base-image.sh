#!/usr/bin/env bash
# Build a local stand-in for the Dockerfile's base image (python:3.11-slim) without any container
# registry: debootstrap Debian bookworm with python3 + venv, import it into podman, and tag it with the
# name the Dockerfile's FROM uses, so the real Dockerfile builds unchanged with --pull=never.
# The Dockerfile's build stage uses python:3.11 (the full image, which has binutils for strip(1)): its
# stand-in is the same rootfs plus Debian's binutils (BUILD_TAG, tagged as BUILD_FROM_NAME).
# Cached: if an image already exists only its tag is (re)applied.
#
# Env: BASE_TAG (podman name of the stand-in), FROM_NAME (name the Dockerfile's FROM resolves to),
#      BUILD_TAG, BUILD_FROM_NAME (the same for the build stage),
#      SUITE (bookworm), DEBIAN_MIRROR (default: the Debian mirror apt already uses on this machine),
#      CONTAINERS_CONF (default: deploy/containers.conf).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_TAG=${BASE_TAG:-localhost/bookworm-py-graphviz:local}
FROM_NAME=${FROM_NAME:-docker.io/library/python:3.11-slim}
BUILD_TAG=${BUILD_TAG:-localhost/bookworm-py-build:local}
BUILD_FROM_NAME=${BUILD_FROM_NAME:-docker.io/library/python:3.11}
SUITE=${SUITE:-bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/containers.conf}

log() { printf '[build-base-image] %s\n' "$*" >&2; }

# The build stage's stand-in: the base plus binutils, installed with the base's own apt (network: the mirror).
build_stage_image() {
    if podman image exists "$BUILD_TAG"; then
        log "cached: $BUILD_TAG exists"
    else
        log "$BUILD_TAG: $BASE_TAG + binutils"
        local name=bookworm-py-build-$$
        podman rm -f "$name" >/dev/null 2>&1 || true
        podman run --name "$name" --network host "$BASE_TAG" sh -c 'apt-get update -q && \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends binutils && \
            rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb' >&2
        podman commit --quiet --change 'CMD ["python3"]' "$name" "$BUILD_TAG" >/dev/null
        podman rm -f "$name" >/dev/null
    fi
    podman tag "$BUILD_TAG" "$BUILD_FROM_NAME"
}

if podman image exists "$BASE_TAG"; then
    log "cached: $BASE_TAG exists"
    podman tag "$BASE_TAG" "$FROM_NAME"
    build_stage_image
    exit 0
fi

for tool in debootstrap podman; do
    command -v "$tool" >/dev/null || { log "missing $tool (apt-get install -y debootstrap podman)"; exit 1; }
done

# The Debian mirror apt is configured with (deb822 .sources or one-line .list); no host name is baked in.
detect_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$SUITE" '
            /^URIs:/   { uris = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            /^$/       { if (ok && uris) print uris; ok = 0; uris = "" }
            END        { if (ok && uris) print uris }' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }' || true
}
MIRROR=${DEBIAN_MIRROR:-$(detect_mirror | head -n 1 || true)}
[ -n "$MIRROR" ] || { log "no Debian mirror for $SUITE in /etc/apt/sources.list*; set DEBIAN_MIRROR"; exit 1; }

ROOTFS=$(mktemp -d /var/tmp/bookworm-py.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

log "debootstrap $SUITE from $MIRROR (about 1-2 minutes)"
start=$(date +%s)
# python3-venv brings ensurepip, so `python3 -m venv` gives a pip (Debian's own pip is PEP 668-locked).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,graphviz "$SUITE" "$ROOTFS" "$MIRROR" >&2
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

log "podman import -> $BASE_TAG"
tar -C "$ROOTFS" --numeric-owner -c . \
    | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_TAG" >/dev/null
podman tag "$BASE_TAG" "$FROM_NAME"
build_stage_image
log "done in $(( $(date +%s) - start )) s: $BASE_TAG tagged as $FROM_NAME"
