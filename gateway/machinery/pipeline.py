"""The one request pipeline every API's routes go through.

An API supplies only its translation: a `Generation` (neutral requests, which group they
ask for, how to build the whole answer and the stream events) for text generation, or a
function of a reader for embeddings and classification. The pipeline does the rest, once
for everyone, in this order:

    limits -> priority -> deadline -> reader pick and admission -> in flight
      -> buffered answer (cancelled if the client goes) | stream (accepted before the 200)

Cancellation always reaches the engine: a disconnect, a deadline, a shutdown or the
removal of the reader aborts the engine request.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import GenerationRequest, GenerativeEngine
from gateway.auth import Admission, Principal, principal_of
from gateway.budgets import FIRST_LEASE, SLICE, Allowance
from gateway.continuation import ContinuationStore
from gateway.errors import GatewayError
from gateway.machinery.bodies import KEEPALIVE, ManagedEventSource, ManagedStreamingResponse
from gateway.machinery.deadline import Deadline, deadline_of, priority_of
from gateway.machinery.engine_streams import Completion, Tagged, cancel_on_disconnect, collect_many, open_streams
from gateway.machinery.limits import Fields, check_count, check_generation
from gateway.machinery.routing import Target, resolve
from gateway.metering import MemoryMeter, Meter
from gateway.observability.metrics import Observation, current_observation
from gateway.registry import Reader, Registry
from gateway.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# each prompt's engine stream, its steps tagged with the prompt's index (`open_streams`)
Streams = list[Tagged]
# the whole answer, from the engine (for detokenizing) and every prompt's completion
Answer = Callable[[GenerativeEngine, list[Completion]], Awaitable[Response]]
# the stream's events (dicts or pre-framed bytes for SSE; bytes for plain text)
Events = Callable[[GenerativeEngine, Streams], AsyncIterator[Any]]


@dataclass(slots=True)
class Generation:
    """An API's translation of one generation request."""

    requests: list[GenerationRequest]
    answer: Answer
    events: Events | None = None
    stream: bool = False
    stream_as: Literal["sse", "text"] = "sse"
    target: Target = field(default_factory=Target)
    timeout: float | None = None
    priority: int | None = None
    fields: Fields = field(default_factory=Fields)
    # runs once the reader is known, before the engine sees the requests (a translation
    # whose prompt depends on the reader's tokenizer completes its requests here)
    prepare: Callable[[GenerativeEngine], Awaitable[None]] | None = None
    # background work: the whole answer runs detached from the HTTP request (never
    # cancelled by a disconnect); `detach` gets its task and answers at once
    detach: Callable[[asyncio.Task[Response]], Response] | None = None
    # headers of a streamed answer (a whole answer's `answer` sets its own)
    headers: dict[str, str] | None = None
    # what an idle stream sends every sse_keepalive_seconds (an SSE comment by default)
    keepalive: bytes | None = None


