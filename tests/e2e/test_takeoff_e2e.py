"""The Takeoff generation API through real HTTP against real vLLM (embedded SmolLM2)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.sse import sse_events

pytestmark = pytest.mark.e2e

PROMPT = "List 3 things to do in London."


def generate(http: httpx.Client, **body):
    r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_buffered_generation(http, tokenizer):
    body = generate(http, text=PROMPT, max_new_tokens=16, return_metadata=True)
    assert isinstance(body["text"], str) and body["text"].strip()
    meta = body["metadata"]
    assert meta["prompt_tokens"] == len(tokenizer.encode(PROMPT))
    assert 1 <= meta["generated_tokens"] <= 16
    assert meta["finish_reason"] in ("stop", "length")


def test_greedy_is_deterministic(http):
    a = generate(http, text=PROMPT, max_new_tokens=24)["text"]
    b = generate(http, text=PROMPT, max_new_tokens=24)["text"]
    assert a == b


def test_stream_pieces_join_to_the_buffered_text(http):
    buffered = generate(http, text=PROMPT, max_new_tokens=24)["text"]
    with http.stream("POST", "/generate_stream", json={"text": PROMPT, "max_new_tokens": 24}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = sse_events(body)
    pieces = [d for e, d in events if e == "message"]
    assert len(pieces) > 3  # streamed piece by piece, not in one go
    assert "".join(pieces) == buffered
    assert events[-1] == ("end", "[DONE]")


def test_list_of_prompts_keeps_order(http):
    prompts = [PROMPT, "Write a haiku about rain.", "What is 2 + 2?"]
    batch = generate(http, text=prompts, max_new_tokens=12, return_metadata=True)
    assert isinstance(batch["text"], list) and len(batch["text"]) == 3
    singles = [generate(http, text=p, max_new_tokens=12)["text"] for p in prompts]
    assert batch["text"] == singles
    assert len(set(singles)) == 3
    assert [m["generated_tokens"] <= 12 for m in batch["metadata"]] == [True] * 3


def test_stream_of_a_list_tags_each_piece(http):
    prompts = [PROMPT, "What is 2 + 2?"]
    buffered = generate(http, text=prompts, max_new_tokens=10)["text"]
    r = http.post("/generate_stream", json={"text": prompts, "max_new_tokens": 10, "return_metadata": True})
    events = sse_events(r.text)
    joined = {"0": "", "1": ""}
    for name, data in events:
        if name in joined:
            joined[name] += data
    assert [joined["0"], joined["1"]] == buffered
    names = [e for e, _ in events]
    assert names[-2:] == ["metadata", "end"]
    assert len(json.loads(events[-2][1])) == 2


def test_max_new_tokens_is_honoured(http):
    meta = generate(http, text=PROMPT, max_new_tokens=5, min_new_tokens=5, return_metadata=True)["metadata"]
    assert meta == {
        "prompt_tokens": meta["prompt_tokens"],
        "generated_tokens": 5,
        "finish_reason": "length",
        "truncated_prompt_tokens": 0,
    }


def test_generate_max_length_is_honoured_beyond_the_default(http):
    # Takeoff's legacy name; the default (128) would stop earlier
    meta = generate(http, text=PROMPT, generate_max_length=140, min_new_tokens=140, return_metadata=True)["metadata"]
    assert meta["generated_tokens"] == 140 and meta["finish_reason"] == "length"


def test_min_new_tokens_is_honoured(http):
    short_prompt = {"text": "Answer with one word: is the sky blue?", "use_chat_template": True}
    natural = generate(http, **short_prompt, max_new_tokens=64, return_metadata=True)["metadata"]
    # precondition: the model ends this answer by itself, well before 64 tokens
    assert natural["finish_reason"] == "stop" and natural["generated_tokens"] < 40
    forced = generate(
        http, **short_prompt, max_new_tokens=64, min_new_tokens=natural["generated_tokens"] + 10, return_metadata=True
    )["metadata"]
    assert forced["generated_tokens"] >= natural["generated_tokens"] + 10


def test_chat_template_changes_the_prompt(http, tokenizer):
    plain = generate(http, text=PROMPT, max_new_tokens=1, return_metadata=True)["metadata"]
    chat = generate(http, text=PROMPT, max_new_tokens=1, return_metadata=True, use_chat_template=True)["metadata"]
    messages = [{"role": "user", "content": PROMPT}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat["prompt_tokens"] == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert chat["prompt_tokens"] > plain["prompt_tokens"]


def test_prompt_truncation_keeps_the_last_tokens(http, tokenizer):
    long_prompt = "The weather in London is rainy. " * 40 + PROMPT
    assert len(tokenizer.encode(long_prompt)) > 64
    meta = generate(http, text=long_prompt, prompt_max_tokens=16, max_new_tokens=8, return_metadata=True)["metadata"]
    assert meta["prompt_tokens"] == 16
    # the kept tokens are the last ones: the answer is the one for those 16 tokens
    tail = tokenizer.decode(tokenizer.encode(long_prompt)[-16:])
    assert len(tokenizer.encode(tail)) == 16  # precondition: the tail re-tokenizes the same
    truncated = generate(http, text=long_prompt, prompt_max_tokens=16, max_new_tokens=8)["text"]
    assert truncated == generate(http, text=tail, max_new_tokens=8)["text"]
    assert meta["truncated_prompt_tokens"] == len(tokenizer.encode(long_prompt)) - 16


def test_a_prompt_longer_than_the_context_is_cut_to_fit(http, tokenizer):
    """Takeoff's default: no 400, the prompt keeps its last tokens with room for
    min_new_tokens; the OpenAI surface keeps vLLM's 400."""
    long_prompt = "The weather in London is rainy. " * 400 + PROMPT
    n = len(tokenizer.encode(long_prompt))
    assert n > 2048  # precondition: longer than the shared reader's context
    body = generate(http, text=long_prompt, min_new_tokens=4, max_new_tokens=4, return_metadata=True)
    meta = body["metadata"]
    assert meta["prompt_tokens"] == 2048 - 4 and meta["truncated_prompt_tokens"] == n - (2048 - 4)
    assert meta["generated_tokens"] == 4 and body["message"] == body["text"]
    r = http.post("/v1/completions", json={"model": "primary", "prompt": long_prompt, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["type"] == "context_length_exceeded"


def test_sampling_with_seed_is_reproducible_and_differs_from_greedy(http):
    body = {"text": PROMPT, "max_new_tokens": 24, "sampling_topk": 50, "sampling_temperature": 1.2}
    a = generate(http, **body, seed=7)["text"]
    b = generate(http, **body, seed=7)["text"]
    c = generate(http, **body, seed=8)["text"]
    greedy = generate(http, text=PROMPT, max_new_tokens=24)["text"]
    assert a == b
    assert len({a, c, greedy}) > 1


def test_no_repeat_ngram_size(http, tokenizer):
    prompt = "Repeat after me: hello hello hello hello hello"
    repeated = generate(http, text=prompt, max_new_tokens=24)["text"]
    ids = tokenizer.encode(repeated, add_special_tokens=False)
    bigrams = list(itertools.pairwise(ids))
    assert len(bigrams) != len(set(bigrams))  # precondition: greedy repeats itself here
    fresh = generate(http, text=prompt, max_new_tokens=24, no_repeat_ngram_size=2)["text"]
    full = tokenizer.encode(prompt) + tokenizer.encode(fresh, add_special_tokens=False)
    # no bigram of the output occurs twice in prompt + output
    out_start = len(tokenizer.encode(prompt))
    seen = {}
    for i in range(len(full) - 1):
        seen.setdefault((full[i], full[i + 1]), []).append(i)
    repeats = [k for k, v in seen.items() if len(v) > 1 and max(v) >= out_start - 1]
    assert not repeats, repeats


def test_repetition_penalty_changes_output(http):
    prompt = "Repeat after me: hello hello hello hello hello"
    base = generate(http, text=prompt, max_new_tokens=16)["text"]
    penalised = generate(http, text=prompt, max_new_tokens=16, repetition_penalty=3.0)["text"]
    assert base != penalised


def test_sixteen_concurrent_requests_are_batched(gateway):
    seen_in_flight = []
    stop = threading.Event()

    def watch():
        with gateway.client() as c:
            while not stop.is_set():
                reader = c.get("/status").json()["live_readers"]["primary-0"]
                seen_in_flight.append(reader["engine_requests"])
                time.sleep(0.05)

    together = threading.Barrier(16)

    def one(i):
        with gateway.client() as c:
            together.wait(30)  # all sixteen leave at once (making clients takes time under load)
            r = c.post(
                "/generate",
                json={
                    "text": f"Tell me a fact about the number {i}.",
                    "max_new_tokens": 24,
                    "min_new_tokens": 24,
                    "return_metadata": True,
                },
            )
            return r.status_code, r.json()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(16)))
    finally:
        stop.set()
        watcher.join()
    assert all(code == 200 for code, _ in results)
    assert all(body["metadata"]["generated_tokens"] == 24 and body["text"] for _, body in results)
    # the engine held many of them at once: nothing in the gateway serialises requests
    assert max(seen_in_flight) >= 8


