"""The OpenAI Responses API through the official openai SDK in process, on the scripted
engine: shapes, the event stream, stored state and continuation, tenants, background
work and every refusal."""

from __future__ import annotations

import json
import time

import jsonschema
import openai
import pytest
from openai.types.responses import Response as SDKResponse

from tests.unit.gateway.test_tenants import A, B, keys_file

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
}
LONG = 400  # more than the scripted reply, so answers end with EOS


def sdk_of(client, key="unused"):
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)


@pytest.fixture
def sdk(client):
    return sdk_of(client)


def raw(client, **body):
    return client.post("/v1/responses", json={"model": "primary", **body})


def test_a_string_input_answers_with_one_message_in_openais_shape(client):
    r = raw(client, input="Hello there", max_output_tokens=LONG, metadata={"team": "a"}, user="u1")
    body = r.json()
    SDKResponse.model_validate(body)  # strict: every field the SDK types
    assert body["status"] == "completed" and body["object"] == "response" and body["id"].startswith("resp_")
    (item,) = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["content"][0]["text"]
    assert body["usage"]["input_tokens"] == len("<|user|>Hello there\n<|assistant|>")
    assert body["metadata"] == {"team": "a"} and body["user"] == "u1" and body["store"] is True


def test_max_output_tokens_makes_it_incomplete(sdk):
    r = sdk.responses.create(model="primary", input="Hello", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_items_instructions_calls_and_outputs_become_the_chat_prompt(sdk):
    r = sdk.responses.create(
        model="primary",
        instructions="Be brief",
        input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=2,
    )
    rendered = (
        "<|tools|>get_weather\n<|system|>Be brief\n<|user|>Weather?\n<|assistant|><|call|>get_weather\n"
        "<|tool|>sunny\n<|assistant|>"
    )
    assert r.usage.input_tokens == len(rendered)


def test_previous_response_id_continues_the_stored_tokens(sdk):
    first = sdk.responses.create(model="primary", instructions="Be brief", input="Hello", max_output_tokens=LONG)
    assert first.status == "completed"
    second = sdk.responses.create(
        model="primary", instructions="Be brief", input="Next", previous_response_id=first.id, max_output_tokens=2
    )
    # the whole first sequence (its EOS included), then only the new turn: the same
    # instructions are not repeated
    assert second.usage.input_tokens == first.usage.total_tokens + len("\n<|user|>Next\n<|assistant|>")
    assert second.previous_response_id == first.id
    third = sdk.responses.create(
        model="primary", instructions="Now in French", input="Again", previous_response_id=second.id
    )
    assert third.usage.input_tokens == second.usage.total_tokens + len(
        "\n<|system|>Now in French\n<|user|>Again\n<|assistant|>"
    )


def test_retrieve_input_items_and_delete(sdk):
    first = sdk.responses.create(model="primary", input="Hello", max_output_tokens=LONG)
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    r = sdk.responses.create(model="primary", input=items, previous_response_id=first.id, max_output_tokens=2)
    got = sdk.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    listed = sdk.responses.input_items.list(r.id, order="asc")
    assert [i.content[0].text for i in listed.data] == [f"m{i}" for i in range(5)]
    page = sdk.responses.input_items.list(r.id, limit=2)  # newest first by default
    assert [i.content[0].text for i in page.data] == ["m4", "m3"] and page.has_more
    rest = sdk.responses.input_items.list(r.id, limit=10, after=page.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["m2", "m1", "m0"] and not rest.has_more
    sdk.responses.delete(r.id)
    for call in (lambda: sdk.responses.retrieve(r.id), lambda: sdk.responses.input_items.list(r.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.responses.create(model="primary", input="x", previous_response_id=r.id)
    assert exc.value.body["param"] == "previous_response_id"


def test_store_false_stores_nothing(client, sdk):
    r = sdk.responses.create(model="primary", input="Hello", store=False, max_output_tokens=4)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(r.id)
    assert client.app.state.pipeline.store.snapshot()[0] == 0


def test_the_stream_matches_the_whole_answer(sdk):
    kw = {"model": "primary", "input": "Hello there", "max_output_tokens": LONG, "temperature": 0}
    whole = sdk.responses.create(**kw)
    with sdk.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == whole.output_text and text
    # the streamed response was stored before response.completed went out
    assert sdk.responses.retrieve(final.id).output_text == text


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_choice_calls_a_function_with_valid_arguments(sdk, stream):
    kw = {"model": "primary", "input": "Weather in Paris?", "tools": [WEATHER], "tool_choice": "required"}
    if stream:
        with sdk.responses.stream(**kw) as s:
            kinds = [e.type for e in s]
            r = s.get_final_response()
        assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    else:
        r = sdk.responses.create(**kw)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(c.name == "get_weather" and c.call_id.startswith("call_") for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c.arguments), WEATHER["parameters"])


def test_named_tool_choice_and_the_tool_result_turn(sdk):
    r = sdk.responses.create(
        model="primary",
        input="Weather?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=LONG,
    )
    (call,) = r.output
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    after = sdk.responses.create(
        model="primary",
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
        max_output_tokens=3,
    )
    assert after.usage.input_tokens == r.usage.total_tokens + len("\n<|tool|>sunny\n<|assistant|>")


def test_text_format_json_schema_is_followed(sdk):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    r = sdk.responses.create(
        model="primary",
        input="Give me a",
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema}},
        max_output_tokens=LONG,
    )
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema"


def test_ignored_fields_are_accepted(sdk):
    r = sdk.responses.create(
        model="primary",
        input="Hello",
        include=["reasoning.encrypted_content"],
        prompt_cache_key="k",
        truncation="auto",
        service_tier="auto",
        safety_identifier="s",
        reasoning={"effort": "low"},
        parallel_tool_calls=False,
        max_output_tokens=2,
    )
    assert r.status == "incomplete"


def test_builtin_tools_are_refused_unless_dropped(client, client_factory):
    r = raw(client, input="x", tools=[{"type": "web_search"}, WEATHER])
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].type"
    assert "OpenAI's servers" in r.json()["error"]["message"] and "web_search" not in r.json()["error"]["message"]
    with client_factory(responses={"drop_builtin_tools": True}) as c:
        ok = raw(c, input="x", tools=[{"type": "web_search"}], max_output_tokens=2).json()
        assert ok["status"] == "incomplete" and ok["tools"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": "x", "background": True, "stream": True}, "background"),
        ({"input": "x", "background": True, "store": False}, "background"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        (
            {"input": "x", "tools": [WEATHER], "tool_choice": "required", "text": {"format": {"type": "json_object"}}},
            "text.format",
        ),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "tools": [{**WEATHER, "parameters": {"type": 5}}]}, "tools[0].parameters"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "previous_response_id": "resp_nope"}, "previous_response_id"),
    ],
)
def test_bad_requests_name_the_field(client, body, param):
    r = raw(client, **body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_another_keys_responses_are_not_found(client_factory, tmp_path):
    with client_factory(api_keys_file=keys_file(tmp_path)) as c:
        a, b = sdk_of(c, A), sdk_of(c, B)
        r = a.responses.create(model="primary", input="secret plan", max_output_tokens=LONG)
        for call in (
            lambda: b.responses.retrieve(r.id),
            lambda: b.responses.input_items.list(r.id),
            lambda: b.responses.delete(r.id),
            lambda: b.responses.create(model="primary", input="x", previous_response_id=r.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert a.responses.retrieve(r.id).output_text == r.output_text
        anonymous = c.get(f"/v1/responses/{r.id}")
        assert anonymous.status_code == 401


def test_background_runs_detached_and_completes(client_factory):
    with client_factory(scripted={"token_delay": 0.01}) as c:
        sdk = sdk_of(c)
        r = sdk.responses.create(model="primary", input="Hello", background=True, max_output_tokens=20)
        assert r.status == "in_progress" and r.background
        deadline = time.monotonic() + 30
        while (got := sdk.responses.retrieve(r.id)).status in ("queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert got.status == "incomplete" and got.usage.output_tokens == 20 and got.output_text


def test_cancel_aborts_a_background_response_in_the_engine(client_factory):
    with client_factory(scripted={"token_delay": 0.05}) as c:
        sdk = sdk_of(c)
        engine = c.app.state.runtime.registry.readers["primary-0"].engine
        r = sdk.responses.create(model="primary", input="Hello", background=True, max_output_tokens=1000)
        deadline = time.monotonic() + 10
        while not engine.running:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cancelled = sdk.responses.cancel(r.id)
        assert cancelled.status == "cancelled" and not engine.running
        assert sdk.responses.retrieve(r.id).status == "cancelled"
        # a finished one is answered as it is; a foreground one cannot be cancelled
        assert sdk.responses.cancel(r.id).status == "cancelled"
        fg = sdk.responses.create(model="primary", input="Hello", max_output_tokens=2)
        with pytest.raises(openai.BadRequestError):
            sdk.responses.cancel(fg.id)


def test_a_failed_background_response_says_why(client_factory):
    with client_factory(scripted={"fail_after_tokens": 2, "token_delay": 0.01}) as c:
        sdk = sdk_of(c)
        r = sdk.responses.create(model="primary", input="Hello", background=True, max_output_tokens=50)
        deadline = time.monotonic() + 30
        while (got := sdk.responses.retrieve(r.id)).status in ("queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert got.status == "failed" and got.error.message


def test_a_stream_that_fails_ends_with_response_failed(client_factory):
    with client_factory(scripted={"fail_after_tokens": 2}) as c:
        r = c.post("/v1/responses", json={"model": "primary", "input": "Hello", "stream": True})
        kinds = [json.loads(line[6:])["type"] for line in r.text.splitlines() if line.startswith("data: ")]
        assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
