"""generate-one / generate-batch and the /chat service on the scripted engine."""

from __future__ import annotations

import json

import openai
import pytest

from gateway.settings import ReaderSettings
from tests.sse import sse_events


def one(client, **body):
    body.setdefault("request_id", "r1")
    body.setdefault("prompt", "hello")
    return client.post("/api/generate-one", json=body)


def test_generate_one_buffered_is_plain_text(client):
    r = one(client, stream_response=False, generation_config={"max_new_tokens": 5})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert len(r.text) == 5


def test_generate_one_streams_plain_text(client):
    with client.stream(
        "POST",
        "/api/generate-one",
        json={"request_id": "s", "prompt": "hello", "generation_config": {"max_new_tokens": 6}},
    ) as r:
        assert r.headers["content-type"].startswith("text/plain")
        chunks = [c for c in r.iter_text() if c]
    assert len("".join(chunks)) == 6


def test_only_new_tokens_false_includes_the_prompt(client):
    r = one(
        client,
        request_id="p",
        prompt="abc",
        stream_response=False,
        only_new_tokens=False,
        generation_config={"max_new_tokens": 3},
    )
    assert r.text.startswith("abc") and len(r.text) == 6
    streamed = one(
        client, request_id="p2", prompt="abc", only_new_tokens=False, generation_config={"max_new_tokens": 3}
    )
    assert streamed.text == r.text


def test_continuation_extends_the_stored_sequence(client):
    cfg = {"max_new_tokens": 4}
    first = one(client, request_id="c", prompt="abcdef", stream_response=False, generation_config=cfg).text
    # the prompt of a repeated id is ignored: the generation continues
    second = one(
        client, request_id="c", prompt="IGNORED", stream_response=False, only_new_tokens=False, generation_config=cfg
    ).text
    assert second.startswith("abcdef" + first)
    assert "IGNORED" not in second and len(second) == 6 + 4 + 4


def test_streamed_generation_is_stored_too(client):
    cfg = {"max_new_tokens": 3}
    first = one(client, request_id="st", prompt="xyz", generation_config=cfg).text
    full = one(client, request_id="st", prompt="", only_new_tokens=False, generation_config=cfg).text
    assert full.startswith("xyz" + first)


def test_end_of_sequence_is_not_stored(client_factory):
    with client_factory(scripted={"eos_after": 2}) as c:
        first = one(c, request_id="e", prompt="ab", stream_response=False).text
        full = one(c, request_id="e", prompt="", stream_response=False, only_new_tokens=False).text
        assert len(first) == 2
        assert full.startswith("ab" + first) and "</s>" not in full


