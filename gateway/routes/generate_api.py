"""generate-one / generate-batch routes (translation in `gateway.serving.generate_api`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from starlette.responses import Response

from gateway.protocols.generate_api import BatchResult, GenerateBatchRequest, GenerateOneRequest
from gateway.serving import generate_api

router = APIRouter(prefix="/api", tags=["generate-api"])


@router.post("/generate-one", response_class=PlainTextResponse)
async def generate_one(body: GenerateOneRequest, request: Request) -> Response:
    """Generate (or continue) one text; streamed as plain text unless `stream_response` is false."""
    return await generate_api.generate_one(request, body)


@router.post("/generate-batch", response_model=list[BatchResult], response_model_exclude_none=True)
async def generate_batch(body: GenerateBatchRequest, request: Request) -> Response:
    """Generate (or continue) every prompt at once; answers keep the request's order."""
    return await generate_api.generate_batch(request, body)
