"""Tokenizer routes of a reader, on the main port: `/tokenize`, `/detokenize`, `/chat_template`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.protocols.management import ChatTemplateRequest, DetokenizeRequest, TokenizeRequest
from gateway.serving import tokenizer

router = APIRouter(tags=["tokenizer"])


@router.post("/tokenize/{reader_id}")
async def tokenize(reader_id: str, body: TokenizeRequest, request: Request) -> dict[str, Any]:
    """Tokens of a text: vocabulary entries, their ids and their count."""
    return await tokenizer.tokenize(request, reader_id, body)


@router.post("/detokenize/{reader_id}")
async def detokenize(reader_id: str, body: DetokenizeRequest, request: Request) -> dict[str, str]:
    """Text of token ids or vocabulary entries."""
    return await tokenizer.detokenize(request, reader_id, body)


@router.post("/chat_template/{reader_id}")
async def chat_template(reader_id: str, body: ChatTemplateRequest, request: Request) -> dict[str, list[str]]:
    """Each conversation rendered with the reader's chat template."""
    return await tokenizer.chat_template(request, reader_id, body)
