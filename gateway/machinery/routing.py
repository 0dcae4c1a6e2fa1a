"""Which reader serves a request: the one place that turns a name into a reader.

A request names a consumer group (Takeoff's `consumer_group`), or in the OpenAI APIs
a `model` that may be a group, a loaded model's name or a LoRA adapter's name; a request
that names nothing goes to the default group of its task. Inside the group the registry
balances and applies admission control.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine_adapters.base import GenerationRequest, Work
from gateway.auth import Principal
from gateway.errors import NotFound
from gateway.observability.metrics import current_observation
from gateway.registry import Reader, Registry
from gateway.settings import DEFAULT_GROUP

# Where a request that names no group goes, per task (generation: DEFAULT_GROUP, always):
# embeddings to "embed", classification to "classify" (the Takeoff client's default),
# re-ranking to the first of these that exists.
DEFAULT_GROUPS: dict[Work, tuple[str, ...]] = {
    "embed": ("embed",),
    "classify": ("classify",),
    "score": ("rerank", "classify", "embed"),
}


@dataclass(frozen=True, slots=True)
class Target:
    """What a request asks to be served by."""

    name: str | None = None
    task: Work = "generate"
    param: str = "consumer_group"  # the request field that carried `name`, for errors
    by_model: bool = False  # OpenAI's `model`: a group, a served model's name or an adapter's
    fallback: bool = False  # a name that matches nothing uses the default group (one-model services)


def _default_group(registry: Registry, task: Work, param: str) -> str:
    if task == "generate":
        return DEFAULT_GROUP  # Takeoff's rule; the registry names the groups there are if it is missing
    groups = registry.groups()
    for group in DEFAULT_GROUPS[task]:
        if any(r.can(task) for r in groups.get(group, [])):
            return group
    capable = registry.groups_for(task)
    if capable:
        return capable[0]
    raise NotFound(f"no consumer group on this server can {task}", param=param)


def group_of(
    registry: Registry, target: Target, visible: Callable[[str], bool] = lambda _: True
) -> tuple[str, str | None]:
    """The consumer group `target` names, and the LoRA adapter if the name is one. An
    unknown name is a 404 that lists only what `visible` lets the caller see (and never
    repeats the name sent)."""
    name = target.name
    if name is None:
        return _default_group(registry, target.task, target.param), None
    if name in registry.groups():
        return name, None
    if target.by_model:
        by_name = registry.model_names()
        if name in by_name:
            return by_name[name].group, None
        by_adapter = registry.adapter_names()
        if name in by_adapter:  # OpenAI's way to pick a LoRA adapter: name it as the model
            return by_adapter[name].group, name
    if target.fallback:
        return _default_group(registry, target.task, target.param), None
    if target.by_model:
        names = sorted(
            {g for g in registry.groups_for(target.task) if visible(g)}
            | {n for n, r in registry.listed_model_names().items() if visible(r.group)}
            | {a for a, r in registry.adapter_names().items() if visible(r.group)}
        )
        raise NotFound(f"the model does not exist; available: {', '.join(names) or 'none'}", param=target.param)
    return name, None  # the registry says which groups exist


def resolve(
    registry: Registry,
    target: Target,
    requests: Sequence[GenerationRequest] = (),
    admit: bool = True,
    caller: Principal | None = None,
    weight: int = 1,
) -> Reader:
    """The reader for `requests` (which may be empty: pooling work, status reads).

    Requests whose constraint names a structured-output backend go to a reader with that
    backend (vLLM runs one per engine); a LoRA adapter named as the model is set on them.
    With `admit=False` (status reads) the reader's in-flight limit does not apply.
    The `caller`'s key may refuse the group (403), and errors list only the groups it may
    use; `weight` is the request's sequences, for admission.
    """
    visible = caller.may_use if caller is not None else (lambda _: True)
    group, adapter = group_of(registry, target, visible)
    if caller is not None:
        caller.check_group(group)
    if adapter is not None:
        for r in requests:
            r.lora_id = adapter
    lora_id = next((r.lora_id for r in requests if r.lora_id is not None), None)
    backend = backend_param = None
    for r in requests:
        c = r.constraint
        if c is not None and c.backend not in (None, "auto"):
            backend, backend_param = c.backend, c.backend_param
            break
    members = registry.candidates(
        group,
        target.task,
        backend=backend,
        backend_param=backend_param,
        group_param=target.param,
        lora_id=lora_id,
        visible=visible,
        named=target.name is not None,
    )
    reader = registry.balance(group, members, admit, weight)
    if admit:
        obs = current_observation()
        if obs is not None:  # the model (or adapter) that serves it, for the usage ledger
            obs.model = lora_id or (reader.engine.info.name if reader.engine is not None else group)
            obs.requested_model = target.name or group  # what the caller named (traces)
    return reader
