"""Pure ASGI middleware guarding every route of every port.

Pure ASGI, never `BaseHTTPMiddleware`: that one hides client disconnects from the app
and broke request cancellation in vLLM (vllm-project/vllm#10087) and SGLang (#20623).

* `Guard` refuses, in the order a request meets them: a server that is draining (503),
  a missing or wrong API key (401), a body over the size limit (413). Public paths
  (health probes, by default) skip the key check and the draining check.
* API keys are compared as SHA-256 digests with `hmac.compare_digest`, against every
  configured key, so the time taken does not tell how much of a key was right.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    GatewayError,
    NotReady,
    PayloadTooLarge,
    Unauthorized,
    classify,
    error_body,
    shape_for,
)
from gateway.observability.metrics import current as observation

log = logging.getLogger(__name__)


def key_digests(keys: Iterable[str], keys_file: Path | None) -> list[bytes]:
    """SHA-256 digests of the configured keys; file lines may be `sha256:<hex>` already."""
    digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]
    if keys_file is not None:
        for raw in keys_file.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("sha256:"):
                digests.append(bytes.fromhex(line.removeprefix("sha256:")))
            else:
                digests.append(hashlib.sha256(line.encode()).digest())
    return digests


def presented_key(scope: Scope) -> str | None:
    """The key of `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


class Guard:
    """Draining, authentication and body-size checks before the app sees a request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        digests: list[bytes],
        public_paths: Iterable[str],
        public_prefixes: Iterable[str] = (),
        max_body_bytes: int,
        is_draining: Callable[[], bool],
        surface: str,
    ) -> None:
        self.app = app
        self.digests = digests
        self.public = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)
        self.max_body = max_body_bytes
        self.is_draining = is_draining
        self.surface = surface

    async def _refuse(self, scope: Scope, send: Send, error: GatewayError) -> None:
        info = classify(error)
        obs = observation()
        if obs is not None:
            obs.error_type = info.type
        body = json.dumps(error_body(info, shape_for(self.surface, scope.get("path", "")))).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in info.headers.items()]
        await send({"type": "http.response.start", "status": info.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: Scope) -> bool:
        key = presented_key(scope)
        if key is None:
            return False
        digest = hashlib.sha256(key.encode()).digest()
        ok = False
        for d in self.digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(digest, d)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check, then pass the request on (with a body-size-counting receive)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        public = path in self.public or (bool(self.public_prefixes) and path.startswith(self.public_prefixes))
        if not public and self.is_draining():
            error: GatewayError = NotReady(
                "the server is shutting down; retry on another instance",
                headers={"Retry-After": "1", "Connection": "close"},
            )
            await self._refuse(scope, send, error)
            return
        if self.digests and not public and scope.get("method") != "OPTIONS" and not self._authorized(scope):
            error = Unauthorized(
                "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await self._refuse(scope, send, error)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                error = PayloadTooLarge(
                    f"the body is larger than {self.max_body} bytes", headers={"Connection": "close"}
                )
                await self._refuse(scope, send, error)
                return
        await self.app(scope, self._counting(receive, scope, send), send)

    def _counting(self, receive: Receive, scope: Scope, send: Send) -> Receive:
        """A receive that stops a chunked body at the size limit (no Content-Length)."""
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            return message

        return wrapped
