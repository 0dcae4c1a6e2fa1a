"""Reader settings -> engine: the only place that names the engine implementations.

The gateway's registry hands over a reader's settings as plain data; each engine's
config dataclass takes the fields it declares, by name, so a new engine option needs
a field in the reader settings and one in the config, and nothing here. Engine modules
are imported only when a reader of their kind is built (vLLM takes seconds to import).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine_adapters.base import GenerativeEngine, PoolingEngine
from engine_adapters.models import display_name, resolve_model

Engine = GenerativeEngine | PoolingEngine

# Reader fields whose name differs from the engine config's
_RENAMED = {"max_batch_wait_ms": "max_wait_ms", "effective_task": "task"}


def config_of(cls: type[Any], reader: Mapping[str, Any], **fixed: Any) -> Any:
    """An engine config dataclass filled from the reader fields it declares."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = {_RENAMED.get(k, k): v for k, v in reader.items()}
    data = {k: v for k, v in data.items() if k in names and v is not None and k not in fixed}
    return cls(**data, **fixed)


def build_engine(reader: Mapping[str, Any], cache_dir: Path, on_batch: Callable[[int], None] | None = None) -> Engine:
    """Construct (not start) the engine a reader's settings ask for.

    `reader` is the reader's settings as data (`ReaderSettings.model_dump()` plus
    `effective_task`); embedded models are provisioned here (call it off the event loop).
    `on_batch` hears the size of every dynamic batch (engines that batch themselves).
    """
    kind = reader["kind"]
    served = display_name(reader["model"])
    if kind == "scripted":
        from engine_adapters.scripted import ScriptedConfig, ScriptedEngine

        return ScriptedEngine(
            ScriptedConfig(**{"name": served, "truncate": reader.get("truncate", True), **reader.get("scripted", {})})
        )
    model = resolve_model(reader["model"], cache_dir)
    if kind == "sentence-transformers":
        from engine_adapters.sentence_transformers_engine import SentenceTransformersConfig, SentenceTransformersEngine

        return SentenceTransformersEngine(
            config_of(SentenceTransformersConfig, reader, model=model, served_name=served, on_batch=on_batch)
        )
    if kind == "pooling":
        from engine_adapters.vllm_pooling import VLLMPoolingConfig, VLLMPoolingEngine

        return VLLMPoolingEngine(config_of(VLLMPoolingConfig, reader, model=model, served_name=served))
    if kind == "vllm":
        from engine_adapters.vllm_engine import VLLMEngine, VLLMEngineConfig

        return VLLMEngine(config_of(VLLMEngineConfig, reader, model=model, served_name=served))
    raise ValueError(f"unknown engine kind {kind!r}")


def spawns_processes(kind: str) -> bool:
    """Whether starting an engine of `kind` starts worker processes (which inherit the
    process environment, `CUDA_VISIBLE_DEVICES` included, at that moment)."""
    return kind in ("vllm", "pooling")
