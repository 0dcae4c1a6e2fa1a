"""Embedding, classification and re-ranking routes: Takeoff's (`/embed`, `/classify`) and the
OpenAI-style ones (`/v1/embeddings`, `/v1/rerank` and `/rerank`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.protocols.embeddings import ClassifyRequest, EmbeddingRequest, RerankRequest, TakeoffEmbedRequest
from gateway.serving import embeddings

takeoff_router = APIRouter(tags=["embeddings"])
openai_router = APIRouter(tags=["openai"])


@takeoff_router.post("/embed", response_model=None)
async def embed(body: TakeoffEmbedRequest, request: Request) -> Response:
    """Takeoff: embed a text or a list of texts (default group "embed")."""
    return await embeddings.takeoff_embed(request, body)


@takeoff_router.post("/classify", response_model=None)
async def classify(body: ClassifyRequest, request: Request) -> Response:
    """Takeoff: label probabilities of texts or text pairs (default group "classify")."""
    return await embeddings.classify(request, body)


@openai_router.post("/rerank", response_model=None)
@openai_router.post("/v1/rerank", response_model=None)
async def rerank(body: RerankRequest, request: Request) -> Response:
    """Documents sorted by relevance to a query (Cohere/Jina/vLLM shape)."""
    return await embeddings.rerank(request, body)


@openai_router.post("/v1/embeddings", response_model=None)
async def openai_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """OpenAI embeddings; `model` names a group or a model (default group "embed")."""
    return await embeddings.openai_embeddings(request, body)
