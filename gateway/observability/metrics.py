"""Prometheus series of the gateway, and the per-request observation that feeds them.

Label values are bounded: `api` (the API family, gateway/apis.py) and `route` come from
the table and the route templates, `group` from the configured consumer groups, `status` from HTTP codes.
vLLM registers its own `vllm:*` series in the same default registry, so `/metrics`
serves both. With `PROMETHEUS_MULTIPROC_DIR` set (several worker processes) the
multiprocess collector aggregates them.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.budgets import Allowance
    from gateway.observability.tracing import TraceIds

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)

REQUESTS = Counter("gateway_requests", "HTTP requests answered", ["api", "route", "group", "status"])
ERRORS = Counter("gateway_errors", "Requests that failed, by error type", ["api", "type"])
REJECTIONS = Counter("gateway_admission_rejections", "Requests refused by admission control (429)", ["group"])
CANCELLATIONS = Counter("gateway_cancellations", "Requests whose client went away before the answer", ["api"])
DEADLINES = Counter("gateway_deadline_expiries", "Requests stopped by their deadline", ["api"])
LOOP_LAG = Histogram(
    "gateway_event_loop_lag_seconds",
    "How late the event loop ran a timer due every 100 ms (a busy loop answers everything late)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Arrival to first generated token",
    ["api", "group"],
    buckets=LATENCY_BUCKETS,
)
ITL = Histogram(
    "gateway_inter_token_latency_seconds",
    "Mean time between generated tokens, per request",
    ["api", "group"],
    buckets=TOKEN_LATENCY_BUCKETS,
)
DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Arrival to the end of the answer",
    ["api", "route", "group"],
    buckets=LATENCY_BUCKETS,
)
QUEUE = Histogram(
    "gateway_queue_time_seconds",
    "Arrival until the engine accepted the request (admission, tokenizing, queueing)",
    ["api", "group"],
    buckets=LATENCY_BUCKETS,
)
PROMPT_TOKENS = Counter("gateway_prompt_tokens", "Prompt tokens of answered requests", ["api", "group"])
GENERATED_TOKENS = Counter("gateway_generated_tokens", "Generated tokens", ["api", "group"])
KEY_REQUESTS = Counter("gateway_key_requests", "Requests answered, per API key name", ["key", "status"])
KEY_TOKENS = Counter("gateway_key_tokens", "Tokens per API key name", ["key", "kind"])
KEY_REJECTIONS = Counter("gateway_key_rejections", "Requests refused with 429, per API key name", ["key"])
STORE_ERRORS = Counter(
    "gateway_continuation_store_errors", "Calls to the continuation store that failed (Redis down, slow, refusing)"
)
STORE_WRITE_ERRORS = Counter(
    "gateway_continuation_write_errors", "Finished answers whose sequence could not be stored (answer still sent)"
)
EMBED_BATCH = Histogram(
    "gateway_embedding_batch_size",
    "Inputs per dynamic batch of an embedding model",
    ["group"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


@dataclass(eq=False)
class Observation:
    """What one request did, filled in as it goes (see `current`)."""

    request_id: str
    api: str  # the API family's metrics label
    method: str
    path: str
    start: float = field(default_factory=time.perf_counter)
    group: str = ""
    reader: str = ""
    key: str = ""  # the API key's name (never the key)
    route: str = ""
    status: int = 0
    accepted_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache had
    error_type: str | None = None
    error: str | None = None  # the answer's error message (it never repeats the request)
    completed: bool = False
    tenant: str = ""  # the key's tenant (the usage ledger's)
    model: str = ""  # the model or LoRA adapter that served it
    requested_model: str = ""  # the group, model or adapter name the caller sent
    # the request's draw on its token budgets (gateway/budgets.py), and whether a budget
    # ended it
    allowance: Allowance | None = None
    budget_cut: bool = False
    # tracing (gateway/observability/tracing.py): the span ids, when the reader was picked
    # and admitted, and timed phases (name, start, end; perf_counter)
    trace: TraceIds | None = None
    admitted_at: float | None = None
    phases: list[tuple[str, float, float]] = field(default_factory=list)

    def accepted(self, prompt_tokens: int) -> None:
        """An engine accepted one prompt of the request."""
        if self.accepted_at is None:
            self.accepted_at = time.perf_counter()
        self.prompt_tokens += prompt_tokens

    def tokens(self, n: int) -> None:
        """`n` more tokens were generated."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.generated_tokens += n
        if self.reader:
            LIVE_TOKENS[self.reader] = LIVE_TOKENS.get(self.reader, 0) + n

    def record(self) -> None:
        """Update the Prometheus series (once, when the answer is over)."""
        s, g = self.api, self.group
        REQUESTS.labels(s, self.route or "unmatched", g, str(self.status)).inc()
        DURATION.labels(s, self.route or "unmatched", g).observe(time.perf_counter() - self.start)
        if self.error_type is not None:
            ERRORS.labels(s, self.error_type).inc()
            if self.error_type == "timeout":
                DEADLINES.labels(s).inc()
            elif self.error_type == "rate_limit_error":
                REJECTIONS.labels(g).inc()
        if not self.completed:
            CANCELLATIONS.labels(s).inc()
        if self.accepted_at is not None:
            QUEUE.labels(s, g).observe(self.accepted_at - self.start)
        if self.prompt_tokens:
            PROMPT_TOKENS.labels(s, g).inc(self.prompt_tokens)
        if self.generated_tokens:
            GENERATED_TOKENS.labels(s, g).inc(self.generated_tokens)
        if self.key:
            KEY_REQUESTS.labels(self.key, str(self.status)).inc()
            if self.prompt_tokens:
                KEY_TOKENS.labels(self.key, "prompt").inc(self.prompt_tokens)
            if self.generated_tokens:
                KEY_TOKENS.labels(self.key, "generated").inc(self.generated_tokens)
            if self.status == 429:
                KEY_REJECTIONS.labels(self.key).inc()
        if self.first_token_at is not None:
            TTFT.labels(s, g).observe(self.first_token_at - self.start)
            if self.generated_tokens > 1 and self.last_token_at is not None:
                ITL.labels(s, g).observe((self.last_token_at - self.first_token_at) / (self.generated_tokens - 1))


