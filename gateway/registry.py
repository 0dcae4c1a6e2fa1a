"""Readers (loaded models) grouped into consumer groups, and picking one per request.

A request names a consumer group; inside the group it goes to the ready reader with
the fewest requests in flight. Readers load in the background so the listeners answer
`/healthz` and `/readyz` while models load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from engine_adapters.base import EngineDeadError, UnknownAdapterError
from engine_adapters.models import display_name, resolve_model
from engine_adapters.scripted import ScriptedConfig, ScriptedEngine
from gateway.errors import BadRequest, Conflict, NotFound, NotReady, Overloaded
from gateway.observability.metrics import EMBED_BATCH, LIVE_TOKENS
from gateway.observability.metrics import current as observation
from gateway.settings import ReaderSettings, Settings

log = logging.getLogger(__name__)

ReaderState = Literal["loading", "ready", "failed", "dead", "draining", "stopped"]


@dataclass(eq=False)
class Reader:
    """One model instance serving one consumer group."""

    settings: ReaderSettings
    engine: Any = None  # a GenerativeEngine or a PoolingEngine, by `task`
    state: ReaderState = "loading"
    error: str | None = None
    in_flight: int = 0
    configured: bool = True  # from the settings at start-up (False: added at run time)
    load_task: asyncio.Task[None] | None = None
    loaded_at: float | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        """The reader id."""
        return self.settings.id

    @property
    def group(self) -> str:
        """The consumer group the reader serves."""
        return self.settings.consumer_group

    @property
    def task(self) -> str:
        """ "generate", "embed" or "classify"."""
        return self.settings.effective_task

    @property
    def adapters(self) -> tuple[str, ...]:
        """LoRA adapter names (configured; the engine serves them once ready)."""
        if self.settings.kind == "scripted":
            return tuple(self.settings.scripted.get("lora_adapters", ()))
        return tuple(self.settings.lora_adapters)

    @property
    def serving(self) -> bool:
        """Ready, and its engine has not died since (before the watcher noticed)."""
        return self.state == "ready" and not (self.engine is not None and self.engine.dead)

    def can(self, task: str) -> bool:
        """Whether the reader serves `task` ("score" is served by embed and classify readers)."""
        return self.task == task or (task == "score" and self.task in ("embed", "classify"))

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count a request as in flight on this reader for the duration of the block."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def acquire(self) -> Callable[[], None]:
        """Count a request as in flight until the returned release is called (once)."""
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        return release

    def describe_state(self) -> str:
        """ "id" when ready, else "id, state"."""
        return self.id if self.state == "ready" else f"{self.id}, {self.state}"

    def describe(self) -> dict[str, Any]:
        """Public description for /status and the management API."""
        info: dict[str, Any] = {
            "reader_id": self.id,
            "consumer_group": self.group,
            "engine": self.settings.kind,
            "task": self.task,
            "model_name": display_name(self.settings.model),
            "state": self.state,
            "requests_in_flight": self.in_flight,
            "generated_tokens": LIVE_TOKENS.get(self.id, 0),
        }
        if self.error:
            info["error"] = self.error
        if self.engine is not None and self.state == "ready":
            m = self.engine.info
            info.update(
                {
                    "model_name": m.name,
                    "model_path": m.path,
                    "max_model_len": m.max_model_len,
                    "device": m.device,
                    "dtype": m.dtype,
                    "has_chat_template": m.has_chat_template,
                    "engine_requests": self.engine.stats().running,
                }
            )
            if m.dimensions is not None:
                info["dimensions"] = m.dimensions
            if m.labels:
                info["labels"] = list(m.labels)
            sizes = getattr(self.engine, "recent_batch_sizes", None)
            if sizes is not None:
                info["recent_batch_sizes"] = sizes
        return info


EngineFactory = Callable[[ReaderSettings, Settings], Any]


def build_engine(reader: ReaderSettings, settings: Settings) -> Any:
    """Construct (not start) the engine a reader's settings ask for."""
    if reader.kind == "scripted":
        return ScriptedEngine(ScriptedConfig(name=display_name(reader.model), **reader.scripted))
    task = reader.effective_task
    if reader.kind == "sentence-transformers":
        from engine_adapters.sentence_transformers_engine import SentenceTransformersConfig, SentenceTransformersEngine

        return SentenceTransformersEngine(
            SentenceTransformersConfig(
                model=resolve_model(reader.model, settings.cache_dir),
                served_name=display_name(reader.model),
                task=task,  # type: ignore[arg-type]
                device=reader.device,
                max_batch_size=reader.max_batch_size or 64,
                max_wait_ms=reader.max_batch_wait_ms,
                truncate=reader.truncate,
            )
        )
    if reader.kind == "pooling":
        from engine_adapters.vllm_pooling import VLLMPoolingConfig, VLLMPoolingEngine

        return VLLMPoolingEngine(
            VLLMPoolingConfig(
                model=resolve_model(reader.model, settings.cache_dir),
                served_name=display_name(reader.model),
                task=task,  # type: ignore[arg-type]
                dtype=reader.dtype,
                max_model_len=reader.max_model_len,
                enforce_eager=reader.enforce_eager,
                cpu_kv_cache_gib=reader.cpu_kv_cache_gib,
                truncate=reader.truncate,
                engine_args=reader.engine_args,
            )
        )
    from engine_adapters.vllm_engine import VLLMEngine, VLLMEngineConfig

    return VLLMEngine(
        VLLMEngineConfig(
            model=resolve_model(reader.model, settings.cache_dir),
            served_name=display_name(reader.model),
            device=reader.device,
            dtype=reader.dtype,
            max_model_len=reader.max_model_len,
            max_batch_size=reader.max_batch_size,
            enforce_eager=reader.enforce_eager,
            tensor_parallel_size=reader.tensor_parallel_size,
            pipeline_parallel_size=reader.pipeline_parallel_size,
            gpu_memory_utilization=reader.gpu_memory_utilization,
            cpu_kv_cache_gib=reader.cpu_kv_cache_gib,
            structured_outputs_backend=reader.structured_outputs_backend,
            scheduling_policy=reader.scheduling_policy,
            enable_prefix_caching=reader.enable_prefix_caching,
            no_repeat_ngram=reader.no_repeat_ngram,
            lora_adapters=reader.lora_adapters,
            max_lora_rank=reader.max_lora_rank,
            max_loras=reader.max_loras,
            max_queued_prompt_tokens=reader.max_queued_prompt_tokens,
            max_prompt_tokens=reader.max_prompt_tokens,
            engine_args=reader.engine_args,
        )
    )


