"""OpenAI-compatible routes, served under `/v1` on the main port and on the OpenAI port."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.errors import NotFound
from gateway.protocols.openai import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from gateway.runtime import get_runtime
from gateway.serving import openai
from gateway.serving.budget import make_budget, priority_of
from gateway.serving.common import FastJSONResponse, collect, engine_of, set_priority
from gateway.serving.streaming import run_buffered, stream_response

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """Chat completion, whole or streamed (`stream: true`)."""
    rt = get_runtime(request)
    (neutral,) = set_priority([openai.chat_to_neutral(body, rt.settings)], priority_of(request, body.priority))
    budget = make_budget(request, rt.settings, body.timeout)
    reader = openai.resolve_reader(rt.registry, body.model, [neutral])
    if body.stream:
        return await stream_response(rt, reader, [neutral], lambda streams: openai.chat_stream(body, streams), budget)
    result = await run_buffered(rt, request, reader, budget, collect(engine_of(reader), neutral))
    return FastJSONResponse(openai.chat_response(body, result))


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    """Text completion for one prompt or several, whole or streamed."""
    rt = get_runtime(request)
    neutral = set_priority(openai.completion_to_neutral(body, rt.settings), priority_of(request, body.priority))
    budget = make_budget(request, rt.settings, body.timeout)
    reader = openai.resolve_reader(rt.registry, body.model, neutral)
    engine = engine_of(reader)
    if body.stream:
        return await stream_response(
            rt, reader, neutral, lambda streams: openai.completion_stream(engine, body, neutral, streams), budget
        )
    result = await run_buffered(rt, request, reader, budget, openai.completion_response(engine, body, neutral))
    return FastJSONResponse(result)


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
