"""Logits processors the gateway adds to vLLM for Takeoff parameters vLLM lacks.

vLLM's V1 engine takes batch-level processor classes (`logits_processors=` engine arg)
and runs them in the worker process, so this module must import without the gateway.
See https://docs.vllm.ai/en/latest/features/custom_logitsprocs.html
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

#: key in `SamplingParams.extra_args` that turns the processor on for a request
NO_REPEAT_NGRAM_KEY = "no_repeat_ngram_size"


def ban_repeated_ngrams(size: int, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
    """Forbid every token that would complete an n-gram already in prompt + output.

    The same rule as transformers' `no_repeat_ngram_size`: with the last `size - 1`
    tokens as prefix, any token that followed that prefix before is banned.
    """
    seq = prompt_ids + output_ids
    if len(seq) < size:
        return logits
    if size == 1:
        logits[list(set(seq))] = float("-inf")
        return logits
    prefix = seq[len(seq) - size + 1 :]
    first = prefix[0]
    banned = [
        seq[i + size - 1] for i in range(len(seq) - size + 1) if seq[i] == first and seq[i : i + size - 1] == prefix
    ]
    if banned:
        logits[banned] = float("-inf")
    return logits


class NoRepeatNGramLogitsProcessor(AdapterLogitsProcessor):
    """Takeoff's `no_repeat_ngram_size`, applied only to requests that ask for it."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject sizes that are not positive integers."""
        size = (sampling_params.extra_args or {}).get(NO_REPEAT_NGRAM_KEY)
        if size is not None and (not isinstance(size, int) or size < 0):
            raise ValueError("no_repeat_ngram_size must be a non-negative integer")

    def is_argmax_invariant(self) -> bool:
        """Banning tokens changes the greedy choice."""
        return False

    def new_req_logits_processor(self, params: SamplingParams) -> Callable[[list[int], Any], Any] | None:
        """A per-request processor for requests with a size, else None."""
        size = (params.extra_args or {}).get(NO_REPEAT_NGRAM_KEY)
        if not size:
            return None
        return partial(ban_repeated_ngrams, int(size))
