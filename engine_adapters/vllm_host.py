"""What the generative and pooling vLLM adapters share: one AsyncLLM, its life and health."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from engine_adapters.base import EngineDeadError, EngineNotReadyError, EngineStats, ModelInfo


def prepare_cpu_env(cpu_kv_cache_gib: int | None) -> None:
    """Set the vLLM CPU variables before the engine core process starts.

    Without an explicit KV cache size vLLM asks for most of NUMA node 0 and fails to start
    on small machines; without the reservation override it keeps one of two cores idle
    (measured on 2-core machines: docs/settings.md, "Running vLLM on a CPU").
    """
    if cpu_kv_cache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


class AsyncLLMHost:
    """Holds one `AsyncLLM`; subclasses build it in `start()` and set `_info`."""

    _dead_message = "the vLLM engine core has died"

    def __init__(self) -> None:
        self._engine: Any = None
        self._tokenizer: Any = None
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        """The loaded model."""
        if self._info is None:
            raise EngineNotReadyError("the model is still loading")
        return self._info

    async def shutdown(self) -> None:
        """Stop the engine core process and its workers.

        The output handler (a task on this loop) is cancelled first: vLLM's own shutdown
        stops the engine core before it, so the handler can see the core vanish and log
        an `EngineDeadError` traceback on a perfectly clean stop."""
        if self._engine is not None:
            engine, self._engine = self._engine, None
            handler = getattr(engine, "output_handler", None)
            if handler is not None and not handler.done():
                handler.cancel()
                with contextlib.suppress(BaseException):
                    await handler
            await asyncio.to_thread(engine.shutdown)

    @property
    def dead(self) -> bool:
        """Whether the engine core has died (cheap; checked on every readiness probe)."""
        return self._engine is not None and bool(self._engine.errored)

    async def check_health(self) -> None:
        """Raise `EngineDeadError` once the engine core has died."""
        if self._engine is None:
            raise EngineNotReadyError("the engine is not running")
        if self._engine.errored:
            raise EngineDeadError(self._dead_message)

    def stats(self) -> EngineStats:
        """Unfinished requests as the front end counts them (aborts drop out at once)."""
        if self._engine is None:
            return EngineStats(running=0, waiting=0)
        return EngineStats(running=self._engine.get_num_unfinished_requests(), waiting=0)