def test_empty_prompt_without_history_is_400(client):
    r = one(client, request_id="never-seen", prompt="", stream_response=False)
    assert r.status_code == 400 and r.json()["field"] == "prompt"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_id": 5}, "request_id"),
        ({"request_id": ""}, "request_id"),
        ({"request_id": "x" * 300}, "request_id"),
        ({"prompt": None}, "prompt"),
        ({"generation_config": {"num_beams": 0}}, "generation_config.num_beams"),
        ({"generation_config": {"num_beams": 50}}, "generation_config.num_beams"),
        ({"generation_config": {"top_p": 2}}, "generation_config.top_p"),
        ({"generation_config": {"max_new_tokens": "a lot"}}, "generation_config.max_new_tokens"),
        ({"stream_response": "maybe"}, "stream_response"),
    ],
)
def test_generate_one_bad_input(client, body, field):
    r = one(client, **body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


def test_min_new_tokens(client_factory):
    with client_factory(scripted={"eos_after": 2}) as c:
        assert len(one(c, request_id="m1", stream_response=False).text) == 2
        r = one(c, request_id="m2", stream_response=False, generation_config={"min_new_tokens": 6, "max_new_tokens": 8})
        assert len(r.text) >= 6
        r = one(c, request_id="m3", generation_config={"min_new_tokens": 9, "max_new_tokens": 8})
        assert r.status_code == 400 and r.json()["field"] == "generation_config.min_new_tokens"


def test_unknown_generation_config_keys_are_ignored(client):
    r = one(
        client, stream_response=False, generation_config={"max_new_tokens": 2, "pad_token_id": 0, "eos_token_id": 2}
    )
    assert r.status_code == 200


def test_defaults_come_from_settings(client_factory):
    with client_factory(generate_api_defaults={"max_new_tokens": 7}) as c:
        assert len(one(c, stream_response=False).text) == 7


def test_beam_search_is_accepted_streamed_and_not(client):
    cfg = {"num_beams": 3, "max_new_tokens": 4}
    assert len(one(client, request_id="b1", stream_response=False, generation_config=cfg).text) == 4
    assert len(one(client, request_id="b2", generation_config=cfg).text) == 4


def batch(client, prompts, **body):
    return client.post("/api/generate-batch", json={"prompts": prompts, **body})


def test_generate_batch_order_and_shape(client):
    prompts = [{"request_id": "a", "prompt": "first"}, {"request_id": "b", "prompt": "second one"}]
    r = batch(client, prompts, generation_config={"max_new_tokens": 4})
    assert r.status_code == 200
    body = r.json()
    assert [x["request_id"] for x in body] == ["a", "b"]
    assert all(set(x) == {"request_id", "response"} for x in body)
    single = [
        one(
            client,
            request_id=f"solo-{p['request_id']}",
            prompt=p["prompt"],
            stream_response=False,
            generation_config={"max_new_tokens": 4},
        ).text
        for p in prompts
    ]
    assert [x["response"] for x in body] == single


def test_generate_batch_with_prompts(client):
    prompts = [{"request_id": "pa", "prompt": "first"}]
    body = batch(client, prompts, only_new_tokens=False, generation_config={"max_new_tokens": 2}).json()
    assert body[0]["prompt"] == "first" and len(body[0]["response"]) == 2


def test_generate_batch_continuation_depends_on_order(client):
    cfg = {"max_new_tokens": 3}
    prompts = [{"request_id": "x", "prompt": "aaa"}, {"request_id": "y", "prompt": "bbb"}]
    batch(client, prompts, generation_config=cfg)
    again = batch(client, prompts, only_new_tokens=False, generation_config=cfg).json()
    assert [len(x["prompt"]) for x in again] == [6, 6]  # continued: prompt + 3 earlier tokens
    swapped = batch(client, prompts[::-1], only_new_tokens=False, generation_config=cfg).json()
    assert [x["prompt"] for x in swapped] == ["bbb", "aaa"]  # another order, another key: fresh start


@pytest.mark.parametrize(
    ("prompts", "field"),
    [
        ([], "prompts"),
        ([{"request_id": "a", "prompt": "x"}, {"request_id": "a", "prompt": "y"}], "prompts[1].request_id"),
        ([{"request_id": "a"}], "prompts[0].prompt"),
        ([{"request_id": "a", "prompt": ""}], "prompts[0].prompt"),
    ],
)
def test_generate_batch_bad_input(client, prompts, field):
    r = batch(client, prompts)
    assert r.status_code == 400 and r.json()["field"] == field


def test_chat_service_status(client_factory):
    with client_factory(chat_system_prompt="You are terse.") as c:
        status = c.get("/chat").json()
        assert status == {
            "status": "running",
            "llm_serving_url": "http://testserver",
            "model_name": "scripted",
            "max_new_tokens": 128,
            "device": "cpu",
            "do_sample": True,
            "system_prompt": "You are terse.",
        }
    with client_factory(scripted={"start_delay": 3600}, wait_ready=False) as c:
        assert c.get("/chat").json() == {"status": "not started", "message": "You need to start the service first."}


def test_chat_service_completions_roleless_and_system_prompt(client_factory):
    with client_factory(chat_system_prompt="SYS") as c:
        body = {"model": "bigscience/bloomz-1b1", "messages": [{"content": "hi"}], "max_tokens": 2, "stream": False}
        r = c.post("/chat/completions", json=body)
        assert r.status_code == 200
        out = r.json()
        assert out["model"] == "bigscience/bloomz-1b1" and out["object"] == "chat.completion"
        assert out["choices"][0]["message"]["role"] == "assistant"
        assert out["usage"]["prompt_tokens"] == len("<|system|>SYS\n<|user|>hi\n<|assistant|>")
        # an explicit system message replaces the configured one
        body["messages"] = [{"role": "system", "content": "S2"}, {"content": "hi"}]
        assert c.post("/chat/completions", json=body).json()["usage"]["prompt_tokens"] == len(
            "<|system|>S2\n<|user|>hi\n<|assistant|>"
        )


def test_chat_service_plain_string_messages_are_the_users(client):
    # the service declares `messages (List[str])`
    r = client.post("/chat/completions", json={"model": "m", "messages": ["hi", "there"], "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len("<|user|>hi\n<|user|>there\n<|assistant|>")
    mixed = {"messages": [{"role": "system", "content": "S"}, "hi"], "max_tokens": 2}
    assert client.post("/chat/completions", json=mixed).json()["usage"]["prompt_tokens"] == len(
        "<|system|>S\n<|user|>hi\n<|assistant|>"
    )
    bad = client.post("/chat/completions", json={"messages": [7]})
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("messages[0]")


def test_chat_service_seed_example_with_the_sdk_at_the_root(client):
    sdk = openai.OpenAI(api_key="OPENAI_API_KEY", base_url="http://testserver/", http_client=client, max_retries=0)
    stream = sdk.chat.completions.create(
        messages=[{"role": "user", "content": "tell me about Microsoft"}], model="gpt-4o", stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text


def test_chat_service_stream_is_openai_chunks(client):
    r = client.post("/chat/completions", json={"messages": [{"content": "x"}], "stream": True, "max_tokens": 3})
    events = sse_events(r.text)
    assert events[-1][1] == "[DONE]"
    assert json.loads(events[0][1])["object"] == "chat.completion.chunk"


def test_chat_service_defaults_to_default_max_new_tokens(client_factory):
    with client_factory(default_max_new_tokens=5, scripted={"eos_after": 100}) as c:
        r = c.post("/chat/completions", json={"messages": [{"content": "x"}]})
        assert r.json()["usage"]["completion_tokens"] == 5


def test_chat_service_errors_are_openai_shaped(client):
    r = client.post("/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"


def test_embeddings_without_an_embedding_model_is_404(client):
    r = client.post("/embeddings", json={"model": "m", "input": ["a"]})
    assert r.status_code == 404 and "can embed" in r.json()["error"]["message"]


def test_generate_api_uses_the_primary_group(client_factory):
    readers = [ReaderSettings(id="other", consumer_group="other", kind="scripted")]
    with client_factory(readers=readers) as c:
        r = one(c, stream_response=False)
        assert r.status_code == 404 and "primary" in r.json()["detail"]


def test_chat_status_answers_while_the_group_is_at_capacity(client_factory):
    readers = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", max_in_flight=1)]
    with client_factory(readers=readers) as c:
        registry = c.app.state.runtime.registry
        release = registry.readers["primary-0"].acquire()  # one request in flight: the limit
        assert c.post("/chat/completions", json={"messages": [{"content": "x"}]}).status_code == 429
        assert registry.rejections == 1
        status = c.get("/chat")
        assert status.status_code == 200 and status.json()["status"] == "running"
        assert registry.rejections == 1  # a status read is neither refused nor counted
        release()
