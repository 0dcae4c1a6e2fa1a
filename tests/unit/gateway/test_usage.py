"""The usage ledger (gateway/usage.py): what each answer reported, token for token, on
every API, read back from `GET /usage` on the management port; exact across two
runtimes sharing a real Redis."""

from __future__ import annotations

import csv
import io
import json

import anthropic
import openai
import yaml

from gateway.settings import ContinuationSettings, Price, ReaderSettings, UsageSettings
from tests.unit.conftest import make_settings, running

A, B, ADMIN = "sk-usage-a-0123456789", "sk-usage-b-0123456789", "sk-usage-admin-01234567"
READERS = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", scripted={"eos_after": 12})]


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keys_file(tmp_path):
    path = tmp_path / "keys.yaml"
    keys = [
        {"name": "alice", "key": A, "tenant": "acme"},
        {"name": "bob", "key": B, "tenant": "globex"},
        {"name": "ops", "key": ADMIN, "permissions": ["admin", "inference"]},
    ]
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def usage(c, **params) -> list[dict]:
    r = c.management.get("/usage", params=params, headers=h(ADMIN))
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_the_ledger_holds_what_every_answer_reported(tmp_path):
    settings = make_settings(
        api_keys_file=keys_file(tmp_path),
        readers=READERS,
        usage=UsageSettings(prices={"scripted": Price(input_per_million=1.0, output_per_million=2.0)}),
    )
    reported: dict[str, list[int]] = {}  # api -> [prompt, output]

    def add(api: str, prompt: int, output: int) -> None:
        got = reported.setdefault(api, [0, 0])
        got[0] += prompt
        got[1] += output

    with running(settings) as c:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=A, http_client=c, max_retries=0)
        chat = sdk.chat.completions.create(model="primary", messages=[{"role": "user", "content": "hi"}], n=2)
        add("openai", chat.usage.prompt_tokens, chat.usage.completion_tokens)
        streamed = list(sdk.completions.create(model="primary", prompt=["a", "bb"], max_tokens=7, stream=True,
                                               stream_options={"include_usage": True}))  # fmt: skip
        add("openai", streamed[-1].usage.prompt_tokens, streamed[-1].usage.completion_tokens)
        claude = anthropic.Anthropic(base_url="http://testserver", api_key=A, http_client=c, max_retries=0)
        message = claude.messages.create(model="primary", max_tokens=9, messages=[{"role": "user", "content": "yo"}])
        add("anthropic", message.usage.input_tokens, message.usage.output_tokens)
        takeoff = c.post("/generate", json={"text": ["x", "yz"], "return_metadata": True}, headers=h(A)).json()
        for meta in takeoff["metadata"]:
            add("takeoff", meta["prompt_tokens"], meta["generated_tokens"])
        # another tenant, to be kept apart
        c.post("/v1/completions", json={"prompt": "other", "max_tokens": 3}, headers=h(B))

        rows = usage(c, tenant="acme", group_by="api")
        by_api = {r["api"]: r for r in rows}
        assert set(by_api) == set(reported)
        for api, (prompt, output) in reported.items():
            assert (by_api[api]["prompt_tokens"], by_api[api]["output_tokens"]) == (prompt, output), api
            assert by_api[api]["finished"] == by_api[api]["requests"]
        assert by_api["openai"]["requests"] == 2
        (acme,) = usage(c, tenant="acme", group_by="tenant,key,model")
        assert (acme["key"], acme["model"]) == ("alice", "scripted")
        expected = (acme["prompt_tokens"] * 1.0 + acme["output_tokens"] * 2.0) / 1e6
        assert abs(acme["cost"] - expected) < 1e-9
        (globex,) = usage(c, tenant="globex", group_by="tenant")
        assert (globex["requests"], globex["output_tokens"]) == (1, 3)
        # CSV, for a spreadsheet
        text = c.management.get("/usage", params={"group_by": "tenant", "format": "csv"}, headers=h(ADMIN)).text
        table = {row["tenant"]: row for row in csv.DictReader(io.StringIO(text))}
        assert table["globex"]["output_tokens"] == "3" and "requests" in table["acme"]
        # the metrics: per tenant on the management port, never on the API port
        assert 'gateway_tenant_tokens_total{kind="output",model="scripted",tenant="globex"} 3.0' in (
            c.management.get("/metrics", headers=h(ADMIN)).text
        )


def test_failed_cut_and_refused_requests_have_their_outcome(tmp_path):
    readers = [ReaderSettings(id="primary-0", kind="scripted", model="scripted",
                              scripted={"eos_after": 500, "token_delay": 0.01})]  # fmt: skip
    with running(make_settings(api_keys_file=keys_file(tmp_path), readers=readers)) as c:
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 400, "timeout": 0.2}, headers=h(A))
        assert r.status_code == 504
        (row,) = usage(c, tenant="acme", group_by="tenant")
        assert row["failed"] == 1 and row["requests"] == 1 and 0 < row["output_tokens"] < 400


def test_bad_usage_queries_are_400s_naming_the_parameter(tmp_path):
    with running(make_settings(api_keys_file=keys_file(tmp_path), readers=READERS)) as c:
        for params, name in (
            ({"group_by": "colour"}, "group_by"),
            ({"group_by": "day,day"}, "group_by"),
            ({"from": "2026-13-40"}, "from"),
            ({"from": "2026-12-06", "to": "2026-12-01"}, "to"),
            ({"from": "2020-01-01", "to": "2026-12-01"}, "from"),
            ({"format": "xml"}, "format"),
        ):
            r = c.management.get("/usage", params=params, headers=h(ADMIN))
            assert r.status_code in (400, 422) and name in json.dumps(r.json()), (params, r.text)
        assert c.management.get("/usage", headers=h(A)).status_code == 403  # an inference key


def test_two_replicas_on_redis_count_every_request_once(redis_server, tmp_path):
    settings = make_settings(
        api_keys_file=keys_file(tmp_path),
        readers=READERS,
        continuation=ContinuationSettings(backend="redis", redis_url=redis_server, key_prefix="{usage-test}:"),
    )
    with running(settings) as one, running(settings) as two:
        tokens = 0
        for i, c in enumerate((one, two, one, two, two)):
            r = c.post("/v1/completions", json={"prompt": "p" * (i + 1), "max_tokens": 4}, headers=h(A)).json()
            tokens += r["usage"]["total_tokens"]
        one_rows = usage(one, tenant="acme", group_by="tenant")
        two_rows = usage(two, tenant="acme", group_by="tenant")  # each flushes its own sums first
        (row,) = usage(one, tenant="acme", group_by="tenant")
        assert row["requests"] == 5 and row["prompt_tokens"] + row["output_tokens"] == tokens
        assert two_rows[0]["requests"] >= one_rows[0]["requests"] - 5
