"""The `feedback` option (audit H4): what a failed check tells the student about the reference value.

"expected" (the default) is today's behaviour byte for byte; "error" and "verdict" keep the reference's digits out
of every document a platform gets."""

from __future__ import annotations

import json

import feedback_cases as cases


def test_default_responses_are_byte_identical_to_those_recorded_before_the_option(client):
    """tests/data/feedback_expected.json was recorded before `feedback` existed: without the option, and with
    "expected" given explicitly (per request, per problem, per check), every format answers the same bytes."""
    golden = json.loads(cases.GOLDEN.read_text())
    assert cases.responses(client) == golden
