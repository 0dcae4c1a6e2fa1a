"""Engine streams of a request: run, collect, tag and merge generations.

The pipeline (gateway/machinery/pipeline.py) runs every API's neutral requests with
these; the translations use `Completion` and `merge` to build their answers. Nothing here
knows a wire format.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from starlette.requests import Request

from engine_adapters.base import GenerationOutput, GenerationRequest, GenerativeEngine, SequenceDelta, TokenLogprob
from gateway.errors import ClientGone, classify
from gateway.machinery.deadline import Deadline
from gateway.observability.metrics import Observation, current_observation

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


def new_request_id(prefix: str) -> str:
    """A unique engine request id (vLLM needs them unique across in-flight requests),
    starting with the HTTP request's id so that vLLM's lines can be matched to it."""
    obs = current_observation()
    head = f"{obs.request_id}-" if obs is not None else ""
    return f"{head}{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(slots=True)
class Completion:
    """The collected result of one `GenerationRequest` (all `n` sequences)."""

    prompt_token_ids: Sequence[int] = ()
    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    stop_reasons: list[str | int | None] = field(default_factory=list)
    logprobs: list[list[TokenLogprob]] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def add(self, out: GenerationOutput) -> None:
        """Fold one engine step into the result."""
        self.prompt_token_ids = out.prompt_token_ids
        if out.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = out.prompt_logprobs
        for d in out.deltas:
            while len(self.texts) <= d.index:
                self.texts.append("")
                self.token_ids.append([])
                self.finish_reasons.append(None)
                self.stop_reasons.append(None)
                self.logprobs.append([])
            self.texts[d.index] += d.text
            self.token_ids[d.index].extend(d.token_ids)
            if d.finish_reason is not None:
                self.finish_reasons[d.index] = d.finish_reason
                self.stop_reasons[d.index] = d.stop_reason
            if d.logprobs:
                self.logprobs[d.index].extend(d.logprobs)

    @property
    def completion_tokens(self) -> int:
        """Generated tokens over all sequences."""
        return sum(len(t) for t in self.token_ids)


async def collect(engine: GenerativeEngine, request: GenerationRequest) -> Completion:
    """Run a generation to the end (or to its budget's end) and return everything it produced."""
    result = Completion()
    obs = current_observation()
    first = True
    done: set[int] = set()
    stream = engine.generate(request)
    try:
        async for out in stream:
            if obs is not None:
                n = note_output(obs, out, first)
                first = False
                if obs.allowance is not None:
                    if request.sampling.n > 1:
                        _finished(out, done)
                    if n and obs.allowance.take(n) is None and not await grow(obs, n):
                        end_sequences(out, request, done)
                        result.add(out)
                        break
            result.add(out)
    finally:
        await _close(stream)
    return result


def note_output(obs: Observation, out: GenerationOutput, first: bool) -> int:
    """Count one engine step in the request's observation; the tokens it counted (the
    prompt's on the first step)."""
    n = 0
    if first:
        n = len(out.prompt_token_ids)
        obs.accepted(n)
    if out.cached_tokens:
        obs.cached_tokens += out.cached_tokens
    made = 0
    for d in out.deltas:
        made += len(d.token_ids)
    if made:
        obs.tokens(made)
    return n + made


def budget_cut() -> str | None:
    """Why a token budget ended the current request (None if none did)."""
    obs = current_observation()
    if obs is None or not obs.budget_cut or obs.allowance is None:
        return None
    return obs.allowance.why()


async def grow(obs: Observation, n: int) -> bool:
    """The leases held were short of `n` tokens: grow them and draw (`draw`'s slow half)."""
    assert obs.allowance is not None
    ok = await obs.allowance.extend(n)
    if not ok:
        obs.budget_cut = True
    return ok


async def draw(obs: Observation, n: int) -> bool:
    """Draw `n` tokens from the request's budgets: False when one ran out (the request
    must end after this step, which is counted anyway)."""
    allowance = obs.allowance
    if allowance is None:
        return True
    ok = allowance.take(n)
    if ok is None:
        ok = await allowance.extend(n)
    if not ok:
        obs.budget_cut = True
    return ok


def _finished(out: GenerationOutput, done: set[int]) -> None:
    for d in out.deltas:
        if d.finish_reason is not None:
            done.add(d.index)


def end_sequences(out: GenerationOutput, request: GenerationRequest, done: set[int]) -> None:
    """End every sequence of `request` still running with this step, as a length stop
    (what every API reports when a budget ends a request). `done`: the sequences that
    ended in earlier steps (kept only when the request has several, `_finished`)."""
    for d in out.deltas:
        if d.finish_reason is None:
            d.finish_reason = "length"
        done.add(d.index)
    for i in range(max(1, request.sampling.n)):
        if i not in done:
            out.deltas.append(SequenceDelta(index=i, text="", token_ids=[], finish_reason="length"))
            done.add(i)
    out.finished = True


async def collect_many(engine: GenerativeEngine, requests: Sequence[GenerationRequest]) -> list[Completion]:
    """Run a user batch: every prompt enters the engine at once; answers keep their order."""
    if len(requests) == 1:
        return [await collect(engine, requests[0])]
    tasks = [asyncio.ensure_future(collect(engine, r)) for r in requests]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        # One failure (or our own cancellation) must not leave the others generating.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ClosableStream(Protocol[T_co]):
    """An async iterator that can be closed early (an engine stream: closing aborts it)."""

    def __aiter__(self) -> ClosableStream[T_co]: ...

    async def __anext__(self) -> T_co: ...

    async def aclose(self) -> None:
        """Stop the stream (abort its engine request if it still runs)."""
        ...


# One prompt's engine stream as `open_streams` hands it out: (prompt index, engine step).
Tagged = ClosableStream[tuple[int, GenerationOutput]]


async def open_streams(
    engine: GenerativeEngine, requests: list[GenerationRequest], deadline: Deadline | None = None
) -> list[Tagged]:
    """Start every prompt's generation and wait until the engine has accepted each.

    Bad input therefore fails here, before the 200 and the first event are sent. The
    accepted step is handed on as the first item of each returned stream (it may carry
    the prompt's logprobs). Each stream yields (its prompt's index, step), which is what
    `merge` interleaves.
    """
    streams: list[Tagged] = []
    try:
        for i, r in enumerate(requests):
            stream = engine.generate(r)
            try:
                accepted = await (deadline.bound(stream.__anext__()) if deadline else stream.__anext__())
            except BaseException:
                await _close(stream)
                raise
            streams.append(EngineStream(i, stream, deadline, accepted, r))
    except BaseException:
        for s in streams:
            await s.aclose()
        raise
    return streams


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)  # engine streams are async generators
    if aclose is not None:
        await aclose()


