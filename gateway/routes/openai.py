"""OpenAI-compatible routes, served under `/v1` on the main port and on the OpenAI port."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.errors import NotFound
from gateway.protocols.openai import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from gateway.runtime import get_runtime
from gateway.serving import openai
from gateway.serving.common import cancel_on_disconnect, collect, engine_of
from gateway.serving.streaming import stream_response

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """Chat completion, whole or streamed (`stream: true`)."""
    rt = get_runtime(request)
    neutral = openai.chat_to_neutral(body, rt.settings)
    reader = openai.resolve_reader(rt.registry, body.model, [neutral])
    if body.stream:
        return await stream_response(
            reader, [neutral], lambda streams: openai.chat_stream(body, streams), rt.settings.sse_keepalive_seconds
        )
    with reader.track():
        result = await cancel_on_disconnect(request, collect(engine_of(reader), neutral))
    return JSONResponse(openai.chat_response(body, result))


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    """Text completion for one prompt or several, whole or streamed."""
    rt = get_runtime(request)
    neutral = openai.completion_to_neutral(body, rt.settings)
    reader = openai.resolve_reader(rt.registry, body.model, neutral)
    engine = engine_of(reader)
    if body.stream:
        return await stream_response(
            reader,
            neutral,
            lambda streams: openai.completion_stream(engine, body, neutral, streams),
            rt.settings.sse_keepalive_seconds,
        )
    with reader.track():
        result = await cancel_on_disconnect(request, openai.completion_response(engine, body, neutral))
    return JSONResponse(result)


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    """Every consumer group and every loaded model's name (both work as `model`)."""
    return {"object": "list", "data": openai.model_cards(get_runtime(request).registry)}


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    """One entry of the model list."""
    for card in openai.model_cards(get_runtime(request).registry):
        if card["id"] == model_id:
            return card
    raise NotFound(f"the model {model_id!r} does not exist", param="model")
