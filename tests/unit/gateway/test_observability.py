"""Request ids, access logs and Prometheus series (scripted engine)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time

from gateway.settings import ReaderSettings


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:]+)(\{.*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


def test_request_id_is_kept_or_made(client):
    r = client.get("/status", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = client.get("/status").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    bad = client.get("/status", headers={"X-Request-Id": "no spaces allowed!"}).headers["x-request-id"]
    assert bad != "no spaces allowed!"


def test_one_json_access_line_per_request_without_the_prompt(client, caplog):
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        client.post("/generate", json={"text": "SECRET PROMPT", "max_new_tokens": 5}, headers={"X-Request-Id": "r-1"})
    lines = [r.fields for r in caplog.records if r.name == "gateway.access"]
    (line,) = [x for x in lines if x["request_id"] == "r-1"]
    assert line["api"] == "takeoff" and line["route"] == "/generate" and line["group"] == "primary"
    assert line["status"] == 200 and line["generated_tokens"] == 5 and line["prompt_tokens"] == 13
    assert line["ttft_ms"] is not None and line["completed"] is True
    assert "SECRET" not in json.dumps(lines)


def test_metrics_on_the_management_port(client):
    before = client.management.get("/metrics").text
    client.post("/generate", json={"text": "hello", "max_new_tokens": 4})
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "model": "nope"})
    text = client.management.get("/metrics").text
    labels = {"api": "takeoff", "route": "/generate", "group": "primary", "status": "200"}
    assert metric(text, "gateway_requests_total", **labels) == metric(before, "gateway_requests_total", **labels) + 1
    assert metric(text, "gateway_errors_total", api="openai", type="not_found_error") >= 1
    assert metric(text, "gateway_generated_tokens_total", api="takeoff", group="primary") >= 4
    assert metric(text, "gateway_time_to_first_token_seconds_count", api="takeoff", group="primary") >= 1
    assert metric(text, "gateway_reader_up", group="primary", reader="primary-0") == 1
    # one series per state, 1 only for the current one (alerts ignore readers still loading)
    assert metric(text, "gateway_reader_state", group="primary", reader="primary-0", state="ready") == 1
    assert metric(text, "gateway_reader_state", group="primary", reader="primary-0", state="loading") == 0
    assert metric(text, "gateway_continuation_entries", backend="memory") >= 0
    assert "gateway_requests_in_flight" in text
    # not on the main port unless configured
    assert client.get("/metrics").status_code == 404


def test_cancellations_rejections_and_deadlines_are_counted(client_factory):
    readers = [
        ReaderSettings(
            id="primary-0",
            kind="scripted",
            model="scripted",
            max_in_flight=1,
            scripted={"token_delay": 0.02, "eos_after": 500},
        )
    ]
    with client_factory(readers=readers, metrics_on_main_port=True) as c:
        base = c.get("/metrics").text
        t = threading.Thread(target=lambda: c.post("/generate", json={"text": "x", "max_new_tokens": 20}))
        t.start()
        time.sleep(0.1)
        assert c.post("/generate", json={"text": "x"}).status_code == 429
        t.join()
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 200, "timeout": 0.1}).status_code == 504
        text = c.get("/metrics").text
        for name, labels in (
            ("gateway_admission_rejections_total", {"group": "primary"}),
            ("gateway_deadline_expiries_total", {"api": "takeoff"}),
        ):
            assert metric(text, name, **labels) == metric(base, name, **labels) + 1, name


def test_metrics_need_a_key_unless_public(client_factory):
    key = {"X-API-Key": "sk-metrics-0123456789"}
    with client_factory(api_keys=["sk-metrics-0123456789"]) as c:
        assert c.management.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=key).status_code == 404  # not on the API port unless asked
    with client_factory(api_keys=["sk-metrics-0123456789"], metrics_public=True) as c:
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 2}, headers=key).status_code == 200
        management = c.management.get("/metrics")
        assert management.status_code == 200 and 'gateway_key_requests_total{key="key-' in management.text
    with client_factory(api_keys=["sk-metrics-0123456789"], metrics_on_main_port=True) as c:
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 2}, headers=key).status_code == 200
        # on the API port as vLLM serves it: no key asked, and no series names a key
        main = c.get("/metrics")
        assert main.status_code == 200 and "gateway_requests_total" in main.text
        assert "gateway_key_" not in main.text and 'key="' not in main.text
        assert c.management.get("/metrics").status_code == 401  # metrics_public is the management port's


def _record(name="gateway.x", msg="hello %s", args=("there",), **extra):
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_json_and_text_formats_carry_the_request_id_and_access_fields():
    from gateway.observability.logs import JSONFormatter, RequestIdFilter, TextFormatter

    plain = _record()
    RequestIdFilter().filter(plain)  # outside a request
    assert json.loads(JSONFormatter().format(plain))["message"] == "hello there"
    assert "request_id" not in json.loads(JSONFormatter().format(plain))
    assert "[-] hello there" in TextFormatter().format(plain)
    access = _record("gateway.access", "request", (), request_id="r-9", fields={"status": 200, "path": "/generate"})
    line = json.loads(JSONFormatter().format(access))
    assert line["request_id"] == "r-9" and line["status"] == 200 and line["logger"] == "gateway.access"
    assert TextFormatter().format(access).endswith("[r-9] request status=200 path=/generate")


def test_engine_request_ids_start_with_the_http_request_id(client_factory):
    seen: list[str] = []
    with client_factory() as c:
        engine = c.app.state.runtime.registry.readers["primary-0"].engine
        original = engine.generate

        def spy(request):
            seen.append(request.request_id)
            return original(request)

        engine.generate = spy
        c.post("/generate", json={"text": ["a", "b"], "max_new_tokens": 2}, headers={"X-Request-Id": "trace-7"})
    assert len(seen) == 2 and len(set(seen)) == 2 and all(s.startswith("trace-7-") for s in seen)


def test_trace_context_reaches_the_engine_request(client_factory):
    seen = []
    with client_factory() as c:
        engine = c.app.state.runtime.registry.readers["primary-0"].engine
        original = engine.generate

        def spy(request):
            seen.append(request.trace_headers)
            return original(request)

        engine.generate = spy
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers={"traceparent": parent})
        c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert seen == [{"traceparent": parent}, None]
