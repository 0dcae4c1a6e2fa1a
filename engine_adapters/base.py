"""Engine Protocols, neutral request/response types and typed engine errors.

Every API translates its wire schema into a `GenerationRequest`; every engine
(vLLM, the scripted test engine) consumes one and yields `GenerationOutput`s. Nothing in
this module knows about HTTP or any API (after TEI's backend trait).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# --------------------------------------------------------------------------- errors


class EngineError(Exception):
    """Base class of errors raised by engine adapters."""


class PromptTooLongError(EngineError):
    """The prompt does not fit in the model's context with the requested output."""

    def __init__(self, message: str, param: str = "text") -> None:
        super().__init__(message)
        self.param = param


class InvalidParameterError(EngineError):
    """A parameter the engine cannot honour (out of its range, unknown id, ...)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnsupportedFeatureError(EngineError):
    """The request is valid, but this model or engine cannot do what it asks."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownAdapterError(EngineError):
    """A LoRA adapter the reader does not have."""

    def __init__(self, message: str, param: str | None = "lora_id") -> None:
        super().__init__(message)
        self.param = param


class EngineNotReadyError(EngineError):
    """The engine is still loading or has been stopped."""


class EngineDeadError(EngineError):
    """The engine died; nothing more can be served by it."""


class EngineOverloadedError(EngineError):
    """The engine refused the request because its queue is full."""


# --------------------------------------------------------------------------- tasks

# What a reader does (its `task`), and what a request asks for: the reader tasks and
# "score" (re-ranking), which readers that embed or classify serve.
ReaderTask = Literal["generate", "embed", "classify"]
Work = Literal["generate", "embed", "classify", "score"]

# --------------------------------------------------------------------------- request


@dataclass(slots=True)
class SamplingOptions:
    """Decoding parameters common to every API.

    `temperature == 0` means greedy decoding; `top_k == 0` means no top-k cut.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # most prompt tokens prompt logprobs may score (vLLM computes them over the whole
    # vocabulary per prompt position: memory grows with prompt length x vocabulary)
    prompt_logprobs_limit: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None


ConstraintKind = Literal["regex", "json", "choice", "json_object", "grammar"]


@dataclass(slots=True)
class Constraint:
    """Constrained decoding: the output must match `value` of the given kind."""

    kind: ConstraintKind
    value: Any
    backend: str | None = None
    # the request fields that carried it and its backend, for error messages
    param: str | None = None
    backend_param: str | None = None
    # JSON with bounded whitespace between its tokens (tool calls: sampling at a high
    # temperature cannot wander into blank space until the token limit)
    compact: bool = False


@dataclass(slots=True)
class GenerationRequest:
    """One generation, whatever API it came from.

    Exactly one of `prompt`, `messages` or `prompt_token_ids` is set. With
    `use_chat_template`, a plain `prompt` is rendered as one user message.
    """

    request_id: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt_token_ids: list[int] | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    constraint: Constraint | None = None
    use_chat_template: bool = False
    add_generation_prompt: bool = True
    prompt_max_tokens: int | None = None
    # cut a prompt too long for the context from the start (Takeoff's default), unless
    # the reader is strict (`truncate: false`); the engine sets how many tokens it cut
    truncate_prompt: bool = False
    prompt_tokens_dropped: int = 0
    # W3C trace context of the HTTP request (traceparent, tracestate), for the engine's
    # OpenTelemetry tracing when the reader has it configured
    trace_headers: dict[str, str] | None = None
    lora_id: str | None = None
    priority: int = 0
    stream: bool = False
    # vLLM's prefix-cache salt: only requests with the same salt share cached prefixes
    # (the gateway derives it from the caller's tenant, so no tenant can time another's)
    cache_salt: str | None = None
    # chat: tools the chat template sees (OpenAI function-tool dicts), whether the
    # engine's tool-call parser reads the output ("auto"), template controls
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required", "function"] = "none"
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False


# --------------------------------------------------------------------------- output


@dataclass(slots=True)
class TokenLogprob:
    """Log probability of one sampled token and its top alternatives."""

    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass(slots=True)
class SequenceDelta:
    """New output of one sequence (choice `index`) since the previous step."""

    index: int
    text: str
    token_ids: Sequence[int]
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    # what stopped it, with finish reason "stop": the stop string that matched, a stop
    # token id, or None for the end-of-sequence token (vLLM's `stop_reason`)
    stop_reason: str | int | None = None


@dataclass(slots=True)
class GenerationOutput:
    """One step of a generation: the deltas of the sequences that moved.

    `prompt_token_ids` is the exact prompt the engine saw (after chat template and
    truncation); it is set on every step so consumers need not track the first one.
    """

    prompt_token_ids: Sequence[int]
    deltas: list[SequenceDelta]
    finished: bool
    # log probabilities of the prompt tokens (the first is None), on the first output only
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # prompt tokens the prefix cache had (vLLM's num_cached_tokens), on one output only
    cached_tokens: int | None = None


@dataclass(slots=True)
class ModelInfo:
    """What a loaded generative model is."""

    name: str
    path: str
    max_model_len: int
    engine: str
    device: str
    dtype: str
    has_chat_template: bool
    eos_token_id: int | None = None
    # what the model can do
    tasks: tuple[Work, ...] = ("generate",)
    dimensions: int | None = None
    labels: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()  # LoRA adapter names
    # the engine's effective configuration (scheduler, cache, parallelism, model length)
    engine_config: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EngineStats:
    """Instantaneous load of an engine."""

    running: int
    waiting: int
    # sizes of the last batches a dynamic batcher ran, newest last (pooling engines)
    recent_batch_sizes: tuple[int, ...] = ()


@dataclass(slots=True)
class ToolCall:
    """A complete function call the model made; `arguments` is JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ParsedOutput:
    """A whole answer split into reasoning, content and tool calls."""

    content: str | None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of the tool call number `index`: its id and name come first, once."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class ParsedDelta:
    """A piece of a streamed answer split into reasoning, content and tool calls."""

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


