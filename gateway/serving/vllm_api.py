"""vLLM's own server paths onto the gateway's readers, in vLLM's bodies and answers:
`/tokenize`, `/detokenize`, `/score`, `/pooling`, `/classify` (with `input`) and
SageMaker's `/invocations`, which picks the API by the body's fields as vLLM does.

Every one goes through the pipeline like the gateway's own paths (keys, groups, limits,
the deadline, disconnects); `model` names a group or a served model name as on `/v1`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import numpy as np
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import GenerativeEngine
from gateway.errors import BadRequest, validation_message
from gateway.machinery.bodies import FastJSONResponse
from gateway.machinery.pipeline import pipeline_of
from gateway.machinery.routing import Target
from gateway.protocols.embeddings import EmbeddingRequest, RerankRequest
from gateway.protocols.openai import ChatCompletionRequest, CompletionRequest
from gateway.protocols.vllm import (
    UNSUPPORTED,
    ClassifyRequest,
    DetokenizeRequest,
    PoolingRequest,
    ScoreRequest,
    TokenizeRequest,
)
from gateway.registry import Reader
from gateway.serving import embeddings
from gateway.serving.openai import chat
from gateway.serving.openai import completions as text_completions
from gateway.serving.openai.chat import message_dict
from gateway.serving.openai.common import refuse_unsupported


def _generative(reader: Reader) -> GenerativeEngine:
    if reader.task != "generate":
        raise BadRequest(f"the model of group {reader.group!r} has no tokenizer routes ({reader.task})", param="model")
    return reader.generative()


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}


async def tokenize(request: Request, body: TokenizeRequest) -> dict[str, Any]:
    """Token ids of a prompt, or of chat messages as the chat template renders them."""
    refuse_unsupported(body.model_extra, UNSUPPORTED)
    pipeline = pipeline_of(request)
    limit = pipeline.settings.max_tokenize_chars
    size = len(body.prompt) if body.prompt is not None else len(body.model_dump_json())
    if size > limit:
        raise BadRequest(f"the input has {size} characters; at most {limit} are allowed", param="prompt")
    if body.continue_final_message:
        raise BadRequest("continue_final_message is not supported on /tokenize", param="continue_final_message")

    async def work(reader: Reader) -> dict[str, Any]:
        engine = _generative(reader)
        if body.prompt is not None:
            special = True if body.add_special_tokens is None else body.add_special_tokens
            ids = await engine.tokenize(body.prompt, add_special_tokens=special)
        else:
            messages = [message_dict(m) for m in body.messages or ()]
            tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
            text = await asyncio.to_thread(engine.render_chat, messages, body.add_generation_prompt, tools)
            ids = await engine.tokenize(text, add_special_tokens=bool(body.add_special_tokens))
        return {
            "count": len(ids),
            "max_model_len": engine.info.max_model_len,
            "tokens": ids,
            "token_strs": engine.token_strings(ids) if body.return_token_strs else None,
        }

    return await pipeline.on_target(request, Target(body.model, param="model", by_model=True), work)


async def detokenize(request: Request, body: DetokenizeRequest) -> dict[str, str]:
    """The text of token ids."""
    refuse_unsupported(body.model_extra, UNSUPPORTED)
    pipeline = pipeline_of(request)
    limit = pipeline.settings.max_tokenize_chars
    if len(body.tokens) > limit:
        raise BadRequest(f"tokens has {len(body.tokens)} entries; at most {limit} are allowed", param="tokens")

    async def work(reader: Reader) -> dict[str, str]:
        engine = _generative(reader)
        return {"prompt": await engine.detokenize(body.tokens, skip_special_tokens=True)}

    return await pipeline.on_target(request, Target(body.model, param="model", by_model=True), work)


async def score(request: Request, body: ScoreRequest) -> Response:
    """A score per pair: one first text against every second one, or pair by pair."""
    refuse_unsupported(body.model_extra, UNSUPPORTED)
    first, second, second_name = body.sides()
    if len(first) != 1 and len(first) != len(second):
        raise BadRequest(f"give one first text, or as many as the {len(second)} of {second_name}", param=second_name)
    pairs = [(first[0] if len(first) == 1 else first[i], doc) for i, doc in enumerate(second)]

    async def work(reader: Reader) -> Response:
        engine = reader.pooling()
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        results = await asyncio.gather(
            *(engine.score(query, [pairs[i][1] for i in rows]) for query, rows in by_query.items())
        )
        scores = [0.0] * len(pairs)
        tokens = 0
        for (_, rows), (values, used) in zip(by_query.items(), results, strict=True):
            tokens += used
            for i, value in zip(rows, values, strict=True):
                scores[i] = float(value)
        embeddings.note_tokens(tokens)
        return FastJSONResponse(
            {
                "id": f"score-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": body.model or engine.info.name,
                "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
                "usage": _usage(tokens),
            }
        )

    target = Target(body.model, task="score", param="model", by_model=True)
    return await pipeline_of(request).pool(request, target, len(pairs), second_name, work)


def _inputs(value: Any) -> list[Any]:
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        return [value]
    return list(value)


async def pooling(request: Request, body: PoolingRequest) -> Response:
    """The pooled output of each input: its embedding (embed models) or its class
    probabilities (classifiers)."""
    refuse_unsupported(body.model_extra, UNSUPPORTED)
    inputs = _inputs(body.input)
    task = body.task or "embed"

    async def work(reader: Reader) -> Response:
        engine = reader.pooling()
        if reader.task == "classify":
            if task != "classify" and body.task is not None:
                raise BadRequest(f"the model of group {reader.group!r} classifies", param="task")
            if any(not isinstance(x, str) for x in inputs):
                raise BadRequest("a classifier takes texts", param="input")
            classified = await engine.classify(inputs)
            rows: list[Any] = [list(map(float, p)) for p in classified.probabilities]
            tokens = sum(classified.token_counts)
        else:
            if task != "embed":
                raise BadRequest(f"the model of group {reader.group!r} embeds", param="task")
            embedded = await engine.embed(inputs)
            rows = list(np.asarray(embedded.vectors, dtype="<f4"))
            tokens = sum(embedded.token_counts)
        embeddings.note_tokens(tokens)
        return FastJSONResponse(
            {
                "id": f"pool-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": body.model or engine.info.name,
                "data": [{"index": i, "object": "pooling", "data": row} for i, row in enumerate(rows)],
                "usage": _usage(tokens),
            }
        )

    target = Target(body.model, task="classify" if body.task == "classify" else "embed", param="model", by_model=True)
    return await pipeline_of(request).pool(request, target, len(inputs), "input", work)


async def classify(request: Request, body: ClassifyRequest) -> Response:
    """vLLM's classification answer: per input, the top label and every probability."""
    refuse_unsupported(body.model_extra, UNSUPPORTED)
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)

    async def work(reader: Reader) -> Response:
        engine = reader.pooling()
        result = await engine.classify(list(inputs))
        tokens = sum(result.token_counts)
        embeddings.note_tokens(tokens)
        data = []
        for i, probs in enumerate(result.probabilities):
            values = [float(p) for p in probs]
            top = max(range(len(values)), key=values.__getitem__)
            label = result.labels[top] if top < len(result.labels) else None
            data.append({"index": i, "label": label, "probs": values, "num_classes": len(values)})
        return FastJSONResponse(
            {
                "id": f"classify-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": body.model or engine.info.name,
                "data": data,
                "usage": _usage(tokens),
            }
        )

    target = Target(body.model, task="classify", param="model", by_model=True)
    return await pipeline_of(request).pool(request, target, len(inputs), "input", work)


def _parsed(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return TypeAdapter(model).validate_python(data)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise BadRequest(message.removeprefix("invalid request: "), param=param) from None


async def invocations(request: Request) -> Response:
    """SageMaker's one path: the API is told by the body's fields, as vLLM tells it
    (`messages`: chat; `prompt`: completions; `input`: embeddings; `query` and
    `documents`: re-ranking; `text_1`/`queries`/`data_1`: scores)."""
    try:
        data = await request.json()
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    if "messages" in data:
        return await chat.chat(request, _parsed(ChatCompletionRequest, data))
    if "prompt" in data:
        return await text_completions.completions(request, _parsed(CompletionRequest, data))
    if "query" in data and "documents" in data:
        return await embeddings.rerank(request, _parsed(RerankRequest, data))
    if "input" in data:
        return await embeddings.openai_embeddings(request, _parsed(EmbeddingRequest, data))
    if any(k in data for k in ("text_1", "queries", "data_1")):
        return await score(request, _parsed(ScoreRequest, data))
    raise BadRequest(
        "cannot tell the API of the body: send messages (chat), prompt (completions), input "
        "(embeddings), query and documents (re-ranking), or text_1 and text_2 (scores)"
    )
