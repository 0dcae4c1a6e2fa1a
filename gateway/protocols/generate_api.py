"""Wire models of the generate-one / generate-batch API."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from gateway.protocols.common import BackendName, Priority, Seed

RequestId = Annotated[StrictStr, Field(min_length=1)]
# Documented as non-empty; an empty prompt is accepted when the request_id continues a
# stored generation (the prompt is ignored then), and is a 400 otherwise.
ContinuablePrompt = Annotated[StrictStr, Field(json_schema_extra={"minLength": 1})]


class GenerationConfig(BaseModel):
    """`generation_config`: Hugging Face-style generation parameters.

    Missing fields take the gateway's `generate_api_defaults`. Other Hugging Face keys
    are ignored, so existing scripts keep working.
    """

    model_config = ConfigDict(extra="ignore")

    num_beams: int | None = Field(None, ge=1)
    do_sample: bool | None = None
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    max_new_tokens: int | None = Field(None, ge=1)
    min_new_tokens: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)
    length_penalty: float | None = Field(None, ge=-10.0, le=10.0)
    seed: Seed | None = None
    # extension: constrained decoding (at most one of regex, json_schema, choice)
    regex: str | None = Field(None, min_length=1)
    json_schema: dict[str, Any] | None = None
    choice: list[StrictStr] | None = Field(None, min_length=1, max_length=1024)
    constrained_decoding_backend: BackendName | None = None


class GenerateOneRequest(BaseModel):
    """Body of `POST /api/generate-one`."""

    model_config = ConfigDict(extra="ignore")

    request_id: RequestId
    prompt: ContinuablePrompt
    only_new_tokens: bool = True
    stream_response: bool = True
    generation_config: GenerationConfig | None = None
    priority: Priority | None = None
    timeout: float | None = Field(None, gt=0)


class BatchPrompt(BaseModel):
    """One entry of `prompts` in `POST /api/generate-batch`."""

    model_config = ConfigDict(extra="ignore")

    request_id: RequestId
    prompt: ContinuablePrompt


class GenerateBatchRequest(BaseModel):
    """Body of `POST /api/generate-batch`."""

    model_config = ConfigDict(extra="ignore")

    prompts: Annotated[list[BatchPrompt], Field(min_length=1)]
    only_new_tokens: bool = True
    generation_config: GenerationConfig | None = None
    priority: Priority | None = None
    timeout: float | None = Field(None, gt=0)


class BatchResult(BaseModel):
    """One entry of the generate-batch answer, in request order."""

    request_id: str
    prompt: str | None = None
    response: str
