"""The HTTP contract of DESIGN.md through Flask's test client: numbers, shapes, modes, and every error status."""

from __future__ import annotations

import json
import math

import pytest

from conftest import TUTORIAL_NEURON

PROBLEM = "application/problem+json"


def post(client, body, **kwargs):
    return client.post("/v1/gradients", json=body, **kwargs)


def expression(formula=None, name=None, **inputs):
    model = {"kind": "expression", **({"formula": formula} if formula else {"name": name})}
    return {"model": model, "inputs": inputs}


# --- the tutorial's printed numbers ---------------------------------------------------------------


def test_tutorial_neuron(client):
    body = post(client, {**TUTORIAL_NEURON, "include": ["graph", "intermediates", "manual"]}).json
    assert round(body["loss"], 4) == 6.7012
    assert round(body["gradients"]["w"], 4) == 6.6918
    assert round(body["gradients"]["b"], 4) == 0.9988
    assert body["requires_grad"] is True and body["mode"] == "grad" and body["dtype"] == "float32"
    assert round(body["intermediates"]["y_pred"]["value"], 4) == 0.9988
    assert body["manual"]["max_abs_diff"] < 1e-5
    assert body["warnings"] == []


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("square", 3.0, 6.0),
        ("sin_square", 3.0, -5.4668),
        ("mean_square", [1.0, 2.0, 3.0], [0.6667, 1.3333, 2.0]),
    ],
)
def test_tutorial_expressions(client, name, x, expected):
    body = post(client, expression(name=name, x=x)).json
    grad = body["gradients"]["x"]
    assert (round(grad, 4) if isinstance(grad, float) else [round(g, 4) for g in grad]) == expected


def test_same_formula_by_text(client):
    by_name = post(client, expression(name="sin_square", x=3.0)).json
    by_text = post(client, expression(formula="sin(x**2)", x=3.0)).json
    assert by_text["gradients"] == by_name["gradients"]


def test_inference_mode_tracks_nothing(client):
    body = post(client, {**TUTORIAL_NEURON, "mode": "inference", "include": ["graph", "intermediates"]}).json
    assert body["requires_grad"] is False
    assert body["gradients"] is None and body["graph"] is None
    assert round(body["loss"], 4) == 6.7012
    assert body["intermediates"]["z"]["grad"] is None


def test_inference_mode_warns_about_gradient_extras(client):
    body = post(client, {**TUTORIAL_NEURON, "mode": "inference", "include": ["numeric", "hessian"]}).json
    assert body["numeric"] is None and body["hessian"] is None
    assert any("numeric" in w for w in body["warnings"]) and any("hessian" in w for w in body["warnings"])


def test_inference_allows_non_scalar_output(client):
    body = post(client, {**expression(formula="x**2", x=[1, 2]), "mode": "inference"}).json
    assert body["loss"] == [1.0, 4.0]


@pytest.mark.parametrize(
    ("request_body", "loss"),
    [
        ({**TUTORIAL_NEURON, "dout": 3.0}, 6.701176),
        ({**expression(formula="x**2", x=[1, 2]), "dout": [10.0, 0.0]}, [1.0, 4.0]),
        ({**expression(formula="x**2", x=[1, 2]), "dout": [10.0, 0.0, 5.0]}, [1.0, 4.0]),  # its shape: never read
    ],
)
def test_inference_loss_is_the_forward_value_whatever_dout_says(client, request_body, loss):
    """Grad mode's `loss` with `dout` is sum(dout * output), the scalar backward() starts from; inference runs no
    backward: its `loss` is the model's output, and the ignored `dout` is said to be."""
    body = post(client, {**request_body, "mode": "inference", "include": []}).json
    assert body["loss"] == loss
    assert body["warnings"] == [
        "dout is ignored in inference mode: `loss` is the model's output, not its sum weighted by dout"
    ]


def test_inference_warns_of_jacobian_and_tangents_it_does_not_compute(client):
    request_body = {**expression(formula="x**2", x=[1, 2]), "mode": "inference", "tangents": {"x": [1.0, 0.0]}}
    body = post(client, {**request_body, "include": ["jacobian", "hessian"]}).json
    assert "jacobian" not in body and "jvp" not in body and body["loss"] == [1.0, 4.0]
    assert body["warnings"] == [
        "hessian needs gradients: not computed in inference mode",
        "jacobian needs gradients: not computed in inference mode",
        "jvp (`tangents`) needs gradients: not computed in inference mode",
    ]


