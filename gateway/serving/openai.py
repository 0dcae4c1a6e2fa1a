"""OpenAI surface: text completions and the models list onto neutral requests, and back;
the sampling, constraint and logprobs translation chat shares (chat in openai_chat.py).

Streaming chunks are assembled from pre-rendered JSON prefixes with only the text
`json.dumps`-ed per token: the per-token path is the hot path of the gateway.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import (
    Constraint,
    GenerationRequest,
    GenerativeEngine,
    SamplingOptions,
    TokenLogprob,
)
from gateway.errors import BadRequest, NotFound, classify, openai_body
from gateway.protocols.openai import (
    UNSUPPORTED_COMPLETION,
    CompletionRequest,
    JSONObjectFormat,
    JSONSchemaResponseFormat,
    ResponseFormat,
    StructuredOutputs,
    _SamplingFields,
)
from gateway.registry import Registry
from gateway.serving.common import Completion, FastJSONResponse, Tagged, backend_name, merge, new_request_id
from gateway.serving.limits import Fields
from gateway.serving.pipeline import Generation, pipeline_of
from gateway.serving.routing import Target
from gateway.settings import Settings

# "As many as fit": fit_prompt clamps this to the room left in the model's context,
# which is what OpenAI and vLLM do when max_tokens is not given.
UNLIMITED = 1 << 30

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


def fields_of(body: _SamplingFields, prompts: str) -> Fields:
    max_name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
    return Fields(prompts=prompts, max_new_tokens=max_name, min_new_tokens="min_tokens", stop="stop", n="n")


# --------------------------------------------------------------------------- requests


def refuse_unsupported(req: _SamplingFields, names: Sequence[str]) -> None:
    extra = req.model_extra or {}
    for name in names:
        if extra.get(name) not in (None, [], "none", False):
            raise BadRequest(f"{name} is not supported by this server", param=name)


def constraint_of(fmt: ResponseFormat | None, so: StructuredOutputs | None) -> Constraint | None:
    if fmt is not None and fmt.type != "text" and so is not None:
        raise BadRequest("send either response_format or structured_outputs, not both", param="structured_outputs")
    if isinstance(fmt, JSONObjectFormat):
        return Constraint(kind="json_object", value=True, param="response_format")
    if isinstance(fmt, JSONSchemaResponseFormat):
        return Constraint(kind="json", value=fmt.json_schema.json_schema, param="response_format.json_schema.schema")
    if so is None:
        return None
    backend = backend_name(so.backend)
    kinds = [
        (k, v)
        for k, v in (("regex", so.regex), ("json", so.json_), ("choice", so.choice), ("grammar", so.grammar))
        if v is not None
    ]
    if len(kinds) != 1:
        raise BadRequest(
            "structured_outputs needs exactly one of regex, json, choice, grammar", param="structured_outputs"
        )
    kind, value = kinds[0]
    if kind == "json" and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest("structured_outputs.json is not valid JSON", param="structured_outputs.json") from None
    return Constraint(
        kind=kind,  # type: ignore[arg-type]
        value=value,
        backend=backend,
        param=f"structured_outputs.{kind}",
        backend_param="structured_outputs.backend",
    )  # type: ignore[arg-type]


def sampling_of(
    req: _SamplingFields, settings: Settings, max_tokens: int | None, logprobs: int | None
) -> SamplingOptions:
    limit = settings.max_new_tokens_limit
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    bias = {int(k): v for k, v in req.logit_bias.items()} if req.logit_bias else None
    return SamplingOptions(
        max_new_tokens=max_tokens if max_tokens is not None else (limit or UNLIMITED),
        min_new_tokens=req.min_tokens or 0,
        temperature=req.temperature if req.temperature is not None else 1.0,
        top_p=req.top_p if req.top_p is not None else 1.0,
        top_k=max(req.top_k or 0, 0),
        min_p=req.min_p or 0.0,
        repetition_penalty=req.repetition_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed,
        stop=stop,
        n=req.n,
        ignore_eos=bool(req.ignore_eos),
        logprobs=logprobs,
        logit_bias=bias,
    )


def completion_to_neutral(req: CompletionRequest, settings: Settings) -> list[GenerationRequest]:
    """One neutral request per prompt of a text completion."""
    refuse_unsupported(req, UNSUPPORTED_COMPLETION)
    if req.best_of is not None and req.best_of != req.n:
        raise BadRequest("best_of is not supported (only best_of equal to n)", param="best_of")
    p = req.prompt
    prompts: list[str | list[int]]
    if isinstance(p, str):
        prompts = [p]
    elif p and isinstance(p[0], int):
        prompts = [p]  # type: ignore[list-item]
    else:
        prompts = list(p)  # type: ignore[arg-type]
    sampling = sampling_of(req, settings, req.max_tokens, req.logprobs)
    if req.echo and req.logprobs is not None:
        # echo with logprobs scores the prompt too (OpenAI's legacy completions behaviour)
        sampling.prompt_logprobs = req.logprobs
    constraint = constraint_of(req.response_format, req.structured_outputs)
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
            )
        )
    return out


# --------------------------------------------------------------------------- responses


def usage_of(completions: Sequence[Completion]) -> dict[str, int]:
    prompt = sum(len(c.prompt_token_ids) for c in completions)
    gen = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": gen, "total_tokens": prompt + gen}


def _finish(reason: str | None) -> str | None:
    # vLLM's "abort" only reaches a client when the server aborted (deadline, drain).
    return reason


def _token_bytes(token: str) -> list[int]:
    return list(token.encode())


def _name(token_id: int, text: str, as_ids: bool) -> str:
    # vLLM's `return_tokens_as_token_ids`: "token_id:123" identifies a token exactly,
    # where its text may be ambiguous (partial UTF-8, duplicates).
    return f"token_id:{token_id}" if as_ids else text


def chat_logprobs(lps: list[TokenLogprob], k: int, as_ids: bool = False) -> dict[str, Any]:
    """OpenAI's chat `logprobs` object for the given tokens, with `k` alternatives each."""
    return {
        "content": [
            {
                "token": _name(lp.token_id, lp.token, as_ids),
                "logprob": lp.logprob,
                "bytes": _token_bytes(lp.token),
                "top_logprobs": [
                    {"token": _name(i, t, as_ids), "logprob": v, "bytes": _token_bytes(t)} for i, t, v in lp.top[:k]
                ],
            }
            for lp in lps
        ]
    }


