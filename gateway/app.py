"""Build the FastAPI apps (one per listener) and their error handlers.

One process serves several listeners that share one `Runtime` (and so one engine per
reader): the main API on `port`, the management API on `port + 1` and the OpenAI API
on `openai_port`. `create_app` builds a self-contained main app for tests and ASGI
servers; `gateway.server.serve` runs all listeners.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from engine_adapters.base import EngineError
from gateway import __version__
from gateway.errors import BadRequest, GatewayError, classify, error_body, from_status, shape_for, validation_message
from gateway.middleware.guards import Guard
from gateway.observability.access import Observer
from gateway.observability.metrics import current as observation
from gateway.protocols.openapi import with_limits
from gateway.registry import EngineFactory
from gateway.routes import chat_service, embeddings, generate_api, health, management, openai, takeoff, tokenization, ui
from gateway.runtime import Runtime
from gateway.settings import Settings, load_settings

Surface = Literal["main", "management", "openai"]


def _render(request: Request, error: BaseException) -> JSONResponse:
    """Every error answer of every app: the one table, the path's one shape."""
    info = classify(error)
    obs = observation()
    if obs is not None:
        obs.error_type = info.type
    shape = shape_for(request.app.state.surface, request.url.path)
    return JSONResponse(error_body(info, shape), status_code=info.status, headers=info.headers or None)


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


def _new_app(runtime: Runtime, surface: Surface, title: str, lifespan: object = None) -> FastAPI:
    app = FastAPI(title=title, version=__version__, lifespan=lifespan)  # type: ignore[arg-type]
    app.state.runtime = runtime
    app.state.pipeline = runtime.pipeline
    app.state.surface = surface
    s = runtime.settings
    ui = surface == "main" and s.ui_enabled
    # Added last = outermost: CORS answers preflights before the guard asks for a key.
    app.add_middleware(
        Guard,
        keys=runtime.keys,
        local_only=not s.allow_unauthenticated,
        trusted_hosts=s.trusted_hosts,
        public_paths=[*s.public_paths, *(["/metrics"] if s.metrics_public else []), *(["/"] if ui else [])],
        # the page and its files load without a key; the page asks for one for the API
        public_prefixes=("/ui/",) if ui else (),
        max_body_bytes=s.max_body_bytes,
        is_draining=lambda: runtime.draining,
        surface=surface,
    )
    # the console on the main port adds and removes readers through this port
    ui_origin = (
        rf"^https?://(127\.0\.0\.1|localhost|\[::1\]):{s.port}$" if surface == "management" and s.ui_enabled else None
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
    app.add_middleware(Observer, surface=surface, enabled=lambda: s.access_log)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(GatewayError, _on_error)
    app.add_exception_handler(EngineError, _on_error)
    app.add_exception_handler(Exception, _on_error)
    app.openapi = with_limits(app, s)  # type: ignore[method-assign]
    return app


def build_main_app(runtime: Runtime, lifespan: object = None) -> FastAPI:
    """The main API (port 3000): Takeoff inference, health and status."""
    app = _new_app(runtime, "main", "LLM gateway", lifespan)
    app.include_router(health.router)
    app.include_router(takeoff.router)
    app.include_router(openai.router)
    app.include_router(embeddings.v1_router)
    app.include_router(generate_api.router)
    app.include_router(embeddings.router)
    app.include_router(tokenization.router)
    app.include_router(chat_service.router)
    if runtime.settings.metrics_on_main_port:
        app.include_router(health.metrics_router)
    if runtime.settings.ui_enabled:
        app.include_router(ui.router)
        app.mount("/ui", ui.UIFiles(directory=ui.STATIC), name="ui")
    return app


def build_management_app(runtime: Runtime) -> FastAPI:
    """The management API (port 3001): status for operators and the Takeoff client."""
    app = _new_app(runtime, "management", "LLM gateway management")
    app.include_router(health.router)
    app.include_router(health.metrics_router)
    app.include_router(management.router)
    return app


def build_openai_app(runtime: Runtime) -> FastAPI:
    """The OpenAI-compatible API on its own port (3003, as Takeoff's compatibility layer)."""
    app = _new_app(runtime, "openai", "LLM gateway OpenAI-compatible API")
    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(embeddings.v1_router)
    return app


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def open_to_the_network(settings: Settings) -> str | None:
    """Why these settings would serve an open API beyond this machine, or None.

    No keys and a non-loopback host is refused (the process exits 2 before loading any
    model) unless `allow_unauthenticated` says it is meant.
    """
    has_keys = bool(settings.api_keys or settings.admin_api_keys or settings.api_keys_file)
    hosts = {settings.host, settings.management_host}
    if has_keys or settings.allow_unauthenticated or hosts <= set(LOOPBACK):
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
    reason = open_to_the_network(settings)
    if reason is not None:
        raise RuntimeError(reason)
    runtime = Runtime.create(settings, factory)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.registry.start_all()
        try:
            yield
        finally:
            await runtime.close()

    return build_main_app(runtime, lifespan), build_management_app(runtime), build_openai_app(runtime)
