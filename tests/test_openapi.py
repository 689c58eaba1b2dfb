"""The OpenAPI document is generated, valid, and true: schemathesis fuzzes every operation against it."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from conftest import TUTORIAL_NEURON, TestConfig
from service import create_app

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
    assert (epsilon["minimum"], epsilon["exclusiveMinimum"], epsilon["maximum"], epsilon["exclusiveMaximum"]) == (
        0,
        True,
        0.5,
        True,
    )
    at_the_bound = {**TUTORIAL_NEURON, "model": {"kind": "neuron", "epsilon": 0}}
    assert client.post("/v1/gradients", json=at_the_bound).status_code == 400
    tangents = schemas["GradientRequest"]["properties"]["tangents"]
    assert (tangents["minProperties"], tangents["maxProperties"]) == (1, 64)
    assert "minLength" not in tangents and "maxLength" not in tangents


def test_servers_follow_the_gateway_prefix(client):
    doc = client.get("/openapi.json", environ_overrides={"SCRIPT_NAME": "/grad"}).json
    assert doc["servers"] == [{"url": "/grad"}]


def documented(doc: dict, response: dict) -> dict:
    """A response object as a client reads it: a `$ref` into components/responses followed."""
    ref = response.get("$ref", "")
    return doc["components"]["responses"][ref.removeprefix("#/components/responses/")] if ref else response


def check_against(doc: dict, response: dict, answer: requests.Response) -> None:
    """The live answer has the documented media type, required headers and body schema ($refs resolved in doc)."""
    media_type = answer.headers["Content-Type"].split(";")[0]
    assert list(response["content"]) == [media_type]
    for name, header in response.get("headers", {}).items():
        assert not header.get("required") or name in answer.headers, name
    body_schema = {**response["content"][media_type]["schema"], "components": doc["components"]}
    OAS30Validator(body_schema).validate(answer.json())


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


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_no_server_errors_and_responses_match_the_schema(case):
    """Every documented status, no 5xx, responses conform; schema-valid bodies may still be 413/422 (limits, shapes)."""
    case.call_and_validate(excluded_checks=[positive_data_acceptance], additional_checks=[not_a_server_error])
