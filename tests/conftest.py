"""Shared test set-up: artifacts, and the one real gateway per test session.

The real engine takes about a minute and 4 GB to start on two CPU cores, so every e2e
and contract test shares one gateway process (started on first use). Tests that need a
process of their own (signals, engine death, a second replica, fault injection) start
one and say why.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import needs
from tests.otlp import Received, http_receiver
from tests.servers import GatewayProcess, start_gateway

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
SHARED_MAX_ENTRIES = 48


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for logs and screenshots kept after the run (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def otlp_traces() -> Iterator[Received]:
    """The OTLP/HTTP receiver the shared gateway exports its traces to."""
    with http_receiver() as (endpoint, got):
        got.endpoint = endpoint
        yield got


@pytest.fixture(scope="session")
def gateway(artifacts: Path, otlp_traces: Received) -> Iterator[GatewayProcess]:
    """The shared gateway on the default config (real vLLM, embedded model), tracing on."""
    # A small continuation store, so that eviction at the bound can be shown on it.
    # Readers added by the tests load their models from temporary folders.
    roots = json.dumps(["/models", tempfile.gettempdir()])
    gw = start_gateway(
        artifacts / "gateway-e2e.log",
        env={
            "GATEWAY_CONTINUATION__MAX_ENTRIES": str(SHARED_MAX_ENTRIES),
            "GATEWAY_MODEL_ROOTS": roots,
            # /metrics on the API ports too, as vLLM's server has it (scraped in the e2e tests)
            "GATEWAY_METRICS_ON_MAIN_PORT": "true",
            # every request of the e2e tests is traced, to a receiver of the session
            "GATEWAY_TRACING": "true",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_traces.endpoint,
            "OTEL_SERVICE_NAME": "gateway-e2e",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """An httpx client on the shared gateway's main port."""
    with gateway.client() as c:
        yield c


@pytest.fixture(scope="session")
def tokenizer(gateway: GatewayProcess) -> Any:
    """The embedded model's own tokenizer, loaded directly (for counting tokens)."""
    from transformers import AutoTokenizer

    from engine_adapters.models import ensure_smollm2
    from gateway.settings import load_settings

    path = ensure_smollm2(load_settings(ROOT / "configs" / "default.yaml").cache_dir)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def redis_server(artifacts: Path) -> Iterator[str]:
    """A throw-away redis-server on 127.0.0.1 (Debian package, installed by `make test`)."""
    import subprocess
    import time

    from tests.servers import free_port

    binary = needs.binary("redis-server", "redis-server")
    port = free_port()
    log = open(artifacts / "redis.log", "wb")  # the child writes to it until stopped
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    client.close()
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Where nothing may be skipped (tests/needs.py: CI), a skip of any origin is a failure."""
    outcome = yield
    report = outcome.get_result()
    if needs.STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped where nothing may be skipped: {report.longrepr}"
