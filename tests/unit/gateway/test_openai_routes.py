"""The OpenAI surface on the scripted engine, driven by the official openai SDK in process."""

from __future__ import annotations

import json

import openai
import pytest

from gateway.settings import ReaderSettings
from tests.sse import sse_events


@pytest.fixture
def sdk(client):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def chat(sdk, **kw):
    kw.setdefault("model", "primary")
    kw.setdefault("messages", [{"role": "user", "content": "hello"}])
    return sdk.chat.completions.create(**kw)


def test_chat_shape_and_usage(sdk):
    r = chat(sdk, max_tokens=6)
    assert r.object == "chat.completion" and r.model == "primary" and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant" and len(choice.message.content) == 6
    assert choice.finish_reason == "length"
    # scripted tokens are bytes of the rendered template "<|user|>hello\n<|assistant|>"
    assert r.usage.prompt_tokens == len("<|user|>hello\n<|assistant|>")
    assert r.usage.completion_tokens == 6 and r.usage.total_tokens == r.usage.prompt_tokens + 6


def test_max_completion_tokens_wins_over_max_tokens(sdk):
    r = chat(sdk, max_tokens=9, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3


def test_without_max_tokens_generates_until_the_end(sdk):
    r = chat(sdk)
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 49  # 48 + EOS


def test_content_parts_and_roles(sdk, client):
    r = chat(
        sdk,
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "c"},
        ],
        max_tokens=1,
    )
    rendered = "<|system|>be brief\n<|user|>a\nb\n<|assistant|>\n<|user|>c\n<|assistant|>"
    assert r.usage.prompt_tokens == len(rendered)


def test_n_returns_that_many_choices(sdk):
    r = chat(sdk, n=3, max_tokens=4, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 12


def test_logprobs(sdk):
    r = chat(sdk, max_tokens=3, logprobs=True, top_logprobs=1)
    lps = r.choices[0].logprobs.content
    assert len(lps) == 3 and all(len(lp.top_logprobs) == 1 for lp in lps)
    assert "".join(lp.token for lp in lps) == r.choices[0].message.content


def test_stream_chat_with_usage(sdk):
    chunks = list(chat(sdk, max_tokens=5, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) == 5
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_ends_with_done(client):
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True}
    )
    events = sse_events(r.text)
    assert events[-1] == ("message", "[DONE]")
    assert all(json.loads(d)["object"] == "chat.completion.chunk" for _, d in events[:-1])


def test_stream_n2_has_both_indexes(sdk):
    chunks = list(chat(sdk, n=2, max_tokens=3, stream=True))
    texts = {0: "", 1: ""}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert len(texts[0]) == 3 and len(texts[1]) == 3


def test_completions_list_prompt_echo_and_order(sdk):
    r = sdk.completions.create(model="primary", prompt=["abc", "de"], max_tokens=2, echo=True)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text.startswith("abc") and r.choices[1].text.startswith("de")
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 4


def test_completions_token_prompt(sdk):
    r = sdk.completions.create(model="primary", prompt=[104, 105], max_tokens=2, echo=True)
    assert r.choices[0].text.startswith("hi")


def test_completions_default_max_tokens_is_16(sdk):
    assert sdk.completions.create(model="primary", prompt="x").usage.completion_tokens == 16


def test_completions_stream_with_logprobs(sdk):
    chunks = list(sdk.completions.create(model="primary", prompt="abc", max_tokens=3, stream=True, logprobs=1))
    text = "".join(c.choices[0].text for c in chunks)
    offsets = [o for c in chunks for o in (c.choices[0].logprobs.text_offset if c.choices[0].logprobs else [])]
    assert len(text) == 3 and offsets == [0, 1, 2]


def test_models_list_and_get(sdk):
    ids = [m.id for m in sdk.models.list().data]
    assert ids == ["primary", "scripted"]
    assert sdk.models.retrieve("scripted").id == "scripted"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("nope")


