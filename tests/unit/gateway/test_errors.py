"""The one error table and the validation messages."""

from __future__ import annotations

from engine_adapters.base import EngineDeadError, EngineError, InvalidParameterError, PromptTooLongError
from gateway.errors import (
    BadRequest,
    ClientGone,
    DeadlineExceeded,
    NotFound,
    NotReady,
    Overloaded,
    classify,
    openai_body,
    takeoff_body,
)


def test_table_maps_typed_errors_to_status():
    cases = {
        BadRequest("x"): 400,
        InvalidParameterError("x"): 400,
        PromptTooLongError("x"): 400,
        NotFound("x"): 404,
        Overloaded("x"): 429,
        NotReady("x"): 503,
        EngineDeadError("x"): 503,
        DeadlineExceeded("x"): 504,
        ClientGone("x"): 499,
        EngineError("x"): 500,
    }
    for exc, status in cases.items():
        assert classify(exc).status == status, exc


def test_unknown_errors_are_500_without_details():
    info = classify(RuntimeError("secret internals /etc/passwd"))
    assert info.status == 500
    assert "secret" not in info.message


def test_bodies_per_surface():
    info = classify(BadRequest("bad thing", param="text", headers={"X-A": "1"}))
    assert openai_body(info) == {
        "error": {"message": "bad thing", "type": "invalid_request_error", "param": "text", "code": 400}
    }
    assert takeoff_body(info) == {"detail": "bad thing", "type": "invalid_request_error", "field": "text"}
    assert info.headers == {"X-A": "1"}
