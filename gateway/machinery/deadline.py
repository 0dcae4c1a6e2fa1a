"""Per-request deadlines, and stopping requests from outside (a drain, a removed reader).

Every request gets a `Deadline`: when it must be over (from `X-Request-Timeout` or a body
field `timeout`, else the server default) and a way to be cut short (`cut`). Each wait for
the engine runs under it; when the deadline passes, or a draining server cuts it, the wait
is cancelled (which aborts the engine request) and the request fails with a clear error:
504 (or an error event) for a deadline, 503 for a shutdown.

A whole answer waits once, under `asyncio.timeout_at` (`bound`). A stream waits once per
token (`enter` ... `leave`, which `gateway.machinery.engine_streams` does inline): there
one timer per request watches the streams' waits, rather than a timer made and cancelled
per token, which cost a tenth of the front end's CPU at GPU token rates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

from starlette.requests import Request

from gateway.errors import BadRequest, DeadlineExceeded, GatewayError
from gateway.protocols.common import PRIORITY_RANGE
from gateway.settings import Settings

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"
PRIORITY_HEADER = "x-priority"


class Deadline:
    """When one request must be over; it can also be cut short from outside."""

    def __init__(self, at: float | None, seconds: float | None) -> None:
        self.at = at
        self.seconds = seconds
        self._error: GatewayError | None = None
        self._timeouts: set[asyncio.Timeout] = set()
        # the streams' waits (`enter`): the tasks waiting now, those the deadline cancelled,
        # and the one timer that fires at the deadline
        self._waiting: set[asyncio.Task[object]] = set()
        self._cancelled: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def error(self) -> GatewayError:
        """Why the request was stopped."""
        return self._error or DeadlineExceeded(f"the request's deadline of {self.seconds:g} s passed")

    async def bound(self, awaitable: Awaitable[T]) -> T:
        """Await under the deadline (once per request: one `asyncio.timeout_at`)."""
        async with _Bound(self):
            return await awaitable

    def enter(self) -> asyncio.Task[object]:
        """A stream's wait begins: fail at once past the deadline, else watch the waiting
        task until `leave` (the one timer of the request cancels it at the deadline)."""
        if self._expired:
            raise self.error()
        if self._timer is None and self.at is not None:
            self._timer = asyncio.get_running_loop().call_at(self.at, self._expire)
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        return task

    def check_cancelled(self, task: asyncio.Task[object]) -> None:
        """The wait was cancelled: raise the deadline's error if the deadline did it (and
        nobody else also cancelled the task); return to let the cancellation go on."""
        if task in self._cancelled:
            self._cancelled.discard(task)
            if task.uncancel() == 0:
                raise self.error() from None

    def leave(self, task: asyncio.Task[object]) -> None:
        """The wait is over."""
        self._waiting.discard(task)

    def _expire(self) -> None:
        self._expired = True
        self._timer = None
        for task in self._waiting:
            if task not in self._cancelled:
                self._cancelled.add(task)
                task.cancel()

    def close(self) -> None:
        """The request is over: drop its timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def cut(self, error: GatewayError) -> None:
        """Stop the request now, with `error`."""
        self._error = error
        now = asyncio.get_running_loop().time()
        self.at = now
        for t in list(self._timeouts):
            t.reschedule(now)
        self.close()
        self._expire()


class _Bound:
    """`Deadline.bound`'s block: an `asyncio.timeout_at` that `Deadline.cut` can also fire."""

    __slots__ = ("_deadline", "_timeout")

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline
        self._timeout = asyncio.timeout_at(deadline.at)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()
        self._deadline._timeouts.add(self._timeout)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._deadline._timeouts.discard(self._timeout)
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            raise self._deadline.error() from None


def _float_header(request: Request, name: str) -> float | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"the {name} header must be a number", param=name) from None


def deadline_of(request: Request, settings: Settings, body_timeout: float | None = None) -> Deadline:
    """The deadline of a request: body field, else header, else the server default."""
    seconds = body_timeout if body_timeout is not None else _float_header(request, TIMEOUT_HEADER)
    param = "timeout" if body_timeout is not None else TIMEOUT_HEADER
    if seconds is None:
        seconds = settings.request_timeout_seconds
    elif not settings.min_request_timeout_seconds <= seconds <= settings.max_request_timeout_seconds:
        raise BadRequest(
            f"{param} must be between {settings.min_request_timeout_seconds:g} and "
            f"{settings.max_request_timeout_seconds:g} seconds",
            param=param,
        )
    at = None if seconds is None else asyncio.get_running_loop().time() + seconds
    return Deadline(at, seconds)


def priority_of(request: Request, body_priority: int | None) -> int:
    """One meaning on every API, vLLM's: lower values are scheduled first (default 0)."""
    if body_priority is not None:
        return body_priority
    raw = request.headers.get(PRIORITY_HEADER)
    if raw is None:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("the X-Priority header must be an integer", param=PRIORITY_HEADER) from None
    if not -PRIORITY_RANGE <= value <= PRIORITY_RANGE:
        raise BadRequest(f"the X-Priority header must be within ±{PRIORITY_RANGE}", param=PRIORITY_HEADER)
    return value
