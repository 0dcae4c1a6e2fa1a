"""Tools and tool choice, translated once for every API that has them (OpenAI chat, the
Responses API, Anthropic Messages).

Each API reads its own wire fields into `Tool`s and a `ToolUse` (`tool_use`); from there
the rules are the same everywhere. Tool modes:

* "required" (Anthropic's `any`) and a named tool ("function"; Anthropic's `tool`) are
  constrained decoding against a JSON schema made of the tools' parameter schemas, so the
  arguments are always valid JSON for the schema, whatever the model:
  - a named tool: the output *is* the arguments object (schema: the tool's parameters);
  - "required": the output is `[{"name": ..., "parameters": {...}}, ...]`, one item per
    call (at most one unless parallel calls are allowed), each tied to its tool's schema.
  Either excludes a response format (one constraint per request).
* "auto": the reader's own tool-call parser (vLLM's, named by the reader's
  `tool_call_parser`) reads the model's markup; a reader without one answers in text,
  its chat template having seen the tools.
* "none": text; the template still sees the tools.

`ToolChoiceParser` turns constrained output into tool calls, whole or streamed: the name
goes first, then the arguments in fragments, which are the raw text of the parameters
value as the model writes it (so the fragments join into valid JSON).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engine_adapters.base import (
    Constraint,
    GenerationRequest,
    GenerativeEngine,
    OutputParser,
    ParsedDelta,
    ParsedOutput,
    ToolCall,
    ToolCallDelta,
    check_json_schema,
)
from gateway.errors import BadRequest

ToolMode = Literal["none", "auto", "required", "function"]

_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str | None
    parameters: dict[str, Any]

    def template_dict(self) -> dict[str, Any]:
        """The tool as chat templates (and vLLM's parsers) expect it."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


def check_tools(tools: Sequence[Tool], param: str, nested: bool | None = None) -> None:
    """Names unique and well formed, parameter schemas valid JSON Schema; else a 400.

    `nested`: the parameters sit under `function` (chat's `tools`; the default for "tools")."""
    if nested is None:
        nested = param == "tools"
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not _NAME.match(tool.name):
            raise BadRequest(
                f"{param}[{i}]: a function name has 1 to 64 letters, digits, '_', '-' or '.'", param=f"{param}[{i}]"
            )
        if tool.name in seen:
            raise BadRequest(f"{param}[{i}]: the function name {tool.name!r} repeats", param=f"{param}[{i}]")
        seen.add(tool.name)
        try:
            check_json_schema(tool.parameters)
        except ValueError as exc:
            field = f"{param}[{i}].function.parameters" if nested else f"{param}[{i}].parameters"
            raise BadRequest(f"{field}: {exc}", param=field) from None


def named(tools: Sequence[Tool], name: str, param: str) -> Tool:
    """The tool a named `tool_choice` names; a 400 if it is not among `tools`."""
    for tool in tools:
        if tool.name == name:
            return tool
    have = ", ".join(t.name for t in tools) or "none"
    raise BadRequest(f"{param} names the function {name!r}, which is not in tools ({have})", param=param)


def constraint(tools: Sequence[Tool], choice: Tool | None, parallel: bool, param: str) -> Constraint:
    """The JSON schema the output must follow for a named tool or for "required"."""
    if choice is not None:
        return Constraint(kind="json", value=choice.parameters or _EMPTY_OBJECT, param=param)
    items = [
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [t.name]}, "parameters": t.parameters or _EMPTY_OBJECT},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema: dict[str, Any] = {"type": "array", "items": items[0] if len(items) == 1 else {"anyOf": items}}
    schema["minItems"] = 1
    if not parallel:
        schema["maxItems"] = 1
    return Constraint(kind="json", value=schema, param=param)