class Registry:
    """All readers, by id and by consumer group."""

    def __init__(self, settings: Settings, factory: EngineFactory = build_engine) -> None:
        self.settings = settings
        self._factory = factory
        self.readers: dict[str, Reader] = {r.id: Reader(settings=r) for r in settings.readers}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: list[asyncio.Task[None]] = []
        self.rejections = 0  # admission-control refusals (429), for metrics
        self.on_engine_death: Callable[[Reader], None] | None = None

    # ------------------------------------------------------------------ lookup

    def groups(self) -> dict[str, list[Reader]]:
        """Consumer group name -> its readers, in configuration order."""
        out: dict[str, list[Reader]] = {}
        for r in self.readers.values():
            out.setdefault(r.group, []).append(r)
        return out

    def pick(
        self,
        group: str,
        task: str = "generate",
        backend: str | None = None,
        backend_param: str | None = None,
        group_param: str = "consumer_group",
        lora_id: str | None = None,
    ) -> Reader:
        """The ready reader of `group` for `task` with the fewest requests in flight.

        A group with no reader for the task is a 400 naming the groups that have one.
        With `backend`, only readers whose structured-output backend it is qualify: none
        in the group is a 400, none ready yet a 503.
        """
        members = [r for r in self.readers.values() if r.group == group]
        if not members:
            names = ", ".join(sorted(self.groups())) or "none"
            raise NotFound(f"unknown consumer group {group!r}; the groups are: {names}", param=group_param)
        obs = observation()
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
                raise UnknownAdapterError(f"unknown lora_id {lora_id!r}; adapters of group {group!r}: {adapters}")
            members = with_adapter
        ready = [r for r in members if r.serving]
        if not ready:
            states = ", ".join(f"{r.id}: {r.state}" for r in members)
            raise NotReady(
                f"consumer group {group!r} has no ready reader ({states}); retry shortly",
                headers={"Retry-After": "5"},
            )
        best = min(ready, key=lambda r: r.in_flight)
        limit = best.settings.max_in_flight
        if limit is not None and best.in_flight >= limit:
            self.rejections += 1
            raise Overloaded(
                f"consumer group {group!r} is at capacity ({limit} requests in flight per reader); retry shortly",
                headers={"Retry-After": "1"},
            )
        if obs is not None:
            obs.reader = best.id
        return best

    def groups_for(self, task: str) -> list[str]:
        """The groups with at least one reader for `task`, in configuration order."""
        return [g for g, rs in self.groups().items() if any(r.can(task) for r in rs)]

    def get(self, reader_id: str) -> Reader:
        """A reader by id."""
        try:
            return self.readers[reader_id]
        except KeyError:
            names = ", ".join(sorted(self.readers)) or "none"
            raise NotFound(f"unknown reader {reader_id!r}; the readers are: {names}", param="reader_id") from None

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

    async def _load(self, reader: Reader) -> None:
        t0 = time.monotonic()
        try:
            if reader.settings.cuda_visible_devices is not None:
                import os

                os.environ["CUDA_VISIBLE_DEVICES"] = reader.settings.cuda_visible_devices
            # Provisioning converts the embedded model on first use: keep it off the loop.
            reader.engine = await asyncio.to_thread(self._factory, reader.settings, self.settings)
            await reader.engine.start()
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
        if hasattr(reader.engine, "on_batch"):  # embedding batches, for metrics
            histogram = EMBED_BATCH.labels(reader.group)
            reader.engine.on_batch = histogram.observe
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
        then stop its engine and forget it."""
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
            log.warning("reader %s: %d request(s) still in flight after the drain timeout", reader_id, reader.in_flight)
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
