"""The store of the generate-one/batch API's request_id continuations (and of the
Responses API's stored responses).

The generate-one API documents a request_id as "used for internal caching" and says a
repeated id "continues generation", ignoring the prompt. The store keeps, per key, the full token
sequence so far (prompt + generated); a repeated id sends that sequence back to the
engine, where vLLM's prefix caching makes the repeated prefix cheap.

Both backends are bounded by entries, bytes and time to live, evicting the oldest
writes first. The Redis backend lets several replicas behind a load balancer continue
each other's requests; its bookkeeping runs in one Lua script, so replicas never see a
half-evicted state.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import NotReady
from gateway.settings import ContinuationSettings

log = logging.getLogger(__name__)


def encode_tokens(tokens: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32 (the same bytes on every replica)."""
    a = array("I", tokens)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def decode_tokens(data: bytes) -> list[int]:
    """The inverse of `encode_tokens`."""
    a = array("I")
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tolist()


def scoped_key(settings: ContinuationSettings, tenant: str, name: str) -> str:
    """A store key only `tenant` (the caller's key name) can reach by `name`.

    The caller's key name is part of the HMAC input, so one caller's keys cannot be
    named by another, and the secret keeps request ids unreadable in a shared store.
    """
    secret = settings.secret.get_secret_value().encode()
    return hmac.new(secret, f"{tenant}\x1f{name}".encode(), hashlib.sha256).hexdigest()


@dataclass
class StoreStats:
    """What the store holds and how useful it has been."""

    entries: int
    bytes: int
    hits: int
    misses: int
    evictions: int


class ContinuationStore(Protocol):
    """Where token sequences are kept between requests."""

    async def get(self, key: str) -> list[int] | None:
        """The sequence stored under `key`, or None."""
        ...

    async def put(self, key: str, tokens: Sequence[int]) -> None:
        """Store (replace) the sequence of `key`, evicting old entries beyond the bounds."""
        ...

    async def get_bytes(self, key: str) -> bytes | None:
        """The raw value of `key` (records of the Responses API), or None."""
        ...

    async def put_bytes(self, key: str, value: bytes) -> bool:
        """Store a raw value under the same bounds; False if it alone exceeds them."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove `key`; whether it was there."""
        ...

    async def stats(self) -> StoreStats:
        """Current size and counters."""
        ...

    def snapshot(self) -> tuple[int, int, int, int, int]:
        """Entries, bytes, hits, misses, evictions as known without I/O (for metrics)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryStore:
    """In-process store: an ordered dict in write order, bounded three ways."""

    def __init__(self, settings: ContinuationSettings, clock: Any = time.monotonic) -> None:
        self.max_entries = settings.max_entries
        self.max_bytes = settings.max_bytes
        self.ttl = settings.ttl_seconds
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value)

    def _drop(self, key: str) -> None:
        _, value = self._data.pop(key)
        self._bytes -= self._size(key, value)

    def _expire(self) -> None:
        now = self._clock()
        while self._data:
            key, (expires, _) = next(iter(self._data.items()))
            if expires > now:
                break
            self._drop(key)
            self.evictions += 1

    async def get(self, key: str) -> list[int] | None:
        """The sequence of `key` if present and not expired."""
        data = await self.get_bytes(key)
        return None if data is None else decode_tokens(data)

    async def put(self, key: str, tokens: Sequence[int]) -> None:
        """Store in write order; entries older than the TTL or beyond the bounds go first."""
        if not await self.put_bytes(key, encode_tokens(tokens)):
            log.warning("continuation of %d tokens exceeds max_bytes; not stored", len(tokens))

    async def get_bytes(self, key: str) -> bytes | None:
        """The value of `key` if present and not expired."""
        item = self._data.get(key)
        if item is None or item[0] <= self._clock():
            self.misses += 1
            return None
        self.hits += 1
        return item[1]

    async def put_bytes(self, key: str, value: bytes) -> bool:
        """Store in write order; entries older than the TTL or beyond the bounds go first."""
        size = self._size(key, value)
        if key in self._data:
            self._drop(key)
        if size > self.max_bytes:
            return False
        self._data[key] = (self._clock() + self.ttl, value)
        self._bytes += size
        self._expire()
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._data)))
            self.evictions += 1
        return True

    async def delete(self, key: str) -> bool:
        """Remove `key`."""
        if key not in self._data:
            return False
        self._drop(key)
        return True

    async def stats(self) -> StoreStats:
        """Current size and counters."""
        self._expire()
        return StoreStats(len(self._data), self._bytes, self.hits, self.misses, self.evictions)

    def snapshot(self) -> tuple[int, int, int, int, int]:
        """Entries, bytes, hits, misses, evictions (for metrics; no I/O)."""
        return len(self._data), self._bytes, self.hits, self.misses, self.evictions

    async def close(self) -> None:
        """Nothing to release."""


# KEYS: 1 index (zset: key -> write time ms), 2 sizes (hash: key -> bytes), 3 total bytes,
# 4 the key written. Every name carries the prefix's hash tag, so the keys the script
# evicts (read from the index) share the declared keys' Redis Cluster slot.
# ARGV: 1 value, 2 ttl ms, 3 now ms, 4 max entries, 5 max bytes
# Returns the number of entries evicted.
_PUT = """
local function drop(k)
  local size = redis.call('HGET', KEYS[2], k)
  if size then redis.call('DECRBY', KEYS[3], size) end
  redis.call('HDEL', KEYS[2], k)
  redis.call('ZREM', KEYS[1], k)
  redis.call('DEL', k)
