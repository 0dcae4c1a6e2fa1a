"""Structured generation on the real engine: every surface, every backend that works here."""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

from tests.servers import start_gateway
from tests.sse import sse_events

pytestmark = pytest.mark.e2e

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}
DATE = r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
ASK_PERSON = "Invent a person and describe them in JSON."
ASK_DATE = "When did the Berlin wall fall? Answer with a date."


def check_json(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema)


def takeoff(http: httpx.Client, **body):
    body.setdefault("use_chat_template", True)
    body.setdefault("return_metadata", True)
    body.setdefault("max_new_tokens", 120)
    r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_takeoff_regex_and_schema(http):
    for field in ("regex_str", "regex_string"):
        out = takeoff(http, text=ASK_DATE, **{field: DATE})
        assert out["metadata"]["finish_reason"] == "stop"
        assert re.fullmatch(DATE, out["text"])
    out = takeoff(http, text=ASK_PERSON, json_schema=PERSON)
    assert out["metadata"]["finish_reason"] == "stop"
    check_json(out["text"], PERSON)
    # the Takeoff client may send the schema as a JSON string; a regex wins over a schema
    out = takeoff(http, text=ASK_DATE, json_schema=json.dumps(PERSON), regex_string=DATE)
    assert re.fullmatch(DATE, out["text"])


def test_takeoff_stream_pieces_validate(http):
    r = http.post(
        "/generate_stream",
        json={"text": ASK_PERSON, "json_schema": PERSON, "use_chat_template": True, "max_new_tokens": 120},
    )
    events = sse_events(r.text)
    text = "".join(d for e, d in events if e == "message")
    assert events[-1] == ("end", "[DONE]")
    check_json(text, PERSON)


def test_limit_reached_is_reported_not_hidden(http):
    out = takeoff(http, text=ASK_PERSON, json_schema=PERSON, max_new_tokens=5)
    assert out["metadata"]["finish_reason"] == "length" and out["metadata"]["generated_tokens"] == 5
    with pytest.raises(json.JSONDecodeError):
        json.loads(out["text"])


def test_openai_response_format_and_structured_outputs(gateway):
    client = openai.OpenAI(base_url=gateway.openai_url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": ASK_PERSON}]
    r = client.chat.completions.create(
        model="primary",
        messages=messages,
        max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}},
    )
    assert r.choices[0].finish_reason == "stop"
    check_json(r.choices[0].message.content, PERSON)
    r = client.chat.completions.create(
        model="primary",
        messages=[{"role": "user", "content": ASK_DATE}],
        max_tokens=30,
        extra_body={"structured_outputs": {"regex": DATE}},
    )
    assert re.fullmatch(DATE, r.choices[0].message.content)
    r = client.completions.create(
        model="primary",
        prompt="My favourite colour is",
        max_tokens=10,
        extra_body={"structured_outputs": {"choice": ["red", "green", "blue"]}},
    )
    assert r.choices[0].text in ("red", "green", "blue")
    chunks = client.chat.completions.create(
        model="primary",
        messages=messages,
        max_tokens=120,
        stream=True,
        extra_body={"structured_outputs": {"json": PERSON}},
    )
    check_json("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), PERSON)


def test_generate_one_generation_config_extension(http):
    def one(**cfg):
        body = {
            "request_id": uuid.uuid4().hex,
            "prompt": ASK_PERSON,
            "stream_response": False,
            "generation_config": {"max_new_tokens": 120, **cfg},
        }
        r = http.post("/api/generate-one", json=body)
        assert r.status_code == 200, r.text
        return r.text

    check_json(one(json_schema=PERSON), PERSON)
    assert re.fullmatch(DATE, one(regex=DATE))
    assert one(choice=["yes", "no"]) in ("yes", "no")


def test_eight_different_schemas_at_once(gateway):
    schemas = [
        {
            "type": "object",
            "properties": {f"field{i}": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": [f"field{i}"],
            "additionalProperties": False,
        }
        for i in range(4)
    ] + [
        {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2, "maxItems": 3},
        {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        },
        {"enum": ["north", "south", "east", "west"]},
        {
            "type": "object",
            "properties": {
                "n": {"type": "integer", "minimum": -9, "maximum": 9},
                "s": {"type": "string", "maxLength": 5},
            },
            "required": ["n", "s"],
            "additionalProperties": False,
        },
    ]

    def run(schema):
        with gateway.client() as c:
            return takeoff(c, text="Give me some JSON.", json_schema=schema, max_new_tokens=60)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, schemas))
    for schema, out in zip(schemas, results, strict=True):
        assert out["metadata"]["finish_reason"] == "stop", out
        check_json(out["text"], schema)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"regex_string": "((("}, "regex_string"),
        ({"regex_str": "(?<=a)b"}, "regex_str"),
        ({"json_schema": {"type": "objekt"}}, "json_schema"),
        ({"json_schema": {"type": "object", "properties": {"a": {"$ref": "#/defs/missing"}}}}, "json_schema"),
        ({"json_schema": "{broken"}, "json_schema"),
        ({"regex_string": "a", "constrained_decoding_backend": "magic"}, "constrained_decoding_backend"),
        ({"regex_string": "a", "constrained_decoding_backend": "outlines"}, "constrained_decoding_backend"),
    ],
)
def test_invalid_constraints_are_400_and_the_server_keeps_serving(http, body, field):
    for path in ("/generate", "/generate_stream"):
        r = http.post(path, json={"text": "x", **body})
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field
    assert takeoff(http, text=ASK_DATE, regex_string=DATE)["metadata"]["finish_reason"] == "stop"


