"""The generate-one / generate-batch API, with request_id continuation.

A request whose key is in the continuation store continues from the stored token
sequence and ignores its prompt; every finished generation stores its full sequence
(prompt + new tokens, without a final end-of-sequence token) under its key. The key is
an HMAC of the caller's API key name and the request_id, so one caller's conversations
are invisible to another's; in a batch the key also depends on the ids of the whole
batch in order ("a different order of prompts produces a different caching key").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from engine_adapters.base import Constraint, GenerationRequest, GenerativeEngine, SamplingOptions
from gateway.auth import principal_of
from gateway.continuation import ContinuationStore, StoreUnavailable, scoped_key
from gateway.errors import BadRequest
from gateway.machinery.bodies import FastJSONResponse
from gateway.machinery.engine_streams import Completion, Tagged, new_request_id
from gateway.machinery.limits import Fields, check_count
from gateway.machinery.pipeline import Generation, pipeline_of
from gateway.observability.metrics import STORE_WRITE_ERRORS
from gateway.protocols.generate_api import GenerateBatchRequest, GenerateOneRequest, GenerationConfig
from gateway.serving.constraints import ConstraintField, constraint_of
from gateway.settings import Settings

log = logging.getLogger(__name__)


FIELDS = Fields(
    prompts="prompts",
    max_new_tokens="generation_config.max_new_tokens",
    min_new_tokens="generation_config.min_new_tokens",
    num_beams="generation_config.num_beams",
)


async def generate_one(request: Request, body: GenerateOneRequest) -> Response:
    """Generate (or continue) one text: plain text, streamed unless `stream_response` is false."""
    pipeline = pipeline_of(request)
    settings, store = pipeline.settings, pipeline.store
    check_request_id(body.request_id, "request_id", settings)
    sampling = config_sampling(body.generation_config, settings)
    constraint = config_constraint(body.generation_config)
    tenant = principal_of(request.scope).tenant
    key = one_key(settings, tenant, body.request_id)
    (job,), headers = await make_jobs(store, tenant, [key], [body.prompt], ["prompt"], sampling, constraint)

    async def answer(engine: GenerativeEngine, completions: list[Completion]) -> Response:
        (c,) = completions
        await remember(store, job, c, engine.info.eos_token_id)
        new = c.texts[0] if c.texts else ""
        text = new if body.only_new_tokens else await prompt_text(engine, c) + new
        return PlainTextResponse(text, headers=headers)

    generation = Generation(
        requests=[job.request],
        answer=answer,
        events=lambda engine, streams: stream_text(engine, store, job, streams[0], body.only_new_tokens),
        stream=body.stream_response,
        stream_as="text",
        timeout=body.timeout,
        priority=body.priority,
        fields=FIELDS,
        headers=headers,
    )
    return await pipeline.generate(request, generation)


async def generate_batch(request: Request, body: GenerateBatchRequest) -> Response:
    """Generate (or continue) every prompt at once; answers keep the request's order."""
    pipeline = pipeline_of(request)
    settings, store = pipeline.settings, pipeline.store
    ids = [p.request_id for p in body.prompts]
    check_count(len(ids), settings, "prompts")
    seen: set[str] = set()
    for i, rid in enumerate(ids):
        check_request_id(rid, f"prompts[{i}].request_id", settings)
        if rid in seen:
            raise BadRequest(f"prompts[{i}].request_id repeats an earlier one", param=f"prompts[{i}].request_id")
        seen.add(rid)
    sampling = config_sampling(body.generation_config, settings)
    constraint = config_constraint(body.generation_config)
    tenant = principal_of(request.scope).tenant
    jobs, headers = await make_jobs(
        store,
        tenant,
        batch_keys(settings, tenant, ids),
        [p.prompt for p in body.prompts],
        [f"prompts[{i}].prompt" for i in range(len(ids))],
        sampling,
        constraint,
    )

    async def answer(engine: GenerativeEngine, completions: list[Completion]) -> Response:
        eos = engine.info.eos_token_id
        await asyncio.gather(*(remember(store, j, c, eos) for j, c in zip(jobs, completions, strict=True)))
        out = []
        for rid, c in zip(ids, completions, strict=True):
            item: dict[str, Any] = {"request_id": rid, "response": c.texts[0] if c.texts else ""}
            if not body.only_new_tokens:
                item["prompt"] = await prompt_text(engine, c)
            out.append(item)
        return FastJSONResponse(out, headers=headers)

    generation = Generation(
        requests=[j.request for j in jobs],
        answer=answer,
        timeout=body.timeout,
        priority=body.priority,
        fields=FIELDS,
    )
    return await pipeline.generate(request, generation)


def one_key(settings: Settings, tenant: str, request_id: str) -> str:
    """Store key of a generate-one request of `tenant` (the caller's key name)."""
    return "one:" + scoped_key(settings.continuation, tenant, request_id)


def batch_keys(settings: Settings, tenant: str, request_ids: Sequence[str]) -> list[str]:
    """Store keys of a batch: the batch's ids, in order, are part of every key."""
    batch = "\x1f".join(request_ids)
    return ["batch:" + scoped_key(settings.continuation, tenant, f"{batch}\x1e{rid}") for rid in request_ids]


def check_request_id(request_id: str, field: str, settings: Settings) -> None:
    """Request ids are bounded so keys stay small."""
    if len(request_id) > settings.max_request_id_length:
        raise BadRequest(f"{field} must be at most {settings.max_request_id_length} characters", param=field)


