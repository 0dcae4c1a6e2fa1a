"""Structured-output constraints of one vLLM reader: what the engine decodes against, and
a check, before the engine sees a request, that the reader's backend can compile it.

The check runs off the event loop, on a small pool of its own (a pathological regex or
schema must not stall every stream, nor take every worker thread), under the reader's
`constraint_check_timeout`. The verdict is cached by the spec's digest: a repeated schema
is checked once here, and vLLM's backends keep their compiled grammars in their own caches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from engine_adapters.base import Constraint, InvalidParameterError, check_json_schema

_CACHE_SIZE = 4096  # verdicts keyed by digest: small entries
# Two threads of their own: a slow check can neither starve the default pool (tokenizing,
# model start-up) nor run without bound in parallel.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="constraint-check")

# Whitespace between the tokens of a compact constraint's JSON: enough for ", " and "\n ",
# too little to wander in. Measured on the embedded model, 50 sampled "required" calls at
# temperature 1 (at most 4 calls each): 50 valid with 2, 48 with 6, 40 with no bound; with
# none at all (xgrammar's strict compact form, out of the model's habits) only 24.
MAX_WHITESPACE = 2

_NATIVE_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.(?:cc|cpp|h):\d+: ")


def short(message: str, limit: int = 300) -> str:
    """One line of at most `limit` characters (backend messages quote the input at length
    and carry C++ timestamps and source paths)."""
    flat = " ".join(_NATIVE_NOISE.sub("", message).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@functools.lru_cache(maxsize=256)
def compact_grammar(schema: str) -> str:
    """A JSON schema as an EBNF grammar whose whitespace is bounded (MAX_WHITESPACE)."""
    import xgrammar

    grammar = xgrammar.Grammar.from_json_schema(schema, any_whitespace=True, max_whitespace_cnt=MAX_WHITESPACE)
    return str(grammar)


class ConstraintChecker:
    """The constraints of one reader: `spec` (what vLLM gets) and `check` (can it compile)."""

    def __init__(self, backend: str, timeout: float, engine: Callable[[], Any], tokenizer: Callable[[], Any]) -> None:
        self.backend = backend
        self.timeout = timeout
        self._engine = engine
        self._tokenizer = tokenizer
        self._verdicts: OrderedDict[tuple[str, str], str | None] = OrderedDict()

    def spec(self, c: Constraint) -> tuple[str, Any]:
        """What the engine decodes against for `c`: its own kind and value, or for compact
        JSON on xgrammar, the schema as a grammar whose whitespace is bounded (xgrammar's own
        conversion; vLLM has only an engine-wide switch, `disable_any_whitespace`, which
        would also remove the whitespace models expect). Other backends get the schema."""
        if not (c.compact and c.kind == "json" and self.backend == "xgrammar"):
            return c.kind, c.value
        return "grammar", compact_grammar(json.dumps(c.value, sort_keys=True))

    def _verdict(self, c: Constraint) -> str | None:
        """Why the reader's backend cannot use `c`, or None (blocking: runs in a thread)."""
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import SamplingParams, StructuredOutputsParams

        try:
            if c.kind == "json":
                check_json_schema(c.value)
            kind, value = self.spec(c)
            params = SamplingParams(max_tokens=1, structured_outputs=StructuredOutputsParams(**{kind: value}))
            engine = self._engine()
            params._validate_structured_outputs(
                engine.model_config, engine.vllm_config.structured_outputs_config, self._tokenizer()
            )
        except (ValueError, VLLMValidationError) as exc:
            return short(str(exc))
        return None

    async def check(self, c: Constraint) -> None:
        """A 400 naming the field if the reader's backend cannot compile `c`."""
        if c.backend not in (None, "auto", self.backend):
            raise InvalidParameterError(f"this reader decodes constraints with {self.backend!r}", c.backend_param)
        spec = c.value if isinstance(c.value, str) else json.dumps(c.value, sort_keys=True)
        key = (c.kind + ("/compact" if c.compact else ""), hashlib.sha256(spec.encode()).hexdigest())
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            reason = self._verdicts[key]
        else:
            loop = asyncio.get_running_loop()
            try:
                reason = await asyncio.wait_for(loop.run_in_executor(_POOL, self._verdict, c), self.timeout)
            except TimeoutError:
                reason = f"checking it took longer than {self.timeout:g} s"
            self._verdicts[key] = reason
            if len(self._verdicts) > _CACHE_SIZE:
                self._verdicts.popitem(last=False)
        if reason is not None:
            raise InvalidParameterError(
                f"{c.param or c.kind}: cannot be used with the {self.backend} backend: {reason}", c.param
            )
