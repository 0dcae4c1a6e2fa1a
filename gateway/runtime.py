"""The state one gateway process shares between its listeners: settings, readers, the
continuation store and the request pipeline; and the gauges Prometheus reads of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.types import Scope

from gateway.apis import Api
from gateway.auth import KeyRing
from gateway.batches.files import FileDirectory
from gateway.batches.runner import BatchRunner
from gateway.batches.store import BatchStore, make_batch_store
from gateway.continuation import ContinuationStore, make_store
from gateway.errors import GatewayError
from gateway.machinery.pipeline import Pipeline
from gateway.metering import Meter, make_meter
from gateway.observability.metrics import Observation, attach
from gateway.observability.tracing import Tracer
from gateway.registry import BATCH_WORK, EngineFactory, ReaderState, Registry
from gateway.settings import Settings
from gateway.usage import Ledger, Record, day_of

BODY_FLOOR_BYTES = 256 * 1024
ENGINE_SECONDS = Counter(
    "gateway_engine_seconds", "Engine time of finished requests (acceptance to last token)", ["group", "work"]
)


@dataclass(eq=False)
class Runtime:
    """Settings, the reader registry, the pipeline and the process's lifecycle flags."""

    settings: Settings
    registry: Registry
    continuation: ContinuationStore
    pipeline: Pipeline
    keys: KeyRing
    meter: Meter
    ledger: Ledger
    batch_store: BatchStore
    batch_files: FileDirectory
    batches: BatchRunner
    tracer: Tracer | None = None
    draining: bool = False
    started_at: float = field(default_factory=time.time)

    @classmethod
    def create(cls, settings: Settings, factory: EngineFactory | None = None) -> Runtime:
        """A runtime whose readers are not loaded yet (see `Registry.start_all`)."""
        keys = KeyRing(
            (k.get_secret_value() for k in settings.api_keys),
            (k.get_secret_value() for k in settings.admin_api_keys),
            settings.api_keys_file,
            secret=settings.continuation.secret.get_secret_value().encode(),
            file_format=settings.api_keys_file_format,
        )
        registry = Registry(settings, factory) if factory is not None else Registry(settings)
        store = make_store(settings.continuation)
        meter = make_meter(settings.continuation)
        batch_store = make_batch_store(settings.continuation)
        files = FileDirectory(settings.batch_directory)
        if settings.batches.enabled:
            try:
                files.check()
            except OSError as exc:  # fail closed: never accept files that cannot be kept
                raise RuntimeError(f"batches.directory {files.root} cannot be written: {exc}") from exc
        runtime = cls(
            settings=settings,
            registry=registry,
            continuation=store,
            pipeline=Pipeline(settings, registry, store, meter),
            keys=keys,
            meter=meter,
            ledger=Ledger(meter, settings.usage),
            batch_store=batch_store,
            batch_files=files,
            batches=BatchRunner(settings, registry, batch_store, files, keys),
            tracer=Tracer() if settings.tracing else None,
        )
        attach(RuntimeCollector(runtime))
        return runtime

    def body_limit(self, api: Api) -> int:
        """The largest body a request of `api` may send: `max_body_bytes`, and for APIs
        that carry prompts at most `body_bytes_per_context_token` per token of the largest
        context served (never below BODY_FLOOR_BYTES), so that a body no model could take
        is refused before anything parses it."""
        s = self.settings
        if api.max_body is not None:
            return api.max_body(s)
        context = self.registry.largest_context() if api.prompts and s.body_bytes_per_context_token else None
        if context is None or s.body_bytes_per_context_token is None:
            return s.max_body_bytes
        return min(s.max_body_bytes, max(BODY_FLOOR_BYTES, context * s.body_bytes_per_context_token))

    def busy(self) -> int:
        """Requests still being served (for the shutdown drain)."""
        return self.pipeline.in_flight()

    def cut_all(self, error: GatewayError) -> int:
        """Stop every request in flight with `error` (after a drain timed out)."""
        return self.pipeline.cut_all(error)

    def start(self) -> None:
        """Load the readers (in the background) and start the ledger's flushes."""
        self.registry.start_all()
        if self.settings.usage.enabled:
            self.ledger.start()
        if self.settings.batches.enabled and self.batches.app is not None:
            self.batches.start()

    def on_request_end(self, obs: Observation, scope: Scope) -> None:
        """A request's answer ended: its usage goes to the ledger if it reached a group,
        its spans to the tracer if tracing."""
        if self.tracer is not None and obs.trace is not None:
            self.tracer.export(obs, obs.trace)
        if not obs.group:
            return
        record = record_of(obs, time.time())
        if record.engine_ms:  # the share of engine time batch work takes
            ENGINE_SECONDS.labels(obs.group, "batch" if BATCH_WORK.get() else "live").inc(record.engine_ms / 1000)
        if self.settings.usage.enabled:
            self.ledger.record(record)

    async def close(self) -> None:
        """Let background chores finish (a background response recording its failure during
        a drain), then stop the engines, write the ledger's last sums and release the stores."""
        await self.batches.stop()  # lines in flight give their claims back
        await self.pipeline.finish_chores(5.0)
        await self.registry.shutdown()
        await self.ledger.stop()
        await self.continuation.close()
        await self.meter.close()
        await self.batch_store.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # sends what is queued


