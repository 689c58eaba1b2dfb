#!/usr/bin/env bash
# Build the real Dockerfile without a Docker engine or registry (podman + runc, a debootstrapped base image
# tagged as python:3.11-slim, Python packages from a host-built wheelhouse, --network none), run it on a
# free 127.0.0.1 port with a read-only root filesystem, and check it: /readyz, the tutorial neuron,
# non-root user, HEALTHCHECK.  All traffic stays on 127.0.0.1; every wait is bounded.
#
# Env: IMAGE (localhost/gradsvc:test), KEEP_IMAGE=1 (default) keeps the image for reuse,
#      IMAGE_LIVE_TESTS=1 (default) runs tests/test_live.py, test_readme.py, test_examples.py against it,
#      READY_TIMEOUT (seconds, 180), CONTAINERS_CONF (deploy/containers.conf).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
IMAGE=${IMAGE:-localhost/gradsvc:test}
READY_TIMEOUT=${READY_TIMEOUT:-180}
KEEP_IMAGE=${KEEP_IMAGE:-1}
PY=${PY:-$ROOT/.venv/bin/python}
WHEELHOUSE=.run/wheelhouse
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/containers.conf}

log() { printf '[image-test] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
now() { date +%s; }

# --- tools --------------------------------------------------------------------------------------------
missing=()
for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "missing ${missing[*]}; install them (apt-get install -y ${missing[*]})"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
fi
[ -x "$PY" ] || fail "no $PY (run make install first)"
[ -f service/wsgi.py ] || fail "service/wsgi.py does not exist yet"

# --- base image (cached) --------------------------------------------------------------------------------
t0=$(now)
"$ROOT/scripts/build-base-image.sh"
t_base=$(( $(now) - t0 ))

# --- wheelhouse: the app's dependencies as wheels for the image's Python (cp311, glibc) -------------
t0=$(now)
mkdir -p "$WHEELHOUSE"
"$PY" -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
    > .run/image-requirements.txt
log "pip wheel -> $WHEELHOUSE (pip's own configuration decides where packages come from)"
"$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$WHEELHOUSE" -r .run/image-requirements.txt >&2
t_wheels=$(( $(now) - t0 ))

# --- build --------------------------------------------------------------------------------------------
t0=$(now)
log "podman build $IMAGE (--network none --pull=never)"
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
version=$("$PY" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
# --layers=false: no intermediate image per step or stage is kept (they were ~1.25 GB of dangling images)
podman build --pull=never --network none --format docker --layers=false --build-arg PIP_NO_INDEX=1 \
    --build-arg VERSION="$version" -f Dockerfile -t "$IMAGE" . 2>&1 | tee .run/image-build.log >&2
label=$(podman image inspect --format '{{ index .Config.Labels "org.opencontainers.image.version" }}' "$IMAGE")
[ "$label" = "$version" ] || { log "image label version '$label' != pyproject.toml's '$version'"; exit 1; }
t_build=$(( $(now) - t0 ))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
# The previous build of this tag would stay behind as an untagged ~1 GB image: remove just that one.
if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true
fi

# --- run ----------------------------------------------------------------------------------------------
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The image as deployed, detached: host network, read-only root, tmpfs /tmp, 2 workers on 127.0.0.1:PORT.
run_container() {  # NAME PORT
    podman run -d --name "$1" --network host --read-only --tmpfs /tmp:rw,size=64m,mode=1777 \
        -e HOST=127.0.0.1 -e PORT="$2" -e WEB_CONCURRENCY=2 "$IMAGE" >/dev/null
}
PORT=$(free_port)
NAME=gradsvc-image-test-$$
cleanup() {
    podman rm -f --time 5 "$NAME" >/dev/null 2>&1 || true
    podman rm -f --time 5 "$NAME-starting" >/dev/null 2>&1 || true
    if [ "$KEEP_IMAGE" != 1 ]; then podman rmi -f "$IMAGE" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
log "podman run $NAME on 127.0.0.1:$PORT (host network, read-only root, tmpfs /tmp)"
t0=$(date +%s.%N)
run_container "$NAME" "$PORT"

BASE=http://127.0.0.1:$PORT
# Poll /readyz every 20 ms (the start takes ~2 s: whole-second polling hid it), and give up early if the
# container stopped. Prints the seconds from before `podman run` to the first 200.
ready=0
t_ready=$("$PY" - "$BASE/readyz" "$READY_TIMEOUT" "$NAME" "$t0" <<'PY'
import subprocess, sys, time, urllib.request
url, timeout, name, t0 = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
start = checked = time.monotonic()
while time.monotonic() - start < timeout:
    try:
        urllib.request.urlopen(url, timeout=2)
        print(f"{time.time() - t0:.2f}")
        sys.exit(0)
    except OSError:
        pass
    if time.monotonic() - checked > 1:
        checked = time.monotonic()
        inspect = ["podman", "inspect", "--format", "{{.State.Running}}", name]
        if subprocess.run(inspect, capture_output=True, text=True).stdout.strip() != "true":
            sys.exit(1)
    time.sleep(0.02)
sys.exit(1)
PY
) && ready=1
if [ "$ready" != 1 ]; then
    podman logs "$NAME" 2>&1 | tail -n 40 >&2
    fail "/readyz not 200 within ${READY_TIMEOUT}s"
fi

# The tutorial neuron: x=6.7, y=0, w=1, b=0 -> loss = -log(1 - sigmoid(6.7)) = 6.7012...
BASE="$BASE" "$PY" - <<'PY' || fail "neuron check"
import json, os, urllib.request
req = urllib.request.Request(
    os.environ["BASE"] + "/v1/gradients",
    data=json.dumps({"model": {"kind": "neuron"}, "inputs": {"x": 6.7, "y": 0, "w": 1, "b": 0}}).encode(),
    headers={"Content-Type": "application/json", "X-Request-ID": "image-test"},
)
with urllib.request.urlopen(req, timeout=10) as resp:
    body = json.load(resp)
loss = body["loss"]
assert abs(loss - 6.7012) < 1e-3, f"loss {loss!r} is not ~6.7012"
print(f"[image-test] neuron loss={loss:.6f} gradients={body['gradients']}")
# The same graph drawn by the image's pruned Graphviz (scripts/prune-graphviz.py): an SVG with its labels.
req.add_header("Accept", "image/svg+xml")
with urllib.request.urlopen(req, timeout=10) as resp:
    kind, svg = resp.headers["Content-Type"], resp.read().decode()
assert kind.startswith("image/svg+xml") and "<svg" in svg and "</text>" in svg, (kind, svg[:300])
print(f"[image-test] neuron graph as SVG: {len(svg)} bytes, {svg.count('</text>')} text labels")
PY

uid=$(podman exec "$NAME" id -u)
[ "$uid" != 0 ] || fail "container runs as root"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
podman healthcheck run "$NAME" >/dev/null || fail "HEALTHCHECK failed"
if podman logs "$NAME" 2>&1 | grep -E "Traceback|Control server error|Permission denied" >&2; then
    fail "errors in the container log"
fi

# The live tests (HTTP against a real server: the README's examples, examples/, hostile input) against the
# container, so the pruned venv is shown to serve every documented path.  The master's thread count is a
# property of the process tree, not the image: that one test needs the local gunicorn.
if [ "${IMAGE_LIVE_TESTS:-1}" = 1 ]; then
    log "live tests against the container"
    GRADSVC_LIVE_URL=http://127.0.0.1:$PORT "$ROOT/.venv/bin/pytest" -q -p no:cacheprovider \
        tests/test_live.py tests/test_readme.py tests/test_examples.py \
        --deselect tests/test_live.py::test_preloaded_master_runs_no_torch_op >&2 || fail "live tests in the image"
fi

# A container stopped while it starts (a rollout that is rolled back, a scale-down): SIGTERM once the workers
# are booting, i.e. warming up. gunicorn installs a worker's own handlers only after the warm-up, and a stop
# signal that arrived before used to be swallowed: `podman stop` then took GUNICORN_GRACEFUL_TIMEOUT (30 s).
STARTING=$NAME-starting
run_container "$STARTING" "$(free_port)"
for _ in $(seq 1 1000); do podman logs "$STARTING" 2>&1 | grep -q "Booting worker" && break; sleep 0.01; done
t0=$(date +%s.%N)
podman stop --time 25 "$STARTING" >/dev/null
t_stop=$("$PY" -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$t0")
stopped_log=$(podman logs "$STARTING" 2>&1)
podman rm -f "$STARTING" >/dev/null 2>&1 || true
log "stopped while its workers warmed up: ${t_stop}s"
echo "$stopped_log" | grep -q "Shutting down: Master" || { echo "$stopped_log" | tail -n 20 >&2; fail "no graceful stop"; }
"$PY" -c "import sys; sys.exit(float(sys.argv[1]) >= 10)" "$t_stop" || fail "stop while starting took ${t_stop}s"

log "PASS"
log "timings: base image ${t_base}s, wheelhouse ${t_wheels}s, image build ${t_build}s, start->ready ${t_ready}s, stop while starting ${t_stop}s"
grep -E '^ +[0-9.]+ MB|^ +byte code|^prune-' .run/image-build.log | sed 's/^/[image-test] /' >&2 || true
log "image $IMAGE size $(( size / 1000000 )) MB; runs as uid $uid (USER $user); healthcheck ok"
