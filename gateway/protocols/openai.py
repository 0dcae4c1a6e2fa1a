"""Wire models of the OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`,
`/v1/models`), after OpenAI's API reference and vLLM's `openai/protocol.py`.

Fields the gateway cannot honour are declared so that a request using them gets a 400
naming the field (see `UNSUPPORTED_*`), instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictStr, StringConstraints, Tag, WithJsonSchema

from gateway.protocols.common import BackendName, Priority, Seed, tag_of
from gateway.settings import DEFAULT_GROUP

# Request fields we refuse with a 400 when they are set (not null/absent).
UNSUPPORTED_CHAT = ("audio", "modalities", "prediction", "web_search_options")
UNSUPPORTED_COMPLETION = ("suffix",)


class TextPart(BaseModel):
    """A text content part; other part types (images, audio) are refused."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


Content = StrictStr | list[TextPart]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = None


class SystemMessage(_Message):
    """Instructions; "developer" is OpenAI's newer name for the system role."""

    role: Literal["system", "developer"]
    content: Content


class UserMessage(_Message):
    """The user's turn."""

    role: Literal["user"]
    content: Content


class FunctionCallOut(BaseModel):
    """A call's function: its name and its arguments as JSON text."""

    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    arguments: StrictStr = "{}"


class ToolCallOut(BaseModel):
    """A tool call of an earlier assistant message."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr = ""
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(_Message):
    """An earlier answer of the model; its content may be empty when it called tools."""

    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionCallOut | None = None  # the legacy single call
    reasoning_content: StrictStr | None = None


class ToolMessage(_Message):
    """A tool's result, answering the call `tool_call_id`."""

    role: Literal["tool"]
    content: Content
    tool_call_id: StrictStr


class FunctionMessage(_Message):
    """A function's result in the legacy `functions` protocol."""

    role: Literal["function"]
    name: StrictStr
    content: StrictStr | None = None


AnyMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage

ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("role=system")]
    | Annotated[SystemMessage, Tag("role=developer")]
    | Annotated[UserMessage, Tag("role=user")]
    | Annotated[AssistantMessage, Tag("role=assistant")]
    | Annotated[ToolMessage, Tag("role=tool")]
    | Annotated[FunctionMessage, Tag("role=function")],
    Discriminator(tag_of("role")),
]


class FunctionDefinition(BaseModel):
    """A function the model may call (`tools[].function`, or an item of `functions`)."""

    model_config = ConfigDict(extra="ignore")

    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    """An item of `tools`: a function tool."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    """`{"name": ...}`."""

    name: StrictStr


class NamedToolChoice(BaseModel):
    """`tool_choice` naming one function: `{"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
FunctionCallChoice = Literal["none", "auto"] | NamedFunction


class StreamOptions(BaseModel):
    """`stream_options` of a streaming request."""

    include_usage: bool | None = False


class JSONSchemaFormat(BaseModel):
    """`response_format.json_schema`."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field("response", max_length=64)
    description: str | None = None
    # `schema` shadows a BaseModel attribute, hence the alias
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class TextFormat(BaseModel):
    """`response_format` {"type": "text"}: no constraint."""

    type: Literal["text"]


class JSONObjectFormat(BaseModel):
    """`response_format` {"type": "json_object"}: any JSON object."""

    type: Literal["json_object"]


class JSONSchemaResponseFormat(BaseModel):
    """`response_format` {"type": "json_schema", "json_schema": {...}}: JSON following a schema."""

    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("type=text")]
    | Annotated[JSONObjectFormat, Tag("type=json_object")]
    | Annotated[JSONSchemaResponseFormat, Tag("type=json_schema")],
    Discriminator(tag_of("type")),
]


class StructuredOutputs(BaseModel):
    """vLLM-style `structured_outputs` extension: exactly one of its fields."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": [k]} for k in ("regex", "json", "choice", "grammar")]},
    )

    regex: str | None = None
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    choice: list[StrictStr] | None = Field(None, min_length=1, max_length=1024)
    grammar: str | None = None
    backend: BackendName | None = None


StopString = Annotated[StrictStr, Field(min_length=1)]
Stop = StopString | Annotated[list[StopString], Field(max_length=64)] | None
# logit_bias is keyed by token ids written as JSON strings
_TOKEN_ID = r"^[0-9]{1,9}$"
_BIAS = {"type": "number", "minimum": -100, "maximum": 100}
LogitBias = Annotated[
    dict[Annotated[str, StringConstraints(pattern=_TOKEN_ID)], Annotated[float, Field(ge=-100, le=100)]],
    Field(max_length=1024),
    WithJsonSchema(
        {
            "type": "object",
            "patternProperties": {_TOKEN_ID: _BIAS},
            "additionalProperties": False,
            "maxProperties": 1024,
        }
    ),
]


class _SamplingFields(BaseModel):
    """Sampling fields shared by chat and completions, plus vLLM's extensions."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str = Field(DEFAULT_GROUP, min_length=1, max_length=256)
    n: int = Field(1, ge=1)
    stop: Stop = None
    seed: Seed | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extensions
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    priority: Priority | None = None
    structured_outputs: StructuredOutputs | None = None
    return_tokens_as_token_ids: bool = False
    timeout: float | None = Field(None, gt=0)
    # vLLM's prefix-cache salt; the gateway combines it with the caller's tenant's own
    cache_salt: str | None = Field(None, min_length=1, max_length=256)


class ChatCompletionRequest(_SamplingFields):
    """Body of `POST /v1/chat/completions`."""

    # top_logprobs needs logprobs (OpenAI's rule), stated for schema-driven clients
    model_config = ConfigDict(
        json_schema_extra={
            "dependentSchemas": {
                "top_logprobs": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}
            },
            # a tool choice needs tools; tools or the legacy functions, not both
            "dependentRequired": {"tool_choice": ["tools"], "function_call": ["functions"]},
            "not": {"required": ["tools", "functions"]},
            # continuing the final message means no new assistant turn
            "if": {"properties": {"continue_final_message": {"const": True}}, "required": ["continue_final_message"]},
            "then": {"properties": {"add_generation_prompt": {"const": False}}, "required": ["add_generation_prompt"]},
        }
    )

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    # function calling (and its legacy form)
    tools: Annotated[list[ToolDefinition], Field(min_length=1, max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[FunctionDefinition], Field(min_length=1, max_length=128)] | None = None
    function_call: FunctionCallChoice | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # chat template controls (vLLM's)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    include_reasoning: bool = True


PromptInput = (
    Annotated[StrictStr, Field(min_length=1)]
    | Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(_SamplingFields):
    """Body of `POST /v1/completions`."""

    prompt: PromptInput
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    response_format: ResponseFormat | None = None


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-gateway"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    """Answer of `GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
