"""A stand-in for vLLM's engine core at GPU token rates, for front-end benchmarks.

vLLM's `AsyncLLM` (which both vLLM's API server and the gateway's vLLM reader run in their
own process) talks to an engine core in another process. This replaces that client with one
that makes one token per running request every 1/rate seconds, as vLLM's own output objects
(`EngineCoreOutputs`), so everything above the core is vLLM's real code: input processing,
the output processor's detokenization, the request streams, and each server's API layer.
The token ids are the model tokenizer's for a fixed English paragraph, so detokenizing costs
what it costs on real text.

A process installs it at start-up when FAKE_ENGINE_CORE_RATE is set (tokens per second
per request): `benchmarks/fake_core_site/sitecustomize.py` calls `install()`.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

TEXT = (
    "The gateway streams each token as the engine makes it, so a client sees the answer grow "
    "word by word. Continuous batching keeps every sequence of the batch moving at each step, "
    "and the paged cache lets long and short requests share the memory without waste. "
)


class FakeCoreClient:
    """The async engine-core client `AsyncLLM` uses, answering from a clock."""

    def __init__(self, rate: float, token_ids: list[int]) -> None:
        self.step = 1.0 / rate
        self.token_ids = token_ids
        self.running: dict[str, list[int]] = {}  # request id -> [max_tokens, made]
        self.engine_ranks_managed = [0]
        self.resources = SimpleNamespace(engine_dead=False)
        self._added = asyncio.Event()
        self._next = 0.0

    async def get_output_async(self) -> Any:
        from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason

        while True:
            if not self.running:
                self._added.clear()
                await self._added.wait()
                self._next = time.monotonic() + self.step
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
            self._next = max(self._next + self.step, time.monotonic())
            outputs = []
            n = len(self.token_ids)
            for rid, state in list(self.running.items()):
                token = self.token_ids[state[1] % n]
                state[1] += 1
                done = state[1] >= state[0]
                outputs.append(EngineCoreOutput(rid, [token], finish_reason=FinishReason.LENGTH if done else None))
                if done:
                    del self.running[rid]
            if outputs:
                return EngineCoreOutputs(outputs=outputs)

    async def add_request_async(self, request: Any) -> None:
        params = request.sampling_params
        self.running[request.request_id] = [params.max_tokens or 16, 0]
        self._added.set()

    async def abort_requests_async(self, request_ids: Any) -> None:
        for rid in request_ids:
            self.running.pop(rid, None)

    async def get_supported_tasks_async(self) -> tuple[str, ...]:
        return ("generate",)

    def dp_engines_running(self) -> bool:
        return False

    def get_kv_event_sources(self) -> list[Any]:
        return []

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.endswith("_async"):  # utilities (sleep, profile, caches): nothing to do

            async def nothing(*args: Any, **kwargs: Any) -> Any:
                return None

            return nothing
        raise AttributeError(name)


def install(rate: float) -> None:
    """Make every `AsyncLLM` of this process use a `FakeCoreClient` at `rate` tokens/s."""
    from vllm.v1.engine import core_client

    def make(*args: Any, renderer: Any = None, **kwargs: Any) -> FakeCoreClient:
        return FakeCoreClient(rate, renderer.tokenizer.encode(TEXT, add_special_tokens=False))

    core_client.EngineCoreClient.make_async_mp_client = staticmethod(make)
