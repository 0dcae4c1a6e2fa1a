"""OpenAI's model list (`GET /v1/models`): every consumer group, every ready reader's
model name and every LoRA adapter, each usable as `model`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NotRequired, TypedDict

from starlette.requests import Request

from gateway.auth import principal_of
from gateway.errors import NotFound
from gateway.machinery.pipeline import pipeline_of
from gateway.registry import Registry


class ModelCard(TypedDict):
    """One entry of the model list."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str | None
    max_model_len: int | None
    parent: NotRequired[str]


class ModelList(TypedDict):
    """`GET /v1/models`."""

    object: Literal["list"]
    data: list[ModelCard]


def model_list(request: Request) -> ModelList:
    """`GET /v1/models`: what the caller's key may use."""
    caller = principal_of(request.scope)
    return {"object": "list", "data": model_cards(pipeline_of(request).registry, caller.may_use)}


def model_card(request: Request, model_id: str) -> ModelCard:
    """`GET /v1/models/{id}`: one entry of the model list."""
    for card in model_cards(pipeline_of(request).registry, principal_of(request.scope).may_use):
        if card["id"] == model_id:
            return card
    raise NotFound("the model does not exist", param="model")


def _card(name: str, created: int, root: str | None, max_len: int | None) -> ModelCard:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "llm-gateway",
        "root": root,
        "max_model_len": max_len,
    }


def model_cards(registry: Registry, visible: Callable[[str], bool] = lambda _: True) -> list[ModelCard]:
    """Entries for every consumer group `visible` allows, and every ready reader's model
    and adapters in those groups."""
    cards: dict[str, ModelCard] = {}
    for group, readers in registry.groups().items():
        if not visible(group):
            continue
        ready = [(r, r.engine) for r in readers if r.state == "ready" and r.engine is not None]
        first = ready[0][1].info if ready else None
        created = int(ready[0][0].loaded_at or ready[0][0].started_at) if ready else int(readers[0].started_at)
        cards[group] = _card(group, created, first.name if first else None, first.max_model_len if first else None)
        for r, engine in ready:
            info = engine.info
            for adapter in r.adapters:
                if adapter not in cards:
                    cards[adapter] = {**_card(adapter, created, info.name, info.max_model_len), "parent": info.name}
            cards.setdefault(info.name, _card(info.name, created, info.name, info.max_model_len))
    return list(cards.values())
