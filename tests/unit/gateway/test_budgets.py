"""Token budgets enforced while the tokens are made (gateway/budgets.py): the allowance on
its own, then through the app on the scripted engine (one byte per token), then across
two runtimes sharing a real Redis."""

from __future__ import annotations

import asyncio
import calendar
import concurrent.futures
import json
import time

import anthropic
import openai
import pytest
import yaml

from gateway.budgets import SLICE, Allowance, Limits, window_of
from gateway.metering import MemoryMeter
from gateway.settings import ContinuationSettings, ReaderSettings
from tests.unit.conftest import clear_of_window_edge

A, B = "sk-budget-a-0123456789", "sk-budget-b-0123456789"


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_windows_reset_at_the_next_utc_minute_day_and_month():
    now = calendar.timegm((2026, 12, 31, 23, 59, 30, 0, 0, 0))
    assert window_of("minute", now) == ("2026-12-31T23:59", now + 30)
    assert window_of("day", now) == ("2026-12-31", now + 30)
    assert window_of("month", now) == ("2026-12", calendar.timegm((2027, 1, 1, 0, 0, 0, 0, 0, 0)))
    assert Limits().windows() == [] and not Limits()
    assert Limits(tokens_per_day=5).windows() == [("day", 5)]


def test_an_allowance_leases_spends_and_gives_back_exactly():
    async def run() -> None:
        meter = MemoryMeter()
        scopes = [("key", "a", Limits(tokens_per_day=100)), ("tenant", "t", Limits(tokens_per_month=1000))]
        first = Allowance.of(meter, scopes)
        assert first is not None
        await first.open(40)
        keys = list(first.remaining())
        assert await meter.used(keys) == [40, 40]
        assert first.take(30) is True and first.take(20) is None  # 10 left: the lease must grow
        assert await first.extend(20) is True  # another slice leased
        # the tenant's month had room for a whole slice; the key's day (60 left) for a
        # quarter of what it had left, more than the 10 needed
        assert await meter.used(keys) == [40 + 60 // 4, 40 + SLICE]
        assert first.slice == 2 * SLICE  # the next lease asks twice as much
        await first.close(50)  # used 50 in all: the rest goes back
        assert await meter.used(keys) == [50, 50]
        # a second request runs into the key's 100 a day
        second = Allowance.of(meter, scopes)
        assert second is not None
        await second.open(30)
        assert await second.extend(30) is True and await second.extend(30) is False  # 50 + 60 > 100
        assert second.exhausted and "100 tokens per day" in second.why()
        await second.close(60)
        assert await meter.used(keys) == [110, 110]  # the step that crossed it is counted, once
        third = Allowance.of(meter, scopes)
        assert third is not None
        with pytest.raises(Exception) as refused:
            await third.open(10)
        assert getattr(refused.value, "headers", {})["Retry-After"].isdigit()
        assert await meter.used(keys) == [110, 110]  # nothing leased by a refused request

    asyncio.run(run())


def test_what_other_streams_of_a_request_draw_while_one_grows_the_lease_is_counted():
    """Streams of one request (n > 1, a batch of prompts) share its allowance: one takes
    from the lease while another waits on the meter to grow it, and every token counts."""

    class SlowMeter(MemoryMeter):
        def __init__(self) -> None:
            super().__init__()
            self.go = asyncio.Event()

        async def lease(self, key: str, limit: int, want: int, ttl: int, need: int | None = None) -> tuple[int, int]:
            if want > 20:  # the growth, not the opening lease
                await self.go.wait()
            return await super().lease(key, limit, want, ttl, need)

    async def run() -> None:
        meter = SlowMeter()
        allowance = Allowance.of(meter, [("key", "a", Limits(tokens_per_day=10_000))])
        assert allowance is not None
        await allowance.open(20)
        assert allowance.take(15) is True  # 5 left
        growing = asyncio.ensure_future(allowance.extend(8))  # short by 3: waits on the meter
        await asyncio.sleep(0)
        assert allowance.take(4) is True  # another stream, meanwhile, within what was left
        meter.go.set()
        assert await growing is True
        assert allowance.spent == 15 + 8 + 4
        key = next(iter(allowance.remaining()))
        assert allowance.remaining()[key] == (await meter.used([key]))[0] - 27  # leased less drawn
        await allowance.close(27)
        assert await meter.used([key]) == [27]  # exactly what was made, nothing lost or doubled

    asyncio.run(run())


def keys_file(tmp_path, budget_a: dict, tenants: list | None = None):
    path = tmp_path / "keys.yaml"
    data = {
        "keys": [{"name": "alice", "key": A, "tenant": "acme", **budget_a}, {"name": "bob", "key": B, "tenant": "acme"}]
    }
    if tenants is not None:
        data["tenants"] = tenants
    path.write_text(yaml.safe_dump(data))
    return path


READER = [
    ReaderSettings(
        id="primary-0",
        kind="scripted",
        model="scripted",
        scripted={"eos_after": 5000, "token_delay": 0.001, "reply": "budget " * 1000},
    )
]


def test_a_stream_that_reaches_the_budget_ends_cleanly_on_every_api(client_factory, tmp_path):
    path = keys_file(tmp_path, {"tokens_per_day": 400})
    with client_factory(api_keys_file=path, readers=READER) as c:
        clear_of_window_edge("day")
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=A, http_client=c, max_retries=0)
        chunks = list(
            sdk.chat.completions.create(
                model="primary",
                messages=[{"role": "user", "content": "go"}],
                max_tokens=1000,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finish == ["length"] and 100 < len(text) < 400
        # the budget's chunk, then the usage chunk last (as OpenAI's clients expect it)
        assert chunks[-2].choices == [] and chunks[-2].model_extra["budget_exhausted"] is True
        assert chunks[-1].usage is not None and 400 <= chunks[-1].usage.total_tokens <= 401
        # the budget is spent: 429 until the day ends
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 5}, headers=h(A))
        assert r.status_code == 429 and "400 tokens per day" in r.json()["error"]["message"]
        midnight = (int(time.time()) // 86400 + 1) * 86400
        assert abs(int(r.headers["retry-after"]) - (midnight - time.time())) < 5
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 5}, headers=h(B)).status_code == 200

    for surface in ("openai-whole", "anthropic", "takeoff", "generate-one"):
        path = keys_file(tmp_path, {"tokens_per_minute": 300})
        with client_factory(api_keys_file=path, readers=READER) as c:
            clear_of_window_edge("minute")
            if surface == "openai-whole":
                r = c.post("/v1/completions", json={"prompt": "go", "max_tokens": 1000}, headers=h(A))
                body = r.json()
                assert body["choices"][0]["finish_reason"] == "length" and body["budget_exhausted"] is True
                assert r.headers["x-budget-exhausted"] == "true" and body["usage"]["completion_tokens"] < 300
            elif surface == "anthropic":
                client = anthropic.Anthropic(base_url="http://testserver", api_key=A, http_client=c, max_retries=0)
                with client.messages.stream(
                    model="primary", max_tokens=1000, messages=[{"role": "user", "content": "go"}]
                ) as stream:
                    message = stream.get_final_message()
                assert message.stop_reason == "max_tokens" and message.usage.output_tokens < 300
            elif surface == "takeoff":
                r = c.post("/generate_stream", json={"text": "go", "max_new_tokens": 1000}, headers=h(A))
                events = [e for e in r.text.split("\n\n") if e]
                last = events[-1]
                assert last.startswith("event: error") and "[DONE]" not in r.text
                error = json.loads(last.split("data: ", 1)[1])
                assert error["type"] == "budget_exhausted" and "300 tokens per minute" in error["detail"]
            else:
                r = c.post("/api/generate-one", json={"request_id": "b1", "prompt": "go",
                                                      "generation_config": {"max_new_tokens": 1000}},
                           headers=h(A))  # fmt: skip
                assert r.status_code == 200 and 100 < len(r.text) < 300


