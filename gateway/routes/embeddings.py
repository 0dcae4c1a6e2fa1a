"""Embedding, classification and re-ranking routes: Takeoff's (`/embed`, `/classify`, which
takes vLLM's body too) and the OpenAI-style ones (`/v1/embeddings`, `/v1/rerank` and
`/rerank`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import Discriminator, Tag
from starlette.responses import Response

from gateway.protocols.embeddings import ClassifyRequest, EmbeddingRequest, RerankRequest, TakeoffEmbedRequest
from gateway.protocols.vllm import ClassifyRequest as VllmClassifyRequest
from gateway.serving import embeddings, vllm_api


def _classify_body(value: Any) -> str:
    # tags with "=" stay out of the field names of error messages (gateway.errors)
    return "body=vllm" if isinstance(value, dict) and "input" in value and "text" not in value else "body=takeoff"


AnyClassifyRequest = Annotated[
    Annotated[ClassifyRequest, Tag("body=takeoff")] | Annotated[VllmClassifyRequest, Tag("body=vllm")],
    Discriminator(_classify_body),
]

takeoff_router = APIRouter(tags=["embeddings"])
openai_router = APIRouter(tags=["openai"])


@takeoff_router.post("/embed", response_model=None)
async def embed(body: TakeoffEmbedRequest, request: Request) -> Response:
    """Takeoff: embed a text or a list of texts (default group "embed")."""
    return await embeddings.takeoff_embed(request, body)


@takeoff_router.post("/classify", response_model=None)
async def classify(body: AnyClassifyRequest, request: Request) -> Response:
    """Label probabilities of texts or text pairs (default group "classify"): Takeoff's
    body (`text`) and answer, or vLLM's (`input`)."""
    if isinstance(body, VllmClassifyRequest):
        return await vllm_api.classify(request, body)
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
