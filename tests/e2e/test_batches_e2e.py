"""OpenAI's Files and Batch APIs on the real engine, driven by the unmodified openai SDK.

A gateway of its own: batches enabled (its vLLM reader then schedules by priority), two
tenants' keys and a reader in-flight limit are things the shared gateway must not have."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.servers import GatewayProcess, start_gateway

pytestmark = pytest.mark.e2e

ALICE, BOB = "sk-e2e-batch-alice-0123456789", "sk-e2e-batch-bob-0123456789"
ADMIN = "sk-e2e-batch-ops-0123456789"
# the batch alone holds MAX_IN_FLIGHT - HEADROOM (6) sequences; beside live traffic, the
# reader's LINES_PER_READER sequences in all, live ones first
MAX_IN_FLIGHT, HEADROOM, LINES_PER_READER = 8, 2, 4


@pytest.fixture(scope="module")
def batching(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("batches")
    keys = folder / "keys.yaml"
    ops = {"name": "ops", "key": ADMIN, "permissions": ["admin"]}
    keys.write_text(json.dumps({"keys": [{"name": "alice", "key": ALICE}, {"name": "bob", "key": BOB}, ops]}))
    readers = [
        {"id": "primary-0", "model": "embedded:smollm2-135m-instruct", "dtype": "float32", "max_model_len": 2048,
         "enforce_eager": True, "cpu_kv_cache_gib": 1, "max_in_flight": MAX_IN_FLIGHT},
        {"id": "embed-0", "consumer_group": "embed", "kind": "sentence-transformers",
         "model": "embedded:all-minilm-l6-v2"},
    ]  # fmt: skip
    gw = start_gateway(
        artifacts / "gateway-batches.log",
        env={
            "GATEWAY_API_KEYS_FILE": str(keys),
            "GATEWAY_READERS": json.dumps(readers),
            "GATEWAY_BATCHES__ENABLED": "true",
            "GATEWAY_BATCHES__DIRECTORY": str(folder / "files"),
            "GATEWAY_BATCHES__LIVE_HEADROOM": str(HEADROOM),
            "GATEWAY_BATCHES__LINES_PER_READER": str(LINES_PER_READER),
            "GATEWAY_BATCHES__POLL_SECONDS": "0.1",
        },
    )
    try:
        yield gw
    finally:
        gw.stop()


def sdk(gw: GatewayProcess, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=300)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def run(client: openai.OpenAI, lines: list[dict[str, Any]], endpoint: str, timeout: float = 600) -> Any:
    f = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    return batch


def results(client: openai.OpenAI, batch: Any) -> dict[str, dict[str, Any]]:
    text = client.files.content(batch.output_file_id).text
    return {r["custom_id"]: r for r in map(json.loads, text.splitlines())}


def test_batch_lines_answer_as_the_online_endpoints(batching):
    client = sdk(batching)
    prompts = ["The capital of France is", "Three primary colours:", "A haiku about rain:", "def add(a, b):"]
    chat = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "primary", "messages": [{"role": "user", "content": p}], "max_tokens": 12,
                      "temperature": 0}} for i, p in enumerate(prompts)]  # fmt: skip
    completions = [{"custom_id": f"t{i}", "method": "POST", "url": "/v1/completions",
                    "body": {"model": "primary", "prompt": p, "max_tokens": 12, "temperature": 0}}
                   for i, p in enumerate(prompts)]  # fmt: skip
    embeddings = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": "embed", "input": p}} for i, p in enumerate(prompts)]  # fmt: skip
    for lines, endpoint in ((chat, "/v1/chat/completions"), (completions, "/v1/completions"),
                            (embeddings, "/v1/embeddings")):  # fmt: skip
        batch = run(client, lines, endpoint)
        assert batch.status == "completed" and batch.request_counts.completed == len(lines), batch
        assert batch.error_file_id is None
        got = results(client, batch)
        assert set(got) == {x["custom_id"] for x in lines}
        for line in lines:
            answer = got[line["custom_id"]]["response"]
            assert answer["status_code"] == 200 and answer["request_id"]
            online = httpx.post(batching.url + endpoint, json=line["body"], timeout=300,
                                headers={"Authorization": f"Bearer {ALICE}"}).json()  # fmt: skip
            if endpoint == "/v1/embeddings":
                a, b = answer["body"]["data"][0]["embedding"], online["data"][0]["embedding"]
                assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
            else:  # greedy: the same text, the same counts
                assert answer["body"]["choices"] == online["choices"]
                assert answer["body"]["usage"]["completion_tokens"] == online["usage"]["completion_tokens"]
    # another key's tenant sees none of it
    bob = sdk(batching, BOB)
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(batch.output_file_id)
    assert bob.batches.list().data == []


def test_live_streams_are_served_while_a_batch_of_hundreds_of_lines_runs(batching):
    client = sdk(batching)
    lines = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "primary", "prompt": f"Item {i}:", "max_tokens": 8}} for i in range(240)]  # fmt: skip
    f = client.files.create(file=("big.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch.id).request_counts.completed < 8:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # the reader's whole live limit, streaming, while the batch holds its share
    statuses: list[int] = []
    texts: list[str] = []
    batch_seen: list[int] = []

    def live(i: int) -> None:
        body = {"model": "primary", "messages": [{"role": "user", "content": f"Story {i}"}], "max_tokens": 24,
                "stream": True}  # fmt: skip
        for _ in range(3):
            with httpx.stream("POST", batching.url + "/v1/chat/completions", json=body, timeout=300,
                              headers={"Authorization": f"Bearer {ALICE}"}) as r:  # fmt: skip
                statuses.append(r.status_code)
                texts.append(r.read().decode())

    def watch() -> None:
        while any(t.is_alive() for t in threads):
            reader = httpx.get(batching.url + "/status", headers={"Authorization": f"Bearer {ALICE}"}).json()
            batch_seen.append(reader["live_readers"]["primary-0"]["batch_sequences"])
            time.sleep(0.05)

    threads = [threading.Thread(target=live, args=(i,)) for i in range(MAX_IN_FLIGHT)]
    for t in threads:
        t.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    for t in threads:
        t.join()
    watcher.join()
    assert statuses == [200] * (3 * MAX_IN_FLIGHT)  # never a 429 for batch work
    assert all(t.rstrip().endswith("data: [DONE]") for t in texts)
    # the batch within its idle share at most (beside the reader's whole live limit, its
    # share is none: lines started before the live streams are given back)
    assert max(batch_seen) <= MAX_IN_FLIGHT - HEADROOM
    done = client.batches.retrieve(batch.id)
    while done.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.5)
        done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts.completed == 240
    assert len(results(client, done)) == 240


def test_lines_holding_the_idle_share_give_their_room_back_when_a_live_stream_arrives(batching):
    # long lines fill the idle share; one live stream arrives: the lines beyond the share
    # beside it are stopped at once (not left to run their 256 tokens) and run again
    # later; every line is answered once and whole
    client = sdk(batching)
    idle = MAX_IN_FLIGHT - HEADROOM
    lines = [{"custom_id": f"long{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "primary", "prompt": f"Tale {i}:", "max_tokens": 256, "ignore_eos": True}}
             for i in range(idle)]  # fmt: skip
    f = client.files.create(file=("long.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    auth = {"Authorization": f"Bearer {ALICE}"}

    def reader() -> dict[str, Any]:
        return httpx.get(batching.url + "/status", headers=auth).json()["live_readers"]["primary-0"]

    deadline = time.monotonic() + 120
    while reader()["batch_sequences"] < idle:
        assert time.monotonic() < deadline, reader()
        time.sleep(0.05)
    texts: list[str] = []
    body = {"model": "primary", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 48,
            "ignore_eos": True, "stream": True}  # fmt: skip

    def live() -> None:
        with httpx.stream("POST", batching.url + "/v1/chat/completions", json=body, headers=auth, timeout=300) as r:
            texts.append(f"{r.status_code} " + r.read().decode())

    stream = threading.Thread(target=live)
    t0 = time.monotonic()
    stream.start()
    beside: list[int] = []
    while stream.is_alive():
        now = reader()
        if now["requests_in_flight"] > now["batch_sequences"]:  # the live stream runs
            beside.append(now["batch_sequences"])
        time.sleep(0.05)
    stream.join()
    took = time.monotonic() - t0
    assert texts[0].startswith("200 ") and texts[0].rstrip().endswith("data: [DONE]"), texts[0][-300:]
    # within the share beside one live stream (3 lines) long before 256-token lines could end
    assert beside and min(beside) <= LINES_PER_READER - 1, (beside, took)
    done = client.batches.retrieve(batch.id)
    while done.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.5)
        done = client.batches.retrieve(batch.id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", idle, 0)
    out = results(client, done)
    assert sorted(out) == sorted(x["custom_id"] for x in lines)
    assert {r["response"]["body"]["usage"]["completion_tokens"] for r in out.values()} == {256}  # run again whole
    metrics = httpx.get(batching.management_url + "/metrics", headers={"X-API-Key": ADMIN}).text
    returned = [x for x in metrics.splitlines() if x.startswith('gateway_batch_lines_returned_total{group="primary"}')]
    assert returned and float(returned[0].split()[-1]) >= idle - (LINES_PER_READER - 1) - 1, returned
