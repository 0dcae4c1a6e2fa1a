"""The streaming responses (gateway/machinery/bodies.py), driven as an ASGI server does:
framing, keep-alive comments, disconnects and the once-only cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.machinery.bodies import KEEPALIVE, ManagedEventSource, ManagedStreamingResponse


class Client:
    """What uvicorn hands the app: `receive` (a disconnect after `leave_after` seconds,
    else never) and a `send` that records the body pieces."""

    def __init__(self, leave_after: float | None = None) -> None:
        self.leave_after = leave_after
        self.start: dict[str, Any] | None = None
        self.pieces: list[bytes] = []
        self.ended = False

    async def receive(self) -> dict[str, Any]:
        if self.leave_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.leave_after)  # type: ignore[arg-type]
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        assert not self.ended, f"a message after the end of the body: {message}"
        if message["type"] == "http.response.start":
            self.start = message
        else:
            self.pieces.append(message["body"])
            self.ended = not message.get("more_body", False)

    def headers(self) -> dict[str, str]:
        assert self.start is not None
        return {k.decode(): v.decode() for k, v in self.start["headers"]}


class Events:
    """An event source that records how it ended."""

    def __init__(self, items: list[Any], gap: float = 0.0, fail: bool = False) -> None:
        self.items, self.gap, self.fail = items, gap, fail
        self.closed = False

    async def __call__(self) -> AsyncIterator[Any]:
        try:
            for item in self.items:
                await asyncio.sleep(self.gap)
                yield item
            if self.fail:
                raise RuntimeError("the engine failed")
        finally:
            self.closed = True


def run(response: Any, client: Client) -> None:
    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(response(scope, client.receive, client.send))


def closer() -> tuple[list[int], Any]:
    calls: list[int] = []

    async def on_close() -> None:
        calls.append(1)

    return calls, on_close


def test_events_are_framed_and_the_body_ends_once():
    calls, on_close = closer()
    events = Events([b"data: a\n\n", {"data": "two\nlines", "event": "x"}, {"data": "b"}])
    client = Client()
    run(ManagedEventSource(events(), on_close, keepalive_seconds=10), client)
    assert client.pieces == [b"data: a\n\n", b"event: x\ndata: two\ndata: lines\n\n", b"data: b\n\n", b""]
    assert client.ended and events.closed and calls == [1]
    headers = client.headers()
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no" and headers["cache-control"] == "no-store"


def test_a_keepalive_comment_goes_out_only_while_no_event_does():
    calls, on_close = closer()
    # events every 0.05 s with a 0.2 s keep-alive: none; then one 0.5 s wait: at least one
    quick = Events([b"data: q\n\n"] * 8, gap=0.05)
    client = Client()
    run(ManagedEventSource(quick(), on_close, keepalive_seconds=0.2), client)
    assert KEEPALIVE not in client.pieces

    slow = Events([b"data: 1\n\n", b"data: 2\n\n"], gap=0.5)
    client = Client()
    run(ManagedEventSource(slow(), on_close, keepalive_seconds=0.2), client)
    data = [p for p in client.pieces if p != KEEPALIVE]
    assert data == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert client.pieces.count(KEEPALIVE) >= 2  # before each event
    assert client.pieces[-1] == b"" and client.ended  # nothing after the end
    assert calls == [1, 1]


def test_a_disconnect_stops_the_stream_and_cleans_up_once():
    calls, on_close = closer()
    events = Events([b"data: x\n\n"] * 1000, gap=0.01)
    client = Client(leave_after=0.1)
    run(ManagedEventSource(events(), on_close, keepalive_seconds=10), client)  # returns, no error
    assert events.closed and calls == [1]
    assert 0 < len(client.pieces) < 100 and not client.ended  # stopped early, body never ended


def test_a_failing_source_still_cleans_up_and_raises():
    calls, on_close = closer()
    events = Events([b"data: x\n\n"], fail=True)
    client = Client()
    with pytest.raises(RuntimeError, match="engine failed"):
        run(ManagedEventSource(events(), on_close, keepalive_seconds=10), client)
    assert events.closed and calls == [1]


def test_cancelling_the_request_cancels_the_stream():
    calls, on_close = closer()
    events = Events([b"data: x\n\n"] * 1000, gap=0.01)
    client = Client()

    async def go() -> None:
        response = ManagedEventSource(events(), on_close, keepalive_seconds=10)
        task = asyncio.ensure_future(response({"type": "http"}, client.receive, client.send))
        await asyncio.sleep(0.05)
        task.cancel()  # a server shutting down, not the client leaving
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert events.closed and calls == [1] and not client.ended


def test_plain_text_streams_pieces_and_cleans_up():
    calls, on_close = closer()
    events = Events([b"ab", "c\u00e9"])
    client = Client()
    run(ManagedStreamingResponse(events(), on_close, media_type="text/plain; charset=utf-8"), client)
    assert client.pieces == [b"ab", "c\u00e9".encode(), b""] and calls == [1]
    assert client.headers()["x-accel-buffering"] == "no"


@pytest.mark.parametrize("text", ["a", " word", "caf\u00e9 \u2603", "two\nlines", "cr\rlf\r\n", "\n"])
@pytest.mark.parametrize("event", [None, "3"])
def test_takeoff_framing_matches_server_sent_event(text, event):
    from sse_starlette.event import ensure_bytes

    from gateway.serving.takeoff import data_event

    fields = {"data": text} if event is None else {"data": text, "event": event}
    got = data_event(text, event)
    framed = got if isinstance(got, bytes) else ensure_bytes(got, "\n")
    assert framed == ensure_bytes(fields, "\n")
