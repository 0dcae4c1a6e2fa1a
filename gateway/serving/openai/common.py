"""What the OpenAI translations (chat, completions, Responses) share: refusing fields the
server does not act on, the wire names of limited fields, sampling and constraints of
chat and completions, usage, logprobs, and SSE framing.

Streaming chunks are assembled from pre-rendered JSON prefixes with only the text encoded
per token (`json_str`): the per-token path is the hot path of the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypedDict

import orjson

from engine_adapters.base import Constraint, SamplingOptions, TokenLogprob
from gateway.errors import BadRequest, classify, openai_body
from gateway.machinery.engine_streams import Completion, budget_cut
from gateway.machinery.limits import Fields
from gateway.protocols.openai import (
    JSONObjectFormat,
    JSONSchemaResponseFormat,
    ResponseFormat,
    StructuredOutputs,
    _SamplingFields,
)
from gateway.serving.constraints import ConstraintField, constraint_of
from gateway.serving.sampling import sampling
from gateway.settings import Settings

# What counts as "not set" for a field the server refuses: absent, null, or the empty or
# off value clients send by default (`modalities: []`, `prediction: {}`, `top_logprobs: 0`).
UNSET: tuple[Any, ...] = (None, [], {}, "", "none", False, 0)


class Usage(TypedDict):
    """OpenAI's `usage` of chat and text completions."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def refuse_unsupported(extra: dict[str, Any] | None, names: Sequence[str]) -> None:
    """A 400 naming the first of `names` that the request sets (`extra`: its undeclared fields)."""
    extra = extra or {}
    for name in names:
        if extra.get(name) not in UNSET:
            raise BadRequest(f"{name} is not supported by this server", param=name)


def fields_of(body: _SamplingFields, prompts: str) -> Fields:
    """The wire names of chat's and completions' limited fields."""
    max_name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
    return Fields(prompts=prompts, max_new_tokens=max_name, min_new_tokens="min_tokens", stop="stop", n="n")


def sampling_of(
    req: _SamplingFields, settings: Settings, max_tokens: int | None, logprobs: int | None
) -> SamplingOptions:
    """Neutral sampling of a chat or completions request (vLLM's extensions included)."""
    return sampling(
        settings,
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        min_tokens=req.min_tokens,
        repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        stop=req.stop,
        n=req.n,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        logit_bias=req.logit_bias,
    )


def format_constraint(fmt: ResponseFormat | None, so: StructuredOutputs | None) -> Constraint | None:
    """The constraint of `response_format` or vLLM's `structured_outputs` (not both)."""
    if fmt is not None and fmt.type != "text" and so is not None:
        raise BadRequest("send either response_format or structured_outputs, not both", param="structured_outputs")
    if isinstance(fmt, JSONObjectFormat):
        return constraint_of([ConstraintField("json_object", True, "response_format")])
    if isinstance(fmt, JSONSchemaResponseFormat):
        return constraint_of(
            [ConstraintField("json", fmt.json_schema.json_schema, "response_format.json_schema.schema")]
        )
    if so is None:
        return None
    return constraint_of(
        [
            ConstraintField("regex", so.regex, "structured_outputs.regex"),
            ConstraintField("json", so.json_, "structured_outputs.json"),
            ConstraintField("choice", so.choice, "structured_outputs.choice"),
            ConstraintField("grammar", so.grammar, "structured_outputs.grammar"),
        ],
        backend=so.backend,
        backend_param="structured_outputs.backend",
        one_of="structured_outputs",
        required=True,
    )


def usage_of(completions: Sequence[Completion]) -> Usage:
    """Prompt and generated tokens of every prompt's completion."""
    prompt = sum(len(c.prompt_token_ids) for c in completions)
    gen = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": gen, "total_tokens": prompt + gen}


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


def json_str(text: str) -> str:
    """A JSON string literal (orjson: a token's text is encoded once per token)."""
    return orjson.dumps(text).decode()


def sse(payload: str) -> bytes:
    """One SSE `data:` event."""
    return f"data: {payload}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def error_event(exc: Exception) -> bytes:
    """The error event of a stream that fails after the 200 (OpenAI's error body)."""
    return f"event: error\ndata: {json.dumps(openai_body(classify(exc)))}\n\n".encode()


def budget_note() -> dict[str, bool]:
    """`{"budget_exhausted": true}` when a token budget ended the request (its sequences
    say "length"), else nothing: merged into whole answers."""
    return {"budget_exhausted": True} if budget_cut() is not None else {}