def test_sixteen_streams_under_one_budget_overshoot_by_at_most_a_step_each(client_factory, tmp_path):
    budget = 2000
    path = keys_file(tmp_path, {"tokens_per_day": budget})
    with client_factory(api_keys_file=path, readers=READER) as c:
        clear_of_window_edge("day")
        body = {"model": "primary", "prompt": "go", "max_tokens": 1000, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip

        def one(_: int) -> tuple[int, int]:
            r = c.post("/v1/completions", json=body, headers=h(A))
            if r.status_code != 200:
                return r.status_code, 0
            usage = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith('data: {"id"')]
            used = [u["usage"] for u in usage if u.get("usage")][-1]
            return 200, used["prompt_tokens"] + used["completion_tokens"]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(16)))
        served = [t for status, t in results if status == 200]
        assert served and all(status in (200, 429) for status, _ in results)
        # one engine step is one token on the scripted engine
        assert budget - 16 * SLICE <= sum(served) <= budget + 16, results
        runtime = c.app.state.runtime
        (day,) = asyncio.run(runtime.meter.used([f"b:key:alice:day:{window_of('day', time.time())[0]}"]))
        assert day == sum(served)  # the window holds exactly what was used
        after = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 5}, headers=h(A))
        assert after.status_code == 429 and int(after.headers["retry-after"]) > 0


