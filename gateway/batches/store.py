"""Where files' and batches' metadata and batch lines' results live: in this process's
memory, or in the continuation store's Redis (shared by replicas, kept across restarts).

- *documents*: one JSON object per file or batch, under (kind, tenant, id), listed per
  tenant newest first; a document of another tenant is never found (404, not 403);
- *active batches*: the set of batches some replica must still work on;
- *claims*: a line of a batch is run by the replica that claimed it (SET NX with a
  lease the runner renews while the line runs); a replica that dies lets its claims lapse
  and another takes the lines over;
- *results*: one per line, the first written wins (HSETNX), so the output holds exactly one
  line per `custom_id` whatever crashes and retries happen; failures are counted beside.

Every Redis change is one command or one script, so two replicas never overwrite each
other. Redis unreachable raises `BatchStoreUnavailable` (a 503 on the API; the runner
retries on its next round).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.errors import NotReady
from gateway.metering import RedisPerLoop
from gateway.settings import ContinuationSettings

Kind = str  # "file" or "batch"


def newest_first(doc: dict[str, Any]) -> tuple[int, str]:
    """The listing order: by creation, to the microsecond (`_order`), newest first."""
    return -int(doc.get("_order", doc["created_at"] * 10**6)), doc["id"]


class BatchStoreUnavailable(NotReady):
    """The batch store (Redis) did not answer."""


class BatchStore(Protocol):
    """Metadata, claims and results of files and batches."""

    async def put(self, kind: Kind, tenant: str, doc_id: str, doc: dict[str, Any]) -> None:
        """Write a document (created or updated)."""
        ...

    async def replace(self, kind: Kind, tenant: str, doc_id: str, doc: dict[str, Any], status: str) -> bool:
        """Write a document only while its stored `status` is still `status` (a compare
        and set: a cancel and a runner's step never overwrite each other); whether it did."""
        ...

    async def get(self, kind: Kind, tenant: str, doc_id: str) -> dict[str, Any] | None:
        """A document of `tenant`, or None."""
        ...

    async def delete(self, kind: Kind, tenant: str, doc_id: str) -> bool:
        """Remove a document; whether it existed."""
        ...

    async def listing(self, kind: Kind, tenant: str) -> list[dict[str, Any]]:
        """Every document of `tenant`, newest first."""
        ...

    async def expired(self, kind: Kind, now: float) -> list[tuple[str, str]]:
        """(tenant, id) of documents whose `expires_at` is past."""
        ...

    async def set_active(self, tenant: str, batch_id: str, active: bool) -> None:
        """Put a batch in or out of the set the runners work on."""
        ...

    async def active(self) -> list[tuple[str, str]]:
        """(tenant, batch id) of every active batch."""
        ...

    async def claim(self, batch_id: str, line: int, owner: str, ttl: float) -> int:
        """Claim a line for `owner`: 1 claimed, 0 another holds it, -1 it has a result."""
        ...

    async def renew(self, batch_id: str, lines: Sequence[int], owner: str, ttl: float) -> None:
        """Extend `owner`'s claims on `lines`."""
        ...

    async def release(self, batch_id: str, line: int, owner: str) -> None:
        """Give a claimed line back (to be run again)."""
        ...

    async def put_result(self, batch_id: str, line: int, result: str, failed: bool) -> bool:
        """The line's result, unless one was written first; whether this one counted."""
        ...

    async def counts(self, batch_id: str) -> tuple[int, int]:
        """(lines with a result, of which failed)."""
        ...

    async def results(self, batch_id: str) -> dict[int, str]:
        """Every line's result."""
        ...

    async def lock(self, name: str, owner: str, ttl: float) -> bool:
        """Take a short lock (a batch's finalizing), or False if another holds it."""
        ...

    async def forget(self, batch_id: str) -> None:
        """Drop a finished batch's claims and results (its files hold them now)."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class MemoryBatchStore:
    """The batch store of one process (lost when it stops)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._docs: dict[tuple[Kind, str], dict[str, dict[str, Any]]] = {}
        self._active: set[tuple[str, str]] = set()
        self._claims: dict[tuple[str, int], tuple[str, float]] = {}
        self._results: dict[str, dict[int, str]] = {}
        self._failed: dict[str, int] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._clock = clock

    async def put(self, kind: Kind, tenant: str, doc_id: str, doc: dict[str, Any]) -> None:
        self._docs.setdefault((kind, tenant), {})[doc_id] = json.loads(json.dumps(doc))

    async def replace(self, kind: Kind, tenant: str, doc_id: str, doc: dict[str, Any], status: str) -> bool:
        found = self._docs.get((kind, tenant), {}).get(doc_id)
        if found is None or found.get("status") != status:
            return False
        await self.put(kind, tenant, doc_id, doc)
        return True

    async def get(self, kind: Kind, tenant: str, doc_id: str) -> dict[str, Any] | None:
        found = self._docs.get((kind, tenant), {}).get(doc_id)
        return json.loads(json.dumps(found)) if found is not None else None

    async def delete(self, kind: Kind, tenant: str, doc_id: str) -> bool:
        return self._docs.get((kind, tenant), {}).pop(doc_id, None) is not None

    async def listing(self, kind: Kind, tenant: str) -> list[dict[str, Any]]:
        docs = list(self._docs.get((kind, tenant), {}).values())
        return sorted((json.loads(json.dumps(d)) for d in docs), key=newest_first)

    async def expired(self, kind: Kind, now: float) -> list[tuple[str, str]]:
        return [
            (tenant, doc_id)
            for (k, tenant), docs in self._docs.items()
            if k == kind
            for doc_id, doc in docs.items()
            if doc.get("expires_at") is not None and doc["expires_at"] <= now
        ]

    async def set_active(self, tenant: str, batch_id: str, active: bool) -> None:
        if active:
            self._active.add((tenant, batch_id))
        else:
            self._active.discard((tenant, batch_id))

    async def active(self) -> list[tuple[str, str]]:
        return sorted(self._active)

    async def claim(self, batch_id: str, line: int, owner: str, ttl: float) -> int:
        if line in self._results.get(batch_id, {}):
            return -1
        held = self._claims.get((batch_id, line))
        if held is not None and held[1] > self._clock() and held[0] != owner:
            return 0
        self._claims[(batch_id, line)] = (owner, self._clock() + ttl)
        return 1

    async def renew(self, batch_id: str, lines: Sequence[int], owner: str, ttl: float) -> None:
        for line in lines:
            held = self._claims.get((batch_id, line))
            if held is not None and held[0] == owner:
                self._claims[(batch_id, line)] = (owner, self._clock() + ttl)

    async def release(self, batch_id: str, line: int, owner: str) -> None:
        held = self._claims.get((batch_id, line))
        if held is not None and held[0] == owner:
            del self._claims[(batch_id, line)]

    async def put_result(self, batch_id: str, line: int, result: str, failed: bool) -> bool:
        results = self._results.setdefault(batch_id, {})
        if line in results:
            return False
        results[line] = result
        if failed:
            self._failed[batch_id] = self._failed.get(batch_id, 0) + 1
        self._claims.pop((batch_id, line), None)
        return True

    async def counts(self, batch_id: str) -> tuple[int, int]:
        return len(self._results.get(batch_id, {})), self._failed.get(batch_id, 0)

    async def results(self, batch_id: str) -> dict[int, str]:
        return dict(self._results.get(batch_id, {}))

    async def lock(self, name: str, owner: str, ttl: float) -> bool:
        held = self._locks.get(name)
        if held is not None and held[1] > self._clock() and held[0] != owner:
            return False
        self._locks[name] = (owner, self._clock() + ttl)
        return True

    async def forget(self, batch_id: str) -> None:
        self._results.pop(batch_id, None)
        self._failed.pop(batch_id, None)
        for key in [k for k in self._claims if k[0] == batch_id]:
            del self._claims[key]

    async def close(self) -> None:
        return None


# KEYS: the document; ARGV: the new document, the status the stored one must have
_REPLACE = """
local current = redis.call('GET', KEYS[1])
if not current or cjson.decode(current)['status'] ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# KEYS: results hash, claim key; ARGV: line, owner, ttl ms
_CLAIM = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -1 end
local held = redis.call('GET', KEYS[2])
if held and held ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
return 1
"""

# KEYS: results hash, failed counter, claim key; ARGV: line, result, failed (0/1)
_RESULT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if ARGV[3] == '1' then redis.call('INCR', KEYS[2]) end
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: claim key or lock; ARGV: owner, ttl ms (0: delete)
_OWNED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) == 0 then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
"""


def _pair(member: bytes) -> tuple[str, str]:
    tenant, _, doc_id = member.decode().partition("\x1f")
    return tenant, doc_id


class RedisBatchStore:
    """The batch store on the continuation store's Redis (its key prefix and hash tag)."""

    def __init__(self, settings: ContinuationSettings) -> None:
        self._p = settings.key_prefix + "bt:"
        self._redis = RedisPerLoop(settings, BatchStoreUnavailable, "the batch store (redis)")

    def _doc(self, kind: Kind, tenant: str, doc_id: str) -> str:
        return f"{self._p}doc:{kind}:{tenant}:{doc_id}"

    def _index(self, kind: Kind, tenant: str) -> str:
        return f"{self._p}idx:{kind}:{tenant}"

    def _claim(self, batch_id: str, line: int) -> str:
        return f"{self._p}claim:{batch_id}:{line}"

    async def put(self, kind: Kind, tenant: str, doc_id: str, doc: dict[str, Any]) -> None:
        pipe = self._redis.client.pipeline(transaction=True)
        pipe.set(self._doc(kind, tenant, doc_id), json.dumps(doc))
        pipe.zadd(self._index(kind, tenant), {doc_id: float(doc.get("_order", doc["created_at"] * 10**6))})
        if doc.get("expires_at") is not None:
            pipe.zadd(f"{self._p}exp:{kind}", {f"{tenant}\x1f{doc_id}": float(doc["expires_at"])})
        await self._redis.call(pipe.execute())

    async def replace(self, kind: Kind, tenant: str, doc_id: str, doc: dict[str, Any], status: str) -> bool:
        script = self._redis.script(_REPLACE)
        done = await self._redis.call(script(keys=[self._doc(kind, tenant, doc_id)], args=[json.dumps(doc), status]))
        return bool(done)

    async def get(self, kind: Kind, tenant: str, doc_id: str) -> dict[str, Any] | None:
        raw = await self._redis.call(self._redis.client.get(self._doc(kind, tenant, doc_id)))
        return json.loads(raw) if raw is not None else None

    async def delete(self, kind: Kind, tenant: str, doc_id: str) -> bool:
        pipe = self._redis.client.pipeline(transaction=True)
        pipe.delete(self._doc(kind, tenant, doc_id))
        pipe.zrem(self._index(kind, tenant), doc_id)
        pipe.zrem(f"{self._p}exp:{kind}", f"{tenant}\x1f{doc_id}")
        removed, _, _ = await self._redis.call(pipe.execute())
        return bool(removed)

    async def listing(self, kind: Kind, tenant: str) -> list[dict[str, Any]]:
        ids = await self._redis.call(self._redis.client.zrevrange(self._index(kind, tenant), 0, -1))
        if not ids:
            return []
        raws = await self._redis.call(self._redis.client.mget([self._doc(kind, tenant, i.decode()) for i in ids]))
        docs = [json.loads(r) for r in raws if r is not None]
        return sorted(docs, key=newest_first)

    async def expired(self, kind: Kind, now: float) -> list[tuple[str, str]]:
        found = await self._redis.call(self._redis.client.zrangebyscore(f"{self._p}exp:{kind}", "-inf", now))
        return [_pair(m) for m in found]

    async def set_active(self, tenant: str, batch_id: str, active: bool) -> None:
        member = f"{tenant}\x1f{batch_id}"
        client = self._redis.client
        await self._redis.call(
            client.sadd(self._p + "active", member) if active else client.srem(self._p + "active", member)
        )

    async def active(self) -> list[tuple[str, str]]:
        members = await self._redis.call(self._redis.client.smembers(self._p + "active"))
        return sorted(_pair(m) for m in members)

    async def claim(self, batch_id: str, line: int, owner: str, ttl: float) -> int:
        keys = [self._p + "res:" + batch_id, self._claim(batch_id, line)]
        return int(await self._redis.call(self._redis.script(_CLAIM)(keys=keys, args=[line, owner, int(ttl * 1000)])))

    async def renew(self, batch_id: str, lines: Sequence[int], owner: str, ttl: float) -> None:
        script = self._redis.script(_OWNED)
        for line in lines:
            await self._redis.call(script(keys=[self._claim(batch_id, line)], args=[owner, int(ttl * 1000)]))

    async def release(self, batch_id: str, line: int, owner: str) -> None:
        await self._redis.call(self._redis.script(_OWNED)(keys=[self._claim(batch_id, line)], args=[owner, 0]))

    async def put_result(self, batch_id: str, line: int, result: str, failed: bool) -> bool:
        keys = [self._p + "res:" + batch_id, self._p + "failed:" + batch_id, self._claim(batch_id, line)]
        script = self._redis.script(_RESULT)
        return bool(await self._redis.call(script(keys=keys, args=[line, result, "1" if failed else "0"])))

    async def counts(self, batch_id: str) -> tuple[int, int]:
        pipe = self._redis.client.pipeline(transaction=False)
        pipe.hlen(self._p + "res:" + batch_id)
        pipe.get(self._p + "failed:" + batch_id)
        done, failed = await self._redis.call(pipe.execute())
        return int(done), int(failed or 0)

    async def results(self, batch_id: str) -> dict[int, str]:
        found = await self._redis.call(self._redis.client.hgetall(self._p + "res:" + batch_id))
        return {int(k): v.decode() for k, v in found.items()}

    async def lock(self, name: str, owner: str, ttl: float) -> bool:
        key = self._p + "lock:" + name
        if await self._redis.call(self._redis.client.set(key, owner, nx=True, px=int(ttl * 1000))):
            return True
        return bool(await self._redis.call(self._redis.script(_OWNED)(keys=[key], args=[owner, int(ttl * 1000)])))

    async def forget(self, batch_id: str) -> None:
        # claims lapse on their own (a result deletes its claim)
        await self._redis.call(self._redis.client.delete(self._p + "res:" + batch_id, self._p + "failed:" + batch_id))

    async def close(self) -> None:
        await self._redis.close()


def make_batch_store(settings: ContinuationSettings) -> BatchStore:
    """The batch store of the continuation store's backend."""
    return RedisBatchStore(settings) if settings.backend == "redis" else MemoryBatchStore()
