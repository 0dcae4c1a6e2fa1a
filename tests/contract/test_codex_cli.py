"""Codex CLI (npm `@openai/codex`), unmodified, as a client of the Responses API: one
`codex exec` against the gateway configured as a custom provider (`wire_api = "responses"`).

It runs on a gateway process of its own: Codex sends about 5,000 tokens of instructions
and tool definitions, beyond the shared gateway's 2048-token context, and built-in tool
types the gateway drops only with `responses.drop_builtin_tools`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.servers import npm_client, start_gateway

pytestmark = pytest.mark.e2e

CODEX = "@openai/codex@0.169.0"
READER = {
    "id": "primary-0",
    "consumer_group": "primary",
    "kind": "vllm",
    "model": "embedded:smollm2-135m-instruct",
    "dtype": "float32",
    "max_model_len": 8192,
    "enforce_eager": True,
    "cpu_kv_cache_gib": 1,
}
ANSWER = {
    "type": "object",
    "properties": {"greeting": {"type": "string", "enum": ["hello", "hi"]}},
    "required": ["greeting"],
    "additionalProperties": False,
}


def test_codex_exec_completes_against_the_gateway(artifacts: Path, tmp_path: Path) -> None:
    codex = npm_client(artifacts / "codex-cli", CODEX, "codex")
    log = artifacts / "gateway-codex.log"
    gw = start_gateway(
        log,
        env={
            "GATEWAY_READERS": json.dumps([READER]),
            "GATEWAY_RESPONSES__DROP_BUILTIN_TOOLS": "true",
            "GATEWAY_LOG_FORMAT": "json",  # access lines as JSON objects, read below
        },
    )
    try:
        home, work = tmp_path / "codex-home", tmp_path / "work"
        home.mkdir()
        work.mkdir()
        schema = tmp_path / "answer.json"
        schema.write_text(json.dumps(ANSWER))  # the final answer is constrained: it always ends
        provider = f'{{name="gateway", base_url="{gw.openai_url}/v1", wire_api="responses", env_key="GATEWAY_KEY"}}'
        last = tmp_path / "last.txt"
        proc = subprocess.run(
            [
                str(codex),
                "exec",
                "--skip-git-repo-check",
                "--ephemeral",
                "-m",
                "primary",
                "-c",
                'model_provider="gateway"',
                "-c",
                f"model_providers.gateway={provider}",
                "--output-schema",
                str(schema),
                "-o",
                str(last),
                "Greet me.",
            ],
            env={**os.environ, "CODEX_HOME": str(home), "GATEWAY_KEY": "unused"},
            cwd=work,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(last.read_text())["greeting"] in ("hello", "hi")
        served = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and '"path":"/v1/responses"' in line
        ]
        assert served and all(r["status"] == 200 for r in served)
        # Codex's own instructions and tools went through: far more than a bare prompt
        assert max(r["prompt_tokens"] for r in served) > 2048
        assert not re.search(r"Traceback", log.read_text())
    finally:
        gw.stop()
