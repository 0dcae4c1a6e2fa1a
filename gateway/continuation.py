"""The store of the generate-one/batch API's request_id continuations (and of the
Responses API's stored responses).

The generate-one API documents a request_id as "used for internal caching" and says a
repeated id "continues generation", ignoring the prompt. The store keeps, per key, the full token
sequence so far (prompt + generated); a repeated id sends that sequence back to the
engine, where vLLM's prefix caching makes the repeated prefix cheap.

Both backends are bounded by entries, bytes and time to live, in all and per tenant: a
tenant past its own quota evicts its own oldest entries first, and when the store as a
whole is full the tenant holding the most bytes gives up its oldest, so one tenant's
cheap requests never evict everyone's conversations. The Redis backend lets several
replicas continue each other's requests; its bookkeeping runs in one Lua script, so
replicas never see a half-evicted state. A Redis that is slow or gone costs a request at
most `redis_timeout_seconds`; after `breaker_failures` failures in a row the store is
not asked for `breaker_seconds` (the circuit is open) and fails at once, which the APIs
turn into a miss where they can (a new request_id) and a clear 503 where they cannot.
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
from gateway.metering import redis_client
from gateway.observability.metrics import STORE_ERRORS, phase
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


@dataclass
class StoreHealth:
    """Whether the store answers (for /status and metrics)."""

    up: bool
    breaker_open: bool
    errors: int
    last_error: str | None


class StoreUnavailable(NotReady):
    """The store did not answer (Redis down, slow or refusing): a 503 unless the API can
    do without it (a request_id never seen is served as new)."""


class ContinuationStore(Protocol):
    """Where token sequences and stored responses are kept between requests."""

    async def get(self, key: str) -> list[int] | None:
        """The sequence stored under `key`, or None."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[list[int] | None]:
        """The sequences of `keys` (one round trip), None where there is none."""
        ...

    async def put(self, key: str, tokens: Sequence[int], tenant: str = "local") -> None:
        """Store (replace) the sequence of `key` for `tenant`, evicting beyond the bounds."""
        ...

    async def get_bytes(self, key: str) -> bytes | None:
        """The raw value of `key` (records of the Responses API), or None."""
        ...

    async def put_bytes(self, key: str, value: bytes, tenant: str = "local") -> bool:
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

    def health(self) -> StoreHealth:
        """Whether the store answers, as known without I/O."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryStore:
    """In-process store: ordered dicts in write order (all, and per tenant), bounded."""

    def __init__(self, settings: ContinuationSettings, clock: Any = time.monotonic) -> None:
        self.max_entries = settings.max_entries
        self.max_bytes = settings.max_bytes
        self.tenant_entries = settings.max_entries_per_tenant or settings.max_entries
        self.tenant_bytes = settings.max_bytes_per_tenant or settings.max_bytes
        self.ttl = settings.ttl_seconds
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, bytes, str]] = OrderedDict()
        self._tenants: dict[str, OrderedDict[str, int]] = {}  # tenant -> its keys and sizes
        self._tenant_bytes: dict[str, int] = {}
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value)

    def _drop(self, key: str) -> None:
        _, value, tenant = self._data.pop(key)
        size = self._size(key, value)
        self._bytes -= size
        keys = self._tenants[tenant]
        del keys[key]
        self._tenant_bytes[tenant] -= size
        if not keys:
            del self._tenants[tenant], self._tenant_bytes[tenant]

    def _evict(self, key: str) -> None:
        self._drop(key)
        self.evictions += 1

    def _expire(self) -> None:
        now = self._clock()
        while self._data:
            key, (expires, _, _) = next(iter(self._data.items()))
            if expires > now:
                break
            self._evict(key)

    async def get(self, key: str) -> list[int] | None:
        """The sequence of `key` if present and not expired."""
        data = await self.get_bytes(key)
        return None if data is None else decode_tokens(data)

    async def get_many(self, keys: Sequence[str]) -> list[list[int] | None]:
        """The sequences of `keys`."""
        return [await self.get(k) for k in keys]

    async def put(self, key: str, tokens: Sequence[int], tenant: str = "local") -> None:
        """Store in write order; entries older than the TTL or beyond the bounds go first."""
        if not await self.put_bytes(key, encode_tokens(tokens), tenant):
            log.warning("continuation of %d tokens exceeds the store's bounds; not stored", len(tokens))

    async def get_bytes(self, key: str) -> bytes | None:
        """The value of `key` if present and not expired."""
        item = self._data.get(key)
        if item is None or item[0] <= self._clock():
            self.misses += 1
            return None
        self.hits += 1
        return item[1]

    async def put_bytes(self, key: str, value: bytes, tenant: str = "local") -> bool:
        """Store in write order; the tenant's own oldest entries go first past its quota,
        then the biggest tenant's oldest past the store's bounds."""
        size = self._size(key, value)
        if key in self._data:
            self._drop(key)
        if size > self.max_bytes or size > self.tenant_bytes:
            return False
        self._data[key] = (self._clock() + self.ttl, value, tenant)
        self._tenants.setdefault(tenant, OrderedDict())[key] = size
        self._tenant_bytes[tenant] = self._tenant_bytes.get(tenant, 0) + size
        self._bytes += size
        self._expire()
        own = self._tenants.get(tenant)
        while own and (len(own) > self.tenant_entries or self._tenant_bytes[tenant] > self.tenant_bytes):
            self._evict(next(iter(own)))
            own = self._tenants.get(tenant)
        while self._data and (len(self._data) > self.max_entries or self._bytes > self.max_bytes):
            biggest = max(self._tenant_bytes, key=self._tenant_bytes.__getitem__)
            self._evict(next(iter(self._tenants[biggest])))
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

    def health(self) -> StoreHealth:
        """Always up: it lives in this process."""
        return StoreHealth(True, False, 0, None)

    async def close(self) -> None:
        """Nothing to release."""


# KEYS: 1 index (zset: key -> write time ms), 2 sizes (hash: key -> bytes), 3 total bytes,
# 4 the key written, 5 owners (hash: key -> tenant), 6 tenants' bytes (zset: tenant ->
# bytes). Each tenant's keys are in a zset named ARGV[9] .. tenant. Every name carries the
# prefix's hash tag, so the keys the script reaches (declared or read from the indexes)
# share the declared keys' Redis Cluster slot.
# ARGV: 1 value, 2 ttl ms, 3 now ms, 4 max entries, 5 max bytes, 6 tenant, 7 max entries
# per tenant, 8 max bytes per tenant, 9 the prefix of the tenants' zsets.
# Returns {evicted (-1: not stored, too large), entries, bytes}.
_PUT = """
local function tindex(t) return ARGV[9] .. t end
local function drop(k)
  local size = redis.call('HGET', KEYS[2], k)
  local owner = redis.call('HGET', KEYS[5], k)
  if size then redis.call('DECRBY', KEYS[3], size) end
  if owner then
    redis.call('ZREM', tindex(owner), k)
    if size then
      local left = tonumber(redis.call('ZINCRBY', KEYS[6], -tonumber(size), owner))
      if left <= 0 then redis.call('ZREM', KEYS[6], owner) end
    end
  end
  redis.call('HDEL', KEYS[2], k)
  redis.call('HDEL', KEYS[5], k)
  redis.call('ZREM', KEYS[1], k)
  redis.call('DEL', k)
