"""OpenAI chat completions onto neutral requests and back, tools and reasoning included.

Tools and tool choice are translated as for every API (gateway/serving/tools.py: "required"
and a named function are constrained decoding, "auto" the reader's parser); the legacy
`functions` / `function_call` fields map onto the same modes. A reader with a
`reasoning_parser` puts the thinking in `reasoning_content`, never in `content` or the
tool-call parsing. Without tools and parsers the per-token path is the plain one: chunks
assembled from pre-rendered JSON, only the text encoded per token.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from starlette.requests import Request
from starlette.responses import Response

from engine_adapters.base import GenerationRequest, GenerativeEngine, OutputParser, ParsedDelta, ToolCall
from gateway.errors import BadRequest
from gateway.machinery.bodies import FastJSONResponse
from gateway.machinery.engine_streams import Completion, Tagged, budget_cut, merge, new_request_id
from gateway.machinery.pipeline import Generation, pipeline_of
from gateway.machinery.routing import Target
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
from gateway.serving.openai.common import (
    DONE,
    Usage,
    chat_logprobs,
    error_event,
    fields_of,
    format_constraint,
    json_str,
    refuse_unsupported,
    sampling_of,
    sse,
    usage_of,
)
from gateway.settings import Settings


@dataclass(slots=True)
class ChatPlan:
    """A chat request in neutral terms, and what its answer needs besides the text."""

    request: GenerationRequest
    tools: tooling.ToolUse = field(default_factory=tooling.ToolUse)
    legacy: bool = False  # `functions` / `function_call`: answer with `function_call`
    echo: str = ""  # text of the final message, put before the answer
    include_reasoning: bool = True


async def chat(
    request: Request, body: ChatCompletionRequest, plan: ChatPlan | None = None, target: Target | None = None
) -> Response:
    """Serve a chat completion, whole or streamed, through the pipeline.

    Another API speaking OpenAI's chat (the chat service API) passes its own plan and
    target.
    """
    pipeline = pipeline_of(request)
    if plan is None:
        plan = chat_plan(body, pipeline.settings)
    chat_plan_ = plan

    async def answer(engine: GenerativeEngine, completions: list[Completion]) -> Response:
        c = completions[0]
        parsers = chat_plan_.tools.parsers(engine, chat_plan_.request, c.prompt_token_ids, len(c.texts))
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
                    "function": {"name": name, "arguments": tooling.template_arguments(args)},
                }
                for i, (cid, name, args) in enumerate(calls)
            ]
        if m.reasoning_content:
            out["reasoning_content"] = m.reasoning_content
    return out


def tool_use_of(req: ChatCompletionRequest, max_calls: int = 4) -> tuple[tooling.ToolUse, bool]:
    """The request's tools and tool choice, and whether they came in the legacy
    `functions` / `function_call` fields."""
    if req.tools and req.functions:
        raise BadRequest("send tools or the legacy functions, not both", param="functions")
    legacy = bool(req.functions)
    defs = req.functions or [t.function for t in req.tools or []]
    param = "functions" if legacy else "tools"
    tools = [tooling.Tool(d.name, d.description, d.parameters or {"type": "object", "properties": {}}) for d in defs]
    tooling.check_tools(tools, param)
    if req.tool_choice is not None and legacy:
        raise BadRequest("tool_choice goes with tools; functions take function_call", param="tool_choice")
    choice = req.function_call if legacy else req.tool_choice
    choice_param = "function_call" if legacy else "tool_choice"
    if choice is not None and not tools:  # OpenAI's rule: a choice needs its tools
        raise BadRequest(f"{choice_param} needs {param}", param=choice_param)
    named = None
    if isinstance(choice, NamedToolChoice):
        named, choice = choice.function.name, None
    elif isinstance(choice, NamedFunction):
        named, choice = choice.name, None
    parallel = req.parallel_tool_calls is not False
    use = tooling.tool_use(tools, choice, named, parallel=parallel, param=choice_param, max_calls=max_calls)
    return use, legacy


def chat_plan(req: ChatCompletionRequest, settings: Settings) -> ChatPlan:
    """The neutral request of a chat completion, and how to answer it."""
    refuse_unsupported(req.model_extra, UNSUPPORTED_CHAT)
    if req.top_logprobs is not None and not req.logprobs:
        raise BadRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
    if req.continue_final_message and req.add_generation_prompt:
        raise BadRequest(
            "continue_final_message continues the last message: set add_generation_prompt to false",
            param="continue_final_message",
        )
    tools, legacy = tool_use_of(req, settings.max_parallel_tool_calls)
    constraint = tools.constraint(
        format_constraint(req.response_format, req.structured_outputs),
        "response_format",
        "response_format or structured_outputs",
    )
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
        tools=tools.template_tools(),
        tool_choice=tools.mode,
        chat_template_kwargs=kwargs or None,
        continue_final_message=req.continue_final_message,
        cache_salt=req.cache_salt,
    )
    echo = ""
    if req.echo and messages and messages[-1]["role"] == "assistant":
        echo = messages[-1]["content"]
    return ChatPlan(neutral, tools, legacy, echo, req.include_reasoning)


# ----------------------------------------------------------------------------- answers


class FunctionOut(TypedDict):
    """A call's function: name and arguments (JSON text)."""

    name: str
    arguments: str


class ToolCallOut(TypedDict):
    """A tool call of the answer."""

    id: str
    type: Literal["function"]
    function: FunctionOut


class AnswerMessage(TypedDict):
    """The assistant message of a choice."""

    role: Literal["assistant"]
    content: str | None
    reasoning_content: NotRequired[str]
    tool_calls: NotRequired[list[ToolCallOut]]
    function_call: NotRequired[FunctionOut]


class ChatChoice(TypedDict):
    """One choice of a `chat.completion`."""

    index: int
    message: AnswerMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletion(TypedDict):
    """A whole `chat.completion` object."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    budget_exhausted: NotRequired[bool]  # a token budget ended it (gateway/budgets.py)


def _tool_calls(calls: list[ToolCall]) -> list[ToolCallOut]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def chat_response(
    req: ChatCompletionRequest, plan: ChatPlan, c: Completion, parsers: list[OutputParser] | None
) -> ChatCompletion:
    """A whole `chat.completion` object."""
    k = req.top_logprobs or 0
    choices: list[ChatChoice] = []
    for i, text in enumerate(c.texts):
        finish = c.finish_reasons[i]
        message: AnswerMessage = {"role": "assistant", "content": text}
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
    answer: ChatCompletion = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": choices,
        "usage": usage_of([c]),
    }
    if budget_cut() is not None:
        answer["budget_exhausted"] = True
    return answer


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
                parsers = plan.tools.parsers(engine, plan.request, out.prompt_token_ids, req.n)
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
        if budget_cut() is not None:  # the sequences ended with "length": say why (usage stays last)
            yield sse(f'{head},"choices":[],"budget_exhausted":true{usage_tail}}}')
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
