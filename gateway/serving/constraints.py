"""One constraint builder for every API: which request field asks for structured output,
and the neutral `Constraint` it becomes.

Each API names the fields that may carry a constraint (`ConstraintField`s, with the wire
name of each for error messages) and says how several set fields are treated: the first
wins (Takeoff: a regex over a JSON schema), at most one (generate-one's
`generation_config`), or exactly one (vLLM's `structured_outputs`). JSON schemas sent as
text are parsed here, and must be objects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine_adapters.base import Constraint, ConstraintKind
from gateway.errors import BadRequest


def backend_name(name: str | None) -> str | None:
    """vLLM's name of a structured-output backend a request named (the wire model checked
    it): Takeoff's client says "lmfe", vLLM "lm-format-enforcer"."""
    return "lm-format-enforcer" if name == "lmfe" else name


@dataclass(frozen=True, slots=True)
class ConstraintField:
    """A request field that may ask for a constraint: its kind, value (None when unset)
    and wire name."""

    kind: ConstraintKind
    value: Any
    param: str


def _schema(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest(f"{param} is a string but not valid JSON", param=param) from None
    if not isinstance(value, dict):
        raise BadRequest(f"{param} must be a JSON object", param=param)
    return value


def constraint_of(
    fields: Sequence[ConstraintField],
    *,
    backend: str | None = None,
    backend_param: str | None = None,
    one_of: str | None = None,
    required: bool = False,
) -> Constraint | None:
    """The constraint the set fields ask for, or None.

    Without `one_of` the first set field wins. With `one_of` (the name of the object that
    holds the fields) more than one set field is a 400 naming it, and so is none when
    `required`.
    """
    given = [f for f in fields if f.value is not None]
    if one_of is not None and (len(given) > 1 or (required and not given)):
        names = ", ".join(f.param.rpartition(".")[2] for f in fields)
        wording = "needs exactly one of" if required else "takes one of"
        raise BadRequest(f"{one_of} {wording} {names}", param=one_of)
    if not given:
        return None
    chosen = given[0]
    value = _schema(chosen.value, chosen.param) if chosen.kind == "json" else chosen.value
    return Constraint(
        kind=chosen.kind, value=value, backend=backend_name(backend), param=chosen.param, backend_param=backend_param
    )