@pytest.mark.parametrize(
    ("extra", "answered"),
    [
        ({"include": ["jacobian", "graph", "dot", "intermediates", "manual", "numeric", "hessian"]}, "jacobian"),
        ({"tangents": {"x": [1.0, 0.0]}}, "jvp"),
    ],  # default include: graph
    ids=["jacobian", "tangents"],
)
def test_a_non_scalar_output_warns_of_each_extra_it_could_not_compute(client, extra, answered):
    """Without `dout`, a non-scalar output answers `jacobian`/`jvp` and its intermediates' values; every other extra
    asked for is null, and a warning says why for each."""
    body = post(client, {**expression(formula="x**2*y", x=[1.0, 2.0], y=3.0), **extra}).json
    assert body[answered] and body["gradients"] is None
    asked = extra.get("include", ["graph"])
    missing = [name for name in ("graph", "dot", "manual", "numeric", "hessian") if name in asked]
    assert all(body[name] is None for name in missing)
    assert body["warnings"] == [
        "gradients need a scalar output: send `dout` for the vector-Jacobian product",
        *(f"{name} needs a scalar output: not computed (send `dout`)" for name in missing),
    ]
    if "intermediates" in asked:
        assert body["intermediates"]["x ** 2 * y"]["value"] == [3.0, 12.0]


@pytest.mark.parametrize(
    ("x", "beyond"),
    [
        (1e39, 1),
        ([1e39, -1e39, 1.0, "Infinity", "NaN"], 2),  # an infinity sent as such is the client's, not a cast's
        (["NaN", 3.4028235677973366e38, 3.4028235e38], 1),  # the first that rounds to infinity; below it, FLT_MAX
        ([1.0] * 5000 + [-3.5e38], 1),  # a long tensor: screened by torch, not Python
    ],
)
def test_a_finite_input_beyond_float32_is_named_in_a_warning(client, x, beyond):
    """1e39 is a finite JSON number, but infinite in float32: the warning names the input and the cure."""
    request_body = {**expression(formula="sum(x*0)", x=x), "include": []}
    body = post(client, request_body).json
    count = len(x) if isinstance(x, list) else 1
    warning = (
        f"inputs.x: {beyond} of {count} value(s) beyond float32's range (|v| > 3.4e38) became infinite; "
        'send "dtype": "float64"'
    )
    assert body["warnings"][0] == warning and body["loss"] == "NaN"
    assert not any(w.startswith("inputs.") for w in post(client, {**request_body, "dtype": "float64"}).json["warnings"])


# --- neuron shapes and reductions ---------------------------------------------------------------

BATCH = {"x": [[1.0, 2.0], [3.0, 4.0], [-5.0, 6.0]], "y": [0.0, 1.0, 1.0], "w": [0.1, -0.2], "b": 0.3}


def neuron(reduction="mean", loss="bce", **inputs):
    return {"model": {"kind": "neuron", "loss": loss, "reduction": reduction}, "inputs": inputs or BATCH}


def test_reductions_agree(client):
    none = post(client, neuron("none")).json
    mean = post(client, neuron("mean")).json
    total = post(client, neuron("sum")).json
    losses = none["loss"]
    assert len(losses) == 3
    assert mean["loss"] == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert total["loss"] == pytest.approx(sum(losses), rel=1e-6)
    per_sample_w = none["gradients"]["w"]
    assert [len(row) for row in per_sample_w] == [2, 2, 2]
    for j in range(2):
        assert total["gradients"]["w"][j] == pytest.approx(sum(row[j] for row in per_sample_w), rel=1e-5)
        assert mean["gradients"]["w"][j] == pytest.approx(sum(row[j] for row in per_sample_w) / 3, rel=1e-5)
    assert total["gradients"]["b"] == pytest.approx(sum(none["gradients"]["b"]), rel=1e-5)


