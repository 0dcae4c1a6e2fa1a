"""OpenAI chat completions onto neutral requests and back, tools and reasoning included.

Function calling has three modes (README, "Tools"):
* `tool_choice` "required" or a named function: constrained decoding against the tools'
  schemas (gateway/serving/tools.py), so it works with any model;
* "auto" (the default when tools are sent): the reader's own tool-call parser (vLLM's,
  named by the reader's `tool_call_parser`) reads the model's markup; a reader without
  one answers in text, its chat template having seen the tools;
* "none": text, the template still sees the tools.
A reader with a `reasoning_parser` puts the thinking in `reasoning_content`, never in
`content` or the tool-call parsing. Without tools and parsers the per-token path is the
plain one: chunks assembled from pre-rendered JSON, only the text encoded per token.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import (
    GenerationRequest,
    GenerativeEngine,
    OutputParser,
    ParsedDelta,
    ToolCall,
)
from gateway.errors import BadRequest
from gateway.protocols.openai import (
    UNSUPPORTED_CHAT,
    AnyMessage,
    AssistantMessage,
    ChatCompletionRequest,
    FunctionMessage,
    NamedFunction,
    NamedToolChoice,
    ToolMessage,
)
from gateway.serving import tools as tooling
from gateway.serving.common import Completion, FastJSONResponse, Tagged, merge, new_request_id
from gateway.serving.openai import (
    DONE,
    chat_logprobs,
    constraint_of,
    error_event,
    fields_of,
    json_str,
    refuse_unsupported,
    sampling_of,
    sse,
    usage_of,
)
from gateway.serving.pipeline import Generation, pipeline_of
from gateway.serving.routing import Target
from gateway.settings import Settings


@dataclass(slots=True)
class ChatPlan:
    """A chat request in neutral terms, and what its answer needs besides the text."""

    request: GenerationRequest
    tools: list[tooling.Tool] = field(default_factory=list)
    mode: str = "none"  # "none" | "auto" | "required" | "function"
    choice: tooling.Tool | None = None  # the named function
    legacy: bool = False  # `functions` / `function_call`: answer with `function_call`
    echo: str = ""  # text of the final message, put before the answer
    include_reasoning: bool = True


async def chat(
    request: Request, body: ChatCompletionRequest, plan: ChatPlan | None = None, target: Target | None = None
) -> Response:
    """Serve a chat completion, whole or streamed, through the pipeline.

    Another surface speaking OpenAI's chat (the chat service API) passes its own plan
    and target.
    """
    pipeline = pipeline_of(request)
    if plan is None:
        plan = chat_plan(body, pipeline.settings)
    chat_plan_ = plan

    async def answer(engine: GenerativeEngine, completions: list[Completion]) -> Response:
        c = completions[0]
        parsers = output_parsers(engine, chat_plan_, c.prompt_token_ids, len(c.texts))
        return FastJSONResponse(chat_response(body, chat_plan_, c, parsers))

    def events(engine: GenerativeEngine, streams: list[Tagged]) -> AsyncIterator[bytes]:
        return chat_stream(body, chat_plan_, streams, engine)

    generation = Generation(
        requests=[plan.request],
        answer=answer,
        events=events,
        stream=body.stream,
        target=target or Target(body.model, param="model", by_model=True),
        timeout=body.timeout,
        priority=body.priority,
        fields=fields_of(body, "messages"),
    )
    return await pipeline.generate(request, generation)


# ----------------------------------------------------------------------------- requests


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content)


def _arguments(text: str) -> Any:
    # Chat templates render a call's arguments as an object (`| tojson`); the wire
    # carries them as JSON text, so they are parsed back when they are JSON (as vLLM does).
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def message_dict(m: AnyMessage) -> dict[str, Any]:
    """One wire message as the chat template sees it."""
    if isinstance(m, ToolMessage):
        return {"role": "tool", "content": _text(m.content), "tool_call_id": m.tool_call_id}
    if isinstance(m, FunctionMessage):  # the legacy protocol's tool result
        return {"role": "tool", "content": m.content or "", "name": m.name}
    # "developer" is OpenAI's newer name for the system role; chat templates know "system".
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
    if m.name:
        out["name"] = m.name
    if isinstance(m, AssistantMessage):
        calls = [(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or []]
        if m.function_call is not None:  # the legacy single call
            calls.append(("", m.function_call.name, m.function_call.arguments))
        if calls:
            out["tool_calls"] = [
                {
                    "id": cid or f"call_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": _arguments(args)},
                }
                for i, (cid, name, args) in enumerate(calls)
            ]
        if m.reasoning_content:
            out["reasoning_content"] = m.reasoning_content
    return out


def _tools(req: ChatCompletionRequest) -> tuple[list[tooling.Tool], bool]:
    """The request's tools, and whether they came in the legacy `functions` field."""
    if req.tools and req.functions:
        raise BadRequest("send tools or the legacy functions, not both", param="functions")
    if req.functions:
        defs, param, legacy = req.functions, "functions", True
    else:
        defs, param, legacy = [t.function for t in req.tools or []], "tools", False
    tools = [tooling.Tool(d.name, d.description, d.parameters or {"type": "object", "properties": {}}) for d in defs]
    tooling.check_tools(tools, param)
    return tools, legacy


