"""Per-request observation: request ids, one JSON log line per request, metrics.

Pure ASGI (see gateway/middleware/guards.py for why). The request id comes from the
`X-Request-Id` header when it looks like one, else a new one, and is returned in
`X-Request-Id`. Prompts and outputs are never logged.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.apis import Api, ApiIndex
from gateway.observability.metrics import Observation, begin, end
from gateway.observability.tracing import ids_for

log = logging.getLogger("gateway.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})


def api_of(scope: Scope, index: ApiIndex) -> Api:
    """The API family of the request (the observer found it; else looked up now)."""
    found = scope.get("state", {}).get("api")
    return found if isinstance(found, Api) else index.api_of(scope.get("path", ""))


class Observer:
    """Wraps an app: starts the request's observation, finishes it when the answer ends.
    It finds the request's API family once, for the labels and the error shape."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        apis: ApiIndex,
        enabled: Callable[[], bool],
        on_end: Callable[[Observation, Scope], None] | None = None,
        tracing: bool = False,
    ) -> None:
        self.app = app
        self.apis = apis
        self.enabled = enabled
        self.on_end = on_end
        self.tracing = tracing  # give each request its span ids (gateway/observability/tracing.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Observe one HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = traceparent = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
        rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        path = scope.get("path", "")
        api = self.apis.api_of(path)
        scope.setdefault("state", {})["api"] = api
        obs = Observation(request_id=rid, api=api.metrics_label, method=scope.get("method", ""), path=path)
        if self.tracing and path not in _QUIET:
            obs.trace = ids_for(traceparent)
        headers = [(b"x-request-id", rid.encode())]
        if api.id_header is not None:
            headers.append((api.id_header.encode(), rid.encode()))

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                obs.status = message["status"]
                message["headers"] = [*message.get("headers", []), *headers]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                obs.completed = True
            await send(message)

        token = begin(obs)
        try:
            await self.app(scope, receive, observing_send)
        finally:
            end(token)
            route = scope.get("route")
            obs.route = getattr(route, "path", "") or ""
            if obs.status == 0:
                obs.status = 499  # nothing was sent: the client left first
            obs.record()
            if self.on_end is not None:
                try:
                    self.on_end(obs, scope)
                except Exception:  # the answer is sent; nothing here may fail the request
                    log.exception("recording a request's usage failed")
            if path not in _QUIET and self.enabled():
                extra: dict[str, Any] = {"fields": access_fields(obs, scope), "request_id": obs.request_id}
                if obs.trace is not None:
                    extra["trace_id"] = f"{obs.trace.trace_id:032x}"
                log.info("request", extra=extra)


def access_fields(obs: Observation, scope: Scope) -> dict[str, Any]:
    """The fields of one request's access line (no prompt, no output)."""
    client = scope.get("client") or ("", 0)
    now = time.perf_counter()
    line = {
        "event": "request",
        "request_id": obs.request_id,
        "method": obs.method,
        "path": obs.path,
        "route": obs.route,
        "api": obs.api,
        "group": obs.group or None,
        "key": obs.key or None,
        "status": obs.status,
        "duration_ms": round((now - obs.start) * 1000, 1),
        "queue_ms": round((obs.accepted_at - obs.start) * 1000, 1) if obs.accepted_at else None,
        "ttft_ms": round((obs.first_token_at - obs.start) * 1000, 1) if obs.first_token_at else None,
        "prompt_tokens": obs.prompt_tokens,
        "generated_tokens": obs.generated_tokens,
        "error_type": obs.error_type,
        "error": obs.error[:300] if obs.error else None,
        "completed": obs.completed,
        "client": client[0],
    }
    return line
