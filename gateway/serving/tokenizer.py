"""A reader's tokenizer: `/tokenize`, `/detokenize` and `/chat_template`.

Each route names a reader; the work goes through the pipeline like any other request (the
key's groups, per-key and reader limits, the deadline, disconnects), and the Jinja
rendering and long texts run off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from engine_adapters.base import GenerativeEngine
from gateway.errors import BadRequest, Unprocessable
from gateway.machinery.pipeline import pipeline_of
from gateway.protocols.management import ChatTemplateRequest, DetokenizeRequest, TokenizeRequest
from gateway.registry import Reader


def _engine(reader: Reader) -> GenerativeEngine:
    if reader.task != "generate":
        raise Unprocessable(f"reader {reader.id!r} ({reader.task}) has no tokenizer routes", param="reader_id")
    return reader.generative()


async def tokenize(request: Request, reader_id: str, body: TokenizeRequest) -> dict[str, Any]:
    """Tokens of a text: vocabulary entries, their ids and their count."""
    pipeline = pipeline_of(request)
    limit = pipeline.settings.max_tokenize_chars
    if len(body.text) > limit:
        raise BadRequest(f"text has {len(body.text)} characters; at most {limit} are allowed", param="text")

    async def work(reader: Reader) -> dict[str, Any]:
        engine = _engine(reader)
        ids = await engine.tokenize(body.text, body.use_chat_template)
        return {"tokens": engine.token_strings(ids), "token_ids": ids, "tokens_count": len(ids)}

    return await pipeline.on_reader(request, reader_id, work)


async def detokenize(request: Request, reader_id: str, body: DetokenizeRequest) -> dict[str, str]:
    """Text of token ids or vocabulary entries."""
    pipeline = pipeline_of(request)
    limit = pipeline.settings.max_tokenize_chars
    if len(body.tokens) > limit:
        raise BadRequest(f"tokens has {len(body.tokens)} entries; at most {limit} are allowed", param="tokens")

    async def work(reader: Reader) -> dict[str, str]:
        engine = _engine(reader)
        tokens = body.tokens
        ids = [t for t in tokens if isinstance(t, int)] if all(isinstance(t, int) for t in tokens) else None
        if ids is None:
            ids = engine.token_ids_of([str(t) for t in tokens])
        return {"text": await engine.detokenize(ids, body.skip_special_tokens)}

    return await pipeline.on_reader(request, reader_id, work)


async def chat_template(request: Request, reader_id: str, body: ChatTemplateRequest) -> dict[str, list[str]]:
    """Each conversation rendered with the reader's chat template (off the event loop:
    templates are Jinja programs)."""
    pipeline = pipeline_of(request)
    limit = pipeline.settings.max_tokenize_chars
    size = sum(len(m.content) for conversation in body.inputs for m in conversation)
    if size > limit:
        raise BadRequest(f"inputs have {size} characters; at most {limit} are allowed", param="inputs")

    async def work(reader: Reader) -> dict[str, list[str]]:
        engine = _engine(reader)

        def render() -> list[str]:
            return [
                engine.render_chat([m.model_dump() for m in conversation], body.add_generation_prompt)
                for conversation in body.inputs
            ]

        return {"messages": await asyncio.to_thread(render)}

    return await pipeline.on_reader(request, reader_id, work)
