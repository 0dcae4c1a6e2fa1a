"""The usage ledger: what every request used, per tenant, key, group, model and API, per
UTC day, kept in the store's backend (exact across replicas on Redis).

Each request that reached a consumer group is one `Record` when its answer ends: prompt,
cached prompt and output tokens as its answer reported them, engine time and outcome
(`finished`, `cancelled` by the client, cut by a `budget`, `failed`). Records are summed
in memory and flushed to the backend every `usage.flush_seconds` (one Redis pipeline of
HINCRBY: sums, so replicas never overwrite each other); a failed flush keeps its sums for
the next one. `GET /usage` on the management port reads the days asked for, grouped and
filtered, as JSON or CSV, priced with `usage.prices` where a model has a price.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from gateway.metering import Meter
from gateway.settings import UsageSettings

log = logging.getLogger(__name__)

METRICS = ("requests", "prompt_tokens", "cached_tokens", "output_tokens", "engine_ms")
OUTCOMES = ("finished", "cancelled", "budget", "failed")
DIMENSIONS = ("day", "tenant", "key", "group", "model", "api")
_SEP = "\x1f"

TENANT_TOKENS = Counter("gateway_tenant_tokens", "Tokens used per tenant and model", ["tenant", "model", "kind"])
TENANT_REQUESTS = Counter(
    "gateway_tenant_requests", "Requests per tenant, model and outcome", ["tenant", "model", "outcome"]
)


@dataclass(frozen=True, slots=True)
class Record:
    """What one request used."""

    tenant: str
    key: str
    group: str
    model: str
    api: str
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    engine_ms: int
    outcome: str  # one of OUTCOMES
    day: str  # UTC, YYYY-MM-DD


def day_of(now: float) -> str:
    """The UTC day of `now`."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class Ledger:
    """Sums of records, flushed to the backend."""

    def __init__(self, meter: Meter, settings: UsageSettings) -> None:
        self.meter = meter
        self.settings = settings
        self._pending: dict[str, dict[str, int]] = {}  # day hash -> field -> sum
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.flush_errors = 0

    def record(self, r: Record) -> None:
        """Count one request (no I/O: summed until the next flush)."""
        head = _SEP.join((r.tenant, r.key, r.group, r.model, r.api))
        fields = self._pending.setdefault(f"u:{r.day}", {})
        for name, value in (
            ("requests", 1),
            ("prompt_tokens", r.prompt_tokens),
            ("cached_tokens", r.cached_tokens),
            ("output_tokens", r.output_tokens),
            ("engine_ms", r.engine_ms),
            (r.outcome, 1),
        ):
            if value:
                f = head + _SEP + name
                fields[f] = fields.get(f, 0) + value
        for kind, n in (("prompt", r.prompt_tokens), ("cached", r.cached_tokens), ("output", r.output_tokens)):
            if n:
                TENANT_TOKENS.labels(r.tenant, r.model, kind).inc(n)
        TENANT_REQUESTS.labels(r.tenant, r.model, r.outcome).inc()

    async def flush(self) -> None:
        """Send the sums so far to the backend; on failure they wait for the next flush."""
        async with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                await self.meter.add_usage(pending, int(self.settings.retention_days * 86400))
            except Exception as exc:
                self.flush_errors += 1
                for day, fields in pending.items():  # merge back, to be sent next time
                    target = self._pending.setdefault(day, {})
                    for f, n in fields.items():
                        target[f] = target.get(f, 0) + n
                log.error("the usage ledger could not be written (kept for the next flush): %s", exc)
                raise

    def start(self) -> None:
        """Flush every `flush_seconds` until `stop`."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.settings.flush_seconds)
                with contextlib.suppress(Exception):
                    await self.flush()

        self._task = asyncio.ensure_future(loop())

    async def stop(self) -> None:
        """Stop flushing, after one last flush (the shutdown: nothing counted is lost
        unless the backend is down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def query(
        self,
        days: Sequence[str],
        filters: dict[str, str],
        group_by: Sequence[str],
    ) -> list[dict[str, Any]]:
        """Rows of the totals of `days`, keeping records that match `filters` (dimension ->
        value), one row per distinct value of `group_by`."""
        await self.flush()
        rows: dict[tuple[str, ...], dict[str, Any]] = {}
        for day, fields in zip(days, await self.meter.read_usage([f"u:{d}" for d in days]), strict=True):
            for f, n in fields.items():
                parts = f.split(_SEP)
                if len(parts) != 6:
                    continue
                dims = dict(zip(DIMENSIONS, (day, *parts[:5]), strict=True))
                if any(dims[k] != v for k, v in filters.items()):
                    continue
                group = tuple(dims[g] for g in group_by)
                row = rows.get(group)
                if row is None:
                    row = rows[group] = {**dict(zip(group_by, group, strict=True)), **dict.fromkeys(METRICS, 0)}
                    row.update(dict.fromkeys(OUTCOMES, 0))
                row[parts[5]] = row.get(parts[5], 0) + n
        out = [rows[k] for k in sorted(rows)]
        for row in out:
            price = self.settings.prices.get(row.get("model", ""))
            if price is not None:
                cached = row["cached_tokens"]
                rate = price.cached_input_per_million
                rate = price.input_per_million if rate is None else rate
                row["cost"] = round(
                    ((row["prompt_tokens"] - cached) * price.input_per_million + cached * rate
                     + row["output_tokens"] * price.output_per_million) / 1e6, 6
                )  # fmt: skip
        return out


def as_csv(rows: list[dict[str, Any]], group_by: Sequence[str]) -> str:
    """The rows as CSV, a header line first."""
    columns = [*group_by, *METRICS, *OUTCOMES]
    if any("cost" in r for r in rows):
        columns.append("cost")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
