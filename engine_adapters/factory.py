"""Reader settings -> engine, and the one table of engine kinds.

`ENGINE_KINDS` says what each kind of reader is (generative or pooling, whether it loads a
model, starts worker processes, may be created through the management API by default,
and how it is built); the settings, the management API and the registry read it, and
nothing else names a kind. The gateway's registry hands over a reader's settings as plain
data; each engine's config dataclass takes the fields it declares, by name, so a new
engine option needs a field in the reader settings and one in the config, and nothing
here. Engine modules are imported only when a reader of their kind is built (vLLM takes
seconds to import).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine_adapters.base import GenerativeEngine, PoolingEngine
from engine_adapters.models import display_name, resolve_model

Engine = GenerativeEngine | PoolingEngine
EngineKind = Literal["vllm", "sentence-transformers", "pooling", "scripted"]
# reader settings as data, the served name, the model's folder (None for kinds that load
# none), the batch-size hook -> an engine, not started
Builder = Callable[[Mapping[str, Any], str, str | None, Callable[[int], None] | None], Engine]

# Reader fields whose name differs from the engine config's
_RENAMED = {"max_batch_wait_ms": "max_wait_ms", "effective_task": "task"}


def config_of(cls: type[Any], reader: Mapping[str, Any], **fixed: Any) -> Any:
    """An engine config dataclass filled from the reader fields it declares."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = {_RENAMED.get(k, k): v for k, v in reader.items()}
    data = {k: v for k, v in data.items() if k in names and v is not None and k not in fixed}
    return cls(**data, **fixed)


def _scripted(reader: Mapping[str, Any], served: str, _: str | None, __: Callable[[int], None] | None) -> Engine:
    from engine_adapters.scripted import ScriptedConfig, ScriptedEngine

    return ScriptedEngine(
        ScriptedConfig(**{"name": served, "truncate": reader.get("truncate", True), **reader.get("scripted", {})})
    )


def _sentence_transformers(
    reader: Mapping[str, Any], served: str, model: str | None, on_batch: Callable[[int], None] | None
) -> Engine:
    from engine_adapters.sentence_transformers_engine import SentenceTransformersConfig, SentenceTransformersEngine

    return SentenceTransformersEngine(
        config_of(SentenceTransformersConfig, reader, model=model, served_name=served, on_batch=on_batch)
    )


def _pooling(reader: Mapping[str, Any], served: str, model: str | None, _: Callable[[int], None] | None) -> Engine:
    from engine_adapters.vllm_pooling import VLLMPoolingConfig, VLLMPoolingEngine

    return VLLMPoolingEngine(config_of(VLLMPoolingConfig, reader, model=model, served_name=served))


def _vllm(reader: Mapping[str, Any], served: str, model: str | None, _: Callable[[int], None] | None) -> Engine:
    from engine_adapters.vllm_engine import VLLMEngine, VLLMEngineConfig

    return VLLMEngine(config_of(VLLMEngineConfig, reader, model=model, served_name=served))


def _configured_adapters(reader: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(reader.get("lora_adapters") or ())


def _scripted_adapters(reader: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple((reader.get("scripted") or {}).get("lora_adapters", ()))


@dataclass(frozen=True, slots=True)
class KindInfo:
    """What one kind of reader is."""

    generative: bool  # generates text; else embeds, classifies and re-ranks
    loads_model: bool  # reads a model (embedded, a folder or a hub id); "scripted" does not
    spawns_processes: bool  # its start starts worker processes (which inherit the environment)
    creatable: bool  # the management API may create it unless the settings say otherwise
    build: Builder
    adapters: Callable[[Mapping[str, Any]], tuple[str, ...]] = _configured_adapters  # LoRA names

    @property
    def default_task(self) -> Literal["generate", "embed"]:
        """The task of a reader of this kind that names none."""
        return "generate" if self.generative else "embed"


ENGINE_KINDS: dict[EngineKind, KindInfo] = {
    "vllm": KindInfo(generative=True, loads_model=True, spawns_processes=True, creatable=True, build=_vllm),
    "sentence-transformers": KindInfo(
        generative=False, loads_model=True, spawns_processes=False, creatable=True, build=_sentence_transformers
    ),
    "pooling": KindInfo(generative=False, loads_model=True, spawns_processes=True, creatable=True, build=_pooling),
    # canned text, for tests and front-end benchmarks: only test configurations allow creating it
    "scripted": KindInfo(
        generative=True,
        loads_model=False,
        spawns_processes=False,
        creatable=False,
        build=_scripted,
        adapters=_scripted_adapters,
    ),
}


def build_engine(reader: Mapping[str, Any], cache_dir: Path, on_batch: Callable[[int], None] | None = None) -> Engine:
    """Construct (not start) the engine a reader's settings ask for.

    `reader` is the reader's settings as data (`ReaderSettings.model_dump()` plus
    `effective_task`); embedded models are provisioned here (call it off the event loop).
    `on_batch` hears the size of every dynamic batch (engines that batch themselves).
    """
    kind = ENGINE_KINDS.get(reader["kind"])
    if kind is None:
        raise ValueError(f"unknown engine kind {reader['kind']!r}")
    model = resolve_model(reader["model"], cache_dir) if kind.loads_model else None
    return kind.build(reader, served_name(reader), model, on_batch)


def served_name(reader: Mapping[str, Any]) -> str:
    """The name answers and model lists give a reader's model: the first of its
    `served_model_names`, else the model's short name."""
    names = reader.get("served_model_names") or ()
    return str(names[0]) if names else display_name(reader["model"])