end
local key, value, tenant = KEYS[4], ARGV[1], ARGV[6]
local ttl, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_entries, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5])
local tenant_entries, tenant_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local size = string.len(key) + string.len(value)
drop(key)
if size > max_bytes or size > tenant_bytes then
  return {-1, redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')}
end
redis.call('SET', key, value, 'PX', ttl)
redis.call('ZADD', KEYS[1], now, key)
redis.call('HSET', KEYS[2], key, size)
redis.call('INCRBY', KEYS[3], size)
redis.call('HSET', KEYS[5], key, tenant)
redis.call('ZADD', tindex(tenant), now, key)
redis.call('ZINCRBY', KEYS[6], size, tenant)
local evicted = 0
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)) do
  drop(k)
  evicted = evicted + 1
end
while redis.call('ZCARD', tindex(tenant)) > tenant_entries
      or tonumber(redis.call('ZSCORE', KEYS[6], tenant) or '0') > tenant_bytes do
  local oldest = redis.call('ZRANGE', tindex(tenant), 0, 0)[1]
  if not oldest then break end
  drop(oldest)
  evicted = evicted + 1
end
while redis.call('ZCARD', KEYS[1]) > max_entries
      or tonumber(redis.call('GET', KEYS[3]) or '0') > max_bytes do
  local biggest = redis.call('ZREVRANGE', KEYS[6], 0, 0)[1]
  local oldest = nil
  if biggest then oldest = redis.call('ZRANGE', tindex(biggest), 0, 0)[1] end
  if not oldest then oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1] end
  if not oldest then break end
  drop(oldest)
  evicted = evicted + 1