def call_id() -> str:
    """A new tool call id, in OpenAI's style."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(slots=True)
class ToolUse:
    """A request's tools and how the model must use them."""

    tools: list[Tool] = field(default_factory=list)
    mode: ToolMode = "none"
    choice: Tool | None = None  # the named tool of mode "function"
    parallel: bool = True  # "required" may make several calls
    param: str = "tool_choice"  # the wire field of the choice, for errors

    @property
    def constrained(self) -> bool:
        """Whether decoding follows the tools' schema (required or a named tool)."""
        return self.mode in ("required", "function")

    def constraint(
        self, requested: Constraint | None, format_param: str, format_names: str | None = None
    ) -> Constraint | None:
        """The request's one constraint: the tools' schema when the choice forces a call
        (which cannot be combined with a response format, `requested`: a 400 naming
        `format_param`), else `requested`."""
        if not self.constrained:
            return requested
        if requested is not None:
            raise BadRequest(
                f"{self.param} {self.mode} cannot be combined with {format_names or format_param}", param=format_param
            )
        return constraint(self.tools, self.choice, self.parallel, self.param)

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template (and vLLM's parsers) see them, or None."""
        return [t.template_dict() for t in self.tools] or None

    def parsers(
        self, engine: GenerativeEngine, request: GenerationRequest, prompt_ids: Sequence[int], n: int
    ) -> list[OutputParser] | None:
        """One output parser per sequence, or None when the output is plain content."""
        if self.constrained:
            return [ToolChoiceParser(self.choice) for _ in range(n)]
        first = engine.output_parser(request, prompt_ids)
        if first is None:
            return None
        rest = [engine.output_parser(request, prompt_ids) for _ in range(n - 1)]
        return [first, *(p for p in rest if p is not None)]


def tool_use(
    tools: list[Tool], choice: str | None, named_tool: str | None, *, parallel: bool, param: str = "tool_choice"
) -> ToolUse:
    """The tool use a request asks for: `choice` is "none", "auto", "required" or None
    (unset: "auto" with tools), `named_tool` the name of a tool the choice names.

    A choice that forces a call needs tools (400 naming `param`); "auto" and "none" do not.
    """
    if named_tool is not None:
        if not tools:
            raise BadRequest(f"{param} names the tool {named_tool!r}, but there are no tools", param=param)
        return ToolUse(tools, "function", named(tools, named_tool, param), parallel, param)
    if not tools:
        if choice == "required":
            raise BadRequest(f"{param} {choice} needs tools", param=param)
        return ToolUse([], "none", None, parallel, param)
    if choice is None:
        return ToolUse(tools, "auto", None, parallel, param)
    if choice not in _CHOICES:
        raise BadRequest(f"{param} must be none, auto, required or name a tool", param=param)
    return ToolUse(tools, _CHOICES[choice], None, parallel, param)


_CHOICES: dict[str, ToolMode] = {"none": "none", "auto": "auto", "required": "required"}


def template_arguments(text: str) -> Any:
    """A past call's arguments as chat templates render them: an object (`| tojson`). The
    wire carries them as JSON text, so they are parsed back when they are a JSON object
    (as vLLM does); anything else stays text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


# ----------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Item:
    name: str | None = None
    params_start: int | None = None
    params_end: int | None = None


def _scan(text: str) -> list[_Item]:
    """The items of a (possibly unfinished) `[{"name": .., "parameters": ..}, ..]` text.

    A small JSON scanner: it tracks strings and nesting only, so it never needs the
    text to be complete, and it finds each item's name and where its parameters value
    starts and (once written) ends.
    """
    items: list[_Item] = []
    depth = 0
    in_string = escaped = False
    string_start = 0
    key: str | None = None
    last_string: str | None = None
    expect_value_for: str | None = None
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                raw = text[string_start : i + 1]
                if depth == 2:
                    try:
                        last_string = json.loads(raw)
                    except ValueError:
                        last_string = None
                    if expect_value_for == "name" and items:
                        items[-1].name = last_string
                        expect_value_for = None
                    elif expect_value_for is None:
                        key = last_string
                if depth == 2 and expect_value_for == "parameters" and items and items[-1].params_start == string_start:
                    items[-1].params_end = i + 1
                    expect_value_for = None
            continue
        if ch in " \t\r\n":
            continue
        if depth == 2 and expect_value_for == "parameters" and items and items[-1].params_start is None:
            items[-1].params_start = i
        if ch == '"':
            in_string = True
            string_start = i
        elif ch in "[{":
            depth += 1
            if depth == 2 and ch == "{":
                items.append(_Item())
                key = expect_value_for = None
        elif ch in "]}":
            depth -= 1
            if depth == 2 and expect_value_for == "parameters" and items:
                items[-1].params_end = i + 1
                expect_value_for = None
        elif ch == ":" and depth == 2:
            expect_value_for = key if key in ("name", "parameters") else "other"
            if expect_value_for == "other":
                expect_value_for = None
        elif ch == "," and depth == 2:
            if expect_value_for == "parameters" and items and items[-1].params_start is not None:
                items[-1].params_end = i  # a scalar value ended
            expect_value_for = None
    return items


class ToolChoiceParser:
    """Tool calls of one sequence under a named tool or "required" (see the module)."""

    def __init__(self, choice: Tool | None) -> None:
        self._choice = choice
        self._text = ""
        self._sent_args: dict[int, int] = {}  # item -> characters of its arguments sent
        self._ids: dict[int, str] = {}

    def parse(self, text: str, token_ids: Sequence[int]) -> ParsedOutput:
        """The whole output as tool calls (output cut short stays as its raw text)."""
        if self._choice is not None:
            try:  # compact, as "required" gives them; output cut short stays as written
                arguments = json.dumps(json.loads(text), ensure_ascii=False)
            except ValueError:
                arguments = text.strip()
            return ParsedOutput(content=None, tool_calls=[ToolCall(call_id(), self._choice.name, arguments)])
        try:
            items = json.loads(text)
            calls = [
                ToolCall(call_id(), item["name"], json.dumps(item["parameters"], ensure_ascii=False)) for item in items
            ]
        except (ValueError, TypeError, KeyError):
            return ParsedOutput(content=text)  # not finished (max_tokens): say what was written
        return ParsedOutput(content=None, tool_calls=calls)

    def parse_delta(self, text: str, token_ids: Sequence[int], finished: bool) -> ParsedDelta | None:
        """Name first, then argument fragments as the model writes them."""
        if self._choice is not None:
            if 0 not in self._ids:
                self._ids[0] = call_id()
                return ParsedDelta(tool_calls=[ToolCallDelta(0, self._ids[0], self._choice.name, text)])
            return ParsedDelta(tool_calls=[ToolCallDelta(0, arguments=text)]) if text else None
        self._text += text
        deltas = []
        for index, item in enumerate(_scan(self._text)):
            if item.name is None:
                break  # the name goes first
            head = None
            if index not in self._ids:
                self._ids[index] = head = call_id()
            args = ""
            if item.params_start is not None:
                end = item.params_end if item.params_end is not None else len(self._text)
                raw = self._text[item.params_start : end]
                sent = self._sent_args.get(index, 0)
                args, self._sent_args[index] = raw[sent:], len(raw)
            if head is not None or args:
                deltas.append(ToolCallDelta(index, head, item.name if head else None, args))
        return ParsedDelta(tool_calls=deltas) if deltas else None
