"""OpenAI's Responses API on the one pipeline, stateful on the continuation store.

A request's `instructions` and `input` items become chat messages (function calls become
an assistant message's `tool_calls`, their outputs `tool` messages) and go through the
same translation as chat: function tools with `tool_choice` "required" or a named
function are constrained decoding, "auto" uses the reader's tool-call parser, `text.format`
is a JSON constraint.

State. With `store` (the default) the finished response is kept in the continuation
store (memory or Redis: bounded, with a TTL), under a key scoped to the caller's API key,
as two entries: the response object with its input items, and the conversation's whole
token sequence. `previous_response_id` continues from that sequence: only the new turn is
rendered with the chat template (against a stand-in history, so the cost does not grow
with the conversation) and tokenized, then appended to the stored tokens. The engine sees
exactly the tokens of the earlier turns, so vLLM's prefix cache reuses them.

`background: true` runs the generation detached from the HTTP request; `GET` reads its
state and `POST .../cancel` aborts it in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import (
    Constraint,
    GenerationRequest,
    GenerativeEngine,
    OutputParser,
    ParsedOutput,
    SamplingOptions,
)
from gateway.continuation import ContinuationStore, decode_tokens, encode_tokens, scoped_key
from gateway.errors import BadRequest, Conflict, NotFound, classify
from gateway.middleware.guards import principal_of
from gateway.observability.metrics import STORE_WRITE_ERRORS
from gateway.protocols.responses import (
    UNSUPPORTED,
    BuiltinTool,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputText,
    MessageItem,
    NamedFunctionChoice,
    OtherItem,
    ReasoningItem,
    ResponsesRequest,
    TextFormatJSONObject,
    TextFormatJSONSchema,
)
from gateway.serving import tools as tooling
from gateway.serving.common import Completion, FastJSONResponse, Tagged, merge, new_request_id
from gateway.serving.limits import Fields
from gateway.serving.openai import UNLIMITED
from gateway.serving.openai_chat import ChatPlan, _arguments, output_parsers
from gateway.serving.pipeline import Generation, Pipeline, pipeline_of
from gateway.serving.routing import Target
from gateway.settings import Settings

log = logging.getLogger(__name__)

FIELDS = Fields(prompts="input", max_new_tokens="max_output_tokens", min_new_tokens="max_output_tokens")
# The assistant content of the stand-in history the next turn is rendered after.
_MARK = "\u2063gateway-turn\u2063"


def _hex() -> str:
    return uuid.uuid4().hex


# ----------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Turn:
    """A Responses request in neutral terms, and what its answer and its record need."""

    body: ResponsesRequest
    id: str
    plan: ChatPlan
    new_messages: list[dict[str, Any]]  # this turn's messages (no stored history)
    input_items: list[dict[str, Any]]  # this turn's input, as `input_items` lists it
    tools: list[dict[str, Any]]  # as the response object echoes them
    key: str  # store key of this response (scoped to the caller)
    prior_key: str | None  # store key of previous_response_id
    created_at: int = field(default_factory=lambda: int(time.time()))
    instructions_sent: bool = True  # the instructions are in this turn's messages


def _key(settings: Settings, tenant: str, response_id: str) -> str:
    return scoped_key(settings.continuation, tenant, "response\x1f" + response_id)


def _text_of(parts: str | Sequence[Any], param: str) -> str:
    if isinstance(parts, str):
        return parts
    out = []
    for j, p in enumerate(parts):
        if not isinstance(p, InputText):
            raise BadRequest(f"{param}[{j}]: content of type {p.type!r} is not supported", param=f"{param}[{j}].type")
        out.append(p.text if p.type != "refusal" else (p.refusal or p.text))
    return "".join(out)


def _item_dict(item: Any) -> dict[str, Any]:
    """An input item as `input_items` lists it: with an id and a status."""
    if isinstance(item, str):
        return {
            "id": f"msg_{_hex()}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": item}],
        }
    d = item.model_dump(mode="json", by_alias=True, exclude_none=True)
    prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
    d.setdefault("id", f"{prefix.get(d['type'], 'item')}_{_hex()}")
    if isinstance(item, MessageItem):
        if isinstance(item.content, str):
            kind = "output_text" if item.role == "assistant" else "input_text"
            d["content"] = [{"type": kind, "text": item.content}]
        d.setdefault("status", "completed")
    return d


def messages_of(instructions: str | None, items: str | Sequence[Any]) -> list[dict[str, Any]]:
    """Chat messages of `instructions` and the input items; a 400 naming the item otherwise."""
    out: list[dict[str, Any]] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    if isinstance(items, str):
        out.append({"role": "user", "content": items})
        return out
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            out.append({"role": role, "content": _text_of(item.content, param + ".content")})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": _arguments(item.arguments)},
            }
            names[item.call_id] = item.name
            last = out[-1] if out else None
            # calls right after the model's text (or other calls) are one assistant turn
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            message = {
                "role": "tool",
                "content": _text_of(item.output, param + ".output"),
                "tool_call_id": item.call_id,
            }
            if item.call_id in names:
                message["name"] = names[item.call_id]
            out.append(message)
        elif isinstance(item, ReasoningItem):
            continue  # earlier reasoning is not shown to the model again (as chat templates do)
        else:
            assert isinstance(item, OtherItem)
            raise BadRequest(f"{param}: input items of type {item.type!r} are not supported", param=f"{param}.type")
    return out


def _tools(body: ResponsesRequest, settings: Settings) -> tuple[list[tooling.Tool], list[dict[str, Any]]]:
    tools: list[tooling.Tool] = []
    echoed: list[dict[str, Any]] = []
    for i, t in enumerate(body.tools or []):
        if isinstance(t, BuiltinTool):
            if settings.responses.drop_builtin_tools:
                continue
            raise BadRequest(
                f"tools[{i}]: the tool type {t.type!r} runs on OpenAI's servers and is not available here "
                "(function tools are; responses.drop_builtin_tools ignores such tools)",
                param=f"tools[{i}].type",
            )
        parameters = t.parameters or {"type": "object", "properties": {}}
        tools.append(tooling.Tool(t.name, t.description, parameters))
        echoed.append(
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": parameters,
                "strict": t.strict if t.strict is not None else True,
            }
        )
    tooling.check_tools(tools, "tools", nested=False)
    return tools, echoed


def _mode(body: ResponsesRequest, tools: list[tooling.Tool]) -> tuple[str, tooling.Tool | None]:
    choice = body.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        if not tools:
            raise BadRequest("tool_choice names a function, but tools has none", param="tool_choice")
        return "function", tooling.named(tools, choice.name, "tool_choice")
    if not tools:
        if choice == "required":
            raise BadRequest("tool_choice required needs function tools", param="tool_choice")
        return "none", None
    return choice or "auto", None


def _constraint(body: ResponsesRequest) -> Constraint | None:
    fmt = body.text.format if body.text is not None else None
    if isinstance(fmt, TextFormatJSONObject):
        return Constraint(kind="json_object", value=True, param="text.format")
    if isinstance(fmt, TextFormatJSONSchema):
        return Constraint(kind="json", value=fmt.json_schema, param="text.format.schema")
    return None


def plan_turn(body: ResponsesRequest, settings: Settings, tenant: str) -> Turn:
    """Translate a Responses request (without its stored history) into a turn."""
    extra = body.model_extra or {}
    for name in UNSUPPORTED:
        if extra.get(name) not in (None, [], {}, 0):
            raise BadRequest(f"{name} is not supported by this server", param=name)
    if body.input is None and body.previous_response_id is None:
        raise BadRequest("input is required", param="input")
    if body.background and not body.store:
        raise BadRequest("background responses are stored: background needs store true", param="background")
    if body.background and body.stream:
        raise BadRequest("streaming a background response is not supported; poll GET instead", param="background")
    tools, echoed = _tools(body, settings)
    mode, choice = _mode(body, tools)
    constraint = _constraint(body)
    if mode in ("required", "function"):
        if constraint is not None:
            raise BadRequest(f"tool_choice {mode} cannot be combined with text.format", param="text.format")
        constraint = tooling.constraint(tools, choice, body.parallel_tool_calls is not False, "tool_choice")
    limit = settings.max_new_tokens_limit
    max_tokens = body.max_output_tokens if body.max_output_tokens is not None else (limit or UNLIMITED)
    sampling = SamplingOptions(
        max_new_tokens=max_tokens,
        temperature=body.temperature if body.temperature is not None else 1.0,
        top_p=body.top_p if body.top_p is not None else 1.0,
        top_k=max(body.top_k or 0, 0),
        seed=body.seed,
    )
    kwargs = {}
    if body.reasoning is not None and body.reasoning.effort is not None:
        kwargs["reasoning_effort"] = body.reasoning.effort
    messages = messages_of(body.instructions, body.input or [])
    items = (
        []
        if body.input is None
        else [_item_dict(body.input)]
        if isinstance(body.input, str)
        else [_item_dict(i) for i in body.input]
    )
    request = GenerationRequest(
        request_id=new_request_id("resp"),
        messages=messages,
        sampling=sampling,
        constraint=constraint,
        stream=body.stream,
        tools=[t.template_dict() for t in tools] or None,
        tool_choice=mode,  # type: ignore[arg-type]
        chat_template_kwargs=kwargs or None,
    )
    response_id = f"resp_{_hex()}"
    prior = _key(settings, tenant, body.previous_response_id) if body.previous_response_id else None
    return Turn(
        body,
        response_id,
        ChatPlan(request, tools, mode, choice),
        messages,
        items,
        echoed,
        _key(settings, tenant, response_id),
        prior,
    )


# ----------------------------------------------------------------------------- the store
# Two entries per stored response: "rsp:<key>" the response object and its input items
# (JSON), "rsq:<key>" a one-line JSON header (model, whether the tokens end with the
# end-of-sequence token, the instructions) then the conversation's token ids.


def _record_key(key: str) -> str:
    return "rsp:" + key


def _sequence_key(key: str) -> str:
    return "rsq:" + key


@dataclass(slots=True)
class Sequence_:
    """A stored conversation: its tokens and what continuing it needs to know."""

    model: str
    ends_with_eos: bool
    instructions: str | None
    tokens: list[int]


def _encode_sequence(s: Sequence_) -> bytes:
    header = orjson.dumps({"model": s.model, "eos": s.ends_with_eos, "instructions": s.instructions})
    return header + b"\n" + encode_tokens(s.tokens)


def _decode_sequence(data: bytes) -> Sequence_:
    header, _, tokens = data.partition(b"\n")
    h = orjson.loads(header)
    return Sequence_(h["model"], h["eos"], h["instructions"], decode_tokens(tokens))


async def load_record(store: ContinuationStore, key: str) -> dict[str, Any] | None:
    """The stored response object and input items of `key`, or None."""
    data = await store.get_bytes(_record_key(key))
    return None if data is None else orjson.loads(data)


async def _save(
    store: ContinuationStore, key: str, response: dict[str, Any], items: list[dict[str, Any]], seq: Sequence_ | None
) -> None:
    """Best effort: the client has its answer even if the store fails (logged, counted)."""
    try:
        if seq is not None:
            await store.put_bytes(_sequence_key(key), _encode_sequence(seq))
        if not await store.put_bytes(_record_key(key), orjson.dumps({"response": response, "input_items": items})):
            log.warning("response %s exceeds the store's max_bytes; not stored", response["id"])
    except Exception as exc:
        STORE_WRITE_ERRORS.inc()
        log.error("could not store response %s (the answer was sent): %s", response["id"], exc)


def _tail(engine: GenerativeEngine, messages: list[dict[str, Any]]) -> str | None:
    """The text that follows a stored assistant turn: its closing, `messages`, and the
    generation prompt, rendered after a stand-in history. None if the chat template does
    not render turns independently of what came before."""
    standin = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    base = engine.render_chat(standin, add_generation_prompt=False)
    full = engine.render_chat(standin + messages, add_generation_prompt=True)
    end = base.rfind(_MARK)
    if end < 0:
        return None
    end += len(_MARK)
    if full[:end] != base[:end]:
        return None
    return full[end:]


async def continue_turn(store: ContinuationStore, engine: GenerativeEngine, turn: Turn) -> None:
    """Point the turn's request at the stored sequence of `previous_response_id` plus this
    turn's rendered messages; a 404 if the caller has no such response."""
    assert turn.prior_key is not None
    data = await store.get_bytes(_sequence_key(turn.prior_key))
    if data is None:
        raise NotFound(
            f"no stored response {turn.body.previous_response_id!r} (unknown, expired, deleted or not stored)",
            param="previous_response_id",
        )
    prior = _decode_sequence(data)
    if prior.model != engine.info.name:
        raise BadRequest(
            f"previous_response_id was generated by {prior.model!r}; continue it with the same model",
            param="previous_response_id",
        )
    messages = turn.new_messages
    # Clients resend the same instructions every turn; they are in the stored tokens already.
    if turn.body.instructions and turn.body.instructions == prior.instructions:
        messages = messages[1:]
        turn.instructions_sent = False
    if not messages:
        raise BadRequest("input is required", param="input")
    tail = _tail(engine, messages)
    if tail is None:
        raise BadRequest(
            "this model's chat template cannot continue a stored conversation; send the whole conversation as input",
            param="previous_response_id",
        )
    if prior.ends_with_eos and engine.info.eos_token_id is not None:
        eos = engine.token_strings([engine.info.eos_token_id])[0]
        tail = tail.removeprefix(eos)
    request = turn.plan.request
    request.prompt_token_ids = prior.tokens + await engine.tokenize(tail, add_special_tokens=False)
    request.messages = None


