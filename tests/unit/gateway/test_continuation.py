"""The continuation store: both backends bounded by entries, bytes and time to live."""

from __future__ import annotations

import asyncio

import pytest

from gateway.continuation import MemoryStore, RedisStore, decode_tokens, encode_tokens
from gateway.settings import ContinuationSettings


def run(coro):
    return asyncio.run(coro)


def test_token_encoding_round_trips():
    tokens = [0, 1, 49151, 2**32 - 1]
    assert decode_tokens(encode_tokens(tokens)) == tokens
    assert len(encode_tokens(tokens)) == 16


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_memory_store_bounds_entries():
    store = MemoryStore(ContinuationSettings(max_entries=2))

    async def go():
        for k in "abc":
            await store.put(k, [1, 2, 3])
        return [await store.get(k) for k in "abc"], await store.stats()

    values, stats = run(go())
    assert values == [None, [1, 2, 3], [1, 2, 3]]
    assert stats.entries == 2 and stats.evictions == 1


def test_memory_store_bounds_bytes():
    store = MemoryStore(ContinuationSettings(max_bytes=1024))

    async def go():
        await store.put("a", list(range(100)))  # 401 bytes
        await store.put("b", list(range(100)))
        await store.put("c", list(range(100)))  # 1203 > 1024: "a" goes
        await store.put("huge", list(range(1000)))  # larger than the whole store: not kept
        return [await store.get(k) is not None for k in ("a", "b", "c", "huge")], await store.stats()

    present, stats = run(go())
    assert present == [False, True, True, False]
    assert stats.bytes <= 1024


def test_memory_store_expires_by_ttl():
    clock = Clock()
    store = MemoryStore(ContinuationSettings(ttl_seconds=10), clock=clock)

    async def go():
        await store.put("a", [1])
        clock.now = 5
        await store.put("b", [2])
        first = await store.get("a")
        clock.now = 11
        return first, await store.get("a"), await store.get("b"), (await store.stats()).entries

    assert run(go()) == ([1], None, [2], 1)


def test_memory_store_replacing_a_key_keeps_one_entry():
    store = MemoryStore(ContinuationSettings())

    async def go():
        await store.put("a", [1])
        await store.put("a", [1, 2])
        return await store.get("a"), await store.stats()

    value, stats = run(go())
    assert value == [1, 2] and stats.entries == 1 and stats.bytes == 1 + 8


@pytest.fixture
def redis_settings(redis_server):
    import uuid

    return ContinuationSettings(
        backend="redis",
        redis_url=redis_server,
        key_prefix=f"{{test-{uuid.uuid4().hex}}}:",
        max_entries=3,
        max_bytes=4096,
    )


def test_redis_store_round_trip_and_entry_bound(redis_settings):
    async def go():
        store = RedisStore(redis_settings)
        try:
            for k in "abcd":
                await store.put(k, [ord(k), 7])
            values = [await store.get(k) for k in "abcd"]
            return values, await store.stats()
        finally:
            await store.close()

    values, stats = run(go())
    assert values == [None, [98, 7], [99, 7], [100, 7]]
    assert stats.entries == 3 and stats.evictions == 1


def test_redis_store_byte_bound_and_ttl(redis_settings):
    redis_settings.max_bytes = 2048
    redis_settings.ttl_seconds = 0.3

    async def go():
        store = RedisStore(redis_settings)
        try:
            await store.put("a", list(range(300)))  # ~1.2 KB
            await store.put("b", list(range(300)))  # over 2 KB together: "a" goes
            after_bytes = [await store.get("a") is None, await store.get("b") is not None]
            await asyncio.sleep(0.5)
            await store.put("c", [1])  # the write sweeps what expired
            return after_bytes, await store.get("b"), await store.stats()
        finally:
            await store.close()

    after_bytes, b, stats = run(go())
    assert after_bytes == [True, True]
    assert b is None and stats.entries == 1 and stats.bytes == len(redis_settings.key_prefix) + 1 + 4


def test_redis_store_unreachable_is_a_clear_503():
    from gateway.errors import NotReady

    settings = ContinuationSettings(backend="redis", redis_url="redis://127.0.0.1:1/0")

    async def go():
        store = RedisStore(settings)
        try:
            await store.get("a")
        finally:
            await store.close()

    with pytest.raises(NotReady, match="redis"):
        run(go())


def test_memory_store_raw_values_and_delete():
    async def go():
        store = MemoryStore(ContinuationSettings(max_entries=10, max_bytes=1024))
        ok = await store.put_bytes("r", b"record")
        too_big = await store.put_bytes("big", b"x" * 2000)
        got = await store.get_bytes("r")
        gone, again = await store.delete("r"), await store.delete("r")
        return ok, too_big, got, gone, again, await store.get_bytes("r"), await store.stats()

    ok, too_big, got, gone, again, after, stats = run(go())
    assert (ok, too_big, got, gone, again, after) == (True, False, b"record", True, False, None)
    assert stats.entries == 0 and stats.bytes == 0


def test_redis_store_delete_keeps_the_byte_count(redis_settings):
    async def go():
        store = RedisStore(redis_settings)
        try:
            await store.put_bytes("a", b"12345")
            await store.put_bytes("b", b"678")
            gone, again = await store.delete("a"), await store.delete("a")
            return gone, again, await store.get_bytes("a"), await store.get_bytes("b"), await store.stats()
        finally:
            await store.close()

    gone, again, a, b, stats = run(go())
    assert (gone, again, a, b) == (True, False, None, b"678")
    assert stats.entries == 1 and stats.bytes == len(redis_settings.key_prefix) + 1 + 3


