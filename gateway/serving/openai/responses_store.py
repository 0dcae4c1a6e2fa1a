"""Stored responses of the Responses API, on the continuation store (memory or Redis:
bounded, with a TTL), under keys scoped to the caller's tenant.

Two entries per stored response: "rsp:<key>" the response object and its input items
(JSON), "rsq:<key>" a one-line JSON header (model, whether the tokens end with the
end-of-sequence token, the instructions) then the conversation's token ids, which
`previous_response_id` continues from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.continuation import ContinuationStore, decode_tokens, encode_tokens, scoped_key
from gateway.observability.metrics import STORE_WRITE_ERRORS
from gateway.settings import Settings

log = logging.getLogger(__name__)


def response_key(settings: Settings, tenant: str, response_id: str) -> str:
    """The store key of a response of `tenant` (only that tenant can name it)."""
    return scoped_key(settings.continuation, tenant, "response\x1f" + response_id)


def record_key(key: str) -> str:
    """Where the response object and its input items are."""
    return "rsp:" + key


def conversation_key(key: str) -> str:
    """Where the conversation's tokens are."""
    return "rsq:" + key


@dataclass(slots=True)
class Conversation:
    """A stored conversation: its tokens and what continuing it needs to know."""

    model: str
    ends_with_eos: bool
    instructions: str | None
    tokens: list[int]

    def encode(self) -> bytes:
        """The stored bytes: a JSON header line, then the tokens."""
        header = orjson.dumps({"model": self.model, "eos": self.ends_with_eos, "instructions": self.instructions})
        return header + b"\n" + encode_tokens(self.tokens)

    @classmethod
    def decode(cls, data: bytes) -> Conversation:
        """The inverse of `encode`."""
        header, _, tokens = data.partition(b"\n")
        h = orjson.loads(header)
        return cls(h["model"], h["eos"], h["instructions"], decode_tokens(tokens))


async def load_record(store: ContinuationStore, key: str) -> dict[str, Any] | None:
    """The stored response object and input items of `key`, or None."""
    data = await store.get_bytes(record_key(key))
    return None if data is None else orjson.loads(data)


async def load_conversation(store: ContinuationStore, key: str) -> Conversation | None:
    """The stored conversation of `key`, or None."""
    data = await store.get_bytes(conversation_key(key))
    return None if data is None else Conversation.decode(data)


async def save(
    store: ContinuationStore,
    key: str,
    tenant: str,
    response: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    conversation: Conversation | None,
) -> None:
    """Store a response of `tenant` (within its quota). Best effort: the client has its
    answer even if the store fails (logged, counted)."""
    try:
        if conversation is not None:
            await store.put_bytes(conversation_key(key), conversation.encode(), tenant)
        record = orjson.dumps({"response": response, "input_items": items})
        if not await store.put_bytes(record_key(key), record, tenant):
            log.warning("response %s exceeds the store's max_bytes; not stored", response["id"])
    except Exception as exc:
        STORE_WRITE_ERRORS.inc()
        log.error("could not store response %s (the answer was sent): %s", response["id"], exc)


async def forget(store: ContinuationStore, key: str) -> None:
    """Delete both entries of a stored response."""
    await store.delete(conversation_key(key))
    await store.delete(record_key(key))
