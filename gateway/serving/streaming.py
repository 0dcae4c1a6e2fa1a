"""Server-Sent Events responses that always release what they hold.

sse-starlette gives the framing, keep-alive comments (so an ingress idle timeout does
not cut a stream that waits in the queue) and `X-Accel-Buffering: no`. On top of it,
`ManagedEventSource` runs a cleanup callback however the response ends: completed,
client gone before the first event, or cancelled. An async generator that never
started cannot clean up after itself, so the engine streams are closed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send


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
