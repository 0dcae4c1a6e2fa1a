"""Embeddings, classification and re-ranking onto pooling engines, and back to each wire format."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import BadRequest
from gateway.machinery.bodies import FastJSONResponse
from gateway.machinery.pipeline import pipeline_of
from gateway.machinery.routing import Target
from gateway.observability.metrics import current_observation
from gateway.protocols.embeddings import ClassifyRequest, EmbeddingRequest, RerankRequest, TakeoffEmbedRequest
from gateway.registry import Reader


def note_tokens(n: int) -> None:
    """Count `n` input tokens on the request's metrics."""
    obs = current_observation()
    if obs is not None:
        obs.accepted(n)


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


async def openai_embeddings(request: Request, body: EmbeddingRequest, target: Target | None = None) -> Response:
    """OpenAI's embeddings answer; `model` names a group or a loaded model."""
    inputs: list[Any]
    if isinstance(body.input, str):
        inputs = [body.input]
    elif isinstance(body.input[0], int):
        inputs = [body.input]
    else:
        inputs = list(body.input)

    async def work(reader: Reader) -> Response:
        engine = reader.pooling()
        result = await engine.embed(inputs)
        tokens = sum(result.token_counts)
        note_tokens(tokens)
        vectors = fit_dimensions(result.vectors, body.dimensions, reader).astype("<f4", copy=False)
        # a response object directly: FastAPI's jsonable_encoder would walk every float
        return FastJSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": _encode(v, body.encoding_format), "index": i}
                    for i, v in enumerate(vectors)
                ],
                "model": body.model or engine.info.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    target = target or Target(body.model, task="embed", param="model", by_model=True)
    return await pipeline_of(request).pool(request, target, len(inputs), "input", work)


async def takeoff_embed(request: Request, body: TakeoffEmbedRequest) -> Response:
    """Takeoff's `/embed` answer: `{"result": vector}` or `{"result": [vector, ...]}`."""
    text = body.text
    texts = [text] if isinstance(text, str) else list(text)

    async def work(reader: Reader) -> Response:
        result = await reader.pooling().embed(list(texts))
        note_tokens(sum(result.token_counts))
        return FastJSONResponse({"result": result.vectors[0] if isinstance(text, str) else result.vectors})

    target = Target(body.consumer_group, task="embed", by_model=True)
    return await pipeline_of(request).pool(request, target, len(texts), "text", work)


async def classify(request: Request, body: ClassifyRequest) -> Response:
    """Takeoff's `/classify` answer: per input, the probability of every label."""
    single = isinstance(body.text, str)
    raw = [body.text] if isinstance(body.text, str) else body.text
    inputs: list[str | tuple[str, str]] = [x if isinstance(x, str) else (x[0], x[1]) for x in raw]

    async def work(reader: Reader) -> Response:
        result = await reader.pooling().classify(inputs)
        note_tokens(sum(result.token_counts))
        rows = [
            [{"label": label, "score": float(p)} for label, p in zip(result.labels, probs, strict=True)]
            for probs in result.probabilities
        ]
        return FastJSONResponse({"result": rows[0] if single else rows})

    target = Target(body.consumer_group, task="classify", by_model=True)
    return await pipeline_of(request).pool(request, target, len(inputs), "text", work)


async def rerank(request: Request, body: RerankRequest) -> Response:
    """Documents sorted by relevance to the query, with their original indices."""
    docs = [d if isinstance(d, str) else d.text for d in body.documents]

    async def work(reader: Reader) -> Response:
        engine = reader.pooling()
        scores, tokens = await engine.score(body.query, docs)
        note_tokens(tokens)
        order = sorted(range(len(docs)), key=lambda i: -scores[i])
        if body.top_n is not None:
            order = order[: body.top_n]
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if body.return_documents:
                item["document"] = {"text": docs[i]}
            results.append(item)
        return FastJSONResponse(
            {
                "id": f"rerank-{uuid.uuid4().hex}",
                "model": body.model or engine.info.name,
                "results": results,
                "usage": {"total_tokens": tokens},
            }
        )

    target = Target(body.model, task="score", param="model", by_model=True)
    return await pipeline_of(request).pool(request, target, len(docs), "documents", work)
