"""The OpenAI-style chat service API at the root of the main port (translation in
`gateway.serving.chat_service`). Scripts that point the openai SDK at the root
(`base_url="http://host:3000/"`) work unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.protocols.chat_service import ServiceChatRequest
from gateway.protocols.embeddings import EmbeddingRequest
from gateway.serving import chat_service

router = APIRouter(tags=["chat-service"])


@router.get("/chat")
async def chat_status(request: Request) -> dict[str, Any]:
    """The service's status object, or its "not started" object while the model loads."""
    return chat_service.status(request)


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ServiceChatRequest, request: Request) -> Response:
    """OpenAI chat completion; messages without a role are the user's."""
    return await chat_service.chat_completions(request, body)


@router.post("/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """OpenAI embeddings; a `model` that names nothing loaded uses the default group."""
    return await chat_service.embed(request, body)
