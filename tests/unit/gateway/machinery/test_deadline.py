"""Deadlines and priorities of one request (gateway/machinery/deadline.py); a stream's
waits under the deadline as `EngineStream` does them (gateway/machinery/engine_streams.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from gateway.errors import BadRequest, DeadlineExceeded, NotReady
from gateway.machinery.deadline import Deadline, deadline_of, priority_of
from gateway.machinery.engine_streams import EngineStream
from gateway.settings import Settings


def request(headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_body_timeout_wins_then_header_then_default():
    async def go() -> None:
        s = Settings(request_timeout_seconds=30, max_request_timeout_seconds=60)
        assert deadline_of(request({"X-Request-Timeout": "5"}), s, 2).seconds == 2
        assert deadline_of(request({"X-Request-Timeout": "5"}), s).seconds == 5
        assert deadline_of(request(), s).seconds == 30
        assert deadline_of(request(), Settings()).at is None  # no default deadline

    asyncio.run(go())


@pytest.mark.parametrize(
    ("headers", "body", "param"),
    [({"X-Request-Timeout": "soon"}, None, "x-request-timeout"), ({}, 61.0, "timeout"), ({}, -1.0, "timeout")],
)
def test_bad_timeouts_name_their_field(headers, body, param):
    async def go() -> None:
        with pytest.raises(BadRequest) as exc:
            deadline_of(request(headers), Settings(max_request_timeout_seconds=60), body)
        assert exc.value.param == param

    asyncio.run(go())


def test_the_deadline_stops_a_wait():
    async def go() -> None:
        deadline = deadline_of(request(), Settings(), 0.05)
        with pytest.raises(DeadlineExceeded) as exc:
            await deadline.bound(asyncio.sleep(5))
        assert "0.05 s" in str(exc.value)

    asyncio.run(go())


def test_a_cut_stops_every_wait_with_its_error():
    async def go() -> None:
        deadline = Deadline(None, None)
        waits = [asyncio.ensure_future(deadline.bound(asyncio.sleep(5))) for _ in range(3)]
        await asyncio.sleep(0.01)
        deadline.cut(NotReady("shutting down"))
        results = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(r, NotReady) for r in results)

    asyncio.run(go())


def test_priority_from_body_or_header():
    assert priority_of(request({"X-Priority": "3"}), None) == 3
    assert priority_of(request({"X-Priority": "3"}), -1) == -1
    assert priority_of(request(), None) == 0
    with pytest.raises(BadRequest) as exc:
        priority_of(request({"X-Priority": "high"}), None)
    assert exc.value.param == "x-priority"


async def _ticks(delay: float, n: int = 1000):
    for i in range(n):
        await asyncio.sleep(delay)
        yield i


async def next_of(stream: EngineStream) -> int:
    """The next item of an engine stream (its value, without the prompt index)."""
    _, item = await stream.__anext__()
    return item


def under(deadline: Deadline, stream: Any) -> EngineStream:
    return EngineStream(0, stream, deadline)


def test_a_stream_waits_under_one_timer_until_the_deadline():
    async def go() -> None:
        deadline = deadline_of(request(), Settings(), 0.2)
        stream = under(deadline, _ticks(0.01))
        assert await next_of(stream) == 0
        timer = deadline._timer
        assert timer is not None
        got = [await next_of(stream) for _ in range(5)]
        assert got == [1, 2, 3, 4, 5]
        assert deadline._timer is timer  # one timer for the request, not one per item
        with pytest.raises(DeadlineExceeded):
            while True:
                await next_of(stream)
        # a later wait fails at once, without waiting for an item
        with pytest.raises(DeadlineExceeded):
            await next_of(under(deadline, _ticks(5)))

    asyncio.run(go())


def test_the_deadline_fails_a_stream_that_was_not_waiting_at_its_next_wait():
    async def go() -> None:
        deadline = deadline_of(request(), Settings(), 0.05)
        stream = under(deadline, _ticks(0))
        assert await next_of(stream) == 0
        await asyncio.sleep(0.1)  # the deadline passes while the stream is elsewhere (a slow client)
        with pytest.raises(DeadlineExceeded):
            await next_of(stream)

    asyncio.run(go())


def test_a_cut_stops_every_stream_wait_with_its_error():
    async def go() -> None:
        deadline = Deadline(None, None)

        async def drain() -> None:
            stream = under(deadline, _ticks(5))
            while True:
                await next_of(stream)

        waits = [asyncio.ensure_future(drain()) for _ in range(3)]
        await asyncio.sleep(0.01)
        deadline.cut(NotReady("shutting down"))
        results = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(r, NotReady) for r in results), results

    asyncio.run(go())


def test_a_stream_wait_cancelled_from_outside_stays_cancelled():
    async def go() -> None:
        deadline = deadline_of(request(), Settings(), 0.05)

        async def wait() -> int:
            return await next_of(under(deadline, _ticks(5)))

        task = asyncio.ensure_future(wait())
        await asyncio.sleep(0.01)
        task.cancel()  # the client left before the deadline
        with pytest.raises(asyncio.CancelledError):
            await task
        # cancelled from outside and by the deadline at once: the outside's cancel wins
        task = asyncio.ensure_future(wait())
        await asyncio.sleep(0.01)
        deadline.cut(NotReady("shutting down"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())


def test_closing_the_deadline_drops_its_timer():
    async def go() -> None:
        deadline = deadline_of(request(), Settings(), 60)
        assert await next_of(under(deadline, _ticks(0))) == 0
        timer = deadline._timer
        assert timer is not None and not timer.cancelled()
        deadline.close()
        assert timer.cancelled() and deadline._timer is None

    asyncio.run(go())
