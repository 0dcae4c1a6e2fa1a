"""Wire models of OpenAI's Responses API (`POST /v1/responses` and its stored responses),
after OpenAI's API reference and the openai SDK's types.

Input items the gateway understands are typed; fields it accepts but does not act on are
declared in `IGNORED` (docs/apis/responses.md), so clients that always send them work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictStr, Tag

from gateway.protocols.common import Priority, Seed, tag_of
from gateway.settings import DEFAULT_GROUP

# Accepted and documented as having no effect here.
IGNORED = ("include", "prompt_cache_key", "truncation", "service_tier", "safety_identifier", "max_tool_calls")
# Refused with a 400 naming the field when set.
UNSUPPORTED = ("conversation", "prompt", "top_logprobs")


class InputText(BaseModel):
    """`input_text` (or `output_text` of an earlier answer) content part."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"]
    text: StrictStr = ""
    refusal: StrictStr | None = None


class OtherPart(BaseModel):
    """A content part the gateway cannot read (images, files, audio): refused."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr


def _part_tag(v: Any) -> str:
    t = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return (
        "text" if t in ("input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text") else "other"
    )


ContentPart = Annotated[
    Annotated[InputText, Tag("text")] | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_tag),
]


class MessageItem(BaseModel):
    """A message: `{"role": ..., "content": ...}`, with or without `"type": "message"`."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: StrictStr | list[ContentPart]
    id: StrictStr | None = None
    status: StrictStr | None = None


class FunctionCallItem(BaseModel):
    """A function call the model made in an earlier turn."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call"]
    call_id: StrictStr = Field(min_length=1)
    name: StrictStr = Field(min_length=1)
    arguments: StrictStr = "{}"
    id: StrictStr | None = None
    status: StrictStr | None = None


class FunctionCallOutputItem(BaseModel):
    """The result of a function call, sent back by the client."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call_output"]
    call_id: StrictStr = Field(min_length=1)
    output: StrictStr | list[ContentPart]
    id: StrictStr | None = None
    status: StrictStr | None = None


class ReasoningItem(BaseModel):
    """A reasoning item of an earlier turn (clients send them back)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["reasoning"]
    id: StrictStr | None = None
    summary: list[ContentPart] = Field(default_factory=list)
    content: list[ContentPart] | None = None
    encrypted_content: StrictStr | None = None


class OtherItem(BaseModel):
    """An item type the gateway cannot use (item references, computer calls...): refused."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr


_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def _item_tag(v: Any) -> str:
    t = v.get("type", "message") if isinstance(v, dict) else getattr(v, "type", None)
    return t if t in _ITEM_TYPES else "other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_tag),
]


class FunctionTool(BaseModel):
    """`{"type": "function", "name": ..., "parameters": {...}}` (flat, unlike chat's)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class BuiltinTool(BaseModel):
    """A tool OpenAI runs itself (`web_search`, `file_search`, ...): the gateway cannot."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr


def _tool_tag(v: Any) -> str:
    t = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return "function" if t == "function" else "builtin"


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[BuiltinTool, Tag("builtin")],
    Discriminator(_tool_tag),
]


class NamedFunctionChoice(BaseModel):
    """`tool_choice` naming one function: `{"type": "function", "name": ...}`."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    name: StrictStr


class TextFormatText(BaseModel):
    """`text.format` {"type": "text"}."""

    type: Literal["text"]


class TextFormatJSONObject(BaseModel):
    """`text.format` {"type": "json_object"}."""

    type: Literal["json_object"]


class TextFormatJSONSchema(BaseModel):
    """`text.format` {"type": "json_schema", "name": ..., "schema": {...}} (flat, unlike chat's)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    type: Literal["json_schema"]
    name: str = Field("response", max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


TextFormat = Annotated[
    Annotated[TextFormatText, Tag("type=text")]
    | Annotated[TextFormatJSONObject, Tag("type=json_object")]
    | Annotated[TextFormatJSONSchema, Tag("type=json_schema")],
    Discriminator(tag_of("type")),
]


class TextOptions(BaseModel):
    """`text`: the output's format (and `verbosity`, accepted)."""

    model_config = ConfigDict(extra="ignore")

    format: TextFormat | None = None
    verbosity: StrictStr | None = None


class ReasoningOptions(BaseModel):
    """`reasoning`: `effort` reaches a reasoning model's chat template; `summary` is accepted."""

    model_config = ConfigDict(extra="ignore")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: StrictStr | None = None
    generate_summary: StrictStr | None = None


class ResponsesRequest(BaseModel):
    """Body of `POST /v1/responses`."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(DEFAULT_GROUP, min_length=1, max_length=256)
    input: Annotated[StrictStr, Field(min_length=1)] | Annotated[list[InputItem], Field(min_length=1)] | None = None
    instructions: StrictStr | None = None
    previous_response_id: StrictStr | None = Field(None, min_length=1, max_length=256)
    # echoed in the response object: bounded so it serializes (JSON numbers past 64 bits do not)
    max_output_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    user: StrictStr | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    # vLLM-style extensions, as on chat
    seed: Seed | None = None
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)
    priority: Priority | None = None
    timeout: float | None = Field(None, gt=0)
