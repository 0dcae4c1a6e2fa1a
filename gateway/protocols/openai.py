"""Wire models of the OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`,
`/v1/models`), after OpenAI's API reference and vLLM's `openai/protocol.py`.

Fields the gateway cannot honour are declared so that a request using them gets a 400
naming the field (see `UNSUPPORTED_*`), instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictStr, StringConstraints, Tag, WithJsonSchema

from gateway.protocols.common import BackendName, tag_of
from gateway.settings import DEFAULT_GROUP

# Request fields we refuse with a 400 when they are set (not null/absent).
UNSUPPORTED_CHAT = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "reasoning_effort",
)
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


class AssistantMessage(_Message):
    """An earlier answer of the model; its content may be empty."""

    role: Literal["assistant"]
    content: Content | None = None


ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("role=system")]
    | Annotated[SystemMessage, Tag("role=developer")]
    | Annotated[UserMessage, Tag("role=user")]
    | Annotated[AssistantMessage, Tag("role=assistant")],
    Discriminator(tag_of("role")),
]


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
    choice: list[StrictStr] | None = Field(None, min_length=1)
    grammar: str | None = None
    backend: BackendName | None = None


StopString = Annotated[StrictStr, Field(min_length=1)]
Stop = StopString | Annotated[list[StopString], Field(max_length=64)] | None
# logit_bias is keyed by token ids written as JSON strings
_TOKEN_ID = r"^[0-9]{1,9}$"
_BIAS = {"type": "number", "minimum": -100, "maximum": 100}
LogitBias = Annotated[
    dict[Annotated[str, StringConstraints(pattern=_TOKEN_ID)], Annotated[float, Field(ge=-100, le=100)]],
    WithJsonSchema({"type": "object", "patternProperties": {_TOKEN_ID: _BIAS}, "additionalProperties": False}),
]


class _SamplingFields(BaseModel):
    """Sampling fields shared by chat and completions, plus vLLM's extensions."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str = Field(DEFAULT_GROUP, min_length=1, max_length=256)
    n: int = Field(1, ge=1)
    stop: Stop = None
    seed: int | None = None
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
    priority: int | None = None
    structured_outputs: StructuredOutputs | None = None
    return_tokens_as_token_ids: bool = False
    timeout: float | None = Field(None, gt=0)


class ChatCompletionRequest(_SamplingFields):
    """Body of `POST /v1/chat/completions`."""

    # top_logprobs needs logprobs (OpenAI's rule), stated for schema-driven clients
    model_config = ConfigDict(
        json_schema_extra={
            "dependentSchemas": {
                "top_logprobs": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}
            }
        }
    )

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    add_generation_prompt: bool = True


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


class Usage(BaseModel):
    """Token accounting of one request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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
