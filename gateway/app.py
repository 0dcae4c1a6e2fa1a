"""Build the FastAPI apps (one per listener) from the API table, and their error handlers.

One process serves several listeners that share one `Runtime` (and so one engine per
reader): the main port (`port`), the management port (`port + 1`) and the OpenAI port
(`openai_port`). Each listener's app includes the routers of the API families the table
(gateway/apis.py) serves there. `create_app` builds a self-contained main app for tests
and ASGI servers; `gateway.server.serve` runs all listeners.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from engine_adapters.base import EngineError
from gateway import __version__
from gateway.apis import Api, ApiIndex, Listener, served
from gateway.auth import KeyRing
from gateway.errors import BadRequest, GatewayError, classify, error_response, from_status, validation_message
from gateway.middleware.guards import Guard
from gateway.observability.access import Observer, api_of
from gateway.observability.metrics import current_observation
from gateway.protocols.openapi import with_limits
from gateway.registry import EngineFactory
from gateway.runtime import Runtime
from gateway.settings import Settings, load_settings

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]
TITLES: dict[Listener, str] = {
    "main": "LLM gateway",
    "management": "LLM gateway management",
    "openai": "LLM gateway OpenAI-compatible API",
}


def _render(request: Request, error: BaseException) -> JSONResponse:
    """Every error answer of every app: the one error table, the family's one shape."""
    info = classify(error)
    obs = current_observation()
    if obs is not None:
        obs.error_type, obs.error = info.type, info.message
    index: ApiIndex = request.app.state.apis
    status, body = error_response(info, api_of(request.scope, index).shape_on(index.listener))
    return JSONResponse(body, status_code=status, headers=info.headers or None)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return _render(request, exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, field = validation_message(exc.errors())
    return _render(request, BadRequest(message, param=field))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    """Errors the framework raises (no route, wrong method, body unreadable)."""
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, GatewayError):  # FastAPI wraps errors raised while reading the body
        return _render(request, exc.__cause__)
    return _render(request, from_status(exc.status_code, str(exc.detail), dict(exc.headers or {})))


def _install(app: FastAPI, api: Api) -> None:
    """Include the family's routers (or run its installers) in `app`."""
    for name in api.routers:
        module, _, attribute = name.partition(":")
        target = getattr(importlib.import_module(f"gateway.routes.{module}"), attribute)
        if isinstance(target, APIRouter):
            app.include_router(target)
        else:
            installer: Callable[[FastAPI], None] = target
            installer(app)


def build_app(runtime: Runtime, listener: Listener, lifespan: Lifespan | None = None) -> FastAPI:
    """The app of one listener: the routers of every API family the table serves there."""
    app = FastAPI(title=TITLES[listener], version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.pipeline = runtime.pipeline
    app.state.listener = listener
    index = ApiIndex(listener)
    app.state.apis = index
    s = runtime.settings
    ui = listener == "main" and s.ui_enabled
    # Added last = outermost: CORS answers preflights before the guard asks for a key.
    app.add_middleware(
        Guard,
        keys=runtime.keys,
        local_only=not s.allow_unauthenticated,
        trusted_hosts=s.trusted_hosts,
        # metrics_public opens /metrics on the management port; metrics_on_main_port serves
        # it on the API ports without a key, as vLLM's server does, and without the series
        # per API key name (which would show key names to anyone who can reach them)
        public_paths=[
            *s.public_paths,
            *(["/metrics"] if s.metrics_public and listener == "management" else []),
            *(["/metrics"] if s.metrics_on_main_port and listener != "management" else []),
            *(["/"] if ui else []),
        ],
        # the page and its files load without a key; the page asks for one for the API
        public_prefixes=("/ui/",) if ui else (),
        body_limit=runtime.body_limit,
        is_draining=lambda: runtime.draining,
        listener=listener,
        apis=index,
    )
    # the console on the main port adds and removes readers through this port
    ui_origin = (
        rf"^https?://(127\.0\.0\.1|localhost|\[::1\]):{s.port}$" if listener == "management" and s.ui_enabled else None
    )
    if s.cors_allow_origins or ui_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=s.cors_allow_origins,
            allow_origin_regex=ui_origin,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    # outermost: sees every answer, refusals by the guard included
    app.add_middleware(
        Observer, apis=index, enabled=lambda: s.access_log, on_end=runtime.on_request_end, tracing=s.tracing
    )
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(GatewayError, _on_error)
    app.add_exception_handler(EngineError, _on_error)
    app.add_exception_handler(Exception, _on_error)
    app.openapi = with_limits(app, s)  # type: ignore[method-assign]
    for api in served(s, listener):
        _install(app, api)
    if listener == "main":
        runtime.batches.attach(app)  # batch lines run through the main port's routes
    return app


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def open_to_the_network(settings: Settings, keys: KeyRing) -> str | None:
    """Why these settings would serve an open API beyond this machine, or None.

    No keys and a non-loopback host is refused (the process exits 2 before loading any
    model) unless `allow_unauthenticated` says it is meant. "No keys" is what the guard
    sees (`keys.configured`), so the two can never disagree.
    """
    hosts = {settings.host, settings.management_host}
    if keys.configured or settings.allow_unauthenticated or hosts <= set(LOOPBACK):
        return None
    return (
        f"refusing to serve {', '.join(sorted(hosts - set(LOOPBACK)))} without API keys: set GATEWAY_API_KEYS "
        "(or api_keys_file), or GATEWAY_ALLOW_UNAUTHENTICATED=true to serve without keys"
    )


def create_app(settings: Settings | None = None, factory: EngineFactory | None = None) -> FastAPI:
    """A self-contained main app whose lifespan loads and stops the readers."""
    return create_apps(settings, factory)[0]


def create_apps(
    settings: Settings | None = None, factory: EngineFactory | None = None
) -> tuple[FastAPI, FastAPI, FastAPI]:
    """Main, management and OpenAI apps on one runtime; the main app's lifespan loads
    and stops the readers (for tests and single-port ASGI servers)."""
    settings = settings or load_settings()
    runtime = Runtime.create(settings, factory)
    reason = open_to_the_network(settings, runtime.keys)
    if reason is not None:
        raise RuntimeError(reason)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    return build_app(runtime, "main", lifespan), build_app(runtime, "management"), build_app(runtime, "openai")
