"""A deterministic engine for fast unit tests of the HTTP side.

It implements the same `GenerativeEngine` Protocol as the vLLM adapter. Tokens are
UTF-8 bytes (id 256 is end-of-sequence), so token counts are easy to reason about in
tests. It never stands in for vLLM in e2e tests.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine_adapters.base import (
    EngineDeadError,
    EngineError,
    EngineNotReadyError,
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    InvalidParameterError,
    ModelInfo,
    OutputParser,
    SequenceDelta,
    TokenLogprob,
    UnknownAdapterError,
    UnsupportedFeatureError,
    check_json_schema,
    fit_prompt,
)

EOS = 256
# the text of each byte token
_BYTE_TEXT = tuple(bytes([b]).decode(errors="replace") for b in range(256))
_WORDS = "the quick brown fox jumps over the lazy dog while a calm river runs past old stone walls".split()


class StepClock:
    """An engine's step clock: step k is due at k * delay s of the event loop's clock, for
    every stream at once: one timer and one wake-up of the loop per step, as vLLM's output
    handler hands every request its output of a step together (the front-end benchmarks'
    floor app runs on it too)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        # the waiters of each coming step: (their loop, their futures) by step number
        self._steps: dict[int, tuple[asyncio.AbstractEventLoop, list[asyncio.Future[None]]]] = {}

    def now(self, loop: asyncio.AbstractEventLoop) -> int:
        """The step under way."""
        return int(loop.time() / self.delay)

    def at(self, loop: asyncio.AbstractEventLoop, k: int) -> asyncio.Future[None] | None:
        """A future done at step `k`; None when it is due already."""
        if loop.time() >= k * self.delay:
            return None
        waiting = self._steps.get(k)
        if waiting is None or waiting[0] is not loop:  # (a stale entry of a closed loop)
            waiting = self._steps[k] = (loop, [])
            loop.call_at(k * self.delay, self._due, loop, k)
        future: asyncio.Future[None] = loop.create_future()
        waiting[1].append(future)
        return future

    def _due(self, loop: asyncio.AbstractEventLoop, k: int) -> None:
        waiting = self._steps.get(k)
        if waiting is None or waiting[0] is not loop:
            return
        del self._steps[k]
        for future in waiting[1]:
            if not future.done():  # (a cancelled stream's)
                future.set_result(None)


@dataclass
class ScriptedConfig:
    """Knobs of the scripted engine."""

    name: str = "scripted"
    max_model_len: int = 2048
    token_delay: float = 0.0
    # per stream, as a GPU decodes (for example 100 tokens/s), on the engine's clock: one
    # step every 1/tokens_per_second s for every stream at once (a stream joins at the next
    # step), and a consumer that falls behind gets the steps due since in one output (as
    # vLLM does)
    tokens_per_second: float | None = None
    eos_after: int = 48
    start_delay: float = 0.0
    fail_after_tokens: int | None = None
    reply: str | None = None
    has_chat_template: bool = True
    lora_adapters: list[str] = field(default_factory=list)
    max_prompt_tokens: int | None = None
    truncate: bool = True
    # A real tokenizer folder: the reply is emitted as its tokens (one per step), so
    # vLLM's reasoning and tool-call parsers (named below) can read it, as on a real model.
    markup_tokenizer: str | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    # told as the engine's slots (vLLM's effective max_num_seqs, in ModelInfo.engine_config),
    # which the gateway keeps batch work below; the scripted engine runs every stream at once
    max_num_seqs: int | None = None


