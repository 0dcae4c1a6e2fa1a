"""Wire models of the OpenAI-style chat service API: `/chat`, `/chat/completions`
and `/embeddings` at the root of the main port."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from gateway.protocols.common import tag_of
from gateway.protocols.openai import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)


class RolelessMessage(UserMessage):
    """A message without a role (the service's Bloom example): it is the user's."""

    role: Literal["user"] = "user"


ServiceChatMessage = Annotated[
    Annotated[SystemMessage, Tag("role=system")]
    | Annotated[SystemMessage, Tag("role=developer")]
    | Annotated[AssistantMessage, Tag("role=assistant")]
    | Annotated[ToolMessage, Tag("role=tool")]
    | Annotated[FunctionMessage, Tag("role=function")]
    | Annotated[RolelessMessage, Tag("role=user")],
    Discriminator(tag_of("role", default="user")),
]


class ServiceChatRequest(ChatCompletionRequest):
    """Body of `POST /chat/completions`: OpenAI's chat request with optional roles; a
    message may also be a plain string (the service declares `messages: List[str]`),
    which is the user's."""

    messages: Annotated[list[ServiceChatMessage], Field(min_length=1)]  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _plain_strings_are_user_messages(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("messages"), list):
            messages = [{"role": "user", "content": m} if isinstance(m, str) else m for m in data["messages"]]
            data = {**data, "messages": messages}
        return data
