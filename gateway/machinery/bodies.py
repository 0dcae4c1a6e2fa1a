"""Response bodies: JSON via orjson, and streams that always release what they hold, at
little cost per token.

`FastJSONResponse` is every whole JSON answer. `ManagedEventSource` streams Server-Sent
Events; `ManagedStreamingResponse` plain text.
Both run a cleanup callback exactly once however the response ends (completed, client
gone before the first event, cancelled), and stop the stream when the client
disconnects, which aborts the engine requests: an async generator that never started
cannot clean up after itself, so the engine streams are closed here.

The events are the translations' pre-framed bytes, or dicts that sse-starlette's
`ServerSentEvent` frames. The response itself is a Starlette `StreamingResponse`, as a
bare app would stream, plus keep-alive comments (so an ingress idle timeout does not cut
a stream that waits in the queue) and `X-Accel-Buffering: no`. It replaces
sse-starlette's `EventSourceResponse`, whose four tasks per response (and its cancel
scope per event) cost about 110 µs per request and 5 µs per token here
(`benchmarks/results/frontend.md`): the stream runs in a task of its own (as Starlette's
does), another waits for the client's disconnect, and one timer per keep-alive period sends a comment only if
no event went out since the last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from sse_starlette.event import ensure_bytes
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

KEEPALIVE = b": keep-alive\n\n"
SEP = "\n"


class FastJSONResponse(JSONResponse):
    """JSON via orjson, numpy arrays included: 16x faster than json.dumps on embedding
    vectors (64 responses of 384 floats: 0.8 ms instead of 13 ms here)."""

    def render(self, content: Any) -> bytes:
        """Serialize with orjson."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ManagedStreamingResponse(StreamingResponse):
    """A streaming response (plain text) with once-only cleanup and disconnect handling."""

    def __init__(
        self,
        content: AsyncIterator[Any],
        on_close: Callable[[], Awaitable[None]],
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers={"X-Accel-Buffering": "no", **(headers or {})})
        self._on_close = on_close
        self._disconnected = False
        self._sent = 0  # events sent so far (the keep-alive timer reads it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream in a task of its own, which a disconnect cancels; clean up whatever
        happened. (The stream's own task keeps the chain of coroutines resumed per token
        short: the request's task runs under every middleware.)"""
        stream = asyncio.ensure_future(self._run(send))
        watcher = asyncio.ensure_future(self._watch(receive, stream))
        try:
            await stream
        except asyncio.CancelledError:
            # the client left (the stream, and with it the engine request, is stopped),
            # unless this task itself is being cancelled
            current = asyncio.current_task()
            if not self._disconnected or (current is not None and current.cancelling() > 0):
                raise
        finally:
            watcher.cancel()
            await self._on_close()

    async def _run(self, send: Send) -> None:
        await self.stream_response(send)

    async def stream_response(self, send: Send) -> None:
        """The events, each as one body message, then the end of the body."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            if not isinstance(chunk, bytes):
                chunk = self._encode(chunk)
            self._sent += 1
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await self._finish(send)

    def _encode(self, chunk: Any) -> bytes:
        return chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)

    async def _finish(self, send: Send) -> None:
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive, stream: asyncio.Future[None]) -> None:
        while not stream.done():
            message = await receive()
            if message["type"] == "http.disconnect":
                if not stream.done():
                    self._disconnected = True
                    stream.cancel()
                return


class ManagedEventSource(ManagedStreamingResponse):
    """Server-Sent Events: pre-framed bytes or dicts (`ServerSentEvent` fields), with a
    keep-alive comment after `keepalive_seconds` without an event."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[Any],
        on_close: Callable[[], Awaitable[None]],
        keepalive_seconds: float,
        headers: dict[str, str] | None = None,
        keepalive: bytes = KEEPALIVE,
    ) -> None:
        super().__init__(
            content,
            on_close=on_close,
            media_type=self.media_type,
            headers={"Cache-Control": "no-store", "Connection": "keep-alive", **(headers or {})},
        )
        self._keepalive = keepalive_seconds
        self._ping_bytes = keepalive  # a comment, or an API's own event (Anthropic's ping)
        self._timer: asyncio.TimerHandle | None = None
        self._pinging: asyncio.Task[None] | None = None
        self._seen = -1  # events sent at the previous keep-alive tick
        self._ended = False

    def _encode(self, chunk: Any) -> bytes:
        return ensure_bytes(chunk, SEP)

    async def _run(self, send: Send) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if self._ended:
                return
            if self._sent == self._seen and (self._pinging is None or self._pinging.done()):
                self._pinging = loop.create_task(self._ping(send))
            self._seen = self._sent
            self._timer = loop.call_later(self._keepalive, tick)

        self._seen = 0
        self._timer = loop.call_later(self._keepalive, tick)
        try:
            await self.stream_response(send)
        finally:
            self._ended = True
            self._timer.cancel()
            if self._pinging is not None and not self._pinging.done():
                self._pinging.cancel()

    async def _ping(self, send: Send) -> None:
        if not self._ended:
            await send({"type": "http.response.body", "body": self._ping_bytes, "more_body": True})

    async def _finish(self, send: Send) -> None:
        # a keep-alive still being written goes out before the end of the body
        self._ended = True
        if self._pinging is not None and not self._pinging.done():
            await asyncio.shield(self._pinging)
        await super()._finish(send)
