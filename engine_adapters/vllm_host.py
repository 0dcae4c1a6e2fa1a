"""What the generative and pooling vLLM adapters share: one AsyncLLM, its life and health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from engine_adapters.base import EngineDeadError, EngineNotReadyError, EngineStats, ModelInfo

log = logging.getLogger(__name__)


def prepare_cpu_env(cpu_kv_cache_gib: int | None, engine_args: dict[str, Any] | None = None) -> int | None:
    """Set the vLLM CPU variables before the engine core process starts; returns the KV
    cache size (GiB) the engine will get, None where the engine arguments size it.

    Without an explicit KV cache size vLLM asks for `gpu_memory_utilization` (0.92) of the
    machine's memory and fails to start on small machines: unless the reader sets
    `cpu_kv_cache_gib`, VLLM_CPU_KVCACHE_SPACE is set, or the engine arguments size the
    cache (`kv_cache_memory_bytes` or `gpu_memory_utilization`, which the variable would
    override), a size that fits is picked, a quarter of the memory available now (1 to
    64 GiB), and said in the log. Without the reservation override vLLM keeps one of two
    cores idle (measured on 2-core machines: docs/settings.md, "Running vLLM on a CPU").
    """
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if cpu_kv_cache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib)
        return cpu_kv_cache_gib
    given = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    if given:
        return int(float(given))
    if any((engine_args or {}).get(k) is not None for k in ("kv_cache_memory_bytes", "gpu_memory_utilization")):
        return None
    import psutil

    chosen = max(1, min(64, int(psutil.virtual_memory().available / 2**30 / 4)))
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(chosen)
    log.info(
        "CPU KV cache: %d GiB, a quarter of the memory available (set the reader's cpu_kv_cache_gib to choose)",
        chosen,
    )
    return chosen


def start_async_llm(args: dict[str, Any]) -> Any:
    """An AsyncLLM built as `vllm serve` builds it: the engine config of these engine
    arguments in the API server's usage context (its batching defaults: on an H100
    1024 sequences and 8192 batched tokens, where the engine context would give 128 and
    2048), then the engine from that config (blocking: the engine core loads the model)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = AsyncEngineArgs(**args)
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    return AsyncLLM.from_vllm_config(
        vllm_config=config,
        usage_context=UsageContext.OPENAI_API_SERVER,
        enable_log_requests=engine_args.enable_log_requests,
        aggregate_engine_logging=engine_args.aggregate_engine_logging,
        disable_log_stats=engine_args.disable_log_stats,
    )


def engine_config_summary(config: Any) -> dict[str, Any]:
    """The effective engine configuration an operator asks about (for /status): the
    scheduler's, the cache's, the parallelism's and the model length."""
    sched, cache, par, model = config.scheduler_config, config.cache_config, config.parallel_config, config.model_config
    return {
        "max_num_seqs": sched.max_num_seqs,
        "max_num_batched_tokens": sched.max_num_batched_tokens,
        "scheduling_policy": str(sched.policy),
        "chunked_prefill": bool(sched.enable_chunked_prefill),
        "prefix_caching": bool(cache.enable_prefix_caching),
        "block_size": cache.block_size,
        "gpu_memory_utilization": cache.gpu_memory_utilization,
        "kv_cache_dtype": str(cache.cache_dtype),
        "tensor_parallel_size": par.tensor_parallel_size,
        "pipeline_parallel_size": par.pipeline_parallel_size,
        "data_parallel_size": par.data_parallel_size,
        "max_model_len": model.max_model_len,
        "dtype": str(model.dtype).removeprefix("torch."),
        "enforce_eager": bool(model.enforce_eager),
    }


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
