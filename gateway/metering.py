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
from dataclasses import dataclass, field
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

    async def add(self, key: str, n: int, ttl: int) -> None:
        """Add `n` (negative: a refund) to `key`; done when counted."""
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

    async def add(self, key: str, n: int, ttl: int) -> None:
        self._values[key] = self._live(key) + n
        self._expiry[key] = self._clock() + ttl

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
        # the corrections (`add`) gathered for each loop's next round trip, and the round
        # trips under way
        self._adds: dict[asyncio.AbstractEventLoop, _Adds] = {}
        self._leases: dict[asyncio.AbstractEventLoop, list[tuple[str, list[int], asyncio.Future[tuple[int, int]]]]] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    def _spawn(self, loop: asyncio.AbstractEventLoop, flush: Any) -> None:
        """Run a round trip after this turn's other calls joined it."""
        task = loop.create_task(flush)
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    @property
    def _redis(self) -> Any:
        return self._redis_loop.client

    async def _call(self, coro: Any) -> Any:
        return await self._redis_loop.call(coro)

    async def lease(self, key: str, limit: int, want: int, ttl: int, need: int | None = None) -> tuple[int, int]:
        """Leases asked in the same turn of the loop (a burst of requests admitted
        together) go to Redis in one round trip: a pipeline of the lease script, each run
        atomically and in order, as if sent one by one."""
        loop = asyncio.get_running_loop()
        batch = self._leases.get(loop)
        if batch is None:
            batch = self._leases[loop] = []
            self._spawn(loop, self._flush_leases(loop))
        future: asyncio.Future[tuple[int, int]] = loop.create_future()
        batch.append((self._prefix + key, [limit, want, ttl, want if need is None else need], future))
        return await future

    async def _flush_leases(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._leases.pop(loop)
        try:
            script = self._redis_loop.script(_LEASE)
            if len(batch) == 1:  # alone: the script's own call (one round trip)
                name, args, _ = batch[0]
                results = [await self._call(script(keys=[name], args=args))]
            else:
                results = await self._call(self._pipelined(script, batch))
            for (_, _, future), (granted, used) in zip(batch, results, strict=True):
                if not future.done():  # (its caller was cancelled: the lease stays counted, the safe side)
                    future.set_result((int(granted), int(used)))
        except Exception as exc:  # MeterUnavailable: for every caller of the batch
            _fail(batch, exc)
        except BaseException:  # cancelled at shutdown
            _fail(batch, MeterUnavailable("the usage and budget store (redis) was closed"))
            raise

    async def _pipelined(self, script: Any, batch: list[tuple[str, list[int], Any]]) -> list[Any]:
        """The lease script once per lease in one pipeline, by its digest (redis-py's
        pipeline would ask Redis first whether it has the script: one more round trip);
        a lease Redis refused because it lost the script (a restart) did nothing, and runs
        again once the script is loaded."""
        from redis.exceptions import NoScriptError

        pipe = self._redis.pipeline(transaction=False)
        for name, args, _ in batch:
            pipe.evalsha(script.sha, 1, name, *args)
        results = list(await pipe.execute(raise_on_error=False))
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):
                name, args, _ = batch[i]
                results[i] = await script(keys=[name], args=args)  # loads it, then runs it
            elif isinstance(result, Exception):
                raise result
        return results

    async def add(self, key: str, n: int, ttl: int) -> None:
        """Corrections made in the same turn of the loop (the refunds of streams that end
        together) go to Redis in one round trip, summed per counter: each call returns when
        the round trip its own is in has counted it (a redis-py call costs the loop 110-190
        µs of CPU, a quarter of which the refunds of 128 streams ending at once then share)."""
        loop = asyncio.get_running_loop()
        batch = self._adds.get(loop)
        if batch is None:
            batch = self._adds[loop] = _Adds(loop.create_future())
            self._spawn(loop, self._flush_adds(loop))
        name = self._prefix + key
        batch.deltas[name] = batch.deltas.get(name, 0) + n
        batch.ttls[name] = max(batch.ttls.get(name, 0), ttl)
        await asyncio.shield(batch.done)  # a caller cancelled leaves the others' count alone

    async def _flush_adds(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._adds.pop(loop)
        try:
            pipe = self._redis.pipeline(transaction=True)
            for name, n in batch.deltas.items():
                pipe.incrby(name, n)
                pipe.expire(name, batch.ttls[name])
            await self._call(pipe.execute())
        except Exception as exc:  # MeterUnavailable: for every caller of the batch
            batch.done.set_exception(exc)
        except BaseException:  # cancelled at shutdown: whether it was counted is unknown
            batch.done.set_exception(MeterUnavailable("the usage and budget store (redis) was closed"))
            raise
        else:
            batch.done.set_result(None)

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
        if self._flushes:  # corrections under way are counted before the connections go
            await asyncio.wait(list(self._flushes), timeout=5.0)
        await self._redis_loop.close()


def _fail(batch: list[tuple[str, list[int], asyncio.Future[tuple[int, int]]]], exc: Exception) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)


@dataclass(slots=True)
class _Adds:
    """Corrections waiting for one round trip: per counter, the sum and the longest TTL."""

    done: asyncio.Future[None]
    deltas: dict[str, int] = field(default_factory=dict)
    ttls: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # retrieved even when every caller was cancelled: no "never retrieved" warning
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())


def make_meter(settings: ContinuationSettings) -> Meter:
    """The counters of the store's backend."""
    return RedisMeter(settings) if settings.backend == "redis" else MemoryMeter()
