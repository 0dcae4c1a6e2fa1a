"""OpenAI-compatible routes, served under `/v1` on the main port and on the OpenAI port."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.machinery.bodies import FastJSONResponse
from gateway.protocols.openai import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from gateway.protocols.responses import ResponsesRequest
from gateway.serving import anthropic
from gateway.serving.openai import chat, models, responses
from gateway.serving.openai import completions as text_completions

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion, whole or streamed (`stream: true`)."""
    return await chat.chat(request, body)


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Text completion for one prompt or several, whole or streamed."""
    return await text_completions.completions(request, body)


@router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> Any:
    """Every consumer group and every loaded model's name (both work as `model`); in
    Anthropic's shape for a client that sends `anthropic-version`."""
    if "anthropic-version" in request.headers:
        return FastJSONResponse(anthropic.model_list(request))
    return models.model_list(request)


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> Any:
    """One entry of the model list (in Anthropic's shape for Anthropic's clients)."""
    if "anthropic-version" in request.headers:
        return FastJSONResponse(anthropic.model_card(request, model_id))
    return models.model_card(request, model_id)


@router.post("/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    """OpenAI Responses API: a response, whole, streamed or in the background."""
    return await responses.create(request, body)


@router.get("/responses/{response_id}", response_model=None)
async def get_response(response_id: str, request: Request) -> Response:
    """A stored response (a background one's current state)."""
    return await responses.retrieve(request, response_id)


@router.delete("/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, request: Request) -> Response:
    """Forget a stored response."""
    return await responses.delete(request, response_id)


@router.post("/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: str, request: Request) -> Response:
    """Stop a background response; its engine request is aborted."""
    return await responses.cancel(request, response_id)


@router.get("/responses/{response_id}/input_items", response_model=None)
async def list_input_items(
    response_id: str,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    before: str | None = None,
) -> Response:
    """The input items of a stored response, paginated as OpenAI lists them."""
    return await responses.input_items(request, response_id, limit, order, after, before)
