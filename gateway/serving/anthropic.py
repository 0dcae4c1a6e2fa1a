"""Anthropic's Messages API onto the one pipeline: `/v1/messages` (whole or streamed) and
`/v1/messages/count_tokens`, for the Anthropic SDKs and Claude Code.

`system` and the messages become chat messages (an assistant turn's `tool_use` blocks its
`tool_calls`, a user turn's `tool_result` blocks `tool` messages), rendered by the reader's
chat template. Tools and tool choice translate as for every API (gateway/serving/tools.py):
`any` and `tool` are constrained decoding against the tools' input schemas, so the input is
schema-valid on any model; `auto` is the reader's tool-call parser. A reader with a
reasoning parser answers with `thinking` blocks. Streams follow Anthropic's event sequence
(`message_start`, `content_block_*`, `message_delta`, `message_stop`, `ping` while idle).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import GenerationRequest, GenerativeEngine, OutputParser, ParsedOutput
from gateway.errors import BadRequest, NotFound, anthropic_error
from gateway.machinery.bodies import FastJSONResponse
from gateway.machinery.engine_streams import Completion, Tagged, merge, new_request_id
from gateway.machinery.limits import Fields
from gateway.machinery.pipeline import Generation, pipeline_of
from gateway.machinery.routing import Target
from gateway.protocols.anthropic import (
    CountTokensRequest,
    Message,
    MessagesRequest,
    OtherBlock,
    ServerTool,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from gateway.registry import Reader
from gateway.serving import tools as tooling
from gateway.serving.catalog import entries_for
from gateway.serving.sampling import sampling
from gateway.settings import Settings

FIELDS = Fields(prompts="messages", max_new_tokens="max_tokens", min_new_tokens="max_tokens", stop="stop_sequences")
PING = b'event: ping\ndata: {"type": "ping"}\n\n'

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class AnthropicUsage(TypedDict):
    """Anthropic's `usage`."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


def _usage(prompt: int, output: int) -> AnthropicUsage:
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


# ----------------------------------------------------------------------------- requests


def _text(blocks: list[Any], param: str) -> str:
    out = []
    for j, b in enumerate(blocks):
        if isinstance(b, TextBlock):
            out.append(b.text)
        else:
            raise BadRequest(
                f"{param}[{j}]: blocks of this type are not supported here (text only)", param=f"{param}[{j}].type"
            )
    return "\n".join(out)


def _refuse(block: OtherBlock, param: str) -> BadRequest:
    what = "image and document blocks are" if block.type in ("image", "document") else "blocks of this type are"
    return BadRequest(f"{param}: {what} not supported by this server (text, tool_use, tool_result)", param=param)


def system_of(system: str | list[TextBlock] | None) -> str | None:
    """The system prompt as one text."""
    if system is None or isinstance(system, str):
        return system or None
    return "\n".join(b.text for b in system) or None


def messages_of(system: str | list[TextBlock] | None, messages: list[Message]) -> list[dict[str, Any]]:
    """Chat messages of the system prompt and the turns; a 400 naming a block that cannot be
    read (images, documents, server tool results)."""
    out: list[dict[str, Any]] = []
    prompt = system_of(system)
    if prompt:
        out.append({"role": "system", "content": prompt})
    names: dict[str, str] = {}
    for i, m in enumerate(messages):
        param = f"messages[{i}].content"
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(m.content):
            where = f"{param}[{j}]"
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, ToolUseBlock):
                if m.role != "assistant":
                    raise BadRequest(f"{where}: tool_use blocks belong to assistant turns", param=where)
                names[block.id] = block.name
                calls.append(
                    {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": block.input}}
                )
            elif isinstance(block, ToolResultBlock):
                if m.role != "user":
                    raise BadRequest(f"{where}: tool_result blocks belong to user turns", param=where)
                content = block.content if isinstance(block.content, str) else _text(block.content, f"{where}.content")
                result: dict[str, Any] = {
                    "role": "tool",
                    "content": f"Error: {content}" if block.is_error else content,
                    "tool_call_id": block.tool_use_id,
                }
                if block.tool_use_id in names:
                    result["name"] = names[block.tool_use_id]
                out.append(result)
            elif isinstance(block, ThinkingBlock):
                continue  # earlier thinking is not shown to the model again (as chat templates do)
            else:
                assert isinstance(block, OtherBlock)
                raise _refuse(block, where)
        if (
            texts
            or (m.role == "assistant" and calls)
            or (m.role == "user" and not any(isinstance(b, ToolResultBlock) for b in m.content))
        ):
            message: dict[str, Any] = {"role": m.role, "content": "\n".join(texts)}
            if calls:
                message["tool_calls"] = calls
            out.append(message)
    return out


def tool_use_of(body: MessagesRequest | CountTokensRequest) -> tooling.ToolUse:
    """The request's client tools and tool choice (`any` is "required", `tool` a named one)."""
    tools = []
    for i, t in enumerate(body.tools or []):
        if isinstance(t, ServerTool):
            raise BadRequest(
                f"tools[{i}]: tools of this type run on Anthropic's servers and are not available here "
                "(client tools with an input_schema are)",
                param=f"tools[{i}].type",
            )
        tools.append(tooling.Tool(t.name, t.description, t.input_schema))
    tooling.check_tools(tools, "tools", schema_field="input_schema")
    choice = body.tool_choice
    if choice is None:
        return tooling.tool_use(tools, None, None, parallel=True)
    if choice.type == "tool":
        if not choice.name:
            raise BadRequest("tool_choice of type tool needs the tool's name", param="tool_choice.name")
        return tooling.tool_use(tools, None, choice.name, parallel=not choice.disable_parallel_tool_use)
    mode = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    return tooling.tool_use(tools, mode, None, parallel=not choice.disable_parallel_tool_use)


@dataclass(slots=True)
class Plan:
    """A Messages request in neutral terms, and what its answer needs."""

    body: MessagesRequest
    request: GenerationRequest
    tools: tooling.ToolUse
    thinking: bool
    id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex[:24]}")