def test_model_name_routes_to_its_group(sdk):
    assert chat(sdk, model="scripted", max_tokens=2).model == "scripted"


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"tools": [TOOL, TOOL]}, "tools[1]"),
        ({"tools": [TOOL], "functions": [{"name": "f"}]}, "functions"),
        ({"tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"extra_body": {"continue_final_message": True}}, "continue_final_message"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 99}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"stop": [""]}, "stop[0]"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"extra_body": {"structured_outputs": {"regex": "a", "choice": ["b"]}}}, "structured_outputs"),
    ],
)
def test_bad_chat_requests_raise_bad_request_naming_the_param(sdk, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        chat(sdk, **kwargs)
    err = info.value.body
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"extra_body": {"suffix": "x"}}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_bad_completion_requests(sdk, kwargs, param):
    kwargs.setdefault("prompt", "x")
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model="primary", **kwargs)
    assert info.value.body["param"] == param


def test_unknown_model_is_not_found(sdk):
    with pytest.raises(openai.NotFoundError) as info:
        chat(sdk, model="gpt-4o")
    assert "primary" in info.value.body["message"] and info.value.body["param"] == "model"


def test_error_classes_for_engine_states(client_factory):
    readers = [
        ReaderSettings(id="ok", consumer_group="ok", kind="scripted"),
        ReaderSettings(id="broken", consumer_group="broken", kind="scripted", scripted={"fail_after_tokens": 0}),
        ReaderSettings(id="plain", consumer_group="plain", kind="scripted", scripted={"has_chat_template": False}),
        ReaderSettings(id="late", consumer_group="late", kind="scripted", scripted={"start_delay": 3600}),
    ]
    with client_factory(readers=readers, wait_ready=False) as c:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=c, max_retries=0)
        messages = [{"role": "user", "content": "x"}]
        assert chat(sdk, model="ok", max_tokens=1).choices
        with pytest.raises(openai.InternalServerError):
            chat(sdk, model="broken", messages=messages)
        with pytest.raises(openai.UnprocessableEntityError) as info:
            chat(sdk, model="plain", messages=messages)
        assert info.value.body["param"] == "messages"
        with pytest.raises(openai.InternalServerError) as unavailable:  # the SDK's class for 503
            chat(sdk, model="late", messages=messages)
        assert unavailable.value.status_code == 503
        # a failure after the stream started arrives as an error event; the SDK raises
        with pytest.raises(openai.APIError, match="injected engine failure"):
            list(chat(sdk, model="broken", messages=messages, stream=True))


def test_error_body_shape_and_no_echo(client):
    secret = "SECRET-4711"
    r = client.post("/v1/chat/completions", json={"model": secret * 2, "messages": [{"role": "user", "content": 5}]})
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert secret not in r.text
    r = client.post("/v1/nope", json={})
    assert r.status_code == 404 and "error" in r.json()


def test_prompt_logprobs_are_off_unless_allowed_and_then_capped(sdk, client_factory):
    import openai as oa

    with pytest.raises(oa.BadRequestError) as off:
        sdk.completions.create(model="primary", prompt="abc", max_tokens=2, echo=True, logprobs=1)
    assert off.value.body["param"] == "logprobs" and "allow_prompt_logprobs" in off.value.body["message"]
    with client_factory(allow_prompt_logprobs=True, max_prompt_logprobs_tokens=4) as c:
        capped = c.post("/v1/completions", json={"prompt": "abcdef", "max_tokens": 2, "echo": True, "logprobs": 1})
        assert capped.status_code == 400 and "at most 4" in capped.json()["error"]["message"]


def test_completions_echo_with_logprobs_scores_the_prompt(client_factory):
    with client_factory(allow_prompt_logprobs=True) as c:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=c, max_retries=0)
        _echo_with_logprobs(sdk)


def _echo_with_logprobs(sdk):
    r = sdk.completions.create(model="primary", prompt="abc", max_tokens=2, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.tokens[:3] == ["a", "b", "c"] and len(lp.tokens) == 5
    assert lp.token_logprobs[0] is None and lp.token_logprobs[1:3] == [-1.0, -1.0]
    assert lp.text_offset == [0, 1, 2, 3, 4]
    chunks = list(
        sdk.completions.create(model="primary", prompt="abc", max_tokens=2, echo=True, logprobs=1, stream=True)
    )
    assert chunks[0].choices[0].text == "abc" and chunks[0].choices[0].logprobs.tokens == ["a", "b", "c"]
