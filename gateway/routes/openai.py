"""OpenAI-compatible routes, served under `/v1` on the main port and on the OpenAI port."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.protocols.openai import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from gateway.serving import openai, openai_chat

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion, whole or streamed (`stream: true`)."""
    return await openai_chat.chat(request, body)


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Text completion for one prompt or several, whole or streamed."""
    return await openai.completions(request, body)


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    """Every consumer group and every loaded model's name (both work as `model`)."""
    return openai.model_list(request)


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    """One entry of the model list."""
    return openai.model_card(request, model_id)
