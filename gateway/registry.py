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

from engine_adapters.base import EngineDeadError
from engine_adapters.models import display_name, resolve_model
from engine_adapters.scripted import ScriptedConfig, ScriptedEngine
from gateway.errors import BadRequest, NotFound, NotReady
from gateway.settings import ReaderSettings, Settings

log = logging.getLogger(__name__)

ReaderState = Literal["loading", "ready", "failed", "dead", "stopped"]


@dataclass(eq=False)
class Reader:
    """One model instance serving one consumer group."""

    settings: ReaderSettings
    engine: Any = None  # a GenerativeEngine or a PoolingEngine, by `task`
    state: ReaderState = "loading"
    error: str | None = None
    in_flight: int = 0
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
        ready = [r for r in members if r.state == "ready"]
        if not ready:
            states = ", ".join(f"{r.id}: {r.state}" for r in members)
            raise NotReady(
                f"consumer group {group!r} has no ready reader ({states}); retry shortly",
                headers={"Retry-After": "5"},
            )
        return min(ready, key=lambda r: r.in_flight)

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
        """Every consumer group has at least one ready reader."""
        groups = self.groups()
        return bool(groups) and all(any(r.state == "ready" for r in rs) for rs in groups.values())

    # ------------------------------------------------------------------ lifecycle

    def start_all(self) -> list[asyncio.Task[None]]:
        """Load every reader in the background; returns the loading tasks."""
        self._loading = [self._spawn(self._load(r)) for r in self.readers.values()]
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
