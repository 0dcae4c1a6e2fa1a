"""A reader's tokenizer: `/tokenize`, `/detokenize` and `/chat_template`."""

from __future__ import annotations

from typing import Any

from engine_adapters.base import GenerativeEngine
from gateway.errors import Unprocessable
from gateway.protocols.management import ChatTemplateRequest, DetokenizeRequest, TokenizeRequest
from gateway.registry import Registry


def _engine(registry: Registry, reader_id: str) -> GenerativeEngine:
    reader = registry.get(reader_id)
    if reader.task != "generate":
        raise Unprocessable(f"reader {reader_id!r} ({reader.task}) has no tokenizer routes", param="reader_id")
    return reader.generative()


async def tokenize(registry: Registry, reader_id: str, body: TokenizeRequest) -> dict[str, Any]:
    """Tokens of a text: vocabulary entries, their ids and their count."""
    engine = _engine(registry, reader_id)
    ids = await engine.tokenize(body.text, body.use_chat_template)
    return {"tokens": engine.token_strings(ids), "token_ids": ids, "tokens_count": len(ids)}


async def detokenize(registry: Registry, reader_id: str, body: DetokenizeRequest) -> dict[str, str]:
    """Text of token ids or vocabulary entries."""
    engine = _engine(registry, reader_id)
    tokens = body.tokens
    ids = [t for t in tokens if isinstance(t, int)] if all(isinstance(t, int) for t in tokens) else None
    if ids is None:
        ids = engine.token_ids_of([str(t) for t in tokens])
    return {"text": await engine.detokenize(ids, body.skip_special_tokens)}


def chat_template(registry: Registry, reader_id: str, body: ChatTemplateRequest) -> dict[str, list[str]]:
    """Each conversation rendered with the reader's chat template."""
    engine = _engine(registry, reader_id)
    rendered = [
        engine.render_chat([m.model_dump() for m in conversation], body.add_generation_prompt)
        for conversation in body.inputs
    ]
    return {"messages": rendered}