def test_per_sample_gradients_equal_single_requests(client):
    none = post(client, neuron("none")).json
    for i in range(3):
        single = post(client, neuron(x=BATCH["x"][i], y=BATCH["y"][i], w=BATCH["w"], b=BATCH["b"])).json
        assert single["loss"] == pytest.approx(none["loss"][i], rel=1e-6)
        assert single["gradients"]["w"] == pytest.approx(none["gradients"]["w"][i], rel=1e-5)
        assert single["gradients"]["b"] == pytest.approx(none["gradients"]["b"][i], rel=1e-5)


def test_feature_vector_and_scalar_weight_batches(client):
    vec = post(client, neuron(x=[1.0, 2.0], y=1.0, w=[0.5, -0.5], b=0.0)).json
    assert isinstance(vec["gradients"]["w"], list) and len(vec["gradients"]["w"]) == 2
    scalars = post(client, neuron(x=[1.0, 2.0, 3.0], y=[0.0, 1.0, 0.0], w=0.5, b=0.0)).json
    assert isinstance(scalars["gradients"]["w"], float)


def test_bce_with_logits_matches_bce_where_clamp_is_idle(client):
    a = post(client, {**neuron(), "dtype": "float64"}).json
    b = post(client, {**neuron(loss="bce_with_logits"), "dtype": "float64"}).json
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-9)
    assert b["gradients"]["w"] == pytest.approx(a["gradients"]["w"], rel=1e-9)


def test_float32_top_end_is_reported_and_logits_cure_it(client):
    inputs = {"x": 20.0, "y": 0.0, "w": 1.0, "b": 0.0}
    bad = post(client, {"model": {"kind": "neuron"}, "inputs": inputs}).json
    assert bad["loss"] == "Infinity"
    assert any("bce_with_logits" in w for w in bad["warnings"])
    good = post(client, {"model": {"kind": "neuron", "loss": "bce_with_logits"}, "inputs": inputs}).json
    assert good["loss"] == pytest.approx(20.0, rel=1e-6) and good["warnings"] == []
    f64 = post(client, {"model": {"kind": "neuron"}, "inputs": inputs, "dtype": "float64"}).json
    assert f64["loss"] == pytest.approx(-math.log(1e-8), rel=1e-9)  # finite: the clamp works in float64
    assert any("clamping hit" in w for w in f64["warnings"])


def test_clamp_hit_warns(client):
    body = post(client, {"model": {"kind": "neuron"}, "inputs": {"x": -30.0, "y": 1.0, "w": 1.0, "b": 0.0}}).json
    assert any("clamping hit" in w for w in body["warnings"])


@pytest.mark.parametrize("loss", ["bce", "bce_with_logits"])
def test_targets_outside_0_1_are_computed_with_a_warning(client, loss):
    """BCE's targets are probabilities: y = 2 still computes (a negative loss here) but says why it means nothing."""
    inputs = {"x": 1.0, "y": 2.0, "w": 1.0, "b": 0.0}
    body = post(client, {"model": {"kind": "neuron", "loss": loss}, "inputs": inputs}).json
    assert body["loss"] < 0
    assert body["warnings"] == [
        "y outside [0, 1] for 1 of 1 sample(s): binary cross-entropy takes probabilities as targets, "
        "so the loss is not a cross-entropy there (it can be negative)"
    ]
    soft = post(client, {"model": {"kind": "neuron", "loss": loss}, "inputs": {**inputs, "y": 0.25}}).json
    assert soft["warnings"] == []  # soft labels in [0, 1] are fine


def test_wrt_selects_leaves(client):
    body = post(client, {**TUTORIAL_NEURON, "wrt": ["x"]}).json
    assert set(body["gradients"]) == {"x"}
    assert body["gradients"]["x"] == pytest.approx(0.9988, abs=1e-4)  # dL/dx = (y_pred - y) * w


def test_float64_dtype_echoed_and_more_precise(client):
    body = post(client, {**expression(name="sin_square", x=3.0), "dtype": "float64"}).json
    assert body["dtype"] == "float64"
    assert body["gradients"]["x"] == pytest.approx(-5.466781571308061, rel=1e-12)


# --- extras ---------------------------------------------------------------------------------------


