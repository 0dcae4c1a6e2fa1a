"""Wire models of embeddings, classification and re-ranking: Takeoff's `/embed` and
`/classify`, OpenAI's `/v1/embeddings` (and the chat service's `/embeddings`), and `/rerank` in
the shape Cohere, Jina and vLLM clients use."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

Text = Annotated[StrictStr, Field(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    """Body of OpenAI's `POST /v1/embeddings` (and the chat service's `/embeddings`)."""

    model_config = ConfigDict(extra="ignore")

    input: Text | Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    model: str | None = Field(None, min_length=1, max_length=256)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class TakeoffEmbedRequest(BaseModel):
    """Body of Takeoff's `POST /embed`."""

    model_config = ConfigDict(extra="ignore")

    text: Text | Texts
    consumer_group: str | None = Field(None, min_length=1, max_length=64)


Pair = Annotated[list[Text], Field(min_length=2, max_length=2)]


class ClassifyRequest(BaseModel):
    """Body of Takeoff's `POST /classify`: texts, or [text, text] pairs (re-ranking)."""

    model_config = ConfigDict(extra="ignore")

    text: Text | Texts | Annotated[list[Pair], Field(min_length=1)]
    consumer_group: str | None = Field(None, min_length=1, max_length=64)


class RerankDocument(BaseModel):
    """A document given as an object (Cohere/Jina style)."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr


class RerankRequest(BaseModel):
    """Body of `POST /rerank` and `POST /v1/rerank`."""

    model_config = ConfigDict(extra="ignore")

    query: Text
    documents: Annotated[list[StrictStr | RerankDocument], Field(min_length=1)]
    model: str | None = Field(None, min_length=1, max_length=256)
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True
