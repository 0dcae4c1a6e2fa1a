"""Readers (loaded models) grouped into consumer groups: their life, and balancing.

A request's consumer group is resolved by `gateway.machinery.routing`; inside the group it
goes to the ready reader with the fewest requests in flight, unless that reader is at its
in-flight limit (admission control, 429). Readers load in the background so the listeners
answer `/healthz` and `/readyz` while models load. Engines are built by
`engine_adapters.factory`; nothing here knows an engine implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from engine_adapters.base import (
    EngineDeadError,
    EngineNotReadyError,
    GenerativeEngine,
    PoolingEngine,
    ReaderTask,
    UnknownAdapterError,
    Work,
)
from engine_adapters.factory import ENGINE_KINDS, Engine, build_engine, served_name
from gateway.errors import BadRequest, Conflict, GatewayError, NotFound, NotReady, Overloaded
from gateway.observability.metrics import EMBED_BATCH, current_observation
from gateway.settings import ReaderSettings, Settings

log = logging.getLogger(__name__)

ReaderState = Literal["loading", "ready", "failed", "dead", "draining", "stopped"]
# (reader settings as data, cache folder, batch-size hook) -> an engine, not started
EngineFactory = Callable[[dict[str, Any], Path, Callable[[int], None] | None], Engine]
Cut = Callable[[GatewayError], None]
# set while a batch line runs (gateway.batches.runner): admission counts it as batch work
BATCH_WORK: contextvars.ContextVar[bool] = contextvars.ContextVar("batch_work", default=False)


@dataclass(eq=False)
class Reader:
    """One model instance serving one consumer group."""

    settings: ReaderSettings
    engine: Engine | None = None
    state: ReaderState = "loading"
    error: str | None = None
    in_flight: int = 0  # requests
    sequences: int = 0  # sequences of those requests (prompts x n x beams): what admission counts
    batch_sequences: int = 0  # of those, batch lines' (live admission does not count them)
    configured: bool = True  # from the settings at start-up (False: added at run time)
    load_task: asyncio.Task[None] | None = None
    loaded_at: float | None = None
    started_at: float = field(default_factory=time.time)
    # how to stop each request in flight (its deadline budget's cut), for removal
    _cuts: set[Cut] = field(default_factory=set)

    @property
    def id(self) -> str:
        """The reader id."""
        return self.settings.id

    @property
    def group(self) -> str:
        """The consumer group the reader serves."""
        return self.settings.consumer_group

    @property
    def task(self) -> ReaderTask:
        """ "generate", "embed" or "classify"."""
        return self.settings.effective_task

    @property
    def model_ids(self) -> tuple[str, ...]:
        """The names a client may send as `model` for it: its served model names, or (as
        vLLM, which answers to the model as it was started) the model's short name and the
        model as configured."""
        names = self.settings.served_model_names
        if names:
            return tuple(names)
        short = served_name(self.settings.model_dump())
        return (short,) if short == self.settings.model else (short, self.settings.model)

    @property
    def adapters(self) -> tuple[str, ...]:
        """LoRA adapter names (configured; the engine serves them once ready)."""
        return self.settings.adapter_names

    @property
    def serving(self) -> bool:
        """Ready, and its engine has not died since (before the watcher noticed)."""
        return self.state == "ready" and not (self.engine is not None and self.engine.dead)

    def can(self, task: Work) -> bool:
        """Whether the reader serves `task` ("score" is served by embed and classify readers)."""
        return self.task == task or (task == "score" and self.task in ("embed", "classify"))

    def _ready_engine(self) -> Engine:
        if self.engine is None or self.state != "ready":
            raise NotReady(f"reader {self.id} is {self.state}", headers={"Retry-After": "5"})
        return self.engine

    # The task decides the engine's Protocol (the factory builds them together); a cast
    # rather than isinstance, which walks every Protocol member on each request.
    def generative(self) -> GenerativeEngine:
        """The reader's text-generation engine, or a 503 if it is not serving."""
        engine = self._ready_engine()
        if self.task != "generate":
            raise BadRequest(f"reader {self.id!r} ({self.task}) does not generate text", param="reader_id")
        return cast(GenerativeEngine, engine)

    def pooling(self) -> PoolingEngine:
        """The reader's embedding/classification engine, or a 503 if it is not serving."""
        engine = self._ready_engine()
        if self.task == "generate":
            raise BadRequest(f"reader {self.id!r} ({self.task}) does not embed or classify", param="reader_id")
        return cast(PoolingEngine, engine)

    def engine_slots(self) -> int | None:
        """The sequences the reader's engine runs at once (vLLM's effective max_num_seqs;
        None when the engine does not say)."""
        engine = self.engine
        if engine is None:
            return None
        try:
            slots = engine.info.engine_config.get("max_num_seqs")
        except EngineNotReadyError:  # still loading, or stopped
            return None
        return slots if isinstance(slots, int) else None

    def describe_state(self) -> str:
        """ "id" when ready, else "id, state"."""
        return self.id if self.state == "ready" else f"{self.id}, {self.state}"

    def acquire(self, cut: Cut | None = None, weight: int = 1) -> Callable[[], None]:
        """Count a request of `weight` sequences as in flight until the returned release
        is called (once).

        `cut` stops the request early; the registry calls it when the reader is removed
        and the request outlives the drain.
        """
        self.in_flight += 1
        self.sequences += weight
        batch = weight if BATCH_WORK.get() else 0
        self.batch_sequences += batch
        if cut is not None:
            self._cuts.add(cut)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1
                self.sequences -= weight
                self.batch_sequences -= batch
                if cut is not None:
                    self._cuts.discard(cut)

        return release

    @contextlib.contextmanager
    def track(self, cut: Cut | None = None, weight: int = 1) -> Iterator[None]:
        """`acquire` for the duration of a block."""
        release = self.acquire(cut, weight)
        try:
            yield
        finally:
            release()

    def cut_all(self, error: GatewayError) -> int:
        """Stop every request in flight on this reader with `error`."""
        cuts = list(self._cuts)
        for cut in cuts:
            cut(error)
        return len(cuts)


