"""vLLM's own server paths, in vLLM's bodies: `/tokenize`, `/detokenize`, `/score`,
`/v1/score`, `/pooling`, `/v2/rerank` and `/invocations` (`/classify` with `input` is
served by the Takeoff route of that path; `/ping` with the health probes)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.protocols.embeddings import RerankRequest
from gateway.protocols.vllm import DetokenizeRequest, PoolingRequest, ScoreRequest, TokenizeRequest
from gateway.serving import embeddings, vllm_api

router = APIRouter(tags=["vllm"])


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    """Token ids of a prompt, or of chat messages rendered with the chat template."""
    return await vllm_api.tokenize(request, body)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    """The text of token ids."""
    return await vllm_api.detokenize(request, body)


@router.post("/score", response_model=None)
@router.post("/v1/score", response_model=None)
async def score(body: ScoreRequest, request: Request) -> Response:
    """A relevance score per text pair (default group "embed" or a re-ranker's)."""
    return await vllm_api.score(request, body)


@router.post("/pooling", response_model=None)
async def pooling(body: PoolingRequest, request: Request) -> Response:
    """The pooled output of each input (embeddings, or a classifier's probabilities)."""
    return await vllm_api.pooling(request, body)


@router.post("/v2/rerank", response_model=None)
async def rerank_v2(body: RerankRequest, request: Request) -> Response:
    """Documents sorted by relevance to a query (as `/v1/rerank`)."""
    return await embeddings.rerank(request, body)


@router.post("/invocations", response_model=None)
async def invocations(request: Request) -> Response:
    """SageMaker's path: chat, completions, embeddings, re-ranking or scores, told by the body."""
    return await vllm_api.invocations(request)
