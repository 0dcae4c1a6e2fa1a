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
