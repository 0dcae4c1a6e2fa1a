"""The abuse suite: the gateway, started as an operator starts it, played against as an
attacker or a tired operator would. Each test says what the client and the bystanders see.

Gateways of their own on the scripted engine (instant start; the findings are about the
HTTP side), a real Redis where the store is the subject. The real engine's share (prefix
cache per tenant, sampled tool calls) is in tests/e2e/test_safety_e2e.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.servers import GatewayProcess, start_gateway
from tests.unit.conftest import clear_of_window_edge

ALICE = "sk-alice-0123456789abcdef"
BOB = "sk-bob-0123456789abcdef00"
OPS = "sk-ops-0123456789abcdef00"
SLOW = [{"id": "primary-0", "kind": "scripted", "model": "scripted", "scripted": {"token_delay": 0.02}}]


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def gateway(artifacts: Path, name: str, env: dict[str, str], wait: bool = True) -> GatewayProcess:
    readers = env.pop("READERS", None)
    full = {"GATEWAY_READERS": json.dumps(readers or SLOW), **env}
    return start_gateway(artifacts / f"abuse-{name}.log", "configs/scripted.yaml", full, wait=wait)


def exits(artifacts: Path, name: str, env: dict[str, str]) -> tuple[int, str]:
    """Start a gateway that must refuse to start: its exit code and its log."""
    gw = gateway(artifacts, name, env, wait=False)
    try:
        code = gw.proc.wait(60)
    finally:
        gw.stop()
    return code, gw.log_path.read_text(errors="replace")


def one(gw: GatewayProcess, key: str, request_id: str, prompt: str, **extra: Any) -> httpx.Response:
    body = {"request_id": request_id, "prompt": prompt, "stream_response": False, "only_new_tokens": False}
    body["generation_config"] = {"max_new_tokens": 4}
    body.update(extra)
    return httpx.post(gw.url + "/api/generate-one", json=body, headers=h(key), timeout=30)


# ---------------------------------------------------------------------------- keys files

BROKEN = {
    "a tab": "keys:\n\t- name: team-a\n    key: sk-team-a-0123456789\n",
    "an unquoted @": "keys:\n  - name: team-a\n    key: @team-a-2026-0123456789\n",
    "a list": "- sk-team-a-0123456789\n- sk-team-b-0123456789\n",
    "an empty file": "",
    "a half-written file": "keys:\n  - name: team-a\n    key: sk-team-a-01234",
    "a misspelt limit": "keys:\n  - name: team-a\n    key: sk-team-a-0123456789\n    tokens_per_minte: 5\n",
    "a duplicate name": "keys:\n  - {name: a, key: sk-team-a-0123456789}\n  - {name: a, key: sk-team-b-0123456789}\n",
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_a_broken_keys_file_refuses_to_start(artifacts, tmp_path, what):
    """Client: nothing listens. Operator: exit code 2 and one line naming the file (and the
    line where it can be told)."""
    path = tmp_path / "keys.yaml"
    path.write_text(BROKEN[what])
    code, log = exits(artifacts, "broken-start", {"GATEWAY_API_KEYS_FILE": str(path), "GATEWAY_HOST": "127.0.0.1"})
    assert code == 2, log[-2000:]
    assert str(path) in log and "cannot start" in log, log[-2000:]
    if what not in ("a list", "an empty file"):
        assert "line " in log.split("cannot start", 1)[1].splitlines()[0], log[-2000:]


def test_a_keys_file_without_a_known_extension_is_not_guessed(artifacts, tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"{ALICE}\n")
    code, log = exits(artifacts, "no-format", {"GATEWAY_API_KEYS_FILE": str(path)})
    assert code == 2 and "api_keys_file_format" in log
    gw = gateway(
        artifacts, "explicit-format", {"GATEWAY_API_KEYS_FILE": str(path), "GATEWAY_API_KEYS_FILE_FORMAT": "lines"}
    )
    try:
        assert httpx.get(gw.url + "/v1/models", headers=h(ALICE)).status_code == 200
    finally:
        gw.stop()


@pytest.mark.parametrize("keys", ['[""]', '["   "]', '["short-key"]'])
def test_an_empty_or_short_key_is_a_settings_error(artifacts, keys):
    """A template with an unset variable must never turn authentication off."""
    code, log = exits(artifacts, "empty-key", {"GATEWAY_API_KEYS": keys, "GATEWAY_HOST": "0.0.0.0"})
    assert code != 0 and "api_keys" in log and "Uvicorn running" not in log, log[-2000:]


def test_a_broken_reload_keeps_the_previous_keys(artifacts, tmp_path):
    """Operator: an ERROR line and gateway_keys_file_errors for every broken version.
    Clients: the keys that worked keep working; the broken file's keys never do."""
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"name": "alice", "key": ALICE}]}))
    gw = gateway(artifacts, "reload", {"GATEWAY_API_KEYS_FILE": str(path), "GATEWAY_ADMIN_API_KEYS": json.dumps([OPS])})
    try:
        for what, text in BROKEN.items():
            path.write_text(text)
            time.sleep(1.2)  # the file is checked at most once a second
            assert httpx.get(gw.url + "/v1/models", headers=h(ALICE)).status_code == 200, what
            for smuggled in ("keys:", "- name: team-a", "sk-team-a-0123456789"):
                assert httpx.get(gw.url + "/v1/models", headers=h(smuggled)).status_code == 401, (what, smuggled)
        log = gw.log_path.read_text()
        assert log.count("could not be used; the previous keys stay in force") >= len(BROKEN) - 1
        metrics = httpx.get(gw.management_url + "/metrics", headers=h(OPS)).text
        errors = next(line for line in metrics.splitlines() if line.startswith("gateway_keys_file_errors_total"))
        assert float(errors.split()[-1]) >= len(BROKEN) - 1
        # a good file takes effect again
        path.write_text(yaml.safe_dump({"keys": [{"name": "bob", "key": BOB}]}))
        time.sleep(1.2)
        assert httpx.get(gw.url + "/v1/models", headers=h(BOB)).status_code == 200
        assert httpx.get(gw.url + "/v1/models", headers=h(ALICE)).status_code == 401
    finally:
        gw.stop()


