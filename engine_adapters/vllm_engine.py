"""The vLLM adapter: one `AsyncLLM` (vLLM's V1 `AsyncLLMEngine`) in this process.

vLLM does the paged-attention continuous batching; this adapter only turns the neutral
request into token ids and `SamplingParams`, streams `RequestOutputKind.DELTA` outputs
back, and makes sure an abandoned request is aborted inside the engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine_adapters.base import (
    EngineDeadError,
    EngineError,
    EngineNotReadyError,
    EngineOverloadedError,
    GenerationOutput,
    GenerationRequest,
    InvalidParameterError,
    ModelInfo,
    SequenceDelta,
    TokenLogprob,
    UnknownAdapterError,
    UnsupportedFeatureError,
    fit_prompt,
    load_chat_template,
)
from engine_adapters.logits_processors import NO_REPEAT_NGRAM_KEY
from engine_adapters.vllm_constraints import ConstraintChecker, short
from engine_adapters.vllm_host import AsyncLLMHost, engine_config_summary, prepare_cpu_env, start_async_llm
from engine_adapters.vllm_parsing import VLLMOutputParser, parser_class

log = logging.getLogger(__name__)

# Prompts shorter than this are tokenized on the event loop (tens of microseconds);
# longer ones go to a thread so one big prompt cannot stall every stream.
_INLINE_TOKENIZE_CHARS = 4096


@dataclass
class VLLMEngineConfig:
    """Engine settings of one vLLM reader (a subset of vLLM's `AsyncEngineArgs`)."""

    model: str
    served_name: str
    served_model_names: list[str] = field(default_factory=list)  # all its names (the first is served_name)
    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = None
    max_batch_size: int | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # vLLM's default
    cpu_kv_cache_gib: int | None = None
    structured_outputs_backend: str = "auto"
    enable_prefix_caching: bool | None = None  # vLLM's default: by the model
    scheduling_policy: str = "fcfs"
    seed: int | None = None  # vLLM's default
    no_repeat_ngram: bool = True
    lora_adapters: dict[str, str] = field(default_factory=dict)
    max_lora_rank: int = 16
    max_loras: int = 4
    max_queued_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None
    truncate: bool = True  # Takeoff prompts too long for the context are cut (false: 400)
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    constraint_check_timeout: float = 10.0
    chat_template: str | None = None  # a template file that replaces the model's
    engine_args: dict[str, Any] = field(default_factory=dict)


class VLLMEngine(AsyncLLMHost):
    """`GenerativeEngine` backed by vLLM's AsyncLLM."""

    def __init__(self, config: VLLMEngineConfig) -> None:
        super().__init__()
        self.config = config
        self._priority_enabled = config.scheduling_policy == "priority"
        self._loras: dict[str, Any] = {}
        # (kind, spec) -> None when the reader's backend accepts it, else the reason
        self._chat_template: str | None = None
        self._vocab: dict[str, int] | None = None
        self._parser_cls: Any = None
        self._constraints = ConstraintChecker(
            config.structured_outputs_backend,
            config.constraint_check_timeout,
            lambda: self._engine,
            lambda: self._tokenizer,
        )

    # ------------------------------------------------------------------ lifecycle

    def engine_args(self) -> dict[str, Any]:
        """The `AsyncEngineArgs` of this reader, as `vllm serve` would take them: vLLM's
        defaults, the reader's fields, then its `engine_args` (which win; `gateway serve
        MODEL --any-vllm-flag` lands there). Where the gateway differs from `vllm serve`
        (docs/migration.md): the structured-output backend is xgrammar rather than "auto",
        and the no-repeat-ngram logits processor is loaded (`no_repeat_ngram: false`
        leaves it out)."""
        cfg = self.config
        args: dict[str, Any] = {
            "model": cfg.model,
            "served_model_name": cfg.served_model_names or [cfg.served_name],
            "dtype": cfg.dtype,
            "max_model_len": cfg.max_model_len,
            "enforce_eager": cfg.enforce_eager,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "pipeline_parallel_size": cfg.pipeline_parallel_size,
            "scheduling_policy": cfg.scheduling_policy,
            "disable_log_stats": False,
            "structured_outputs_config": {"backend": cfg.structured_outputs_backend},
        }
        # fields left unset keep vLLM's default (which moves between versions: 0.9 then
        # 0.92 for gpu_memory_utilization)
        for name in ("gpu_memory_utilization", "seed", "enable_prefix_caching"):
            if getattr(cfg, name) is not None:
                args[name] = getattr(cfg, name)
        if cfg.no_repeat_ngram:
            # a per-step hook in the engine core; readers that never use it can leave it out
            args["logits_processors"] = ["engine_adapters.logits_processors:NoRepeatNGramLogitsProcessor"]
        if cfg.max_batch_size:
            args["max_num_seqs"] = cfg.max_batch_size
        if cfg.max_queued_prompt_tokens:
            # vLLM's own admission: prompt tokens waiting for prefill (refused as 429 here)
            args["max_num_queued_tokens"] = cfg.max_queued_prompt_tokens
        if cfg.lora_adapters:
            # adapters are served in the same batches as the base model (vLLM's multi-LoRA)
            args.update(enable_lora=True, max_lora_rank=cfg.max_lora_rank, max_loras=cfg.max_loras)
        args.update(cfg.engine_args)
        return args

    async def start(self) -> None:
        """Build the AsyncLLM as `vllm serve` does (about 40 s for the embedded model on 2
        CPU cores)."""
        from vllm.platforms import current_platform

        cfg = self.config
        if cfg.structured_outputs_backend == "lm-format-enforcer":
            # Its vLLM integration is imported inside the engine at the first constrained
            # request; if it does not import, every such request would fail there.
            try:
                import lmformatenforcer.integrations.vllm  # noqa: F401
            except ImportError as exc:
                raise EngineError(
                    f"the lm-format-enforcer backend does not work with this vLLM build ({exc}); "
                    "use xgrammar, guidance or outlines"
                ) from exc
        platform = "cpu" if current_platform.is_cpu() else current_platform.device_type
        if cfg.device not in ("auto", platform):
            raise EngineError(
                f"device {cfg.device!r} was asked for but the installed vLLM build runs on "
                f"{platform!r}; install the matching extra (.[cpu] or .[cuda])"
            )
        if platform == "cpu":
            prepare_cpu_env(cfg.cpu_kv_cache_gib, self.engine_args())
        if cfg.lora_adapters:
            from vllm.lora.request import LoRARequest

            for name, path in cfg.lora_adapters.items():
                if not os.path.isfile(os.path.join(path, "adapter_config.json")):  # noqa: ASYNC240 - once at load
                    raise EngineError(f"LoRA adapter {name!r}: no adapter_config.json in {path}")
            self._loras = {
                name: LoRARequest(lora_name=name, lora_int_id=i + 1, lora_path=path)
                for i, (name, path) in enumerate(cfg.lora_adapters.items())
            }
        # building blocks while the EngineCore process loads the model; a thread keeps the
        # HTTP listeners answering /healthz and /readyz meanwhile
        self._engine = await asyncio.to_thread(start_async_llm, self.engine_args())
        self._tokenizer = self._engine.get_tokenizer()
        if cfg.chat_template is not None:
            self._chat_template = load_chat_template(cfg.chat_template)
        self._parser_cls = parser_class(cfg.tool_call_parser, cfg.reasoning_parser, self._tokenizer)
        mc = self._engine.model_config
        self._info = ModelInfo(
            name=cfg.served_name,
            path=cfg.model,
            max_model_len=int(mc.max_model_len),
            engine="vllm",
            device=platform,
            dtype=str(mc.dtype).removeprefix("torch."),
            has_chat_template=bool(self._chat_template or getattr(self._tokenizer, "chat_template", None)),
            eos_token_id=getattr(self._tokenizer, "eos_token_id", None),
            adapters=tuple(self._loras),
            engine_config=engine_config_summary(self._engine.vllm_config),
        )

    # ------------------------------------------------------------------ tokenizer

    async def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        tok = self._tokenizer
        if len(text) <= _INLINE_TOKENIZE_CHARS:
            return list(tok.encode(text, add_special_tokens=add_special_tokens))
        return list(await asyncio.to_thread(tok.encode, text, add_special_tokens=add_special_tokens))

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render `messages` with the reader's chat template."""
        return self._render(
            GenerationRequest(
                request_id="", messages=messages, add_generation_prompt=add_generation_prompt, tools=tools
            )
        )

    def _render(self, request: GenerationRequest) -> str:
        tok = self._tokenizer
        if tok is None:
            raise EngineNotReadyError("the model is still loading")
        template = self._chat_template or getattr(tok, "chat_template", None)
        if not template:
            raise UnsupportedFeatureError("this model has no chat template; send a plain prompt instead", "messages")
        try:
            return str(
                tok.apply_chat_template(
                    request.messages,
                    tools=request.tools,
                    chat_template=template,
                    add_generation_prompt=request.add_generation_prompt,
                    continue_final_message=request.continue_final_message,
                    tokenize=False,
                    **(request.chat_template_kwargs or {}),
                )
            )
        except Exception as exc:  # jinja errors: bad roles, template raise_exception()
            raise InvalidParameterError(
                f"the chat template rejected the messages: {short(str(exc))}", "messages"
            ) from exc

    def output_parser(self, request: GenerationRequest, prompt_token_ids: Sequence[int]) -> VLLMOutputParser | None:
        """The reader's reasoning and tool-call parsers for one sequence, if it has any."""
        if self._parser_cls is None:
            return None
        return VLLMOutputParser(self._parser_cls, self._tokenizer, request, prompt_token_ids)

    async def tokenize(self, text: str, use_chat_template: bool = False, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, optionally as one user message in the chat template."""
        if self._tokenizer is None:
            raise EngineNotReadyError("the model is still loading")
        if use_chat_template:
            rendered = self.render_chat([{"role": "user", "content": text}])
            return await self._encode(rendered, add_special_tokens=False)
        return await self._encode(text, add_special_tokens=add_special_tokens)

    async def detokenize(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`."""
        if self._tokenizer is None:
            raise EngineNotReadyError("the model is still loading")
        self._check_ids(token_ids, "tokens")
        ids = list(token_ids)
        if len(ids) <= _INLINE_TOKENIZE_CHARS // 4:
            return str(self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))
        return str(await asyncio.to_thread(self._tokenizer.decode, ids, skip_special_tokens=skip_special_tokens))

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """Vocabulary entries of the ids."""
        if self._tokenizer is None:
            raise EngineNotReadyError("the model is still loading")
        self._check_ids(token_ids, "tokens")
        return [str(t) for t in self._tokenizer.convert_ids_to_tokens(list(token_ids))]

    def token_ids_of(self, tokens: Sequence[str]) -> list[int]:
        """Ids of vocabulary entries; entries not in the vocabulary are a 400."""
        if self._tokenizer is None:
            raise EngineNotReadyError("the model is still loading")
        if self._vocab is None:  # built once: get_vocab() copies the whole vocabulary
            self._vocab = self._tokenizer.get_vocab()
        vocab = self._vocab
        unknown = [t for t in tokens if t not in vocab]
        if unknown:
            raise InvalidParameterError(f"{len(unknown)} token(s) are not in the vocabulary", "tokens")
        return [vocab[t] for t in tokens]

    def _check_ids(self, token_ids: Sequence[int], param: str) -> None:
        vocab = len(self._tokenizer)
        for t in token_ids:
            if not 0 <= t < vocab:
                raise InvalidParameterError(f"token id {t} is outside the vocabulary (0..{vocab - 1})", param)

    async def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            vocab = len(self._tokenizer)
            if any(not 0 <= t < vocab for t in request.prompt_token_ids):
                raise InvalidParameterError("a prompt token id is outside the vocabulary", "prompt")
            return list(request.prompt_token_ids)
        if request.messages is not None:
            # a long conversation is rendered (a Jinja program) off the event loop, as long
            # prompts are tokenized there
            size = sum(len(str(m.get("content") or "")) for m in request.messages)
            if size <= _INLINE_TOKENIZE_CHARS and not request.tools:
                rendered = self._render(request)
            else:
                rendered = await asyncio.to_thread(self._render, request)
            return await self._encode(rendered, add_special_tokens=False)
        assert request.prompt is not None
        return await self.tokenize(request.prompt, request.use_chat_template)

    # ------------------------------------------------------------------ generation

    def _sampling_params(self, request: GenerationRequest, max_tokens: int) -> Any:
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        s = request.sampling
        structured = None
        if request.constraint is not None:
            kind, value = self._constraints.spec(request.constraint)
            structured = StructuredOutputsParams(**{kind: value})
        extra = None
        if s.no_repeat_ngram_size:
            if not self.config.no_repeat_ngram:
                raise UnsupportedFeatureError(
                    "no_repeat_ngram_size is turned off on this reader (no_repeat_ngram: false)", "no_repeat_ngram_size"
                )
            extra = {NO_REPEAT_NGRAM_KEY: s.no_repeat_ngram_size}
        greedy = s.temperature == 0.0 or s.top_k == 1
        # tool-call markup is a special token in some models: the parser must see it
        skip_special = s.skip_special_tokens and not (
            request.tool_choice == "auto" and request.tools and self.config.tool_call_parser
        )
        try:
            return SamplingParams(
                n=s.n,
                temperature=0.0 if greedy else s.temperature,
                top_p=1.0 if greedy else s.top_p,
                top_k=0 if greedy else s.top_k,
                min_p=s.min_p,
                repetition_penalty=s.repetition_penalty,
                presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty,
                seed=s.seed,
                stop=list(s.stop) or None,
                ignore_eos=s.ignore_eos,
                max_tokens=max_tokens,
                min_tokens=s.min_new_tokens,
                logprobs=s.logprobs,
                prompt_logprobs=s.prompt_logprobs,
                skip_special_tokens=skip_special,
                output_kind=RequestOutputKind.DELTA,
                structured_outputs=structured,
                logit_bias=s.logit_bias,
                extra_args=extra,
            )
        except (ValueError, VLLMValidationError) as exc:
            raise InvalidParameterError(short(str(exc)), getattr(exc, "parameter", None)) from exc

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Stream the generation; closing or cancelling the iterator aborts it in the engine.

        The first item (no deltas) comes as soon as the engine has accepted the request,
        so callers learn about invalid input before they commit to a streaming answer.
        """
        from vllm.exceptions import VLLMClientError, VLLMValidationError
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError

        engine = self._engine
        if engine is None:
            raise EngineNotReadyError("the model is still loading")
        if engine.errored:
            raise EngineDeadError("the vLLM engine core has died")
        lora = None
        if request.lora_id is not None:
            lora = self._loras.get(request.lora_id)
            if lora is None:
                have = ", ".join(self._loras) or "none"
                raise UnknownAdapterError(f"no such LoRA adapter; this reader's adapters: {have}")
        param = "messages" if request.messages is not None else "prompt"
        prompt_ids = await self._prompt_ids(request)
        ids, max_tokens = fit_prompt(
            prompt_ids, request, self.info.max_model_len, param, self.config.max_prompt_tokens, self.config.truncate
        )
        if request.sampling.num_beams > 1:
            async for out in self._beam_search(request, ids, max_tokens):
                yield out
            return
        if request.constraint is not None:
            await self._constraints.check(request.constraint)
        params = self._sampling_params(request, max_tokens)
        kwargs: dict[str, Any] = {}
        if request.priority:
            if not self._priority_enabled:
                raise InvalidParameterError(
                    "this reader schedules first come, first served; set its scheduling_policy to "
                    "priority to use request priorities",
                    "priority",
                )
            kwargs["priority"] = request.priority
        if lora is not None:
            kwargs["lora_request"] = lora
        if request.trace_headers and self.config.engine_args.get("otlp_traces_endpoint"):
            kwargs["trace_headers"] = request.trace_headers
        try:
            # add_request + the collector is what AsyncLLM.generate does inside; doing it
            # here separates "rejected" (raised now, a clean 4xx) from "failed later".
            prompt = tokens_input(ids, cache_salt=request.cache_salt)
            queue = await engine.add_request(request.request_id, prompt, params, **kwargs)
        except VLLMEngineDeadError as exc:
            raise EngineDeadError("the vLLM engine core has died") from exc
        except VLLMValidationError as exc:
            raise InvalidParameterError(str(exc), exc.parameter) from exc
        except VLLMClientError as exc:
            if type(exc).__name__ in ("QueueOverflowError", "MaxQueuedTokensError"):
                raise EngineOverloadedError(str(exc)) from exc
            raise InvalidParameterError(str(exc)) from exc
        want_logprobs = request.sampling.logprobs is not None
        finished = False
        produced = 0
        cached_told = False  # the prefix cache's hit, told once
        try:
            yield GenerationOutput(prompt_token_ids=ids, deltas=[], finished=False)
            while not finished:
                # Drain without awaiting when possible: fewer task switches under load.
                out = queue.get_nowait() or await queue.get()
                finished = out.finished
                if any(c.finish_reason == "error" for c in out.outputs):
                    # vLLM ends a request it could not serve (e.g. a grammar that failed to
                    # compile in the engine) with finish reason "error"; never pass that off
                    # as an answer. With a constraint, the grammar rejected every token the
                    # model could emit next (seen here: the pattern "\u00a7\u0006", whose
                    # second character no token can start): the pattern cannot be followed
                    # by this model's vocabulary. The client's input: a 400 naming the field.
                    c = request.constraint
                    if c is not None:
                        raise InvalidParameterError(
                            f"{c.param or c.kind}: this model's vocabulary cannot complete text that matches "
                            f"the constraint (stopped after {produced} characters)",
                            c.param,
                        )
                    raise EngineError("the engine failed this request; the server log has the details")
                for c_out in out.outputs:
                    produced += len(c_out.text)  # characters: a rejected token shows no text
                deltas = [
                    SequenceDelta(
                        index=c.index,
                        text=c.text,
                        token_ids=c.token_ids,
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                        logprobs=_logprobs(c) if want_logprobs else None,
                    )
                    for c in out.outputs
                ]
                prompt_lps = None
                # DELTA outputs carry the prompt's logprobs once; later ones have none
                if out.prompt_logprobs and request.sampling.prompt_logprobs is not None:
                    prompt_lps = [None, *_token_logprobs(ids[1:], out.prompt_logprobs[1:])]
                cached = None
                if not cached_told and out.num_cached_tokens is not None:
                    cached, cached_told = out.num_cached_tokens, True
                yield GenerationOutput(
                    prompt_token_ids=ids,
                    deltas=deltas,
                    finished=finished,
                    prompt_logprobs=prompt_lps,
                    cached_tokens=cached,
                )
        except VLLMEngineDeadError as exc:
            finished = True
            raise EngineDeadError("the vLLM engine core has died") from exc
        finally:
            if not finished:
                # Client gone, deadline passed, a sibling prompt failed: stop the work.
                await engine.abort(queue.request_id, internal=True)
            queue.close()

    async def _beam_search(
        self, request: GenerationRequest, ids: list[int], max_tokens: int
    ) -> AsyncIterator[GenerationOutput]:
        """Beam search with vLLM's own online helper (AsyncLLM has no beam_search method).

        The helper runs one single-token request per beam and step through the engine;
        the answer is the best beam, in one piece, when the search ends.
        """
        from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import BeamSearchParams

        s = request.sampling
        if request.constraint is not None:
            raise UnsupportedFeatureError("constrained decoding cannot be combined with beam search", "num_beams")
        if s.n > 1 or s.logprobs is not None:
            raise UnsupportedFeatureError("beam search returns one sequence, without logprobs", "num_beams")
        engine = self._engine

        class Searcher(BeamSearchOnlineMixin):
            engine_client = engine
            renderer = engine.renderer

        params = BeamSearchParams(
            beam_width=s.num_beams,
            max_tokens=max_tokens,
            ignore_eos=s.ignore_eos,
            temperature=s.temperature,
            length_penalty=s.length_penalty,
            skip_special_tokens=s.skip_special_tokens,
        )
        yield GenerationOutput(prompt_token_ids=ids, deltas=[], finished=False)
        prompt = tokens_input(ids, cache_salt=request.cache_salt)
        async for out in Searcher().beam_search(prompt, request.request_id, params):
            best = out.outputs[0]
            if best.finish_reason == "error":
                raise EngineError("beam search failed inside the engine")
            delta = SequenceDelta(
                index=0, text=best.text, token_ids=list(best.token_ids), finish_reason=best.finish_reason
            )
            yield GenerationOutput(prompt_token_ids=ids, deltas=[delta], finished=True)


def _logprobs(c: Any) -> list[TokenLogprob] | None:
    """Neutral logprobs of the new tokens of one vLLM `CompletionOutput`."""
    if c.logprobs is None:
        return None
    return [lp for lp in _token_logprobs(c.token_ids, c.logprobs) if lp is not None]


def _token_logprobs(token_ids: Sequence[int], entries: Sequence[Any]) -> list[TokenLogprob | None]:
    """Neutral logprobs from vLLM's per-position {token id: Logprob} dicts."""
    result: list[TokenLogprob | None] = []
    for tid, entry in zip(token_ids, entries, strict=False):
        if entry is None:
            result.append(None)
            continue
        chosen = entry.get(tid)
        top = sorted(((t, lp.decoded_token or "", lp.logprob) for t, lp in entry.items()), key=lambda x: -x[2])
        result.append(
            TokenLogprob(
                token_id=tid,
                token=(chosen.decoded_token or "") if chosen else "",
                logprob=chosen.logprob if chosen else float("-inf"),
                top=top,
            )
        )
    return result
