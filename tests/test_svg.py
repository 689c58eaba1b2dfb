"""POST /v1/gradients with Accept: image/svg+xml: the autograd graph drawn by Graphviz, errors still problem+json."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from bench.svg_layout import network  # the audits' networks, measured there
from conftest import ROOT, TUTORIAL_NEURON, TestConfig, require_binary
from service import create_app
from service.engine import cost
from service.engine.deadline import DeadlineInterrupt, request_deadline
from service.engine.errors import DeadlineExceeded, LimitExceeded
from service.engine.limits import Limits
from service.render_svg import LARGE_GRAPH_LAYOUT, LARGE_LAYOUT_NODES, layout_nodes, number_text, render_svg, to_dot

SVG = "image/svg+xml"
PROBLEM = "application/problem+json"
NS = {"svg": "http://www.w3.org/2000/svg"}


@pytest.fixture()
def needs_dot():
    require_binary("dot", package="graphviz")


SIN_SQUARE = {"model": {"kind": "expression", "formula": "sin(x**2)"}, "inputs": {"x": 3}}


def picture(url: str, body: dict, accept: str = SVG) -> requests.Response:
    return requests.post(url + "/v1/gradients", json=body, headers={"Accept": accept}, timeout=30)


def node_texts(svg: bytes) -> dict[int, tuple[str, list[str]]]:
    """SVG node id -> (class, its text lines), read from the elements dot wrote for `id="node-<n>"`."""
    root = ET.fromstring(svg)
    nodes = {}
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        if g.get("id", "").startswith("node-"):
            lines = [t.text for t in g.findall("svg:text", NS)]
            nodes[int(g.get("id").removeprefix("node-"))] = (g.get("class"), lines)
    return nodes


@pytest.mark.usefixtures("needs_dot")
def test_tutorial_neuron_as_svg_carries_the_json_numbers(live_server):
    drawn = picture(live_server.url, TUTORIAL_NEURON)
    assert drawn.status_code == 200
    assert drawn.headers["Content-Type"].startswith(SVG)
    assert "default-src 'none'" in drawn.headers["Content-Security-Policy"]
    graph = requests.post(live_server.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=30).json()["graph"]
    nodes = node_texts(drawn.content)
    assert sorted(nodes) == [n["id"] for n in graph["nodes"]]
    for node in graph["nodes"]:
        cls, lines = nodes[node["id"]]
        assert lines[0] == node["op"]
        if node["value"] is not None:
            assert "value " + number_text(node["value"]) in lines
            assert "grad " + number_text(node["grad"]) in lines
        kind = "root" if node["id"] == graph["root"] else "leaf" if node["op"] == "AccumulateGrad" else "op"
        assert cls.split()[-1] == kind
    by_label = {lines[1]: lines for _, lines in nodes.values() if len(lines) > 1}
    assert "grad 6.691762" in by_label["w"] and "grad 0.9987705" in by_label["b"]  # the tutorial's 6.6918 / 0.9988
    assert "value 6.701176" in by_label["loss"]


@pytest.mark.usefixtures("needs_dot")
def test_svg_is_deterministic_and_needs_no_include(live_server):
    body = {**SIN_SQUARE, "include": []}  # the picture asks for the graph itself
    first, second = picture(live_server.url, body), picture(live_server.url, body)
    assert first.status_code == 200 and first.content == second.content
    texts = [line for _, lines in node_texts(first.content).values() for line in lines]
    assert "grad -5.4667816" in texts


@pytest.mark.usefixtures("needs_dot")
@pytest.mark.parametrize(
    "accept, expected",
    [
        ("*/*", "application/json"),
        ("application/json, image/svg+xml;q=0.5", "application/json"),
        ("image/svg+xml", SVG),
        ("image/*", SVG),
        ("text/html, image/svg+xml;q=0.9, */*;q=0.1", SVG),
    ],
)
def test_content_negotiation(client, accept, expected):
    r = client.post("/v1/gradients", json=SIN_SQUARE, headers={"Accept": accept})
    assert r.status_code == 200 and r.mimetype == expected


@pytest.mark.parametrize(
    "body, status, slug",
    [
        ({"model": {"kind": "expression", "formula": "sin(x**"}, "inputs": {"x": 3}}, 400, "invalid-formula"),
        ({"model": {"kind": "neuron"}, "inputs": {"x": 1}}, 400, "invalid-request"),
        ({**TUTORIAL_NEURON, "mode": "inference"}, 422, "no-graph"),
        ({"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": [1, 2]}}, 422, "non-scalar-output"),
    ],
)
def test_errors_stay_problem_json(client, body, status, slug):
    r = client.post("/v1/gradients", json=body, headers={"Accept": SVG})
    assert (r.status_code, r.mimetype) == (status, PROBLEM)
    assert r.json["type"] == "/problems/" + slug


def test_a_non_scalar_output_in_grad_mode_says_why_there_is_no_picture(client):
    """With `jacobian` a non-scalar output is answered, without a graph: the 422 names the output, not inference."""
    body = {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": [1, 2]}, "include": ["jacobian"]}
    r = client.post("/v1/gradients", json=body, headers={"Accept": SVG})
    assert (r.status_code, r.mimetype, r.json["type"]) == (422, PROBLEM, "/problems/no-graph")
    assert "not a scalar" in r.json["detail"] and "dout" in r.json["detail"] and "Inference" not in r.json["detail"]


SOFTMAX = {"type": "linear", "out_features": 3, "activation": "softmax"}
# audit 5a's S_B: 717 graph nodes, whose L2 edges cross ~21,000 ranks; dot's default layout took 10.5-28 s
SOFTMAX_64 = network([SOFTMAX] * 64)
# audit 5a's S_A: 63 batchnorm layers after one linear layer, 1,092 nodes (each layer has its own gamma and beta)
BATCHNORM_BLOCK = network([{"type": "linear", "out_features": 3}] + [{"type": "batchnorm"}] * 63)


def test_layout_nodes_count_the_ranks_an_edge_crosses():
    """A chain 0 <- 1 <- 2 <- 3 and a leaf 4 feeding 2 and 0: beside 3, its edge to 0 crosses the 2 ranks between,
    so dot lays out 5 + 2 nodes; the chain alone, 4."""
    chain = [{"from": i + 1, "to": i} for i in range(3)]
    nodes = [{"id": i} for i in range(5)]
    assert layout_nodes({"nodes": nodes[:4], "edges": chain}) == 4
    leaf = [{"from": 4, "to": 0}, {"from": 4, "to": 2}]
    assert layout_nodes({"nodes": nodes, "edges": chain + leaf}) == 7
    assert layout_nodes({"nodes": [], "edges": []}) == 0


def test_large_layouts_get_bounded_options(client):
    graph = client.post("/v1/gradients", json=network([SOFTMAX] * 32)).json["graph"]
    assert LARGE_LAYOUT_NODES < layout_nodes(graph) <= Limits().max_svg_layout_nodes
    assert LARGE_GRAPH_LAYOUT in to_dot(graph).splitlines()[1]
    small = client.post("/v1/gradients", json=SIN_SQUARE).json["graph"]
    assert "mclimit" not in to_dot(small)  # small graphs keep dot's full layout


@pytest.mark.usefixtures("needs_dot")
def test_a_layout_over_the_cap_is_a_413_before_dot_starts(client):
    """The refusal comes from counting, not from a cut-off dot: no dot child runs while the request is answered."""
    seen: set[int] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=watch_dot_children, args=(stop, seen))
    watcher.start()
    try:
        r = client.post("/v1/gradients", json=SOFTMAX_64, headers={"Accept": SVG})
    finally:
        stop.set()
        watcher.join(35)
    assert (r.status_code, r.mimetype) == (413, PROBLEM), r.data[:300]
    limit = r.json["limit"]
    assert limit["name"] == "max_svg_layout_nodes" and limit["estimate"] > limit["value"] == 12_000
    assert "application/json" in r.json["hint"] and "fewer layers" in r.json["hint"]
    assert not seen, "dot ran for a picture refused by its size"
    assert client.post("/v1/gradients", json=SOFTMAX_64).status_code == 200  # the JSON graph is still answered


@pytest.mark.usefixtures("needs_dot")
def test_audit_networks_live_refused_fast_or_drawn(live_server):
    """On gunicorn: S_B (a 64-layer softmax chain with L2) is a 413 naming the cap, within the deadline's slack rather
    than after it (it was a 503 at 10 s); the 63-batchnorm block (1,092 nodes, 3,370 laid out) and a 16-layer
    network are drawn."""
    started = time.monotonic()
    r = picture(live_server.url, SOFTMAX_64)
    assert (r.status_code, r.headers["Content-Type"]) == (413, PROBLEM)
    assert r.json()["limit"]["name"] == "max_svg_layout_nodes"
    assert time.monotonic() - started < Limits().max_wall_seconds / 2
    for body, nodes in ((BATCHNORM_BLOCK, 1000), (network([SOFTMAX] * 16), 150)):
        r = picture(live_server.url, body)
        assert (r.status_code, r.headers["Content-Type"].split(";")[0]) == (200, SVG), r.text[:300]
        assert len(node_texts(r.content)) > nodes


class SmallBudget(TestConfig):
    LIMITS = Limits(max_request_bytes=8 * 2**20)


def test_the_picture_is_charged_by_the_cost_model():
    """dot's start and its share per node (cost.svg_bytes) are in the estimate: a network whose JSON graph fits an
    8 MiB budget is refused as a picture, the `svg` part named."""
    small = create_app(SmallBudget).test_client()
    body = network([{"type": "linear", "out_features": 3, "activation": "relu"}] * 16, l2=False)
    assert small.post("/v1/gradients", json=body).status_code == 200
    r = small.post("/v1/gradients", json=body, headers={"Accept": SVG})
    assert (r.status_code, r.mimetype) == (413, PROBLEM)
    assert max(r.json["limit"]["breakdown"], key=r.json["limit"]["breakdown"].get) == "svg"
    assert r.json["limit"]["breakdown"]["svg"] >= cost.SVG_START_BYTES
    assert "application/json" in r.json["hint"]


def test_missing_graphviz_is_a_clear_501(client, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: the real lookup finds no `dot`
    r = client.post("/v1/gradients", json=TUTORIAL_NEURON, headers={"Accept": SVG})
    assert (r.status_code, r.mimetype) == (501, PROBLEM)
    assert r.json["type"] == "/problems/graphviz-not-installed"
    assert "graphviz" in r.json["detail"].lower()
    assert client.post("/v1/gradients", json=TUTORIAL_NEURON).status_code == 200  # JSON still works


TWO_NODES = {
    "root": 0,
    "nodes": [
        {"id": 0, "op": "SinBackward0", "label": 'say "hi" \\ <b>&', "shape": [], "value": "NaN", "grad": 1.0},
        {
            "id": 1,
            "op": "AccumulateGrad",
            "label": "x",
            "shape": [3],
            "value": [1.0, 2.0, 3.0],
            "grad": list(range(50)),
        },
    ],
    "edges": [{"from": 1, "to": 0}],
}


@pytest.mark.usefixtures("needs_dot")
def test_labels_are_escaped_and_long_tensors_cut():
    nodes = node_texts(render_svg(TWO_NODES, Limits()))
    assert nodes[0] == ("node root", ["SinBackward0", 'say "hi" \\ <b>&', "shape []", "value NaN", "grad 1.0"])
    leaf = nodes[1][1]
    assert "value [1.0,2.0,3.0]" in leaf
    grad = next(line for line in leaf if line.startswith("grad "))
    assert grad.endswith("…") and len(grad) == len("grad ") + 48


def test_dot_text_names_every_node_and_edge():
    text = to_dot(TWO_NODES)
    assert 'id="node-0", class="root"' in text and 'id="node-1", class="leaf"' in text
    assert 'n1 -> n0 [id="edge-0"]' in text
    assert '\\"hi\\" \\\\ <b>&' in text


def test_node_limit_and_a_spent_budget():
    with pytest.raises(LimitExceeded) as err:
        render_svg(TWO_NODES, Limits(max_graph_nodes=1))
    assert err.value.limit == "max_graph_nodes"
    with pytest.raises(DeadlineExceeded):
        render_svg(TWO_NODES, Limits(max_wall_seconds=0.0))


def slow_graph(n: int = 1000) -> dict:
    """A graph whose layout takes dot seconds (~15,000 layout nodes: 3.3 s of CPU measured, over the cap): every node
    has three edges to earlier nodes, so many crossings."""
    blank = {"op": "MulBackward0", "label": None, "shape": None, "value": None, "grad": None}
    return {
        "root": 0,
        "nodes": [{"id": i, **blank} for i in range(n)],
        "edges": [{"from": i, "to": (i * 7919 + j * 104729) % i} for i in range(1, n) for j in range(3)],
    }


def dot_children() -> set[int]:
    """Pids of this process's `dot` children, zombies included (a zombie is a child nobody reaped)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, tail = stat.read_text().rpartition(")")
        except OSError:
            continue
        if head.endswith("(dot") and int(tail.split()[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


def watch_dot_children(stop: threading.Event, seen: set[int]) -> None:
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        seen |= dot_children()
        time.sleep(0.01)


@pytest.mark.usefixtures("needs_dot")
@pytest.mark.parametrize("end", ["timer signal", "remaining budget"])
def test_the_deadline_kills_dot_mid_render(end):
    """The request's deadline fires while dot lays out: dot is killed and reaped, not left running or a zombie.

    "timer signal": the SIGALRM of engine/deadline.py interrupts the wait (gunicorn's sync worker, main thread);
    "remaining budget": outside the main thread there is no signal, and the wait times out at the request's end.
    """
    seen: set[int] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=watch_dot_children, args=(stop, seen))
    caught: list[BaseException] = []

    def render():
        try:
            with request_deadline(0.5):
                render_svg(slow_graph(), Limits(max_svg_layout_nodes=10**6))
        except BaseException as err:  # noqa: BLE001 - inspected below
            caught.append(err)

    watcher.start()
    started = time.monotonic()
    try:
        if end == "timer signal":
            render()
        else:
            worker = threading.Thread(target=render)
            worker.start()
            worker.join(30)
    finally:
        stop.set()
        watcher.join(35)
    assert len(caught) == 1
    assert isinstance(caught[0], DeadlineInterrupt if end == "timer signal" else DeadlineExceeded)
    assert time.monotonic() - started < 0.5 + 1.0  # the deadline plus generous slack, not dot's seconds of layout
    assert seen, "dot never ran: the graph must be slow enough to be cut off mid-render"
    assert not seen & dot_children(), "a dot child outlived the request's deadline"


def process_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/stat's fields by name (only those used here), {} once it has gone."""
    try:
        head, _, tail = Path(f"/proc/{pid}/stat").read_text().rpartition(")")
    except OSError:
        return {}
    fields = tail.split()
    return {"name": head.partition("(")[2], "state": fields[0], "ppid": fields[1], "pgid": fields[2]}


def children_named(parent: int, name: str) -> list[int]:
    """The children of a single-threaded `parent` named `name` (the kernel's list of them: no scan of /proc)."""
    try:
        pids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in pids if process_status(int(pid)).get("name") == name]


