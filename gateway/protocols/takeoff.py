"""Wire models of the Takeoff inference API (`/generate`, `/generate_stream`).

Fields and defaults follow Takeoff's documentation and what the official `takeoff-client`
0.7.0 sends: every optional parameter may arrive as JSON null, which means "use the
default". Wire models only: no engine imports here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationInfo, WithJsonSchema, field_validator

from gateway.protocols.common import BackendName, Priority, Seed

NonEmptyText = Annotated[StrictStr, Field(min_length=1)]


class GenerateRequest(BaseModel):
    """Body of `POST /generate` and `POST /generate_stream`."""

    model_config = ConfigDict(extra="ignore")

    text: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)]
    sampling_temperature: float | None = Field(None, ge=0.0, le=100.0)
    sampling_topp: float | None = Field(None, gt=0.0, le=1.0)
    sampling_topk: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=64)
    max_new_tokens: int | None = Field(None, ge=1)
    # the legacy name of max_new_tokens (Takeoff's asyncio example sends it)
    generate_max_length: int | None = Field(None, ge=1)
    min_new_tokens: int | None = Field(None, ge=0)
    prompt_max_tokens: int | None = Field(None, ge=1)
    regex_str: str | None = Field(None, min_length=1)
    regex_string: str | None = Field(None, min_length=1)
    # documented as an object; a string of JSON is accepted too (the Takeoff client sends one)
    json_schema: (
        Annotated[dict[str, Any] | StrictStr, WithJsonSchema({"type": "object", "description": "a JSON schema"})] | None
    ) = None
    constrained_decoding_backend: BackendName | None = None
    return_metadata: bool | None = None
    use_chat_template: bool | None = None
    consumer_group: str | None = Field(None, min_length=1, max_length=64)
    lora_id: str | None = Field(None, min_length=1, max_length=128)
    seed: Seed | None = None
    stop: list[Annotated[StrictStr, Field(min_length=1)]] | None = None
    priority: Priority | None = None
    timeout: float | None = Field(None, gt=0)

    @field_validator("regex_string")
    @classmethod
    def _one_regex(cls, v: str | None, info: ValidationInfo) -> str | None:
        other = info.data.get("regex_str")
        if v is not None and other is not None and v != other:
            raise ValueError("differs from regex_str; send one of them")
        return v

    @property
    def regex(self) -> tuple[str, str] | None:
        """The regex constraint and the field that carried it (`regex_str` is the
        older name of `regex_string`; both are accepted)."""
        if self.regex_string is not None:
            return self.regex_string, "regex_string"
        if self.regex_str is not None:
            return self.regex_str, "regex_str"
        return None


class GenerationMetadata(BaseModel):
    """Per-prompt metadata returned when `return_metadata` is true."""

    prompt_tokens: int
    generated_tokens: int
    finish_reason: Literal["stop", "length", "abort"] | str | None
    # prompt tokens cut from the start to fit the context (or prompt_max_tokens)
    truncated_prompt_tokens: int = 0


class GenerateResponse(BaseModel):
    """Body of a `/generate` answer: one text per prompt, in request order."""

    text: str | list[str]
    # the same text under the key the legacy Takeoff client reads
    message: str | list[str]
    metadata: GenerationMetadata | list[GenerationMetadata] | None = None
