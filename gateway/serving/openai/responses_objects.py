"""The Responses API's answers: the `response` object and its output items (reasoning,
message, function calls), as OpenAI's API reference describes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypedDict

from engine_adapters.base import GenerativeEngine, OutputParser, ParsedOutput
from gateway.continuation import ContinuationStore
from gateway.machinery.engine_streams import Completion
from gateway.protocols.responses import NamedFunctionChoice
from gateway.serving.openai.responses_store import Conversation, save
from gateway.serving.openai.responses_turn import Turn, new_id


class ResponseUsage(TypedDict):
    """The `usage` of a response."""

    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class OutputText(TypedDict):
    """The text part of a message item."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class MessageOut(TypedDict):
    """An assistant message output item."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: str
    content: list[OutputText]


class ReasoningText(TypedDict):
    """The text part of a reasoning item."""

    type: Literal["reasoning_text"]
    text: str


class ReasoningOut(TypedDict):
    """A reasoning output item."""

    id: str
    type: Literal["reasoning"]
    summary: list[Any]
    content: list[ReasoningText]


class CallOut(TypedDict):
    """A function call output item."""

    id: str
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem = MessageOut | ReasoningOut | CallOut


class ResponseError(TypedDict):
    """Why a response failed."""

    code: str
    message: str


class ResponseObject(TypedDict):
    """The `response` object, as OpenAI's API reference describes it."""

    id: str
    object: Literal["response"]
    created_at: int
    status: str
    background: bool
    error: ResponseError | None
    incomplete_details: dict[str, str] | None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: dict[str, str | None]
    store: bool
    temperature: float
    text: dict[str, Any]
    tool_choice: str | dict[str, str]
    tools: list[dict[str, Any]]
    top_p: float
    truncation: Literal["disabled"]
    usage: ResponseUsage | None
    user: str | None


def usage(prompt: int, output: int, reasoning: int = 0) -> ResponseUsage:
    """A response's token counts."""
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
    output: list[OutputItem],
    usage: ResponseUsage | None = None,
    error: ResponseError | None = None,
    incomplete: str | None = None,
) -> ResponseObject:
    """The `response` object of a turn in `status`."""
    b = turn.body
    fmt = b.text.format if b.text is not None and b.text.format is not None else None
    choice = b.tool_choice
    tool_choice: str | dict[str, str] | None = (
        {"type": "function", "name": choice.name} if isinstance(choice, NamedFunctionChoice) else choice
    )
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
        "tool_choice": tool_choice or ("auto" if turn.tool_cards else "none"),
        "tools": turn.tool_cards,
        "top_p": b.top_p if b.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": b.user,
    }


def status_of(finish: str | None) -> tuple[str, str | None]:
    """The response's status (and why it is incomplete) after a finish reason."""
    if finish == "length":
        return "incomplete", "max_output_tokens"
    return "completed", None


def message_item(text: str, item_id: str | None = None, status: str = "completed") -> MessageOut:
    """An assistant message output item."""
    return {
        "id": item_id or f"msg_{new_id()}",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def reasoning_item(text: str, item_id: str | None = None) -> ReasoningOut:
    """A reasoning output item (the reader's reasoning parser split it off)."""
    return {
        "id": item_id or f"rs_{new_id()}",
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def call_item(call_id: str, name: str, arguments: str, item_id: str | None = None) -> CallOut:
    """A function call output item."""
    return {
        "id": item_id or f"fc_{new_id()}",
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def output_items(parsed: ParsedOutput) -> list[OutputItem]:
    """The output items of a whole answer: reasoning, text, function calls, in that order."""
    out: list[OutputItem] = []
    if parsed.reasoning:
        out.append(reasoning_item(parsed.reasoning))
    if parsed.content or not parsed.tool_calls:
        out.append(message_item(parsed.content or ""))
    out.extend(call_item(c.id, c.name, c.arguments) for c in parsed.tool_calls)
    return out


def parse_output(parsers: list[OutputParser] | None, c: Completion) -> ParsedOutput:
    """The first sequence's output split into reasoning, text and calls."""
    text = c.texts[0] if c.texts else ""
    if parsers is None:
        return ParsedOutput(content=text)
    return parsers[0].parse(text, c.token_ids[0])


def conversation_of(turn: Turn, engine: GenerativeEngine, prompt: Sequence[int], output: Sequence[int]) -> Conversation:
    """What the next turn continues from: the prompt's and the output's tokens."""
    eos = engine.info.eos_token_id
    instructions = turn.body.instructions
    return Conversation(engine.info.name, bool(output) and output[-1] == eos, instructions, [*prompt, *output])


async def finish(store: ContinuationStore, engine: GenerativeEngine, turn: Turn, c: Completion) -> ResponseObject:
    """The whole response of a finished generation; stored when asked to."""
    parsers = turn.tools.parsers(engine, turn.request, c.prompt_token_ids, 1)
    parsed = parse_output(parsers, c)
    status, incomplete = status_of(c.finish_reasons[0] if c.finish_reasons else None)
    tokens = c.token_ids[0] if c.token_ids else []
    response = response_object(
        turn, status, output_items(parsed), usage(len(c.prompt_token_ids), len(tokens)), incomplete=incomplete
    )
    if turn.body.store:
        await save(
            store,
            turn.key,
            turn.tenant,
            response,
            turn.input_items,
            conversation_of(turn, engine, c.prompt_token_ids, tokens),
        )
    return response
