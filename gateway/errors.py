"""Typed errors and the ONE table that maps them to HTTP status codes and bodies.

Handlers never parse error messages: they look the exception's class up in
`ERROR_TABLE` (after TGI's single `From<InferError>`). Each API family has one error
shape (gateway/apis.py); bodies are short, name the offending field, and never echo the
request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine_adapters.base import (
    EngineDeadError,
    EngineError,
    EngineNotReadyError,
    EngineOverloadedError,
    InvalidParameterError,
    PromptTooLongError,
    UnknownAdapterError,
    UnsupportedFeatureError,
)

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """Base of the gateway's own typed errors."""

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class BadRequest(GatewayError):
    """The request is malformed or a value is out of range."""


class Unauthorized(GatewayError):
    """No valid API key."""


class Forbidden(GatewayError):
    """A valid key whose scope does not cover the request."""


class NotFound(GatewayError):
    """An unknown consumer group, reader, model or route."""


class MethodNotAllowed(GatewayError):
    """The route exists, but not for this HTTP method."""


class Conflict(GatewayError):
    """The request clashes with the current state (e.g. a reader id in use)."""


class PayloadTooLarge(GatewayError):
    """The body exceeds the configured limit."""


class Unprocessable(GatewayError):
    """Well-formed, but the gateway cannot honour it (e.g. a feature it lacks)."""


class Overloaded(GatewayError):
    """Admission control refused the request (the server is at capacity); retry later."""


class RateLimited(Overloaded):
    """The caller's own limit refused the request (its key's requests in flight or tokens)."""


class NotReady(GatewayError):
    """The model is loading, or the gateway is draining."""


class ClientGone(GatewayError):
    """The client disconnected before the answer was ready (nobody reads the body)."""


class DeadlineExceeded(GatewayError):
    """The request's deadline passed before it finished."""


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """Status code and machine-readable type of one class of errors, and Anthropic's
    (status, type) where its API names the class otherwise (529 overloaded_error)."""

    status: int
    type: str
    anthropic: tuple[int, str] | None = None


