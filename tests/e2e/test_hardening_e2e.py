"""Hardening on the real engine: disconnect storms, deadlines, authentication, overload,
graceful shutdown and engine death."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import threading
import time

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.servers import free_port, start_gateway
from tests.sse import sse_events

pytestmark = pytest.mark.e2e

KEY = "sk-e2e-hardening"
PROBE_PORT = free_port()
ADMIN = "sk-e2e-admin-0123456789"
TEAM_A, TEAM_B = "sk-e2e-team-a-0123456789", "sk-e2e-team-b-0123456789"
TEAM_C = "sk-e2e-team-c-0123456789"
GAMMA_TOKENS_PER_DAY = 300


def keys_yaml(*names: str) -> str:
    keys = {
        "team-a": {"name": "team-a", "key": TEAM_A},
        "team-b": {"name": "team-b", "key": TEAM_B, "max_in_flight": 1},
        "team-c": {"name": "team-c", "key": TEAM_C, "tenant": "gamma"},
    }
    tenants = [{"tenant": "gamma", "tokens_per_day": GAMMA_TOKENS_PER_DAY}]
    return json.dumps({"keys": [keys[n] for n in names], "tenants": tenants})  # JSON is YAML


def engine_requests(url: str, reader: str = "primary-0", headers: dict[str, str] | None = None) -> int:
    return httpx.get(url + "/status", headers=headers).json()["live_readers"][reader]["engine_requests"]


def test_disconnect_storm_leaves_nothing_running(gateway):
    rng = random.Random(7)

    async def storm() -> list[str]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=300, limits=limits) as client:

            async def one(i: int) -> str:
                cut = i % 2 == 0
                body = {"text": f"Story number {i}:", "max_new_tokens": 400 if cut else 24}
                if cut:
                    body["min_new_tokens"] = 400
                async with client.stream("POST", "/generate_stream", json=body) as r:
                    if cut:
                        stop_after = rng.randint(0, 6)  # 0: cut before the first token
                        seen = 0
                        async for line in r.aiter_lines():
                            if seen >= stop_after:
                                break
                            if line.startswith("data:"):
                                seen += 1
                        return "cut"
                    text = await r.aread()
                    return "done" if b"event: end" in text else "broken"

            return await asyncio.gather(*(one(i) for i in range(100)))

    results = asyncio.run(storm())
    assert results.count("cut") == 50 and results.count("done") == 50
    deadline = time.monotonic() + 1.0
    while engine_requests(gateway.url):
        assert time.monotonic() < deadline, "engine requests left running after the storm"
        time.sleep(0.05)


def test_deadline_aborts_the_engine_request(gateway, http):
    body = {"text": "Tell me a long story.", "max_new_tokens": 1000, "min_new_tokens": 1000, "timeout": 1.5}
    r = http.post("/generate", json=body)
    assert r.status_code == 504 and r.json()["type"] == "timeout"
    r = http.post("/generate_stream", json=body)
    events = sse_events(r.text)
    assert events[-1][0] == "error" and json.loads(events[-1][1])["type"] == "timeout"
    assert sum(1 for e, _ in events if e == "message") > 1  # it was streaming when the deadline hit
    assert engine_requests(gateway.url) == 0


@pytest.fixture(scope="module")
def keys_file(artifacts):
    path = artifacts / "guarded-keys.yaml"
    path.write_text(keys_yaml("team-a", "team-b", "team-c"))
    return path


@pytest.fixture(scope="module")
def guarded(artifacts, keys_file, redis_server):
    """A gateway of its own: API keys (plain, admin and a keys file), a limit of 8
    sequences in flight, a reader without the no-repeat-ngram processor, test reader
    kinds at run time and SIGTERM are things the shared gateway must not have. Its store,
    and so its budgets and ledger, are on a real redis-server, as replicas run them."""
    gw = start_gateway(
        artifacts / "gateway-guarded.log",
        env={
            "GATEWAY_API_KEYS": json.dumps([KEY]),
            "GATEWAY_ADMIN_API_KEYS": json.dumps([ADMIN]),
            "GATEWAY_API_KEYS_FILE": str(keys_file),
            "GATEWAY_ALLOWED_READER_KINDS": json.dumps(["vllm", "sentence-transformers", "scripted"]),
            "GATEWAY_READERS": json.dumps(
                [
                    {
                        "id": "primary-0",
                        "model": "embedded:smollm2-135m-instruct",
                        "dtype": "float32",
                        "max_model_len": 2048,
                        "enforce_eager": True,
                        "cpu_kv_cache_gib": 1,
                        "max_in_flight": 8,
                        "no_repeat_ngram": False,
                    },
                    {
                        "id": "embed-0",
                        "consumer_group": "embed",
                        "kind": "sentence-transformers",
                        "model": "embedded:all-minilm-l6-v2",
                    },
                ]
            ),
            "GATEWAY_DRAIN_TIMEOUT_SECONDS": "120",
            "GATEWAY_LOG_FORMAT": "json",  # one JSON object per line, vLLM's lines included
            "GATEWAY_PROBE_PORT": str(PROBE_PORT),
            "GATEWAY_CONTINUATION__BACKEND": "redis",
            "GATEWAY_CONTINUATION__REDIS_URL": redis_server,
            "GATEWAY_CONTINUATION__KEY_PREFIX": "{guarded}:",
        },
        wait=False,
    )
    try:
        deadline = time.monotonic() + 600
        while True:
            assert gw.proc.poll() is None, gw.log_tail()
            try:
                if httpx.get(gw.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.5)
        yield gw
    finally:
        gw.stop()


def test_every_route_refuses_a_missing_or_wrong_key(guarded):
    from gateway.app import create_apps
    from gateway.settings import Settings

    apps = dict(zip(("main", "management", "openai"), create_apps(Settings()), strict=True))
    bases = {"main": guarded.url, "management": guarded.management_url, "openai": guarded.openai_url}
    checked = 0
    for name, app in apps.items():
        for route in app.routes:
            if not isinstance(route, APIRoute) or route.path in (
                "/healthz",
                "/readyz",
                "/health",
                "/ping",
                "/version",
                "/",
            ):
                continue
            path = route.path.replace("{reader_id}", "primary-0").replace("{model_id:path}", "primary")
            for method in route.methods:
                for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}):
                    r = httpx.request(method, bases[name] + path, headers=headers, json={})
                    assert r.status_code == 401, (name, method, path, r.status_code)
                checked += 1
    assert checked > 30
    ok = httpx.post(
        guarded.url + "/generate", json={"text": "hi", "max_new_tokens": 2}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert ok.status_code == 200
    assert httpx.get(guarded.management_url + "/reader_groups", headers={"X-API-Key": ADMIN}).status_code == 200


def test_inference_keys_get_403_on_every_management_route(guarded):
    from gateway.app import create_apps
    from gateway.settings import Settings

    management = create_apps(Settings())[1]
    checked = 0
    for route in management.routes:
        if not isinstance(route, APIRoute) or route.path in ("/healthz", "/readyz", "/health", "/ping", "/version"):
            continue
        path = route.path.replace("{reader_id}", "primary-0")
        for method in route.methods:
            for key in (KEY, TEAM_A):
                r = httpx.request(method, guarded.management_url + path, headers={"X-API-Key": key}, json={})
                assert r.status_code == 403 and r.json()["type"] == "permission_error", (method, path)
            checked += 1
    assert checked >= 4
    assert httpx.get(guarded.url + "/readyz").status_code == 200  # nothing was deleted


def test_two_keys_cannot_see_each_others_continuation(guarded):
    body = {
        "request_id": "shared-id",
        "stream_response": False,
        "only_new_tokens": False,
        "generation_config": {"max_new_tokens": 4},
    }
    first = httpx.post(
        guarded.url + "/api/generate-one",
        json={**body, "prompt": "My secret is 4711."},
        headers={"X-API-Key": TEAM_A},
        timeout=120,
    )
    assert first.status_code == 200 and first.text.startswith("My secret is 4711.")
    other = httpx.post(
        guarded.url + "/api/generate-one", json={**body, "prompt": "Hello."}, headers={"X-API-Key": TEAM_B}, timeout=120
    )
    assert other.status_code == 200 and "4711" not in other.text and other.text.startswith("Hello.")
    mine = httpx.post(
        guarded.url + "/api/generate-one", json={**body, "prompt": ""}, headers={"X-API-Key": TEAM_A}, timeout=120
    )
    assert mine.text.startswith(first.text) and "Hello." not in mine.text


def _prefix_cache_hits(gw) -> float:  # type: ignore[no-untyped-def]
    text = httpx.get(gw.management_url + "/metrics", headers={"X-API-Key": ADMIN}).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:prefix_cache_hits_total"))


def test_two_keys_do_not_share_prefix_cache_hits_but_one_key_does(guarded):
    """vLLM's prefix cache would let a caller time whether another sent a prompt; each
    tenant's requests carry a salt of their own, so the second key's identical long prompt
    finds nothing cached, while the same key's repeat does."""
    import uuid

    prompt = f"{uuid.uuid4().hex} " + " ".join(f"line {i} of a long shared document." for i in range(120))
    body = {"text": prompt, "max_new_tokens": 1}

    def send(key: str) -> None:
        r = httpx.post(guarded.url + "/generate", json=body, headers={"X-API-Key": key}, timeout=120)
        assert r.status_code == 200

    send(TEAM_A)
    before = _prefix_cache_hits(guarded)
    send(TEAM_B)
    time.sleep(0.5)
    after_other_key = _prefix_cache_hits(guarded)
    send(TEAM_A)
    deadline = time.monotonic() + 10
    while (after_same_key := _prefix_cache_hits(guarded)) == after_other_key and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after_other_key == before, "the second key hit the first key's cached prefix"
    assert after_same_key >= after_other_key + 16 * 20, "the same key's repeat found its own prefix"