def config_sampling(cfg: GenerationConfig | None, settings: Settings) -> SamplingOptions:
    """`generation_config` onto neutral sampling, with the gateway's defaults."""
    d = settings.generate_api_defaults
    c = cfg or GenerationConfig()
    do_sample = c.do_sample if c.do_sample is not None else d.do_sample
    temperature = c.temperature if c.temperature is not None else d.temperature
    return SamplingOptions(
        max_new_tokens=c.max_new_tokens if c.max_new_tokens is not None else d.max_new_tokens,
        min_new_tokens=c.min_new_tokens or 0,
        # do_sample false is greedy decoding, as in Hugging Face's generate()
        temperature=temperature if do_sample else 0.0,
        top_p=c.top_p if c.top_p is not None else d.top_p,
        top_k=c.top_k if c.top_k is not None else d.top_k,
        repetition_penalty=c.repetition_penalty if c.repetition_penalty is not None else d.repetition_penalty,
        num_beams=c.num_beams if c.num_beams is not None else d.num_beams,
        length_penalty=c.length_penalty if c.length_penalty is not None else d.length_penalty,
        seed=c.seed,
    )


def config_constraint(cfg: GenerationConfig | None) -> Constraint | None:
    """The extension fields `regex`, `json_schema`, `choice` of `generation_config` (one at most)."""
    if cfg is None:
        return None
    return constraint_of(
        [
            ConstraintField("regex", cfg.regex, "generation_config.regex"),
            ConstraintField("json", cfg.json_schema, "generation_config.json_schema"),
            ConstraintField("choice", cfg.choice, "generation_config.choice"),
        ],
        backend=cfg.constrained_decoding_backend,
        backend_param="generation_config.constrained_decoding_backend",
        one_of="generation_config",
    )


@dataclass(slots=True)
class Job:
    """One prompt of a request: its neutral request and where its sequence is stored."""

    key: str
    tenant: str
    request: GenerationRequest
    continued: bool


# Said on every answer served without the store (it did not answer): each request_id was
# served from its prompt, as a new one, and will not be continued from this turn.
UNAVAILABLE = {"X-Continuation": "unavailable"}


async def make_jobs(
    store: ContinuationStore,
    tenant: str,
    keys: Sequence[str],
    prompts: Sequence[str],
    fields: Sequence[str],
    sampling: SamplingOptions,
    constraint: Constraint | None,
) -> tuple[list[Job], dict[str, str] | None]:
    """Continue the stored sequence of each key if there is one, else start from its prompt
    (all read in one round trip), and the headers the answer carries.

    A store that does not answer counts as a miss for a request with a prompt (served as
    new, the answer says so in `X-Continuation: unavailable`); a request that only
    continues (no prompt) cannot be served then: a 503 naming the field.
    """
    try:
        priors = await store.get_many(keys)
        headers = None
    except StoreUnavailable:
        priors, headers = [None] * len(keys), UNAVAILABLE
    jobs = []
    for key, prompt, field, prior in zip(keys, prompts, fields, priors, strict=True):
        rid = new_request_id("gen")
        if prior:
            req = GenerationRequest(request_id=rid, prompt_token_ids=prior, sampling=sampling, constraint=constraint)
            jobs.append(Job(key, tenant, req, continued=True))
            continue
        if not prompt:
            if headers is not None:
                raise StoreUnavailable(
                    "the continuation store is unavailable, so this request_id cannot be continued now; "
                    "retry shortly, or send a prompt to start afresh",
                    param=field,
                    headers={"Retry-After": "5"},
                )
            raise BadRequest("prompt is empty and the request_id has no generation to continue", param=field)
        req = GenerationRequest(request_id=rid, prompt=prompt, sampling=sampling, constraint=constraint)
        jobs.append(Job(key, tenant, req, False))
    return jobs, headers


def full_sequence(prompt_ids: Sequence[int], generated: Sequence[int], eos: int | None) -> list[int]:
    """What a continuation continues from: prompt and output, minus a closing EOS."""
    out = list(prompt_ids) + list(generated)
    if eos is not None and generated and out[-1] == eos:
        out.pop()
    return out


async def remember(store: ContinuationStore, job: Job, c: Completion, eos: int | None) -> None:
    """Store the job's full sequence after a generation that ended normally.

    Best effort: the client gets its answer even if the store fails (logged, counted).
    """
    if c.finish_reasons and c.finish_reasons[0] in ("stop", "length"):
        try:
            await store.put(job.key, full_sequence(c.prompt_token_ids, c.token_ids[0], eos), job.tenant)
        except Exception as exc:
            STORE_WRITE_ERRORS.inc()
            log.error("could not store the continuation (the answer was sent): %s", exc)


async def prompt_text(engine: GenerativeEngine, c: Completion) -> str:
    """The prompt as the model saw it (a continuation's whole earlier sequence included)."""
    return await engine.detokenize(list(c.prompt_token_ids), skip_special_tokens=False)


async def stream_text(
    engine: GenerativeEngine,
    store: ContinuationStore,
    job: Job,
    stream: Tagged,
    only_new_tokens: bool,
) -> AsyncIterator[bytes]:
    """Plain-text pieces of one generation; stores the sequence when it ends.

    A failure after the first byte cannot change the status any more: the error is
    logged and the connection is cut, so the client sees an incomplete chunked body
    rather than a silently shortened text.
    """
    c = Completion()
    first = True
    async for _, out in stream:
        c.add(out)
        if first and not only_new_tokens:
            first = False
            text = await prompt_text(engine, c)
            if text:
                yield text.encode()
        for d in out.deltas:
            if d.text:
                yield d.text.encode()
    await remember(store, job, c, engine.info.eos_token_id)
