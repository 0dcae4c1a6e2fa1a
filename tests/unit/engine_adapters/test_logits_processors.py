"""The no_repeat_ngram_size rule (the same as transformers')."""

from __future__ import annotations

import torch

from engine_adapters.logits_processors import NoRepeatNGramLogitsProcessor, ban_repeated_ngrams


def banned(size, prompt, output, vocab=10):
    logits = ban_repeated_ngrams(size, prompt, output, torch.zeros(vocab))
    return sorted(int(i) for i in torch.nonzero(torch.isinf(logits)).flatten())


def test_bigram_completion_is_banned():
    # "1 2" occurred; the sequence now ends in 1, so 2 may not follow again
    assert banned(2, [1, 2, 3], [1]) == [2]


def test_trigram_uses_prompt_and_output():
    assert banned(3, [4, 5, 6, 4], [5]) == [6]
    assert banned(3, [4, 5, 6], [7, 8]) == []


def test_size_one_bans_every_seen_token():
    assert banned(1, [1, 3], [5]) == [1, 3, 5]


def test_short_sequences_ban_nothing():
    assert banned(4, [1], [2]) == []


def test_processor_only_applies_to_requests_that_ask():
    from vllm import SamplingParams

    proc = NoRepeatNGramLogitsProcessor.__new__(NoRepeatNGramLogitsProcessor)
    assert proc.new_req_logits_processor(SamplingParams()) is None
    assert proc.new_req_logits_processor(SamplingParams(extra_args={"no_repeat_ngram_size": 3})) is not None
