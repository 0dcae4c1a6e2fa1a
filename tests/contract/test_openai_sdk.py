"""The official openai SDK against the running gateway, on the OpenAI port and under /v1."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest

from tests.servers import start_gateway

pytestmark = pytest.mark.e2e

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is deep learning?"},
]


@pytest.fixture(params=["openai-port", "main-port-v1"], scope="module")
def client(request, gateway):
    base = gateway.openai_url if request.param == "openai-port" else gateway.url
    return openai.OpenAI(base_url=base + "/v1", api_key="not needed", max_retries=0, timeout=120)


def test_seed_002_non_streaming_snippet(client):
    chat_completion = client.chat.completions.create(model="primary", messages=MESSAGES, stream=False, max_tokens=24)
    assert chat_completion.object == "chat.completion"
    assert chat_completion.model == "primary"
    (choice,) = chat_completion.choices
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")


def test_seed_002_streaming_snippet(client):
    whole = client.chat.completions.create(model="primary", messages=MESSAGES, max_tokens=24, temperature=0)
    chunks = list(
        client.chat.completions.create(model="primary", messages=MESSAGES, stream=True, max_tokens=24, temperature=0)
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content
    assert len(chunks) > 5
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_usage_matches_the_tokenizer(client, tokenizer):
    r = client.chat.completions.create(model="primary", messages=MESSAGES, max_tokens=8, extra_body={"min_tokens": 8})
    rendered = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert r.usage.prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_stream_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="primary", messages=MESSAGES, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 6
    assert chunks[-1].usage.prompt_tokens > 10


def test_n2_returns_two_choices(client):
    r = client.chat.completions.create(
        model="primary", messages=MESSAGES, n=2, max_tokens=6, temperature=1.0, seed=3, extra_body={"min_tokens": 6}
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens == 12  # counted over both choices


def test_stop_sequence(client):
    r = client.chat.completions.create(
        model="primary",
        messages=[{"role": "user", "content": "List 5 fruits, one per line."}],
        stop=["\n"],
        max_tokens=60,
        temperature=0,  # sampled text may run to the limit without a newline
    )
    assert "\n" not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_logprobs(client):
    r = client.chat.completions.create(model="primary", messages=MESSAGES, max_tokens=5, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) >= 1
    for lp in content:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 2
        assert lp.top_logprobs[0].logprob >= lp.top_logprobs[1].logprob


def test_seeded_sampling_is_reproducible(client):
    kw = {"model": "primary", "messages": MESSAGES, "max_tokens": 16, "temperature": 1.0, "seed": 1234}
    assert (
        client.chat.completions.create(**kw).choices[0].message.content
        == client.chat.completions.create(**kw).choices[0].message.content
    )


def test_response_format_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="primary",
        messages=[{"role": "user", "content": "Invent a person. Answer in JSON with name and age."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
        max_tokens=80,
    )
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_response_format_json_object(client):
    r = client.chat.completions.create(
        model="primary",
        messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        max_tokens=120,
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_completions(client, tokenizer):
    r = client.completions.create(
        model="primary", prompt=["The capital of France is", "1, 2, 3,"], max_tokens=5, temperature=0
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.prompt_tokens == len(tokenizer.encode("The capital of France is")) + len(
        tokenizer.encode("1, 2, 3,")
    )
    echoed = client.completions.create(
        model="primary", prompt="The capital of France is", max_tokens=5, echo=True, temperature=0
    )
    assert echoed.choices[0].text == "The capital of France is" + r.choices[0].text


def test_completions_stream_and_logprobs(client):
    kw = {"model": "primary", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(**kw, logprobs=1)
    parts = list(client.completions.create(**kw, stream=True))
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert "".join(whole.choices[0].logprobs.tokens) == whole.choices[0].text


def test_models(client):
    ids = {m.id for m in client.models.list().data}
    assert {"primary", "smollm2-135m-instruct"} <= ids
    assert client.models.retrieve("primary").max_model_len == 2048
    r = client.chat.completions.create(model="smollm2-135m-instruct", messages=MESSAGES, max_tokens=2)
    assert r.model == "smollm2-135m-instruct"


def test_bad_request_and_not_found(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="primary", messages=MESSAGES, temperature=5)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="primary", messages=[{"role": "user", "content": "word " * 2100}])
    assert long.value.body["type"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model="primary", messages=MESSAGES, tool_choice="required")
    assert tools.value.body["param"] == "tool_choice"  # a tool choice without tools
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)


@pytest.fixture(scope="module")
def faulty(artifacts):
    """A gateway process of its own on scripted readers with injected faults (fast to start):
    the shared real gateway cannot be made to fail, load forever or lack a chat template."""
    readers = [
        {"id": "broken", "consumer_group": "broken", "kind": "scripted", "scripted": {"fail_after_tokens": 0}},
        {"id": "midway", "consumer_group": "midway", "kind": "scripted", "scripted": {"fail_after_tokens": 3}},
        {"id": "plain", "consumer_group": "plain", "kind": "scripted", "scripted": {"has_chat_template": False}},
        {"id": "late", "consumer_group": "late", "kind": "scripted", "scripted": {"start_delay": 3600}},
    ]
    gw = start_gateway(
        artifacts / "gateway-faulty.log", "configs/scripted.yaml", {"GATEWAY_READERS": json.dumps(readers)}, wait=False
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(gw.url + "/status").json()["live_readers"]["plain"]["state"] == "ready":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, gw.log_tail()
            time.sleep(0.2)
        yield gw
    finally:
        gw.stop()


def test_sdk_error_classes_for_server_states(faulty):
    sdk = openai.OpenAI(base_url=faulty.openai_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.chat.completions.create(model="broken", messages=MESSAGES)
    assert failed.value.status_code == 500 and failed.value.body["type"] == "engine_error"
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(model="plain", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError) as loading:
        sdk.chat.completions.create(model="late", messages=MESSAGES)
    assert loading.value.status_code == 503
    # a failure after the stream started: an error event in OpenAI's shape, then the end
    with pytest.raises(openai.APIError, match="injected engine failure"):
        for _ in sdk.chat.completions.create(model="midway", messages=MESSAGES, stream=True):
            pass