def completion_logprobs(
    lps: Sequence[TokenLogprob | None], k: int, offset: int, first_token: str = "", as_ids: bool = False
) -> dict[str, Any]:
    """OpenAI's legacy completions `logprobs` object; `offset` is where the text starts.

    A None entry (the first prompt token, which has no logprob) shows as `first_token`.
    """
    tokens: list[str] = []
    token_lps: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    pos = offset
    for lp in lps:
        text = lp.token if lp is not None else first_token
        tokens.append(_name(lp.token_id, text, as_ids) if lp is not None else text)
        token_lps.append(lp.logprob if lp is not None else None)
        tops.append({_name(i, t, as_ids): v for i, t, v in lp.top[:k]} if k and lp is not None else None)
        offsets.append(pos)
        pos += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


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
                    "finish_reason": _finish(c.finish_reasons[i]),
                }
            )
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": choices,
        "usage": usage_of(completions),
    }


async def _echo_text(engine: GenerativeEngine, request: GenerationRequest, prompt_ids: Sequence[int]) -> str:
    if request.prompt is not None:
        return request.prompt
    return await engine.detokenize(list(prompt_ids), skip_special_tokens=False)


# --------------------------------------------------------------------------- streaming


def json_str(text: str) -> str:
    """A JSON string literal (orjson: a token's text is encoded once per token)."""
    return orjson.dumps(text).decode()


def sse(payload: str) -> bytes:
    return f"data: {payload}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def error_event(exc: Exception) -> bytes:
    return f"event: error\ndata: {json.dumps(openai_body(classify(exc)))}\n\n".encode()


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
        if include_usage:
            total_prompt = sum(prompt_tokens)
            usage = {"prompt_tokens": total_prompt, "completion_tokens": tokens, "total_tokens": total_prompt + tokens}
            yield sse(f'{head},"choices":[],"usage":{json.dumps(usage)}}}')
    except Exception as exc:  # after the 200 the only way to report is an error event
        yield error_event(exc)
    yield DONE


# --------------------------------------------------------------------------- models


def model_list(request: Request) -> dict[str, Any]:
    """`GET /v1/models`."""
    return {"object": "list", "data": model_cards(pipeline_of(request).registry)}


def model_card(request: Request, model_id: str) -> dict[str, Any]:
    """`GET /v1/models/{id}`: one entry of the model list."""
    for card in model_cards(pipeline_of(request).registry):
        if card["id"] == model_id:
            return card
    raise NotFound(f"the model {model_id!r} does not exist", param="model")


def model_cards(registry: Registry) -> list[dict[str, Any]]:
    """`/v1/models` entries: every consumer group, and every ready reader's model name."""
    cards: dict[str, dict[str, Any]] = {}
    for group, readers in registry.groups().items():
        ready = [r for r in readers if r.state == "ready" and r.engine is not None]
        root = ready[0].engine.info.name if ready and ready[0].engine else None
        created = int(ready[0].loaded_at or ready[0].started_at) if ready else int(readers[0].started_at)
        max_len = ready[0].engine.info.max_model_len if ready and ready[0].engine else None
        cards[group] = {
            "id": group,
            "object": "model",
            "created": created,
            "owned_by": "llm-gateway",
            "root": root,
            "max_model_len": max_len,
        }
        for r in ready:
            assert r.engine is not None
            for adapter in r.adapters:
                cards.setdefault(
                    adapter,
                    {
                        "id": adapter,
                        "object": "model",
                        "created": created,
                        "owned_by": "llm-gateway",
                        "root": r.engine.info.name,
                        "parent": r.engine.info.name,
                        "max_model_len": r.engine.info.max_model_len,
                    },
                )
            name = r.engine.info.name
            cards.setdefault(
                name,
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "llm-gateway",
                    "root": name,
                    "max_model_len": r.engine.info.max_model_len,
                },
            )
    return list(cards.values())
