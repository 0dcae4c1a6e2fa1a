"""Wire models of the OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`,
`/v1/models`), after OpenAI's API reference and vLLM's `openai/protocol.py`.

Fields the gateway cannot honour are declared so that a request using them gets a 400
naming the field (see `UNSUPPORTED_*`), instead of being silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

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


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: str | None = None


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


class ResponseFormat(BaseModel):
    """`response_format`: plain text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StructuredOutputs(BaseModel):
    """vLLM-style `structured_outputs` extension: exactly one of its fields."""

    model_config = ConfigDict(extra="forbid")

    regex: str | None = None
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    choice: list[StrictStr] | None = Field(None, min_length=1)
    grammar: str | None = None
    backend: str | None = None


Stop = StrictStr | Annotated[list[StrictStr], Field(max_length=64)] | None


class _SamplingFields(BaseModel):
    """Sampling fields shared by chat and completions, plus vLLM's extensions."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str = Field("primary", min_length=1, max_length=256)
    n: int = Field(1, ge=1)
    stop: Stop = None
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
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