class EngineStream:
    """One engine stream as the translations read it: each item tagged with its prompt's
    index, each wait under the request's deadline, the first (already received) item
    handed out again.

    A class rather than an async generator: `aclose()` of a generator that never started
    runs none of its code, and the engine stream inside must be closed (aborted) anyway.
    It is the only layer between a translation and the engine, entered once per token: the
    deadline's wait is done inline here rather than in a coroutine of its own.
    """

    __slots__ = (
        "_deadline",
        "_done",
        "_ended",
        "_first",
        "_first_tokens",
        "_index",
        "_many",
        "_obs",
        "_request",
        "_rest",
    )

    def __init__(
        self,
        index: int,
        rest: AsyncIterator[GenerationOutput],
        deadline: Deadline | None = None,
        first: GenerationOutput | None = None,
        request: GenerationRequest | None = None,
    ) -> None:
        self._index = index
        self._first = first
        self._rest = rest
        self._deadline = deadline
        self._request = request
        self._done: set[int] = set()  # its sequences that ended, when it has several
        self._many = request is not None and request.sampling.n > 1
        self._ended = False  # a budget ended it
        self._obs = current_observation()
        self._first_tokens = 0
        if self._obs is not None and first is not None:
            self._first_tokens = note_output(self._obs, first, True)

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> tuple[int, GenerationOutput]:
        if self._ended:
            await _close(self._rest)
            raise StopAsyncIteration
        if self._first is not None:
            first, self._first = self._first, None
            if self._obs is not None and self._obs.allowance is not None:
                await self._budget(first, self._first_tokens)
            return self._index, first
        deadline = self._deadline
        try:
            if deadline is None:
                out = await self._rest.__anext__()
            else:
                # the deadline (or a shutdown) cancels the wait, which aborts the engine request
                task = deadline.enter()
                try:
                    out = await self._rest.__anext__()
                except asyncio.CancelledError:
                    deadline.check_cancelled(task)
                    raise
                finally:
                    deadline.leave(task)
        except StopAsyncIteration:
            raise
        except Exception as exc:
            if self._obs is not None:
                self._obs.error_type = classify(exc).type
            raise
        obs = self._obs
        if obs is not None:
            n = note_output(obs, out, False)
            allowance = obs.allowance
            if allowance is not None:
                if self._many:
                    _finished(out, self._done)
                # the lease held covers almost every step: no await, no coroutine per token
                if n and allowance.take(n) is None and not await grow(obs, n) and self._request is not None:
                    end_sequences(out, self._request, self._done)
                    self._ended = True
        return self._index, out

    async def _budget(self, out: GenerationOutput, n: int) -> None:
        """Draw the step's tokens; when a budget ran out, this step ends the stream."""
        _finished(out, self._done)
        if n and self._obs is not None and not await draw(self._obs, n) and self._request is not None:
            end_sequences(out, self._request, self._done)
            self._ended = True

    async def aclose(self) -> None:
        """Close the engine stream (aborting its request if it is still running)."""
        self._first = None
        await _close(self._rest)


def merge(streams: Sequence[Tagged]) -> AsyncIterator[tuple[int, GenerationOutput]]:
    """Interleave tagged streams (`open_streams`) as items arrive.

    One stream is returned as it is (no layer per token); the first error of several
    ends the merge, and leaving it early cancels every stream, which aborts their engine
    requests.
    """
    if len(streams) == 1:
        return streams[0]
    return _interleave(streams)


async def _interleave(streams: Sequence[Tagged]) -> AsyncIterator[tuple[int, GenerationOutput]]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()

    async def pump(it: Tagged) -> None:
        try:
            async for item in it:
                queue.put_nowait(item)
        except Exception as exc:  # handed to the consumer, which re-raises it
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(done)

    tasks = [asyncio.ensure_future(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def cancel_on_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it if the client disconnects first.

    For buffered (non-streaming) answers: without this, a client that gives up keeps
    its generation running to the end for nobody (the same watch vLLM's server does).
    """
    task = asyncio.ensure_future(awaitable)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling() == 0:
            raise ClientGone("the client disconnected; the request was aborted") from None
        raise
    finally:
        watcher.cancel()
