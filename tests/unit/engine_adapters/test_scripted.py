"""The scripted engine's token clock (`tokens_per_second`), which the front-end benchmark
feeds the HTTP layer with: one token per output while the consumer keeps up, every step
due in one output once it falls behind (as vLLM merges a slow consumer's deltas)."""

from __future__ import annotations

import asyncio
import time

from engine_adapters.base import GenerationRequest, SamplingOptions
from engine_adapters.scripted import ScriptedConfig, ScriptedEngine

REPLY = " the quick brown fox jumps over the lazy dog" * 10


async def outputs(rate: float, tokens: int, pause: float) -> tuple[list[str], float]:
    engine = ScriptedEngine(ScriptedConfig(tokens_per_second=rate, reply=REPLY, eos_after=10**6))
    await engine.start()
    request = GenerationRequest(
        request_id=f"r-{time.time_ns()}", prompt="x", sampling=SamplingOptions(max_new_tokens=tokens, temperature=0.0)
    )
    texts = []
    t0 = time.perf_counter()
    async for out in engine.generate(request):
        for d in out.deltas:
            texts.append(d.text)
            finish = d.finish_reason
        if pause:
            await asyncio.sleep(pause)
    assert finish == "length"
    return texts, time.perf_counter() - t0


def test_a_consumer_that_keeps_up_gets_one_token_per_output_at_the_rate():
    texts, took = asyncio.run(outputs(rate=200.0, tokens=40, pause=0.0))
    assert len(texts) == 40 and all(len(t) == 1 for t in texts)
    assert took >= 40 / 200 * 0.95  # the rate holds


def test_a_consumer_that_falls_behind_gets_the_steps_due_in_one_output():
    fast, _ = asyncio.run(outputs(rate=200.0, tokens=60, pause=0.0))
    slow, took = asyncio.run(outputs(rate=200.0, tokens=60, pause=0.05))
    assert "".join(slow) == "".join(fast)  # nothing lost, nothing repeated
    assert len(slow) < len(fast) / 3  # about ten tokens per output
    assert took < 60 / 200 + 0.2  # the engine's clock ran on while the consumer slept
