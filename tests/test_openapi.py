"""The OpenAPI document is generated, valid, and true: schemathesis fuzzes every operation against it."""

from __future__ import annotations

import re

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from conftest import ROOT, TUTORIAL_NEURON, GunicornServer, TestConfig
from service import create_app
from service.observability import VALID_REQUEST_ID

app = create_app(TestConfig)
schema = schemathesis.openapi.from_wsgi("/openapi.json", app)


def test_document_is_valid_openapi(client):
    doc = client.get("/openapi.json").json
    validate(doc)
    assert {"/v1/gradients", "/v1/models", "/healthz", "/readyz"} <= set(doc["paths"])
    assert doc["servers"] == [{"url": "/"}]


def test_document_follows_the_marshmallow_schemas(client):
    """Generated, not hand-written: a request field's constraints come from schemas/requests.py."""
    request = client.get("/openapi.json").json["components"]["schemas"]["GradientRequest"]
    assert request["additionalProperties"] is False
    assert request["properties"]["mode"]["enum"] == ["grad", "inference"]
    assert set(request["required"]) == {"model", "inputs"}


def test_api_keys_are_declared_when_the_server_requires_them(client):
    """With keys, every /v1/ operation names the bearer scheme and its 401; the probes and the document stay open."""

    class Keyed(TestConfig):
        API_KEYS = "alpha"

    keyed = create_app(Keyed).test_client().get("/openapi.json").json
    validate(keyed)
    assert keyed["components"]["securitySchemes"] == {"apiKey": {"type": "http", "scheme": "bearer"}}
    check = keyed["paths"]["/v1/check"]["post"]
    assert check["security"] == [{"apiKey": []}]
    assert check["responses"]["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert "security" not in keyed["paths"]["/readyz"]["get"]
    assert "401" not in keyed["paths"]["/openapi.json"]["get"]["responses"]
    open_doc = client.get("/openapi.json").json
    assert "securitySchemes" not in open_doc["components"]
    assert "401" not in open_doc["paths"]["/v1/check"]["post"]["responses"]


def test_bounds_are_written_as_the_schema_checks_them(client):
    """apispec writes a Range's exclusive bounds as inclusive and a Dict's Length as string lengths: fixed up."""
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    epsilon = schemas["NeuronModel"]["properties"]["epsilon"]
    assert (epsilon["exclusiveMinimum"], epsilon["exclusiveMaximum"]) == (0, 0.5)
    assert "minimum" not in epsilon and "maximum" not in epsilon
    at_the_bound = {**TUTORIAL_NEURON, "model": {"kind": "neuron", "epsilon": 0}}
    assert client.post("/v1/gradients", json=at_the_bound).status_code == 400
    tangents = schemas["GradientRequest"]["properties"]["tangents"]
    assert (tangents["minProperties"], tangents["maxProperties"]) == (1, 128)
    assert "minLength" not in tangents and "maxLength" not in tangents


def test_servers_follow_the_gateway_prefix(client):
    doc = client.get("/openapi.json", environ_overrides={"SCRIPT_NAME": "/grad"}).json
    assert doc["servers"] == [{"url": "/grad"}]


def documented(doc: dict, response: dict) -> dict:
    """A response object as a client reads it: a `$ref` into components/responses followed."""
    ref = response.get("$ref", "")
    return doc["components"]["responses"][ref.removeprefix("#/components/responses/")] if ref else response


def check_against(doc: dict, response: dict, answer: requests.Response) -> None:
    """The live answer has the documented media type, headers (each required one, each value valid against its
    schema) and body schema ($refs resolved in doc)."""
    media_type = answer.headers["Content-Type"].split(";")[0]
    assert media_type in response["content"]
    for name, header in response.get("headers", {}).items():
        header = doc["components"]["headers"][header["$ref"].rpartition("/")[2]] if "$ref" in header else header
        assert not header.get("required") or name in answer.headers, name
        if name in answer.headers:
            OAS31Validator(header["schema"]).validate(answer.headers[name])
    body_schema = {**response["content"][media_type]["schema"], "components": doc["components"]}
    OAS31Validator(body_schema).validate(answer.json())


def test_every_operation_documents_405_as_a_problem_with_allow(client):
    """A wrong method is a 405 problem+json on every path: documented on each operation, with its Allow header."""
    doc = client.get("/openapi.json").json
    operations = [(path, op) for path, item in doc["paths"].items() for op in item.values()]
    assert len(operations) >= 9
    for path, op in operations:
        assert op["responses"]["405"] == {"$ref": "#/components/responses/MethodNotAllowed"}, path
    method_not_allowed = doc["components"]["responses"]["MethodNotAllowed"]
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert method_not_allowed["content"] == problem
    assert method_not_allowed["headers"]["Allow"]["required"] is True
    not_found = doc["components"]["responses"]["NotFound"]
    assert not_found["content"] == problem
    assert "404" in doc["info"]["description"] and "405" in doc["info"]["description"]


@pytest.mark.live
def test_live_404_and_405_match_the_documented_responses(live_server):
    """A real gunicorn's 405 on every documented path, and its 404 on an unknown one, are what the document says."""
    doc = requests.get(live_server.url + "/openapi.json", timeout=10).json()
    for path, item in doc["paths"].items():
        answer = requests.delete(live_server.url + path, timeout=10)
        assert answer.status_code == 405, path
        check_against(doc, documented(doc, item[next(iter(item))]["responses"]["405"]), answer)
        allowed = {method.strip() for method in answer.headers["Allow"].split(",")}
        assert allowed - {"HEAD", "OPTIONS"} == {method.upper() for method in item}, path
    answer = requests.post(live_server.url + "/v1/no-such-path", json={}, timeout=10)
    assert answer.status_code == 404 and "/v1/no-such-path" not in doc["paths"]
    check_against(doc, documented(doc, {"$ref": "#/components/responses/NotFound"}), answer)
    assert answer.json()["instance"] == "/v1/no-such-path"


def test_gradient_response_requires_every_key_api_md_says_is_always_there(client):
    """docs/api.md: every key of the response table is always present (null when not asked for or not computable);
    only `jacobian`, `jvp` and `independent` appear when they apply. The document's `required` says the same."""
    schema = client.get("/openapi.json").json["components"]["schemas"]["GradientResponse"]
    optional = {"jacobian", "jvp", "independent"}
    assert set(schema["required"]) == set(schema["properties"]) - optional
    expression = {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": [1.0, 2.0]}}
    for body in (
        {**TUTORIAL_NEURON, "include": []},
        {**TUTORIAL_NEURON, "mode": "inference"},
        {**expression, "include": ["jacobian"]},
    ):
        answer = client.post("/v1/gradients", json=body).json
        assert set(answer) - optional == set(schema["required"]), body
    assert schema["properties"]["mode"]["enum"] == ["grad", "inference"]
    assert schema["properties"]["dtype"]["enum"] == ["float32", "float64"]


def test_every_format_parameter_is_described(client):
    paths = client.get("/openapi.json").json["paths"]
    for path in ("/v1/check", "/v1/grade"):
        (fmt,) = [p for p in paths[path]["post"]["parameters"] if p.get("name") == "format"]
        assert all(name in fmt["description"] for name in fmt["schema"]["enum"]), path


def test_request_id_is_declared_on_every_operation_and_response(client):
    """X-Request-ID: a parameter of every operation (any value taken; one outside the pattern is replaced, so the
    pattern is said, not enforced) and a required header of every response, with the pattern it always matches."""
    doc = client.get("/openapi.json").json
    reference = {"$ref": "#/components/headers/X-Request-ID"}
    header = doc["components"]["headers"]["X-Request-ID"]
    assert header["required"] is True and header["schema"]["pattern"] == VALID_REQUEST_ID.pattern
    parameter = doc["components"]["parameters"]["X-Request-ID"]
    assert (parameter["in"], parameter["required"], parameter["schema"]) == ("header", False, {"type": "string"})
    assert VALID_REQUEST_ID.pattern in parameter["description"]
    for path, item in doc["paths"].items():
        for op in item.values():
            assert {"$ref": "#/components/parameters/X-Request-ID"} in op["parameters"], path
            assert op["responses"]["200"]["headers"]["X-Request-ID"] == reference, path
    for name, response in doc["components"]["responses"].items():
        assert response["headers"]["X-Request-ID"] == reference, name
    assert doc["components"]["responses"]["Unavailable"]["headers"]["Retry-After"]
    assert doc["components"]["responses"]["Unauthorized"]["headers"]["WWW-Authenticate"]


@pytest.mark.live
def test_live_answers_carry_the_documented_headers(live_server):
    """Each answer against its documented response: media type, body, and every header (X-Request-ID on all of
    them, a client's id kept when it matches the pattern and replaced when it does not)."""
    doc = requests.get(live_server.url + "/openapi.json", timeout=10).json()
    url = live_server.url
    cases = [
        ("post", "/v1/gradients", {"json": TUTORIAL_NEURON, "headers": {"X-Request-ID": "grader-1"}}, 200),
        ("post", "/v1/gradients", {"json": TUTORIAL_NEURON, "headers": {"X-Request-ID": "job 42"}}, 200),
        ("post", "/v1/gradients", {"json": TUTORIAL_NEURON, "headers": {"X-Request-ID": "x" * 129}}, 200),
        ("post", "/v1/gradients", {"json": {**TUTORIAL_NEURON, "mode": "backward"}}, 400),
        ("post", "/v1/gradients", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 415),
        ("post", "/v1/check?format=GRADESCOPE", {"json": {}}, 400),
        ("post", "/v1/grade", {"json": {"problem": ONE_PROBLEM, "answers": {"problem": ANSWERS}}}, 200),
        ("get", "/v1/models", {}, 200),
        ("get", "/readyz", {}, 200),
        ("get", "/v1/gradients", {}, 405),
    ]
    for method, path, kwargs, status in cases:
        answer = requests.request(method, url + path, timeout=30, **kwargs)
        assert answer.status_code == status, (path, answer.text[:300])
        item = doc["paths"][path.partition("?")[0]]
        operation = item.get(method) or next(iter(item.values()))  # a 405: documented on the path's operation
        check_against(doc, documented(doc, operation["responses"][str(status)]), answer)
        sent = kwargs.get("headers", {}).get("X-Request-ID")
        kept = sent is not None and VALID_REQUEST_ID.match(sent)
        assert (answer.headers["X-Request-ID"] == sent) == bool(kept), (sent, answer.headers["X-Request-ID"])


def test_unauthorized_carries_the_documented_www_authenticate():
    class Keyed(TestConfig):
        API_KEYS = "alpha"

    client = create_app(Keyed).test_client()
    doc = client.get("/openapi.json").json
    answer = client.post("/v1/gradients", json=TUTORIAL_NEURON)
    assert answer.status_code == 401
    headers = doc["components"]["responses"]["Unauthorized"]["headers"]
    assert set(headers) == {"X-Request-ID", "WWW-Authenticate"}
    assert answer.headers["WWW-Authenticate"].startswith("Bearer ")
    assert VALID_REQUEST_ID.match(answer.headers["X-Request-ID"])


# --- the document says what the service accepts: a body it allows is never the schema's 400 ---------------

NEURON = TUTORIAL_NEURON["model"]
POINT = TUTORIAL_NEURON["inputs"]
ANSWERS = {"loss": 0.5}
NETWORK = {
    "kind": "network",
    "layout": "torch",
    "loss": {"type": "mse"},
    "layers": [{"type": "linear", "out_features": 1}],
}
NETWORK_INPUTS = {"X": [[0.5, -1.0]], "y": [[1.0]], "W1": [[1.0, 2.0]], "b1": [0.1]}
ONE_PROBLEM = {"model": NEURON, "inputs": POINT, "checks": {"loss": {"points": 1}}}
# (why, path, body, whether the document and the service accept it); the first three are audit 3's ST202 findings
AGREEMENT = [
    ("audit: null problem", "/v1/grade", {"problem": None, "answers": None, "released": [], "variant_seed": 0}, False),
    ("audit: input names are identifiers", "/v1/gradients", {**TUTORIAL_NEURON, "tangents": {"": 1.0}}, False),
    (
        "audit: points and inputs",
        "/v1/check",
        {"model": NEURON, "points": [POINT], "inputs": POINT, "submission": ANSWERS},
        False,
    ),
    ("tangents keyed by input", "/v1/gradients", {**TUTORIAL_NEURON, "tangents": {"w": 1.0}}, True),
    ("a problem file", "/v1/grade", {"problem": {"problems": [ONE_PROBLEM]}, "answers": {"problem": ANSWERS}}, True),
    ("one problem at the top", "/v1/grade", {"problem": ONE_PROBLEM, "answers": {"problem": ANSWERS}}, True),
    ("a problem is an object", "/v1/grade", {"problem": "model: neuron", "answers": {}}, False),
    (
        "points and domain",
        "/v1/check",
        {"model": NEURON, "points": [POINT], "domain": {"x": [0, 1]}, "submission": ANSWERS},
        False,
    ),
    ("points", "/v1/check", {"model": NEURON, "points": [POINT, POINT], "submission": ANSWERS}, True),
    ("nowhere to evaluate", "/v1/check", {"model": NEURON, "submission": ANSWERS}, False),
    (
        "inputs with domain",
        "/v1/check",
        {"model": NEURON, "inputs": {"x": 1.0, "y": 0.0}, "domain": {"w": [0, 1], "b": [0, 1]}, "submission": ANSWERS},
        True,
    ),
    ("seed without domain", "/v1/check", {"model": NEURON, "inputs": POINT, "seed": 1, "submission": ANSWERS}, False),
    (
        "a neuron point lacks b",
        "/v1/check",
        {"model": NEURON, "points": [{"x": 1.0, "y": 0.0, "w": 1.0}], "submission": ANSWERS},
        False,
    ),
    ("nothing to grade", "/v1/check", {"model": NEURON, "inputs": POINT, "submission": {}}, False),
    (
        "an answer keyed by a non-name",
        "/v1/check",
        {"model": NEURON, "inputs": POINT, "submission": {"gradients": {"1w": 0.0}}},
        False,
    ),
    ("a neuron takes x, y, w, b", "/v1/gradients", {**TUTORIAL_NEURON, "inputs": {**POINT, "z": 1.0}}, False),
    ("wrt names unique", "/v1/gradients", {**TUTORIAL_NEURON, "wrt": ["w", "w"]}, False),
    (
        "name and formula",
        "/v1/gradients",
        {"model": {"kind": "expression", "name": "square", "formula": "x*x"}, "inputs": {"x": 1.0}},
        False,
    ),
    ("a network", "/v1/gradients", {"model": NETWORK, "inputs": NETWORK_INPUTS}, True),
    (
        "linear needs out_features",
        "/v1/gradients",
        {"model": {**NETWORK, "layers": [{"type": "linear"}]}, "inputs": NETWORK_INPUTS},
        False,
    ),
    (
        "relu takes no out_features",
        "/v1/gradients",
        {
            "model": {
                **NETWORK,
                "layers": [{"type": "linear", "out_features": 1}, {"type": "relu", "out_features": 1}],
            },
            "inputs": NETWORK_INPUTS,
        },
        False,
    ),
]


def request_validator(doc: dict, path: str) -> OAS31Validator:
    body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return OAS31Validator({**body, "components": doc["components"]})


@pytest.mark.live
def test_the_document_accepts_what_the_service_accepts(live_server):
    """Each body: valid per the served document exactly when a real gunicorn takes it (no schema 400).

    The rules across fields (schemas' json_schema_rules) and the key rule of every map keyed by input name
    (propertyNames) are in the document; without them the refused bodies here are schema-valid (audit 3, ST202)."""
    doc = requests.get(live_server.url + "/openapi.json", timeout=10).json()
    for why, path, body, accepted in AGREEMENT:
        assert request_validator(doc, path).is_valid(body) is accepted, why
        answer = requests.post(live_server.url + path, json=body, timeout=30)
        assert (answer.status_code == 200) is accepted, (why, answer.status_code, answer.text[:300])
        if not accepted:
            assert answer.status_code == 400 and answer.json()["type"].startswith("/problems/invalid-"), why


def test_every_map_keyed_by_input_name_declares_the_key_rule(client):
    """One field definition (schemas.fields.InputMap), one propertyNames pattern: the validator's."""
    from schemas.fields import INPUT_NAME_PATTERN

    schemas = client.get("/openapi.json").json["components"]["schemas"]
    maps = {
        "GradientRequest": ("inputs", "tangents"),
        "CheckRequest": ("inputs", "domain"),
        "Submission": ("gradients", "gradient_formulas"),
    }
    for name, props in maps.items():
        for prop in props:
            assert schemas[name]["properties"][prop]["propertyNames"]["pattern"] == INPUT_NAME_PATTERN, (name, prop)
    assert schemas["CheckRequest"]["properties"]["points"]["items"]["propertyNames"]["pattern"] == INPUT_NAME_PATTERN
    assert schemas["GradientRequest"]["properties"]["wrt"]["items"]["pattern"] == INPUT_NAME_PATTERN
    problem = schemas["GradeRequest"]["properties"]["problem"]
    assert problem["oneOf"] == [
        {"$ref": "#/components/schemas/ProblemFile"},
        {"$ref": "#/components/schemas/ProblemDefinition"},
    ]


def test_options_is_no_content_with_allow(client):
    """OPTIONS on any path is 204 with `Allow` and no body, so no (text/html) Content-Type; in process and live."""
    for path in ("/v1/gradients", "/v1/check", "/healthz", "/openapi.json"):
        answer = client.options(path)
        assert answer.status_code == 204 and answer.data == b"", path
        assert "Content-Type" not in answer.headers and "OPTIONS" in answer.headers["Allow"], path


@pytest.mark.live
def test_live_options_is_no_content_with_allow(live_server):
    doc = requests.get(live_server.url + "/openapi.json", timeout=10).json()
    for path, item in doc["paths"].items():
        answer = requests.options(live_server.url + path, timeout=10)
        assert answer.status_code == 204 and answer.content == b"", path
        assert "Content-Type" not in answer.headers, (path, answer.headers)
        allowed = {method.strip() for method in answer.headers["Allow"].split(",")}
        assert allowed - {"HEAD", "OPTIONS"} == {method.upper() for method in item}, path


@pytest.mark.live
@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_allow_lists_its_methods_in_the_documented_order_in_every_process(hash_seed):
    """werkzeug lists a path's methods from a set, in an order set by the process's string hashing: under one
    PYTHONHASHSEED "OPTIONS, POST" (as docs/api.md shows), under another "POST, OPTIONS". Sorted, they are the
    documented header in every worker, on OPTIONS and on a 405 alike."""
    api_md = (ROOT / "docs" / "api.md").read_text()
    documented = re.search(r"OPTIONS /v1/gradients HTTP/1.1\n\nHTTP/1.1 204 NO CONTENT\nAllow: (.+)\n", api_md)
    assert documented, "docs/api.md's OPTIONS example"
    server = GunicornServer(workers=1, env={"PYTHONHASHSEED": hash_seed, "WARM_UP": "0"})
    try:
        server.start()
        assert requests.options(server.url + "/v1/gradients", timeout=10).headers["Allow"] == documented[1]
        assert requests.get(server.url + "/v1/check", timeout=10).headers["Allow"] == "OPTIONS, POST"
        assert requests.options(server.url + "/healthz", timeout=10).headers["Allow"] == "GET, HEAD, OPTIONS"
    finally:
        server.stop()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_no_server_errors_and_responses_match_the_schema(case):
    """Every documented status, no 5xx, responses conform; schema-valid bodies may still be 413/422 (limits, shapes),
    or 400 for what JSON Schema cannot say (a ragged tensor, a formula's syntax, unique problem keys): the bodies
    of test_the_document_accepts_what_the_service_accepts check the rules it can say. negative_data_rejection is
    on: what the document refuses (a number sent as a string, 0/1 for a boolean) the service refuses too."""
    case.call_and_validate(excluded_checks=[positive_data_acceptance], additional_checks=[not_a_server_error])
