"""OpenAI's Responses API on the one pipeline, stateful on the continuation store: the
routes' entry points. A request becomes a turn (`responses_turn`), its answer a response
object (`responses_objects`) or an event stream (`responses_stream`); stored responses
live in `responses_store`.

With `store` (the default) the finished response is kept, under a key scoped to the
caller's tenant, so that `GET` reads it and `previous_response_id` continues it.
`background: true` runs the generation detached from the HTTP request; `GET` reads its
state and `POST .../cancel` aborts it in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import GenerativeEngine
from gateway.auth import principal_of
from gateway.errors import BadRequest, Conflict, NotFound, classify
from gateway.machinery.bodies import FastJSONResponse
from gateway.machinery.engine_streams import Completion
from gateway.machinery.pipeline import Generation, Pipeline, pipeline_of
from gateway.machinery.routing import Target
from gateway.protocols.responses import ResponsesRequest
from gateway.serving.openai.responses_objects import finish, response_object
from gateway.serving.openai.responses_store import forget, load_record, record_key, response_key, save
from gateway.serving.openai.responses_stream import response_stream
from gateway.serving.openai.responses_turn import FIELDS, Turn, continue_turn, plan_turn


async def create(request: Request, body: ResponsesRequest) -> Response:
    """`POST /v1/responses`: whole, streamed, or in the background."""
    pipeline = pipeline_of(request)
    store = pipeline.store
    turn = plan_turn(body, pipeline.settings, principal_of(request.scope).tenant)

    async def prepare(engine: GenerativeEngine) -> None:
        if turn.prior_key is not None:
            await continue_turn(store, engine, turn)

    async def answer(engine: GenerativeEngine, completions: list[Completion]) -> Response:
        return FastJSONResponse(await finish(store, engine, turn, completions[0]))

    generation = Generation(
        requests=[turn.request],
        answer=answer,
        events=lambda engine, streams: response_stream(store, engine, turn, streams),
        stream=body.stream,
        target=Target(body.model, param="model", by_model=True),
        timeout=body.timeout,
        priority=body.priority,
        fields=FIELDS,
        prepare=prepare,
        detach=(lambda task: _detach(pipeline, turn, task)) if body.background else None,
    )
    if not body.background:
        return await pipeline.generate(request, generation)
    queued = response_object(turn, "in_progress", [])
    await save(store, turn.key, turn.tenant, queued, turn.input_items, None)
    try:
        return await pipeline.generate(request, generation)
    except BaseException:
        with contextlib.suppress(Exception):
            await store.delete(record_key(turn.key))
        raise


def _detach(pipeline: Pipeline, turn: Turn, task: asyncio.Task[Response]) -> Response:
    pipeline.detached[turn.key] = task

    def settled(t: asyncio.Task[Response]) -> None:
        pipeline.detached.pop(turn.key, None)
        if t.cancelled():
            return  # the cancel request records the cancellation
        exc = t.exception()
        if exc is not None:
            info = classify(exc)
            failed = response_object(turn, "failed", [], error={"code": info.type, "message": info.message})
            pipeline.spawn(save(pipeline.store, turn.key, turn.tenant, failed, turn.input_items, None))

    task.add_done_callback(settled)
    return FastJSONResponse(response_object(turn, "in_progress", []))


async def _stored(request: Request, response_id: str) -> tuple[Pipeline, str, dict[str, Any]]:
    pipeline = pipeline_of(request)
    key = response_key(pipeline.settings, principal_of(request.scope).tenant, response_id)
    record = await load_record(pipeline.store, key)
    if record is None:
        raise NotFound("no stored response with this id (unknown, expired, deleted or not stored)", param="response_id")
    return pipeline, key, record


async def retrieve(request: Request, response_id: str) -> Response:
    """`GET /v1/responses/{id}`: a stored response, or a background one's current state."""
    _, _, record = await _stored(request, response_id)
    return FastJSONResponse(record["response"])


async def delete(request: Request, response_id: str) -> Response:
    """`DELETE /v1/responses/{id}`: forget a stored response (and cancel it if running here)."""
    pipeline, key, _ = await _stored(request, response_id)
    task = pipeline.detached.get(key)
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    await forget(pipeline.store, key)
    return FastJSONResponse({"id": response_id, "object": "response", "deleted": True})


async def cancel(request: Request, response_id: str) -> Response:
    """`POST /v1/responses/{id}/cancel`: stop a background response (the engine request
    is aborted); a finished one is answered as it is."""
    pipeline, key, record = await _stored(request, response_id)
    response = record["response"]
    if not response.get("background"):
        raise BadRequest("only background responses can be cancelled", param="response_id")
    task = pipeline.detached.get(key)
    if task is None:
        if response["status"] in ("queued", "in_progress"):
            raise Conflict("the response is running on another replica; cancel it there", param="response_id")
        return FastJSONResponse(response)
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    response = {**response, "status": "cancelled"}
    await save(pipeline.store, key, principal_of(request.scope).tenant, response, record["input_items"], None)
    return FastJSONResponse(response)


async def input_items(
    request: Request, response_id: str, limit: int, order: str, after: str | None, before: str | None
) -> Response:
    """`GET /v1/responses/{id}/input_items`: the input of that response, paginated."""
    _, _, record = await _stored(request, response_id)
    items: list[dict[str, Any]] = record["input_items"]
    if order == "desc":
        items = items[::-1]
    ids = [i["id"] for i in items]
    for cursor, name in ((after, "after"), (before, "before")):
        if cursor is not None and cursor not in ids:
            raise BadRequest(f"{name} is not an item of this response", param=name)
    if after is not None:
        items = items[ids.index(after) + 1 :]
        ids = ids[ids.index(after) + 1 :]
    if before is not None:
        items = items[: ids.index(before)]
    page = items[:limit]
    return FastJSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
