"""Readers and consumer groups, the management API, tokenizer routes and LoRA routing,
on scripted readers."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from gateway.settings import ReaderSettings


def scripted(rid, group, **extra):
    return ReaderSettings(id=rid, consumer_group=group, kind="scripted", model=f"model-{rid}", scripted=extra)


@pytest.fixture
def client(client_factory):
    readers = [
        scripted("a-0", "alpha", reply=" from alpha"),
        scripted("b-0", "beta", reply=" from beta", lora_adapters=["shouty"]),
    ]
    with client_factory(readers=readers, reader_defaults={"kind": "scripted"}, model_roots=["/tmp"]) as c:
        yield c


def gen(client, group, **body):
    r = client.post("/generate", json={"text": "x", "consumer_group": group, **body})
    assert r.status_code == 200, r.text
    return r.json()["text"]


def test_requests_are_routed_by_group(client):
    assert gen(client, "alpha") == " from alpha"
    assert gen(client, "beta") == " from beta"


def test_openai_model_names_a_group_or_a_model(client):
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client, max_retries=0)
    msg = [{"role": "user", "content": "x"}]
    assert sdk.chat.completions.create(model="beta", messages=msg).choices[0].message.content == " from beta"
    assert sdk.chat.completions.create(model="model-a-0", messages=msg).choices[0].message.content == " from alpha"
    # a LoRA adapter named as the model
    assert sdk.chat.completions.create(model="shouty", messages=msg).choices[0].message.content == " FROM BETA"
    ids = {m.id for m in sdk.models.list().data}
    assert {"alpha", "beta", "model-a-0", "model-b-0", "shouty"} <= ids


def test_lora_id_picks_the_adapter_and_unknown_is_404(client):
    assert gen(client, "beta", lora_id="shouty") == " FROM BETA"
    r = client.post("/generate", json={"text": "x", "consumer_group": "beta", "lora_id": "nope"})
    assert r.status_code == 404 and r.json()["field"] == "lora_id" and "shouty" in r.json()["detail"]
    r = client.post("/generate", json={"text": "x", "consumer_group": "alpha", "lora_id": "shouty"})
    assert r.status_code == 404


def test_least_busy_reader_of_a_group_serves(client_factory):
    readers = [scripted("g-0", "g", token_delay=0.05), scripted("g-1", "g", token_delay=0.05)]
    with client_factory(readers=readers) as c:
        seen = []

        def run():
            c.post("/generate", json={"text": "x", "consumer_group": "g", "max_new_tokens": 20})

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        status = c.get("/status").json()["live_readers"]
        seen = [status["g-0"]["requests_in_flight"], status["g-1"]["requests_in_flight"]]
        for t in threads:
            t.join()
        assert seen == [2, 2]


def test_reader_groups_config_and_status(client):
    groups = client.management.get("/reader_groups").json()
    assert set(groups) == {"alpha", "beta"}
    assert groups["alpha"][0]["reader_id"] == "a-0" and groups["alpha"][0]["state"] == "ready"
    config = client.management.get("/config/b-0").json()
    assert config["reader_id"] == "b-0" and config["consumer_group"] == "beta" and config["kind"] == "scripted"
    assert client.management.get("/config/nope").status_code == 404
    assert set(client.management.get("/status").json()["live_readers"]) == {"a-0", "b-0"}


def test_create_and_delete_a_reader_at_run_time(client):
    # the Takeoff client's ReaderConfig fields
    r = client.management.post("/reader", json={"model_name": "late-model", "device": "cpu", "consumer_group": "gamma"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["reader_id"] == "gamma-0" and created["state"] == "ready" and created["consumer_group"] == "gamma"
    assert gen(client, "gamma")
    assert client.management.post("/reader", json={"id": "gamma-0", "model": "m"}).status_code == 409
    r = client.management.delete("/reader/gamma-0")
    assert r.status_code == 200 and r.json() == {"reader_id": "gamma-0", "deleted": True}
    r = client.post("/generate", json={"text": "x", "consumer_group": "gamma"})
    assert r.status_code == 404
    assert client.management.delete("/reader/gamma-0").status_code == 404


def test_delete_drains_in_flight_requests(client_factory):
    readers = [scripted("slow-0", "slow", token_delay=0.02)]
    with client_factory(readers=readers) as c:
        result = {}

        def run():
            result["r"] = c.post("/generate", json={"text": "x", "consumer_group": "slow", "max_new_tokens": 30})

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.1)
        assert c.management.delete("/reader/slow-0").status_code == 200
        t.join()
        assert result["r"].status_code == 200 and len(result["r"].json()["text"]) == 30


def test_a_failing_reader_is_reported_and_the_others_serve(client):
    r = client.management.post(
        "/reader", json={"id": "broken-0", "consumer_group": "broken", "kind": "vllm", "model": "/tmp/no/such/model"}
    )
    assert r.status_code == 422
    assert "broken-0 failed to load" in r.json()["detail"]
    status = client.get("/status").json()["live_readers"]["broken-0"]
    assert status["state"] == "failed" and status["error"]
    assert client.get("/readyz").status_code == 200  # a run-time reader does not take readiness away
    assert gen(client, "alpha") == " from alpha"
    assert client.management.delete("/reader/broken-0").status_code == 200


def test_create_reader_bad_input(client):
    for body, field in (
        ({"device": "cpu"}, "model_name"),
        ({"model_name": "m", "device": "tpu"}, "device"),
        ({"model_name": "m", "unknown": 1}, "unknown"),
    ):
        r = client.management.post("/reader", json=body)
        assert r.status_code == 400 and r.json()["field"] == field, r.text


def test_tokenize_detokenize_chat_template(client):
    r = client.post("/tokenize/a-0", json={"text": "hi!"}).json()
    assert r == {"tokens": ["h", "i", "!"], "token_ids": [104, 105, 33], "tokens_count": 3}
    assert client.post("/detokenize/a-0", json={"tokens": [104, 105]}).json() == {"text": "hi"}
    assert client.post("/detokenize/a-0", json={"tokens": ["h", "i"]}).json() == {"text": "hi"}
    r = client.post(
        "/chat_template/a-0", json={"inputs": [[{"role": "user", "content": "yo"}]], "add_generation_prompt": True}
    )
    assert r.json() == {"messages": ["<|user|>yo\n<|assistant|>"]}
    assert client.post("/tokenize/nope", json={"text": "x"}).status_code == 404
    r = client.post("/detokenize/a-0", json={"tokens": [99999]})
    assert r.status_code == 400 and r.json()["field"] == "tokens"
    r = client.post("/detokenize/a-0", json={"tokens": ["not-a-token"]})
    assert r.status_code == 400 and r.json()["field"] == "tokens"