def test_numeric_and_manual_agree_with_autograd(client):
    body = post(client, {**neuron(), "include": ["numeric", "manual"], "dtype": "float64"}).json
    assert body["numeric"]["max_abs_error"] < 1e-6
    assert body["numeric"]["max_rel_error"] < 1e-6
    assert body["manual"]["max_abs_diff"] < 1e-12


def test_relative_error_is_nan_where_a_side_is_nan(client):
    """log(x) at 0: autograd says Infinity, the finite difference NaN; that is no agreement, in either error."""
    body = post(client, {**expression(formula="log(x)", x=0.0), "include": ["numeric"]}).json
    assert body["gradients"]["x"] == "Infinity" and body["numeric"]["gradients"]["x"] == "NaN"
    assert body["numeric"]["max_abs_error"] == "NaN" and body["numeric"]["max_rel_error"] == "NaN"
    assert any(w.startswith("numeric.max_rel_error") for w in body["warnings"]), body["warnings"]
    both_zero = post(client, {**expression(formula="x*0", x=1.0), "include": ["numeric"]}).json
    assert both_zero["numeric"]["max_rel_error"] == 0.0


def test_free_form_formula_has_no_manual(client):
    body = post(client, {**expression(formula="sum(x**3)", x=[1.0, 2.0]), "include": ["manual"]}).json
    assert body["manual"] is None and any("manual" in w for w in body["warnings"])


def test_hessian_of_cubic(client):
    body = post(
        client, {**expression(formula="x**3 + x*y", x=2.0, y=1.0), "include": ["hessian"], "dtype": "float64"}
    ).json
    h = body["hessian"]
    assert h["x"]["x"] == pytest.approx(12.0) and h["x"]["y"] == pytest.approx(1.0)
    assert h["y"]["y"] == pytest.approx(0.0)


def test_hessian_needs_scalar_loss(client):
    r = post(client, {**neuron("none"), "include": ["hessian"]})
    assert r.status_code == 422 and r.json["type"] == "/problems/non-scalar-output"


def test_graph_is_deterministic_and_names_leaves(client):
    first = post(client, TUTORIAL_NEURON)
    second = post(client, TUTORIAL_NEURON)
    assert first.data == second.data
    graph = first.json["graph"]
    leaves = {n["label"] for n in graph["nodes"] if n["op"] == "AccumulateGrad"}
    assert leaves == {"w", "b"}
    assert graph["nodes"][graph["root"]]["label"] == "loss"
    ids = {n["id"] for n in graph["nodes"]}
    assert all(e["from"] in ids and e["to"] in ids for e in graph["edges"])


def test_shared_subexpression_appears_once(client):
    graph = post(client, expression(formula="sin(x**2) + x**2", x=1.5)).json["graph"]
    assert [n["op"] for n in graph["nodes"]].count("PowBackward0") == 1


def test_dot_output(client):
    body = post(client, {**TUTORIAL_NEURON, "include": ["dot"]}).json
    assert body["dot"].startswith("digraph") and "SigmoidBackward0" in body["dot"]
    assert body["graph"] is None


def test_intermediates_of_a_formula(client):
    body = post(client, {**expression(formula="sin(x**2)", x=3.0), "include": ["intermediates"]}).json
    inter = body["intermediates"]
    assert inter["x ** 2"]["value"] == 9.0
    assert inter["x ** 2"]["grad"] == pytest.approx(-0.911130, abs=1e-5)  # cos(9)


def test_identical_requests_identical_answers_nothing_accumulates(client):
    answers = {post(client, expression(name="square", x=3.0)).data for _ in range(5)}
    assert len(answers) == 1
    assert json.loads(answers.pop())["gradients"]["x"] == 6.0


def test_non_finite_inputs_round_trip(client):
    body = post(client, expression(formula="sum(x)", x=[1.0, "NaN"])).json
    assert body["loss"] == "NaN" and body["warnings"]
    body = post(client, expression(formula="sum(x)", x=["Infinity", 1.0])).json
    assert body["loss"] == "Infinity"


# --- GET endpoints --------------------------------------------------------------------------------