# tokens generated per reader since start, counted as they stream (the console's tokens/s)
LIVE_TOKENS: dict[str, int] = {}

_CURRENT: contextvars.ContextVar[Observation | None] = contextvars.ContextVar("observation", default=None)


def current_observation() -> Observation | None:
    """The observation of the request being served, if any."""
    return _CURRENT.get()


def begin(obs: Observation) -> contextvars.Token[Observation | None]:
    """Make `obs` the current observation (tasks started from here see it too)."""
    return _CURRENT.set(obs)


def end(token: contextvars.Token[Observation | None]) -> None:
    """Undo `begin`."""
    _CURRENT.reset(token)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a phase of the current request for its trace (nothing when tracing is off)."""
    obs = _CURRENT.get()
    if obs is None or obs.trace is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        obs.phases.append((name, start, time.perf_counter()))


# Scrape-time gauges of the process's runtime (readers, in flight, the store), set by
# `gateway.runtime` when it starts: this module knows no runtime type.
_RUNTIME_COLLECTORS: list[Collector] = []


def attach(collector: Collector) -> None:
    """Serve `collector`'s gauges on /metrics, replacing the previous runtime's (tests
    build several runtimes in one process; the latest one is the live one)."""
    for old in _RUNTIME_COLLECTORS:
        REGISTRY.unregister(old)
    _RUNTIME_COLLECTORS[:] = [collector]
    REGISTRY.register(collector)


# series labelled by API key name or tenant
_PER_CALLER = tuple(
    f"{head}gateway_{kind}_".encode() for head in ("", "# HELP ", "# TYPE ") for kind in ("key", "tenant")
)


def exposition(per_key: bool = True) -> bytes:
    """The Prometheus text of every series: the gateway's and vLLM's; without `per_key`,
    none of the series labelled by API key name or tenant (`gateway_key_*`,
    `gateway_tenant_*`)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry) + generate_latest(_runtime_only())
    else:
        text = generate_latest(REGISTRY)
    if per_key:
        return text
    return b"".join(line for line in text.splitlines(keepends=True) if not line.startswith(_PER_CALLER))


def _runtime_only() -> CollectorRegistry:
    registry = CollectorRegistry()
    for c in _RUNTIME_COLLECTORS:
        registry.register(c)
    return registry