def test_a_tenant_budget_is_shared_by_its_keys(client_factory, tmp_path):
    path = keys_file(tmp_path, {}, tenants=[{"tenant": "acme", "tokens_per_minute": 150}])
    with client_factory(api_keys_file=path, readers=READER) as c:
        clear_of_window_edge("minute")
        r = c.post("/v1/completions", json={"prompt": "go", "max_tokens": 1000}, headers=h(A))
        assert r.json()["budget_exhausted"] is True
        r = c.post("/v1/completions", json={"prompt": "go", "max_tokens": 10}, headers=h(B))
        assert r.status_code == 429 and "tenant 'acme'" in r.json()["error"]["message"]


def test_a_keys_file_with_a_tenant_budget_twice_is_refused(tmp_path):
    from gateway.auth import KeysFileError, read_keys_file

    path = keys_file(tmp_path, {}, tenants=[{"tenant": "acme", "tokens_per_day": 1}, {"tenant": "acme"}])
    with pytest.raises(KeysFileError, match="two budgets"):
        read_keys_file(path, None, b"s")
    path.write_text(yaml.safe_dump({"keys": [{"name": "a", "key": A, "tokens_per_day": 0}]}))
    with pytest.raises(KeysFileError, match="tokens_per_day"):
        read_keys_file(path, None, b"s")


def test_budgets_are_shared_by_replicas_on_redis_and_survive_a_restart(redis_server, tmp_path):
    from tests.unit.conftest import make_settings, running

    path = keys_file(tmp_path, {"tokens_per_day": 600})
    settings = make_settings(
        api_keys_file=path,
        readers=READER,
        continuation=ContinuationSettings(backend="redis", redis_url=redis_server, key_prefix="{budgets}:"),
    )
    body = {"prompt": "go", "max_tokens": 1000}
    clear_of_window_edge("day")
    with running(settings) as one, running(settings) as two:
        first = one.post("/v1/completions", json=body, headers=h(A)).json()
        second = two.post("/v1/completions", json=body, headers=h(A)).json()
        assert first["budget_exhausted"] is True or second.get("budget_exhausted") is True
        used = sum(a["usage"]["total_tokens"] for a in (first, second) if "usage" in a)
        assert used <= 600 + 2
        assert two.post("/v1/completions", json=body, headers=h(A)).status_code == 429
    with running(settings) as restarted:  # the count lives in Redis
        assert restarted.post("/v1/completions", json=body, headers=h(A)).status_code == 429


def test_budgets_fail_closed_when_redis_is_gone(tmp_path):
    from tests.servers import free_port
    from tests.unit.conftest import make_settings, running

    path = keys_file(tmp_path, {"tokens_per_day": 600})
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(
        api_keys_file=path,
        readers=READER,
        continuation=ContinuationSettings(backend="redis", redis_url=dead, key_prefix="{budgets}:"),
    )
    with running(settings) as c:
        r = c.post("/v1/completions", json={"prompt": "go", "max_tokens": 5}, headers=h(A))
        assert r.status_code == 503 and "budget" in r.json()["error"]["message"]
        # a key without a budget is served: its requests never ask the counters
        assert c.post("/v1/completions", json={"prompt": "go", "max_tokens": 5}, headers=h(B)).status_code == 200


def test_a_burst_of_calls_beyond_the_connection_pool_waits_instead_of_failing(redis_server):
    # 128 streams of a budgeted key lease at once: redis-py's own pool refused the 101st
    # connection (MaxConnectionsError, a 503 to the client); the gateway's pool queues them
    import asyncio

    from gateway.continuation import RedisStore
    from gateway.metering import RedisMeter

    settings = ContinuationSettings(
        backend="redis", redis_url=redis_server, key_prefix="{burst}:", redis_max_connections=8,
        redis_timeout_seconds=5,  # the queueing is what is tested, not how long a busy machine takes
    )  # fmt: skip

    async def burst() -> tuple[list, list]:
        meter, store = RedisMeter(settings), RedisStore(settings)
        try:
            leases = await asyncio.gather(*(meter.lease("b:key:k:day:x", 10**9, 32, 60) for _ in range(300)))
            reads = await asyncio.gather(*(store.get(f"k{i}") for i in range(300)))
        finally:
            await meter.close()
            await store.close()
        return leases, reads

    leases, reads = asyncio.run(burst())
    assert [granted for granted, _ in leases] == [32] * 300 and max(used for _, used in leases) == 32 * 300
    assert reads == [None] * 300