def _mode(req: ChatCompletionRequest, tools: list[tooling.Tool], legacy: bool) -> tuple[str, tooling.Tool | None]:
    choice: Any = req.function_call if legacy else req.tool_choice
    param = "function_call" if legacy else "tool_choice"
    if req.tool_choice is not None and legacy:
        raise BadRequest("tool_choice goes with tools; functions take function_call", param="tool_choice")
    if choice is not None and not tools:
        raise BadRequest(f"{param} needs {'functions' if legacy else 'tools'}", param=param)
    if not tools:
        return "none", None
    if choice is None:
        return "auto", None
    if isinstance(choice, NamedToolChoice):
        return "function", tooling.named(tools, choice.function.name, param)
    if isinstance(choice, NamedFunction):
        return "function", tooling.named(tools, choice.name, param)
    return str(choice), None


def chat_plan(req: ChatCompletionRequest, settings: Settings) -> ChatPlan:
    """The neutral request of a chat completion, and how to answer it."""
    refuse_unsupported(req, UNSUPPORTED_CHAT)
    if req.top_logprobs is not None and not req.logprobs:
        raise BadRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
    if req.continue_final_message and req.add_generation_prompt:
        raise BadRequest(
            "continue_final_message continues the last message: set add_generation_prompt to false",
            param="continue_final_message",
        )
    tools, legacy = _tools(req)
    mode, choice = _mode(req, tools, legacy)
    constraint = constraint_of(req.response_format, req.structured_outputs)
    if mode in ("required", "function"):
        if constraint is not None:
            raise BadRequest(
                f"{'function_call' if legacy else 'tool_choice'} {mode} cannot be combined with response_format "
                "or structured_outputs",
                param="response_format",
            )
        parallel = req.parallel_tool_calls is not False
        constraint = tooling.constraint(tools, choice, parallel, "function_call" if legacy else "tool_choice")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    kwargs = dict(req.chat_template_kwargs or {})
    if req.reasoning_effort is not None:
        kwargs.setdefault("reasoning_effort", req.reasoning_effort)
    messages = [message_dict(m) for m in req.messages]
    neutral = GenerationRequest(
        request_id=new_request_id("chatcmpl"),
        messages=messages,
        add_generation_prompt=req.add_generation_prompt,
        sampling=sampling_of(req, settings, max_tokens, logprobs),
        constraint=constraint,
        stream=req.stream,
        tools=[t.template_dict() for t in tools] or None,
        tool_choice=mode,  # type: ignore[arg-type]
        chat_template_kwargs=kwargs or None,
        continue_final_message=req.continue_final_message,
    )
    echo = ""
    if req.echo and messages and messages[-1]["role"] == "assistant":
        echo = messages[-1]["content"]
    return ChatPlan(neutral, tools, mode, choice, legacy, echo, req.include_reasoning)


def output_parsers(engine: GenerativeEngine, plan: ChatPlan, prompt_ids: Any, n: int) -> list[OutputParser] | None:
    """One parser per choice, or None when the output is plain content."""
    if plan.mode in ("required", "function"):
        return [tooling.ToolChoiceParser(plan.choice) for _ in range(n)]
    first = engine.output_parser(plan.request, prompt_ids)
    if first is None:
        return None
    rest = [engine.output_parser(plan.request, prompt_ids) for _ in range(n - 1)]
    return [first, *(p for p in rest if p is not None)]


# ----------------------------------------------------------------------------- answers