def test_disconnect_aborts_the_stream_in_the_engine(gateway):
    def engine_requests():
        return httpx.get(gateway.url + "/status").json()["live_readers"]["primary-0"]["engine_requests"]

    body = {"text": PROMPT, "max_new_tokens": 1500, "min_new_tokens": 1500}
    with gateway.client() as c, c.stream("POST", "/generate_stream", json=body) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                break
        assert engine_requests() == 1
    # the client closed the connection: the engine must drop the request (1500 tokens
    # would otherwise keep it busy for minutes)
    deadline = time.monotonic() + 10
    while engine_requests() != 0:
        assert time.monotonic() < deadline, "the engine kept generating for a gone client"
        time.sleep(0.1)


def test_disconnect_aborts_a_buffered_request(gateway):
    def engine_requests():
        return httpx.get(gateway.url + "/status").json()["live_readers"]["primary-0"]["engine_requests"]

    body = {"text": PROMPT, "max_new_tokens": 1500, "min_new_tokens": 1500}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/generate", json=body, timeout=httpx.Timeout(5.0, read=2.0))
    deadline = time.monotonic() + 10
    while engine_requests() != 0:
        assert time.monotonic() < deadline, "the engine kept generating for a gone client"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"text": 5}, 400, "text"),
        ({"text": ""}, 400, "text"),
        ({"text": "x", "sampling_topp": 7}, 400, "sampling_topp"),
        ({"text": "x", "max_new_tokens": -1}, 400, "max_new_tokens"),
        ({"text": "x", "consumer_group": "nope"}, 404, "consumer_group"),
        ({"text": "hello " * 2100, "min_new_tokens": 2048, "max_new_tokens": 2048}, 400, "prompt"),
        # the engine seeds a 64-bit generator; past it the worker would fail
        ({"text": "x", "sampling_temperature": 1.0, "seed": 2**64}, 400, "seed"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(http, path, body, status, field):
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field
    assert len(r.text) < 400  # short, and never the echoed prompt
    assert "hello hello" not in r.text
    assert generate(http, text="ok", max_new_tokens=2)["text"] is not None


def test_health_readiness_and_status(gateway, http):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["readers"] == {"primary-0": "ready", "embed-0": "ready"}
    status = http.get("/status").json()
    reader = status["live_readers"]["primary-0"]
    assert reader["model_name"] == "smollm2-135m-instruct"
    assert reader["max_model_len"] == 2048 and reader["engine"] == "vllm" and reader["device"] == "cpu"
    assert reader["dtype"] == "float32" and reader["has_chat_template"] is True
    # the management port (Takeoff's port + 1) answers /status too
    assert httpx.get(gateway.management_url + "/status").json()["live_readers"].keys() == {"primary-0", "embed-0"}


def test_the_largest_seed_samples_on_the_engine(http):
    """The top of the seed range reaches the engine's generator and samples reproducibly."""
    body = {"text": "Once upon a time", "sampling_temperature": 1.0, "max_new_tokens": 8, "seed": 2**63 - 1}
    first, second = generate(http, **body)["text"], generate(http, **body)["text"]
    assert first and first == second