# ---------------------------------------------------------------------------- tenants


def test_removing_or_reordering_keys_never_moves_data_between_tenants(artifacts, tmp_path):
    """The finding: with tenants by position, removing alice's line gave her data to bob."""
    path = tmp_path / "keys.txt"
    path.write_text(f"{ALICE}\n{BOB}\n")
    gw = gateway(artifacts, "rotation", {"GATEWAY_API_KEYS_FILE": str(path)})
    try:
        stored = one(gw, ALICE, "chat-1", "ALICE PRIVATE: account 4711")
        assert stored.status_code == 200 and stored.text.startswith("ALICE PRIVATE")
        path.write_text(f"{BOB}\n")  # the operator removes alice's line
        time.sleep(1.2)
        bob = one(gw, BOB, "chat-1", "bob here")
        assert bob.status_code == 200 and "ALICE" not in bob.text and bob.text.startswith("bob here")
        path.write_text(f"{BOB}\n{ALICE}\n")  # alice is back, in another position
        time.sleep(1.2)
        again = one(gw, ALICE, "chat-1", "")
        assert again.status_code == 200 and again.text.startswith("ALICE PRIVATE") and "bob" not in again.text
    finally:
        gw.stop()


def test_a_replacement_key_keeps_its_tenant_only_when_the_file_says_so(artifacts, tmp_path):
    path = tmp_path / "keys.yaml"
    new_alice = "sk-alice-new-0123456789abc"
    path.write_text(yaml.safe_dump({"keys": [{"name": "alice", "key": ALICE, "tenant": "team-alice"}]}))
    gw = gateway(artifacts, "tenant", {"GATEWAY_API_KEYS_FILE": str(path)})
    try:
        assert one(gw, ALICE, "plan", "ALICE PLAN").text.startswith("ALICE PLAN")
        path.write_text(yaml.safe_dump({"keys": [{"name": "alice", "key": new_alice, "tenant": "team-alice"}]}))
        time.sleep(1.2)
        assert one(gw, new_alice, "plan", "").text.startswith("ALICE PLAN")  # same tenant: her data
        path.write_text(yaml.safe_dump({"keys": [{"name": "alice", "key": new_alice}]}))
        time.sleep(1.2)
        fresh = one(gw, new_alice, "plan", "")  # no tenant named: the key's own, which has nothing
        assert fresh.status_code == 400 and "ALICE" not in fresh.text
    finally:
        gw.stop()


def test_a_reload_during_requests_keeps_the_in_flight_count(artifacts, tmp_path):
    """In-flight counts belong to the key, not to the file's version: a reload during two
    running requests still stops a third, and frees both slots when they end."""
    path = tmp_path / "keys.yaml"
    entry = {"name": "alice", "key": ALICE, "max_in_flight": 2}
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    gw = gateway(artifacts, "inflight", {"GATEWAY_API_KEYS_FILE": str(path)})
    body = {"text": "x", "max_new_tokens": 200, "min_new_tokens": 200}  # 4 s each
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = [
                pool.submit(httpx.post, gw.url + "/generate", json=body, headers=h(ALICE), timeout=30) for _ in range(2)
            ]
            time.sleep(0.3)
            path.write_text(yaml.safe_dump({"keys": [entry, {"name": "bob", "key": BOB}]}))
            time.sleep(1.2)  # reloaded while both run
            third = httpx.post(gw.url + "/generate", json={"text": "x", "max_new_tokens": 1}, headers=h(ALICE))
            assert third.status_code == 429
            assert all(f.result().status_code == 200 for f in running)
        for _ in range(3):  # both slots are free again: nothing leaked across the reload
            ok = httpx.post(gw.url + "/generate", json={"text": "x", "max_new_tokens": 1}, headers=h(ALICE))
            assert ok.status_code == 200
    finally:
        gw.stop()