def _tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def chat_response(
    req: ChatCompletionRequest, plan: ChatPlan, c: Completion, parsers: list[OutputParser] | None
) -> dict[str, Any]:
    """A whole `chat.completion` object."""
    k = req.top_logprobs or 0
    choices = []
    for i, text in enumerate(c.texts):
        finish = c.finish_reasons[i]
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if parsers is not None:
            parsed = parsers[i].parse(text, c.token_ids[i])
            message["content"] = parsed.content
            if parsed.reasoning is not None and plan.include_reasoning:
                message["reasoning_content"] = parsed.reasoning
            if parsed.tool_calls:
                if plan.legacy:
                    first = parsed.tool_calls[0]
                    message["function_call"] = {"name": first.name, "arguments": first.arguments}
                else:
                    message["tool_calls"] = _tool_calls(parsed.tool_calls)
                if finish == "stop":
                    finish = "function_call" if plan.legacy else "tool_calls"
        if plan.echo:
            message["content"] = plan.echo + (message["content"] or "")
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": chat_logprobs(c.logprobs[i], k, req.return_tokens_as_token_ids) if req.logprobs else None,
                "finish_reason": finish,
            }
        )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": choices,
        "usage": usage_of([c]),
    }


def _delta_json(pd: ParsedDelta, plan: ChatPlan) -> str | None:
    delta: dict[str, Any] = {}
    if pd.reasoning and plan.include_reasoning:
        delta["reasoning_content"] = pd.reasoning
    if pd.content:
        delta["content"] = pd.content
    if pd.tool_calls:
        if plan.legacy:
            tc = pd.tool_calls[0]
            fn: dict[str, Any] = {"arguments": tc.arguments}
            if tc.name is not None:
                fn["name"] = tc.name
            delta["function_call"] = fn
        else:
            calls = []
            for tc in pd.tool_calls:
                call: dict[str, Any] = {"index": tc.index}
                function: dict[str, Any] = {"arguments": tc.arguments}
                if tc.id is not None:
                    call.update(id=tc.id, type="function")
                if tc.name is not None:
                    function["name"] = tc.name
                call["function"] = function
                calls.append(call)
            delta["tool_calls"] = calls
    return json.dumps(delta) if delta else None


async def chat_stream(
    req: ChatCompletionRequest,
    plan: ChatPlan,
    streams: list[Tagged],
    engine: GenerativeEngine,
) -> AsyncIterator[bytes]:
    """`chat.completion.chunk` events, then usage (if asked for) and `[DONE]`."""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    usage_tail = ',"usage":null' if include_usage else ""
    head = json.dumps(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": req.model,
        }
    )[:-1]
    k = req.top_logprobs or 0
    tokens = 0
    prompt_tokens = 0
    parsers: list[OutputParser] | None = None
    called = [False] * req.n
    try:
        first_content = json.dumps(plan.echo)
        for i in range(req.n):
            yield sse(
                f'{head},"choices":[{{"index":{i},"delta":{{"role":"assistant","content":{first_content}}},'
                f'"logprobs":null,"finish_reason":null}}]{usage_tail}}}'
            )
        first = True
        async for _, out in merge(streams):
            prompt_tokens = len(out.prompt_token_ids)
            if first:
                first = False
                parsers = output_parsers(engine, plan, out.prompt_token_ids, req.n)
            for d in out.deltas:
                tokens += len(d.token_ids)
                if parsers is None:
                    if not d.text and d.finish_reason is None:
                        continue
                    delta = f'{{"content":{json_str(d.text)}}}' if d.text else "{}"
                else:
                    pd = parsers[d.index].parse_delta(d.text, d.token_ids, d.finish_reason is not None)
                    rendered = _delta_json(pd, plan) if pd is not None else None
                    if pd is not None and pd.tool_calls:
                        called[d.index] = True
                    if rendered is None and d.finish_reason is None:
                        continue
                    delta = rendered or "{}"
                reason = d.finish_reason
                if reason == "stop" and called[d.index]:
                    reason = "function_call" if plan.legacy else "tool_calls"
                lp = (
                    json.dumps(chat_logprobs(d.logprobs or [], k, req.return_tokens_as_token_ids))
                    if req.logprobs
                    else "null"
                )
                fin = json.dumps(reason) if reason is not None else "null"
                yield sse(
                    f'{head},"choices":[{{"index":{d.index},"delta":{delta},"logprobs":{lp},"finish_reason":{fin}}}]{usage_tail}}}'
                )
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            }
            yield sse(f'{head},"choices":[],"usage":{json.dumps(usage)}}}')
    except Exception as exc:  # after the 200 the only way to report is an error event
        yield error_event(exc)
    yield DONE