def test_openai_invalid_schema_is_bad_request(gateway):
    client = openai.OpenAI(base_url=gateway.openai_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="primary",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"structured_outputs": {"regex": "((("}},
        )
    assert info.value.body["param"] == "structured_outputs.regex"


@pytest.fixture(scope="module")
def backends(artifacts):
    """A gateway of its own whose primary group has a reader per further backend (vLLM runs
    one structured-output backend per engine); the shared gateway's reader is xgrammar.
    lm-format-enforcer's vLLM integration does not import with this vLLM build: that
    reader must fail to load, say why, and leave the others serving."""
    common = {
        "consumer_group": "primary",
        "model": "embedded:smollm2-135m-instruct",
        "dtype": "float32",
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kv_cache_gib": 1,
    }
    readers = [
        {"id": "guidance-0", "structured_outputs_backend": "guidance", **common},
        {"id": "outlines-0", "structured_outputs_backend": "outlines", **common},
        {"id": "lmfe-0", "structured_outputs_backend": "lm-format-enforcer", **common},
    ]
    gw = start_gateway(artifacts / "gateway-backends.log", env={"GATEWAY_READERS": json.dumps(readers)}, wait=False)
    try:
        gw.wait_loaded()
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize("backend", ["guidance", "outlines"])
def test_each_backend_on_each_surface(backends, backend):
    with backends.client() as http:
        out = takeoff(http, text=ASK_DATE, regex_string=DATE, constrained_decoding_backend=backend)
        assert out["metadata"]["finish_reason"] == "stop" and re.fullmatch(DATE, out["text"])
        out = takeoff(http, text=ASK_PERSON, json_schema=PERSON, constrained_decoding_backend=backend)
        assert out["metadata"]["finish_reason"] == "stop"
        check_json(out["text"], PERSON)
        body = {
            "request_id": uuid.uuid4().hex,
            "prompt": ASK_DATE,
            "stream_response": False,
            "generation_config": {"regex": DATE, "constrained_decoding_backend": backend, "max_new_tokens": 30},
        }
        assert re.fullmatch(DATE, http.post("/api/generate-one", json=body).text)
        bad = http.post("/generate", json={"text": "x", "regex_string": "(((", "constrained_decoding_backend": backend})
        assert bad.status_code == 400 and bad.json()["field"] == "regex_string"
    client = openai.OpenAI(base_url=backends.openai_url + "/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(
        model="primary",
        messages=[{"role": "user", "content": ASK_PERSON}],
        max_tokens=120,
        extra_body={"structured_outputs": {"json": PERSON, "backend": backend}},
    )
    assert r.choices[0].finish_reason == "stop"
    check_json(r.choices[0].message.content, PERSON)


def test_takeoff_backend_names_and_a_failed_backend(backends):
    status = httpx.get(backends.management_url + "/status").json()["live_readers"]
    assert status["lmfe-0"]["state"] == "failed"
    assert "lm-format-enforcer" in status["lmfe-0"]["error"]
    with backends.client() as http:
        # "lmfe" is Takeoff's name for lm-format-enforcer: its only reader failed
        r = http.post("/generate", json={"text": "x", "regex_string": "a", "constrained_decoding_backend": "lmfe"})
        assert r.status_code == 400 and "lmfe-0, failed" in r.json()["detail"]
        # without a backend, any ready reader of the group serves
        out = takeoff(http, text=ASK_DATE, regex_string=DATE)
        assert re.fullmatch(DATE, out["text"])


def test_a_pattern_the_vocabulary_cannot_produce_is_the_clients_error(http):
    """The fuzzer's find: a regex no token can start (the engine ends the request at its
    first step) is a 400 naming the field, never a 500; a stream says it in its error event."""
    body = {"text": "hi", "regex_string": "\u00a7\u0006"}
    r = http.post("/generate", json=body)
    assert r.status_code == 400 and r.json()["field"] == "regex_string", r.text
    events = sse_events(http.post("/generate_stream", json=body).text)
    assert events[-1][0] == "error"
    error = json.loads(events[-1][1])
    assert error["type"] == "invalid_request_error" and error["field"] == "regex_string"
    assert takeoff(http, text=ASK_DATE, regex_string=DATE)["metadata"]["finish_reason"] == "stop"
