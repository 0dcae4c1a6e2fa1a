"""Scoped keys, tenant-scoped continuation, the locked-down management API and local
mode (scripted engine, in process)."""

from __future__ import annotations

import hashlib
import time

import pytest
import yaml

from gateway.settings import ReaderSettings
from tests.unit.conftest import clear_of_window_edge

A, B, ADMIN = "sk-team-a-0123456789", "sk-team-b-0123456789", "sk-admin-0123456789"


def keys_file(tmp_path, **limits_b):
    path = tmp_path / "keys.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"name": "team-a", "key": A},
                    {
                        "name": "team-b",
                        "sha256": hashlib.sha256(B.encode()).hexdigest(),
                        "groups": ["primary"],
                        **limits_b,
                    },
                    {"name": "ops", "key": ADMIN, "scopes": ["admin", "inference"]},
                ]
            }
        )
    )
    return path


def h(key):
    return {"Authorization": f"Bearer {key}"}


def one(c, key, **body):
    payload = {"request_id": "chat-42", "prompt": "secret plan", "stream_response": False, "only_new_tokens": False}
    payload.update(body)
    return c.post("/api/generate-one", json=payload, headers=h(key))


def test_continuations_are_invisible_to_other_keys(client_factory, tmp_path):
    with client_factory(api_keys_file=keys_file(tmp_path), scripted={"eos_after": 4}) as c:
        first = one(c, A, generation_config={"max_new_tokens": 4})
        assert first.status_code == 200 and first.text.startswith("secret plan")
        intruder = one(c, B, prompt="hello", generation_config={"max_new_tokens": 4})
        assert "secret plan" not in intruder.text and intruder.text.startswith("hello")
        # the owner continues from its own sequence, untouched by the intruder's turn
        again = one(c, A, prompt="", generation_config={"max_new_tokens": 4})
        assert again.text.startswith(first.text) and "hello" not in again.text
        batch = {"prompts": [{"request_id": "chat-42", "prompt": "mine"}], "only_new_tokens": False}
        ra = c.post("/api/generate-batch", json=batch, headers=h(A)).json()[0]["prompt"]
        rb = c.post(
            "/api/generate-batch", json={**batch, "prompts": [{"request_id": "chat-42", "prompt": "x"}]}, headers=h(B)
        )
        ra2 = c.post(
            "/api/generate-batch", json={**batch, "prompts": [{"request_id": "chat-42", "prompt": ""}]}, headers=h(A)
        )
        assert rb.json()[0]["prompt"] == "x" and ra2.json()[0]["prompt"].startswith(ra)


def test_scopes_groups_and_the_management_port(client_factory, tmp_path):
    readers = [
        ReaderSettings(id="primary-0", kind="scripted", model="scripted"),
        ReaderSettings(id="other-0", consumer_group="other", kind="scripted", model="scripted"),
    ]
    with client_factory(readers=readers, api_keys_file=keys_file(tmp_path)) as c:
        for key in (A, B):
            r = c.management.get("/reader_groups", headers=h(key))
            assert r.status_code == 403 and r.json()["type"] == "permission_error"
            assert c.management.delete("/reader/primary-0", headers=h(key)).status_code == 403
        assert c.management.get("/reader_groups", headers=h(ADMIN)).status_code == 200
        body = {"text": "x", "max_new_tokens": 2, "consumer_group": "other"}
        assert c.post("/generate", json=body, headers=h(A)).status_code == 200
        denied = c.post("/generate", json=body, headers=h(B))
        assert denied.status_code == 403 and "other" in denied.json()["detail"]


def test_per_key_in_flight_and_token_limits(client_factory, tmp_path):
    path = keys_file(tmp_path, max_in_flight=1, tokens_per_minute=40)
    with client_factory(api_keys_file=path) as c:
        clear_of_window_edge("minute")
        principal = c.app.state.runtime.keys.authenticate(B)
        principal.usage.in_flight = 1  # one request of team-b in flight
        r = c.post("/generate", json={"text": "x", "max_new_tokens": 2}, headers=h(B))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 2}, headers=h(A)).status_code == 200
        principal.usage.in_flight = 0
        ok = c.post("/generate", json={"text": "0123456789", "max_new_tokens": 40}, headers=h(B))
        assert ok.status_code == 200  # 10 prompt + 40 generated tokens: the minute's budget is used
        spent = c.post("/generate", json={"text": "x", "max_new_tokens": 2}, headers=h(B))
        assert spent.status_code == 429 and int(spent.headers["retry-after"]) >= 1
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 2}, headers=h(A)).status_code == 200