def test_a_key_at_its_limit_gets_429_while_another_is_served(guarded):
    done = threading.Event()

    def hold() -> None:
        with httpx.stream(
            "POST",
            guarded.url + "/generate_stream",
            headers={"X-API-Key": TEAM_B},
            timeout=300,
            json={"text": "Story:", "max_new_tokens": 64, "min_new_tokens": 64},
        ) as r:
            for _ in r.iter_raw():
                done.set()

    t = threading.Thread(target=hold)
    t.start()
    assert done.wait(120)
    refused = httpx.post(
        guarded.url + "/generate", json={"text": "x", "max_new_tokens": 2}, headers={"X-API-Key": TEAM_B}
    )
    assert refused.status_code == 429 and "team-b" in refused.json()["detail"]
    served = httpx.post(
        guarded.url + "/generate", json={"text": "x", "max_new_tokens": 2}, headers={"X-API-Key": TEAM_A}, timeout=120
    )
    assert served.status_code == 200
    t.join()


def test_a_tenant_budget_ends_a_stream_at_its_allowance_and_then_refuses(guarded):
    c = {"Authorization": f"Bearer {TEAM_C}"}
    body = {
        "model": "primary",
        "messages": [{"role": "user", "content": "Tell me a very long story about the sea."}],
        "max_tokens": 1000,
        "min_tokens": 1000,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = httpx.post(guarded.url + "/v1/chat/completions", json=body, headers=c, timeout=300)
    assert r.status_code == 200, r.text
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    finishes = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    assert finishes[-1] == "length" and finishes.count("length") == 1
    assert [ch for ch in chunks if ch.get("budget_exhausted")] and r.text.rstrip().endswith("data: [DONE]")
    usage = chunks[-1]["usage"]
    # the stream ended at the tenant's allowance, past it by one engine step at most
    assert GAMMA_TOKENS_PER_DAY <= usage["total_tokens"] <= GAMMA_TOKENS_PER_DAY + 1, usage
    refused = httpx.post(
        guarded.url + "/v1/chat/completions",
        json={"model": "primary", "messages": body["messages"], "max_tokens": 4},
        headers=c,
        timeout=60,
    )
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 86401
    assert (
        "'gamma'" in refused.json()["error"]["message"] and "300 tokens per day" in refused.json()["error"]["message"]
    )

    # another tenant is served meanwhile
    other = httpx.post(
        guarded.url + "/generate", json={"text": "x", "max_new_tokens": 2}, headers={"X-API-Key": TEAM_A}, timeout=120
    )
    assert other.status_code == 200
    # the ledger bills what the stream reported, and says a budget ended it
    rows = httpx.get(
        guarded.management_url + "/usage",
        params={"tenant": "gamma", "group_by": "tenant"},
        headers={"X-API-Key": ADMIN},
    ).json()["data"]
    assert len(rows) == 1 and rows[0]["budget"] == 1
    assert rows[0]["prompt_tokens"] + rows[0]["output_tokens"] == usage["total_tokens"]

    # a burst of the tenant's requests at once (leases the server asks in one turn of its
    # loop share one Redis round trip): every one is refused, none half-served
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=guarded.url, headers=c, timeout=60) as client:
            short = {"model": "primary", "messages": body["messages"], "max_tokens": 4}
            return list(await asyncio.gather(*(client.post("/v1/chat/completions", json=short) for _ in range(6))))

    assert [r.status_code for r in asyncio.run(burst())] == [429] * 6


