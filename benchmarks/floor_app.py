"""The floor of the front-end benchmark: a bare Starlette app on uvicorn that streams the
same events as the gateway, at the same rate, with nothing else (no validation, limits,
accounting or engine). What the gateway spends per token above this is its own.

    .venv/bin/python -m uvicorn benchmarks.floor_app:app --port 8000 --no-access-log

FLOOR_TOKENS_PER_SECOND sets the per-stream rate (0: as fast as possible), on an engine's
clock, the gateway's scripted engine's (`StepClock`: one step for every stream at once).
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

from engine_adapters.scripted import StepClock

RATE = float(os.environ.get("FLOOR_TOKENS_PER_SECOND", "0"))
DELAY = 1.0 / RATE if RATE else 0.0
CLOCK = StepClock(DELAY or 1.0)  # the scripted engine's: one step for every stream at once


async def ticks(n: int) -> AsyncIterator[int]:
    """How many tokens each event carries: one, on the clock of an engine making RATE tokens
    per second, or all those due since the last event when the stream fell behind (as the
    scripted engine and vLLM do); one at a time as fast as possible without a rate."""
    if not DELAY:
        for _ in range(n):
            await asyncio.sleep(0)
            yield 1
        return
    loop = asyncio.get_running_loop()
    first, sent = CLOCK.now(loop), 0
    while sent < n:
        due = CLOCK.at(loop, first + sent + 1)
        if due is not None:
            await due
        k = min(n - sent, max(1, CLOCK.now(loop) - first - sent))
        sent += k
        yield k


def text(k: int) -> str:
    return "x" * k


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def chat(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())
    n, created = body["max_tokens"], int(time.time())

    async def events() -> AsyncIterator[bytes]:
        async for k in ticks(n):
            chunk = {
                "id": "chatcmpl-floor",
                "object": "chat.completion.chunk",
                "created": created,
                "model": "floor",
                "choices": [{"index": 0, "delta": {"content": text(k)}, "finish_reason": None}],
            }
            yield sse(orjson.dumps(chunk))
        yield sse(b"[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


async def completions(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())
    n, created = body["max_tokens"], int(time.time())

    async def events() -> AsyncIterator[bytes]:
        async for k in ticks(n):
            chunk = {
                "id": "cmpl-floor",
                "object": "text_completion",
                "created": created,
                "model": "floor",
                "choices": [{"index": 0, "text": text(k), "logprobs": None, "finish_reason": None}],
            }
            yield sse(orjson.dumps(chunk))
        yield sse(b"[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


async def takeoff(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())

    async def events() -> AsyncIterator[bytes]:
        async for k in ticks(body["max_new_tokens"]):
            yield b"data: " + text(k).encode() + b"\n\n"
        yield b"event: end\ndata: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def generate_one(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())

    async def pieces() -> AsyncIterator[bytes]:
        async for k in ticks(body["generation_config"]["max_new_tokens"]):
            yield text(k).encode()

    return StreamingResponse(pieces(), media_type="text/plain")


async def responses(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())

    async def events() -> AsyncIterator[bytes]:
        yield b"event: response.created\n" + sse(orjson.dumps({"type": "response.created", "sequence_number": 0}))
        seq = 0
        async for k in ticks(body["max_output_tokens"]):
            seq += 1
            delta = {
                "type": "response.output_text.delta",
                "sequence_number": seq,
                "item_id": "msg_floor",
                "output_index": 0,
                "content_index": 0,
                "delta": text(k),
                "logprobs": [],
            }
            yield b"event: response.output_text.delta\n" + sse(orjson.dumps(delta))
        yield b"event: response.completed\n" + sse(orjson.dumps({"type": "response.completed"}))

    return StreamingResponse(events(), media_type="text/event-stream")


async def messages(request: Request) -> StreamingResponse:
    body = orjson.loads(await request.body())

    async def events() -> AsyncIterator[bytes]:
        start = {"type": "message_start", "message": {"id": "msg_floor", "type": "message", "role": "assistant"}}
        yield b"event: message_start\n" + sse(orjson.dumps(start))
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        yield b"event: content_block_start\n" + sse(orjson.dumps(block))
        async for k in ticks(body["max_tokens"]):
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text(k)}}
            yield b"event: content_block_delta\n" + sse(orjson.dumps(delta))
        yield b"event: content_block_stop\n" + sse(b'{"type":"content_block_stop","index":0}')
        yield b"event: message_stop\n" + sse(b'{"type":"message_stop"}')

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
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/readyz", ready),
    ]
)
