"""Function calling on the real engine with the embedded model (no tool-call parser):
"required" and named choices are constrained decoding, so the arguments validate
against the tool's schema; "auto" answers in text; conversations carry tool results."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather forecast of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
            "required": ["zone"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def sdk(gateway):
    return openai.OpenAI(base_url=gateway.openai_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def accumulate(chunks):
    calls: dict[int, dict] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"name": None, "arguments": ""})
                if tc.function.name:
                    assert not call["arguments"], "the name comes first"
                    call["name"] = tc.function.name
                call["arguments"] += tc.function.arguments or ""
            finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_have_arguments_valid_for_the_schema(sdk, stream, choice):
    # greedy: the same short call every time (a sampled one may wander in whitespace)
    kw = {"model": "primary", "messages": ASK, "tools": [WEATHER, TIME], "tool_choice": choice}
    kw.update(max_tokens=200, temperature=0)
    if stream:
        calls, finish = accumulate(sdk.chat.completions.create(stream=True, **kw))
    else:
        r = sdk.chat.completions.create(**kw)
        finish = r.choices[0].finish_reason
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in r.choices[0].message.tool_calls]
    assert finish == "tool_calls" and calls
    if isinstance(choice, dict):
        assert [c["name"] for c in calls] == ["get_time"]
    for call in calls:
        arguments = json.loads(call["arguments"])
        assert isinstance(arguments, dict), "the parameters object, not a JSON string"
        jsonschema.validate(arguments, SCHEMAS[call["name"]])


def test_a_tool_result_conversation_is_answered(sdk):
    first = sdk.chat.completions.create(
        model="primary", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=200, temperature=0
    )
    (call,) = first.choices[0].message.tool_calls[:1]
    messages = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees, all three days."},
    ]
    second = sdk.chat.completions.create(model="primary", messages=messages, tools=[WEATHER], max_tokens=24)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content.strip()
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result were rendered


def test_auto_without_a_parser_answers_in_text(sdk):
    r = sdk.chat.completions.create(model="primary", messages=ASK, tools=[WEATHER], max_tokens=16)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_tool_requests_are_400_naming_the_field(sdk, extra, param):
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(model="primary", messages=ASK, max_tokens=4, **extra)
    assert exc.value.body["param"] == param


def test_fifty_sampled_required_calls_all_end_in_a_valid_call(sdk):
    """At temperature 1 the whitespace a JSON schema allows between tokens used to be a
    trap: 3 of 20 calls spent all their tokens on blanks and newlines. Tool calls now
    decode compact JSON, so every sampled call ends with a call whose arguments validate."""
    import concurrent.futures

    free_form = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
    parameters = free_form["function"]["parameters"]

    def call(i: int) -> tuple[str, dict]:
        r = sdk.chat.completions.create(
            model="primary",
            messages=ASK,
            tools=[free_form],
            tool_choice="required",
            temperature=1.0,
            max_tokens=200,
            seed=1000 + i,
        )
        choice = r.choices[0]
        calls = choice.message.tool_calls or []
        assert calls, (i, choice.finish_reason, choice.message.content)
        return choice.finish_reason, json.loads(calls[0].function.arguments)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(50)))
    assert [finish for finish, _ in results] == ["tool_calls"] * 50
    for _, arguments in results:
        jsonschema.validate(arguments, parameters)
