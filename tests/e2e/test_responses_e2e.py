"""The Responses API on the real engine with the embedded model, through the openai SDK:
whole and streamed answers agree, formats and function tools are followed, stored
responses continue from their exact tokens, background work can be cancelled."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest

pytestmark = pytest.mark.e2e

GREEDY = {"model": "primary", "temperature": 0}
WEATHER = {
    "type": "function",
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
}


@pytest.fixture(scope="module")
def sdk(gateway):
    return openai.OpenAI(base_url=gateway.openai_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def chatml_tail(previous_status: str, user: str) -> str:
    """What follows a stored SmolLM2 (ChatML) answer before the next one: the answer's
    closing (its `<|im_end|>` is already there when the model ended it), the new user
    turn and the generation prompt."""
    closing = "\n" if previous_status == "completed" else "<|im_end|>\n"
    return f"{closing}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def test_whole_and_streamed_answers_agree(sdk):
    kw = {**GREEDY, "input": "Name three colours.", "max_output_tokens": 24}
    whole = sdk.responses.create(**kw)
    assert whole.output_text and whole.usage.output_tokens <= 24
    with sdk.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response() if whole.status == "completed" else None
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == f"response.{whole.status}"
    if final is not None:
        assert final.output_text == whole.output_text


def test_items_instructions_and_a_json_schema_format(sdk):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    r = sdk.responses.create(
        **GREEDY,
        instructions="You describe people as JSON.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Describe Ada, aged 36."}]},
        ],
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
        max_output_tokens=60,
    )
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_gives_valid_arguments(sdk, stream):
    kw = {
        **GREEDY,
        "input": "What is the weather in Paris for the next 3 days?",
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_output_tokens": 80,
    }
    if stream:
        with sdk.responses.stream(**kw) as s:
            r = s.get_final_response()
    else:
        r = sdk.responses.create(**kw)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(c.name == "get_weather" for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c.arguments), WEATHER["parameters"])


def test_previous_response_id_sends_the_stored_tokens_plus_the_new_turn(sdk, tokenizer):
    first = sdk.responses.create(**GREEDY, input="Say hello.", max_output_tokens=12)
    second = sdk.responses.create(**GREEDY, input="Again.", previous_response_id=first.id, max_output_tokens=4)
    tail = tokenizer.encode(chatml_tail(first.status, "Again."), add_special_tokens=False)
    assert second.usage.input_tokens == first.usage.total_tokens + len(tail)
    # the tool-result turn of a conversation continues the same way
    call = sdk.responses.create(
        **GREEDY, input="Weather in Tokyo for 2 days?", tools=[WEATHER], tool_choice="required", max_output_tokens=60
    )
    fc = next(o for o in call.output if o.type == "function_call")
    answer = sdk.responses.create(
        **GREEDY,
        previous_response_id=call.id,
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "Sunny, 24 C"}],
        tools=[WEATHER],
        max_output_tokens=16,
    )
    assert answer.output_text and answer.usage.input_tokens > call.usage.total_tokens


def test_stored_responses_can_be_read_listed_and_deleted(sdk):
    r = sdk.responses.create(
        **GREEDY, input=[{"role": "user", "content": "Hi"}], max_output_tokens=4, metadata={"k": "v"}
    )
    got = sdk.responses.retrieve(r.id)
    assert got.output_text == r.output_text and got.metadata == {"k": "v"}
    (item,) = sdk.responses.input_items.list(r.id).data
    assert item.content[0].text == "Hi"
    sdk.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(r.id)
    unstored = sdk.responses.create(**GREEDY, input="Hi", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(**GREEDY, input="x", previous_response_id=unstored.id)


def engine_requests(gateway) -> int:
    """Requests the engine itself is running (not the gateway's count)."""
    return httpx.get(gateway.url + "/status", timeout=10).json()["live_readers"]["primary-0"]["engine_requests"]


def test_background_cancel_aborts_the_engine_request(sdk, gateway):
    r = sdk.responses.create(
        **GREEDY, input="Write a long story.", background=True, max_output_tokens=1500, extra_body={"top_k": 1}
    )
    assert r.status == "in_progress"
    deadline = time.monotonic() + 60
    while engine_requests(gateway) == 0:
        assert time.monotonic() < deadline, "the background response never started"
        time.sleep(0.1)
    cancelled = sdk.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 10  # the abort reaches the engine core process shortly
    while engine_requests(gateway) != 0:
        assert time.monotonic() < deadline, "the cancelled request still runs in the engine"
        time.sleep(0.1)
    assert sdk.responses.retrieve(r.id).status == "cancelled"
    done = sdk.responses.create(**GREEDY, input="Hi", background=True, max_output_tokens=3)
    deadline = time.monotonic() + 120
    while (got := sdk.responses.retrieve(done.id)).status == "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert got.status in ("completed", "incomplete") and got.usage.output_tokens <= 3
