#!/usr/bin/env bash
# Build a local stand-in for the Dockerfile's base image (python:3.11-slim) without any container
# registry: debootstrap Debian bookworm with python3 + venv, import it into podman, and tag it with the
# name the Dockerfile's FROM uses, so the real Dockerfile builds unchanged with --pull=never.
# Cached: if the image already exists only the tag is (re)applied.
#
# Env: BASE_TAG (podman name of the stand-in), FROM_NAME (name the Dockerfile's FROM resolves to),
#      SUITE (bookworm), DEBIAN_MIRROR (default: the Debian mirror apt already uses on this machine),
#      CONTAINERS_CONF (default: deploy/containers.conf).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_TAG=${BASE_TAG:-localhost/bookworm-py-graphviz:local}
FROM_NAME=${FROM_NAME:-docker.io/library/python:3.11-slim}
SUITE=${SUITE:-bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/containers.conf}

log() { printf '[build-base-image] %s\n' "$*" >&2; }

if podman image exists "$BASE_TAG"; then
    log "cached: $BASE_TAG exists"
    podman tag "$BASE_TAG" "$FROM_NAME"
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
log "done in $(( $(date +%s) - start )) s: $BASE_TAG tagged as $FROM_NAME"