def test_deleting_a_reader_ends_its_stream_with_an_error_event(guarded):
    admin = {"X-API-Key": ADMIN}
    r = httpx.post(
        guarded.management_url + "/reader",
        headers=admin,
        timeout=60,
        json={
            "id": "slow-0",
            "consumer_group": "slow",
            "kind": "scripted",
            "model": "scripted",
            "scripted": {"token_delay": 0.05, "eos_after": 100000},
        },
    )
    assert r.status_code == 201, r.text
    events: list[tuple[str, str]] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            guarded.url + "/generate_stream",
            headers={"X-API-Key": KEY},
            timeout=120,
            json={"text": "x", "consumer_group": "slow", "max_new_tokens": 2000},
        ) as resp:
            text = ""
            for chunk in resp.iter_text():
                started.set()
                text += chunk
            events.extend(sse_events(text))

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(30)
    r = httpx.delete(guarded.management_url + "/reader/slow-0?drain_seconds=0", headers=admin, timeout=60)
    assert r.status_code == 200
    t.join(30)
    assert not t.is_alive(), "the stream must end, not wait for ever"
    assert events[-1][0] == "error" and "removed" in json.loads(events[-1][1])["detail"]


def test_a_rotated_keys_file_takes_effect(guarded, keys_file):
    body = {"text": "x", "max_new_tokens": 1}
    assert httpx.post(guarded.url + "/generate", json=body, headers={"X-API-Key": TEAM_B}).status_code == 200
    keys_file.write_text(keys_yaml("team-a"))  # team-b revoked
    time.sleep(1.5)
    assert httpx.post(guarded.url + "/generate", json=body, headers={"X-API-Key": TEAM_B}).status_code == 401
    assert (
        httpx.post(guarded.url + "/generate", json=body, headers={"X-API-Key": TEAM_A}, timeout=120).status_code == 200
    )


