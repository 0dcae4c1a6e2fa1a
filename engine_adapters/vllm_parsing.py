"""vLLM's reasoning and tool-call parsers behind the neutral `OutputParser`.

A reader names its parsers (`tool_call_parser: hermes`, `reasoning_parser: deepseek_r1`,
the names vLLM's `--tool-call-parser` and `--reasoning-parser` take); vLLM's
`ParserManager` composes them into one `Parser` class, of which each sequence gets its
own instance (they keep streaming state). Nothing here parses markup itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from engine_adapters.base import (
    EngineError,
    GenerationRequest,
    ParsedDelta,
    ParsedOutput,
    ToolCall,
    ToolCallDelta,
)


def parser_class(tool_call_parser: str | None, reasoning_parser: str | None, tokenizer: Any) -> Any:
    """vLLM's composed Parser class for the named parsers, or None for neither.

    Unknown names, or parsers the tokenizer cannot serve (a reasoning parser whose
    think tokens are not in the vocabulary), fail here, when the reader loads.
    """
    if tool_call_parser is None and reasoning_parser is None:
        return None
    from vllm.parser.parser_manager import ParserManager
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    if tool_call_parser is not None and tool_call_parser not in ToolParserManager.list_registered():
        names = ", ".join(ToolParserManager.list_registered())
        raise EngineError(f"unknown tool_call_parser {tool_call_parser!r}; vLLM has: {names}")
    if reasoning_parser is not None and reasoning_parser not in ReasoningParserManager.list_registered():
        names = ", ".join(ReasoningParserManager.list_registered())
        raise EngineError(f"unknown reasoning_parser {reasoning_parser!r}; vLLM has: {names}")
    try:
        return ParserManager.get_parser(
            tool_parser_name=tool_call_parser,
            reasoning_parser_name=reasoning_parser,
            enable_auto_tools=tool_call_parser is not None,
            tokenizer=tokenizer,
        )
    except TypeError as exc:
        raise EngineError(str(exc)) from exc


def _vllm_request(request: GenerationRequest, parse_tools: bool) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    body: dict[str, Any] = {"model": "reader", "messages": request.messages or [{"role": "user", "content": ""}]}
    if request.tools:
        body["tools"] = request.tools
        body["tool_choice"] = "auto" if parse_tools else "none"
    if request.chat_template_kwargs:
        body["chat_template_kwargs"] = request.chat_template_kwargs
    return ChatCompletionRequest.model_validate(body)


def _call_id(given: str | None) -> str:
    return given or f"call_{uuid.uuid4().hex[:24]}"


class VLLMOutputParser:
    """One sequence's reasoning and tool calls, by vLLM's parsers."""

    def __init__(self, parser_cls: Any, tokenizer: Any, request: GenerationRequest, prompt_ids: Sequence[int]) -> None:
        self._parse_tools = request.tool_choice == "auto" and bool(request.tools)
        self._request = _vllm_request(request, self._parse_tools)
        self._parser = parser_cls(tokenizer, self._request.tools if self._parse_tools else None)
        self._parser.set_prompt_token_ids(list(prompt_ids))
        self._prompt_ids = list(prompt_ids)
        self._ids: dict[int, str] = {}  # tool call index -> id given to the client

    def parse(self, text: str, token_ids: Sequence[int]) -> ParsedOutput:
        """Split a whole answer."""
        reasoning, content, calls = self._parser.parse(
            text, self._request, enable_auto_tools=self._parse_tools, model_output_token_ids=list(token_ids)
        )
        tool_calls = [ToolCall(_call_id(c.id), c.name, c.arguments or "{}") for c in (calls or [])]
        return ParsedOutput(content=content, reasoning=reasoning, tool_calls=tool_calls)

    def parse_delta(self, text: str, token_ids: Sequence[int], finished: bool) -> ParsedDelta | None:
        """Split the next piece of a stream."""
        delta = self._parser.parse_delta(
            delta_text=text,
            delta_token_ids=list(token_ids),
            request=self._request,
            prompt_token_ids=self._prompt_ids,
            finished=finished,
        )
        if delta is None:
            return None
        calls = []
        for tc in delta.tool_calls or []:
            fn = tc.function
            call_id = None
            if tc.index not in self._ids:
                call_id = self._ids[tc.index] = _call_id(tc.id)
            calls.append(
                ToolCallDelta(
                    index=tc.index,
                    id=call_id,
                    name=fn.name if fn is not None else None,
                    arguments=(fn.arguments or "") if fn is not None else "",
                )
            )
        reasoning = getattr(delta, "reasoning", None) or getattr(delta, "reasoning_content", None)
        if delta.content is None and reasoning is None and not calls:
            return None
        return ParsedDelta(content=delta.content, reasoning=reasoning, tool_calls=calls)
