"""OpenAI's model list (`GET /v1/models`): the names a caller may use as `model`
(gateway/serving/catalog.py), in OpenAI's shape."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from starlette.requests import Request

from gateway.errors import NotFound
from gateway.serving.catalog import Entry, entries_for


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
    return {"object": "list", "data": [card_of(e) for e in entries_for(request)]}


def model_card(request: Request, model_id: str) -> ModelCard:
    """`GET /v1/models/{id}`: one entry of the model list."""
    for e in entries_for(request):
        if e.id == model_id:
            return card_of(e)
    raise NotFound("the model does not exist", param="model")


def card_of(e: Entry) -> ModelCard:
    """One entry in OpenAI's shape."""
    card: ModelCard = {
        "id": e.id,
        "object": "model",
        "created": e.created,
        "owned_by": "llm-gateway",
        "root": e.root,
        "max_model_len": e.max_model_len,
    }
    if e.parent is not None:
        card["parent"] = e.parent
    return card
