"""Planning one turn of the Responses API: a request's `instructions` and `input` items
become chat messages (function calls an assistant message's `tool_calls`, their outputs
`tool` messages), its tools and `text.format` one constraint, all as chat translates them
(gateway/serving/tools.py).

`previous_response_id` continues from the stored conversation's tokens: only the new turn
is rendered with the chat template (after a stand-in history, so the cost does not grow
with the conversation) and tokenized, then appended to the stored tokens. The engine sees
exactly the tokens of the earlier turns, so vLLM's prefix cache reuses them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine_adapters.base import Constraint, GenerationRequest, GenerativeEngine
from gateway.continuation import ContinuationStore
from gateway.errors import BadRequest, NotFound
from gateway.machinery.engine_streams import new_request_id
from gateway.machinery.limits import Fields
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
from gateway.serving.constraints import ConstraintField, constraint_of
from gateway.serving.openai.common import refuse_unsupported
from gateway.serving.openai.responses_store import load_conversation, response_key
from gateway.serving.sampling import sampling
from gateway.settings import Settings

FIELDS = Fields(prompts="input", max_new_tokens="max_output_tokens", min_new_tokens="max_output_tokens")
# The assistant content of the stand-in history the next turn is rendered after.
_MARK = "\u2063gateway-turn\u2063"


def new_id() -> str:
    """The random part of response and item ids."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class Turn:
    """A Responses request in neutral terms, and what its answer and its record need."""

    body: ResponsesRequest
    id: str
    request: GenerationRequest
    tools: tooling.ToolUse
    new_messages: list[dict[str, Any]]  # this turn's messages (no stored history)
    input_items: list[dict[str, Any]]  # this turn's input, as `input_items` lists it
    tool_cards: list[dict[str, Any]]  # the tools as the response object echoes them
    key: str  # store key of this response (scoped to the caller's tenant)
    tenant: str
    prior_key: str | None  # store key of previous_response_id
    created_at: int = field(default_factory=lambda: int(time.time()))
    instructions_sent: bool = True  # the instructions are in this turn's messages


def _text_of(parts: str | Sequence[Any], param: str) -> str:
    if isinstance(parts, str):
        return parts
    out = []
    for j, p in enumerate(parts):
        if not isinstance(p, InputText):
            raise BadRequest(
                f"{param}[{j}]: content of this type is not supported (text only)", param=f"{param}[{j}].type"
            )
        out.append(p.text if p.type != "refusal" else (p.refusal or p.text))
    return "".join(out)


def _item_dict(item: Any) -> dict[str, Any]:
    """An input item as `input_items` lists it: with an id and a status."""
    if isinstance(item, str):
        return {
            "id": f"msg_{new_id()}",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": item}],
        }
    d = item.model_dump(mode="json", by_alias=True, exclude_none=True)
    prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
    d.setdefault("id", f"{prefix.get(d['type'], 'item')}_{new_id()}")
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
                "function": {"name": item.name, "arguments": tooling.template_arguments(item.arguments)},
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
            raise BadRequest(f"{param}: input items of this type are not supported", param=f"{param}.type")
    return out


def tool_use_of(body: ResponsesRequest, settings: Settings) -> tuple[tooling.ToolUse, list[dict[str, Any]]]:
    """The request's function tools and tool choice, and the tools as the response object
    echoes them. Tools OpenAI runs itself are refused (or dropped, if the server says so)."""
    tools: list[tooling.Tool] = []
    cards: list[dict[str, Any]] = []
    for i, t in enumerate(body.tools or []):
        if isinstance(t, BuiltinTool):
            if settings.responses.drop_builtin_tools:
                continue
            raise BadRequest(
                f"tools[{i}]: tools of this type run on OpenAI's servers and are not available here "
                "(function tools are; responses.drop_builtin_tools ignores such tools)",
                param=f"tools[{i}].type",
            )
        parameters = t.parameters or {"type": "object", "properties": {}}
        tools.append(tooling.Tool(t.name, t.description, parameters))
        cards.append(
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": parameters,
                "strict": t.strict if t.strict is not None else True,
            }
        )
    tooling.check_tools(tools, "tools", schema_field="parameters")
    choice = body.tool_choice
    named = choice.name if isinstance(choice, NamedFunctionChoice) else None
    plain = None if isinstance(choice, NamedFunctionChoice) else choice
    use = tooling.tool_use(
        tools, plain, named, parallel=body.parallel_tool_calls is not False, max_calls=settings.max_parallel_tool_calls
    )
    return use, cards


def text_constraint(body: ResponsesRequest) -> Constraint | None:
    """The constraint of `text.format`."""
    fmt = body.text.format if body.text is not None else None
    return constraint_of(
        [
            ConstraintField("json_object", True if isinstance(fmt, TextFormatJSONObject) else None, "text.format"),
            ConstraintField(
                "json", fmt.json_schema if isinstance(fmt, TextFormatJSONSchema) else None, "text.format.schema"
            ),
        ]
    )


def plan_turn(body: ResponsesRequest, settings: Settings, tenant: str) -> Turn:
    """Translate a Responses request (without its stored history) into a turn."""
    refuse_unsupported(body.model_extra, UNSUPPORTED)
    if body.input is None and body.previous_response_id is None:
        raise BadRequest("input is required", param="input")
    if body.background and not body.store:
        raise BadRequest("background responses are stored: background needs store true", param="background")
    if body.background and body.stream:
        raise BadRequest("streaming a background response is not supported; poll GET instead", param="background")
    tools, cards = tool_use_of(body, settings)
    constraint = tools.constraint(text_constraint(body), "text.format")
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
        sampling=sampling(
            settings,
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
        ),
        constraint=constraint,
        stream=body.stream,
        tools=tools.template_tools(),
        tool_choice=tools.mode,
        chat_template_kwargs=kwargs or None,
    )
    response_id = f"resp_{new_id()}"
    prior = response_key(settings, tenant, body.previous_response_id) if body.previous_response_id else None
    return Turn(
        body,
        response_id,
        request,
        tools,
        messages,
        items,
        cards,
        response_key(settings, tenant, response_id),
        tenant,
        prior,
    )


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
    prior = await load_conversation(store, turn.prior_key)
    if prior is None:
        raise NotFound(
            "no stored response with this id (unknown, expired, deleted or not stored)",
            param="previous_response_id",
        )
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
    request = turn.request
    request.prompt_token_ids = prior.tokens + await engine.tokenize(tail, add_special_tokens=False)
    request.messages = None
