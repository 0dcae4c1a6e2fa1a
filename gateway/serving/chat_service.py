"""The OpenAI-style chat service API at the root of the main port: `/chat`,
`/chat/completions` and `/embeddings`.

It speaks OpenAI's chat protocol (gateway/serving/openai/chat.py does the translation) with
three differences of a one-model service: messages may leave out their role (they are
the user's), a configured system prompt is added when the conversation has none, and a
`model` that names no loaded model or group is served by the default group (and echoed
back as asked).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import Work
from gateway.errors import NotFound, NotReady
from gateway.machinery.pipeline import pipeline_of
from gateway.machinery.routing import Target
from gateway.protocols.chat_service import ServiceChatRequest
from gateway.protocols.embeddings import EmbeddingRequest
from gateway.serving import embeddings
from gateway.serving.openai import chat


def _target(model: str | None, task: Work = "generate") -> Target:
    return Target(model, task=task, param="model", by_model=True, fallback=True)


async def chat_completions(request: Request, body: ServiceChatRequest) -> Response:
    """OpenAI's chat completion with the service's defaults."""
    settings = pipeline_of(request).settings
    plan = chat.chat_plan(body, settings)
    neutral = plan.request
    if body.max_tokens is None and body.max_completion_tokens is None:
        default = settings.default_max_new_tokens
        limit = settings.max_new_tokens_limit
        neutral.sampling.max_new_tokens = min(default, limit) if limit is not None else default
    system = settings.chat_system_prompt
    assert neutral.messages is not None
    if system and not any(m["role"] == "system" for m in neutral.messages):
        neutral.messages.insert(0, {"role": "system", "content": system})
    return await chat.chat(request, body, plan, _target(body.model))


def status(request: Request) -> dict[str, Any]:
    """The service's status object, or its "not started" object while the model loads.

    A status read: never refused by admission control, never counted as a request.
    """
    pipeline = pipeline_of(request)
    try:
        info = pipeline.status_reader(_target(None)).generative().info
    except (NotFound, NotReady):
        return {"status": "not started", "message": "You need to start the service first."}
    settings = pipeline.settings
    return {
        "status": "running",
        "llm_serving_url": str(request.base_url).rstrip("/"),
        "model_name": info.name,
        "max_new_tokens": settings.default_max_new_tokens,
        "device": info.device,
        "do_sample": True,  # temperature defaults to 1.0, as in OpenAI's API
        "system_prompt": settings.chat_system_prompt,
    }


async def embed(request: Request, body: EmbeddingRequest) -> Response:
    """OpenAI embeddings; a `model` that names nothing loaded uses the default group."""
    return await embeddings.openai_embeddings(request, body, _target(body.model, "embed"))