def test_redis_prefix_needs_a_hash_tag():
    with pytest.raises(ValueError, match="hash tag"):
        ContinuationSettings(backend="redis", key_prefix="llmgw:cont:")
    ContinuationSettings(backend="memory", key_prefix="llmgw:cont:")  # only Redis cares


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def redis_cluster(tmp_path):
    """A one-node Redis Cluster (every slot on this node): Redis refuses scripts that touch
    keys of another slot than the declared ones, as a many-node cluster would."""
    import shutil
    import subprocess
    import time

    import redis

    from tests.servers import free_port

    # Redis Cluster listens on port + 10000 too (its bus), so the port must be at most 55535
    port = next(p for p in iter(free_port, None) if p <= 55535 and _free(p + 10000))
    folder = tmp_path
    log = folder / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--cluster-enabled", "yes", "--dir", str(folder)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_store_works_on_redis_cluster(redis_cluster):
    async def go(prefix):
        settings = ContinuationSettings.model_construct(
            **{**ContinuationSettings(backend="redis").model_dump(), "key_prefix": prefix},
        )
        settings.redis_url = ContinuationSettings(redis_url=redis_cluster).redis_url
        settings.max_entries = 2
        store = RedisStore(settings)
        try:
            for k in "abc":  # the third write evicts "a" inside the script
                await store.put(k, [ord(k)])
            gone = await store.delete("b")
            return [await store.get(k) for k in "abc"], gone, await store.stats()
        finally:
            await store.close()

    values, gone, stats = run(go("{gw}:cont:"))
    assert values == [None, None, [99]] and gone and stats.entries == 1
    # without a hash tag the evicted key sits in another slot: Redis refuses the script,
    # which is why the setting insists on a tag
    with pytest.raises(Exception, match=r"slot|unavailable"):
        run(go("plain:cont:"))


def _quota_case(store):
    """Tenant "a" writes past its own quota of 3 entries; "b" has two entries."""

    async def go():
        await store.put("b1", [1], tenant="b")
        await store.put("b2", [1], tenant="b")
        for i in range(5):
            await store.put(f"a{i}", [1], tenant="a")
        return [await store.get(k) is not None for k in ("b1", "b2", "a0", "a1", "a2", "a3", "a4")]

    return go()


def test_memory_store_a_tenant_past_its_quota_evicts_its_own_oldest():
    store = MemoryStore(ContinuationSettings(max_entries=100, max_entries_per_tenant=3))
    assert run(_quota_case(store)) == [True, True, False, False, True, True, True]


def test_memory_store_when_full_the_biggest_tenant_gives_up_its_oldest():
    store = MemoryStore(ContinuationSettings(max_entries=4, max_entries_per_tenant=4))

    async def go():
        await store.put("b1", [1], tenant="b")
        for i in range(4):  # "a" holds the most: its oldest go, "b" keeps its one entry
            await store.put(f"a{i}", [1, 2, 3], tenant="a")
        return [await store.get(k) is not None for k in ("b1", "a0", "a1", "a2", "a3")]

    assert run(go()) == [True, False, True, True, True]


def test_redis_store_a_tenant_past_its_quota_evicts_its_own_oldest(redis_settings):
    redis_settings.max_entries = 100
    redis_settings.max_entries_per_tenant = 3

    async def go():
        store = RedisStore(redis_settings)
        try:
            return await _quota_case(store)
        finally:
            await store.close()

    assert run(go()) == [True, True, False, False, True, True, True]


def test_redis_store_when_full_the_biggest_tenant_gives_up_its_oldest(redis_settings):
    redis_settings.max_entries = 4
    redis_settings.max_entries_per_tenant = 4

    async def go():
        store = RedisStore(redis_settings)
        try:
            await store.put("b1", [1], tenant="b")
            for i in range(4):
                await store.put(f"a{i}", [1, 2, 3], tenant="a")
            present = [await store.get(k) is not None for k in ("b1", "a0", "a1", "a2", "a3")]
            await store.delete("a3")  # the tenant's bookkeeping follows deletes too
            await store.put("a4", [1], tenant="a")
            return present, await store.get_many(["a1", "a3", "a4", "nope"])
        finally:
            await store.close()

    present, many = run(go())
    assert present == [True, False, True, True, True]
    assert many == [[1, 2, 3], None, [1], None]


def test_redis_store_circuit_opens_after_failures_and_fails_at_once():
    from gateway.continuation import StoreUnavailable

    settings = ContinuationSettings(
        backend="redis", redis_url="redis://127.0.0.1:1/0", breaker_failures=2, breaker_seconds=60
    )

    async def go():
        store = RedisStore(settings)
        calls = 0
        real = store._redis.get

        async def counting(*args):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1  # a call that reached the network
            return await real(*args)

        store._redis.get = counting
        try:
            for _ in range(2):
                with pytest.raises(StoreUnavailable):
                    await store.get("a")
            assert calls == 2 and store.health().breaker_open and not store.health().up
            for _ in range(5):  # open: nobody waits on a dead Redis
                with pytest.raises(StoreUnavailable):
                    await store.get("a")
            assert calls == 2 and store.health().errors == 2
        finally:
            await store.close()

    run(go())


def test_memory_get_many_and_health():
    store = MemoryStore(ContinuationSettings())

    async def go():
        await store.put("a", [1, 2])
        return await store.get_many(["a", "b"]), store.health()

    many, health = run(go())
    assert many == [[1, 2], None] and health.up and not health.breaker_open
