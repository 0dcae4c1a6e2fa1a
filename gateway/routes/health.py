"""Liveness, readiness and status: what Kubernetes probes and operators read."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import __version__
from gateway.observability.metrics import exposition
from gateway.runtime import get_runtime

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
    readers = {r.id: r.state for r in rt.registry.readers.values()}
    if rt.draining:
        return JSONResponse({"status": "draining", "readers": readers}, status_code=503)
    if not rt.registry.ready():
        return JSONResponse({"status": "not ready", "readers": readers}, status_code=503)
    return JSONResponse({"status": "ready", "readers": readers})


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """The loaded models, their consumer groups and their state."""
    rt = get_runtime(request)
    return {
        "status": "draining" if rt.draining else ("ready" if rt.registry.ready() else "starting"),
        "version": __version__,
        "uptime_seconds": round(time.time() - rt.started_at, 1),
        "live_readers": {r.id: r.describe() for r in rt.registry.readers.values()},
        "consumer_groups": {g: [r.id for r in rs] for g, rs in rt.registry.groups().items()},
    }


@metrics_router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus text: the gateway's series and vLLM's `vllm:*` series."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