def test_models_catalog(client):
    body = client.get("/v1/models").json
    names = {e["name"] for e in body["expressions"]}
    assert {"square", "sin_square", "mean_square"} <= names
    assert {"sin", "cos", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "sum", "mean"} <= {
        f["name"] for f in body["functions"]
    }
    assert body["limits"]["max_tensor_elements"] > 0 and "max_body_bytes" in body["limits"]
    # counts stay integers on the wire (marshmallow's Float would make 1048576 into 1048576.0)
    assert type(body["limits"]["max_tensor_elements"]) is int and type(body["limits"]["max_body_bytes"]) is int
    assert type(body["limits"]["max_wall_seconds"]) is float


def test_catalog_formulas_post_back(client):
    """Every catalog formula and gradient is written in the formula language a client can post."""
    for entry in client.get("/v1/models").json["expressions"]:
        by_text = post(
            client,
            {
                "model": {"kind": "expression", "formula": entry["formula"]},
                "inputs": entry["example"],
                "dtype": "float64",
            },
        )
        assert by_text.status_code == 200, (entry["name"], by_text.json)
        for var, grad_formula in entry["gradient"].items():
            r = post(
                client,
                {
                    "model": {"kind": "expression", "formula": grad_formula},
                    "inputs": entry["example"],
                    "mode": "inference",
                    "dtype": "float64",
                },
            )
            assert r.status_code == 200, (entry["name"], var, r.json)