class Pipeline:
    """Serves generations and pooling work for every API of one process."""

    def __init__(
        self, settings: Settings, registry: Registry, store: ContinuationStore, meter: Meter | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.meter: Meter = meter if meter is not None else MemoryMeter()
        self.deadlines: set[Deadline] = set()  # of the requests in flight, for shutdown
        self.detached: dict[str, asyncio.Task[Any]] = {}  # background work by its key
        self._chores: set[asyncio.Task[Any]] = set()
        self._secret = settings.continuation.secret.get_secret_value()
        self._salts: dict[str, str] = {}

    def _salt(self, tenant: str) -> str:
        """The prefix-cache salt of a tenant (a digest of the server secret and the tenant)."""
        salt = self._salts.get(tenant)
        if salt is None:
            if len(self._salts) > 10_000:
                self._salts.clear()
            salt = self._salts[tenant] = _digest(f"{self._secret}\x1f{tenant}")
        return salt

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run `work` on its own, kept referenced until it ends (its errors are logged);
        the shutdown waits for it (`finish_chores`)."""
        task = asyncio.ensure_future(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        task.add_done_callback(_log_failure)

    async def finish_chores(self, seconds: float) -> None:
        """Wait for the spawned chores and the detached (background) work, at most
        `seconds` each time: what they record must reach the store before it closes."""
        pending = [*self._chores, *self.detached.values()]
        if pending:
            await asyncio.wait(pending, timeout=seconds)
        if self._chores:  # chores spawned by work that just ended (its failure recorded)
            await asyncio.wait(list(self._chores), timeout=seconds)

    # ------------------------------------------------------------------ budgets

    async def _allowance(self, caller: Principal, reserve: int, want: int | None = None) -> Allowance | None:
        """The request's draw on its key's and tenant's token budgets, `reserve` leased,
        up to `want` where there is plenty (a 429 until the window resets when one has
        nothing left); None without budgets."""
        budgets = caller.budgets
        if not budgets:
            return None
        allowance = Allowance.of(self.meter, budgets)
        if allowance is None:
            return None
        await allowance.open(reserve, want)
        obs = current_observation()
        if obs is not None:
            obs.allowance = allowance
        return allowance

    async def _settle(self, allowance: Allowance | None, obs: Observation | None) -> None:
        """The request ended: its budgets hold exactly what it used (never raises)."""
        if allowance is None:
            return
        try:
            await allowance.close(_tokens(obs))
        except Exception as exc:  # the lease stays counted: the safe side
            log.error("could not settle a request's token budget: %s", exc)

    # ------------------------------------------------------------------ generation

    async def generate(self, request: Request, gen: Generation) -> Response:
        """Serve one generation request: the whole answer, or a stream."""
        settings = self.settings
        started = time.perf_counter()
        check_generation(gen.requests, settings, gen.fields)
        priority = priority_of(request, gen.priority)
        trace = _trace_headers(request)
        caller = principal_of(request.scope)
        salt = self._salt(caller.tenant)
        for r in gen.requests:
            r.priority = priority
            r.trace_headers = trace
            # the tenant's salt, combined with one the client sent: never the client's alone
            r.cache_salt = salt if r.cache_salt is None else _digest(f"{salt}\x1f{r.cache_salt}")
        deadline = deadline_of(request, settings, gen.timeout)
        weight = sum(r.sampling.n * r.sampling.num_beams for r in gen.requests)
        reader = resolve(self.registry, gen.target, gen.requests, caller=caller, weight=weight)
        engine = reader.generative()
        admission = caller.admit()
        allowance = None
        try:
            if caller.budgets:
                reserve = _reservation(request, gen.requests, engine, weight)
                answer = sum(r.sampling.max_new_tokens * r.sampling.n * r.sampling.num_beams for r in gen.requests)
                allowance = await self._allowance(caller, reserve, reserve + min(answer, FIRST_LEASE))
            _admitted(started)
            if gen.prepare is not None:
                await gen.prepare(engine)
        except BaseException:
            admission.release()
            await self._settle(allowance, None)
            raise
        if gen.stream and gen.events is not None:
            return await self._stream(reader, engine, gen, gen.events, deadline, admission, weight, allowance)

        async def whole() -> Response:
            return await gen.answer(engine, await collect_many(engine, gen.requests))

        if gen.detach is not None:
            return gen.detach(self._detached(reader, deadline, whole(), admission, weight, allowance))
        return await self._buffered(request, reader, deadline, whole(), admission, weight, allowance)

    async def _stream(
        self,
        reader: Reader,
        engine: GenerativeEngine,
        gen: Generation,
        events: Events,
        deadline: Deadline,
        admission: Admission,
        weight: int,
        allowance: Allowance | None = None,
    ) -> Response:
        # Accepted by the engine before the 200: invalid input is a normal error answer.
        # The reader and the caller's key count the request in flight, and the shutdown
        # knows its deadline, until the response's cleanup runs, however it ends.
        release = reader.acquire(deadline.cut, weight)
        self.deadlines.add(deadline)
        obs = current_observation()
        try:
            streams = await open_streams(engine, gen.requests, deadline)
        except BaseException:
            release()
            admission.release()
            self.deadlines.discard(deadline)
            await self._settle(allowance, obs)
            raise

        async def close() -> None:
            release()
            admission.release()
            self.deadlines.discard(deadline)
            deadline.close()
            for s in streams:
                await s.aclose()
            await self._settle(allowance, obs)

        content = events(engine, streams)
        if gen.stream_as == "text":
            return ManagedStreamingResponse(
                content, on_close=close, media_type="text/plain; charset=utf-8", headers=gen.headers
            )
        return ManagedEventSource(
            content,
            on_close=close,
            keepalive_seconds=self.settings.sse_keepalive_seconds,
            headers=gen.headers,
            keepalive=gen.keepalive or KEEPALIVE,
        )

    async def _buffered(
        self,
        request: Request,
        reader: Reader,
        deadline: Deadline,
        work: Awaitable[T],
        admission: Admission,
        weight: int,
        allowance: Allowance | None = None,
    ) -> T:
        """A whole answer: in flight on `reader` and the caller's key (admitted), under the
        deadline, cancelled if the client goes."""
        self.deadlines.add(deadline)
        obs = current_observation()
        try:
            with reader.track(deadline.cut, weight):
                answer = await cancel_on_disconnect(request, deadline.bound(work))
            if obs is not None and obs.budget_cut and isinstance(answer, Response):
                answer.headers["X-Budget-Exhausted"] = "true"  # its sequences say "length"
            return answer
        finally:
            self.deadlines.discard(deadline)
            admission.release()
            if allowance is not None:  # off the answer's path: the refund waits for no one
                self.spawn(self._settle(allowance, obs))

    def _detached(
        self,
        reader: Reader,
        deadline: Deadline,
        work: Awaitable[Response],
        admission: Admission,
        weight: int,
        allowance: Allowance | None = None,
    ) -> asyncio.Task[Response]:
        """A whole answer as a task of its own: in flight on `reader` and the caller's key,
        under the deadline and the shutdown's cut, but not tied to the client's connection."""
        self.deadlines.add(deadline)
        obs = current_observation()

        async def run() -> Response:
            try:
                with reader.track(deadline.cut, weight):
                    return await deadline.bound(work)
            finally:
                self.deadlines.discard(deadline)
                admission.release()
                await self._settle(allowance, obs)

        return asyncio.ensure_future(run())

    # ------------------------------------------------------------------ pooling

    async def pool(
        self, request: Request, target: Target, inputs: int, field: str, work: Callable[[Reader], Awaitable[T]]
    ) -> T:
        """Embeddings, classification, re-ranking: `work` runs on the reader `target` names,
        counted in flight, under the deadline, cancelled if the client goes. `inputs` is
        the number of inputs, carried by the request field `field`."""
        started = time.perf_counter()
        check_count(inputs, self.settings, field, "inputs")
        deadline = deadline_of(request, self.settings)
        caller = principal_of(request.scope)
        reader = resolve(self.registry, target, caller=caller, weight=inputs)
        pending = work(reader)
        admission = allowance = None
        try:
            admission = caller.admit()
            if caller.budgets:  # the inputs' tokens, estimated from the body; settled at the end
                allowance = await self._allowance(caller, _body_tokens(request) + 1)
            _admitted(started)
        except BaseException:
            if inspect.iscoroutine(pending):
                pending.close()  # never started
            if admission is not None:
                admission.release()
            raise
        return await self._buffered(request, reader, deadline, pending, admission, inputs, allowance)

    async def on_target(self, request: Request, target: Target, work: Callable[[Reader], Awaitable[T]]) -> T:
        """Work on the reader a model name picks, that is not a generation (Anthropic's
        count_tokens): the key's groups, admission, in flight, the deadline, disconnects."""
        deadline = deadline_of(request, self.settings)
        caller = principal_of(request.scope)
        reader = resolve(self.registry, target, caller=caller)
        pending = work(reader)
        try:
            admission = caller.admit()
        except BaseException:
            if inspect.iscoroutine(pending):
                pending.close()  # never started
            raise
        return await self._buffered(request, reader, deadline, pending, admission, 1)

    async def on_reader(self, request: Request, reader_id: str, work: Callable[[Reader], Awaitable[T]]) -> T:
        """Work addressed to one reader by id (its tokenizer routes): the caller's key may use
        the reader's group, the reader must be serving and have room (admission), and
        the work runs counted in flight, under the deadline, cancelled if the client goes."""
        deadline = deadline_of(request, self.settings)
        caller = principal_of(request.scope)
        reader = self.registry.get(reader_id, visible=caller.may_use)
        caller.check_group(reader.group)
        self.registry.balance(reader.group, [reader], admit=True)
        pending = work(reader)
        try:
            admission = caller.admit()
        except BaseException:
            if inspect.iscoroutine(pending):
                pending.close()  # never started
            raise
        return await self._buffered(request, reader, deadline, pending, admission, 1)

    # ------------------------------------------------------------------ reads

    def status_reader(self, target: Target) -> Reader:
        """The reader a request for `target` would get, without admission control (status
        reads never count as requests and are never refused for load)."""
        return resolve(self.registry, target, admit=False)

    def in_flight(self) -> int:
        """Requests being served (whole, streamed or in the background), for the drain."""
        return len(self.deadlines)

    def cut_all(self, error: GatewayError) -> int:
        """Stop every request in flight with `error` (after a drain timed out)."""
        deadlines = list(self.deadlines)
        for d in deadlines:
            d.cut(error)
        return len(deadlines)


_TRACE_HEADERS = ("traceparent", "tracestate")


def _trace_headers(request: Request) -> dict[str, str] | None:
    """The W3C trace context passed on to the engine (vLLM's tracing): the request's, or
    with the gateway's tracing on, one whose parent is the request's engine span."""
    found = {h: request.headers[h] for h in _TRACE_HEADERS if h in request.headers}
    obs = current_observation()
    if obs is not None and obs.trace is not None:
        found["traceparent"] = obs.trace.traceparent()
    return found or None


def _admitted(started: float) -> None:
    """The request was admitted (for its trace: the admission span ends here)."""
    obs = current_observation()
    if obs is not None and obs.trace is not None:
        obs.admitted_at = time.perf_counter()
        obs.phases.append(("gateway.admission", started, obs.admitted_at))


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a background chore failed", exc_info=task.exception())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _tokens(obs: Observation | None) -> int:
    return obs.prompt_tokens + obs.generated_tokens if obs is not None else 0


# A prompt's tokens, estimated before the engine tokenizes it: the body's bytes over this
# (English averages about four bytes per token; JSON framing only raises the estimate).
BYTES_PER_TOKEN = 4


def _body_tokens(request: Request) -> int:
    raw = request.headers.get("content-length", "")
    return int(raw) // BYTES_PER_TOKEN if raw.isdigit() else 0


def _reservation(request: Request, requests: list[GenerationRequest], engine: GenerativeEngine, weight: int) -> int:
    """The tokens a generation must lease from its budgets at admission: the prompt as
    estimated from the body (at most the context per prompt) and a first slice of output
    per sequence (more, up to FIRST_LEASE of the answer, where the window has plenty)."""
    context = engine.info.max_model_len
    return min(_body_tokens(request), context * len(requests)) + SLICE * weight


def pipeline_of(request: Request) -> Pipeline:
    """The pipeline of the app serving `request`."""
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline
