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


def check_tools(tools: Sequence[Tool], param: str, schema_field: str | None = None) -> None:
    """Names unique and well formed, parameter schemas valid JSON Schema; else a 400.

    `schema_field` is where a tool's schema sits in the wire request, for the message:
    `function.parameters` (chat's `tools`, the default for "tools"), `parameters`
    (`functions`, the Responses API), `input_schema` (Anthropic)."""
    if schema_field is None:
        schema_field = "function.parameters" if param == "tools" else "parameters"
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not _NAME.match(tool.name):
            raise BadRequest(
                f"{param}[{i}]: a function name has 1 to 64 letters, digits, '_', '-' or '.'", param=f"{param}[{i}]"
            )
        if tool.name in seen:
            raise BadRequest(f"{param}[{i}]: the function name repeats an earlier one", param=f"{param}[{i}]")
        seen.add(tool.name)
        try:
            check_json_schema(tool.parameters)
        except ValueError as exc:
            field = f"{param}[{i}].{schema_field}"
            raise BadRequest(f"{field}: {exc}", param=field) from None


def named(tools: Sequence[Tool], name: str, param: str) -> Tool:
    """The tool a named `tool_choice` names; a 400 if it is not among `tools`."""
    for tool in tools:
        if tool.name == name:
            return tool
    raise BadRequest(f"{param} names a function that is not in tools", param=param)


def constraint(
    tools: Sequence[Tool], choice: Tool | None, parallel: bool, param: str, max_calls: int = 4
) -> Constraint:
    """The JSON schema the output must follow for a named tool or for "required" (at most
    `max_calls` calls when parallel calls are allowed, else one)."""
    if choice is not None:
        return Constraint(kind="json", value=choice.parameters or _EMPTY_OBJECT, param=param, compact=True)
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
    # a bound: a small model sampling at temperature 1 keeps adding calls otherwise
    schema["minItems"] = 1
    schema["maxItems"] = max_calls if parallel else 1
    return Constraint(kind="json", value=schema, param=param, compact=True)


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
    max_calls: int = 4  # at most this many parallel calls under "required"

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
        return constraint(self.tools, self.choice, self.parallel, self.param, self.max_calls)

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
    tools: list[Tool],
    choice: str | None,
    named_tool: str | None,
    *,
    parallel: bool,
    param: str = "tool_choice",
    max_calls: int = 4,
) -> ToolUse:
    """The tool use a request asks for: `choice` is "none", "auto", "required" or None
    (unset: "auto" with tools), `named_tool` the name of a tool the choice names;
    `max_calls` bounds the calls of "required" (the server's `max_parallel_tool_calls`).

    A choice that forces a call needs tools (400 naming `param`); "auto" and "none" do not.
    """
    if named_tool is not None:
        if not tools:
            raise BadRequest(f"{param} names a tool, but there are no tools", param=param)
        return ToolUse(tools, "function", named(tools, named_tool, param), parallel, param, max_calls)
    if not tools:
        if choice == "required":
            raise BadRequest(f"{param} {choice} needs tools", param=param)
        return ToolUse([], "none", None, parallel, param, max_calls)
    if choice is None:
        return ToolUse(tools, "auto", None, parallel, param, max_calls)
    if choice not in _CHOICES:
        raise BadRequest(f"{param} must be none, auto, required or name a tool", param=param)
    return ToolUse(tools, _CHOICES[choice], None, parallel, param, max_calls)


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
    """One call of a "required" output as the scan has seen it so far."""

    name: str | None = None
    args: list[str] = field(default_factory=list)  # argument text not yet handed out
    announced: bool = False  # its id and name went out


def _decoded(raw: str) -> str:
    """A JSON string's content with its escapes decoded (raw text if it is not valid)."""
    if "\\" not in raw:
        return raw
    try:
        return str(json.loads(f'"{raw}"'))
    except ValueError:
        return raw


class _CallScanner:
    """An incremental scan of `[{"name": .., "parameters": ..}, ..]` text that visits each
    character once, whatever the length of the output: it keeps its state (nesting,
    strings, which value it is in) between pieces, collects each item's name and hands out
    the raw text of its parameters value as it arrives. It tracks strings and nesting
    only, so it never needs the text to be complete."""

    __slots__ = ("_depth", "_escaped", "_expect", "_in_string", "_key", "_params", "_string", "items")

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = self._escaped = False
        self._string: list[str] | None = None  # characters of a string at the items' level
        self._key: str | None = None  # the last key read at the items' level
        self._expect: str | None = None  # the key whose value comes next ("name" | "parameters")
        # inside the current item's parameters value: "object" (until its depth closes),
        # "string" (until its quote) or "scalar" (until a separator); None outside
        self._params: str | None = None
        self.items: list[_Item] = []

    def feed(self, chunk: str) -> None:
        """Scan the next piece of the output."""
        run = -1  # where the current run of parameter characters started in this chunk
        for i, ch in enumerate(chunk):
            if self._params is not None and run < 0:
                run = i
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                    if self._string is not None:
                        self._end_string(_decoded("".join(self._string)))
                        self._string = None
                    if self._params == "string":
                        self._close_params(chunk, run, i + 1)
                        run = -1
                    continue
                if self._string is not None:
                    self._string.append(ch)
                continue
            if self._params == "scalar" and (ch in ",}]" or ch in " \t\r\n"):
                self._close_params(chunk, run, i)
                run = -1
            if ch in " \t\r\n":
                continue
            if self._depth == 2 and self._expect == "parameters" and self._params is None and self.items:
                # the parameters value starts here
                self._params = "object" if ch in "[{" else "string" if ch == '"' else "scalar"
                self._expect = None
                run = i
            if ch == '"':
                self._in_string = True
                if self._depth == 2 and self._params is None:
                    self._string = []
            elif ch in "[{":
                self._depth += 1
                if self._depth == 2 and ch == "{":
                    self.items.append(_Item())
                    self._key = self._expect = None
            elif ch in "]}":
                self._depth -= 1
                if self._depth == 2 and self._params == "object":
                    self._close_params(chunk, run, i + 1)
                    run = -1
            elif ch == ":" and self._depth == 2 and self._params is None:
                self._expect = self._key if self._key in ("name", "parameters") else None
            elif ch == "," and self._depth == 2:
                self._expect = None
        if self._params is not None and run >= 0 and self.items:
            self.items[-1].args.append(chunk[run:])

    def _end_string(self, raw: str) -> None:
        if not self.items:
            return
        if self._expect == "name":
            self.items[-1].name = raw
            self._expect = None
        elif self._expect is None:
            self._key = raw

    def _close_params(self, chunk: str, start: int, end: int) -> None:
        if self.items and start >= 0:
            self.items[-1].args.append(chunk[start:end])
        self._params = None


class ToolChoiceParser:
    """Tool calls of one sequence under a named tool or "required" (see the module)."""

    def __init__(self, choice: Tool | None) -> None:
        self._choice = choice
        self._scanner = _CallScanner()
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
        self._scanner.feed(text)
        deltas = []
        # only items with new text or a name to announce are visited: the work per piece
        # does not grow with the output
        items = self._scanner.items
        for index in range(len(self._ids) - 1 if self._ids else 0, len(items)):
            item = items[index]
            if item.name is None:
                break  # the name goes first
            head = None
            if not item.announced:
                item.announced = True
                self._ids[index] = head = call_id()
            args = "".join(item.args)
            item.args.clear()
            if head is not None or args:
                deltas.append(ToolCallDelta(index, head, item.name if head else None, args))
        return ParsedDelta(tool_calls=deltas) if deltas else None
