"""The management API: readers created and removed at run time, and their description."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine_adapters.factory import ENGINE_KINDS, EngineKind
from gateway.errors import BadRequest, Conflict, Overloaded, Unprocessable, validation_message
from gateway.protocols.management import CreateReaderRequest
from gateway.registry import Registry
from gateway.serving.status import describe
from gateway.settings import DEFAULT_GROUP, ReaderSettings, Settings, Task

# Takeoff's ReaderConfig names -> our reader fields
_TAKEOFF_FIELDS = {
    "model_name": "model",
    "device": "device",
    "consumer_group": "consumer_group",
    "max_batch_size": "max_batch_size",
    "max_sequence_length": "max_model_len",
    "tensor_parallel": "tensor_parallel_size",
    "cuda_visible_devices": "cuda_visible_devices",
}
_OURS = (
    "id",
    "model",
    "kind",
    "task",
    "dtype",
    "max_model_len",
    "enforce_eager",
    "cpu_kv_cache_gib",
    "structured_outputs_backend",
    "lora_adapters",
    "max_lora_rank",
    "engine_args",
    "scripted",
)


def reader_settings(body: CreateReaderRequest, settings: Settings, registry: Registry) -> ReaderSettings:
    """The settings of a new reader: the server's `reader_defaults`, then the Takeoff
    fields, then our own fields. Without an id, one is made from the group."""
    data: dict[str, Any] = dict(settings.reader_defaults)
    for takeoff_name, ours in _TAKEOFF_FIELDS.items():
        value = getattr(body, takeoff_name)
        if value is not None:
            data[ours] = value
    if body.batch_duration_millis is not None:
        data["max_batch_wait_ms"] = float(body.batch_duration_millis)
    for name in _OURS:
        value = getattr(body, name)
        if value is not None:
            data[name] = value
    if "model" not in data:
        raise BadRequest("model_name (or model) is required", param="model_name")
    if body.kind is None and "kind" not in settings.reader_defaults:
        data["kind"], task = detect_kind(data["model"])
        if task is not None:
            data.setdefault("task", task)
    group = data.setdefault("consumer_group", DEFAULT_GROUP)
    if "id" not in data:
        n = 0
        while f"{group}-{n}" in registry.readers:
            n += 1
        data["id"] = f"{group}-{n}"
    try:
        return ReaderSettings.model_validate(data)
    except ValidationError as exc:
        message, field = validation_message(exc.errors())
        raise BadRequest(message, param=field) from None


async def create_reader(
    registry: Registry, body: CreateReaderRequest, settings: Settings, wait: bool
) -> dict[str, Any]:
    """Add a reader; with `wait`, answer when it is ready (or 422 when it failed to load).

    Only what the settings allow: reader kinds, `engine_args` keys, models from the
    model roots (or hub ids when online); at most `max_readers` readers and
    `max_concurrent_loads` loads at once.
    """
    new = reader_settings(body, settings, registry)
    check_allowed(new, settings)
    if len(registry.readers) >= settings.max_readers:
        raise Conflict(f"this server has its maximum of {settings.max_readers} readers", param="model_name")
    loading = sum(r.state == "loading" for r in registry.readers.values())
    if loading >= settings.max_concurrent_loads:
        raise Overloaded(
            f"{loading} readers are loading, the most at once; retry when one is ready", headers={"Retry-After": "10"}
        )
    reader = registry.add(new)
    if wait and reader.load_task is not None:
        await asyncio.shield(reader.load_task)  # a client that gives up does not cancel the load
        if reader.state == "failed":
            raise Unprocessable(f"reader {reader.id} failed to load: {reader.error}", param="model_name")
    return describe(reader)


async def delete_reader(
    registry: Registry, reader_id: str, settings: Settings, drain_seconds: float | None = None
) -> dict[str, Any]:
    """Stop routing to the reader, drain its requests (up to `drain_seconds`, at most the
    server's drain timeout), stop those still running with an error, free its memory."""
    limit = settings.drain_timeout_seconds
    await registry.remove(reader_id, min(drain_seconds, limit) if drain_seconds is not None else limit)
    return {"reader_id": reader_id, "deleted": True}


def reader_config(registry: Registry, reader_id: str) -> dict[str, Any]:
    """The settings a reader runs with."""
    reader = registry.get(reader_id)
    return {"reader_id": reader.id, **reader.settings.model_dump(mode="json")}


def _under(path: Path, roots: list[Path]) -> bool:
    real = path.expanduser().resolve()
    return any(real.is_relative_to(root.expanduser().resolve()) for root in roots)


def check_model(model: str, settings: Settings, field: str) -> None:
    """A model (or adapter) a new reader may load: embedded, under a model root, or a hub
    id when the server is online; else a 400 naming the field."""
    from engine_adapters.models import is_embedded

    if is_embedded(model):
        return
    if model.startswith(("/", ".", "~")) or Path(model).exists():
        if not _under(Path(model), settings.model_roots):
            roots = ", ".join(str(r) for r in settings.model_roots) or "none configured"
            raise BadRequest(f"{field}: models load only from the model roots ({roots})", param=field)
        return
    if settings.effective_offline:
        raise BadRequest(
            f"{field}: a hub id, and this server is offline (set offline: false to allow hub ids)",
            param=field,
        )


def check_allowed(reader: ReaderSettings, settings: Settings) -> None:
    """The management API's allow-lists (a 400 naming the field)."""
    if reader.kind not in settings.allowed_reader_kinds:
        allowed = ", ".join(settings.allowed_reader_kinds)
        raise BadRequest(f"kind {reader.kind!r} may not be created here; allowed: {allowed}", param="kind")
    for key in reader.engine_args:
        if key not in settings.allowed_engine_args:
            allowed = ", ".join(settings.allowed_engine_args)
            raise BadRequest(f"engine_args.{key} is not allowed here (allowed: {allowed})", param=f"engine_args.{key}")
    if ENGINE_KINDS[reader.kind].loads_model:
        check_model(reader.model, settings, "model_name")
        for name, path in reader.lora_adapters.items():
            check_model(path, settings, f"lora_adapters.{name}")


def detect_kind(model: str) -> tuple[EngineKind, Task | None]:
    """What kind of reader a model needs, as Takeoff decides for itself: a
    sentence-transformers folder (modules.json) embeds, or classifies when its model is
    a sequence classifier; anything else is a vLLM generative model."""
    from engine_adapters.models import MINILM, display_name, is_embedded

    if is_embedded(model):
        return ("sentence-transformers", "embed") if display_name(model) == MINILM else ("vllm", None)
    folder = Path(model)
    if (folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file():
        return "sentence-transformers", "embed"
    config = folder / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return "sentence-transformers", "classify"
    return "vllm", None
