"""Per-request deadlines, and stopping requests that outlive a shutdown's drain.

Every request gets a `Budget`: its deadline (from `X-Request-Timeout` or a body field
`timeout`, else the server default) and a way to be cut short. Each wait for the engine
runs under it; when the deadline passes, or a draining server cuts the budget, the wait is
cancelled (which aborts the engine request) and the request fails with a clear error: 504
(or an error event) for a deadline, 503 for a shutdown.

A whole answer waits once, under `asyncio.timeout_at` (`bound`). A stream waits once per
token (`next_of`): there one timer per request watches the streams' waits, rather than a
timer made and cancelled per token, which cost a tenth of the front end's CPU at GPU
token rates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType
from typing import TypeVar

from starlette.requests import Request

from gateway.errors import BadRequest, DeadlineExceeded, GatewayError
from gateway.protocols.common import PRIORITY_RANGE
from gateway.settings import Settings

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"
PRIORITY_HEADER = "x-priority"


class Budget:
    """The deadline of one request, which can also be cut short from outside."""

    def __init__(self, at: float | None, seconds: float | None) -> None:
        self.at = at
        self.seconds = seconds
        self._error: GatewayError | None = None
        self._timeouts: set[asyncio.Timeout] = set()
        # the streams' waits (`next_of`): the tasks waiting now, those the budget cancelled,
        # and the one timer that fires at the deadline
        self._waiting: set[asyncio.Task[object]] = set()
        self._cancelled: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def error(self) -> GatewayError:
        """Why the request was stopped."""
        return self._error or DeadlineExceeded(f"the request's deadline of {self.seconds:g} s passed")

    def guard(self) -> _Guard:
        """Run the block under the deadline; past it, raise the budget's error.

        A plain class rather than a generator-based context manager: a stream enters it
        once per token.
        """
        return _Guard(self)

    async def bound(self, awaitable: Awaitable[T]) -> T:
        """Await under the deadline."""
        async with self.guard():
            return await awaitable

    async def next_of(self, stream: AsyncIterator[T]) -> T:
        """The next item of `stream`, under the deadline (the same as
        `bound(stream.__anext__())`, without a timer per item)."""
        task = self.enter()
        try:
            return await stream.__anext__()
        except asyncio.CancelledError:
            self.check_cancelled(task)
            raise
        finally:
            self.leave(task)

    def enter(self) -> asyncio.Task[object]:
        """A stream's wait begins (see `next_of`, which the streams inline): fail at once
        past the deadline, else watch the waiting task."""
        if self._expired:
            raise self.error()
        if self._timer is None and self.at is not None:
            self._timer = asyncio.get_running_loop().call_at(self.at, self._expire)
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        return task

    def check_cancelled(self, task: asyncio.Task[object]) -> None:
        """The wait was cancelled: raise the budget's error if the budget did it (and
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


class _Guard:
    """`Budget.guard()`: an `asyncio.timeout_at` that `Budget.cut` can also fire."""

    __slots__ = ("_budget", "_timeout")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._timeout = asyncio.timeout_at(budget.at)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()
        self._budget._timeouts.add(self._timeout)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._budget._timeouts.discard(self._timeout)
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            raise self._budget.error() from None


def _float_header(request: Request, name: str) -> float | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"the {name} header must be a number", param=name) from None


def make_budget(request: Request, settings: Settings, body_timeout: float | None = None) -> Budget:
    """The budget of a request: body field, else header, else the server default."""
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
    return Budget(at, seconds)


def priority_of(request: Request, body_priority: int | None) -> int:
    """One meaning on every surface, vLLM's: lower values are scheduled first (default 0)."""
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
