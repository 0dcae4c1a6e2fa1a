"""Wire types shared by several APIs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


# A structured-output backend a request may name (any case). Takeoff's client says
# "outlines" and "lmfe"; vLLM says "lm-format-enforcer".
BackendName = Annotated[
    Literal["auto", "xgrammar", "guidance", "outlines", "lmfe", "lm-format-enforcer"], BeforeValidator(_lower)
]


def tag_of(field: str, default: str | None = None) -> Callable[[Any], str]:
    """A discriminator reading `field` of a dict or model, for unions tagged `"field=value"`.

    The tag is what pydantic puts in an error's location; "=" keeps it out of the field
    names of error messages (gateway.errors), and a missing or unknown value names `field`.
    """

    def tag(value: Any) -> str:
        found = value.get(field, default) if isinstance(value, dict) else getattr(value, field, default)
        return f"{field}={found if isinstance(found, str) else ''}"

    return tag


# vLLM's scheduling priority (lower is sooner), bounded so no client can starve the rest
# by more than the server allows.
PRIORITY_RANGE = 1_000_000
Priority = Annotated[int, Field(ge=-PRIORITY_RANGE, le=PRIORITY_RANGE)]
# The engine seeds a 64-bit generator: past that range a sampled request would fail inside
# the engine's worker, so the wire refuses it (vLLM's own server has the same bounds).
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
