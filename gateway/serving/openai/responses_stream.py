"""The Responses API's event stream: `response.created`, output items opened, their
deltas (text, reasoning, function-call arguments), closed, then `response.completed` (or
`incomplete`, or `failed` with an `error` event), each with its sequence number."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson

from engine_adapters.base import GenerativeEngine, OutputParser
from gateway.continuation import ContinuationStore
from gateway.errors import classify
from gateway.machinery.engine_streams import Completion, Tagged, merge
from gateway.serving import tools as tooling
from gateway.serving.openai.responses_objects import (
    OutputItem,
    ResponseError,
    call_item,
    conversation_of,
    message_item,
    reasoning_item,
    response_object,
    status_of,
    usage,
)
from gateway.serving.openai.responses_store import save
from gateway.serving.openai.responses_turn import Turn, new_id


class _Events:
    """Responses stream events with their sequence numbers, framed for SSE."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = json.dumps({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return f"event: {kind}\ndata: {payload}\n\n".encode()

    def text_delta(self, item_id: str, index: int, text: str) -> bytes:
        # the hot path: only the text is encoded per token
        seq = self.seq
        self.seq += 1
        return (
            'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
            f'{seq},"item_id":"{item_id}","output_index":{index},"content_index":0,"delta":{orjson.dumps(text).decode()},'
            '"logprobs":[]}\n\n'
        ).encode()


class _Open:
    """The output item being streamed."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "text", "tool")

    def __init__(self, kind: str, index: int, call_id: str = "", name: str = "", tool: int = -1) -> None:
        self.kind = kind
        self.id = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind] + "_" + new_id()
        self.index = index
        self.text: list[str] = []
        self.call_id = call_id
        self.name = name
        self.tool = tool


def _opened(ev: _Events, item: _Open) -> list[bytes]:
    if item.kind == "message":
        return [
            ev(
                "response.output_item.added",
                output_index=item.index,
                item={**message_item("", item.id, "in_progress"), "content": []},
            ),
            ev(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]
    if item.kind == "reasoning":
        added = {**reasoning_item("", item.id), "content": []}
        return [ev("response.output_item.added", output_index=item.index, item=added)]
    added = {**call_item(item.call_id, item.name, "", item.id), "status": "in_progress"}
    return [ev("response.output_item.added", output_index=item.index, item=added)]


def _closed(ev: _Events, item: _Open) -> tuple[list[bytes], OutputItem]:
    text = "".join(item.text)
    if item.kind == "message":
        message = message_item(text, item.id)
        return [
            ev(
                "response.output_text.done",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                text=text,
                logprobs=[],
            ),
            ev(
                "response.content_part.done",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=message["content"][0],
            ),
            ev("response.output_item.done", output_index=item.index, item=message),
        ], message
    if item.kind == "reasoning":
        reasoning = reasoning_item(text, item.id)
        return [
            ev("response.reasoning_text.done", item_id=item.id, output_index=item.index, content_index=0, text=text),
            ev("response.output_item.done", output_index=item.index, item=reasoning),
        ], reasoning
    done = call_item(item.call_id, item.name, text, item.id)
    return [
        ev(
            "response.function_call_arguments.done",
            item_id=item.id,
            output_index=item.index,
            name=item.name,
            arguments=text,
        ),
        ev("response.output_item.done", output_index=item.index, item=done),
    ], done


async def response_stream(
    store: ContinuationStore,
    engine: GenerativeEngine,
    turn: Turn,
    streams: list[Tagged],
) -> AsyncIterator[bytes]:
    """The Responses event stream of one generation; the response is stored before
    `response.completed` goes out, so a client may read it back at once."""
    ev = _Events()
    yield ev("response.created", response=response_object(turn, "in_progress", []))
    yield ev("response.in_progress", response=response_object(turn, "in_progress", []))
    output: list[OutputItem] = []
    current: _Open | None = None
    parsers: list[OutputParser] | None = None
    c = Completion()
    try:
        first = True
        async for _, out in merge(streams):
            c.add(out)
            if first:
                first = False
                parsers = turn.tools.parsers(engine, turn.request, out.prompt_token_ids, 1)
            for d in out.deltas:
                if parsers is None:
                    pieces: list[tuple[str, Any]] = [("content", d.text)] if d.text else []
                else:
                    pd = parsers[0].parse_delta(d.text, d.token_ids, d.finish_reason is not None)
                    pieces = []
                    if pd is not None:
                        if pd.reasoning:
                            pieces.append(("reasoning", pd.reasoning))
                        if pd.content:
                            pieces.append(("content", pd.content))
                        pieces.extend(("call", tc) for tc in pd.tool_calls)
                for kind, value in pieces:
                    wanted = {"content": "message", "reasoning": "reasoning", "call": "function_call"}[kind]
                    new_call = kind == "call" and (current is None or current.tool != value.index)
                    if current is None or current.kind != wanted or new_call:
                        if current is not None:
                            frames, done = _closed(ev, current)
                            output.append(done)
                            for f in frames:
                                yield f
                        if kind == "call":
                            call_id = value.id or tooling.call_id()
                            current = _Open("function_call", len(output), call_id, value.name or "", value.index)
                        else:
                            current = _Open(wanted, len(output))
                        for f in _opened(ev, current):
                            yield f
                    if kind == "content":
                        current.text.append(value)
                        yield ev.text_delta(current.id, current.index, value)
                    elif kind == "reasoning":
                        current.text.append(value)
                        yield ev(
                            "response.reasoning_text.delta",
                            item_id=current.id,
                            output_index=current.index,
                            content_index=0,
                            delta=value,
                        )
                    elif value.arguments:
                        current.text.append(value.arguments)
                        yield ev(
                            "response.function_call_arguments.delta",
                            item_id=current.id,
                            output_index=current.index,
                            delta=value.arguments,
                        )
        if current is None:  # an empty answer is still one (empty) message
            current = _Open("message", 0)
            for f in _opened(ev, current):
                yield f
        frames, done = _closed(ev, current)
        output.append(done)
        for f in frames:
            yield f
        tokens = c.token_ids[0] if c.token_ids else []
        status, incomplete = status_of(c.finish_reasons[0] if c.finish_reasons else None)
        response = response_object(
            turn, status, output, usage(len(c.prompt_token_ids), len(tokens)), incomplete=incomplete
        )
        if turn.body.store:
            conversation = conversation_of(turn, engine, c.prompt_token_ids, tokens)
            await save(store, turn.key, turn.tenant, response, turn.input_items, conversation)
        yield ev("response.completed" if status == "completed" else "response.incomplete", response=response)
    except Exception as exc:  # after the 200 the only way to report is an event
        info = classify(exc)
        error: ResponseError = {"code": info.type, "message": info.message}
        yield ev("error", code=error["code"], message=info.message, param=info.param)
        yield ev("response.failed", response=response_object(turn, "failed", output, error=error))
