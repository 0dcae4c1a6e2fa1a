"""Embedding, classification and re-ranking routes (Takeoff at the root, OpenAI-style under /v1)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.protocols.embeddings import ClassifyRequest, EmbeddingRequest, RerankRequest, TakeoffEmbedRequest
from gateway.runtime import get_runtime
from gateway.serving import embeddings
from gateway.serving.budget import make_budget
from gateway.serving.common import FastJSONResponse
from gateway.serving.streaming import run_buffered

router = APIRouter(tags=["embeddings"])
v1_router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/embed")
async def embed(body: TakeoffEmbedRequest, request: Request) -> FastJSONResponse:
    """Takeoff: embed a text or a list of texts (default group "embed")."""
    rt = get_runtime(request)
    work = embeddings.takeoff_embed(rt.registry, body.text, body.consumer_group, rt.settings)
    # a response object directly: FastAPI's jsonable_encoder would walk every float
    return FastJSONResponse(await run_buffered(rt, request, None, make_budget(request, rt.settings), work))


@router.post("/classify")
async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
    """Takeoff: label probabilities of texts or text pairs (default group "classify")."""
    rt = get_runtime(request)
    work = embeddings.classify(rt.registry, body, rt.settings)
    return await run_buffered(rt, request, None, make_budget(request, rt.settings), work)


@router.post("/rerank")
@v1_router.post("/rerank")
async def rerank(body: RerankRequest, request: Request) -> dict[str, Any]:
    """Documents sorted by relevance to a query (Cohere/Jina/vLLM shape)."""
    rt = get_runtime(request)
    work = embeddings.rerank(rt.registry, body, rt.settings)
    return await run_buffered(rt, request, None, make_budget(request, rt.settings), work)


@v1_router.post("/embeddings")
async def openai_embeddings(body: EmbeddingRequest, request: Request) -> FastJSONResponse:
    """OpenAI embeddings; `model` names a group or a model (default group "embed")."""
    rt = get_runtime(request)
    work = embeddings.openai_embeddings(rt.registry, body, rt.settings)
    return FastJSONResponse(await run_buffered(rt, request, None, make_budget(request, rt.settings), work))
