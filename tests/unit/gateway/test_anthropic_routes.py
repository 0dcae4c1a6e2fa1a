"""Anthropic's Messages API with the official anthropic SDK, unmodified, in process on the
scripted engine: whole and streamed messages, stop reasons, tools, count_tokens, the model
list, and every error type the SDK knows."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import pytest
import yaml

from gateway.settings import ReaderSettings

KEY = "sk-anthropic-0123456789"
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
EPHEMERAL = {"type": "ephemeral"}


def sdk_of(client, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url="http://testserver", api_key=key, http_client=client, max_retries=0)


@pytest.fixture
def sdk(client):
    return sdk_of(client)


def test_a_message_whole(sdk, client):
    r = sdk.messages.create(
        model="primary", max_tokens=20, system="Be brief.", messages=ASK, extra_body={"temperature": 0}
    )
    assert r.type == "message" and r.role == "assistant" and r.model == "primary" and r.id.startswith("msg_")
    (block,) = r.content
    assert block.type == "text" and block.text
    assert r.stop_reason in ("end_turn", "max_tokens") and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    raw = client.post(
        "/v1/messages",
        json={"model": "primary", "max_tokens": 4, "messages": ASK},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert raw.headers["request-id"] == raw.headers["x-request-id"]


def test_block_content_system_blocks_and_ignored_fields(sdk):
    r = sdk.messages.create(
        model="primary",
        max_tokens=8,
        system=[{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}
        ],
        metadata={"user_id": "u-1"},
        extra_body={"service_tier": "auto"},
    )
    assert r.content[0].text


def test_stop_reasons_max_tokens_and_stop_sequence(client_factory):
    with client_factory(scripted={"reply": "alpha beta END gamma"}) as c:
        sdk = sdk_of(c)
        cut = sdk.messages.create(model="primary", max_tokens=3, messages=ASK)
        assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
        stopped = sdk.messages.create(model="primary", max_tokens=50, messages=ASK, stop_sequences=["END"])
        assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "END"
        ended = sdk.messages.create(model="primary", max_tokens=50, messages=ASK)
        assert ended.stop_reason == "end_turn" and ended.stop_sequence is None


def test_a_streamed_message_has_anthropics_event_order(sdk, client):
    with sdk.messages.stream(model="primary", max_tokens=20, messages=ASK, extra_body={"temperature": 0}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.index("content_block_start") < kinds.index("content_block_delta") < kinds.index("content_block_stop")
    assert kinds[-2] == "message_delta"
    whole = sdk.messages.create(model="primary", max_tokens=20, messages=ASK, extra_body={"temperature": 0})
    assert final.content[0].text == whole.content[0].text and final.stop_reason == whole.stop_reason
    raw = client.post("/v1/messages", json={"model": "primary", "max_tokens": 2, "messages": ASK, "stream": True})
    assert 'event: ping\ndata: {"type": "ping"}' in raw.text  # a ping right after message_start


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_use_is_valid_for_the_input_schema(sdk, choice, stream):
    kw = {"model": "primary", "max_tokens": 200, "messages": ASK, "tools": [WEATHER], "tool_choice": choice}
    if stream:
        with sdk.messages.stream(**kw) as s:
            kinds = [e.type for e in s]
            message = s.get_final_message()
        assert "content_block_delta" in kinds
    else:
        message = sdk.messages.create(**kw)
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses and message.stop_reason == "tool_use"
    for use in uses:
        assert use.name == "get_weather" and use.id.startswith("toolu_")
        jsonschema.validate(use.input, WEATHER["input_schema"])


def test_a_tool_result_turn_renders_through_the_template(sdk):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "days": 1}}
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 24 C"}]},
    ]
    before = sdk.messages.count_tokens(model="primary", messages=ASK, tools=[WEATHER]).input_tokens
    after = sdk.messages.count_tokens(model="primary", messages=history, tools=[WEATHER]).input_tokens
    assert after > before + len("Sunny, 24 C")  # the scripted template: one token per byte
    r = sdk.messages.create(model="primary", max_tokens=8, messages=history, tools=[WEATHER])
    assert r.content[0].type == "text" and r.usage.input_tokens == after


def test_count_tokens_counts_what_the_message_would_send(sdk):
    counted = sdk.messages.count_tokens(model="primary", system="S", messages=ASK).input_tokens
    sent = sdk.messages.create(model="primary", system="S", max_tokens=2, messages=ASK).usage.input_tokens
    assert counted == sent > 0


def test_the_model_list_in_anthropics_shape(sdk, client):
    models = sdk.models.list()
    ids = [m.id for m in models.data]
    assert "primary" in ids and all(m.type == "model" for m in models.data)
    assert sdk.models.retrieve("primary").id == "primary"
    assert "object" in client.get("/v1/models").json()  # OpenAI's shape for everyone else


def test_thinking_is_accepted_and_images_are_refused_naming_the_block(sdk):
    r = sdk.messages.create(
        model="primary", max_tokens=4, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    assert all(b.type != "thinking" for b in r.content)  # the scripted reader has no reasoning parser
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as exc:
        sdk.messages.create(model="primary", max_tokens=4, messages=[{"role": "user", "content": [image]}])
    assert exc.value.body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[0]" in exc.value.body["error"]["message"]


def test_error_types_the_sdk_knows(client_factory, tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"name": "a", "key": KEY, "max_in_flight": 1}]}))
    readers = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", max_in_flight=1)]
    with client_factory(api_keys_file=path, readers=readers) as c:
        sdk = sdk_of(c, KEY)
        with pytest.raises(anthropic.NotFoundError) as nf:
            sdk.messages.create(model="no-such-model", max_tokens=4, messages=ASK)
        assert nf.value.body["error"]["type"] == "not_found_error" and "no-such-model" not in str(nf.value.body)
        # the SDK itself insists on max_tokens; another client may leave it out
        missing = c.post("/v1/messages", json={"model": "primary", "messages": ASK}, headers={"x-api-key": KEY})
        body = missing.json()
        assert missing.status_code == 400 and body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error" and "max_tokens" in body["error"]["message"]
        with pytest.raises(anthropic.AuthenticationError) as auth:
            sdk_of(c, "sk-wrong-0123456789").messages.create(model="primary", max_tokens=4, messages=ASK)
        assert auth.value.body["error"]["type"] == "authentication_error"
        principal = c.app.state.runtime.keys.authenticate(KEY)
        principal.usage.in_flight = 1  # the key at its own limit: 429 rate_limit_error
        with pytest.raises(anthropic.RateLimitError) as limited:
            sdk.messages.create(model="primary", max_tokens=4, messages=ASK)
        assert (
            limited.value.body["error"]["type"] == "rate_limit_error" and limited.value.response.headers["retry-after"]
        )
        principal.usage.in_flight = 0
        reader = c.app.state.runtime.registry.readers["primary-0"]
        reader.sequences = 1  # the reader at capacity: Anthropic's 529 overloaded_error
        with pytest.raises(anthropic.InternalServerError) as overloaded:
            sdk.messages.create(model="primary", max_tokens=4, messages=ASK)
        assert overloaded.value.status_code == 529 and overloaded.value.body["error"]["type"] == "overloaded_error"
        reader.sequences = 0
        # x-api-key, as the SDK sends it, and Bearer both work
        r = c.post(
            "/v1/messages",
            json={"model": "primary", "max_tokens": 2, "messages": ASK},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert r.status_code == 200


def test_server_tools_are_refused_naming_the_tool(sdk):
    with pytest.raises(anthropic.BadRequestError) as exc:
        sdk.messages.create(
            model="primary", max_tokens=4, messages=ASK, tools=[{"type": "web_search_20250305", "name": "web_search"}]
        )
    assert "tools[0]" in exc.value.body["error"]["message"]
    json.dumps(exc.value.body)