def record_of(obs: Observation, now: float) -> Record:
    """The ledger's record of a finished request."""
    if obs.budget_cut:
        outcome = "budget"
    elif obs.error_type == "client_closed_request" or (obs.error_type is None and not obs.completed):
        outcome = "cancelled"
    elif obs.error_type is not None:
        outcome = "failed"
    else:
        outcome = "finished"
    engine_ms = 0
    if obs.accepted_at is not None:
        end = obs.last_token_at if obs.last_token_at is not None else time.perf_counter()
        engine_ms = max(0, int((end - obs.accepted_at) * 1000))
    return Record(
        tenant=obs.tenant or "local",
        key=obs.key or "local",
        group=obs.group,
        model=obs.model or obs.group,
        api=obs.api,
        prompt_tokens=obs.prompt_tokens,
        cached_tokens=obs.cached_tokens,
        output_tokens=obs.generated_tokens,
        engine_ms=engine_ms,
        outcome=outcome,
        day=day_of(now),
    )


def get_runtime(request: Request) -> Runtime:
    """The runtime of the app serving `request`."""
    runtime: Runtime = request.app.state.runtime
    return runtime


READER_STATES: tuple[str, ...] = get_args(ReaderState)


class RuntimeCollector(Collector):
    """Gauges read at scrape time: readers, requests in flight, the continuation store."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Current values of the runtime."""
        rt = self.runtime
        in_flight = GaugeMetricFamily("gateway_requests_in_flight", "Requests in flight", labels=["group", "reader"])
        up = GaugeMetricFamily("gateway_reader_up", "1 when the reader serves, else 0", labels=["group", "reader"])
        engine = GaugeMetricFamily(
            "gateway_engine_requests", "Requests inside the reader's engine", labels=["group", "reader"]
        )
        # one series per state, 1 for the current one: alerts tell a reader still loading
        # from one that failed or died
        state = GaugeMetricFamily(
            "gateway_reader_state", "1 for the reader's current state", labels=["group", "reader", "state"]
        )
        for r in list(rt.registry.readers.values()):
            in_flight.add_metric([r.group, r.id], r.in_flight)
            up.add_metric([r.group, r.id], 1.0 if r.serving else 0.0)
            current = "dead" if r.state == "ready" and not r.serving else r.state
            for name in READER_STATES:
                state.add_metric([r.group, r.id, name], 1.0 if name == current else 0.0)
            if r.engine is not None and r.state == "ready":
                engine.add_metric([r.group, r.id], r.engine.stats().running)
        yield in_flight
        yield up
        if rt.settings.batches.enabled:
            lines = GaugeMetricFamily("gateway_batch_lines_in_flight", "Batch lines this process runs now")
            lines.add_metric([], rt.batches.lines_in_flight())
            yield lines
        yield state
        yield engine
        entries, size, hits, misses, evictions = rt.continuation.snapshot()
        # backend="redis": every replica reports the same shared store (take max, not sum)
        backend = [rt.settings.continuation.backend]
        family = GaugeMetricFamily("gateway_continuation_entries", "Sequences in the store", labels=["backend"])
        family.add_metric(backend, entries)
        yield family
        family = GaugeMetricFamily("gateway_continuation_bytes", "Bytes in the continuation store", labels=["backend"])
        family.add_metric(backend, size)
        yield family
        lookups = GaugeMetricFamily(
            "gateway_continuation_lookups",
            "Continuation lookups since start (hit rate = hit / all)",
            labels=["result"],
        )
        lookups.add_metric(["hit"], hits)
        lookups.add_metric(["miss"], misses)
        yield lookups
        yield GaugeMetricFamily("gateway_continuation_evictions", "Sequences evicted since start", value=evictions)
        health = rt.continuation.health()
        up = GaugeMetricFamily(
            "gateway_continuation_store_up",
            "1 when the store answers (0: down, or its circuit open)",
            labels=["backend"],
        )
        up.add_metric(backend, 1.0 if health.up and not health.breaker_open else 0.0)
        yield up
        yield GaugeMetricFamily(
            "gateway_draining", "1 while the process drains for shutdown", value=1.0 if rt.draining else 0.0
        )
