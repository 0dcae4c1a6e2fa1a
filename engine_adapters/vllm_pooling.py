"""vLLM's pooling runner as an embeddings / classification engine (`runner="pooling"`).

A second way to serve embeddings, selectable per reader (`kind: pooling`): vLLM batches
the inputs itself (continuous batching), and token-id inputs are embedded exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from engine_adapters.base import (
    ClassificationResult,
    EmbeddingResult,
    InvalidParameterError,
    ModelInfo,
    PoolingInput,
    TextPair,
    UnsupportedFeatureError,
)
from engine_adapters.vllm_host import AsyncLLMHost, engine_config_summary, prepare_cpu_env, start_async_llm


@dataclass
class VLLMPoolingConfig:
    """Settings of one pooling reader."""

    model: str
    served_name: str
    served_model_names: list[str] = field(default_factory=list)  # all its names (the first is served_name)
    task: Literal["embed", "classify"] = "embed"
    dtype: str = "auto"
    max_model_len: int | None = None
    enforce_eager: bool = False
    cpu_kv_cache_gib: int | None = None
    truncate: bool = True
    engine_args: dict[str, Any] = field(default_factory=dict)


class VLLMPoolingEngine(AsyncLLMHost):
    """`PoolingEngine` backed by an AsyncLLM with the pooling runner."""

    _dead_message = "the vLLM pooling engine has died"

    def __init__(self, config: VLLMPoolingConfig) -> None:
        super().__init__()
        self.config = config

    def engine_args(self) -> dict[str, Any]:
        """The `AsyncEngineArgs` of this reader (vLLM's defaults, the reader's fields, then
        its `engine_args`), as `vllm serve --runner pooling` would take them."""
        cfg = self.config
        args: dict[str, Any] = {
            "model": cfg.model,
            "served_model_name": cfg.served_model_names or [cfg.served_name],
            "runner": "pooling",
            "convert": cfg.task,
            "dtype": cfg.dtype,
            "max_model_len": cfg.max_model_len,
            "enforce_eager": cfg.enforce_eager,
            "disable_log_stats": False,
        }
        args.update(cfg.engine_args)
        return args

    async def start(self) -> None:
        """Build the pooling engine in a thread, as `vllm serve` does."""
        from vllm.platforms import current_platform

        cfg = self.config
        if current_platform.is_cpu():
            prepare_cpu_env(cfg.cpu_kv_cache_gib, self.engine_args())
        self._engine = await asyncio.to_thread(start_async_llm, self.engine_args())
        self._tokenizer = self._engine.get_tokenizer()
        mc = self._engine.model_config
        hf = mc.hf_config
        labels: tuple[str, ...] = ()
        if cfg.task == "classify":
            id2label = getattr(hf, "id2label", None) or {}
            labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(getattr(hf, "num_labels", 1)))
        self._info = ModelInfo(
            name=cfg.served_name,
            path=cfg.model,
            max_model_len=int(mc.max_model_len),
            engine="vllm-pooling",
            device="cpu" if current_platform.is_cpu() else current_platform.device_type,
            dtype=str(mc.dtype).removeprefix("torch."),
            has_chat_template=False,
            tasks=("embed", "score") if cfg.task == "embed" else ("classify",),
            dimensions=int(mc.get_hidden_size()) if cfg.task == "embed" else None,
            labels=labels,
            engine_config=engine_config_summary(self._engine.vllm_config),
        )

    def _ids(self, i: int, x: PoolingInput) -> list[int]:
        ids = list(self._tokenizer.encode(x)) if isinstance(x, str) else list(x)
        vocab = len(self._tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidParameterError(f"input[{i}] has a token id outside the vocabulary (0..{vocab - 1})", "input")
        limit = self.info.max_model_len
        if len(ids) > limit:
            if not self.config.truncate:
                raise InvalidParameterError(
                    f"input[{i}] has {len(ids)} tokens, more than the model's limit of {limit}", "input"
                )
            ids = ids[:limit]
        return ids

    async def _pool(self, ids: list[int], task: Literal["embed", "classify"]) -> tuple[np.ndarray, int]:
        from vllm import PoolingParams
        from vllm.inputs.engine import tokens_input

        out = None
        async for item in self._engine.encode(tokens_input(ids), PoolingParams(task=task), f"pool-{uuid.uuid4().hex}"):
            out = item  # FINAL_ONLY: one output
        assert out is not None
        return np.asarray(out.outputs.data.float().cpu().numpy(), dtype=np.float32), len(ids)

    async def embed(self, inputs: list[PoolingInput]) -> EmbeddingResult:
        """Every input as its own engine request; vLLM batches them."""
        if "embed" not in self.info.tasks:
            raise UnsupportedFeatureError(f"the model {self.info.name!r} cannot embed")
        results = await asyncio.gather(*(self._pool(self._ids(i, x), "embed") for i, x in enumerate(inputs)))
        return EmbeddingResult(np.stack([v for v, _ in results]), [n for _, n in results])

    async def classify(self, inputs: list[str | TextPair]) -> ClassificationResult:
        """Class probabilities of texts (pairs need the cross-encoder path of sentence-transformers)."""
        if "classify" not in self.info.tasks:
            raise UnsupportedFeatureError(f"the model {self.info.name!r} cannot classify")
        if any(isinstance(x, tuple) for x in inputs):
            raise UnsupportedFeatureError("text pairs are classified by sentence-transformers readers", "text")
        texts = [x for x in inputs if isinstance(x, str)]
        results = await asyncio.gather(*(self._pool(self._ids(i, x), "classify") for i, x in enumerate(texts)))
        return ClassificationResult(np.stack([p for p, _ in results]), self.info.labels, [n for _, n in results])

    async def score(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Cosine similarity of the query's and documents' embeddings."""
        result = await self.embed([query, *documents])
        v = result.vectors / np.maximum(np.linalg.norm(result.vectors, axis=1, keepdims=True), 1e-12)
        return [float(x) for x in v[1:] @ v[0]], sum(result.token_counts)