def plan(body: MessagesRequest, settings: Settings) -> Plan:
    """The neutral request of a Messages request."""
    tools = tool_use_of(body)
    thinking = body.thinking is not None and body.thinking.type != "disabled"
    kwargs = {"enable_thinking": thinking} if body.thinking is not None else None
    request = GenerationRequest(
        request_id=new_request_id("msg"),
        messages=messages_of(body.system, body.messages),
        sampling=sampling(
            settings,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            stop=body.stop_sequences,
        ),
        constraint=tools.constraint(None, "tool_choice"),
        stream=body.stream,
        tools=tools.template_tools(),
        tool_choice=tools.mode,
        chat_template_kwargs=kwargs,
    )
    return Plan(body, request, tools, thinking)


# ----------------------------------------------------------------------------- answers


def stop_reason_of(finish: str | None, stop: str | int | None, called: bool) -> tuple[StopReason, str | None]:
    """Anthropic's stop reason (and the stop sequence that ended the answer) of a finish."""
    if called and finish in ("stop", None):
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    if isinstance(stop, str):
        return "stop_sequence", stop
    return "end_turn", None


def _input_of(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def content_of(parsed: ParsedOutput) -> list[dict[str, Any]]:
    """The content blocks of a whole answer: thinking, text, tool calls, in that order."""
    blocks: list[dict[str, Any]] = []
    if parsed.reasoning:
        blocks.append({"type": "thinking", "thinking": parsed.reasoning, "signature": ""})
    if parsed.content or not parsed.tool_calls:
        blocks.append({"type": "text", "text": parsed.content or ""})
    blocks += [
        {"type": "tool_use", "id": _tool_id(c.id), "name": c.name, "input": _input_of(c.arguments)}
        for c in parsed.tool_calls
    ]
    return blocks


def _tool_id(call_id: str | None) -> str:
    return "toolu_" + (call_id or uuid.uuid4().hex).removeprefix("call_")


def message_object(p: Plan, engine: GenerativeEngine, c: Completion) -> dict[str, Any]:
    """A whole `message` object."""
    parsers = p.tools.parsers(engine, p.request, c.prompt_token_ids, 1)
    text = c.texts[0] if c.texts else ""
    parsed = parsers[0].parse(text, c.token_ids[0]) if parsers else ParsedOutput(content=text)
    if not p.thinking:
        parsed.reasoning = None
    finish = c.finish_reasons[0] if c.finish_reasons else None
    reason, sequence = stop_reason_of(finish, c.stop_reasons[0] if c.stop_reasons else None, bool(parsed.tool_calls))
    return {
        "id": p.id,
        "type": "message",
        "role": "assistant",
        "model": p.body.model,
        "content": content_of(parsed),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": _usage(len(c.prompt_token_ids), c.completion_tokens),
    }


# ----------------------------------------------------------------------------- streaming


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


def _text_delta(index: int, text: str) -> bytes:
    # the hot path: only the text is encoded per token
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
        + str(index).encode()
        + b',"delta":{"type":"text_delta","text":'
        + orjson.dumps(text)
        + b"}}\n\n"
    )


