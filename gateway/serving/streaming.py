"""Server-Sent Events responses that always release what they hold.

sse-starlette gives the framing, keep-alive comments (so an ingress idle timeout does
not cut a stream that waits in the queue) and `X-Accel-Buffering: no`. On top of it,
`ManagedEventSource` runs a cleanup callback however the response ends: completed,
client gone before the first event, or cancelled. An async generator that never
started cannot clean up after itself, so the engine streams are closed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from engine_adapters.base import GenerationOutput, GenerationRequest
from gateway.registry import Reader
from gateway.runtime import Runtime
from gateway.serving.budget import Budget
from gateway.serving.common import cancel_on_disconnect, engine_of, open_streams

T = TypeVar("T")
EventFactory = Callable[[list[AsyncIterator[GenerationOutput]]], AsyncIterator[Any]]


def _keepalive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive")


class ManagedEventSource(EventSourceResponse):
    """An `EventSourceResponse` with a cleanup callback that runs exactly once."""

    def __init__(
        self,
        content: AsyncIterator[Any],
        on_close: Callable[[], Awaitable[None]],
        keepalive_seconds: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            content,
            ping=keepalive_seconds,
            sep="\n",
            ping_message_factory=_keepalive,
            headers=headers,
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream, then clean up whatever happened."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # Called once per event. Without a send timeout (ours never sets one) the
        # library's cancel scope per event only costs CPU the engine core could use.
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


class ManagedStreamingResponse(StreamingResponse):
    """A plain streaming response (no SSE framing) with the same once-only cleanup."""

    def __init__(self, content: AsyncIterator[Any], on_close: Callable[[], Awaitable[None]], media_type: str) -> None:
        super().__init__(content, media_type=media_type, headers={"X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream, then clean up whatever happened."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


async def open_managed(
    runtime: Runtime, reader: Reader, requests: list[GenerationRequest], budget: Budget
) -> tuple[list[AsyncIterator[GenerationOutput]], Callable[[], Awaitable[None]]]:
    """Start `requests` on `reader`; returns the accepted streams and their cleanup.

    The requests are accepted by the engine before this returns, so invalid input is a
    normal error answer; the reader counts them in flight, and the runtime knows their
    budget, until the cleanup runs.
    """
    release = reader.acquire()
    runtime.budgets.add(budget)
    try:
        streams = await open_streams(engine_of(reader), requests, budget)
    except BaseException:
        release()
        runtime.budgets.discard(budget)
        raise

    async def close() -> None:
        release()
        runtime.budgets.discard(budget)
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]

    return streams, close


async def stream_response(
    runtime: Runtime, reader: Reader, requests: list[GenerationRequest], events: EventFactory, budget: Budget
) -> ManagedEventSource:
    """Start `requests` on `reader` and answer with the SSE events `events` makes of them."""
    streams, close = await open_managed(runtime, reader, requests, budget)
    return ManagedEventSource(events(streams), on_close=close, keepalive_seconds=runtime.settings.sse_keepalive_seconds)


async def run_buffered(
    runtime: Runtime, request: Request, reader: Reader | None, budget: Budget, work: Awaitable[T]
) -> T:
    """A whole answer: counted in flight on `reader` (if given; embedding work counts
    itself), under the deadline, cancelled if the client goes."""
    runtime.budgets.add(budget)
    try:
        if reader is None:
            return await cancel_on_disconnect(request, budget.bound(work))
        with reader.track():
            return await cancel_on_disconnect(request, budget.bound(work))
    finally:
        runtime.budgets.discard(budget)