# ----------------------------------------------------------------------------- answers


def _usage(prompt: int, output: int, reasoning: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def response_object(
    turn: Turn,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """The `response` object, as OpenAI's API reference describes it."""
    b = turn.body
    fmt = b.text.format if b.text is not None and b.text.format is not None else None
    tool_choice: Any = b.tool_choice
    if isinstance(tool_choice, NamedFunctionChoice):
        tool_choice = {"type": "function", "name": tool_choice.name}
    return {
        "id": turn.id,
        "object": "response",
        "created_at": turn.created_at,
        "status": status,
        "background": b.background,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": b.instructions,
        "max_output_tokens": b.max_output_tokens,
        "metadata": b.metadata or {},
        "model": b.model,
        "output": output,
        "parallel_tool_calls": b.parallel_tool_calls is not False,
        "previous_response_id": b.previous_response_id,
        "reasoning": {"effort": b.reasoning.effort if b.reasoning else None, "summary": None},
        "store": b.store,
        "temperature": b.temperature if b.temperature is not None else 1.0,
        "text": {"format": fmt.model_dump(mode="json", by_alias=True) if fmt is not None else {"type": "text"}},
        "tool_choice": tool_choice or ("auto" if turn.tools else "none"),
        "tools": turn.tools,
        "top_p": b.top_p if b.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": b.user,
    }


def _status(finish: str | None) -> tuple[str, str | None]:
    if finish == "length":
        return "incomplete", "max_output_tokens"
    return "completed", None


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    """An assistant message output item."""
    return {
        "id": item_id or f"msg_{_hex()}",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def reasoning_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    """A reasoning output item (the reader's reasoning parser split it off)."""
    return {
        "id": item_id or f"rs_{_hex()}",
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def call_item(call_id: str, name: str, arguments: str, item_id: str | None = None) -> dict[str, Any]:
    """A function call output item."""
    return {
        "id": item_id or f"fc_{_hex()}",
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def output_items(parsed: ParsedOutput) -> list[dict[str, Any]]:
    """The output items of a whole answer: reasoning, text, function calls, in that order."""
    out: list[dict[str, Any]] = []
    if parsed.reasoning:
        out.append(reasoning_item(parsed.reasoning))
    if parsed.content or not parsed.tool_calls:
        out.append(message_item(parsed.content or ""))
    out.extend(call_item(c.id, c.name, c.arguments) for c in parsed.tool_calls)
    return out


def _parse(parsers: list[OutputParser] | None, c: Completion) -> ParsedOutput:
    text = c.texts[0] if c.texts else ""
    if parsers is None:
        return ParsedOutput(content=text)
    return parsers[0].parse(text, c.token_ids[0])


def _sequence(turn: Turn, engine: GenerativeEngine, prompt: Sequence[int], output: Sequence[int]) -> Sequence_:
    eos = engine.info.eos_token_id
    instructions = turn.body.instructions
    return Sequence_(engine.info.name, bool(output) and output[-1] == eos, instructions, [*prompt, *output])


async def finish(store: ContinuationStore, engine: GenerativeEngine, turn: Turn, c: Completion) -> dict[str, Any]:
    """The whole response of a finished generation; stored when asked to."""
    parsers = output_parsers(engine, turn.plan, c.prompt_token_ids, 1)
    parsed = _parse(parsers, c)
    status, incomplete = _status(c.finish_reasons[0] if c.finish_reasons else None)
    tokens = c.token_ids[0] if c.token_ids else []
    response = response_object(
        turn, status, output_items(parsed), _usage(len(c.prompt_token_ids), len(tokens)), incomplete=incomplete
    )
    if turn.body.store:
        seq = _sequence(turn, engine, c.prompt_token_ids, tokens)
        await _save(store, turn.key, response, turn.input_items, seq)
    return response


# ----------------------------------------------------------------------------- streaming


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
        self.id = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind] + "_" + _hex()
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


def _closed(ev: _Events, item: _Open) -> tuple[list[bytes], dict[str, Any]]:
    text = "".join(item.text)
    if item.kind == "message":
        done = message_item(text, item.id)
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
                part=done["content"][0],
            ),
            ev("response.output_item.done", output_index=item.index, item=done),
        ], done
    if item.kind == "reasoning":
        done = reasoning_item(text, item.id)
        return [
            ev("response.reasoning_text.done", item_id=item.id, output_index=item.index, content_index=0, text=text),
            ev("response.output_item.done", output_index=item.index, item=done),
        ], done
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
    output: list[dict[str, Any]] = []
    current: _Open | None = None
    parsers: list[OutputParser] | None = None
    c = Completion()
    try:
        first = True
        async for _, out in merge(streams):
            c.add(out)
            if first:
                first = False
                parsers = output_parsers(engine, turn.plan, out.prompt_token_ids, 1)
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
        status, incomplete = _status(c.finish_reasons[0] if c.finish_reasons else None)
        response = response_object(
            turn, status, output, _usage(len(c.prompt_token_ids), len(tokens)), incomplete=incomplete
        )
        if turn.body.store:
            await _save(
                store, turn.key, response, turn.input_items, _sequence(turn, engine, c.prompt_token_ids, tokens)
            )
        yield ev("response.completed" if status == "completed" else "response.incomplete", response=response)
    except Exception as exc:  # after the 200 the only way to report is an event
        info = classify(exc)
        error = {"code": info.type, "message": info.message}
        yield ev("error", code=error["code"], message=info.message, param=info.param)
        yield ev("response.failed", response=response_object(turn, "failed", output, error=error))


# ----------------------------------------------------------------------------- serving


async def create(request: Request, body: ResponsesRequest) -> Response:
    """`POST /v1/responses`: whole, streamed, or in the background."""
    pipeline = pipeline_of(request)
    store = pipeline.store
    turn = plan_turn(body, pipeline.settings, principal_of(request.scope).name)

    async def prepare(engine: GenerativeEngine) -> None:
        if turn.prior_key is not None:
            await continue_turn(store, engine, turn)

    async def answer(engine: GenerativeEngine, completions: list[Completion]) -> Response:
        return FastJSONResponse(await finish(store, engine, turn, completions[0]))

    generation = Generation(
        requests=[turn.plan.request],
        answer=answer,
        events=lambda engine, streams: response_stream(store, engine, turn, streams),
        stream=body.stream,
        target=Target(body.model, param="model", by_model=True),
        timeout=body.timeout,
        priority=body.priority,
        fields=FIELDS,
        prepare=prepare,
        detach=(lambda task: _detach(pipeline, turn, task)) if body.background else None,
    )
    if not body.background:
        return await pipeline.generate(request, generation)
    queued = response_object(turn, "in_progress", [])
    await _save(store, turn.key, queued, turn.input_items, None)
    try:
        return await pipeline.generate(request, generation)
    except BaseException:
        with contextlib.suppress(Exception):
            await store.delete(_record_key(turn.key))
        raise


def _detach(pipeline: Pipeline, turn: Turn, task: asyncio.Task[Response]) -> Response:
    pipeline.detached[turn.key] = task

    def settled(t: asyncio.Task[Response]) -> None:
        pipeline.detached.pop(turn.key, None)
        if t.cancelled():
            return  # the cancel request records the cancellation
        exc = t.exception()
        if exc is not None:
            info = classify(exc)
            failed = response_object(turn, "failed", [], error={"code": info.type, "message": info.message})
            pipeline.spawn(_save(pipeline.store, turn.key, failed, turn.input_items, None))

    task.add_done_callback(settled)
    return FastJSONResponse(response_object(turn, "in_progress", []))


async def _stored(request: Request, response_id: str) -> tuple[Pipeline, str, dict[str, Any]]:
    pipeline = pipeline_of(request)
    key = _key(pipeline.settings, principal_of(request.scope).name, response_id)
    record = await load_record(pipeline.store, key)
    if record is None:
        raise NotFound(f"no stored response {response_id!r}", param="response_id")
    return pipeline, key, record


async def retrieve(request: Request, response_id: str) -> Response:
    """`GET /v1/responses/{id}`: a stored response, or a background one's current state."""
    _, _, record = await _stored(request, response_id)
    return FastJSONResponse(record["response"])


async def delete(request: Request, response_id: str) -> Response:
    """`DELETE /v1/responses/{id}`: forget a stored response (and cancel it if running here)."""
    pipeline, key, _ = await _stored(request, response_id)
    task = pipeline.detached.get(key)
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    await pipeline.store.delete(_sequence_key(key))
    await pipeline.store.delete(_record_key(key))
    return FastJSONResponse({"id": response_id, "object": "response", "deleted": True})


async def cancel(request: Request, response_id: str) -> Response:
    """`POST /v1/responses/{id}/cancel`: stop a background response (the engine request
    is aborted); a finished one is answered as it is."""
    pipeline, key, record = await _stored(request, response_id)
    response = record["response"]
    if not response.get("background"):
        raise BadRequest("only background responses can be cancelled", param="response_id")
    task = pipeline.detached.get(key)
    if task is None:
        if response["status"] in ("queued", "in_progress"):
            raise Conflict("the response is running on another replica; cancel it there", param="response_id")
        return FastJSONResponse(response)
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    response = {**response, "status": "cancelled"}
    await _save(pipeline.store, key, response, record["input_items"], None)
    return FastJSONResponse(response)


async def input_items(
    request: Request, response_id: str, limit: int, order: str, after: str | None, before: str | None
) -> Response:
    """`GET /v1/responses/{id}/input_items`: the input of that response, paginated."""
    _, _, record = await _stored(request, response_id)
    items: list[dict[str, Any]] = record["input_items"]
    if order == "desc":
        items = items[::-1]
    ids = [i["id"] for i in items]
    for cursor, name in ((after, "after"), (before, "before")):
        if cursor is not None and cursor not in ids:
            raise BadRequest(f"{name} is not an item of this response", param=name)
    if after is not None:
        items = items[ids.index(after) + 1 :]
        ids = ids[ids.index(after) + 1 :]
    if before is not None:
        items = items[: ids.index(before)]
    page = items[:limit]
    return FastJSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
