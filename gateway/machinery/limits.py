"""The server's limits on a generation, checked once for every API, with one wording.

The translations turn their wire request into neutral requests (defaults applied); the
pipeline checks those here. Error messages name the field as the API calls it
(`max_tokens` on OpenAI, `max_new_tokens` on Takeoff, `generation_config.max_new_tokens`
on generate-one), through the API's `Fields`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from engine_adapters.base import GenerationRequest
from gateway.errors import BadRequest
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class Fields:
    """The wire names of the neutral fields in one API."""

    prompts: str = "text"
    max_new_tokens: str = "max_new_tokens"
    min_new_tokens: str = "min_new_tokens"
    stop: str = "stop"
    n: str = "n"
    num_beams: str = "num_beams"


def check_count(count: int, settings: Settings, field: str, what: str = "prompts") -> None:
    """At most `max_user_batch_size` prompts (or inputs) in one request."""
    if count > settings.max_user_batch_size:
        raise BadRequest(
            f"{field} has {count} {what}; at most {settings.max_user_batch_size} are allowed per request",
            param=field,
        )


def check_generation(requests: Sequence[GenerationRequest], settings: Settings, fields: Fields) -> None:
    """Raise a 400 naming the field if the requests exceed a limit of this server."""
    check_count(len(requests), settings, fields.prompts)
    limit = settings.max_new_tokens_limit
    checked: set[int] = set()
    for r in requests:
        s = r.sampling
        if id(s) in checked:  # the prompts of one request usually share their options
            continue
        checked.add(id(s))
        if s.n > settings.max_n:
            raise BadRequest(f"{fields.n} must be at most {settings.max_n}", param=fields.n)
        if s.num_beams > settings.max_beams:
            raise BadRequest(f"{fields.num_beams} must be at most {settings.max_beams}", param=fields.num_beams)
        if limit is not None and s.max_new_tokens > limit:
            raise BadRequest(f"{fields.max_new_tokens} must be at most {limit}", param=fields.max_new_tokens)
        if s.max_new_tokens < 1:
            raise BadRequest(f"{fields.max_new_tokens} must be at least 1", param=fields.max_new_tokens)
        if not 0 <= s.min_new_tokens <= s.max_new_tokens:
            raise BadRequest(
                f"{fields.min_new_tokens} must be between 0 and {fields.max_new_tokens}", param=fields.min_new_tokens
            )
        if len(s.stop) > settings.max_stop_sequences:
            raise BadRequest(
                f"{fields.stop} must have at most {settings.max_stop_sequences} strings", param=fields.stop
            )
        if any(not x for x in s.stop):
            raise BadRequest(f"{fields.stop} strings must not be empty", param=fields.stop)
        if any(len(x) > settings.max_stop_length for x in s.stop):
            raise BadRequest(
                f"{fields.stop} strings must have at most {settings.max_stop_length} characters", param=fields.stop
            )
    constraints = {id(r.constraint): r.constraint for r in requests if r.constraint is not None}
    for c in constraints.values():
        size = len(c.value) if isinstance(c.value, str) else len(json.dumps(c.value))
        if size > settings.max_constraint_bytes:
            raise BadRequest(
                f"{c.param or c.kind} has {size} characters; at most {settings.max_constraint_bytes} are allowed",
                param=c.param,
            )