@pytest.mark.live
@pytest.mark.usefixtures("needs_dot")
def test_ctrl_c_lets_a_picture_being_drawn_finish(tmp_path):
    """Ctrl-C in the terminal of `make run` sends SIGINT to every process of its group: it killed the `dot` of a
    request the worker was finishing, and the client got a 500 graphviz-failed. `dot` now runs in a group of its own,
    the picture is answered and the server stops (exit 0); its CPU time is capped by the request's budget, so a
    worker that dies cannot leave it running."""
    from conftest import GunicornServer

    result: list = []
    with GunicornServer(workers=1, log_path=tmp_path / "server.log") as server:
        (worker,) = server.worker_pids()

        def draw():
            try:
                result.append(picture(server.url, BATCHNORM_BLOCK))
            except requests.RequestException as err:
                result.append(err)

        client = threading.Thread(target=draw)
        client.start()
        try:
            deadline, drawing = time.monotonic() + 20, []
            while not drawing and time.monotonic() < deadline and client.is_alive():
                drawing = children_named(worker, "dot")
                time.sleep(0.002)
            assert drawing, "dot was never seen running: the picture must take long enough to be interrupted"
            (dot,) = drawing
            status = process_status(dot)
            assert status["pgid"] != str(server.proc.pid)  # not in the group a terminal signals
            cpu = [line for line in Path(f"/proc/{dot}/limits").read_text().splitlines() if "cpu time" in line]
            assert cpu and "unlimited" not in cpu[0], cpu  # bounded, whoever is left to kill it
            os.killpg(server.proc.pid, signal.SIGINT)  # what the terminal does
        finally:
            client.join(40)
        code = server.proc.wait(40)
    (response,) = result
    assert isinstance(response, requests.Response), response
    assert (response.status_code, response.headers["Content-Type"].split(";")[0]) == (200, SVG), response.text[:300]
    assert code == 0
    assert not process_status(dot) or process_status(dot)["state"] == "Z", "dot outlived its request"


def test_openapi_documents_the_picture(client):
    doc = client.get("/openapi.json").json
    answers = doc["paths"]["/v1/gradients"]["post"]["responses"]
    assert SVG in answers["200"]["content"] and "501" in answers


@pytest.mark.usefixtures("needs_dot")
def test_documented_curl_writes_the_picture(live_server, tmp_path):
    require_binary("curl", package="curl")
    doc = (ROOT / "docs" / "playground.md").read_text()
    commands = [line for line in doc.splitlines() if line.startswith("curl ")]
    assert len(commands) == 1 and "Accept: image/svg+xml" in commands[0]
    command = commands[0].replace("localhost:8000", live_server.url)
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, timeout=30)
    svg = (tmp_path / "graph.svg").read_bytes()
    assert svg == picture(live_server.url, TUTORIAL_NEURON).content
    assert "grad 6.691762" in [line for _, lines in node_texts(svg).values() for line in lines]
