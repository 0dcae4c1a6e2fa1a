"""OpenAI text completions (`POST /v1/completions`) onto neutral requests, and back."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import GenerationRequest, GenerativeEngine
from gateway.errors import BadRequest
from gateway.machinery.bodies import FastJSONResponse
from gateway.machinery.engine_streams import Completion, Tagged, budget_cut, merge, new_request_id
from gateway.machinery.pipeline import Generation, pipeline_of
from gateway.machinery.routing import Target
from gateway.protocols.openai import UNSUPPORTED_COMPLETION, CompletionRequest
from gateway.serving.openai.common import (
    DONE,
    budget_note,
    completion_logprobs,
    error_event,
    fields_of,
    format_constraint,
    json_str,
    refuse_unsupported,
    sampling_of,
    sse,
    usage_of,
)
from gateway.settings import Settings

# --------------------------------------------------------------------------- serving


async def completions(request: Request, body: CompletionRequest) -> Response:
    """Serve a text completion of one prompt or several, whole or streamed."""
    pipeline = pipeline_of(request)
    requests = completion_to_neutral(body, pipeline.settings)

    async def answer(engine: GenerativeEngine, completions: list[Completion]) -> Response:
        return FastJSONResponse(await completion_response(engine, body, requests, completions))

    generation = Generation(
        requests=requests,
        answer=answer,
        events=lambda engine, streams: completion_stream(engine, body, requests, streams),
        stream=body.stream,
        target=Target(body.model, param="model", by_model=True),
        timeout=body.timeout,
        priority=body.priority,
        fields=fields_of(body, "prompt"),
    )
    return await pipeline.generate(request, generation)


# --------------------------------------------------------------------------- requests


def prompts_of(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The prompts of `prompt`: a text, texts, one prompt's token ids or several prompts'."""
    if isinstance(prompt, str):
        return [prompt]
    out: list[str | list[int]] = []
    ids: list[int] = []
    for item in prompt:
        if isinstance(item, int):
            ids.append(item)
        else:
            out.append(item)
    return [ids] if ids else out


def completion_to_neutral(req: CompletionRequest, settings: Settings) -> list[GenerationRequest]:
    """One neutral request per prompt of a text completion."""
    refuse_unsupported(req.model_extra, UNSUPPORTED_COMPLETION)
    if req.best_of is not None and req.best_of != req.n:
        raise BadRequest("best_of is not supported (only best_of equal to n)", param="best_of")
    prompts = prompts_of(req.prompt)
    sampling = sampling_of(req, settings, req.max_tokens, req.logprobs)
    if req.echo and req.logprobs is not None:
        # echo with logprobs scores the prompt too (OpenAI's legacy completions behaviour)
        if not settings.allow_prompt_logprobs:
            raise BadRequest(
                "echo with logprobs scores every prompt token, which this server does not do "
                "(allow_prompt_logprobs); send one or the other",
                param="logprobs",
            )
        sampling.prompt_logprobs = req.logprobs
        sampling.prompt_logprobs_limit = settings.max_prompt_logprobs_tokens
    constraint = format_constraint(req.response_format, req.structured_outputs)
    out = []
    for prompt in prompts:
        out.append(
            GenerationRequest(
                request_id=new_request_id("cmpl"),
                prompt=prompt if isinstance(prompt, str) else None,
                prompt_token_ids=prompt if isinstance(prompt, list) else None,
                sampling=sampling,
                constraint=constraint,
                stream=req.stream,
                cache_salt=req.cache_salt,
            )
        )
    return out


# --------------------------------------------------------------------------- responses


async def _echo_logprobs(engine: GenerativeEngine, c: Completion, k: int, as_ids: bool) -> dict[str, Any]:
    first_id = list(c.prompt_token_ids[:1])
    first = await engine.detokenize(first_id, skip_special_tokens=False)
    if as_ids and first_id:
        first = f"token_id:{first_id[0]}"
    return completion_logprobs(c.prompt_logprobs or [], k, 0, first, as_ids)


