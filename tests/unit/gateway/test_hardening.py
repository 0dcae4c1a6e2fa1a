"""Authentication, limits, admission control, deadlines, draining and CORS (scripted engine)."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from gateway.app import create_apps
from gateway.errors import NotReady
from gateway.settings import ReaderSettings
from tests.sse import sse_events
from tests.unit.conftest import make_settings

KEY = "sk-test-4711-0123456789"
ADMIN = "sk-admin-0815-0123456789"


@pytest.fixture
def apps():
    settings = make_settings(api_keys=[KEY, "sk-other-0123456789"], admin_api_keys=[ADMIN])
    main, management, oai = create_apps(settings)
    with TestClient(main, raise_server_exceptions=False) as m:
        yield m, TestClient(management, raise_server_exceptions=False), TestClient(oai, raise_server_exceptions=False)


def _example_path(path: str) -> str:
    return (
        path.replace("{reader_id}", "primary-0").replace("{model_id:path}", "primary").replace("{model_id}", "primary")
    )


def test_every_route_on_every_port_needs_a_key(apps):
    checked = 0
    for client in apps:
        for route in client.app.routes:
            if not isinstance(route, APIRoute):
                continue
            for method in route.methods:
                path = _example_path(route.path)
                if path in ("/healthz", "/readyz", "/health", "/ping", "/version", "/"):  # probes, the playground
                    continue
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": KEY}):
                    r = client.request(method, path, headers=headers, json={})
                    assert r.status_code == 401, (method, path, headers, r.status_code)
                    assert r.headers["www-authenticate"] == "Bearer"
                checked += 1
    assert checked > 30
    for client in apps:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/version").json()["version"]


def test_right_keys_pass_in_either_header(apps):
    main, management, oai = apps
    body = {"text": "x", "max_new_tokens": 2}
    assert main.post("/generate", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert main.post("/generate", json=body, headers={"X-API-Key": "sk-other-0123456789"}).status_code == 200
    r = oai.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    # the management port takes admin keys only; admin keys may also infer
    denied = management.get("/reader_groups", headers={"X-API-Key": KEY})
    assert denied.status_code == 403 and denied.json()["type"] == "permission_error"
    assert management.get("/reader_groups", headers={"X-API-Key": ADMIN}).status_code == 200
    assert main.post("/generate", json=body, headers={"X-API-Key": ADMIN}).status_code == 200


def test_401_bodies_in_each_surface_shape(apps):
    main, _, oai = apps
    assert main.post("/generate", json={}).json()["type"] == "authentication_error"
    assert oai.post("/v1/chat/completions", json={}).json()["error"]["type"] == "authentication_error"
    assert main.post("/v1/embeddings", json={}).json()["error"]["code"] == 401


def test_keys_file_with_plain_and_hashed_keys(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team keys\nsk-plain-0123456789\nsha256:{hashlib.sha256(b'sk-hashed-0123456789').hexdigest()}\n")
    main, _, _ = create_apps(make_settings(api_keys_file=keys))
    with TestClient(main) as c:
        for key, status in (("sk-plain-0123456789", 200), ("sk-hashed-0123456789", 200), ("sha256:nope", 401)):
            assert c.get("/status", headers={"X-API-Key": key}).status_code == status


def test_body_size_limit(client_factory):
    with client_factory(max_body_bytes=2048) as c:
        r = c.post("/generate", content=json.dumps({"text": "x" * 5000}), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["type"] == "request_too_large"

        def chunks():  # no Content-Length: counted while read
            yield b'{"text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        r = c.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_draining_refuses_new_requests_but_not_probes(client):
    client.app.state.runtime.draining = True
    try:
        r = client.post("/generate", json={"text": "x"})
        assert r.status_code == 503 and "shutting down" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
    finally:
        client.app.state.runtime.draining = False


def slow_reader(**extra):
    return [
        ReaderSettings(
            id="primary-0", kind="scripted", model="scripted", scripted={"token_delay": 0.02, "eos_after": 500}, **extra
        )
    ]


def test_admission_control_429_with_retry_after(client_factory):
    with client_factory(readers=slow_reader(max_in_flight=1)) as c:
        results = []

        def one():
            results.append(c.post("/generate", json={"text": "x", "max_new_tokens": 30}))

        first = threading.Thread(target=one)
        first.start()
        time.sleep(0.15)
        r = c.post("/generate", json={"text": "x", "max_new_tokens": 2})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["type"] == "rate_limit_error"
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        first.join()
        assert results[0].status_code == 200
        assert c.app.state.runtime.registry.rejections == 2
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 2}).status_code == 200


def test_deadline_buffered_and_streamed(client_factory):
    with client_factory(readers=slow_reader()) as c:
        engine = c.app.state.runtime.registry.readers["primary-0"].engine
        r = c.post("/generate", json={"text": "x", "max_new_tokens": 200, "timeout": 0.2})
        assert r.status_code == 504 and r.json()["type"] == "timeout"
        r = c.post("/generate", json={"text": "x", "max_new_tokens": 200}, headers={"X-Request-Timeout": "0.2"})
        assert r.status_code == 504
        r = c.post("/generate_stream", json={"text": "x", "max_new_tokens": 200, "timeout": 0.2})
        assert r.status_code == 200
        events = sse_events(r.text)
        assert events[-1][0] == "error" and json.loads(events[-1][1])["type"] == "timeout"
        r = c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 200},
            headers={"X-Request-Timeout": "0.2"},
        )
        assert '"type": "timeout"' in r.text and r.text.rstrip().endswith("data: [DONE]")
        assert len(engine.aborted) == 4 and not engine.running  # every engine request was aborted
        r = c.post("/generate", json={"text": "x", "timeout": 99999})
        assert r.status_code == 400 and r.json()["field"] == "timeout"
        r = c.post("/generate", json={"text": "x"}, headers={"X-Request-Timeout": "soon"})
        assert r.status_code == 400 and r.json()["field"] == "x-request-timeout"


def test_server_default_deadline(client_factory):
    with client_factory(readers=slow_reader(), request_timeout_seconds=0.2) as c:
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 200}).status_code == 504
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 2}).status_code == 200


def test_cut_all_stops_streams_with_a_clear_error(client_factory):
    with client_factory(readers=slow_reader()) as c:
        rt = c.app.state.runtime
        out = {}

        def stream():
            out["r"] = c.post("/generate_stream", json={"text": "x", "max_new_tokens": 300})

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 5
        while not rt.pipeline.deadlines:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert c.portal.call(rt.cut_all, NotReady("the server is shutting down; the request was stopped")) == 1
        t.join()
        events = sse_events(out["r"].text)
        assert events[-1][0] == "error" and "shutting down" in json.loads(events[-1][1])["detail"]


def test_priority_header_and_prompt_limit(client_factory):
    with client_factory(readers=slow_reader(), max_user_batch_size=64) as c:
        r = c.post("/generate", json={"text": "x"}, headers={"X-Priority": "high"})
        assert r.status_code == 400 and r.json()["field"] == "x-priority"
    readers = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", scripted={"max_prompt_tokens": 8})]
    with client_factory(readers=readers) as c:
        # Takeoff cuts a prompt beyond the server's limit to its last tokens; OpenAI refuses it
        r = c.post("/generate", json={"text": "0123456789", "return_metadata": True})
        assert r.status_code == 200 and r.json()["metadata"]["truncated_prompt_tokens"] == 2
        r = c.post("/v1/completions", json={"prompt": "0123456789"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "context_length_exceeded"
        assert c.post("/v1/completions", json={"prompt": "01234567"}).status_code == 200


def test_cors_allow_list(client_factory):
    with client_factory(cors_allow_origins=["https://app.example"], api_keys=[KEY]) as c:
        pre = c.options(
            "/generate",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        r = c.post(
            "/generate",
            json={"text": "x", "max_new_tokens": 2},
            headers={"Origin": "https://app.example", "X-API-Key": KEY},
        )
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options(
            "/generate", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_no_keys_on_a_public_host_exits_2_before_loading(artifacts):
    from tests.servers import start_gateway

    gw = start_gateway(artifacts / "gateway-open.log", "configs/scripted.yaml", {"GATEWAY_HOST": "0.0.0.0"}, wait=False)
    try:
        assert gw.proc.wait(60) == 2
        log = gw.log_path.read_text()
        assert "refusing to serve 0.0.0.0 without API keys" in log
        assert "GATEWAY_API_KEYS" in log and "GATEWAY_ALLOW_UNAUTHENTICATED" in log
        assert "loading models" not in log and "Uvicorn running" not in log
    finally:
        gw.stop()
    with pytest.raises(RuntimeError, match="without API keys"):
        create_apps(make_settings(host="0.0.0.0"))
    create_apps(make_settings(host="0.0.0.0", allow_unauthenticated=True))  # said on purpose


@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate", {"text": "hi", "sampling_temperature": 1.0}),
        ("/api/generate-one", {"prompt": "hi", "request_id": "seed-test", "generation_config": {}}),
        ("/v1/chat/completions", {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": "primary", "prompt": "hi"}),
        ("/v1/responses", {"model": "primary", "input": "hi"}),
    ],
)
def test_a_seed_past_64_bits_is_a_400_naming_it(client, path, body):
    """The engine seeds a 64-bit generator: a larger seed would fail inside its worker."""

    def with_seed(seed: int) -> dict:
        if "generation_config" in body:  # generate-one carries it in its generation config
            return {**body, "generation_config": {"seed": seed}}
        return {**body, "seed": seed}

    r = client.post(path, json=with_seed(2**63))
    assert r.status_code == 400 and "seed" in r.text, r.text
    r = client.post(path, json=with_seed(2**63 - 1))
    assert r.status_code == 200, r.text


def test_a_huge_max_output_tokens_is_a_400_not_a_500(client):
    """Echoed in the response object: past 64 bits it would not serialize (the fuzzer's find)."""
    r = client.post("/v1/responses", json={"input": "hi", "max_output_tokens": 2**70})
    assert r.status_code == 400 and "max_output_tokens" in r.text, r.text
