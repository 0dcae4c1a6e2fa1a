"""Wire models of the OpenAI-style chat service API (seed 003): `/chat`, `/chat/completions`
and `/embeddings` at the root of the main port."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictStr

from gateway.protocols.openai import ChatCompletionRequest, ChatMessage, TextPart


class ServiceChatMessage(ChatMessage):
    """A message whose role may be left out (seed 003's Bloom example): it is a user's."""

    role: Literal["system", "developer", "user", "assistant"] = "user"
    content: StrictStr | list[TextPart] | None = None


class ServiceChatRequest(ChatCompletionRequest):
    """Body of `POST /chat/completions`: OpenAI's chat request with optional roles."""

    messages: Annotated[list[ServiceChatMessage], Field(min_length=1)]  # type: ignore[assignment]