def test_health_and_ready(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


# --- errors: one row per kind of bad input ------------------------------------------------------

NESTED = json.dumps({"model": {"kind": "expression", "formula": "sum(x)"}, "inputs": {"x": [[[[1]]]]}})
DEEP = '{"model":{"kind":"expression","formula":"sum(x)"},"inputs":{"x":' + "[" * 5000 + "1" + "]" * 5000 + "}}"

ERROR_MATRIX = [
    # (id, body, status, problem type, where in the body the message must be)
    ("unknown kind", {"model": {"kind": "nope"}, "inputs": {}}, 400, "invalid-request", ("errors", "model", "kind")),
    ("missing model", {"inputs": {"x": 1}}, 400, "invalid-request", ("errors", "model")),
    ("missing inputs", {"model": {"kind": "neuron"}}, 400, "invalid-request", ("errors", "inputs")),
    ("unknown top field", {**TUTORIAL_NEURON, "extra": 1}, 400, "invalid-request", ("errors", "extra")),
    (
        "unknown model field",
        {"model": {"kind": "neuron", "bogus": 1}, "inputs": TUTORIAL_NEURON["inputs"]},
        400,
        "invalid-request",
        ("errors", "model", "bogus"),
    ),
    (
        "neuron input missing",
        {"model": {"kind": "neuron"}, "inputs": {"x": 1, "y": 0, "w": 1}},
        400,
        "invalid-request",
        ("errors", "inputs", "b"),
    ),
    (
        "neuron input extra",
        {"model": {"kind": "neuron"}, "inputs": {**TUTORIAL_NEURON["inputs"], "q": 1}},
        400,
        "invalid-request",
        ("errors", "inputs", "q"),
    ),
    ("bad mode", {**TUTORIAL_NEURON, "mode": "train"}, 400, "invalid-request", ("errors", "mode")),
    ("bad dtype", {**TUTORIAL_NEURON, "dtype": "float16"}, 400, "invalid-request", ("errors", "dtype")),
    ("bad include", {**TUTORIAL_NEURON, "include": ["everything"]}, 400, "invalid-request", ("errors", "include")),
    (
        "bad reduction",
        {"model": {"kind": "neuron", "reduction": "max"}, "inputs": TUTORIAL_NEURON["inputs"]},
        400,
        "invalid-request",
        ("errors", "model", "reduction"),
    ),
    (
        "bad epsilon",
        {"model": {"kind": "neuron", "epsilon": 0.9}, "inputs": TUTORIAL_NEURON["inputs"]},
        400,
        "invalid-request",
        ("errors", "model", "epsilon"),
    ),
    ("ragged tensor", expression(formula="sum(x)", x=[[1, 2], [3]]), 400, "invalid-request", ("errors", "inputs", "x")),
    ("string element", expression(formula="sum(x)", x=[1, "2"]), 400, "invalid-request", ("errors", "inputs", "x")),
    ("boolean element", expression(formula="sum(x)", x=[True]), 400, "invalid-request", ("errors", "inputs", "x")),
    ("null tensor", expression(formula="sum(x)", x=None), 400, "invalid-request", ("errors", "inputs", "x")),
    (
        "bad input name",
        {"model": {"kind": "expression", "formula": "1"}, "inputs": {"1x": 1}},
        400,
        "invalid-request",
        ("errors", "inputs"),
    ),
    (
        "name and formula",
        {"model": {"kind": "expression", "name": "square", "formula": "x"}, "inputs": {"x": 1}},
        400,
        "invalid-request",
        ("errors", "model"),
    ),
    ("duplicate wrt", {**TUTORIAL_NEURON, "wrt": ["w", "w"]}, 400, "invalid-request", ("errors", "wrt")),
    ("empty wrt", {**TUTORIAL_NEURON, "wrt": []}, 400, "invalid-request", ("errors", "wrt")),
    ("body is a list", [1, 2], 400, "invalid-request", ("errors",)),
    ("eval attempt", expression(formula="__import__('os').system('true')", x=1), 400, "invalid-formula", ("detail",)),
    ("attribute", expression(formula="x.real", x=1), 400, "invalid-formula", ("detail",)),
    ("syntax error", expression(formula="x +", x=1), 400, "invalid-formula", ("detail",)),
    ("unknown function", expression(formula="open(x)", x=1), 400, "invalid-formula", ("detail",)),
    ("unknown variable", expression(formula="x + z", x=1), 422, "unknown-variable", ("detail",)),
    ("wrt not an input", {**expression(formula="x", x=1), "wrt": ["q"]}, 422, "unknown-variable", ("detail",)),
    ("unknown catalog name", expression(name="nonesuch", x=1), 422, "unknown-expression", ("detail",)),
    ("non-scalar output", expression(formula="x**2", x=[1, 2]), 422, "non-scalar-output", ("detail",)),
    ("broadcast mismatch", expression(formula="sum(x*y)", x=[1, 2], y=[1, 2, 3]), 422, "shape-mismatch", ("detail",)),
    (
        "neuron w vs x",
        {"model": {"kind": "neuron"}, "inputs": {"x": [1, 2], "y": 0, "w": [1, 2, 3], "b": 0}},
        422,
        "shape-mismatch",
        ("detail",),
    ),
    (
        "neuron y vs samples",
        {"model": {"kind": "neuron"}, "inputs": {"x": [[1, 2]], "y": [0, 1], "w": [1, 2], "b": 0}},
        422,
        "shape-mismatch",
        ("detail",),
    ),
    (
        "neuron b vector",
        {"model": {"kind": "neuron"}, "inputs": {"x": 1, "y": 0, "w": 1, "b": [0, 0]}},
        422,
        "shape-mismatch",
        ("detail",),
    ),
    ("formula too long", expression(formula="x+" * 1000 + "x", x=1), 413, "limit-exceeded", ("limit", "name")),
    ("unary chain", expression(formula="+" * 200_000 + "x", x=1), 413, "limit-exceeded", ("limit", "name")),
    ("too many dims", expression(formula="sum(x)", x=[[[[[[[[[1]]]]]]]]]), 413, "limit-exceeded", ("limit", "name")),
    ("too many elements", expression(formula="sum(x)", x=[0] * 3_000_000), 413, "limit-exceeded", ("limit", "name")),
    (
        "numeric too big",
        {**expression(formula="sum(x)", x=[0.0] * 2000), "include": ["numeric"]},
        413,
        "limit-exceeded",
        ("limit", "name"),
    ),
    (
        "hessian too big",
        {**expression(formula="sum(x)", x=[0.0] * 200), "include": ["hessian"]},
        413,
        "limit-exceeded",
        ("limit", "name"),
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "kind", "where"), [row[1:] for row in ERROR_MATRIX], ids=[row[0] for row in ERROR_MATRIX]
)
def test_error_matrix(client, body, status, kind, where):
    r = post(client, body)
    assert r.status_code == status, r.json
    assert r.mimetype == PROBLEM
    problem = r.json
    assert problem["type"] == f"/problems/{kind}" and problem["status"] == status
    assert problem["title"] and problem["detail"]
    node = problem
    for key in where:
        assert key in node, (key, problem)
        node = node[key]
    assert node


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "kind"),
    [
        (b"{", "application/json", 400, "malformed-json"),
        (b"", "application/json", 400, "malformed-json"),
        (b'{"model": NaN}', "application/json", 400, "malformed-json"),
        (b"1e400", "application/json", 400, "malformed-json"),
        (DEEP.encode(), "application/json", 400, "malformed-json"),
        (b"\xff\xfe", "application/json", 400, "malformed-json"),
        (json.dumps(TUTORIAL_NEURON).encode(), "text/plain", 415, "unsupported-media-type"),
        (json.dumps(TUTORIAL_NEURON).encode(), None, 415, "unsupported-media-type"),
    ],
)
def test_body_errors(client, raw, content_type, status, kind):
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/v1/gradients", data=raw, headers=headers)
    assert (r.status_code, r.mimetype, r.json["type"]) == (status, PROBLEM, f"/problems/{kind}")


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Send the body as application/json: the request has no Content-Type."),
        ({"Content-Type": "text/plain"}, "Send the body as application/json, not text/plain."),
    ],
)
def test_unsupported_media_type_says_what_was_sent(client, headers, detail):
    r = client.post("/v1/gradients", data=json.dumps(TUTORIAL_NEURON), headers=headers)
    assert (r.status_code, r.json["detail"]) == (415, detail)