class Registry:
    """All readers, by id and by consumer group."""

    def __init__(self, settings: Settings, factory: EngineFactory = build_engine) -> None:
        self.settings = settings
        self._factory = factory
        self.readers: dict[str, Reader] = {r.id: Reader(settings=r) for r in settings.readers}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: list[asyncio.Task[None]] = []
        # Engines that start worker processes start one at a time: the workers inherit the
        # process environment, and a reader's `cuda_visible_devices` is set there only
        # while its own engine starts.
        self._spawn_lock = asyncio.Lock()
        self.rejections = 0  # admission-control refusals (429), for metrics
        self.on_engine_death: Callable[[Reader], None] | None = None

    # ------------------------------------------------------------------ lookup

    def groups(self) -> dict[str, list[Reader]]:
        """Consumer group name -> its readers, in configuration order."""
        out: dict[str, list[Reader]] = {}
        for r in self.readers.values():
            out.setdefault(r.group, []).append(r)
        return out

    def groups_for(self, task: Work) -> list[str]:
        """The groups with at least one reader for `task`, in configuration order."""
        return [g for g, rs in self.groups().items() if any(r.can(task) for r in rs)]

    def listed_model_names(self) -> dict[str, Reader]:
        """The model names errors and lists show -> a ready reader: each reader's served
        name and its served_model_names (never a path)."""
        out: dict[str, Reader] = {}
        for r in self.readers.values():
            if r.state == "ready" and r.engine is not None:
                for name in (r.engine.info.name, *r.settings.served_model_names):
                    out.setdefault(name, r)
        return out

    def model_names(self) -> dict[str, Reader]:
        """Every name a request's `model` may use -> a ready reader of it (OpenAI's `model`
        may name a model): the listed names, the model as configured and as loaded."""
        out: dict[str, Reader] = {}
        for r in self.readers.values():
            if r.state == "ready" and r.engine is not None:
                # and the folder the engine loaded (vLLM's id for an embedded model's
                # conversion, which `vllm bench serve --model FOLDER` sends)
                for name in (r.engine.info.name, *r.model_ids, r.engine.info.path):
                    if name:
                        out.setdefault(name, r)
        return out

    def adapter_names(self) -> dict[str, Reader]:
        """LoRA adapter name -> a reader that has it."""
        out: dict[str, Reader] = {}
        for r in self.readers.values():
            for a in r.adapters:
                out.setdefault(a, r)
        return out

    def candidates(
        self,
        group: str,
        task: Work = "generate",
        *,
        backend: str | None = None,
        backend_param: str | None = None,
        group_param: str = "consumer_group",
        lora_id: str | None = None,
        visible: Callable[[str], bool] = lambda _: True,
        named: bool = True,
    ) -> list[Reader]:
        """The readers of `group` able to serve the request (ready or not).

        A group with no reader for the task is a 400 naming the groups that have one.
        With `backend`, only readers whose structured-output backend it is qualify: none
        in the group is a 400. With `lora_id`, only readers with that adapter.
        """
        members = [r for r in self.readers.values() if r.group == group]
        if not members:
            names = ", ".join(sorted(g for g in self.groups() if visible(g))) or "none"
            # a name the request sent is not repeated; the server's default group is named
            which = "no such consumer group" if named else f"the default consumer group {group!r} does not exist"
            raise NotFound(f"{which}; the groups are: {names}", param=group_param)
        obs = current_observation()
        if obs is not None:
            obs.group = group  # a configured group: a bounded label
        members = [r for r in members if r.can(task)]
        if not members:
            able = ", ".join(self.groups_for(task)) or "none"
            raise BadRequest(f"consumer group {group!r} cannot {task}; groups that can: {able}", param=group_param)
        if backend is not None:
            matching = [r for r in members if r.settings.structured_outputs_backend == backend and r.state != "failed"]
            if not matching:
                have = ", ".join(
                    sorted(f"{r.settings.structured_outputs_backend} ({r.describe_state()})" for r in members)
                )
                raise BadRequest(
                    f"consumer group {group!r} has no reader with the structured-output backend {backend!r}; "
                    f"its readers use: {have}. Name one of those, or none",
                    param=backend_param,
                )
            members = matching
        if lora_id is not None:
            with_adapter = [r for r in members if lora_id in r.adapters]
            if not with_adapter:
                adapters = ", ".join(sorted({a for r in members for a in r.adapters})) or "none"
                raise UnknownAdapterError(f"no such LoRA adapter; the adapters of group {group!r}: {adapters}")
            members = with_adapter
        return members

    def balance(self, group: str, members: list[Reader], admit: bool = True, weight: int = 1) -> Reader:
        """The serving reader of `members` with the fewest sequences in flight.

        With `admit`, a reader whose `max_in_flight` sequences would be exceeded by the
        request's `weight` refuses (429 with Retry-After), unless it is idle (a request
        larger than the limit still runs alone); status reads pass `admit=False` and are
        never refused or counted.
        """
        ready = [r for r in members if r.serving]
        if not ready:
            states = ", ".join(f"{r.id}: {r.state}" for r in members)
            raise NotReady(
                f"consumer group {group!r} has no ready reader ({states}); retry shortly",
                headers={"Retry-After": "5"},
            )
        best = min(ready, key=lambda r: r.sequences)
        if admit and BATCH_WORK.get():
            # batch work only in the room live traffic leaves (never counted as a rejection)
            capacity = self.batch_capacity(best, best.sequences - best.batch_sequences)
            if best.sequences + weight > capacity and (best.sequences or capacity == 0):
                raise Overloaded(
                    f"consumer group {group!r} has no room for batch work now", headers={"Retry-After": "1"}
                )
        elif admit:
            limit = best.settings.max_in_flight
            live = best.sequences - best.batch_sequences  # batch lines never refuse a live request
            if limit is not None and live and live + weight > limit:
                self.rejections += 1
                raise Overloaded(
                    f"consumer group {group!r} is at capacity ({limit} sequences in flight per reader); retry shortly",
                    headers={"Retry-After": "1"},
                )
            obs = current_observation()
            if obs is not None:
                obs.reader = best.id
        return best

    def batch_capacity(self, reader: Reader, live: int) -> int:
        """The sequences `reader` may hold while it takes batch lines, with `live` live
        sequences running: `batches.lines_per_reader` beside live traffic, up to
        `batches.idle_lines_per_reader` while there is none, and below its `max_in_flight`
        by `batches.live_headroom` either way."""
        conf = self.settings.batches
        lines = conf.lines_per_reader if live else max(conf.lines_per_reader, conf.idle_lines_per_reader)
        # vLLM schedules no waiting request, whatever its priority, while max_num_seqs run:
        # the headroom is kept below the engine's slots as well as below max_in_flight
        bounds = [b for b in (reader.settings.max_in_flight, reader.engine_slots()) if b is not None]
        if not bounds:
            return lines
        return max(0, min(lines, min(bounds) - conf.live_headroom))

    def get(self, reader_id: str, visible: Callable[[str], bool] = lambda _: True) -> Reader:
        """A reader by id; a 404 listing the readers of the groups `visible` allows."""
        try:
            return self.readers[reader_id]
        except KeyError:
            names = ", ".join(sorted(r.id for r in self.readers.values() if visible(r.group))) or "none"
            raise NotFound(f"no such reader; the readers are: {names}", param="reader_id") from None

    def ready(self) -> bool:
        """Every group of the configured readers has a ready reader.

        Readers added at run time (and readers being removed) do not count: a reader that
        fails to load through the management API must not take the whole process out of
        its load balancer.
        """
        counted = any(r.configured and r.state != "draining" for r in self.readers.values())
        return counted and not self.unserved_groups()

    def unserved_groups(self) -> list[str]:
        """The groups of the configured readers that have no ready reader, sorted."""
        groups = {r.group for r in self.readers.values() if r.configured and r.state != "draining"}
        return sorted(g for g in groups if not any(r.serving for r in self.readers.values() if r.group == g))

    def in_flight(self) -> int:
        """Requests in flight on every reader."""
        return sum(r.in_flight for r in self.readers.values())

    def largest_context(self) -> int | None:
        """The longest context (tokens) of the readers serving now, or None if none is."""
        lengths = [r.engine.info.max_model_len for r in list(self.readers.values()) if r.serving and r.engine]
        return max(lengths) if lengths else None

    # ------------------------------------------------------------------ lifecycle

    def start_all(self) -> list[asyncio.Task[None]]:
        """Load every reader in the background; returns the loading tasks."""
        for r in self.readers.values():
            r.load_task = self._spawn(self._load(r))
            self._loading.append(r.load_task)
        return self._loading

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _build(self, reader: Reader) -> Engine:
        data = {**reader.settings.model_dump(), "effective_task": reader.task}
        on_batch = EMBED_BATCH.labels(reader.group).observe
        # Provisioning converts the embedded model on first use: keep it off the loop.
        engine = await asyncio.to_thread(self._factory, data, self.settings.cache_dir, on_batch)
        reader.engine = engine
        return engine

    async def _start(self, reader: Reader, engine: Engine) -> None:
        if not ENGINE_KINDS[reader.settings.kind].spawns_processes:
            await engine.start()
            return
        async with self._spawn_lock:
            devices = reader.settings.cuda_visible_devices
            saved = os.environ.get("CUDA_VISIBLE_DEVICES")
            if devices is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices
            try:
                await engine.start()
            finally:
                if devices is not None:
                    if saved is None:
                        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                    else:
                        os.environ["CUDA_VISIBLE_DEVICES"] = saved

    async def _load(self, reader: Reader) -> None:
        t0 = time.monotonic()
        try:
            await self._start(reader, await self._build(reader))
        except asyncio.CancelledError:
            if reader.engine is not None:  # removed while loading
                await reader.engine.shutdown()
            raise
        except Exception as exc:  # a reader that fails to load is reported, never fatal
            reader.state = "failed"
            reader.error = f"{type(exc).__name__}: {exc}"
            log.error("reader %s failed to load: %s", reader.id, reader.error)
            return
        reader.state = "ready"
        reader.loaded_at = time.time()
        log.info("reader %s (%s) ready in %.1f s", reader.id, reader.group, time.monotonic() - t0)
        self._spawn(self._watch(reader))

    async def _watch(self, reader: Reader, interval: float = 1.0) -> None:
        """Mark the reader dead as soon as its engine reports death."""
        while reader.state == "ready" and reader.engine is not None:
            try:
                await reader.engine.check_health()
            except EngineDeadError as exc:
                reader.state = "dead"
                reader.error = str(exc)
                log.error("reader %s: engine died: %s", reader.id, exc)
                if self.on_engine_death is not None:
                    self.on_engine_death(reader)
                return
            except Exception:
                log.debug("health check of %s failed", reader.id, exc_info=True)
            await asyncio.sleep(interval)

    def add(self, settings: ReaderSettings) -> Reader:
        """Register a reader and start loading it; it joins its group when ready."""
        if settings.id in self.readers:
            raise Conflict(f"a reader with id {settings.id!r} exists already", param="reader_id")
        reader = Reader(settings=settings, configured=False)
        self.readers[settings.id] = reader
        reader.load_task = self._spawn(self._load(reader))
        return reader

    async def remove(self, reader_id: str, drain_timeout: float) -> None:
        """Stop routing to the reader, let its requests finish (up to `drain_timeout`),
        stop those still running with a clear error, then stop its engine and forget it."""
        reader = self.get(reader_id)
        previous = reader.state
        reader.state = "draining"
        if previous == "loading" and reader.load_task is not None:
            reader.load_task.cancel()
            await asyncio.gather(reader.load_task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while reader.in_flight and loop.time() < deadline:  # noqa: ASYNC110 - counts change outside any event
            await asyncio.sleep(0.05)
        if reader.in_flight:
            n = reader.cut_all(NotReady(f"reader {reader_id} was removed; retry", headers={"Retry-After": "1"}))
            log.warning("reader %s: stopped %d request(s) still in flight after the drain timeout", reader_id, n)
            deadline = loop.time() + 2.0
            while reader.in_flight and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        if reader.engine is not None:
            await reader.engine.shutdown()
        reader.state = "stopped"
        self.readers.pop(reader_id, None)
        log.info("reader %s removed", reader_id)

    async def wait_loaded(self) -> None:
        """Wait until every reader started by `start_all` has loaded or failed."""
        if self._loading:
            # asyncio.wait, unlike gather, does not cancel the loads if we are cancelled.
            await asyncio.wait(self._loading)

    async def shutdown(self) -> None:
        """Stop background tasks and every engine."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for reader in self.readers.values():
            if reader.engine is not None:
                try:
                    await reader.engine.shutdown()
                except Exception:
                    log.exception("shutting down reader %s failed", reader.id)
            reader.state = "stopped"