class ScriptedEngine:
    """`GenerativeEngine` that produces text from a fixed recipe, one byte per token."""

    def __init__(self, config: ScriptedConfig | None = None) -> None:
        self.config = config or ScriptedConfig()
        if self.config.tokens_per_second:
            self.config.token_delay = 1.0 / self.config.tokens_per_second
        self._tokenizer: Any = None
        self._parser_cls: Any = None
        self._started = False
        self._dead = False
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self._clock = StepClock(self.config.token_delay) if self.config.tokens_per_second else None

    @property
    def info(self) -> ModelInfo:
        """The scripted 'model'."""
        return ModelInfo(
            name=self.config.name,
            path="scripted",
            max_model_len=self.config.max_model_len,
            engine="scripted",
            device="cpu",
            dtype="none",
            has_chat_template=self.config.has_chat_template,
            eos_token_id=EOS,
            adapters=tuple(self.config.lora_adapters),
            engine_config={"max_num_seqs": self.config.max_num_seqs} if self.config.max_num_seqs else {},
        )

    async def start(self) -> None:
        """Become ready after `start_delay` seconds."""
        await asyncio.sleep(self.config.start_delay)
        cfg = self.config
        if cfg.markup_tokenizer is not None:
            from transformers import AutoTokenizer

            from engine_adapters.vllm_parsing import parser_class

            self._tokenizer = AutoTokenizer.from_pretrained(cfg.markup_tokenizer)
            self._parser_cls = parser_class(cfg.tool_call_parser, cfg.reasoning_parser, self._tokenizer)
        self._started = True

    def output_parser(self, request: GenerationRequest, prompt_token_ids: Sequence[int]) -> OutputParser | None:
        """vLLM's parsers over the markup tokenizer, when configured."""
        if self._parser_cls is None:
            return None
        from engine_adapters.vllm_parsing import VLLMOutputParser

        return VLLMOutputParser(self._parser_cls, self._tokenizer, request, prompt_token_ids)

    async def shutdown(self) -> None:
        """Stop serving."""
        self._started = False

    def kill(self) -> None:
        """Simulate engine death (tests)."""
        self._dead = True

    @property
    def dead(self) -> bool:
        """Whether `kill` was called."""
        return self._dead

    async def check_health(self) -> None:
        """Raise once killed."""
        if self._dead:
            raise EngineDeadError("the scripted engine was killed")
        if not self._started:
            raise EngineNotReadyError("not started")

    def stats(self) -> EngineStats:
        """Requests in progress."""
        return EngineStats(running=len(self.running), waiting=0)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """A minimal chat template: `<|role|>content` lines."""
        return self._render(
            GenerationRequest(
                request_id="", messages=messages, add_generation_prompt=add_generation_prompt, tools=tools
            )
        )

    def _render(self, request: GenerationRequest) -> str:
        if not self.config.has_chat_template:
            raise UnsupportedFeatureError("this model has no chat template; send a plain prompt instead", "messages")
        parts = []
        if request.tools:  # the template sees the tools
            parts.append("<|tools|>" + ",".join(t["function"]["name"] for t in request.tools) + "\n")
        for m in request.messages or []:
            content = m.get("content")
            if not isinstance(content, str):
                raise InvalidParameterError("message content must be text", "messages")
            calls = "".join(f"<|call|>{c['function']['name']}" for c in m.get("tool_calls") or [])
            parts.append(f"<|{m.get('role', 'user')}|>{content}{calls}\n")
        if request.continue_final_message and parts:
            parts[-1] = parts[-1].removesuffix("\n")
        elif request.add_generation_prompt:
            parts.append("<|assistant|>")
        return "".join(parts)

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """One character per byte token; EOS is "</s>"."""
        return ["</s>" if t == EOS else chr(t) for t in token_ids]

    def token_ids_of(self, tokens: Sequence[str]) -> list[int]:
        """Inverse of `token_strings`."""
        out = []
        for t in tokens:
            if t == "</s>":
                out.append(EOS)
            elif len(t) == 1 and ord(t) < 256:
                out.append(ord(t))
            else:
                raise InvalidParameterError("a token is not in the vocabulary", "tokens")
        return out

    async def tokenize(self, text: str, use_chat_template: bool = False, add_special_tokens: bool = True) -> list[int]:
        """UTF-8 bytes of the (rendered) text."""
        if use_chat_template:
            text = self.render_chat([{"role": "user", "content": text}])
        return list(text.encode())

    async def detokenize(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Bytes back to text; EOS is dropped or shown as `</s>`."""
        for t in token_ids:
            if not 0 <= t <= EOS:
                raise InvalidParameterError(f"token id {t} is outside the vocabulary (0..{EOS})", "tokens")
        data = bytes(t for t in token_ids if t != EOS)
        text = data.decode(errors="replace")
        if not skip_special_tokens and EOS in token_ids:
            text += "</s>"
        return text

    def _reply(self, request: GenerationRequest, prompt_ids: list[int], index: int) -> str:
        s = request.sampling
        c = request.constraint
        if c is not None:
            try:
                if c.kind == "json":
                    check_json_schema(c.value)
                elif c.kind == "regex":
                    re.compile(c.value)
            except (ValueError, re.error) as exc:
                raise InvalidParameterError(f"{c.param or c.kind}: {exc}", c.param) from exc
            if c.kind == "choice":
                return str(c.value[0])
            if c.kind == "json":
                return json.dumps(example_of(c.value))
            if c.kind == "json_object":
                return "{}"
            if c.kind == "regex":
                return example_of_regex(c.value)
            raise InvalidParameterError(f"the scripted engine cannot follow a {c.kind} constraint")
        if self.config.reply is not None:
            return self.config.reply
        if s.temperature == 0.0 or s.top_k == 1:
            start = sum(prompt_ids) % len(_WORDS)
            words = [_WORDS[(start + i) % len(_WORDS)] for i in range(64)]
        else:
            rng = random.Random(s.seed) if s.seed is not None else random.Random()
            rng.seed(rng.random() + index)
            words = rng.choices(_WORDS, k=64)
        return " " + " ".join(words)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Emit the reply one byte per step, honouring the neutral sampling options."""
        if self._dead:
            raise EngineDeadError("the scripted engine was killed")
        if not self._started:
            raise EngineNotReadyError("the model is still loading")
        if request.lora_id is not None and request.lora_id not in self.config.lora_adapters:
            raise UnknownAdapterError("no such LoRA adapter")
        s = request.sampling
        if request.prompt_token_ids is not None:
            raw = list(request.prompt_token_ids)
        elif request.messages is not None:
            raw = list(self._render(request).encode())
        else:
            raw = await self.tokenize(request.prompt or "", request.use_chat_template)
        param = "messages" if request.messages is not None else "prompt"
        ids, max_tokens = fit_prompt(
            raw, request, self.config.max_model_len, param, self.config.max_prompt_tokens, self.config.truncate
        )
        texts = [self._reply(request, ids, i) for i in range(s.n)]
        if request.lora_id is not None:  # an adapter visibly changes the output
            texts = [t.upper() for t in texts]
        if self._tokenizer is None:  # bytes: no more of a long reply than can be emitted
            texts = [t[: max_tokens + 1] for t in texts]
        replies = [self._pieces(t) for t in texts]
        # a constrained reply is emitted whole, as a grammar makes a real model finish it
        length = None if request.constraint is not None else self.config.eos_after
        rid = request.request_id
        self.running.add(rid)
        produced = [0] * s.n
        done = [False] * s.n
        remaining = s.n
        delay, fail_after = self.config.token_delay, self.config.fail_after_tokens
        try:
            prompt_lps: list[TokenLogprob | None] | None = None
            if s.prompt_logprobs is not None:
                prompt_lps = [None] + [
                    TokenLogprob(token_id=t, token=chr(t), logprob=-1.0, top=[(t, chr(t), -1.0)]) for t in ids[1:]
                ]
            yield GenerationOutput(prompt_token_ids=ids, deltas=[], finished=False, prompt_logprobs=prompt_lps)
            step = 0
            loop = asyncio.get_running_loop()
            clock = self._clock
            first = clock.now(loop) if clock is not None else 0  # the step under way: it joins the next
            while remaining:
                steps = 1
                if clock is not None:
                    # On the engine's clock, as a GPU decodes, whether or not the consumer
                    # kept up; a consumer that fell behind gets every step due since in one
                    # output, as vLLM merges the deltas of a request whose consumer is behind.
                    due = clock.at(loop, first + step + 1)
                    if due is not None:
                        await due
                    steps = max(1, clock.now(loop) - first - step)
                else:
                    await asyncio.sleep(delay)
                if self._dead:
                    raise EngineDeadError("the scripted engine was killed")
                if fail_after is not None and step >= fail_after:
                    raise EngineError("injected engine failure")
                deltas = []
                for i in range(s.n):
                    if done[i]:
                        continue
                    delta = self._step(replies[i], produced[i], max_tokens, s, length)
                    produced[i] += 1
                    for _ in range(steps - 1):
                        if delta.finish_reason is not None:
                            break
                        more = self._step(replies[i], produced[i], max_tokens, s, length)
                        produced[i] += 1
                        delta = _merged(delta, more)
                    if delta.finish_reason is not None:
                        done[i] = True
                        remaining -= 1
                    delta.index = i
                    deltas.append(delta)
                step += steps
                yield GenerationOutput(ids, deltas, remaining == 0)
            self.finished.append(rid)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(rid)
            raise
        finally:
            self.running.discard(rid)

    def _pieces(self, text: str) -> list[tuple[str, int]]:
        """The reply as (text, token id) steps: bytes, or the markup tokenizer's tokens."""
        if self._tokenizer is None:
            data = text.encode()
            return list(zip(map(_BYTE_TEXT.__getitem__, data), data, strict=True))
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        return [(self._tokenizer.decode([t]), t) for t in ids]

    def _step(self, reply: list[tuple[str, int]], k: int, max_tokens: int, s: Any, length: int | None) -> SequenceDelta:
        """Token number `k` of `reply`, or EOS once the reply is used up."""
        at_eos = k >= min(length if length is not None else len(reply), len(reply))
        if at_eos and k >= s.min_new_tokens and not s.ignore_eos:
            return SequenceDelta(index=0, text="", token_ids=[EOS], finish_reason="stop")
        # an empty reply (a choice of "") held open by min_new_tokens or ignore_eos: spaces
        text, tok = reply[k % len(reply)] if reply else (" ", 32)
        finish = "length" if k + 1 >= max_tokens else None
        # Stop strings end the sequence as soon as the text so far ends with one; the
        # stop string itself is not returned, as in vLLM.
        stop_reason = None
        if s.stop:
            so_far = "".join(reply[j % len(reply)][0] for j in range(k + 1))
            matched = next((st for st in s.stop if so_far.endswith(st)), None)
            if matched is not None:
                text, finish, stop_reason = "", "stop", matched
        lps = None
        if s.logprobs is not None:
            lps = [TokenLogprob(token_id=tok, token=text, logprob=-0.5, top=[(tok, text, -0.5)])]
        return SequenceDelta(
            index=0, text=text, token_ids=[tok], finish_reason=finish, logprobs=lps, stop_reason=stop_reason
        )


def _merged(a: SequenceDelta, b: SequenceDelta) -> SequenceDelta:
    """Two consecutive steps of one sequence as one delta."""
    logprobs = None if a.logprobs is None and b.logprobs is None else [*(a.logprobs or []), *(b.logprobs or [])]
    return SequenceDelta(
        index=a.index,
        text=a.text + b.text,
        token_ids=[*a.token_ids, *b.token_ids],
        finish_reason=b.finish_reason,
        logprobs=logprobs,
        stop_reason=b.stop_reason,
    )


def example_of(schema: Any) -> Any:
    """A small value valid for a JSON schema (what constrained decoding would make)."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_of(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_of(props.get(k, {})) for k in schema.get("required", list(props))}
    if kind == "array":
        return [example_of(schema.get("items", {})) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return None


def example_of_regex(pattern: str) -> str:
    """A short string the regex fully matches, for common regexes (else "")."""
    import re._parser as sre  # the standard library's own regex parser

    def walk(items: Any) -> str:
        out = []
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                out.append(chr(arg))
            elif name == "ANY":
                out.append("a")
            elif name == "IN":
                out.append(pick(arg))
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                low, _, sub = arg
                out.append(walk(sub) * low)
            elif name == "SUBPATTERN":
                out.append(walk(arg[-1]))
            elif name == "BRANCH":
                out.append(walk(arg[1][0]))
            elif name in ("AT", "ASSERT", "ASSERT_NOT"):
                continue
            else:
                raise ValueError(name)
        return "".join(out)

    def pick(items: Any) -> str:
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                return chr(arg)
            if name == "RANGE":
                return chr(arg[0])
            if name == "CATEGORY":
                return {"CATEGORY_DIGIT": "0", "CATEGORY_SPACE": " "}.get(str(arg), "a")
        return "a"

    try:
        text = walk(sre.parse(pattern))
    except (ValueError, TypeError, re.error):
        return ""
    return text if re.fullmatch(pattern, text) else ""
