"""OpenTelemetry traces (gateway/observability/tracing.py) received by OTLP receivers in
the test, over HTTP and over gRPC, and decoded from the wire with the OpenTelemetry
protocol's own messages."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.settings import ReaderSettings
from tests import otlp
from tests.otlp import Received, attrs
from tests.unit.conftest import make_settings, running

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    with otlp.http_receiver() as receiver:
        yield receiver


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    with otlp.grpc_receiver() as receiver:
        yield receiver


def by_name(spans: list[Any]) -> dict[str, Any]:
    return {s.name: s for _, s in spans}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_request_yields_the_gateways_spans_under_the_callers_trace(
    protocol, http_receiver, grpc_receiver, monkeypatch, caplog
):
    endpoint, got = http_receiver if protocol == "http/protobuf" else grpc_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-under-test")
    with running(make_settings(tracing=True)) as c:
        engine = c.app.state.runtime.registry.readers["primary-0"].engine
        seen: list[dict[str, str] | None] = []
        generate = engine.generate

        def spy(request: Any) -> Any:
            seen.append(request.trace_headers)
            return generate(request)

        engine.generate = spy
        with caplog.at_level(logging.INFO, logger="gateway.access"):
            r = c.post(
                "/v1/chat/completions",
                json={"model": "primary", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
                headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
            )
        assert r.status_code == 200
        usage = r.json()["usage"]
        c.app.state.runtime.tracer.processor.force_flush()
    spans = [s for service, s in got.spans if service == "gw-under-test" and s.trace_id.hex() == TRACE]
    named = by_name([("", s) for s in spans])
    server = named["POST /v1/chat/completions"]
    assert server.parent_span_id.hex() == PARENT and server.kind == server.SPAN_KIND_SERVER
    children = {n for n, s in named.items() if s.parent_span_id == server.span_id}
    assert {"gateway.auth", "gateway.admission", "gateway.prepare", "gateway.engine"} <= children
    a = attrs(server)
    assert a["gen_ai.response.model"] == "scripted" and a["gen_ai.request.model"] == "primary"
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"] and a["http.response.status_code"] == 200
    for child in children:
        span = named[child]
        assert server.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.end_time_unix_nano <= server.end_time_unix_nano
    # the engine was handed the engine span as its parent (vLLM's spans hang under it)
    engine_span = named["gateway.engine"]
    assert seen and seen[0]["traceparent"] == f"00-{TRACE}-{engine_span.span_id.hex()}-01"
    # and the request's log lines carry the trace id
    assert [getattr(rec, "trace_id", None) for rec in caplog.records if rec.name == "gateway.access"] == [TRACE]


def test_without_a_traceparent_a_trace_starts_here_and_tracing_off_sends_nothing(http_receiver, monkeypatch):
    endpoint, got = http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    with running(make_settings(tracing=True)) as c:
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 3}).status_code == 200
        c.app.state.runtime.tracer.processor.force_flush()
    (server,) = [s for _, s in got.spans if s.name == "POST /generate"]
    assert not server.parent_span_id and any(s.parent_span_id == server.span_id for _, s in got.spans)
    count = len(got.spans)
    with running(make_settings()) as c:
        assert c.app.state.runtime.tracer is None
        assert c.post("/generate", json={"text": "x", "max_new_tokens": 3}).status_code == 200
    assert len(got.spans) == count


def test_the_generate_one_store_call_is_a_span_of_its_own(http_receiver, redis_server, monkeypatch):
    from gateway.settings import ContinuationSettings

    endpoint, got = http_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    settings = make_settings(
        tracing=True,
        readers=[ReaderSettings(id="primary-0", kind="scripted", model="scripted")],
        continuation=ContinuationSettings(backend="redis", redis_url=redis_server, key_prefix="{trace-test}:"),
    )
    with running(settings) as c:
        body = {"request_id": "t1", "prompt": "hello", "stream_response": False}
        assert c.post("/api/generate-one", json=body).status_code == 200
        c.app.state.runtime.tracer.processor.force_flush()
    (server,) = [s for _, s in got.spans if s.name == "POST /api/generate-one"]
    stores = [s for _, s in got.spans if s.name == "gateway.store" and s.parent_span_id == server.span_id]
    assert len(stores) == 2  # the continuation read, and the write of the finished sequence
    assert json.dumps(attrs(server)).count("gen_ai.response.model") == 1


def test_every_log_line_of_a_traced_request_carries_its_trace_id():
    from gateway.observability.logs import JSONFormatter, RequestIdFilter, TextFormatter
    from gateway.observability.metrics import Observation, begin, end
    from gateway.observability.tracing import ids_for

    obs = Observation(request_id="r1", api="openai", method="POST", path="/v1/chat/completions")
    obs.trace = ids_for(f"00-{TRACE}-{PARENT}-01")
    token = begin(obs)
    try:
        record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "inside the request", (), None)
        RequestIdFilter().filter(record)
    finally:
        end(token)
    assert json.loads(JSONFormatter().format(record))["trace_id"] == TRACE
    assert f"trace_id={TRACE}" in TextFormatter().format(record)
    assert ids_for("00-" + "0" * 32 + "-" + PARENT + "-01").parent_id is None  # an invalid parent: a new trace
    assert ids_for(f"00-{TRACE}-{PARENT}-00").sampled is False
