"""Embeddings, classification and re-ranking onto pooling engines, and back to each wire format."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import numpy as np

from engine_adapters.base import PoolingEngine
from gateway.errors import BadRequest, NotFound
from gateway.observability.metrics import current as observation
from gateway.protocols.embeddings import ClassifyRequest, EmbeddingRequest, RerankRequest
from gateway.registry import Reader, Registry
from gateway.settings import Settings

# Where a request that names no group goes: embeddings to "embed", classification to
# "classify" (the Takeoff client's default), re-ranking to the first of these that exists.
DEFAULT_GROUPS = {"embed": ("embed",), "classify": ("classify",), "score": ("rerank", "classify", "embed")}


def resolve(registry: Registry, task: str, name: str | None, param: str, lenient: bool = False) -> Reader:
    """The reader for `task` in the group (or loaded model) `name`, or the default group.

    With `lenient` (seed 003's service), a name that is no group or model falls back to
    the default group, since that service fronts one model of each kind.
    """
    if name is not None:
        groups = registry.groups()
        if name in groups:
            return registry.pick(name, task=task, group_param=param)
        for r in registry.readers.values():
            if r.state == "ready" and r.engine is not None and r.engine.info.name == name:
                return registry.pick(r.group, task=task, group_param=param)
        if not lenient:
            able = ", ".join(registry.groups_for(task)) or "none"
            raise NotFound(f"the model {name!r} does not exist; groups that can {task}: {able}", param=param)
    for group in DEFAULT_GROUPS[task]:
        if any(r.can(task) for r in registry.groups().get(group, [])):
            return registry.pick(group, task=task, group_param=param)
    capable = registry.groups_for(task)
    if capable:
        return registry.pick(capable[0], task=task, group_param=param)
    raise NotFound(f"no consumer group on this server can {task}", param=param)


def pooling_engine(reader: Reader) -> PoolingEngine:
    """The reader's pooling engine (ready, by `Registry.pick`)."""
    engine: PoolingEngine = reader.engine
    return engine


def _note_tokens(n: int) -> None:
    obs = observation()
    if obs is not None:
        obs.accepted(n)


def check_batch(n: int, settings: Settings, param: str) -> None:
    """Bound the number of inputs of one request."""
    if n > settings.max_user_batch_size:
        raise BadRequest(f"at most {settings.max_user_batch_size} inputs are allowed per request", param=param)


def fit_dimensions(vectors: np.ndarray, dimensions: int | None, reader: Reader) -> np.ndarray:
    """Truncate to `dimensions` and re-normalise (Matryoshka style), if the reader allows it."""
    if dimensions is None:
        return vectors
    full = vectors.shape[1]
    if not reader.settings.allow_dimensions:
        raise BadRequest(f"the model of group {reader.group!r} does not support dimensions", param="dimensions")
    if dimensions > full:
        raise BadRequest(f"dimensions must be at most {full} for this model", param="dimensions")
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)


def _encode(vector: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":
        # OpenAI's format: little-endian float32 bytes, base64
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
    return vector  # serialized by FastJSONResponse (orjson)


async def openai_embeddings(
    registry: Registry, body: EmbeddingRequest, settings: Settings, lenient: bool = False
) -> dict[str, Any]:
    """OpenAI's embeddings answer."""
    inputs: list[Any]
    if isinstance(body.input, str):
        inputs = [body.input]
    elif isinstance(body.input[0], int):
        inputs = [body.input]
    else:
        inputs = list(body.input)
    check_batch(len(inputs), settings, "input")
    reader = resolve(registry, "embed", body.model, "model", lenient)
    with reader.track():
        result = await pooling_engine(reader).embed(inputs)
    _note_tokens(sum(result.token_counts))
    vectors = fit_dimensions(result.vectors, body.dimensions, reader).astype("<f4", copy=False)
    tokens = sum(result.token_counts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": _encode(v, body.encoding_format), "index": i}
            for i, v in enumerate(vectors)
        ],
        "model": body.model or reader.engine.info.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def takeoff_embed(
    registry: Registry, text: str | list[str], group: str | None, settings: Settings
) -> dict[str, Any]:
    """Takeoff's `/embed` answer: `{"result": vector}` or `{"result": [vector, ...]}`."""
    texts = [text] if isinstance(text, str) else text
    check_batch(len(texts), settings, "text")
    reader = resolve(registry, "embed", group, "consumer_group")
    with reader.track():
        result = await pooling_engine(reader).embed(list(texts))
    _note_tokens(sum(result.token_counts))
    return {"result": result.vectors[0] if isinstance(text, str) else result.vectors}


async def classify(registry: Registry, body: ClassifyRequest, settings: Settings) -> dict[str, Any]:
    """Takeoff's `/classify` answer: per input, the probability of every label."""
    single = isinstance(body.text, str)
    raw = [body.text] if isinstance(body.text, str) else body.text
    check_batch(len(raw), settings, "text")
    inputs: list[str | tuple[str, str]] = [x if isinstance(x, str) else (x[0], x[1]) for x in raw]
    reader = resolve(registry, "classify", body.consumer_group, "consumer_group")
    with reader.track():
        result = await pooling_engine(reader).classify(inputs)
    _note_tokens(sum(result.token_counts))
    rows = [
        [{"label": label, "score": float(p)} for label, p in zip(result.labels, probs, strict=True)]
        for probs in result.probabilities
    ]
    return {"result": rows[0] if single else rows}


async def rerank(registry: Registry, body: RerankRequest, settings: Settings) -> dict[str, Any]:
    """Documents sorted by relevance to the query, with their original indices."""
    docs = [d if isinstance(d, str) else d.text for d in body.documents]
    check_batch(len(docs), settings, "documents")
    reader = resolve(registry, "score", body.model, "model")
    with reader.track():
        scores, tokens = await pooling_engine(reader).score(body.query, docs)
    _note_tokens(tokens)
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    if body.top_n is not None:
        order = order[: body.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if body.return_documents:
            item["document"] = {"text": docs[i]}
        results.append(item)
    return {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": body.model or reader.engine.info.name,
        "results": results,
        "usage": {"total_tokens": tokens},
    }
