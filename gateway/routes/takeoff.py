"""Takeoff inference routes: `POST /generate` and `POST /generate_stream`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.protocols.takeoff import GenerateRequest, GenerateResponse
from gateway.runtime import get_runtime
from gateway.serving import takeoff
from gateway.serving.budget import make_budget, priority_of
from gateway.serving.common import FastJSONResponse, engine_of, pick_reader, set_priority
from gateway.serving.streaming import ManagedEventSource, run_buffered, stream_response

router = APIRouter(tags=["takeoff"])


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True)
async def generate(body: GenerateRequest, request: Request) -> Any:
    """Generate text for one prompt or a list of prompts and return it whole."""
    rt = get_runtime(request)
    requests = set_priority(takeoff.to_neutral(body, rt.settings), priority_of(request, body.priority))
    budget = make_budget(request, rt.settings, body.timeout)
    reader = pick_reader(rt.registry, body.consumer_group or "primary", requests)
    work = takeoff.generate(engine_of(reader), body, requests)
    return FastJSONResponse(await run_buffered(rt, request, reader, budget, work))


@router.post(
    "/generate_stream",
    response_class=ManagedEventSource,
    status_code=200,  # FastAPI cannot read a default from this response class
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def generate_stream(body: GenerateRequest, request: Request) -> ManagedEventSource:
    """Stream generated text as Server-Sent Events (framing in `gateway.serving.takeoff`)."""
    rt = get_runtime(request)
    requests = set_priority(takeoff.to_neutral(body, rt.settings), priority_of(request, body.priority))
    budget = make_budget(request, rt.settings, body.timeout)
    reader = pick_reader(rt.registry, body.consumer_group or "primary", requests)
    return await stream_response(rt, reader, requests, lambda streams: takeoff.stream_events(body, streams), budget)
