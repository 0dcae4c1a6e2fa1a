"""What a caller may name as `model`: every consumer group its key may use, every ready
reader's model names and every LoRA adapter in those groups. The OpenAI and Anthropic model
lists render it each in their own shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from gateway.auth import principal_of
from gateway.machinery.pipeline import pipeline_of
from gateway.registry import Registry


@dataclass(frozen=True, slots=True)
class Entry:
    """One name a request may use as `model`."""

    id: str
    created: int
    root: str | None  # the model it serves (None while a group has no ready reader)
    max_model_len: int | None
    parent: str | None = None  # an adapter's base model


def entries(registry: Registry, visible: Callable[[str], bool] = lambda _: True) -> list[Entry]:
    """Entries for every consumer group `visible` allows, and every ready reader's model
    and adapters in those groups, groups first."""
    out: dict[str, Entry] = {}
    for group, readers in registry.groups().items():
        if not visible(group):
            continue
        ready = [(r, r.engine) for r in readers if r.state == "ready" and r.engine is not None]
        first = ready[0][1].info if ready else None
        created = int(ready[0][0].loaded_at or ready[0][0].started_at) if ready else int(readers[0].started_at)
        out[group] = Entry(group, created, first.name if first else None, first.max_model_len if first else None)
        for r, engine in ready:
            info = engine.info
            for adapter in r.adapters:
                out.setdefault(adapter, Entry(adapter, created, info.name, info.max_model_len, info.name))
            out.setdefault(info.name, Entry(info.name, created, info.name, info.max_model_len))
            for name in r.settings.served_model_names:  # each of vLLM's --served-model-name
                out.setdefault(name, Entry(name, created, info.name, info.max_model_len))
    return list(out.values())


def entries_for(request: Request) -> list[Entry]:
    """The entries the caller of `request` may use."""
    return entries(pipeline_of(request).registry, principal_of(request.scope).may_use)