def test_refunds_made_together_go_to_redis_in_one_round_trip_and_each_is_counted(redis_server):
    # 128 streams ending at once give back what their leases had left: one MULTI/EXEC
    # with a sum per counter, not 128; a caller cancelled meanwhile leaves the sum whole
    import redis as redis_sync

    from gateway.metering import RedisMeter

    settings = ContinuationSettings(backend="redis", redis_url=redis_server, key_prefix="{refunds}:")
    direct = redis_sync.Redis.from_url(redis_server)

    async def refunds() -> list[int]:
        meter = RedisMeter(settings)
        try:
            await meter.lease("b:key:a:day:x", 10**9, 10_000, 60)
            await meter.lease("b:key:b:day:x", 10**9, 10_000, 60)
            direct.config_resetstat()
            calls = [meter.add(f"b:key:{'ab'[i % 2]}:day:x", -(i + 1), 60) for i in range(128)]
            tasks = [asyncio.ensure_future(c) for c in calls]
            await asyncio.sleep(0)
            tasks[5].cancel()  # its client went: its refund is counted all the same
            await asyncio.gather(*tasks, return_exceptions=True)
            execs = direct.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
            return [execs, *await meter.used(["b:key:a:day:x", "b:key:b:day:x"])]
        finally:
            await meter.close()
            direct.close()

    execs, a, b = asyncio.run(refunds())
    assert execs == 1
    assert a == 10_000 - sum(range(1, 129, 2)) and b == 10_000 - sum(range(2, 129, 2))


def test_leases_asked_together_go_in_one_round_trip_and_grant_as_one_by_one(redis_server, monkeypatch):
    # a burst of requests admitted together: one pipeline of the lease script, each run
    # atomically in order, so the grants are what 64 leases one after another would get
    import redis as redis_sync
    import redis.asyncio.client as redis_client

    from gateway.metering import RedisMeter, _grant

    sent = []
    execute = redis_client.Pipeline.execute

    async def counted(self, *args, **kwargs):
        sent.append(len(self.command_stack))
        return await execute(self, *args, **kwargs)

    monkeypatch.setattr(redis_client.Pipeline, "execute", counted)
    settings = ContinuationSettings(backend="redis", redis_url=redis_server, key_prefix="{leases}:")

    direct = redis_sync.Redis.from_url(redis_server)

    async def burst() -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
        meter = RedisMeter(settings)
        try:
            leases = await asyncio.gather(*(meter.lease("b:key:a:day:x", 1000, 32, 60) for _ in range(64)))
            alone = await meter.lease("b:key:b:day:x", 1000, 32, 60)  # one lease: the script's own call
            direct.script_flush()  # Redis restarted and lost its scripts: loaded again, nothing lost
            again = await asyncio.gather(*(meter.lease("b:key:b:day:x", 1000, 32, 60) for _ in range(3)))
            return list(leases), [alone], list(again)
        finally:
            await meter.close()
            direct.close()

    leases, alone, again = asyncio.run(burst())
    expected, used = [], 0
    for _ in range(64):
        grant = max(0, _grant(1000 - used, 32, 32))
        used += grant
        expected.append(grant)
    assert [granted for granted, _ in leases] == expected and sum(expected) == 1000  # never past the limit
    assert alone == [(32, 32)] and again == [(32, 64), (32, 96), (32, 128)]
    assert sent == [64, 3]  # one pipeline per burst; no pipeline (and no SCRIPT EXISTS) for one lease


def test_refunds_made_together_all_fail_closed_when_redis_is_gone():
    from gateway.metering import MeterUnavailable, RedisMeter
    from tests.servers import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = ContinuationSettings(backend="redis", redis_url=dead, key_prefix="{refunds}:", redis_timeout_seconds=2)

    async def refunds() -> list[BaseException | None]:
        meter = RedisMeter(settings)
        try:
            return await asyncio.gather(*(meter.add("b:key:a:day:x", -1, 60) for _ in range(8)), return_exceptions=True)
        finally:
            await meter.close()

    outcomes = asyncio.run(refunds())
    assert all(isinstance(o, MeterUnavailable) and "unavailable" in str(o) for o in outcomes), outcomes


def test_with_plenty_left_a_stream_leases_once_not_once_per_slice(client_factory, tmp_path, monkeypatch):
    # the first lease covers the answer (up to FIRST_LEASE) where the window has plenty
    # left: 600 tokens are one lease and one refund, not one lease per doubling slice
    path = keys_file(tmp_path, {"tokens_per_day": 10**9})
    wants: list[int] = []
    lease = MemoryMeter.lease

    async def counted(self, key, limit, want, ttl, need=None):
        wants.append(want)
        return await lease(self, key, limit, want, ttl, need)

    monkeypatch.setattr(MemoryMeter, "lease", counted)
    with client_factory(api_keys_file=path, readers=READER) as c:
        body = {"prompt": "go", "max_tokens": 600, "stream": True, "stream_options": {"include_usage": True}}
        r = c.post("/v1/completions", json=body, headers=h(A))
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith('data: {"id"')]
        usage = [e["usage"] for e in events if e.get("usage")][-1]
        assert usage["completion_tokens"] == 600
        assert len(wants) == 1 and wants[0] >= 600, wants
        runtime = c.app.state.runtime
        (day,) = asyncio.run(runtime.meter.used([f"b:key:alice:day:{window_of('day', time.time())[0]}"]))
        assert day == usage["prompt_tokens"] + 600  # and the window holds exactly what was used