async def completion_response(
    engine: GenerativeEngine, req: CompletionRequest, requests: list[GenerationRequest], completions: list[Completion]
) -> dict[str, Any]:
    """A whole `text_completion` object for every prompt (choices prompt-major, then n)."""
    choices = []
    for p, c in enumerate(completions):
        prefix = await _echo_text(engine, requests[p], c.prompt_token_ids) if req.echo else ""
        as_ids = req.return_tokens_as_token_ids
        echo_lps = None
        if req.echo and req.logprobs is not None:
            echo_lps = await _echo_logprobs(engine, c, req.logprobs, as_ids)
        for i, text in enumerate(c.texts):
            lps = None
            if req.logprobs is not None:
                lps = completion_logprobs(c.logprobs[i], req.logprobs, len(prefix), as_ids=as_ids)
                if echo_lps is not None:
                    lps = {key: echo_lps[key] + lps[key] for key in lps}
            choices.append(
                {
                    "index": p * req.n + i,
                    "text": prefix + text,
                    "logprobs": lps,
                    "finish_reason": c.finish_reasons[i],
                }
            )
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": choices,
        "usage": usage_of(completions),
        **budget_note(),
    }


async def _echo_text(engine: GenerativeEngine, request: GenerationRequest, prompt_ids: Sequence[int]) -> str:
    if request.prompt is not None:
        return request.prompt
    return await engine.detokenize(list(prompt_ids), skip_special_tokens=False)


# --------------------------------------------------------------------------- streaming


async def completion_stream(
    engine: GenerativeEngine,
    req: CompletionRequest,
    requests: list[GenerationRequest],
    streams: list[Tagged],
) -> AsyncIterator[bytes]:
    """`text_completion` chunks for every prompt, then usage (if asked for) and `[DONE]`."""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    usage_tail = ',"usage":null' if include_usage else ""
    head = json.dumps(
        {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": req.model}
    )[:-1]
    n = req.n
    k = req.logprobs
    prompt_tokens = [0] * len(streams)
    echoed = [False] * len(streams)
    tokens = 0
    offsets: dict[int, int] = {}
    try:
        async for p, out in merge(streams):
            prompt_tokens[p] = len(out.prompt_token_ids)
            # The echo goes first; with logprobs it waits for the output that carries the
            # prompt's logprobs (vLLM sends them with the first generated token).
            if req.echo and not echoed[p] and (k is None or out.prompt_logprobs is not None or out.deltas):
                echoed[p] = True
                text = await _echo_text(engine, requests[p], out.prompt_token_ids)
                echo_lp = "null"
                if k is not None:
                    first = Completion()
                    first.add(out)
                    echo_lp = json.dumps(await _echo_logprobs(engine, first, k, req.return_tokens_as_token_ids))
                for i in range(n):
                    offsets[p * n + i] = len(text)
                    yield sse(
                        f'{head},"choices":[{{"index":{p * n + i},"text":{json.dumps(text)},'
                        f'"logprobs":{echo_lp},"finish_reason":null}}]{usage_tail}}}'
                    )
            for d in out.deltas:
                tokens += len(d.token_ids)
                if not d.text and d.finish_reason is None:
                    continue
                index = p * n + d.index
                lp = "null"
                if k is not None:
                    start = offsets.get(index, 0)
                    lp = json.dumps(
                        completion_logprobs(d.logprobs or [], k, start, as_ids=req.return_tokens_as_token_ids)
                    )
                    offsets[index] = start + len(d.text)
                fin = json.dumps(d.finish_reason) if d.finish_reason is not None else "null"
                yield sse(
                    f'{head},"choices":[{{"index":{index},"text":{json_str(d.text)},"logprobs":{lp},"finish_reason":{fin}}}]{usage_tail}}}'
                )
        if budget_cut() is not None:  # the sequences ended with "length": say why (usage stays last)
            yield sse(f'{head},"choices":[],"budget_exhausted":true{usage_tail}}}')
        if include_usage:
            total_prompt = sum(prompt_tokens)
            usage = {"prompt_tokens": total_prompt, "completion_tokens": tokens, "total_tokens": total_prompt + tokens}
            yield sse(f'{head},"choices":[],"usage":{json.dumps(usage)}}}')
    except Exception as exc:  # after the 200 the only way to report is an error event
        yield error_event(exc)
    yield DONE
