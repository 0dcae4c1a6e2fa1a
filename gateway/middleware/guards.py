"""Pure ASGI middleware guarding every route of every port.

Pure ASGI, never `BaseHTTPMiddleware`: that one hides client disconnects from the app
and broke request cancellation in vLLM (vllm-project/vllm#10087) and SGLang (#20623).

* `Guard` refuses, in the order a request meets them: a server that is draining (503),
  a missing or wrong API key (401), a body over the size limit (413). Public paths
  (health probes, by default) skip the key check and the draining check.
* Keys and their scopes are in `gateway.auth`: the management port needs an admin key,
  the others an inference key (403 otherwise). Without keys (local mode) only requests
  from a loopback peer with a loopback Host pass: the peer address because a Host
  header is whatever the client writes, the Host against DNS rebinding (a web page's
  request comes from this machine). Real CORS preflights skip the key.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.apis import Api, ApiIndex, Listener
from gateway.auth import ADMIN, INFERENCE, LOCAL, KeyRing, Principal
from gateway.errors import (
    Forbidden,
    GatewayError,
    NotReady,
    PayloadTooLarge,
    Unauthorized,
    classify,
    error_response,
)
from gateway.observability.metrics import current_observation

log = logging.getLogger(__name__)


INTERNAL_PRINCIPAL = "gateway.principal"
_LOOPBACK_HOST = re.compile(r"^(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$", re.IGNORECASE)


def _loopback_peer(scope: Scope) -> bool:
    """Whether the TCP peer is this machine (127.0.0.0/8 or ::1)."""
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0]).removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _is_preflight(scope: Scope) -> bool:
    """A real CORS preflight (OPTIONS with Origin and Access-Control-Request-Method),
    the only request that passes without a key (CORS answers it; nothing else runs)."""
    return (
        scope.get("method") == "OPTIONS"
        and _header(scope, b"origin") is not None
        and _header(scope, b"access-control-request-method") is not None
    )


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
        keys: KeyRing,
        local_only: bool = True,
        trusted_hosts: Iterable[str] = (),
        public_paths: Iterable[str],
        public_prefixes: Iterable[str] = (),
        body_limit: Callable[[Api], int],
        is_draining: Callable[[], bool],
        listener: Listener,
        apis: ApiIndex,
    ) -> None:
        self.app = app
        self.keys = keys
        self.local_only = local_only
        self.trusted_hosts = frozenset(h.lower() for h in trusted_hosts)
        self.public = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)
        self.body_limit = body_limit
        self.is_draining = is_draining
        self.listener = listener
        self.apis = apis

    def _trusted_host(self, host: str) -> bool:
        return bool(_LOOPBACK_HOST.match(host)) or host.lower().rsplit(":", 1)[0] in self.trusted_hosts

    async def _refuse(self, scope: Scope, send: Send, error: GatewayError) -> None:
        info = classify(error)
        obs = current_observation()
        if obs is not None:
            obs.error_type, obs.error = info.type, info.message
        found = scope.get("state", {}).get("api")
        api = found if isinstance(found, Api) else self.apis.api_of(scope.get("path", ""))
        status, payload = error_response(info, api.shape_on(self.listener))
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in info.headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _caller(self, scope: Scope, public: bool) -> Principal | GatewayError:
        """The request's principal, or why it is refused."""
        if not self.keys.configured:
            # Local mode: no keys, so only this machine may call, by a loopback name. A
            # web page cannot rebind another name to 127.0.0.1 and drive the API.
            if self.local_only:
                if not _loopback_peer(scope):
                    return Forbidden("this server has no API keys and answers only to this machine")
                host = _header(scope, b"host")
                if host is not None and not self._trusted_host(host):
                    return Forbidden("this server has no API keys and answers only to a loopback Host", param="host")
            return LOCAL
        if public or _is_preflight(scope):
            return LOCAL if public else Principal("preflight", "preflight", frozenset())
        principal = self.keys.authenticate(presented_key(scope))
        if principal is None:
            return Unauthorized(
                "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        needed = ADMIN if self.listener == "management" else INFERENCE
        if not principal.can(needed):
            return Forbidden(f"the key {principal.name!r} has no {needed} permission for this port")
        return principal

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
        started = time.perf_counter()
        # in-process work of a key (a batch line) carries its principal; no server puts
        # this key in a scope, so no client can
        internal = scope.get(INTERNAL_PRINCIPAL)
        caller = internal if isinstance(internal, Principal) else self._caller(scope, public)
        obs = current_observation()
        if obs is not None and obs.trace is not None:
            obs.phases.append(("gateway.auth", started, time.perf_counter()))
        if isinstance(caller, GatewayError):
            await self._refuse(scope, send, caller)
            return
        scope.setdefault("state", {})["principal"] = caller
        if obs is not None:
            obs.key, obs.tenant = caller.name, caller.tenant
        found = scope.get("state", {}).get("api")
        limit = self.body_limit(found if isinstance(found, Api) else self.apis.api_of(path))
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                # refused before a byte of it is read or parsed
                error = PayloadTooLarge(f"the body is larger than {limit} bytes", headers={"Connection": "close"})
                await self._refuse(scope, send, error)
                return
        await self.app(scope, self._counting(receive, limit), send)

    def _counting(self, receive: Receive, limit: int) -> Receive:
        """A receive that stops a chunked body at the size limit (no Content-Length)."""
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            return message

        return wrapped
