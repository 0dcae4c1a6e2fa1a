"""Tokenizer routes of a reader, on the main port: `/tokenize`, `/detokenize`, `/chat_template`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from engine_adapters.base import GenerativeEngine
from gateway.errors import Unprocessable
from gateway.protocols.management import ChatTemplateRequest, DetokenizeRequest, TokenizeRequest
from gateway.runtime import get_runtime
from gateway.serving.common import engine_of

router = APIRouter(tags=["tokenizer"])


def _engine(request: Request, reader_id: str) -> GenerativeEngine:
    reader = get_runtime(request).registry.get(reader_id)
    engine = engine_of(reader)
    if reader.task != "generate":
        raise Unprocessable(f"reader {reader_id!r} ({reader.task}) has no tokenizer routes", param="reader_id")
    tokenizer_engine: GenerativeEngine = engine
    return tokenizer_engine


@router.post("/tokenize/{reader_id}")
async def tokenize(reader_id: str, body: TokenizeRequest, request: Request) -> dict[str, Any]:
    """Tokens of a text: vocabulary entries, their ids and their count."""
    engine = _engine(request, reader_id)
    ids = await engine.tokenize(body.text, body.use_chat_template)
    return {"tokens": engine.token_strings(ids), "token_ids": ids, "tokens_count": len(ids)}


@router.post("/detokenize/{reader_id}")
async def detokenize(reader_id: str, body: DetokenizeRequest, request: Request) -> dict[str, str]:
    """Text of token ids or vocabulary entries."""
    engine = _engine(request, reader_id)
    tokens = body.tokens
    ids = [t for t in tokens if isinstance(t, int)] if all(isinstance(t, int) for t in tokens) else None
    if ids is None:
        ids = engine.token_ids_of([str(t) for t in tokens])
    return {"text": await engine.detokenize(ids, body.skip_special_tokens)}


@router.post("/chat_template/{reader_id}")
async def chat_template(reader_id: str, body: ChatTemplateRequest, request: Request) -> dict[str, list[str]]:
    """Each conversation rendered with the reader's chat template."""
    engine = _engine(request, reader_id)
    rendered = [
        engine.render_chat([m.model_dump() for m in conversation], body.add_generation_prompt)
        for conversation in body.inputs
    ]
    return {"messages": rendered}
