"""Neutral sampling with the defaults the OpenAI and Anthropic APIs share: temperature 1,
top_p 1, no top-k, and as many new tokens as fit when the request sets no maximum (as
OpenAI and vLLM do) unless the server caps them (`max_new_tokens_limit`).

Chat completions, text completions, the Responses API and Anthropic Messages all build
their `SamplingOptions` here, each passing the fields it has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine_adapters.base import SamplingOptions
from gateway.settings import Settings

# "As many as fit": fit_prompt clamps this to the room left in the model's context.
UNLIMITED = 1 << 30


def sampling(
    settings: Settings,
    *,
    max_tokens: int | None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    min_tokens: int | None = None,
    repetition_penalty: float | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    n: int = 1,
    ignore_eos: bool | None = None,
    logprobs: int | None = None,
    logit_bias: Mapping[str, float] | None = None,
) -> SamplingOptions:
    """The neutral sampling of an OpenAI-style or Anthropic request (None: the default)."""
    limit = settings.max_new_tokens_limit
    return SamplingOptions(
        max_new_tokens=max_tokens if max_tokens is not None else (limit or UNLIMITED),
        min_new_tokens=min_tokens or 0,
        temperature=temperature if temperature is not None else 1.0,
        top_p=top_p if top_p is not None else 1.0,
        top_k=max(top_k or 0, 0),  # -1 (vLLM's "off") and 0 alike
        min_p=min_p or 0.0,
        repetition_penalty=repetition_penalty or 1.0,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
        seed=seed,
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        n=n,
        ignore_eos=bool(ignore_eos),
        logprobs=logprobs,
        logit_bias={int(k): v for k, v in logit_bias.items()} if logit_bias else None,
    )