def test_a_reader_without_the_no_repeat_processor_says_so(guarded):
    r = httpx.post(
        guarded.url + "/generate",
        headers={"X-API-Key": KEY},
        json={"text": "hi", "max_new_tokens": 4, "no_repeat_ngram_size": 2},
    )
    assert r.status_code == 422 and r.json()["field"] == "no_repeat_ngram_size"


def test_overload_gives_only_200_and_429(guarded):
    headers = {"X-API-Key": KEY}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=guarded.url, timeout=300, headers=headers) as client:
            return await asyncio.gather(
                *(client.post("/generate", json={"text": f"Fact {i}:", "max_new_tokens": 16}) for i in range(32))
            )

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= 8
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["type"] == "rate_limit_error"


def test_sigterm_lets_eight_streams_complete(guarded):
    """(The guarded gateway serves its probes on a port of their own, answered by a child process.)"""
    headers = {"X-API-Key": KEY}
    results: list[str] = []

    def stream(i: int) -> None:
        with httpx.stream(
            "POST",
            guarded.url + "/generate_stream",
            headers={**headers, "X-Request-Id": f"story-{i}"},
            timeout=300,
            json={"text": f"Story {i}:", "max_new_tokens": 48, "min_new_tokens": 48},
        ) as r:
            results.append(r.read().decode())

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while engine_requests(guarded.url, headers=headers) < 8:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the probe process's port answers as the API port does
    probe = f"http://127.0.0.1:{PROBE_PORT}"
    r = httpx.get(probe + "/readyz")
    assert r.status_code == 200 and r.json()["readers"]["primary-0"] == "ready"
    assert httpx.get(probe + "/healthz").json() == {"status": "ok"}
    # /status there too, as of the last snapshot (at most 100 ms old), behind the same keys
    r = httpx.get(probe + "/status")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    live = httpx.get(probe + "/status", headers=headers).json()["live_readers"]["primary-0"]
    assert live["state"] == "ready" and live["engine_requests"] >= 8 and live["requests_in_flight"] >= 8
    guarded.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # draining: not ready, no new work, but the eight go on
    assert httpx.get(guarded.url + "/readyz").status_code == 503
    assert httpx.get(probe + "/readyz").json()["status"] == "draining"
    r = httpx.post(guarded.url + "/generate", json={"text": "late"}, headers=headers)
    assert r.status_code == 503 and "shutting down" in r.json()["detail"]
    for t in threads:
        t.join()
    assert guarded.proc.wait(120) == 0
    assert len(results) == 8
    for text in results:
        events = sse_events(text)
        assert events[-1] == ("end", "[DONE]")
        assert len([e for e, _ in events if e == "message"]) > 10
    # the log: once serving, one JSON object per line, vLLM's included (native libraries
    # may print a raw line while the engine starts); each stream's access line carries its
    # request id; a clean stop logs no error, no traceback, no native-extension noise
    text = guarded.log_path.read_text()
    serving = text[text.rindex("\n", 0, text.index("Gateway ready")) + 1 :]
    lines = [json.loads(line) for line in serving.splitlines()]
    assert {line["logger"].split(".")[0] for line in lines} >= {"gateway", "vllm"}
    access = {line["request_id"]: line for line in lines if line["logger"] == "gateway.access"}
    for i in range(8):
        assert access[f"story-{i}"]["path"] == "/generate_stream" and access[f"story-{i}"]["status"] == 200
    ready = [line for line in lines if line["message"].startswith("Gateway ready")]
    assert len(ready) == 1
    stop = next(i for i, line in enumerate(lines) if "SIGTERM" in line["message"])
    assert not [line for line in lines[stop:] if line["level"] in ("error", "critical") or "exception" in line]


def test_engine_death_gives_errors_failed_readiness_and_a_non_zero_exit(artifacts):
    """A gateway of its own: its engine gets killed."""
    gw = start_gateway(artifacts / "gateway-death.log")
    try:
        core = subprocess.run(
            ["pgrep", "-P", str(gw.proc.pid), "-f", "VLLM::EngineCore"], capture_output=True, text=True
        ).stdout.split()
        assert len(core) == 1, core
        with httpx.stream(
            "POST",
            gw.url + "/generate_stream",
            timeout=120,
            json={"text": "Tell me a long story.", "max_new_tokens": 800, "min_new_tokens": 800},
        ) as r:
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    break
            os.kill(int(core[0]), signal.SIGKILL)
            rest = "\n".join(lines)
        events = sse_events(rest)
        assert events[-1][0] == "error" and json.loads(events[-1][1])["type"] == "engine_dead"
        assert httpx.get(gw.url + "/readyz", timeout=5).status_code == 503
        assert gw.proc.wait(60) == 1
        assert "died; exiting so the supervisor restarts us" in gw.log_path.read_text()
    finally:
        gw.stop()
