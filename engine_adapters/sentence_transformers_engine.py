"""sentence-transformers models: SentenceTransformer for embeddings, CrossEncoder for
classification and re-ranking, with dynamic batching and the model run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from engine_adapters.base import (
    ClassificationResult,
    EmbeddingResult,
    EngineNotReadyError,
    EngineStats,
    InvalidParameterError,
    ModelInfo,
    PoolingInput,
    TextPair,
    UnsupportedFeatureError,
    Work,
)
from engine_adapters.batching import DynamicBatcher

log = logging.getLogger(__name__)


@dataclass
class SentenceTransformersConfig:
    """Settings of one sentence-transformers reader."""

    model: str
    served_name: str
    task: Literal["embed", "classify"] = "embed"
    device: str = "cpu"
    max_batch_size: int = 64
    max_wait_ms: float = 20.0
    truncate: bool = True
    on_batch: Callable[[int], None] | None = None  # called with every batch's size (metrics)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class SentenceTransformersEngine:
    """`PoolingEngine` on a SentenceTransformer (embed) or a CrossEncoder (classify, score)."""

    def __init__(self, config: SentenceTransformersConfig) -> None:
        self.config = config
        self._model: Any = None
        self._info: ModelInfo | None = None
        self._batcher: DynamicBatcher[Any, Any] | None = None
        self._max_tokens = 512

    @property
    def info(self) -> ModelInfo:
        """The loaded model."""
        if self._info is None:
            raise EngineNotReadyError("the model is still loading")
        return self._info

    async def start(self) -> None:
        """Load the model in a thread (it reads weights from disk)."""
        self._model = await asyncio.to_thread(self._load)
        wait = self.config.max_wait_ms / 1000
        fn = self._embed_batch if self.config.task == "embed" else self._classify_batch
        self._batcher = DynamicBatcher(fn, self.config.max_batch_size, wait)
        self._batcher.on_batch = self.config.on_batch

    def _load(self) -> Any:
        device = "cpu" if self.config.device == "auto" else self.config.device
        if self.config.task == "embed":
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(self.config.model, device=device)
            self._max_tokens = int(model.max_seq_length or 512)
            dims = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
            assert dims is not None
            self._info = self._make_info(("embed", "score"), dims, ())
        else:
            from sentence_transformers import CrossEncoder

            model = CrossEncoder(self.config.model, device=device)
            # `max_seq_length` since sentence-transformers 5.3; `max_length` before (deprecated after)
            longest = getattr(model, "max_seq_length", None) or getattr(model, "max_length", None)
            self._max_tokens = int(longest or model.tokenizer.model_max_length)
            id2label = model.config.id2label or {}
            labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(model.config.num_labels))
            tasks: tuple[Work, ...] = ("classify", "score") if len(labels) == 1 else ("classify",)
            self._info = self._make_info(tasks, None, labels)
        return model

    def _make_info(self, tasks: tuple[Work, ...], dims: int | None, labels: tuple[str, ...]) -> ModelInfo:
        return ModelInfo(
            name=self.config.served_name,
            path=self.config.model,
            max_model_len=self._max_tokens,
            engine="sentence-transformers",
            device=self.config.device if self.config.device != "auto" else "cpu",
            dtype="float32",
            has_chat_template=False,
            tasks=tasks,
            dimensions=dims,
            labels=labels,
        )

    async def shutdown(self) -> None:
        """Stop batching and drop the model."""
        if self._batcher is not None:
            await self._batcher.close()
        self._model = None

    @property
    def dead(self) -> bool:
        """In-process models do not die on their own."""
        return False

    async def check_health(self) -> None:
        """In-process models do not die on their own."""
        if self._model is None:
            raise EngineNotReadyError("the model is not loaded")

    def stats(self) -> EngineStats:
        """Inputs in the running batch and waiting for the next."""
        b = self._batcher
        if b is None:
            return EngineStats(running=0, waiting=0)
        return EngineStats(running=b.running, waiting=b.waiting, recent_batch_sizes=tuple(b.batch_sizes[-20:]))

    # ---------------------------------------------------------------- batches (threads)

    def _token_counts(self, first: list[str], second: list[str] | None = None) -> list[int]:
        """Tokens per input (pairs count both texts), as the model sees them (truncated)."""
        encoded = self._model.tokenizer(first, second, truncation=True, max_length=self._max_tokens)["input_ids"]
        return [len(ids) for ids in encoded]

    def _check_lengths(self, inputs: list[str | TextPair]) -> None:
        """Without truncation, an input longer than the model's limit is a 400 naming its
        index in its own request: checked per request before it joins a batch, so it fails
        no other request coalesced with it (blocking: runs in a thread)."""
        tok = self._model.tokenizer
        for i, x in enumerate(inputs):
            first, second = (x, None) if isinstance(x, str) else x
            n = len(tok(first, second, truncation=False)["input_ids"])
            if n > self._max_tokens:
                raise InvalidParameterError(
                    f"input[{i}] has {n} tokens, more than the model's limit of {self._max_tokens}", "input"
                )

    def _embed_batch(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """One forward pass over the batch, tokenized once (`encode` would tokenize again
        after the token count): the same vectors as `encode(texts)`."""
        import torch

        model = self._model
        prepare = getattr(model, "preprocess", None) or model.tokenize
        features = prepare(texts)
        counts = features["attention_mask"].sum(dim=1).tolist()
        features = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in features.items()}
        with torch.inference_mode():
            vectors = model.forward(features)["sentence_embedding"].float().cpu().numpy()
        return list(zip(vectors, counts, strict=True))

    def _classify_batch(self, inputs: list[str | TextPair]) -> list[tuple[np.ndarray, int]]:
        """Logits of the underlying sequence classifier, texts and pairs in separate passes.

        CrossEncoder.predict reads a list of two strings as one pair, so single texts go
        to the Hugging Face model directly (the same forward pass CrossEncoder makes).
        """
        import torch

        out: list[tuple[np.ndarray, int] | None] = [None] * len(inputs)
        singles = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        pairs = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        tok, model = self._model.tokenizer, self._model.model
        for idx, second in ((singles, False), (pairs, True)):
            if not idx:
                continue
            first_texts = [inputs[i] if not second else inputs[i][0] for i in idx]
            second_texts = [inputs[i][1] for i in idx] if second else None
            counts = self._token_counts(first_texts, second_texts)  # type: ignore[arg-type]
            enc = tok(
                first_texts,
                second_texts,
                padding=True,
                truncation=True,
                max_length=self._max_tokens,
                return_tensors="pt",
            ).to(model.device)
            with torch.inference_mode():
                logits = model(**enc).logits.float().cpu().numpy()
            probs = 1 / (1 + np.exp(-logits)) if logits.shape[1] == 1 else _softmax(logits)
            for j, i in enumerate(idx):
                out[i] = (probs[j].astype(np.float32), counts[j])
        return [x for x in out if x is not None]

    # ---------------------------------------------------------------- API

    def _require(self, task: Work) -> DynamicBatcher[Any, Any]:
        if self._batcher is None or self._info is None:
            raise EngineNotReadyError("the model is still loading")
        if task not in self._info.tasks:
            raise UnsupportedFeatureError(f"the model {self._info.name!r} cannot {task}")
        return self._batcher

    async def embed(self, inputs: list[PoolingInput]) -> EmbeddingResult:
        """Embed texts; token-id inputs are decoded to text first (docs/apis/embeddings.md)."""
        batcher = self._require("embed")
        tok = self._model.tokenizer
        for i, x in enumerate(inputs):
            if not isinstance(x, str) and any(not 0 <= t < len(tok) for t in x):
                raise InvalidParameterError(
                    f"input[{i}] has a token id outside the vocabulary (0..{len(tok) - 1})", "input"
                )
        texts = [x if isinstance(x, str) else tok.decode(x, skip_special_tokens=True) for x in inputs]
        if not self.config.truncate:
            await asyncio.to_thread(self._check_lengths, list(texts))
        out = await batcher.submit(texts)
        return EmbeddingResult(np.stack([v for v, _ in out]), [n for _, n in out])

    async def classify(self, inputs: list[str | TextPair]) -> ClassificationResult:
        """Probabilities per label (sigmoid for one label, softmax for several)."""
        batcher = self._require("classify")
        if not self.config.truncate:
            await asyncio.to_thread(self._check_lengths, list(inputs))
        out = await batcher.submit(inputs)
        return ClassificationResult(np.stack([p for p, _ in out]), self.info.labels, [n for _, n in out])

    async def score(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Cross-encoder relevance, or cosine similarity of embeddings."""
        if self.info.tasks[0] == "embed":
            result = await self.embed([query, *documents])
            v = result.vectors / np.maximum(np.linalg.norm(result.vectors, axis=1, keepdims=True), 1e-12)
            return [float(x) for x in v[1:] @ v[0]], sum(result.token_counts)
        batcher = self._require("score")
        pairs: list[str | TextPair] = [(query, d) for d in documents]
        if not self.config.truncate:
            await asyncio.to_thread(self._check_lengths, pairs)
        out = await batcher.submit(pairs)
        return [float(p[0]) for p, _ in out], sum(n for _, n in out)
