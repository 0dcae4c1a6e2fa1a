"""A real Prometheus server (Debian package) scrapes the gateway; the gateway's series and
vLLM's come back through Prometheus's query API."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests import needs
from tests.servers import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def prometheus(gateway, tmp_path: Path, artifacts: Path):
    binary = needs.binary("prometheus", "prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: llm-gateway\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{gateway.management_port}']\n"
        # as a vLLM scrape job has it: the API port, no key (metrics_on_main_port)
        "  - job_name: api-port\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{gateway.port}']\n"
    )
    log = open(artifacts / "prometheus.log", "wb")  # written until stopped
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (artifacts / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def query(url: str, expr: str) -> list[dict]:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert r["status"] == "success", r
    return r["data"]["result"]


def wait_for(url: str, expr: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, expr)
        if result:
            return result
        assert time.monotonic() < deadline, f"no result for {expr}"
        time.sleep(0.5)


def test_prometheus_reads_gateway_and_vllm_series(gateway, http, prometheus):
    wait_for(prometheus, 'up{job="llm-gateway"} == 1')
    for i in range(3):
        assert http.post("/generate", json={"text": f"Count to {i}", "max_new_tokens": 8}).status_code == 200
    assert http.post("/v1/embeddings", json={"input": ["a", "b"], "model": "embed"}).status_code == 200
    assert http.post("/generate", json={"text": "x", "consumer_group": "nope"}).status_code == 404
    # the gateway's own series, with bounded labels
    served = wait_for(prometheus, 'gateway_requests_total{route="/generate",status="200",group="primary"} >= 3')
    assert served[0]["metric"]["api"] == "takeoff"
    wait_for(prometheus, 'gateway_requests_total{route="/generate",status="404"}')
    wait_for(prometheus, 'gateway_generated_tokens_total{group="primary"} >= 24')
    wait_for(prometheus, 'gateway_time_to_first_token_seconds_count{group="primary"} >= 3')
    wait_for(prometheus, 'gateway_embedding_batch_size_count{group="embed"} >= 1')
    wait_for(prometheus, 'gateway_reader_up{reader="primary-0"} == 1')
    # vLLM's engine series, from the same endpoint
    wait_for(prometheus, "vllm:generation_tokens_total >= 24")
    wait_for(prometheus, "vllm:num_requests_running")
    quantile = query(
        prometheus, "histogram_quantile(0.5, sum by (le) (rate(gateway_time_to_first_token_seconds_bucket[5m])))"
    )
    assert quantile and float(quantile[0]["value"][1]) > 0


def test_a_vllm_scrape_job_on_the_api_port_finds_vllms_series_and_no_key_names(gateway, http, prometheus):
    wait_for(prometheus, 'up{job="api-port"} == 1')
    assert http.post("/v1/completions", json={"prompt": "Count", "max_tokens": 4}).status_code == 200
    wait_for(prometheus, 'vllm:generation_tokens_total{job="api-port"} >= 4')
    wait_for(prometheus, 'vllm:num_requests_running{job="api-port"}')
    wait_for(prometheus, 'gateway_requests_total{job="api-port",route="/v1/completions"}')
    # the series per API key name stay on the management port
    wait_for(prometheus, 'gateway_key_requests_total{job="llm-gateway"}')
    time.sleep(2)
    assert query(prometheus, '{job="api-port",__name__=~"gateway_key_.*"}') == []
