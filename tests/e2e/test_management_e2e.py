"""Readers and consumer groups on the real engine: routing, readers added and removed at run
time (with LoRA adapters), a failing reader, and the tokenizer routes."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.models import make_lora_adapter

pytestmark = pytest.mark.e2e


def test_two_readers_two_groups_routed_by_group_and_model(gateway, http):
    groups = httpx.get(gateway.management_url + "/reader_groups").json()
    assert {r["reader_id"] for r in groups["primary"]} == {"primary-0"}
    assert {r["reader_id"] for r in groups["embed"]} == {"embed-0"}
    sdk = openai.OpenAI(base_url=gateway.openai_url + "/v1", api_key="x", max_retries=0)
    msg = [{"role": "user", "content": "Say hi."}]
    by_group = sdk.chat.completions.create(model="primary", messages=msg, max_tokens=8, temperature=0)
    by_model = sdk.chat.completions.create(model="smollm2-135m-instruct", messages=msg, max_tokens=8, temperature=0)
    assert by_group.choices[0].message.content == by_model.choices[0].message.content
    assert len(sdk.embeddings.create(model="all-minilm-l6-v2", input="hi").data[0].embedding) == 384
    assert len(sdk.embeddings.create(model="embed", input="hi").data[0].embedding) == 384


def test_tokenizer_routes_equal_the_model_tokenizer(http, tokenizer):
    text = "Hello, world! Tokenizers split text into pieces."
    r = http.post("/tokenize/primary-0", json={"text": text}).json()
    ids = tokenizer.encode(text)
    assert r["token_ids"] == ids and r["tokens_count"] == len(ids)
    assert r["tokens"] == tokenizer.convert_ids_to_tokens(ids)
    assert http.post("/detokenize/primary-0", json={"tokens": ids}).json()["text"] == tokenizer.decode(ids)
    assert http.post("/detokenize/primary-0", json={"tokens": r["tokens"]}).json()["text"] == text
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    r = http.post("/chat_template/primary-0", json={"inputs": [messages], "add_generation_prompt": True}).json()
    assert r["messages"] == [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)]
    chat_ids = http.post("/tokenize/primary-0", json={"text": "Hi", "use_chat_template": True}).json()["token_ids"]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat_ids == tokenizer.encode(rendered, add_special_tokens=False)
    assert http.post("/tokenize/embed-0", json={"text": "x"}).status_code == 422


def test_a_failing_reader_is_reported_while_the_rest_serve(gateway, http):
    r = httpx.post(
        gateway.management_url + "/reader",
        json={"model_name": "/models/does-not-exist", "device": "cpu", "consumer_group": "ghost"},
        timeout=300,
    )
    assert r.status_code == 422 and "failed to load" in r.json()["detail"]
    reader_id = r.json()["detail"].split()[1]
    # the load error is for operators (the management port); inference keys see a pointer
    status = httpx.get(gateway.management_url + "/status").json()["live_readers"][reader_id]
    assert status["state"] == "failed" and "does-not-exist" in status["error"]
    public = httpx.get(gateway.url + "/status").json()["live_readers"][reader_id]
    assert public["state"] == "failed" and "does-not-exist" not in public["error"]
    assert http.get("/readyz").status_code == 200
    assert http.post("/generate", json={"text": "hi", "max_new_tokens": 2}).status_code == 200
    assert httpx.delete(gateway.management_url + f"/reader/{reader_id}").status_code == 200


def test_reader_with_lora_added_and_removed_while_another_group_serves(gateway, tokenizer, tmp_path):
    base = tokenizer.name_or_path
    adapter = make_lora_adapter(base, tmp_path / "lora-a")
    errors: list[str] = []
    served = [0]
    stop = threading.Event()

    def keep_serving():
        with gateway.client(timeout=120) as c:
            while not stop.is_set():
                r = c.post("/generate", json={"text": "Count: 1, 2,", "max_new_tokens": 4})
                if r.status_code != 200:
                    errors.append(r.text)
                served[0] += 1

    background = threading.Thread(target=keep_serving)
    background.start()
    try:
        r = httpx.post(
            gateway.management_url + "/reader",
            json={
                "model_name": "embedded:smollm2-135m-instruct",
                "device": "cpu",
                "consumer_group": "tuned",
                "lora_adapters": {"pirate": str(adapter)},
                "max_lora_rank": 8,
            },
            timeout=600,
        )
        assert r.status_code == 201, r.text
        reader = r.json()
        assert reader["state"] == "ready" and reader["consumer_group"] == "tuned"
        with gateway.client() as c:
            body = {"text": "The capital of France is", "consumer_group": "tuned", "max_new_tokens": 12}
            plain = c.post("/generate", json=body).json()["text"]
            tuned = c.post("/generate", json={**body, "lora_id": "pirate"}).json()["text"]
            assert plain != tuned  # the adapter changes the output
            assert plain == c.post("/generate", json={**body, "consumer_group": "primary"}).json()["text"]
            r = c.post("/generate", json={**body, "lora_id": "parrot"})
            assert r.status_code == 404 and "pirate" in r.json()["detail"]
        sdk = openai.OpenAI(base_url=gateway.openai_url + "/v1", api_key="x", max_retries=0)
        assert "pirate" in {m.id for m in sdk.models.list().data}
        via_model = sdk.completions.create(
            model="pirate", prompt="The capital of France is", max_tokens=12, temperature=0
        )
        assert via_model.choices[0].text == tuned
        r = httpx.delete(gateway.management_url + f"/reader/{reader['reader_id']}", timeout=120)
        assert r.status_code == 200
        assert httpx.post(gateway.url + "/generate", json={"text": "x", "consumer_group": "tuned"}).status_code == 404
        time.sleep(1)
    finally:
        stop.set()
        background.join()
    assert served[0] > 3 and not errors
