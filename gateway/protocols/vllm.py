"""Wire models of vLLM's own server paths that are not OpenAI's, after vLLM's protocol
classes: `/tokenize`, `/detokenize`, `/score` (and `/v1/score`), `/pooling`, `/classify`
with `input`, and the `/invocations` dispatch. Multimodal inputs, per-request chat
templates and the truncation knobs are refused with a 400 naming the field
(docs/apis/vllm.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

from gateway.protocols.embeddings import Text, Texts, TokenIds
from gateway.protocols.openai import ChatMessage, ToolDefinition

Model = Annotated[str, Field(min_length=1, max_length=256)]
# vLLM fields with no counterpart here: refused by name rather than silently dropped
UNSUPPORTED = (
    "chat_template",
    "mm_processor_kwargs",
    "media_io_kwargs",
    "truncate_prompt_tokens",
    "max_tokens_per_query",
    "max_tokens_per_doc",
)


class _Vllm(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked against UNSUPPORTED, the rest ignored

    model: Model | None = None


class TokenizeRequest(_Vllm):
    """`POST /tokenize`: a prompt, or chat messages rendered with the chat template."""

    prompt: StrictStr | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    # vLLM's defaults: special tokens are added to a prompt, not to rendered messages
    # (the template has them)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False
    tools: Annotated[list[ToolDefinition], Field(max_length=128)] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(_Vllm):
    """`POST /detokenize`."""

    tokens: list[Annotated[int, Field(ge=0, le=2**63 - 1)]]


ScoreSide = Text | Texts
_SPELLINGS = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2"))


class ScoreRequest(_Vllm):
    """`POST /score` and `/v1/score`: one text against many, or pairs, in any of vLLM's
    spellings (`text_1`/`text_2`, `queries`/`documents`, `queries`/`items`,
    `data_1`/`data_2`)."""

    text_1: ScoreSide | None = None
    text_2: ScoreSide | None = None
    queries: ScoreSide | None = None
    documents: ScoreSide | None = None
    items: ScoreSide | None = None
    data_1: ScoreSide | None = None
    data_2: ScoreSide | None = None

    def sides(self) -> tuple[list[str], list[str], str]:
        """(first side, second side, the second side's field name)."""
        for first, second in _SPELLINGS:
            a, b = getattr(self, first), getattr(self, second)
            if a is not None and b is not None:
                return ([a] if isinstance(a, str) else list(a)), ([b] if isinstance(b, str) else list(b)), second
        raise ValueError("give text_1 and text_2 (or queries and documents)")

    @model_validator(mode="after")
    def _two_sides(self) -> ScoreRequest:
        self.sides()
        return self


PoolingInput = Text | Texts | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]


class PoolingRequest(_Vllm):
    """`POST /pooling`: the pooled output of the model for each input."""

    input: PoolingInput
    task: Literal["embed", "classify"] | None = None
    encoding_format: Literal["float"] = "float"


class ClassifyRequest(_Vllm):
    """`POST /classify` with `input` (vLLM's body; Takeoff's has `text`)."""

    input: Text | Texts