def test_a_rotated_keys_file_takes_effect(client_factory, tmp_path):
    path = keys_file(tmp_path)
    with client_factory(api_keys_file=path) as c:
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 1}, headers=h(B)).status_code == 200
        path.write_text(yaml.safe_dump({"keys": [{"name": "team-a", "key": A}]}))
        time.sleep(1.1)  # the file is checked at most once a second
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 1}, headers=h(B)).status_code == 401
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 1}, headers=h(A)).status_code == 200


def test_the_access_log_names_the_key_never_the_key_itself(client_factory, tmp_path, caplog):
    with client_factory(api_keys_file=keys_file(tmp_path)) as c, caplog.at_level("INFO", "gateway.access"):
        c.post("/generate", json={"text": "x", "max_new_tokens": 1}, headers=h(A))
    lines = [r.fields for r in caplog.records if r.name == "gateway.access"]
    assert any(line["key"] == "team-a" for line in lines) and not any(A in str(line) for line in lines)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model_name": "embedded:all-minilm-l6-v2", "kind": "scripted"}, "kind"),
        (
            {"model_name": "embedded:smollm2-135m-instruct", "engine_args": {"trust_remote_code": True}},
            "engine_args.trust_remote_code",
        ),
        ({"model_name": "/etc/models/x"}, "model_name"),
        ({"model_name": "org/some-model"}, "model_name"),
        ({"model_name": "embedded:smollm2-135m-instruct", "lora_adapters": {"a": "/root/adapter"}}, "lora_adapters.a"),
    ],
)
def test_the_management_api_refuses_what_is_not_allowed(client_factory, body, field):
    with client_factory(allowed_reader_kinds=["vllm", "sentence-transformers"], model_roots=["/srv/models"]) as c:
        r = c.management.post("/reader", json={"consumer_group": "x", **body})
        assert r.status_code == 400 and r.json()["field"] == field, r.text
        assert "x" not in c.app.state.runtime.registry.groups()


def test_reader_caps(client_factory):
    with client_factory(max_readers=2, reader_defaults={"kind": "scripted"}) as c:
        assert c.management.post("/reader", json={"model": "m", "consumer_group": "g"}).status_code == 201
        r = c.management.post("/reader", json={"model": "m", "consumer_group": "g"})
        assert r.status_code == 409 and "maximum of 2 readers" in r.json()["detail"]
    slow = {"kind": "scripted", "scripted": {"start_delay": 30}}
    with client_factory(max_concurrent_loads=1, reader_defaults=slow) as c:
        assert c.management.post("/reader?wait=false", json={"model": "m", "consumer_group": "g"}).status_code == 201
        r = c.management.post("/reader?wait=false", json={"model": "m", "consumer_group": "g"})
        assert r.status_code == 429 and r.headers["retry-after"] == "10"


def test_local_mode_answers_only_to_loopback_hosts(client_factory):
    with client_factory(trusted_hosts=[]) as c:
        r = c.get("/status", headers={"Host": "evil.example"})
        assert r.status_code == 403 and r.json()["field"] == "host"
        assert c.get("/status", headers={"Host": "127.0.0.1:3000"}).status_code == 200
        assert c.get("/status", headers={"Host": "localhost"}).status_code == 200


def test_the_page_forbids_framing_and_foreign_scripts(client):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert client.get("/ui/app.js").headers["x-frame-options"] == "DENY"


def test_only_real_preflights_skip_the_key(client_factory):
    with client_factory(api_keys=[A], cors_allow_origins=["https://app.example"]) as c:
        bare = c.options("/generate")
        assert bare.status_code == 401
        pre = c.options("/generate", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200


def test_local_mode_needs_a_loopback_peer_whatever_the_host_header_says(client_factory):
    """Without keys only this machine may call: a Host header is whatever a client writes."""
    from fastapi.testclient import TestClient

    with client_factory(trusted_hosts=[]) as c:
        stranger = TestClient(c.app, raise_server_exceptions=False, client=("10.1.2.3", 40000))
        r = stranger.get("/status", headers={"Host": "127.0.0.1:3000"})
        assert r.status_code == 403 and "this machine" in r.json()["detail"]
        assert c.get("/status", headers={"Host": "127.0.0.1:3000"}).status_code == 200
