"""Claude Code (npm `@anthropic-ai/claude-code`), unmodified, as a client of the Anthropic
Messages API: one `claude -p` against the gateway (`ANTHROPIC_BASE_URL`, a key, `--model`
naming a consumer group), with its non-essential traffic turned off.

The gateway here serves a scripted reader with a 200k-token context: Claude Code sends
about 17,000 tokens of system prompt and tool definitions with every request, beyond the
embedded model's context (8,192 at most). What is tested is the wire: its streaming
request (thinking, tools, system text between turns, `?beta=true`) accepted, its events
read, its answer printed. The real engine's side of the Messages API is in
tests/e2e/test_anthropic_e2e.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.servers import npm_client, start_gateway

pytestmark = pytest.mark.e2e

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.332"
KEY = "sk-claude-code-0123456789"
REPLY = "Hello from the gateway."


def test_claude_code_prints_the_gateways_answer(artifacts: Path, tmp_path: Path) -> None:
    claude = npm_client(artifacts / "claude-code", CLAUDE_CODE, "claude")
    reader = {
        "id": "primary-0",
        "kind": "scripted",
        "model": "scripted",
        "scripted": {"max_model_len": 200_000, "reply": REPLY},
    }
    gw = start_gateway(
        artifacts / "gateway-claude-code.log",
        "configs/scripted.yaml",
        {"GATEWAY_READERS": json.dumps([reader]), "GATEWAY_API_KEYS": json.dumps([KEY]), "GATEWAY_LOG_FORMAT": "json"},
    )
    try:
        home, work = tmp_path / "home", tmp_path / "work"
        home.mkdir()
        work.mkdir()
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": gw.url,
            "ANTHROPIC_API_KEY": KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # no telemetry, updates or error reports
        }
        done = subprocess.run(
            [str(claude), "-p", "Say hello", "--model", "primary"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert REPLY in done.stdout
        lines = [json.loads(line) for line in gw.log_path.read_text().splitlines() if line.startswith("{")]
        calls = [line for line in lines if line.get("path") == "/v1/messages"]
        assert calls and all(line["status"] == 200 for line in calls), calls
        assert all(line["key"] and line["api"] == "anthropic" for line in calls)
    finally:
        gw.stop()
