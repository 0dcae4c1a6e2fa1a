"""generate-one / generate-batch routes (seed 004)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from gateway.errors import BadRequest
from gateway.protocols.generate_api import BatchResult, GenerateBatchRequest, GenerateOneRequest
from gateway.runtime import get_runtime
from gateway.serving import generate_api as g
from gateway.serving.budget import make_budget, priority_of
from gateway.serving.common import FastJSONResponse, collect, collect_many, engine_of, pick_reader, set_priority
from gateway.serving.streaming import ManagedStreamingResponse, open_managed, run_buffered

router = APIRouter(prefix="/api", tags=["generate-api"])


@router.post("/generate-one", response_class=PlainTextResponse)
async def generate_one(body: GenerateOneRequest, request: Request) -> Any:
    """Generate (or continue) one text; streamed as plain text unless `stream_response` is false."""
    rt = get_runtime(request)
    g.check_request_id(body.request_id, "request_id", rt.settings)
    sampling = g.sampling_of(body.generation_config, rt.settings)
    constraint = g.constraint_of(body.generation_config)
    budget = make_budget(request, rt.settings, body.timeout)
    job = await g.make_job(rt.continuation, g.one_key(body.request_id), body.prompt, sampling, constraint, "prompt")
    set_priority([job.request], priority_of(request, body.priority))
    reader = pick_reader(rt.registry, "primary", [job.request])
    engine = engine_of(reader)
    if body.stream_response:
        (stream,), close = await open_managed(rt, reader, [job.request], budget)
        content = g.stream_text(engine, rt.continuation, job, stream, body.only_new_tokens)
        return ManagedStreamingResponse(content, on_close=close, media_type="text/plain; charset=utf-8")

    async def run() -> str:
        c = await collect(engine, job.request)
        await g.remember(rt.continuation, job, c, engine.info.eos_token_id)
        new = c.texts[0] if c.texts else ""
        return new if body.only_new_tokens else await g.prompt_text(engine, c) + new

    return PlainTextResponse(await run_buffered(rt, request, reader, budget, run()))


@router.post("/generate-batch", response_model=list[BatchResult], response_model_exclude_none=True)
async def generate_batch(body: GenerateBatchRequest, request: Request) -> Any:
    """Generate (or continue) every prompt at once; answers keep the request's order."""
    rt = get_runtime(request)
    ids = [p.request_id for p in body.prompts]
    if len(ids) > rt.settings.max_user_batch_size:
        raise BadRequest(f"at most {rt.settings.max_user_batch_size} prompts are allowed per request", param="prompts")
    seen: set[str] = set()
    for i, rid in enumerate(ids):
        g.check_request_id(rid, f"prompts[{i}].request_id", rt.settings)
        if rid in seen:
            raise BadRequest(f"prompts[{i}].request_id repeats an earlier one", param=f"prompts[{i}].request_id")
        seen.add(rid)
    sampling = g.sampling_of(body.generation_config, rt.settings)
    constraint = g.constraint_of(body.generation_config)
    keys = g.batch_keys(ids)
    jobs = [
        await g.make_job(rt.continuation, key, p.prompt, sampling, constraint, f"prompts[{i}].prompt")
        for i, (key, p) in enumerate(zip(keys, body.prompts, strict=True))
    ]
    budget = make_budget(request, rt.settings, body.timeout)
    set_priority([j.request for j in jobs], priority_of(request, body.priority))
    reader = pick_reader(rt.registry, "primary", [j.request for j in jobs])
    engine = engine_of(reader)

    async def run() -> list[dict[str, Any]]:
        completions = await collect_many(engine, [j.request for j in jobs])
        await asyncio.gather(
            *(
                g.remember(rt.continuation, j, c, engine.info.eos_token_id)
                for j, c in zip(jobs, completions, strict=True)
            )
        )
        out = []
        for rid, c in zip(ids, completions, strict=True):
            item: dict[str, Any] = {"request_id": rid, "response": c.texts[0] if c.texts else ""}
            if not body.only_new_tokens:
                item["prompt"] = await g.prompt_text(engine, c)
            out.append(item)
        return out

    return FastJSONResponse(await run_buffered(rt, request, reader, budget, run()))
