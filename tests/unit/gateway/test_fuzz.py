"""Schemathesis against the gateway's own OpenAPI documents (all three ports): whatever
it sends, never a 5xx. A gateway process of its own on scripted and MiniLM readers (the
fuzzer's random parameters would keep a real generative engine busy for minutes), a
bounded number of examples per operation."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.servers import GatewayProcess, start_gateway

READERS = [
    {"id": "primary-0", "kind": "scripted", "model": "scripted"},
    {"id": "embed-0", "consumer_group": "embed", "kind": "sentence-transformers", "model": "embedded:all-minilm-l6-v2"},
]
FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def fuzz_gateway(artifacts) -> Iterator[GatewayProcess]:
    gw = start_gateway(
        artifacts / "gateway-fuzz.log",
        "configs/scripted.yaml",
        {"GATEWAY_READERS": json.dumps(READERS), "GATEWAY_MAX_USER_BATCH_SIZE": "8"},
    )
    try:
        gw.wait_loaded()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def main_schema(fuzz_gateway):
    return schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json")


@pytest.fixture(scope="module")
def management_schema(fuzz_gateway):
    # DELETE /reader would remove the readers the other operations need
    return schemathesis.openapi.from_url(fuzz_gateway.management_url + "/openapi.json").exclude(method="DELETE")


@pytest.fixture(scope="module")
def openai_schema(fuzz_gateway):
    return schemathesis.openapi.from_url(fuzz_gateway.openai_url + "/openapi.json")


def asked_for_a_deadline(case) -> bool:  # type: ignore[no-untyped-def]
    body = case.body if isinstance(case.body, dict) else {}
    return "timeout" in body or "x-request-timeout" in {k.lower() for k in (case.headers or {})}


def no_server_error(ctx, response, case):  # type: ignore[no-untyped-def]
    """No 5xx, except the 504 of a deadline the request itself set (which it may set to
    5e-324 seconds: answering 504 then is the documented behaviour)."""
    if response.status_code == 504 and asked_for_a_deadline(case):
        body = response.json()
        if (body.get("error") or body).get("type") == "timeout":  # OpenAI's shape or the others'
            return True
    return not_a_server_error(ctx, response, case)


def fuzz(schema) -> int:  # type: ignore[no-untyped-def]
    """Every operation of `schema`, FUZZ examples each; returns how many operations ran."""
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @FUZZ
        def check(case) -> None:  # type: ignore[no-untyped-def]
            try:
                case.call_and_validate(checks=[no_server_error])
            except requests.exceptions.ChunkedEncodingError:
                # a plain-text stream (generate-one) past its own deadline is cut, by design:
                # it has no framing to carry an error
                if not (asked_for_a_deadline(case) and case.path == "/api/generate-one"):
                    raise

        check()
        ran += 1
    return ran


def test_main_port_never_answers_5xx(main_schema):
    assert fuzz(main_schema) > 20


def test_management_port_never_answers_5xx(management_schema):
    assert fuzz(management_schema) >= 4


def test_openai_port_never_answers_5xx(openai_schema):
    assert fuzz(openai_schema) >= 6


def test_every_surface_is_documented(main_schema, management_schema, openai_schema):
    main_paths = set(main_schema.raw_schema["paths"])
    assert {
        "/generate",
        "/generate_stream",
        "/v1/chat/completions",
        "/api/generate-one",
        "/embed",
        "/classify",
        "/rerank",
        "/chat/completions",
        "/tokenize/{reader_id}",
    } <= main_paths
    assert {"/reader", "/reader_groups", "/config/{reader_id}"} <= set(management_schema.raw_schema["paths"])
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(
        openai_schema.raw_schema["paths"]
    )


GENERATION = ("/generate", "/api/generate-one", "/v1/chat/completions", "/v1/completions", "/chat/completions")


def statuses_of(operation) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    """The statuses (and bodies) of 40 schema-valid requests to `operation`."""
    statuses: list[tuple[int, str]] = []

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def collect(case) -> None:  # type: ignore[no-untyped-def]
        try:
            r = case.call(timeout=30)
            statuses.append((r.status_code, r.text[:200]))
        except requests.exceptions.ChunkedEncodingError:
            statuses.append((504, ""))  # a plain-text stream cut by its own deadline

    collect()
    return statuses


def test_schema_valid_generation_requests_are_accepted(main_schema):
    """The documents state the constraints the validation enforces: of the requests
    generated from the schema alone, few may be refused as invalid (400). What a schema
    cannot say (min_new_tokens <= max_new_tokens, a regex the model can follow, a prompt
    that fits the context) is all that remains."""
    checked = 0
    for result in main_schema.get_all_operations():
        operation = result.ok()
        if operation.path not in GENERATION:
            continue
        statuses = statuses_of(operation)
        # min <= max is a rule between two fields, which a JSON schema cannot state
        refused = [text for status, text in statuses if status == 400 and "must be between 0 and" not in text]
        reasons = Counter(text[:90] for text in refused)
        assert len(refused) <= 0.25 * len(statuses), (operation.path, len(refused), reasons.most_common())
        checked += 1
    assert checked == len(GENERATION)
