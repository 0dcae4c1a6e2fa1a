"""Shared counters of token budgets and of the usage ledger, in the continuation store's
backend: this process's memory, or Redis (exact across replicas: every change is one
atomic Redis command or script).

Two kinds of state:
- *budget windows*: one integer per (scope, window), e.g. `b:key:team-a:day:2026-12-06`,
  drawn on by leases (`lease`: grant up to `want` while the total stays within `limit`,
  atomically) and corrected by `add` (a refund of an unused lease, or the tokens of the one
  engine step that crossed the limit); each expires after its window;
- *ledger days*: one hash per UTC day of usage totals, `u:2026-12-06`, whose fields are
  `tenant|model|key|api|metric` and whose values only grow (`add_usage`, HINCRBY).

Redis calls share the store's timeout; a failure raises `MeterUnavailable` (the budgets
fail closed; the ledger keeps its deltas and retries).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from gateway.errors import NotReady
from gateway.settings import ContinuationSettings


class MeterUnavailable(NotReady):
    """The shared counters (Redis) did not answer."""


class Meter(Protocol):
    """The counters' backend."""

    async def lease(self, key: str, limit: int, want: int, ttl: int, need: int | None = None) -> tuple[int, int]:
        """Grant up to `want` of `key`'s `limit` (atomically); (granted, used after). Near
        the limit a grant beyond `need` (default `want`) is at most a quarter of what is
        left, so that one stream's lease never takes what concurrent streams need."""
        ...

    async def add(self, key: str, n: int, ttl: int) -> int:
        """Add `n` (negative: a refund) to `key`; its total after."""
        ...

    async def used(self, keys: Sequence[str]) -> list[int]:
        """The totals of `keys` (0 where absent)."""
        ...

    async def add_usage(self, deltas: Mapping[str, Mapping[str, int]], ttl: int) -> None:
        """Add each hash's field deltas (`{hash: {field: n}}`)."""
        ...

    async def read_usage(self, hashes: Sequence[str]) -> list[dict[str, int]]:
        """Every field of each hash."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class MemoryMeter:
    """The counters of one process."""

    def __init__(self, clock: Any = time.time) -> None:
        self._values: dict[str, int] = {}
        self._expiry: dict[str, float] = {}
        self._hashes: dict[str, dict[str, int]] = {}
        self._clock = clock

    def _live(self, key: str) -> int:
        until = self._expiry.get(key)
        if until is not None and until <= self._clock():
            self._values.pop(key, None)
            self._expiry.pop(key, None)
        return self._values.get(key, 0)

    async def lease(self, key: str, limit: int, want: int, ttl: int, need: int | None = None) -> tuple[int, int]:
        used = self._live(key)
        grant = max(0, _grant(limit - used, want, want if need is None else need))
        if grant:
            self._values[key] = used + grant
            self._expiry[key] = self._clock() + ttl
        return grant, used + grant

    async def add(self, key: str, n: int, ttl: int) -> int:
        total = self._live(key) + n
        self._values[key] = total
        self._expiry[key] = self._clock() + ttl
        return total

    async def used(self, keys: Sequence[str]) -> list[int]:
        return [self._live(k) for k in keys]

    async def add_usage(self, deltas: Mapping[str, Mapping[str, int]], ttl: int) -> None:
        for name, fields in deltas.items():
            target = self._hashes.setdefault(name, {})
            for f, n in fields.items():
                target[f] = target.get(f, 0) + n

    async def read_usage(self, hashes: Sequence[str]) -> list[dict[str, int]]:
        return [dict(self._hashes.get(h, {})) for h in hashes]

    async def close(self) -> None:
        return None


def _grant(left: int, want: int, need: int) -> int:
    """What a lease gets of the `left` tokens of a window (the Lua script's rule)."""
    return min(want, max(need, left // 4), left)


# KEYS[1] the window's counter; ARGV: limit, want, ttl seconds, need. Returns {granted,
# used after}. The grant: want, but past need at most a quarter of what is left (_grant).
_LEASE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = tonumber(ARGV[1]) - used
local grant = math.min(tonumber(ARGV[2]), math.max(tonumber(ARGV[4]), math.floor(left / 4)), left)
if grant <= 0 then return {0, used} end
used = redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {grant, used}
"""


def redis_client(settings: ContinuationSettings) -> Any:
    """A redis.asyncio client whose calls wait (up to the store's timeout) for one of
    `redis_max_connections` connections: a burst of concurrent calls queues for a moment
    instead of failing, as redis-py's default pool does past 100 connections."""
    import redis.asyncio as redis

    timeout = settings.redis_timeout_seconds
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url.get_secret_value(),
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return redis.Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections


class RedisPerLoop:
    """Redis clients of one store, one per event loop: the process serves every listener
    on one loop, but an in-process test client runs each app on a loop of its own, and a
    connection belongs to the loop that opened it. Failures raise `unavailable`."""

    def __init__(self, settings: ContinuationSettings, unavailable: type[NotReady], what: str) -> None:
        self._settings = settings
        self._unavailable = unavailable
        self._what = what
        self._clients: dict[asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]] = {}  # (client, scripts)

    def _loop_client(self) -> tuple[Any, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            found = self._clients[loop] = (redis_client(self._settings), {})
        return found

    @property
    def client(self) -> Any:
        """This loop's client."""
        return self._loop_client()[0]

    def script(self, source: str) -> Any:
        """A Lua script registered on this loop's client."""
        client, scripts = self._loop_client()
        if source not in scripts:
            scripts[source] = client.register_script(source)
        return scripts[source]

    async def call(self, coro: Any) -> Any:
        """Await a Redis call; any failure (refused, timeout) is `unavailable`, never a hang."""
        try:
            return await coro
        except Exception as exc:
            raise self._unavailable(
                f"{self._what} is unavailable: {type(exc).__name__}", headers={"Retry-After": "5"}
            ) from exc

    async def close(self) -> None:
        """Close this loop's client; forget other loops' (test clients, ended already)."""
        loop = asyncio.get_running_loop()
        for owner, (client, _) in list(self._clients.items()):
            if owner is loop:
                await client.aclose()
            del self._clients[owner]


class RedisMeter:
    """The counters on the continuation store's Redis, shared by replicas. Names carry
    the store's key prefix (its hash tag keeps them in one Redis Cluster slot)."""

    def __init__(self, settings: ContinuationSettings) -> None:
        self._prefix = settings.key_prefix + "m:"
        self._redis_loop = RedisPerLoop(settings, MeterUnavailable, "the usage and budget store (redis)")

    @property
    def _redis(self) -> Any:
        return self._redis_loop.client

    async def _call(self, coro: Any) -> Any:
        return await self._redis_loop.call(coro)

    async def lease(self, key: str, limit: int, want: int, ttl: int, need: int | None = None) -> tuple[int, int]:
        script = self._redis_loop.script(_LEASE)
        args = [limit, want, ttl, want if need is None else need]
        granted, used = await self._call(script(keys=[self._prefix + key], args=args))
        return int(granted), int(used)

    async def add(self, key: str, n: int, ttl: int) -> int:
        name = self._prefix + key
        pipe = self._redis.pipeline(transaction=True)
        pipe.incrby(name, n)
        pipe.expire(name, ttl)
        total, _ = await self._call(pipe.execute())
        return int(total)

    async def used(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        values = await self._call(self._redis.mget([self._prefix + k for k in keys]))
        return [int(v) if v is not None else 0 for v in values]

    async def add_usage(self, deltas: Mapping[str, Mapping[str, int]], ttl: int) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for name, fields in deltas.items():
            for f, n in fields.items():
                pipe.hincrby(self._prefix + name, f, n)
            pipe.expire(self._prefix + name, ttl)
        await self._call(pipe.execute())

    async def read_usage(self, hashes: Sequence[str]) -> list[dict[str, int]]:
        pipe = self._redis.pipeline(transaction=False)
        for h in hashes:
            pipe.hgetall(self._prefix + h)
        found = await self._call(pipe.execute())
        return [{k.decode(): int(v) for k, v in item.items()} for item in found]

    async def close(self) -> None:
        await self._redis_loop.close()


def make_meter(settings: ContinuationSettings) -> Meter:
    """The counters of the store's backend."""
    return RedisMeter(settings) if settings.backend == "redis" else MemoryMeter()
