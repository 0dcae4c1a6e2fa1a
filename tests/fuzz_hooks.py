"""Schemathesis hooks of the fuzz tests (loaded with SCHEMATHESIS_HOOKS=tests.fuzz_hooks by
tests/unit/gateway/test_fuzz.py): the one check, no 5xx but the documented deadline 504."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.checks import not_a_server_error


def asked_for_a_deadline(case: Any) -> bool:
    """Whether the request set its own deadline (a body `timeout` or X-Request-Timeout)."""
    body = case.body if isinstance(case.body, dict) else {}
    return "timeout" in body or "x-request-timeout" in {k.lower() for k in (case.headers or {})}


@schemathesis.check
def no_server_error_but_deadlines(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx, except the 504 of a deadline the request itself set (which it may set to
    5e-324 seconds: answering 504 then is the documented behaviour)."""
    if response.status_code == 504 and asked_for_a_deadline(case):
        body = response.json()
        if (body.get("error") or body).get("type") == "timeout":  # OpenAI's shape or the others'
            return True
    return not_a_server_error(ctx, response, case)
