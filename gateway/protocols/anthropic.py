"""Wire models of Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`),
after Anthropic's API reference and the anthropic SDK's types.

Fields the gateway accepts but does not act on (`cache_control`, `service_tier`,
`container`, `mcp_servers`, citations, `metadata.user_id`) are declared or let through so
that clients that always send them work (docs/apis/anthropic.md); image and document
blocks are refused with a 400 naming the block.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictStr, Tag

from gateway.protocols.common import Priority
from gateway.settings import DEFAULT_GROUP

# Accepted and documented as having no effect here.
IGNORED = ("service_tier", "container", "mcp_servers", "context_management", "inference_geo", "output_config")


class TextBlock(BaseModel):
    """`{"type": "text", "text": ...}` (citations and cache_control accepted, ignored)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ToolUseBlock(BaseModel):
    """A tool call of an earlier assistant turn."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["tool_use"]
    id: StrictStr = Field(min_length=1, max_length=256)
    name: StrictStr = Field(min_length=1, max_length=128)
    input: dict[str, Any] = Field(default_factory=dict)


def _part_tag(v: Any) -> str:
    t = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return "text" if t == "text" else "other"


class ToolResultBlock(BaseModel):
    """The result of a tool call, sent back by the client."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["tool_result"]
    tool_use_id: StrictStr = Field(min_length=1, max_length=256)
    content: StrictStr | list[ResultPart] = ""
    is_error: bool = False


class ThinkingBlock(BaseModel):
    """Thinking of an earlier assistant turn (not shown to the model again)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["thinking", "redacted_thinking"]
    thinking: StrictStr = ""
    signature: StrictStr | None = None
    data: StrictStr | None = None


class OtherBlock(BaseModel):
    """A block the gateway cannot read yet (images, documents, server tool results):
    refused with a 400 naming it."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr


ResultPart = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[OtherBlock, Tag("other")], Discriminator(_part_tag)
]
ToolResultBlock.model_rebuild()

_BLOCKS = ("text", "tool_use", "tool_result", "thinking", "redacted_thinking")


def _block_tag(v: Any) -> str:
    t = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    if t in ("thinking", "redacted_thinking"):
        return "thinking"
    return t if t in _BLOCKS else "other"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_tag),
]


class Message(BaseModel):
    """One turn: the user's or the assistant's (or system text between turns, which Claude
    Code sends)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant", "system"]
    content: StrictStr | Annotated[list[ContentBlock], Field(min_length=1)]


class Tool(BaseModel):
    """A client tool: `name`, `description`, `input_schema` (the arguments' JSON schema)."""

    model_config = ConfigDict(extra="ignore")

    name: StrictStr = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: StrictStr | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    type: Literal["custom"] | None = None


class ServerTool(BaseModel):
    """A tool Anthropic runs itself (`web_search_...`, `bash_...`): refused, naming it."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr
    name: StrictStr | None = None


def _tool_tag(v: Any) -> str:
    t = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return "custom" if t in (None, "custom") else "server"


AnyTool = Annotated[
    Annotated[Tool, Tag("custom")] | Annotated[ServerTool, Tag("server")],
    Discriminator(_tool_tag),
]


class ToolChoice(BaseModel):
    """`{"type": "auto" | "any" | "tool" | "none", "name": ..., "disable_parallel_tool_use": ...}`."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = None
    disable_parallel_tool_use: bool = False


class Thinking(BaseModel):
    """`{"type": "enabled", "budget_tokens": N}` or `{"type": "disabled"}`."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=0)


class Metadata(BaseModel):
    """`metadata.user_id` (accepted; not used)."""

    model_config = ConfigDict(extra="ignore")

    user_id: StrictStr | None = Field(None, max_length=256)


SystemPrompt = StrictStr | list[TextBlock]


class MessagesRequest(BaseModel):
    """Body of `POST /v1/messages`."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(DEFAULT_GROUP, min_length=1, max_length=256)
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: int = Field(ge=1, le=2**31 - 1)  # required, as Anthropic requires it
    system: SystemPrompt | None = None
    stop_sequences: Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=64)] | None = None
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    metadata: Metadata | None = None
    tools: Annotated[list[AnyTool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    stream: bool = False
    # gateway extensions, as on the other APIs
    priority: Priority | None = None
    timeout: float | None = Field(None, gt=0)


class CountTokensRequest(BaseModel):
    """Body of `POST /v1/messages/count_tokens`."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(DEFAULT_GROUP, min_length=1, max_length=256)
    messages: Annotated[list[Message], Field(min_length=1)]
    system: SystemPrompt | None = None
    tools: Annotated[list[AnyTool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