def test_concurrent_requests_cannot_all_pass_an_empty_token_window(artifacts, tmp_path):
    """tokens_per_minute reserves at admission: 16 requests at once, each asking for 50
    new tokens against 120 a minute, do not all run (they did when counted at the end)."""
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"name": "alice", "key": ALICE, "tokens_per_minute": 120}]}))
    gw = gateway(artifacts, "tpm", {"GATEWAY_API_KEYS_FILE": str(path)})
    body = {"text": "x", "max_new_tokens": 50, "min_new_tokens": 50}
    clear_of_window_edge("minute", 30)
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda _: httpx.post(gw.url + "/generate", json=body, headers=h(ALICE), timeout=30), range(16))
            )
        served = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 429]
        assert len(served) + len(refused) == 16 and 1 <= len(served) <= 3, [a.status_code for a in answers]
        assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
    finally:
        gw.stop()


# ---------------------------------------------------------------------------- sockets


def _trickle(port: int, n: int, stop: threading.Event) -> list[socket.socket]:
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]

    def run() -> None:
        while not stop.is_set():
            for s in held:
                try:
                    s.send(b"G")
                except OSError:
                    pass
            time.sleep(0.5)

    threading.Thread(target=run, daemon=True).start()
    return held


def test_idle_and_trickling_connections_hold_no_listener(artifacts):
    """64 idle and 8 trickling connections on every listener: each listener (and the
    probe port) still answers the bystander's request."""
    probe = int(os.environ.get("ABUSE_PROBE_PORT", "0")) or _port()
    gw = gateway(artifacts, "sockets", {"GATEWAY_PROBE_PORT": str(probe)})
    stop = threading.Event()
    held: list[socket.socket] = []
    try:
        for port in (gw.port, gw.management_port, gw.openai_port, probe):
            held += [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
            held += _trickle(port, 8, stop)
        time.sleep(0.5)
        assert httpx.post(gw.url + "/generate", json={"text": "x", "max_new_tokens": 2}, timeout=10).status_code == 200
        assert httpx.get(gw.management_url + "/reader_groups", timeout=10).status_code == 200
        assert httpx.get(gw.openai_url + "/v1/models", timeout=10).status_code == 200
        for _ in range(5):
            assert httpx.get(f"http://127.0.0.1:{probe}/readyz", timeout=5).status_code == 200
    finally:
        stop.set()
        for s in held:
            s.close()
        gw.stop()


def _port() -> int:
    from tests.servers import free_port

    return free_port()


def test_a_10_mb_chat_body_is_refused_before_it_is_read_and_streams_go_on(artifacts):
    """Client: a 413 at once, naming the limit. Bystander: its stream runs to the end."""
    gw = gateway(artifacts, "big-body", {})
    try:
        with httpx.stream(
            "POST",
            gw.url + "/generate_stream",
            json={"text": "x", "max_new_tokens": 80, "min_new_tokens": 80},
            timeout=30,
        ) as stream:
            big = {"model": "primary", "messages": [{"role": "user", "content": "y" * 10_000_000}]}
            r = httpx.post(gw.url + "/v1/chat/completions", json=big, timeout=30)
            assert r.status_code == 413 and "larger than 262144 bytes" in r.json()["error"]["message"]
            events = sum(1 for line in stream.iter_lines() if line.startswith("data:"))
        assert events >= 80
    finally:
        gw.stop()


def test_long_required_tool_streams_finish_beside_a_bystander(artifacts):
    """A 24k-character argument streamed under tool_choice required: the client gets the
    whole argument, a stream beside it runs at the same time. (CPU per token against the
    argument's length is measured in benchmarks/abuse.py.)"""
    readers = [{"id": "primary-0", "kind": "scripted", "model": "scripted", "scripted": {"max_model_len": 65536}}]
    gw = gateway(artifacts, "tools", {"READERS": readers})
    tool = {
        "type": "function",
        "function": {
            "name": "save",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "minLength": 24_000}},
                "required": ["text"],
            },
        },
    }
    body = {
        "model": "primary",
        "messages": [{"role": "user", "content": "go"}],
        "tools": [tool],
        "tool_choice": "required",
        "stream": True,
    }
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            calls = pool.submit(_tool_arguments, gw.url, body)
            bystander = pool.submit(
                httpx.post, gw.url + "/generate", json={"text": "x", "max_new_tokens": 8}, timeout=60
            )
            arguments = calls.result()
            assert bystander.result().status_code == 200
        assert len(json.loads(arguments)["text"]) == 24_000
    finally:
        gw.stop()


