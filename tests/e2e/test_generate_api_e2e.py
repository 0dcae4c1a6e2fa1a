"""generate-one / generate-batch and the /chat service through real HTTP against real vLLM."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid

import httpx
import openai
import pytest

from tests.conftest import SHARED_MAX_ENTRIES
from tests.e2e.test_responses_e2e import chatml_tail
from tests.servers import start_gateway

pytestmark = pytest.mark.e2e

GREEDY = {"do_sample": False, "num_beams": 1}


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def one(http, **body) -> httpx.Response:
    body.setdefault("stream_response", False)
    r = http.post("/api/generate-one", json=body)
    assert r.status_code == 200, r.text
    return r


def engine_requests(gateway) -> int:
    return httpx.get(gateway.url + "/status").json()["live_readers"]["primary-0"]["engine_requests"]


def test_seed_004_generate_one_payload_streams_plain_text(gateway):
    payload = {  # seed 004, verbatim
        "request_id": "YmFzZTY0",
        "prompt": "[INST] Generate a very long poem about 1000 cats [/INST]\n\n",
        "only_new_tokens": True,
        "stream_response": True,
        "generation_config": {
            "num_beams": 1,
            "do_sample": True,
            "temperature": 1,
            "top_p": 1,
            "top_k": 50,
            "max_new_tokens": 2048,
            "repetition_penalty": 1,
            "length_penalty": 1,
        },
    }
    received = []
    with gateway.client() as c, c.stream("POST", "/api/generate-one", json=payload) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        for chunk in r.iter_text():
            received.append(chunk)
            if len(received) >= 12:
                break  # a poem of 2048 tokens can take minutes on 2 cores; leave mid-way
    assert "".join(received).strip()
    deadline = time.monotonic() + 10
    while engine_requests(gateway):
        assert time.monotonic() < deadline, "the engine kept generating for a gone client"
        time.sleep(0.1)


def test_seed_004_generate_batch_payloads(http):
    payload = {  # seed 004, verbatim
        "prompts": [
            {"request_id": "YmFzZTY0", "prompt": "[INST] Generate a very long poem about 1000 cats [/INST]\n\n"},
            {"request_id": "rFERfgE", "prompt": "[INST] Generate a short poem about 1000 dogs [/INST]\n\n"},
        ],
        "only_new_tokens": False,
        "generation_config": {
            "num_beams": 1,
            "do_sample": True,
            "temperature": 1,
            "top_p": 1,
            "top_k": 50,
            "max_new_tokens": 100,
            "repetition_penalty": 1,
            "length_penalty": 1,
        },
    }
    r = http.post("/api/generate-batch", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["request_id"] for x in body] == ["YmFzZTY0", "rFERfgE"]
    assert [x["prompt"] for x in body] == [p["prompt"] for p in payload["prompts"]]
    assert all(x["response"].strip() for x in body)
    # the seed's only_new_tokens: true answer has no prompt; the same ids in the same
    # order continue where the first call stopped
    payload["only_new_tokens"] = True
    again = http.post("/api/generate-batch", json=payload).json()
    assert [set(x) for x in again] == [{"request_id", "response"}] * 2
    # a poem the model ended in the first call may add nothing; whatever came, the third call's
    # prompt is the seed's prompt, the first answer and the second, in that order
    payload["only_new_tokens"] = False
    third = http.post("/api/generate-batch", json=payload).json()
    for seed, first, second, now in zip(payload["prompts"], body, again, third, strict=True):
        assert now["prompt"].startswith(seed["prompt"] + first["response"]), now["prompt"]
        assert now["prompt"].endswith(second["response"]), now["prompt"]
        assert len(now["prompt"]) >= len(seed["prompt"] + first["response"] + second["response"])


def test_continuation_extends_the_cached_sequence(http):
    rid = uid("cont")
    prompt = "The three primary colours are"
    cfg = {**GREEDY, "max_new_tokens": 8}
    first = one(http, request_id=rid, prompt=prompt, generation_config=cfg).text
    second = one(http, request_id=rid, prompt="this prompt is ignored", generation_config=cfg).text
    # one uninterrupted greedy generation of 16 tokens is the two halves back to back
    whole = one(http, request_id=uid("whole"), prompt=prompt, generation_config={**GREEDY, "max_new_tokens": 16}).text
    assert first + second == whole
    full = one(http, request_id=rid, prompt="ignored again", only_new_tokens=False, generation_config=cfg).text
    assert full.startswith(prompt + first + second)
    assert "ignored" not in full


def test_streamed_continuation(gateway, http):
    rid = uid("scont")
    prompt = "A haiku about the sea:"
    cfg = {**GREEDY, "max_new_tokens": 6}
    with gateway.client() as c:
        first = c.post("/api/generate-one", json={"request_id": rid, "prompt": prompt, "generation_config": cfg}).text
        full = c.post(
            "/api/generate-one",
            json={"request_id": rid, "prompt": "", "only_new_tokens": False, "generation_config": cfg},
        ).text
    assert full.startswith(prompt + first) and len(full) > len(prompt + first)


def test_eviction_at_the_bound(http):
    # The shared gateway keeps SHARED_MAX_ENTRIES sequences; filling it evicts the oldest.
    rid = uid("evicted")
    cfg = {**GREEDY, "max_new_tokens": 4}
    one(http, request_id=rid, prompt="Apples are", generation_config=cfg)
    filler = [{"request_id": uid("fill"), "prompt": f"Number {i} is"} for i in range(SHARED_MAX_ENTRIES)]
    r = http.post("/api/generate-batch", json={"prompts": filler, "generation_config": {**GREEDY, "max_new_tokens": 1}})
    assert r.status_code == 200 and len(r.json()) == SHARED_MAX_ENTRIES
    # the id is gone: its new prompt is used, there is nothing to continue
    again = one(http, request_id=rid, prompt="Pears are", only_new_tokens=False, generation_config=cfg).text
    assert again.startswith("Pears are")
    assert not again.startswith("Apples")


def test_beam_search_returns_the_top_beam(http, tokenizer):
    prompt = "The best thing about Paris is"
    width, steps = 3, 6
    beam = one(
        http,
        request_id=uid("beam"),
        prompt=prompt,
        generation_config={"num_beams": width, "max_new_tokens": steps, "do_sample": False},
    ).text
    greedy = one(
        http, request_id=uid("greedy"), prompt=prompt, generation_config={**GREEDY, "max_new_tokens": steps}
    ).text
    assert beam != greedy  # precondition: beams matter for this prompt

    # A reference beam search over the same engine, one scored step at a time through
    # the completions API (token ids made exact with return_tokens_as_token_ids).
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer.encode(prompt)

    def top_next(ids):
        r = http.post(
            "/v1/completions",
            json={
                "prompt": ids,
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": 2 * width,
                "return_tokens_as_token_ids": True,
            },
        )
        top = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
        return [(int(k.removeprefix("token_id:")), v) for k, v in top.items()]

    beams, done = [(prompt_ids, 0.0)], []
    for _ in range(steps):
        candidates = []
        for ids, cum in beams:
            for tid, lp in top_next(ids):
                (done if tid == eos else candidates).append(([*ids, tid], cum + lp))
        beams = sorted(candidates, key=lambda b: -b[1])[:width]
    done += beams

    def score(b):
        n = len(b[0]) - (1 if b[0][-1] == eos else 0)
        return b[1] / n

    best_ids = max(done, key=score)[0][len(prompt_ids) :]
    assert beam == tokenizer.decode([t for t in best_ids if t != eos])


def test_bad_input_is_400_and_the_server_keeps_serving(http):
    for body, field in (
        ({"request_id": 7, "prompt": "x"}, "request_id"),
        ({"request_id": "", "prompt": "x"}, "request_id"),
        ({"request_id": "x" * 1000, "prompt": "x"}, "request_id"),
        (
            {"request_id": uid("n"), "prompt": "x", "generation_config": {"num_beams": 99}},
            "generation_config.num_beams",
        ),
        ({"request_id": uid("empty"), "prompt": ""}, "prompt"),
    ):
        r = http.post("/api/generate-one", json=body)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    r = http.post("/api/generate-batch", json={"prompts": [{"request_id": "d", "prompt": "a"}] * 2})
    assert r.status_code == 400 and r.json()["field"] == "prompts[1].request_id"
    assert one(http, request_id=uid("ok"), prompt="ok", generation_config={"max_new_tokens": 2}).text is not None


def test_seed_003_service(gateway, http):
    status = http.get("/chat").json()
    assert status["status"] == "running" and status["model_name"] == "smollm2-135m-instruct"
    assert status["device"] == "cpu" and status["llm_serving_url"] == gateway.url
    # the seed's own example: the openai SDK pointed at the root, streaming
    client = openai.OpenAI(api_key="OPENAI_API_KEY", base_url=gateway.url + "/", max_retries=0)
    stream = client.chat.completions.create(
        messages=[{"role": "user", "content": "tell me about Microsoft"}], model="gpt-4o", stream=True, max_tokens=24
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip()
    # the seed's request bodies: a message without a role, a foreign model name
    r = http.post(
        "/chat/completions",
        json={
            "model": "bigscience/bloomz-1b1",
            "messages": [{"content": "Translate to English: Je t’aime."}],
            "max_tokens": 16,
            "temperature": 0.1,
            "stream": False,
        },
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "bigscience/bloomz-1b1" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["message"]["content"]


def test_redis_continuation_across_two_gateways(artifacts, redis_server, tokenizer):
    """Two gateway processes of their own (two replicas sharing one redis-server): what
    one generated, the other continues, for the same key only (generate-one and stored
    Responses alike)."""
    env = {
        "GATEWAY_CONTINUATION__BACKEND": "redis",
        "GATEWAY_CONTINUATION__REDIS_URL": redis_server,
        "GATEWAY_CONTINUATION__SECRET": "shared-by-both-replicas",
        "GATEWAY_API_KEYS": json.dumps(["sk-owner-0123456789", "sk-other-0123456789"]),
    }
    a = start_gateway(artifacts / "gateway-redis-a.log", env=env, wait=False)
    b = start_gateway(artifacts / "gateway-redis-b.log", env=env, wait=False)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda g: g.wait_ready(), (a, b)))
        rid = uid("replica")
        prompt = "The three primary colours are"
        cfg = {**GREEDY, "max_new_tokens": 8}
        owner, other = {"X-API-Key": "sk-owner-0123456789"}, {"X-API-Key": "sk-other-0123456789"}
        with a.client(headers=owner) as ca, b.client(headers=owner) as cb, b.client(headers=other) as intruder:
            first = one(ca, request_id=rid, prompt=prompt, generation_config=cfg).text
            full = one(cb, request_id=rid, prompt="ignored", only_new_tokens=False, generation_config=cfg).text
            assert full.startswith(prompt + first) and len(full) > len(prompt + first)
            # and back again: replica a continues what b added
            more = one(ca, request_id=rid, prompt="", only_new_tokens=False, generation_config=cfg).text
            assert more.startswith(full) and len(more) > len(full)
            # another key with the same request_id, on either replica, sees none of it
            theirs = one(intruder, request_id=rid, prompt="Hello", only_new_tokens=False, generation_config=cfg).text
            assert theirs.startswith("Hello") and prompt not in theirs
            # a stored response continues on the other replica from its exact tokens
            turn = {"model": "primary", "temperature": 0}
            first = ca.post("/v1/responses", json={**turn, "input": "Say hi.", "max_output_tokens": 8}).json()
            second = cb.post(
                "/v1/responses",
                json={**turn, "input": "Again.", "previous_response_id": first["id"], "max_output_tokens": 4},
            )
            assert second.status_code == 200, second.text
            tail = tokenizer.encode(chatml_tail(first["status"], "Again."), add_special_tokens=False)
            assert second.json()["usage"]["input_tokens"] == first["usage"]["total_tokens"] + len(tail)
            assert ca.get(f"/v1/responses/{second.json()['id']}").json()["output"] == second.json()["output"]
            # another key: indistinguishable from a missing id
            assert intruder.get(f"/v1/responses/{first['id']}").status_code == 404
            stolen = intruder.post("/v1/responses", json={**turn, "input": "x", "previous_response_id": first["id"]})
            assert stolen.status_code == 404 and stolen.json()["error"]["param"] == "previous_response_id"
    finally:
        a.stop()
        b.stop()