class _Blocks:
    """The content block being streamed, opened and closed as the kind changes."""

    __slots__ = ("index", "kind", "tool")

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None
        self.tool = -1  # the tool call index of an open tool_use block

    def open(self, kind: str, block: dict[str, Any], tool: int = -1) -> list[bytes]:
        frames = self.close()
        self.index += 1
        self.kind, self.tool = kind, tool
        frames.append(_event("content_block_start", {"index": self.index, "content_block": block}))
        return frames

    def close(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind = None
        return [_event("content_block_stop", {"index": self.index})]


async def message_stream(p: Plan, engine: GenerativeEngine, streams: list[Tagged]) -> AsyncIterator[bytes]:
    """Anthropic's event stream of one generation."""
    start: dict[str, Any] = {
        "id": p.id,
        "type": "message",
        "role": "assistant",
        "model": p.body.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(0, 0),
    }
    blocks = _Blocks()
    parsers: list[OutputParser] | None = None
    output = prompt = 0
    finish: str | None = None
    stop: str | int | None = None
    called = False
    first = True
    try:
        async for _, out in merge(streams):
            if first:
                first = False
                prompt = len(out.prompt_token_ids)
                start["usage"] = _usage(prompt, 0)
                yield _event("message_start", {"message": start})
                yield PING
                parsers = p.tools.parsers(engine, p.request, out.prompt_token_ids, 1)
            for d in out.deltas:
                output += len(d.token_ids)
                if d.finish_reason is not None:
                    finish, stop = d.finish_reason, d.stop_reason
                if parsers is None:
                    if d.text:
                        if blocks.kind != "text":
                            for f in blocks.open("text", {"type": "text", "text": ""}):
                                yield f
                        yield _text_delta(blocks.index, d.text)
                    continue
                pd = parsers[0].parse_delta(d.text, d.token_ids, d.finish_reason is not None)
                if pd is None:
                    continue
                if pd.reasoning and p.thinking:
                    if blocks.kind != "thinking":
                        for f in blocks.open("thinking", {"type": "thinking", "thinking": "", "signature": ""}):
                            yield f
                    yield _event(
                        "content_block_delta",
                        {"index": blocks.index, "delta": {"type": "thinking_delta", "thinking": pd.reasoning}},
                    )
                if pd.content:
                    if blocks.kind != "text":
                        for f in blocks.open("text", {"type": "text", "text": ""}):
                            yield f
                    yield _text_delta(blocks.index, pd.content)
                for tc in pd.tool_calls:
                    called = True
                    if blocks.kind != "tool_use" or blocks.tool != tc.index:
                        block = {"type": "tool_use", "id": _tool_id(tc.id), "name": tc.name or "", "input": {}}
                        for f in blocks.open("tool_use", block, tc.index):
                            yield f
                    if tc.arguments:
                        yield _event(
                            "content_block_delta",
                            {
                                "index": blocks.index,
                                "delta": {"type": "input_json_delta", "partial_json": tc.arguments},
                            },
                        )
        if blocks.index < 0:  # an empty answer is still one (empty) text block
            for f in blocks.open("text", {"type": "text", "text": ""}):
                yield f
        for f in blocks.close():
            yield f
        reason, sequence = stop_reason_of(finish, stop, called)
        yield _event(
            "message_delta",
            {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": {"output_tokens": output}},
        )
        yield _event("message_stop", {})
    except Exception as exc:  # after the 200 the only way to report is an error event
        yield _event("error", {"error": anthropic_error(exc)})


# ----------------------------------------------------------------------------- serving


def _target(model: str) -> Target:
    return Target(model, param="model", by_model=True)


async def create(request: Request, body: MessagesRequest) -> Response:
    """`POST /v1/messages`: a message, whole or streamed."""
    pipeline = pipeline_of(request)
    p = plan(body, pipeline.settings)

    async def answer(engine: GenerativeEngine, completions: list[Completion]) -> Response:
        return FastJSONResponse(message_object(p, engine, completions[0]))

    generation = Generation(
        requests=[p.request],
        answer=answer,
        events=lambda engine, streams: message_stream(p, engine, streams),
        stream=body.stream,
        target=_target(body.model),
        timeout=body.timeout,
        priority=body.priority,
        fields=FIELDS,
        keepalive=PING,
    )
    return await pipeline.generate(request, generation)


async def count_tokens(request: Request, body: CountTokensRequest) -> Response:
    """`POST /v1/messages/count_tokens`: the prompt's tokens as the reader would see them."""
    pipeline = pipeline_of(request)
    tools = tool_use_of(body)
    messages = messages_of(body.system, body.messages)

    async def work(reader: Reader) -> Response:
        engine = reader.generative()
        neutral = GenerationRequest(
            request_id="count", messages=messages, tools=tools.template_tools(), tool_choice=tools.mode
        )
        rendered = await _render(engine, neutral)
        ids = await engine.tokenize(rendered, add_special_tokens=False)
        return FastJSONResponse({"input_tokens": len(ids)})

    return await pipeline.on_target(request, _target(body.model), work)


async def _render(engine: GenerativeEngine, request: GenerationRequest) -> str:
    def render() -> str:
        return engine.render_chat(request.messages or [], add_generation_prompt=True, tools=request.tools)

    return await asyncio.to_thread(render)


def model_list(request: Request) -> dict[str, Any]:
    """`GET /v1/models` in Anthropic's shape (a client that sends `anthropic-version`)."""
    data = [model_card_of(e.id, e.created) for e in entries_for(request)]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def model_card(request: Request, model_id: str) -> dict[str, Any]:
    """`GET /v1/models/{id}` in Anthropic's shape."""
    for e in entries_for(request):
        if e.id == model_id:
            return model_card_of(e.id, e.created)
    raise NotFound("the model does not exist", param="model")


def model_card_of(model_id: str, created: int) -> dict[str, Any]:
    """One model in Anthropic's shape."""
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
    }
