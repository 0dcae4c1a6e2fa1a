"""The usage ledger and the traces on the real engine (the shared gateway exports its traces
to the session's OTLP receiver, tests/conftest.py). Budgets on the real engine are in
test_hardening_e2e.py, on the gateway there that has a keys file."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.otlp import Received, attrs

pytestmark = pytest.mark.e2e

FIELDS = ("requests", "prompt_tokens", "cached_tokens", "output_tokens", "finished", "cancelled", "failed")
# long enough to fill whole blocks of vLLM's prefix cache, so that a repeat finds them
MESSAGES = [{"role": "user", "content": "The lighthouse keeper wrote in his log every night. " * 40 + "Go on."}]


def totals(gateway: Any, **params: str) -> dict[str, int]:
    """The ledger's totals of today for the tenant `local` (no keys on the shared gateway)."""
    r = httpx.get(gateway.management_url + "/usage", params={"group_by": "tenant", **params}, timeout=30)
    assert r.status_code == 200, r.text
    rows = [row for row in r.json()["data"] if row["tenant"] == "local"]
    return {f: sum(row.get(f, 0) for row in rows) for f in FIELDS}


def prometheus(gateway: Any) -> dict[str, float]:
    """gateway_tenant_* counters of the tenant `local`, summed over models, by kind and outcome."""
    text = httpx.get(gateway.management_url + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (
                s.name in ("gateway_tenant_tokens_total", "gateway_tenant_requests_total")
                and s.labels["tenant"] == "local"
            ):
                label = s.labels.get("kind") or s.labels["outcome"]
                out[label] = out.get(label, 0) + s.value
    return out


def engine_idle(gateway: Any) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(gateway.url + "/status").json()["live_readers"]["primary-0"]["engine_requests"]:
        assert time.monotonic() < deadline, "an engine request outlived its client"
        time.sleep(0.1)


def test_the_ledger_holds_what_each_answer_reported_and_what_a_cut_stream_made(gateway, http):
    engine_idle(gateway)
    before, prom_before, all_before = totals(gateway, api="openai"), prometheus(gateway), totals(gateway)
    whole = http.post("/v1/chat/completions", json={"model": "primary", "messages": MESSAGES, "max_tokens": 8})
    assert whole.status_code == 200, whole.text
    u1 = whole.json()["usage"]
    body = {"model": "primary", "prompt": "Once upon a time", "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    chunks = [json.loads(line[6:]) for line in http.post("/v1/completions", json=body).text.splitlines()
              if line.startswith("data: {")]  # fmt: skip
    u2 = chunks[-1]["usage"]
    # the same chat streamed for 300 tokens, left after three chunks with text
    received = 0
    body = {"model": "primary", "messages": MESSAGES, "max_tokens": 300, "min_tokens": 300, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                received += 1
                if received == 3:
                    break
    engine_idle(gateway)
    after, prom_after, all_after = totals(gateway, api="openai"), prometheus(gateway), totals(gateway)
    delta = {f: after[f] - before[f] for f in FIELDS}
    assert delta["requests"] == 3 and delta["finished"] == 2 and delta["cancelled"] == 1 and delta["failed"] == 0
    # the cut stream had the whole answer's prompt: billed in full, its output as made
    assert delta["prompt_tokens"] == u1["prompt_tokens"] * 2 + u2["prompt_tokens"]
    cut = delta["output_tokens"] - u1["completion_tokens"] - u2["completion_tokens"]
    assert 3 <= cut < 300, cut
    # the second time the chat's prompt was in vLLM's prefix cache (on by default)
    assert delta["cached_tokens"] > 0
    # the Prometheus counters moved exactly as the ledger did
    grew = {k: prom_after.get(k, 0) - prom_before.get(k, 0) for k in prom_after}
    assert grew["prompt"] == all_after["prompt_tokens"] - all_before["prompt_tokens"]
    assert grew["output"] == all_after["output_tokens"] - all_before["output_tokens"]
    assert grew["cancelled"] == 1 and grew["finished"] == 2
    # the API ports never show them
    assert "gateway_tenant_tokens" not in http.get("/metrics").text


def test_a_request_is_traced_with_the_gateways_spans_around_vllms_time(gateway, http, otlp_traces: Received):
    trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    r = http.post(
        "/v1/chat/completions",
        json={"model": "primary", "messages": MESSAGES, "max_tokens": 6},
        headers={"traceparent": f"00-{trace}-{parent}-01"},
    )
    assert r.status_code == 200
    usage = r.json()["usage"]
    deadline = time.monotonic() + 20
    while not any(s.name == "POST /v1/chat/completions" for s in otlp_traces.of_trace(trace)):
        assert time.monotonic() < deadline, "no server span reached the receiver"
        time.sleep(0.1)
    spans = {s.name: s for s in otlp_traces.of_trace(trace)}
    server = spans["POST /v1/chat/completions"]
    assert server.parent_span_id.hex() == parent
    children = {n for n, s in spans.items() if s.parent_span_id == server.span_id}
    assert {"gateway.auth", "gateway.admission", "gateway.prepare", "gateway.engine"} <= children
    a = attrs(server)
    assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    served = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert a["gen_ai.response.model"] in served and a["http.response.status_code"] == 200
    assert a["gen_ai.request.model"] == "primary"  # the name the caller sent
    prepare, engine = spans["gateway.prepare"], spans["gateway.engine"]
    # the phases follow each other inside the server span: vLLM's time is the engine span
    assert server.start_time_unix_nano <= prepare.start_time_unix_nano <= prepare.end_time_unix_nano
    assert prepare.end_time_unix_nano <= engine.start_time_unix_nano < engine.end_time_unix_nano
    assert engine.end_time_unix_nano <= server.end_time_unix_nano
    # the request's log lines carry the trace id
    assert f"trace_id={trace}" in gateway.log_path.read_text(errors="replace")
