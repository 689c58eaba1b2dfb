"""The problem+json (RFC 9457) envelope every error uses."""

from __future__ import annotations

from marshmallow import Schema, fields


class LimitSchema(Schema):
    name = fields.String(required=True, metadata={"description": "the limit's name, as GET /v1/models lists it"})
    value = fields.Float(required=True, metadata={"description": "the limit's configured value"})
    estimate = fields.Integer(
        metadata={
            "description": "what the request asked for against `value`: bytes for max_request_bytes, "
            "elements for max_jacobian_elements"
        }
    )
    breakdown = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "`estimate` by part: forward, backward, graph, numeric, hessian, ..."},
    )


class ProblemSchema(Schema):
    type = fields.String(
        required=True, metadata={"description": "URI reference naming the problem, e.g. /problems/limit-exceeded"}
    )
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    instance = fields.String(allow_none=True)
    errors = fields.Dict(metadata={"description": "marshmallow's field -> messages map, for 400 invalid-request"})
    limit = fields.Nested(
        LimitSchema, metadata={"description": "the limit hit, for limit-exceeded and deadline-exceeded"}
    )
    hint = fields.String(metadata={"description": "what to reduce to fit the limit, for limit-exceeded"})
    request_id = fields.String()
    party = fields.String(
        metadata={"description": 'whose error: "instructor" for /problems/invalid-problem (the problem file)'}
    )
