"""Schemathesis against the gateway's own OpenAPI documents (all three ports): whatever
it sends, never a 5xx but the documented deadline 504. Schemathesis' coverage phase
(boundary values, wrong types, missing and extra fields) and its fuzzing phase on every
document, stateful sequences that reuse the ids answers gave, and a check that schema-valid
requests are accepted. A gateway process of its own on scripted and MiniLM readers (the
fuzzer's random parameters would keep a real generative engine busy for minutes)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fuzz_hooks import asked_for_a_deadline, no_server_error_but_deadlines
from tests.servers import GatewayProcess, start_gateway

READERS = [
    {"id": "primary-0", "kind": "scripted", "model": "scripted"},
    {"id": "embed-0", "consumer_group": "embed", "kind": "sentence-transformers", "model": "embedded:all-minilm-l6-v2"},
]


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


def no_server_error(ctx, response, case):  # type: ignore[no-untyped-def]
    return no_server_error_but_deadlines(ctx, response, case)


def operation(schema, method: str, path: str):  # type: ignore[no-untyped-def]
    return schema[path][method]


def test_linked_sequences_never_answer_5xx(openai_schema, main_schema):
    """Sequences of calls that reuse the ids earlier answers gave: create responses (bodies
    drawn from the document), then get, cancel, list the input items of or delete them,
    continue them with previous_response_id; generate a batch, then continue one of its
    request_ids. Never a 5xx, whatever the order."""
    from hypothesis import strategies as st
    from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule, run_state_machine_as_test

    creates = operation(openai_schema, "POST", "/v1/responses").as_strategy()
    batch = operation(main_schema, "POST", "/api/generate-batch").as_strategy()
    one = operation(main_schema, "POST", "/api/generate-one").as_strategy()
    seen: Counter[str] = Counter()

    def check(case, response) -> None:  # type: ignore[no-untyped-def]
        seen[f"{case.method} {case.operation.path} {response.status_code // 100}xx"] += 1
        case.validate_response(response, checks=[no_server_error])

    def send(case):  # type: ignore[no-untyped-def]
        response = case.call(timeout=30)
        check(case, response)
        return response

    def response_id(r, fallback: str) -> str:  # type: ignore[no-untyped-def]
        """The id a create answered with: the JSON object's, or the stream's first event's."""
        if r.status_code != 200:
            return fallback
        found = re.search(r'"id":\s*"(resp_[^"]+)"', r.text)
        return found.group(1) if found else fallback

    class Sequences(RuleBasedStateMachine):
        responses = Bundle("responses")
        request_ids = Bundle("request_ids")

        @rule(target=responses, case=creates)
        def create(self, case):  # type: ignore[no-untyped-def]
            if isinstance(case.body, dict) and not case.body.get("input"):
                case.body["input"] = "Hello"  # input or previous_response_id: a rule across fields
            created = response_id(send(case), "resp_unknown")
            if created != "resp_unknown":  # read it back at once too (the random rules may not)
                read = operation(openai_schema, "GET", "/v1/responses/{response_id}")
                send(read.Case(path_parameters={"response_id": created}))
            return created

        @rule(target=responses, case=creates, previous=responses)
        def continue_response(self, case, previous):  # type: ignore[no-untyped-def]
            if isinstance(case.body, dict):
                case.body["previous_response_id"] = previous
            return response_id(send(case), previous)

        @rule(id_=responses, action=st.sampled_from(["GET", "DELETE", "cancel", "input_items"]))
        def act(self, id_, action):  # type: ignore[no-untyped-def]
            method, path = {
                "GET": ("GET", "/v1/responses/{response_id}"),
                "DELETE": ("DELETE", "/v1/responses/{response_id}"),
                "cancel": ("POST", "/v1/responses/{response_id}/cancel"),
                "input_items": ("GET", "/v1/responses/{response_id}/input_items"),
            }[action]
            case = operation(openai_schema, method, path).Case(path_parameters={"response_id": id_})
            send(case)

        @rule(target=request_ids, case=batch)
        def generate_batch(self, case):  # type: ignore[no-untyped-def]
            send(case)
            items = case.body if isinstance(case.body, list) else []
            return next((i.get("request_id") for i in items if isinstance(i, dict) and i.get("request_id")), "none")

        @rule(case=one, request_id=request_ids)
        def continue_one(self, case, request_id):  # type: ignore[no-untyped-def]
            if isinstance(case.body, dict):
                case.body["request_id"] = request_id
            try:
                send(case)
            except requests.exceptions.ChunkedEncodingError:
                if not asked_for_a_deadline(case):
                    raise

    run_state_machine_as_test(
        Sequences,
        settings=settings(
            max_examples=40, stateful_step_count=8, deadline=None, derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )  # fmt: skip
    # the sequences reached what they are for: stored responses read back, batches continued
    assert seen["POST /v1/responses 2xx"] >= 5, seen
    assert seen["GET /v1/responses/{response_id} 2xx"] >= 1, seen
    assert seen["POST /api/generate-one 2xx"] >= 1, seen


def schemathesis_cli(url: str, *extra: str) -> tuple[int, int]:
    """Schemathesis' own runner on a document: its coverage phase (boundary values, wrong
    types, missing and extra fields of every schema, which random examples miss) and its
    fuzzing phase, with the one check of tests/fuzz_hooks.py. Returns (exit code, cases).
    One worker: with two, hypothesis describes strategies with `ast.parse` in both threads
    at once, which Python 3.11 sometimes fails ("AST constructor recursion depth mismatch")."""
    import os
    import subprocess
    import sys

    from tests.servers import ROOT

    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", url, "--phases", "coverage,fuzzing",
            "-c", "no_server_error_but_deadlines", "-n", "40", "--generation-deterministic", "-w", "1",
            "--no-color", "--report-dir", str(ROOT / "tests" / "artifacts" / "schemathesis"), *extra,
        ],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks"},
        timeout=600,
    )  # fmt: skip
    found = re.search(r"(\d+) generated", result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return result.returncode, int(found.group(1)) if found else 0


def test_main_port_never_answers_5xx(fuzz_gateway):
    _, cases = schemathesis_cli(fuzz_gateway.url + "/openapi.json")
    assert cases > 1000


def test_management_port_never_answers_5xx(fuzz_gateway):
    # DELETE /reader would remove the readers the other operations need
    _, cases = schemathesis_cli(fuzz_gateway.management_url + "/openapi.json", "--exclude-method", "DELETE")
    assert cases > 100


def test_openai_port_never_answers_5xx(fuzz_gateway):
    _, cases = schemathesis_cli(fuzz_gateway.openai_url + "/openapi.json")
    assert cases > 1000


def test_a_format_of_the_wrong_type_is_a_400_not_a_500(fuzz_gateway):
    """What schemathesis' coverage phase found (the format discriminator read `.type` of a list)."""
    for body in ({"input": "hi", "text": {"format": [None, None]}}, {"input": "hi", "tools": [[1]]}):
        r = requests.post(fuzz_gateway.openai_url + "/v1/responses", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"].startswith(("text.format", "tools[0]")), r.text


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
        # rules between fields or items, which a JSON schema cannot state: min <= max,
        # best_of == n, one of two alternatives, unique tool names, tool_choice with tools,
        # a prompt that leaves room in the context
        across = (
            "must be between 0 and",
            "only best_of equal to n",
            "not both",
            "needs exactly one of",
            "repeats",
            "needs tools",
            "leaves no room",
            "allow_prompt_logprobs",
        )
        refused = [text for status, text in statuses if status == 400 and not any(a in text for a in across)]
        reasons = Counter(text[:90] for text in refused)
        assert len(refused) <= 0.25 * len(statuses), (operation.path, len(refused), reasons.most_common())
        checked += 1
    assert checked == len(GENERATION)