class OutputParser(Protocol):
    """Splits one sequence's output (stateful: one per sequence, whole or streamed)."""

    def parse(self, text: str, token_ids: Sequence[int]) -> ParsedOutput:
        """The whole output."""
        ...

    def parse_delta(self, text: str, token_ids: Sequence[int], finished: bool) -> ParsedDelta | None:
        """The next piece of a streamed output; None when nothing can be sent yet."""
        ...


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class Engine(Protocol):
    """What every engine offers the registry: its model, its life and its health."""

    @property
    def info(self) -> ModelInfo:
        """The loaded model (valid after `start`); `info.tasks` says what it can do."""
        ...

    async def start(self) -> None:
        """Load the model; returns when the engine can serve."""
        ...

    async def shutdown(self) -> None:
        """Abort everything and free the engine's resources."""
        ...

    @property
    def dead(self) -> bool:
        """Whether the engine has died (cheap: checked on every readiness probe)."""
        ...

    async def check_health(self) -> None:
        """Raise `EngineDeadError` if the engine cannot serve any more."""
        ...

    def stats(self) -> EngineStats:
        """Requests (or inputs) running and waiting inside the engine."""
        ...


@runtime_checkable
class GenerativeEngine(Engine, Protocol):
    """What the gateway needs from a text-generation engine."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Run one generation. Closing or cancelling the iterator aborts it in the engine.

        Invalid input raises on the first `__anext__`; the first item (no deltas) is
        yielded as soon as the engine has accepted the request.
        """
        ...

    async def tokenize(self, text: str, use_chat_template: bool = False, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (rendered as one user message with the chat template)."""
        ...

    async def detokenize(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`."""
        ...

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """The vocabulary entries of `token_ids` (e.g. "Ġhello")."""
        ...

    def token_ids_of(self, tokens: Sequence[str]) -> list[int]:
        """The ids of vocabulary entries; unknown entries raise `InvalidParameterError`."""
        ...

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text the chat template makes of `messages` (and `tools`)."""
        ...

    def output_parser(self, request: GenerationRequest, prompt_token_ids: Sequence[int]) -> OutputParser | None:
        """A parser of the reader's reasoning and tool-call markup for one sequence of
        `request`, or None when the reader has neither (the output is plain content)."""
        ...


@dataclass(slots=True)
class EmbeddingResult:
    """One vector per input (rows of `vectors`) and the tokens each input took."""

    vectors: Any  # numpy float32 array, shape (inputs, dimensions)
    token_counts: list[int]


@dataclass(slots=True)
class ClassificationResult:
    """Probabilities per input and label (`labels` names the columns)."""

    probabilities: Any  # numpy float32 array, shape (inputs, labels)
    labels: tuple[str, ...]
    token_counts: list[int]


PoolingInput = str | list[int]
TextPair = tuple[str, str]


@runtime_checkable
class PoolingEngine(Engine, Protocol):
    """What the gateway needs from an embedding / classification / re-ranking model."""

    async def embed(self, inputs: list[PoolingInput]) -> EmbeddingResult:
        """Embed texts (or token ids); inputs of one call are batched with other calls."""
        ...

    async def classify(self, inputs: list[str | TextPair]) -> ClassificationResult:
        """Class probabilities of texts or text pairs."""
        ...

    async def score(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Relevance of each document to the query (higher is better), and tokens used."""
        ...


def fit_prompt(
    ids: list[int],
    request: GenerationRequest,
    max_model_len: int,
    param: str,
    max_prompt_tokens: int | None = None,
    truncate: bool = True,
) -> tuple[list[int], int]:
    """Apply `prompt_max_tokens` (keep the last N tokens) and fit the output in the context.

    Returns the prompt ids and the number of new tokens that fit: a prompt that leaves
    less room than `max_new_tokens` is generated up to the context limit (finish reason
    "length"), as vLLM's own server does when no limit is given; a prompt that leaves no
    room at all is an error naming the field, unless the request asks for truncation
    (`truncate_prompt`) and the reader allows it (`truncate`): then the prompt keeps its
    last tokens, leaving room for `min_new_tokens`.
    """
    original = len(ids)
    if request.prompt_max_tokens is not None and len(ids) > request.prompt_max_tokens:
        ids = ids[len(ids) - request.prompt_max_tokens :]
    if request.truncate_prompt and truncate:
        keep = max_model_len - max(1, request.sampling.min_new_tokens)
        if max_prompt_tokens is not None:
            keep = min(keep, max_prompt_tokens)
        if keep >= 1 and len(ids) > keep:
            ids = ids[len(ids) - keep :]
    request.prompt_tokens_dropped = original - len(ids)
    if not ids:
        raise InvalidParameterError("the prompt is empty after tokenization", param)
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise PromptTooLongError(
            f"the prompt has {len(ids)} tokens; this server accepts at most {max_prompt_tokens} "
            "(set prompt_max_tokens to keep only the last ones)",
            param,
        )
    s = request.sampling
    if s.prompt_logprobs is not None and s.prompt_logprobs_limit is not None and len(ids) > s.prompt_logprobs_limit:
        raise InvalidParameterError(
            f"the prompt has {len(ids)} tokens; prompt logprobs (echo with logprobs) score at most "
            f"{s.prompt_logprobs_limit} on this server",
            "logprobs",
        )
    room = max_model_len - len(ids)
    if room < max(1, request.sampling.min_new_tokens):
        raise PromptTooLongError(
            f"the prompt has {len(ids)} tokens, which leaves no room for new tokens in the "
            f"model's context of {max_model_len}; shorten it or set prompt_max_tokens",
            param,
        )
    return ids, min(room, request.sampling.max_new_tokens)


def check_json_schema(schema: Any) -> None:
    """Raise ValueError unless `schema` is a valid JSON schema (by its own metaschema)."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, dict):
        raise ValueError("a JSON schema must be an object")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from None


def load_chat_template(path: str) -> str:
    """A chat template file's text (a reader's `chat_template` setting)."""
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise EngineError(f"chat_template: no such file: {path}")
    return file.read_text()