def _tool_arguments(url: str, body: dict[str, Any]) -> str:
    parts = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    for call in choice["delta"].get("tool_calls") or []:
                        parts.append(call["function"].get("arguments", ""))
    return "".join(parts)


# ---------------------------------------------------------------------------- Redis


@pytest.fixture
def redis_process(artifacts: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A Redis of this test's own (it is stopped and paused)."""
    import shutil

    import redis

    port = _port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    client.close()
    try:
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


@pytest.mark.parametrize("fault", ["paused", "stopped"])
def test_a_redis_that_hangs_or_is_gone_costs_a_request_half_a_second_at_most(artifacts, redis_process, fault):
    """New request_ids are served from their prompt (X-Continuation: unavailable), a
    continuation-only request is a 503 naming its field, and when Redis is back the
    conversations stored before are continued again."""
    proc, url = redis_process
    gw = gateway(
        artifacts, f"redis-{fault}", {"GATEWAY_CONTINUATION__BACKEND": "redis", "GATEWAY_CONTINUATION__REDIS_URL": url}
    )
    try:
        first = one(gw, "local", "kept", "STORED BEFORE")
        assert first.status_code == 200 and "x-continuation" not in first.headers
        if fault == "paused":
            os.kill(proc.pid, signal.SIGSTOP)
        else:
            proc.terminate()
            proc.wait(10)
        t0 = time.monotonic()
        for i in range(6):  # past the breaker's threshold: later ones do not wait at all
            new = one(gw, "local", f"new-{i}", "fresh prompt")
            assert new.status_code == 200 and new.headers["x-continuation"] == "unavailable"
            assert new.text.startswith("fresh prompt")
        assert time.monotonic() - t0 < 6 * 0.5 + 5  # bounded: never the old 5 s per request
        cont = one(gw, "local", "kept", "")
        assert cont.status_code == 503 and cont.json()["field"] == "prompt" and "retry-after" in cont.headers
        status = httpx.get(gw.url + "/status").json()["continuation_store"]
        assert status["up"] is False or status["circuit"] == "open"
        if fault == "paused":
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(5.5)  # the circuit's pause
            back = one(gw, "local", "kept", "")
            assert back.status_code == 200 and back.text.startswith("STORED BEFORE")
    finally:
        gw.stop()


def test_a_batch_outlives_a_paused_redis_and_live_requests_are_served_meanwhile(artifacts, redis_process, tmp_path):
    """Redis (the batch store) hangs for a few seconds mid-batch. Bystanders: a live request
    is answered meanwhile, as fast as ever; the batch resumes when Redis answers again and
    ends completed with one output line per custom_id, none failed."""
    import openai

    proc, url = redis_process
    gw = gateway(
        artifacts,
        "batch-redis-paused",
        {
            "GATEWAY_CONTINUATION__BACKEND": "redis",
            "GATEWAY_CONTINUATION__REDIS_URL": url,
            "GATEWAY_BATCHES__ENABLED": "true",
            "GATEWAY_BATCHES__DIRECTORY": str(tmp_path / "files"),
            "GATEWAY_BATCHES__POLL_SECONDS": "0.1",
            "GATEWAY_BATCHES__LINES_PER_READER": "4",
            "GATEWAY_BATCHES__IDLE_LINES_PER_READER": "4",
        },
    )
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=30)
        lines: list[dict[str, Any]] = [
            {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "primary", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 10}}
            for i in range(40)
        ]  # fmt: skip
        data = "".join(json.dumps(x) + "\n" for x in lines).encode()
        f = client.files.create(file=("a.jsonl", data), purpose="batch")
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while (counts := client.batches.retrieve(batch.id).request_counts) is None or counts.completed < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            time.sleep(1)
            t0 = time.monotonic()
            body = {"model": "primary", "messages": [{"role": "user", "content": "live"}], "max_tokens": 8}
            live = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)
            took = time.monotonic() - t0
            assert live.status_code == 200 and live.json()["usage"]["completion_tokens"] >= 1, live.text
            assert took < 2, took  # 8 tokens of 20 ms: no wait on the hung store
            time.sleep(3)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 90
        while (done := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, done
            time.sleep(0.2)
        assert done.status == "completed" and done.request_counts is not None, done
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (40, 40, 0)
        assert done.output_file_id is not None
        out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
        assert all(x["response"]["status_code"] == 200 for x in out)
    finally:
        gw.stop()
