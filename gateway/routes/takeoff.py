"""Takeoff inference routes: `POST /generate` and `POST /generate_stream`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.machinery.bodies import ManagedEventSource
from gateway.protocols.takeoff import GenerateRequest, GenerateResponse
from gateway.serving import takeoff

router = APIRouter(tags=["takeoff"])


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Generate text for one prompt or a list of prompts and return it whole."""
    return await takeoff.generate(request, body, stream=False)


@router.post(
    "/generate_stream",
    response_class=ManagedEventSource,
    status_code=200,  # FastAPI cannot read a default from this response class
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def generate_stream(body: GenerateRequest, request: Request) -> Response:
    """Stream generated text as Server-Sent Events (framing in `gateway.serving.takeoff`)."""
    return await takeoff.generate(request, body, stream=True)
