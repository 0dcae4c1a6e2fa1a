"""A reader's tokenizer: `/tokenize`, `/detokenize` and `/chat_template`."""

from __future__ import annotations

import asyncio
from typing import Any

from engine_adapters.base import GenerativeEngine
from gateway.errors import BadRequest, Unprocessable
from gateway.protocols.management import ChatTemplateRequest, DetokenizeRequest, TokenizeRequest
from gateway.registry import Registry


def _engine(registry: Registry, reader_id: str) -> GenerativeEngine:
    reader = registry.get(reader_id)
    if reader.task != "generate":
        raise Unprocessable(f"reader {reader_id!r} ({reader.task}) has no tokenizer routes", param="reader_id")
    return reader.generative()


async def tokenize(registry: Registry, reader_id: str, body: TokenizeRequest, limit: int) -> dict[str, Any]:
    """Tokens of a text: vocabulary entries, their ids and their count."""
    if len(body.text) > limit:
        raise BadRequest(f"text has {len(body.text)} characters; at most {limit} are allowed", param="text")
    engine = _engine(registry, reader_id)
    ids = await engine.tokenize(body.text, body.use_chat_template)
    return {"tokens": engine.token_strings(ids), "token_ids": ids, "tokens_count": len(ids)}


async def detokenize(registry: Registry, reader_id: str, body: DetokenizeRequest, limit: int) -> dict[str, str]:
    """Text of token ids or vocabulary entries."""
    if len(body.tokens) > limit:
        raise BadRequest(f"tokens has {len(body.tokens)} entries; at most {limit} are allowed", param="tokens")
    engine = _engine(registry, reader_id)
    tokens = body.tokens
    ids = [t for t in tokens if isinstance(t, int)] if all(isinstance(t, int) for t in tokens) else None
    if ids is None:
        ids = engine.token_ids_of([str(t) for t in tokens])
    return {"text": await engine.detokenize(ids, body.skip_special_tokens)}


async def chat_template(
    registry: Registry, reader_id: str, body: ChatTemplateRequest, limit: int
) -> dict[str, list[str]]:
    """Each conversation rendered with the reader's chat template (off the event loop:
    templates are Jinja programs)."""
    size = sum(len(m.content) for conversation in body.inputs for m in conversation)
    if size > limit:
        raise BadRequest(f"inputs have {size} characters; at most {limit} are allowed", param="inputs")
    engine = _engine(registry, reader_id)

    def render() -> list[str]:
        return [
            engine.render_chat([m.model_dump() for m in conversation], body.add_generation_prompt)
            for conversation in body.inputs
        ]

    return {"messages": await asyncio.to_thread(render)}
