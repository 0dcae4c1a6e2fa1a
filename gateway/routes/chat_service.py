"""The OpenAI-style chat service API of seed 003, at the root of the main port.

`/chat` reports the service, `/chat/completions` is OpenAI's chat with optional roles
and a configurable system prompt, `/embeddings` embeds texts. Scripts that point the
openai SDK at the root (`base_url="http://host:3000/"`) work unchanged: a `model` that
names no loaded model or group is served by the primary group, since this service
fronts one model, and is echoed back as seed 003 shows.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from engine_adapters.base import GenerationRequest
from gateway.errors import NotFound, NotReady
from gateway.protocols.chat_service import ServiceChatRequest
from gateway.protocols.embeddings import EmbeddingRequest
from gateway.registry import Reader
from gateway.runtime import Runtime, get_runtime
from gateway.serving import embeddings as embeddings_serving
from gateway.serving import openai
from gateway.serving.budget import make_budget, priority_of
from gateway.serving.common import FastJSONResponse, collect, engine_of, pick_reader
from gateway.serving.streaming import run_buffered, stream_response

router = APIRouter(tags=["chat-service"])


def _reader(rt: Runtime, model: str, request: GenerationRequest) -> Reader:
    try:
        return openai.resolve_reader(rt.registry, model, [request])
    except NotFound as exc:
        if exc.param != "model":
            raise
        return pick_reader(rt.registry, "primary", [request])


@router.get("/chat")
async def chat_status(request: Request) -> dict[str, Any]:
    """Seed 003's status object, or its "not started" object while the model loads."""
    rt = get_runtime(request)
    try:
        reader = rt.registry.pick("primary")
        info = engine_of(reader).info
    except (NotFound, NotReady):
        return {"status": "not started", "message": "You need to start the service first."}
    return {
        "status": "running",
        "llm_serving_url": str(request.base_url).rstrip("/"),
        "model_name": info.name,
        "max_new_tokens": rt.settings.default_max_new_tokens,
        "device": info.device,
        "do_sample": True,  # temperature defaults to 1.0, as in OpenAI's API
        "system_prompt": rt.settings.chat_system_prompt,
    }


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ServiceChatRequest, request: Request) -> Any:
    """OpenAI chat completion; messages without a role are the user's."""
    rt = get_runtime(request)
    if body.max_tokens is None and body.max_completion_tokens is None:
        body.max_tokens = rt.settings.default_max_new_tokens
    neutral = openai.chat_to_neutral(body, rt.settings)
    system = rt.settings.chat_system_prompt
    assert neutral.messages is not None
    if system and not any(m["role"] == "system" for m in neutral.messages):
        neutral.messages.insert(0, {"role": "system", "content": system})
    neutral.priority = priority_of(request, body.priority)
    budget = make_budget(request, rt.settings, body.timeout)
    reader = _reader(rt, body.model, neutral)
    if body.stream:
        return await stream_response(rt, reader, [neutral], lambda streams: openai.chat_stream(body, streams), budget)
    result = await run_buffered(rt, request, reader, budget, collect(engine_of(reader), neutral))
    return FastJSONResponse(openai.chat_response(body, result))


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
    """OpenAI embeddings; a `model` that names nothing loaded uses the default group."""
    rt = get_runtime(request)
    work = embeddings_serving.openai_embeddings(rt.registry, body, rt.settings, lenient=True)
    return FastJSONResponse(await run_buffered(rt, request, None, make_budget(request, rt.settings), work))
