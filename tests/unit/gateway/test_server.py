"""The server process: listeners, readiness line, clean exits (scripted engine, fast)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import httpx

from tests.servers import ROOT, free_port, start_gateway


def run_gateway(config: str, port: int) -> subprocess.CompletedProcess[str]:
    """A gateway run to its exit (for start-up failures), with its output."""
    env = {
        "PATH": "/usr/bin:/bin",
        "GATEWAY_PORT": str(port),
        "GATEWAY_OPENAI_PORT": str(free_port()),
        "GATEWAY_MANAGEMENT_PORT": str(free_port()),
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", config],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_port_in_use_is_a_clear_error_and_exit_code_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_gateway("configs/scripted.yaml", port)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} for the main API" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ready_line_listeners_and_sigterm_exit_0(artifacts):
    gw = start_gateway(artifacts / "gateway-scripted.log", "configs/scripted.yaml")
    try:
        for url in (gw.url, gw.management_url, gw.openai_url):
            assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        assert httpx.get(gw.openai_url + "/v1/models").status_code == 200
        assert httpx.get(gw.url + "/v1/models").status_code == 200
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(30) == 0
    finally:
        gw.stop()
    log = gw.log_path.read_text()
    assert f"Gateway ready: http://127.0.0.1:{gw.port}" in log
    assert log.count("Gateway ready") == 1
    # the start-up heap is frozen once ready, so full collections do not walk it while serving
    frozen = re.search(r"froze (\d+) start-up objects", log)
    assert frozen is not None and int(frozen.group(1)) > 10_000


def test_a_configured_group_whose_readers_all_fail_exits_1_with_the_reason(tmp_path):
    # Otherwise the process would stay up with /readyz 503 for ever.
    config = tmp_path / "broken.yaml"
    config.write_text(
        "readers:\n"
        "  - {id: primary-0, consumer_group: primary, kind: scripted, model: scripted}\n"
        f"  - {{id: embed-0, consumer_group: embed, kind: sentence-transformers, model: {tmp_path / 'missing'}}}\n"
    )
    proc = run_gateway(str(config), free_port())
    assert proc.returncode == 1
    assert "Reader embed-0 failed to load" in proc.stderr
    assert "no reader of consumer group(s) embed loaded" in proc.stderr
    assert "Gateway ready" not in proc.stdout + proc.stderr