def test_nested_tensor_within_limits_is_fine(client):
    assert post(client, json.loads(NESTED)).status_code == 200


def test_body_over_limit_is_413(app):
    app.config["MAX_CONTENT_LENGTH"], saved = 1000, app.config["MAX_CONTENT_LENGTH"]
    try:
        r = app.test_client().post("/v1/gradients", data=b"[" + b"0," * 1000 + b"0]", content_type="application/json")
    finally:
        app.config["MAX_CONTENT_LENGTH"] = saved
    assert r.status_code == 413 and r.mimetype == PROBLEM
    assert r.json["limit"] == {"name": "max_body_bytes", "value": 1000}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/nope", 404),
        ("get", "/v1/gradients", 405),
        ("delete", "/v1/models", 405),
        ("put", "/healthz", 405),
    ],
)
def test_http_errors_are_problems(client, method, path, status):
    r = getattr(client, method)(path)
    assert r.status_code == status and r.mimetype == PROBLEM
    assert r.json["status"] == status and r.json["title"]
    if status == 405:
        assert "GET" in r.headers["Allow"] or "POST" in r.headers["Allow"]


def test_unexpected_exception_is_a_500_problem_without_internals():
    from conftest import TestConfig
    from service import create_app

    class Crashing(TestConfig):
        TESTING = False
        PROPAGATE_EXCEPTIONS = False

    app = create_app(Crashing)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    r = app.test_client().get("/boom")
    assert r.status_code == 500 and r.mimetype == PROBLEM
    assert "secret" not in r.get_data(as_text=True) and "Traceback" not in r.get_data(as_text=True)


def test_strict_encoder_refuses_a_stray_nan(app):
    """A NaN that skipped engine/encode.py must fail loudly, never reach a client as null or NaN."""
    from service.jsonio import NonFiniteInJSON, dumps_bytes

    with pytest.raises(NonFiniteInJSON):
        dumps_bytes({"loss": float("nan")})


def test_broadcast_blow_up_is_refused_before_allocating(client):
    """[n] * [n, 1] would make n*n elements: a 413 naming the limit, not gigabytes of memory."""
    body = expression(formula="sum(x * y)", x=[0.5] * 50_000, y=[[0.5]] * 50_000)
    r = post(client, body)
    assert r.status_code == 413 and r.json["limit"]["name"] == "max_tensor_elements"


def test_finite_neighbours_of_a_non_finite_value_keep_float32_digits(client):
    body = post(client, {**expression(formula="x * 1", x=[0.1, "Infinity"]), "mode": "inference"}).json
    assert body["loss"] == [0.1, "Infinity"]
