"""The management API: readers created and removed at run time, and their description."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.errors import BadRequest, validation_message
from gateway.protocols.management import CreateReaderRequest
from gateway.registry import Registry
from gateway.settings import ReaderSettings, Settings

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
    group = data.setdefault("consumer_group", "primary")
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


def reader_groups(registry: Registry) -> dict[str, list[dict[str, Any]]]:
    """Every consumer group and the description of each of its readers."""
    return {group: [r.describe() for r in readers] for group, readers in registry.groups().items()}
