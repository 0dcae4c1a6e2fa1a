"""The floor of the front-end benchmark: a bare Starlette app on uvicorn that streams the
same events as the gateway, at the same rate, with nothing else (no validation, limits,
accounting or engine). What the gateway spends per token above this is its own.

    .venv/bin/python -m uvicorn benchmarks.floor_app:app --port 8000 --no-access-log

FLOOR_TOKENS_PER_SECOND sets the per-stream rate (0: as fast as possible).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

RATE = float(os.environ.get("FLOOR_TOKENS_PER_SECOND", "0"))
DELAY = 1.0 / RATE if RATE else 0.0
WORDS = "the quick brown fox jumps over the lazy dog".split()


async def ticks(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(DELAY)
        yield i


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def chat(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())
    n, created = body["max_tokens"], int(time.time())

    async def events() -> AsyncIterator[bytes]:
        async for i in ticks(n):
            chunk = {
                "id": "chatcmpl-floor",
                "object": "chat.completion.chunk",
                "created": created,
                "model": "floor",
                "choices": [{"index": 0, "delta": {"content": WORDS[i % len(WORDS)][:1]}, "finish_reason": None}],
            }
            yield sse(orjson.dumps(chunk))
        yield sse(b"[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


async def completions(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())
    n, created = body["max_tokens"], int(time.time())

    async def events() -> AsyncIterator[bytes]:
        async for i in ticks(n):
            chunk = {
                "id": "cmpl-floor",
                "object": "text_completion",
                "created": created,
                "model": "floor",
                "choices": [{"index": 0, "text": WORDS[i % len(WORDS)][:1], "logprobs": None, "finish_reason": None}],
            }
            yield sse(orjson.dumps(chunk))
        yield sse(b"[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


async def takeoff(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())

    async def events() -> AsyncIterator[bytes]:
        async for i in ticks(body["max_new_tokens"]):
            yield b"data: " + WORDS[i % len(WORDS)][:1].encode() + b"\n\n"
        yield b"event: end\ndata: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def generate_one(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())

    async def pieces() -> AsyncIterator[bytes]:
        async for i in ticks(body["generation_config"]["max_new_tokens"]):
            yield WORDS[i % len(WORDS)][:1].encode()

    return StreamingResponse(pieces(), media_type="text/plain")


async def responses(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())

    async def events() -> AsyncIterator[bytes]:
        yield b"event: response.created\n" + sse(orjson.dumps({"type": "response.created", "sequence_number": 0}))
        async for i in ticks(body["max_output_tokens"]):
            delta = {
                "type": "response.output_text.delta",
                "sequence_number": i + 1,
                "item_id": "msg_floor",
                "output_index": 0,
                "content_index": 0,
                "delta": WORDS[i % len(WORDS)][:1],
                "logprobs": [],
            }
            yield b"event: response.output_text.delta\n" + sse(orjson.dumps(delta))
        yield b"event: response.completed\n" + sse(orjson.dumps({"type": "response.completed"}))

    return StreamingResponse(events(), media_type="text/event-stream")


async def ready(_: Request) -> StreamingResponse:
    async def one() -> AsyncIterator[bytes]:
        yield b'{"status":"ready"}'

    return StreamingResponse(one(), media_type="application/json")


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/generate_stream", takeoff, methods=["POST"]),
        Route("/api/generate-one", generate_one, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/readyz", ready),
    ]
)
