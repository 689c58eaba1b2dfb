"""Query strings loaded through their schemas; an empty one's load (the schema's defaults) is kept, because most
graders send none and loading an empty query cost ~20 µs a request (docs/performance.md, "The floor, lowered")."""

from __future__ import annotations

from functools import cache

from flask import request
from marshmallow import Schema, ValidationError

from ..errors import InvalidQuery


@cache
def _defaults(schema: Schema) -> dict:
    return schema.load({})


def load_query(schema: Schema) -> dict:
    """schema.load(request.args); without a query string, the schema's defaults loaded once (a shared dict:
    read it, do not change it). A parameter given twice (`?format=json&format=gradescope`) is refused, not read as
    its first; an error is the query's (InvalidQuery), not the body's."""
    if not request.query_string:
        return _defaults(schema)
    repeated = {
        name: ["Given more than once."]
        for name, values in request.args.lists()
        if len(values) > 1 and name in schema.fields
    }
    try:
        loaded = schema.load(request.args)
    except ValidationError as err:
        raise InvalidQuery({**repeated, **err.messages}) from None
    if repeated:
        raise InvalidQuery(repeated)
    return loaded
