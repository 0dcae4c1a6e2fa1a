"""Anthropic's Messages API on the real engine with the embedded model, through the official
anthropic SDK: streaming equals the whole answer, forced tool use is schema-valid, the
tool_result turn renders through the model's chat template, errors in Anthropic's shape."""

from __future__ import annotations

import anthropic
import jsonschema
import pytest

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0}
WEATHER = {
    "name": "get_weather",
    "description": "Weather forecast of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def sdk(gateway):
    # the main port serves /v1/messages as the OpenAI port does: ANTHROPIC_BASE_URL may name either
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0, timeout=300)


def test_a_stream_joins_into_the_whole_answer(sdk):
    kw = {"model": "primary", "max_tokens": 24, "system": "Answer briefly.", "messages": ASK, "extra_body": GREEDY}
    whole = sdk.messages.create(**kw)
    with sdk.messages.stream(**kw) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    text = "".join(b.text for b in whole.content if b.type == "text")
    assert text and "".join(b.text for b in final.content if b.type == "text") == text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    cut = sdk.messages.create(**{**kw, "max_tokens": 3})
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
def test_forced_tool_use_validates_and_its_result_renders(sdk, choice):
    r = sdk.messages.create(
        model="primary", max_tokens=120, messages=ASK, tools=[WEATHER], tool_choice=choice, extra_body=GREEDY
    )
    (use,) = [b for b in r.content if b.type == "tool_use"]
    assert r.stop_reason == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER["input_schema"])
    history = [
        *ASK,
        {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 C"}]},
    ]
    counted = sdk.messages.count_tokens(model="primary", messages=history, tools=[WEATHER]).input_tokens
    answer = sdk.messages.create(model="primary", max_tokens=16, messages=history, tools=[WEATHER], extra_body=GREEDY)
    assert answer.content[0].type == "text" and answer.usage.input_tokens == counted > r.usage.input_tokens


def test_errors_in_anthropics_shape(sdk, gateway):
    import httpx

    with pytest.raises(anthropic.NotFoundError) as nf:
        sdk.messages.create(model="no-such-model", max_tokens=4, messages=ASK)
    assert nf.value.body["type"] == "error" and nf.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(gateway.url + "/v1/messages", json={"model": "primary", "messages": ASK})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and r.headers["request-id"]
    too_long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(anthropic.BadRequestError) as long_prompt:
        sdk.messages.create(model="primary", max_tokens=4, messages=too_long)
    assert long_prompt.value.body["error"]["type"] == "invalid_request_error"