end
local key, value = KEYS[4], ARGV[1]
local ttl, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_entries, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local size = string.len(key) + string.len(value)
drop(key)
if size > max_bytes then return {-1, redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')} end
redis.call('SET', key, value, 'PX', ttl)
redis.call('ZADD', KEYS[1], now, key)
redis.call('HSET', KEYS[2], key, size)
redis.call('INCRBY', KEYS[3], size)
local evicted = 0
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)) do
  drop(k)
  evicted = evicted + 1
end
while redis.call('ZCARD', KEYS[1]) > max_entries
      or tonumber(redis.call('GET', KEYS[3]) or '0') > max_bytes do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if not oldest then break end
  drop(oldest)
  evicted = evicted + 1
end
return {evicted, redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""

# KEYS as _PUT (4: the key removed). Returns 1 if the key was there.
_DELETE = """
local size = redis.call('HGET', KEYS[2], KEYS[4])
if size then redis.call('DECRBY', KEYS[3], size) end
redis.call('HDEL', KEYS[2], KEYS[4])
redis.call('ZREM', KEYS[1], KEYS[4])
return redis.call('DEL', KEYS[4])
"""


class RedisStore:
    """Shared store on a Redis server, so replicas continue each other's requests."""

    def __init__(self, settings: ContinuationSettings) -> None:
        import redis.asyncio as redis

        self.settings = settings
        self._redis = redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
        p = settings.key_prefix
        self._index, self._sizes, self._total = f"{p}__index", f"{p}__sizes", f"{p}__bytes"
        self._put = self._redis.register_script(_PUT)
        self._delete = self._redis.register_script(_DELETE)
        self.hits = self.misses = self.evictions = 0
        self._entries = self._bytes = 0  # as of the last write of this replica

    def _key(self, key: str) -> str:
        return self.settings.key_prefix + key

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:  # connection refused, timeout, auth: say so, never hang
            log.error("continuation store (redis) failed: %s", exc)
            raise NotReady(
                "the continuation store (redis) is unavailable; retry shortly", headers={"Retry-After": "5"}
            ) from exc

    async def get(self, key: str) -> list[int] | None:
        """The sequence of `key`, or None (expired keys vanish by Redis's own TTL)."""
        data = await self.get_bytes(key)
        return None if data is None else decode_tokens(data)

    async def put(self, key: str, tokens: Sequence[int]) -> None:
        """Store atomically with the bookkeeping and eviction of the Lua script."""
        if not await self.put_bytes(key, encode_tokens(tokens)):
            log.warning("continuation of %d tokens exceeds max_bytes; not stored", len(tokens))

    async def get_bytes(self, key: str) -> bytes | None:
        """The value of `key`, or None."""
        data = await self._call(self._redis.get(self._key(key)))
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        return bytes(data)

    async def delete(self, key: str) -> bool:
        """Remove `key` and its bookkeeping."""
        gone = await self._call(self._delete(keys=[self._index, self._sizes, self._total, self._key(key)]))
        return bool(gone)

    async def put_bytes(self, key: str, value: bytes) -> bool:
        """Store atomically with the bookkeeping and eviction of the Lua script."""
        now_ms = int(time.time() * 1000)
        evicted, self._entries, self._bytes = await self._call(
            self._put(
                keys=[self._index, self._sizes, self._total, self._key(key)],
                args=[
                    value,
                    int(self.settings.ttl_seconds * 1000),
                    now_ms,
                    self.settings.max_entries,
                    self.settings.max_bytes,
                ],
            )
        )
        evicted = int(evicted)
        if evicted == -1:
            return False
        self.evictions += evicted
        return True

    async def stats(self) -> StoreStats:
        """Entries and bytes as the shared index counts them."""
        entries = await self._call(self._redis.zcard(self._index))
        total = await self._call(self._redis.get(self._total))
        return StoreStats(int(entries), int(total or 0), self.hits, self.misses, self.evictions)

    def snapshot(self) -> tuple[int, int, int, int, int]:
        """Entries and bytes as of this replica's last write, and its own counters."""
        return int(self._entries), int(self._bytes), self.hits, self.misses, self.evictions

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def make_store(settings: ContinuationSettings) -> ContinuationStore:
    """The configured backend."""
    if settings.backend == "redis":
        return RedisStore(settings)
    return MemoryStore(settings)
