"""Liveness, readiness and status: what Kubernetes probes and operators read."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.observability.metrics import exposition
from gateway.runtime import get_runtime
from gateway.serving import status as serving_status

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["metrics"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. It never depends on the model."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when every consumer group has a ready reader and we are not draining."""
    rt = get_runtime(request)
    return serving_status.readiness(rt.registry, rt.draining)


@router.get("/health")
@router.get("/ping")
@router.post("/ping")
async def health(request: Request) -> Response:
    """vLLM's health probe (and SageMaker's `/ping`): an empty 200 when ready, otherwise
    503 with the reasons (as `/readyz`), for routers and platforms that know vLLM's server."""
    rt = get_runtime(request)
    ready = serving_status.readiness(rt.registry, rt.draining)
    return Response(status_code=200) if ready.status_code == 200 else ready


@router.get("/version")
async def version() -> dict[str, str]:
    """vLLM's version probe: `version` is the gateway's, `vllm` the engine library's."""
    return serving_status.versions()


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """The loaded models, their consumer groups and their state."""
    rt = get_runtime(request)
    detail = request.app.state.listener == "management"  # admin keys see paths and errors
    running = rt.batches.running() if rt.settings.batches.enabled else None
    return serving_status.status(rt.registry, rt.draining, rt.started_at, rt.continuation.health(), detail, running)


@metrics_router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text: the gateway's series and vLLM's `vllm:*` series (on the API ports,
    where `metrics_on_main_port` serves it without a key as vLLM does, none of the series
    per API key name)."""
    return Response(exposition(per_key=request.app.state.apis.listener == "management"), media_type=CONTENT_TYPE_LATEST)
