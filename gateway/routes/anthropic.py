"""Anthropic's Messages API (translation in `gateway.serving.anthropic`), on the main port and
the OpenAI port: `ANTHROPIC_BASE_URL` may name either."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.protocols.anthropic import CountTokensRequest, MessagesRequest
from gateway.serving import anthropic

router = APIRouter(prefix="/v1", tags=["anthropic"])


@router.post("/messages", response_model=None)
async def messages(body: MessagesRequest, request: Request) -> Response:
    """A message, whole or streamed (`stream: true`)."""
    return await anthropic.create(request, body)


@router.post("/messages/count_tokens", response_model=None)
async def count_tokens(body: CountTokensRequest, request: Request) -> Response:
    """The prompt's tokens as the model would see them."""
    return await anthropic.count_tokens(request, body)
