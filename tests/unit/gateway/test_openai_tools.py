"""Function calling, reasoning output and chat-template controls on the OpenAI surface,
through the official openai SDK in process, on the scripted engine."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from gateway.settings import ReaderSettings
from tests.models import make_markup_tokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def sdk_of(client):
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


@pytest.fixture
def sdk(client):
    return sdk_of(client)


def schema_of(name):
    return {"get_weather": WEATHER, "get_time": TIME}[name]["function"]["parameters"]


def streamed_calls(chunks):
    calls: dict[int, dict] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    assert call["id"] is None, "the id comes once"
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    assert not call["arguments"], "the name comes before the arguments"
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_required_calls_a_tool_with_arguments_valid_for_its_schema(sdk, stream):
    kw = {"model": "primary", "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required"}
    if stream:
        calls, finish = streamed_calls(sdk.chat.completions.create(stream=True, **kw))
    else:
        r = sdk.chat.completions.create(**kw)
        message, finish = r.choices[0].message, r.choices[0].finish_reason
        assert message.content is None
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls]
    assert finish == "tool_calls" and calls
    for call in calls:
        assert call["id"].startswith("call_")
        arguments = json.loads(call["arguments"])
        jsonschema.validate(arguments, schema_of(call["name"]))
        assert isinstance(arguments, dict)


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_is_called(sdk, stream):
    kw = {
        "model": "primary",
        "messages": ASK,
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    if stream:
        calls, _ = streamed_calls(sdk.chat.completions.create(stream=True, **kw))
    else:
        (c,) = sdk.chat.completions.create(**kw).choices[0].message.tool_calls
        calls = [{"name": c.function.name, "arguments": c.function.arguments}]
    assert [c["name"] for c in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), schema_of("get_weather"))


def test_the_sdk_stream_helper_accumulates_the_call(sdk):
    with sdk.chat.completions.stream(model="primary", messages=ASK, tools=[WEATHER], tool_choice="required") as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), schema_of("get_weather"))


def test_auto_without_a_parser_answers_in_text_and_the_template_sees_the_tools(sdk):
    r = sdk.chat.completions.create(model="primary", messages=ASK, tools=[WEATHER, TIME], max_tokens=5)
    message = r.choices[0].message
    assert message.tool_calls is None and len(message.content) == 5
    assert r.usage.prompt_tokens == len("<|tools|>get_weather,get_time\n<|user|>Weather in Paris?\n<|assistant|>")


def test_a_conversation_with_a_tool_result(sdk):
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = sdk.chat.completions.create(model="primary", messages=messages, tools=[WEATHER], max_tokens=3)
    rendered = (
        "<|tools|>get_weather\n<|user|>Weather in Paris?\n<|assistant|><|call|>get_weather\n"
        "<|tool|>sunny\n<|assistant|>"
    )
    assert r.usage.prompt_tokens == len(rendered) and r.choices[0].finish_reason == "length"


def test_legacy_functions_answer_with_function_call(sdk):
    r = sdk.chat.completions.create(
        model="primary",
        messages=ASK,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), schema_of("get_weather"))


def test_echo_and_continue_final_message(sdk):
    r = sdk.chat.completions.create(
        model="primary",
        messages=[*ASK, {"role": "assistant", "content": "It is"}],
        max_tokens=2,
        extra_body={"echo": True, "continue_final_message": True, "add_generation_prompt": False},
    )
    assert r.choices[0].message.content.startswith("It is") and len(r.choices[0].message.content) == len("It is") + 2
    assert r.usage.prompt_tokens == len("<|user|>Weather in Paris?\n<|assistant|>It is")


@pytest.fixture
def markup_client(client_factory, tmp_path):
    reply = (
        "<think>The user wants weather.</think>Let me check."
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>'
    )
    scripted = {
        "reply": reply,
        "eos_after": 10_000,
        "markup_tokenizer": str(make_markup_tokenizer(tmp_path / "tok")),
        "tool_call_parser": "hermes",
        "reasoning_parser": "deepseek_r1",
    }
    readers = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", scripted=scripted)]
    with client_factory(readers=readers) as c:
        yield c


def test_auto_with_a_parser_separates_reasoning_content_and_calls(markup_client):
    sdk = sdk_of(markup_client)
    r = sdk.chat.completions.create(model="primary", messages=ASK, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.model_extra["reasoning_content"] == "The user wants weather."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris", "days": 2}


def test_auto_with_a_parser_streamed(markup_client):
    sdk = sdk_of(markup_client)
    chunks = list(sdk.chat.completions.create(model="primary", messages=ASK, tools=[WEATHER], stream=True))
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls, finish = streamed_calls(chunks)
    assert reasoning == "The user wants weather." and content == "Let me check."
    assert finish == "tool_calls" and [c["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "days": 2}


def test_tool_choice_none_keeps_the_markup_out_of_calls(markup_client):
    sdk = sdk_of(markup_client)
    r = sdk.chat.completions.create(model="primary", messages=ASK, tools=[WEATHER], tool_choice="none")
    message = r.choices[0].message
    assert message.tool_calls is None and "<tool_call>" in message.content
    assert message.model_extra["reasoning_content"] == "The user wants weather."