# The one mapping from typed errors to HTTP. Lookup walks the exception's MRO, so a
# subclass inherits its parent's row unless it has its own.
ERROR_TABLE: dict[type[BaseException], ErrorKind] = {
    BadRequest: ErrorKind(400, "invalid_request_error"),
    InvalidParameterError: ErrorKind(400, "invalid_request_error"),
    PromptTooLongError: ErrorKind(400, "context_length_exceeded"),
    Unauthorized: ErrorKind(401, "authentication_error"),
    Forbidden: ErrorKind(403, "permission_error"),
    NotFound: ErrorKind(404, "not_found_error"),
    MethodNotAllowed: ErrorKind(405, "method_not_allowed"),
    UnknownAdapterError: ErrorKind(404, "not_found_error"),
    Conflict: ErrorKind(409, "conflict"),
    PayloadTooLarge: ErrorKind(413, "request_too_large"),
    Unprocessable: ErrorKind(422, "unprocessable_entity"),
    UnsupportedFeatureError: ErrorKind(422, "unprocessable_entity"),
    # a key's own limits are 429 everywhere; the server at capacity (or not ready) is
    # Anthropic's 529 overloaded_error, which its SDKs retry
    RateLimited: ErrorKind(429, "rate_limit_error", (429, "rate_limit_error")),
    Overloaded: ErrorKind(429, "rate_limit_error", (529, "overloaded_error")),
    EngineOverloadedError: ErrorKind(429, "rate_limit_error", (529, "overloaded_error")),
    NotReady: ErrorKind(503, "service_unavailable", (529, "overloaded_error")),
    EngineNotReadyError: ErrorKind(503, "service_unavailable", (529, "overloaded_error")),
    EngineDeadError: ErrorKind(503, "engine_dead", (529, "overloaded_error")),
    DeadlineExceeded: ErrorKind(504, "timeout"),
    # nginx's non-standard code for "client closed request": shows up in access logs.
    ClientGone: ErrorKind(499, "client_closed_request"),
    EngineError: ErrorKind(500, "engine_error"),
}
_INTERNAL = ErrorKind(500, "internal_error")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Everything an error shape needs to render an error."""

    status: int
    type: str
    message: str
    param: str | None
    headers: dict[str, str]
    anthropic: tuple[int, str]  # Anthropic's status and error type


def classify(exc: BaseException) -> ErrorInfo:
    """Map an exception to its status, type and public message via `ERROR_TABLE`."""
    for cls in type(exc).__mro__:
        kind = ERROR_TABLE.get(cls)
        if kind is not None:
            break
    else:
        kind = _INTERNAL
    if kind is _INTERNAL:
        # Unknown failures keep their details in the log, never in the response.
        log.error("unhandled error", exc_info=exc)
        message = "internal error; the server log has the details"
    else:
        message = str(exc)
    return ErrorInfo(
        status=kind.status,
        type=kind.type,
        message=message,
        param=getattr(exc, "param", None),
        headers=dict(getattr(exc, "headers", None) or {}),
        anthropic=kind.anthropic or (kind.status, _ANTHROPIC_TYPES.get(kind.status, "api_error")),
    )


# Anthropic's error types by status (its API reference), for the kinds without their own.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "api_error",
    504: "api_error",
}


# Framework errors (routing, body reading) by HTTP status -> the typed error they mean, so
# that they go through the same table as every other error.
_BY_STATUS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: Overloaded,
    503: NotReady,
}


def from_status(status: int, message: str, headers: dict[str, str] | None = None) -> GatewayError:
    """The typed error of a framework-raised HTTP status (Starlette's `HTTPException`)."""
    cls = _BY_STATUS.get(status, BadRequest if status < 500 else GatewayError)
    return cls(message, headers=headers)


# The error shapes of the API families (gateway/apis.py says which family speaks which).
ErrorShape = Literal["openai", "takeoff", "anthropic"]


def error_response(info: ErrorInfo, shape: ErrorShape) -> tuple[int, dict[str, Any]]:
    """The status and body of `info` in `shape`."""
    if shape == "anthropic":
        return info.anthropic[0], anthropic_body(info)
    return info.status, openai_body(info) if shape == "openai" else takeoff_body(info)


def anthropic_body(info: ErrorInfo) -> dict[str, Any]:
    """Anthropic's error shape, which the anthropic SDK parses into its exception classes."""
    return {"type": "error", "error": {"type": info.anthropic[1], "message": info.message}}


def anthropic_error(exc: BaseException) -> dict[str, str]:
    """The `error` of an Anthropic stream's error event."""
    info = classify(exc)
    return {"type": info.anthropic[1], "message": info.message}


def openai_body(info: ErrorInfo) -> dict[str, Any]:
    """OpenAI's error shape, which the openai SDK parses into its exception classes."""
    return {"error": {"message": info.message, "type": info.type, "param": info.param, "code": info.status}}


def takeoff_body(info: ErrorInfo) -> dict[str, Any]:
    """Takeoff's shape (and that of the other non-OpenAI APIs): FastAPI's `detail` plus
    type and field."""
    return {"detail": info.message, "type": info.type, "field": info.param}


# Location parts that are union-branch tags ("list[constrained-str]", "str"), not fields.
_TAG = re.compile(r"[^A-Za-z0-9_]")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"})
_VALID = re.compile(r"^Input should be a valid (.+)$")


def _field_name(loc: Sequence[Any]) -> str:
    out = ""
    if loc and loc[0] in ("body", "query", "path", "header"):  # FastAPI's location prefix
        loc = loc[1:]
    if "[key]" in loc:  # a bad key of a mapping: name the mapping
        loc = loc[: list(loc).index("[key]") - 1]
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _TAG.search(part) and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out or "body"


def _error_field(err: Any) -> str:
    name = _field_name(err.get("loc", ()))
    if str(err.get("type", "")).startswith("union_tag"):  # the discriminator itself is wrong
        # tags are "field=value" (gateway.protocols.common.tag_of)
        tag = str((err.get("ctx") or {}).get("tag", "")).partition("=")[0]
        if tag and not _TAG.search(tag):
            name = f"{name}.{tag}" if name != "body" else tag
    return name


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """A short message naming the offending fields of a pydantic validation failure.

    Only pydantic's own messages are used, never the `input` it carries, so the
    request body is not echoed back. Errors of the branches of a union field are
    merged into one line ("text: Input should be a valid string or list").
    """
    by_field: dict[str, list[Any]] = {}
    for err in errors:
        if err.get("type") == "json_invalid":
            return "invalid request: the body is not valid JSON", "body"
        by_field.setdefault(_error_field(err), []).append(err)
    # A union whose list branch failed deeper ("text[1]") explains itself; drop the
    # other branch's bare type mismatch on the parent ("text: should be a string").
    for parent in [f for f in by_field if any(o.startswith((f + "[", f + ".")) for o in by_field)]:
        if all(str(e.get("type", "")).endswith("_type") for e in by_field[parent]):
            del by_field[parent]
    # fields with a specific complaint ("must be >= 0") before bare type mismatches
    # of other union branches
    ranked = sorted(by_field.items(), key=lambda kv: all(str(e.get("type", "")).endswith("_type") for e in kv[1]))
    by_field = dict(ranked)
    parts = []
    for field, errs in list(by_field.items())[:3]:
        specific = [e for e in errs if not str(e.get("type", "")).endswith("_type")]
        if specific:
            msg = str(specific[0].get("msg", "invalid value"))
        else:
            kinds = []
            for e in errs:
                m = _VALID.match(str(e.get("msg", "")))
                kind = m.group(1) if m else str(e.get("msg", "invalid value"))
                if kind not in kinds:
                    kinds.append(kind)
            msg = "Input should be a valid " + " or ".join(kinds)
        parts.append(f"{field}: {msg}")
    if len(by_field) > 3:
        parts.append(f"and {len(by_field) - 3} more")
    return "invalid request: " + "; ".join(parts), next(iter(by_field), None)
