"""Wire models of the management API (port 3001) and of the tokenizer routes, as the
official Takeoff client calls them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from engine_adapters.factory import EngineKind
from gateway.settings import Task


class CreateReaderRequest(BaseModel):
    """Body of `POST /reader`: Takeoff's ReaderConfig fields, plus this gateway's.

    The Takeoff client sends `model_name`, `device`, `consumer_group` and optional
    engine fields; our own reader fields (`id`, `kind`, `task`, `lora_adapters`, ...)
    are accepted too and win over their Takeoff names.
    """

    model_config = ConfigDict(extra="forbid")

    # Takeoff's ReaderConfig (takeoff-config 0.5)
    model_name: str | None = Field(None, min_length=1)
    device: Literal["auto", "cpu", "cuda"] | None = None
    consumer_group: str | None = Field(None, min_length=1, max_length=64)
    max_batch_size: int | None = Field(None, ge=1)
    max_sequence_length: int | None = Field(None, ge=1)
    tensor_parallel: int | None = Field(None, ge=1)
    cuda_visible_devices: str | None = None
    batch_duration_millis: int | None = Field(None, ge=0)
    backend: str | None = None
    redis_host: str | None = None
    log_level: str | None = None
    access_token: str | None = None
    quant_type: str | None = None
    nvlink_unavailable: int | None = None
    disable_static: int | None = None
    disable_cuda_graph: int | None = None
    cuda_graph_cache_capacity: int | None = None
    disable_paged_attention: int | None = None
    page_cache_size: str | None = None
    # this gateway's reader fields
    id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    model: str | None = Field(None, min_length=1)
    kind: EngineKind | None = None
    task: Task | None = None
    dtype: str | None = None
    max_model_len: int | None = Field(None, ge=1)
    enforce_eager: bool | None = None
    cpu_kv_cache_gib: int | None = Field(None, ge=1)
    structured_outputs_backend: str | None = None
    lora_adapters: dict[str, str] | None = None
    max_lora_rank: int | None = Field(None, ge=1)
    engine_args: dict[str, Any] | None = None
    scripted: dict[str, Any] | None = None


class TokenizeRequest(BaseModel):
    """Body of `POST /tokenize/{reader_id}`."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr
    use_chat_template: bool = False


class DetokenizeRequest(BaseModel):
    """Body of `POST /detokenize/{reader_id}`: token ids or vocabulary entries."""

    model_config = ConfigDict(extra="ignore")

    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=0)] | list[StrictStr]
    skip_special_tokens: bool = True


class ChatTemplateMessage(BaseModel):
    """One message to render."""

    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr


class ChatTemplateRequest(BaseModel):
    """Body of `POST /chat_template/{reader_id}`: one conversation or several."""

    model_config = ConfigDict(extra="ignore")

    inputs: Annotated[list[Annotated[list[ChatTemplateMessage], Field(min_length=1)]], Field(min_length=1)]
    add_generation_prompt: bool = False
