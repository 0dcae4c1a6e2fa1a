"""The server's configured limits, written into its OpenAPI documents.

The wire models state what every server accepts; some limits are settings (prompts per
request, `n`, stop strings, new tokens, beams, request id length). Each app's document
is patched with this server's values, so clients and schema-driven tools (schemathesis,
generated SDKs) see the constraints the validation enforces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.settings import Settings

# request fields that carry a list of prompts or inputs (an array of integers among
# their branches is one prompt as token ids, not a list)
_BATCHES = ("text", "prompt", "prompts", "input", "documents")
_NEW_TOKENS = ("max_new_tokens", "max_tokens", "max_completion_tokens", "max_output_tokens")


def _branches(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return [prop, *prop.get("anyOf", []), *prop.get("oneOf", [])]


def _limit_arrays(prop: dict[str, Any], count: int, of_ints_too: bool = False) -> None:
    for branch in _branches(prop):
        if branch.get("type") == "array" and (of_ints_too or branch.get("items", {}).get("type") != "integer"):
            branch["maxItems"] = min(count, branch.get("maxItems", count))


def _set(prop: dict[str, Any], keyword: str, value: float) -> None:
    for branch in _branches(prop):
        kind = branch.get("type")
        if kind in ("integer", "number") or (keyword == "maxLength" and kind == "string"):
            if keyword == "minimum":
                branch.pop("exclusiveMinimum", None)
                branch[keyword] = max(value, branch.get(keyword, value))
            else:
                branch[keyword] = min(value, branch.get(keyword, value))


def _backends(settings: Settings) -> list[str]:
    """The structured-output backend names a request may use on this server's readers."""
    names = ["auto"]
    for reader in settings.readers:
        backend = reader.structured_outputs_backend
        names += [backend] + (["lmfe"] if backend == "lm-format-enforcer" else [])
    return list(dict.fromkeys(names))


def _set_enum(prop: dict[str, Any], values: list[str]) -> None:
    for branch in _branches(prop):
        if "enum" in branch:
            branch["enum"] = [v for v in branch["enum"] if v in values]


def document_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """`schema` with this server's limits on every request model's fields."""
    for component in schema.get("components", {}).get("schemas", {}).values():
        for name, prop in component.get("properties", {}).items():
            if name in _BATCHES:
                _limit_arrays(prop, settings.max_user_batch_size)
            elif name == "stop":
                _limit_arrays(prop, settings.max_stop_sequences, of_ints_too=True)
            elif name == "n":
                _set(prop, "maximum", settings.max_n)
            elif name == "num_beams":
                _set(prop, "maximum", settings.max_beams)
            elif name == "request_id":
                _set(prop, "maxLength", settings.max_request_id_length)
            elif name in ("constrained_decoding_backend", "backend"):
                _set_enum(prop, _backends(settings))
            elif name == "timeout":
                _set(prop, "minimum", settings.min_request_timeout_seconds)
                _set(prop, "maximum", settings.max_request_timeout_seconds)
            elif name in _NEW_TOKENS and settings.max_new_tokens_limit is not None:
                _set(prop, "maximum", settings.max_new_tokens_limit)
    return schema


def with_limits(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """An `app.openapi` that documents `settings`' limits (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = document_limits(schema, settings)
        return app.openapi_schema

    return openapi
