"""Takeoff's API: `/generate` and `/generate_stream` onto neutral requests and back.

Stream framing (documented in docs/apis/takeoff.md):
  * each piece of new text is one event whose `data` is the text itself (multi-line text
    becomes several `data:` lines, which SSE clients join with newlines);
  * for a list of prompts the event name is the prompt's index ("0", "1", ...);
    for a single prompt the event name is the default ("message");
  * with `return_metadata`, an event `metadata` carries the JSON metadata;
  * the last event is `end` with data `[DONE]`; a failure after the stream started is
    an `error` event carrying the error body, and nothing follows it; so is the end a
    token budget puts to a stream (type `budget_exhausted`, after the text made so far).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import Constraint, GenerationRequest, GenerativeEngine, SamplingOptions
from gateway.errors import classify, takeoff_body
from gateway.machinery.bodies import FastJSONResponse
from gateway.machinery.engine_streams import Completion, Tagged, budget_cut, merge, new_request_id
from gateway.machinery.limits import Fields
from gateway.machinery.pipeline import Generation, pipeline_of
from gateway.machinery.routing import Target
from gateway.protocols.takeoff import GenerateRequest, GenerationMetadata
from gateway.serving.constraints import ConstraintField, constraint_of
from gateway.settings import Settings

FIELDS = Fields(prompts="text", max_new_tokens="max_new_tokens", min_new_tokens="min_new_tokens", stop="stop")


async def generate(request: Request, body: GenerateRequest, stream: bool) -> Response:
    """Serve `/generate` (whole) or `/generate_stream` (SSE) through the pipeline."""
    pipeline = pipeline_of(request)
    requests = to_neutral(body, pipeline.settings)

    async def answer(_: GenerativeEngine, completions: list[Completion]) -> Response:
        return FastJSONResponse(response_of(body, requests, completions))

    generation = Generation(
        requests=requests,
        answer=answer,
        events=lambda _, streams: stream_events(body, requests, streams),
        stream=stream,
        target=Target(body.consumer_group),
        timeout=body.timeout,
        priority=body.priority,
        fields=FIELDS,
    )
    return await pipeline.generate(request, generation)


def takeoff_constraint(body: GenerateRequest) -> Constraint | None:
    """The decoding constraint: a regex wins over a JSON schema, as Takeoff documents."""
    regex, regex_param = body.regex or (None, "regex_string")
    return constraint_of(
        [ConstraintField("regex", regex, regex_param), ConstraintField("json", body.json_schema, "json_schema")],
        backend=body.constrained_decoding_backend,
        backend_param="constrained_decoding_backend",
    )


def to_neutral(body: GenerateRequest, settings: Settings) -> list[GenerationRequest]:
    """One neutral request per prompt, with Takeoff's defaults for missing parameters."""
    prompts = [body.text] if isinstance(body.text, str) else body.text
    max_new = next(
        (v for v in (body.max_new_tokens, body.generate_max_length) if v is not None), settings.default_max_new_tokens
    )
    sampling = SamplingOptions(
        max_new_tokens=max_new,
        min_new_tokens=body.min_new_tokens if body.min_new_tokens is not None else 1,
        # Takeoff's default top-k is 1: greedy unless the client widens it.
        top_k=body.sampling_topk if body.sampling_topk is not None else 1,
        temperature=body.sampling_temperature if body.sampling_temperature is not None else 1.0,
        top_p=body.sampling_topp if body.sampling_topp is not None else 1.0,
        repetition_penalty=body.repetition_penalty if body.repetition_penalty is not None else 1.0,
        no_repeat_ngram_size=body.no_repeat_ngram_size or 0,
        seed=body.seed,
        stop=tuple(body.stop or ()),
    )
    constraint = takeoff_constraint(body)
    return [
        GenerationRequest(
            request_id=new_request_id("takeoff"),
            prompt=prompt,
            sampling=sampling,
            constraint=constraint,
            use_chat_template=bool(body.use_chat_template),
            prompt_max_tokens=body.prompt_max_tokens,
            truncate_prompt=True,
            lora_id=body.lora_id,
        )
        for prompt in prompts
    ]


def metadata_of(r: GenerationRequest, c: Completion) -> GenerationMetadata:
    """Token counts, finish reason and truncation of one prompt's completion."""
    return GenerationMetadata(
        prompt_tokens=len(c.prompt_token_ids),
        generated_tokens=c.completion_tokens,
        finish_reason=c.finish_reasons[0] if c.finish_reasons else None,
        truncated_prompt_tokens=r.prompt_tokens_dropped,
    )


def response_of(
    body: GenerateRequest, requests: list[GenerationRequest], completions: list[Completion]
) -> dict[str, Any]:
    """The `/generate` answer: text (and metadata) per prompt, in request order."""
    single = isinstance(body.text, str)
    texts = [c.texts[0] if c.texts else "" for c in completions]
    text = texts[0] if single else texts
    # "message": the key the legacy Takeoff client reads the answer from
    out: dict[str, Any] = {"text": text, "message": text}
    if body.return_metadata:
        metas = [metadata_of(r, c).model_dump() for r, c in zip(requests, completions, strict=True)]
        out["metadata"] = metas[0] if single else metas
    return out


def data_event(text: str, event: str | None) -> bytes | dict[str, str]:
    """One piece of text as an SSE event: framed here (once per token) unless it spans
    lines, which `ServerSentEvent` splits into several `data:` lines."""
    if "\n" in text or "\r" in text:
        return {"data": text} if event is None else {"data": text, "event": event}
    head = b"data: " if event is None else b"event: " + event.encode() + b"\ndata: "
    return head + text.encode() + b"\n\n"


async def stream_events(
    body: GenerateRequest, requests: list[GenerationRequest], streams: list[Tagged]
) -> AsyncIterator[bytes | dict[str, Any]]:
    """SSE events for the accepted streams, in the framing of the module docstring."""
    single = isinstance(body.text, str)
    completions = [Completion() for _ in streams] if body.return_metadata else None
    try:
        async with contextlib.AsyncExitStack() as stack:
            for s in streams:
                stack.push_async_callback(s.aclose)
            async for i, out in merge(streams):
                if completions is not None:
                    completions[i].add(out)
                for d in out.deltas:
                    if d.text:
                        yield data_event(d.text, None if single else str(i))
        if completions is not None:
            metas = [metadata_of(r, c).model_dump() for r, c in zip(requests, completions, strict=True)]
            yield {"event": "metadata", "data": json.dumps(metas[0] if single else metas)}
        why = budget_cut()
        if why is not None:  # a token budget ended the stream: an error event, nothing after it
            cut = {"detail": why, "type": "budget_exhausted", "field": None}
            yield {"event": "error", "data": json.dumps(cut)}
            return
        yield {"event": "end", "data": "[DONE]"}
    except Exception as exc:  # after the 200 the only way to report is an error event
        yield {"event": "error", "data": json.dumps(takeoff_body(classify(exc)))}