end
return {evicted, redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""

# KEYS as _PUT (4: the key removed); ARGV: 1 the prefix of the tenants' zsets. Returns 1 if
# the key was there.
_DELETE = """
local k = KEYS[4]
local size = redis.call('HGET', KEYS[2], k)
local owner = redis.call('HGET', KEYS[5], k)
if size then redis.call('DECRBY', KEYS[3], size) end
if owner then
  redis.call('ZREM', ARGV[1] .. owner, k)
  if size then
    local left = tonumber(redis.call('ZINCRBY', KEYS[6], -tonumber(size), owner))
    if left <= 0 then redis.call('ZREM', KEYS[6], owner) end
  end
end
redis.call('HDEL', KEYS[2], k)
redis.call('HDEL', KEYS[5], k)
redis.call('ZREM', KEYS[1], k)
return redis.call('DEL', k)
"""


class RedisStore:
    """Shared store on a Redis server, so replicas continue each other's requests."""

    def __init__(self, settings: ContinuationSettings, clock: Any = time.monotonic) -> None:
        self.settings = settings
        self._redis = redis_client(settings)
        p = settings.key_prefix
        self._index, self._sizes, self._total = f"{p}__index", f"{p}__sizes", f"{p}__bytes"
        self._owners, self._tenant_bytes, self._tenant_prefix = f"{p}__owners", f"{p}__tenants", f"{p}__t:"
        self._put = self._redis.register_script(_PUT)
        self._delete = self._redis.register_script(_DELETE)
        self.hits = self.misses = self.evictions = 0
        self._entries = self._bytes = 0  # as of the last write of this replica
        self._clock = clock
        self._failures = 0  # in a row
        self._open_until = 0.0
        self.errors = 0
        self.last_error: str | None = None

    def _keys(self, key: str) -> list[str]:
        return [self._index, self._sizes, self._total, self._key(key), self._owners, self._tenant_bytes]

    def _key(self, key: str) -> str:
        return self.settings.key_prefix + key

    async def _call(self, coro: Any) -> Any:
        if self._clock() < self._open_until:
            coro.close()
            raise StoreUnavailable(
                "the continuation store (redis) is unavailable; retry shortly", headers={"Retry-After": "5"}
            )
        try:
            with phase("gateway.store"):  # a span of the request's trace, when tracing
                result = await coro
        except Exception as exc:  # connection refused, timeout, auth: say so, never hang
            self._failures += 1
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            STORE_ERRORS.inc()
            if self._failures >= self.settings.breaker_failures:
                self._open_until = self._clock() + self.settings.breaker_seconds
                log.error(
                    "continuation store (redis) failed %d times in a row; not asked for %g s: %s",
                    self._failures,
                    self.settings.breaker_seconds,
                    exc,
                )
            else:
                log.error("continuation store (redis) failed: %s", exc)
            raise StoreUnavailable(
                "the continuation store (redis) is unavailable; retry shortly", headers={"Retry-After": "5"}
            ) from exc
        self._failures = 0
        return result

    async def get(self, key: str) -> list[int] | None:
        """The sequence of `key`, or None (expired keys vanish by Redis's own TTL)."""
        data = await self.get_bytes(key)
        return None if data is None else decode_tokens(data)

    async def get_many(self, keys: Sequence[str]) -> list[list[int] | None]:
        """The sequences of `keys`, in one MGET."""
        if not keys:
            return []
        values = await self._call(self._redis.mget([self._key(k) for k in keys]))
        out: list[list[int] | None] = []
        for data in values:
            if data is None:
                self.misses += 1
                out.append(None)
            else:
                self.hits += 1
                out.append(decode_tokens(bytes(data)))
        return out

    async def put(self, key: str, tokens: Sequence[int], tenant: str = "local") -> None:
        """Store atomically with the bookkeeping and eviction of the Lua script."""
        if not await self.put_bytes(key, encode_tokens(tokens), tenant):
            log.warning("continuation of %d tokens exceeds the store's bounds; not stored", len(tokens))

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
        gone = await self._call(self._delete(keys=self._keys(key), args=[self._tenant_prefix]))
        return bool(gone)

    async def put_bytes(self, key: str, value: bytes, tenant: str = "local") -> bool:
        """Store atomically with the bookkeeping and eviction of the Lua script."""
        s = self.settings
        now_ms = int(time.time() * 1000)
        evicted, self._entries, self._bytes = await self._call(
            self._put(
                keys=self._keys(key),
                args=[
                    value,
                    int(s.ttl_seconds * 1000),
                    now_ms,
                    s.max_entries,
                    s.max_bytes,
                    tenant,
                    s.max_entries_per_tenant or s.max_entries,
                    s.max_bytes_per_tenant or s.max_bytes,
                    self._tenant_prefix,
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

    def health(self) -> StoreHealth:
        """Up unless the last call failed; the circuit's state; errors since start."""
        return StoreHealth(self._failures == 0, self._clock() < self._open_until, self.errors, self.last_error)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


def make_store(settings: ContinuationSettings) -> ContinuationStore:
    """The configured backend."""
    if settings.backend == "redis":
        return RedisStore(settings)
    return MemoryStore(settings)
