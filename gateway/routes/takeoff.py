"""Takeoff inference routes: `POST /generate` and `POST /generate_stream`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.protocols.takeoff import GenerateRequest, GenerateResponse
from gateway.runtime import get_runtime
from gateway.serving import takeoff
from gateway.serving.common import cancel_on_disconnect, engine_of
from gateway.serving.streaming import ManagedEventSource

router = APIRouter(tags=["takeoff"])


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True)
async def generate(body: GenerateRequest, request: Request) -> Any:
    """Generate text for one prompt or a list of prompts and return it whole."""
    rt = get_runtime(request)
    requests = takeoff.to_neutral(body, rt.settings)
    reader = rt.registry.pick(body.consumer_group or "primary")
    with reader.track():
        return await cancel_on_disconnect(request, takeoff.generate(engine_of(reader), body, requests))


@router.post("/generate_stream", response_class=ManagedEventSource)
async def generate_stream(body: GenerateRequest, request: Request) -> ManagedEventSource:
    """Stream generated text as Server-Sent Events (framing in `gateway.serving.takeoff`)."""
    rt = get_runtime(request)
    requests = takeoff.to_neutral(body, rt.settings)
    reader = rt.registry.pick(body.consumer_group or "primary")
    release = reader.acquire()
    try:
        streams = await takeoff.open_streams(engine_of(reader), requests)
    except BaseException:
        release()
        raise

    async def close() -> None:
        release()
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]

    return ManagedEventSource(
        takeoff.stream_events(body, streams),
        on_close=close,
        keepalive_seconds=rt.settings.sse_keepalive_seconds,
    )
