"""The KServe runtime (deploy/kserve/cluster-serving-runtime.yaml) on the real engine: the
image's entrypoint with the runtime's own arguments and environment serves the mounted model
under the InferenceService's name, every API and /metrics on its one port, behind the key.

A process of its own (not the session's gateway): what is tested is how this command line
and environment start the gateway. Only what this machine needs differs from the manifest:
loopback and a free port instead of 0.0.0.0:8080, the embedded model's folder for
/mnt/models, and the CPU engine flags an InferenceService would append to the arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.servers import ROOT, GatewayProcess, free_port

pytestmark = pytest.mark.e2e

KEY = "sk-kserve-e2e-0123456789abcdef"


@pytest.fixture(scope="module")
def served(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    from engine_adapters.models import ensure_smollm2
    from gateway.settings import Settings

    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "cluster-serving-runtime.yaml").read_text())
    (container,) = runtime["spec"]["containers"]
    model = str(ensure_smollm2(Settings().cache_dir))
    port, management = free_port(), free_port()
    args = [a.replace("{{.Name}}", "my-llm") for a in container["args"]]
    args = [model if a == "/mnt/models" else a for a in args]
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    args += ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {
        "VLLM_API_KEY": KEY,  # the manifest's secretKeyRef
        "HOME": os.environ.get("HOME", "/root"),  # the manifest's /tmp/home is for a read-only root
        "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")),
        "GATEWAY_MANAGEMENT_PORT": str(management),  # port + 1 may be taken on this machine
        "GATEWAY_CONFIG_MOUNT": str(tmp_path_factory.mktemp("kserve") / "absent.yaml"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # `gateway` of this venv
        "PYTHONUNBUFFERED": "1",
    }
    log_path = artifacts / "gateway-kserve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["sh", str(ROOT / "deploy" / "docker" / "entrypoint.sh"), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    gw = GatewayProcess(proc, port, management, 0, log_path)
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()


def test_the_runtime_serves_the_model_under_the_inference_services_name(served: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0)
    assert "my-llm" in [m.id for m in client.models.list().data]
    chat = client.chat.completions.create(
        model="my-llm", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8, temperature=0
    )
    assert chat.model == "my-llm" and chat.usage is not None and chat.usage.completion_tokens > 0
    # every family on the one port KServe routes: Takeoff's too
    takeoff = httpx.post(served.url + "/generate", json={"text": "Hi", "max_new_tokens": 4},
                         headers={"Authorization": f"Bearer {KEY}"}, timeout=120)  # fmt: skip
    assert takeoff.status_code == 200 and "text" in takeoff.json()


def test_the_key_is_required_and_metrics_and_probes_answer_on_the_same_port(served: GatewayProcess) -> None:
    refused = httpx.get(served.url + "/v1/models", timeout=10)
    assert refused.status_code == 401
    metrics = httpx.get(served.url + "/metrics", timeout=10)  # KServe's scrape: no key, one port
    assert metrics.status_code == 200 and "vllm:" in metrics.text and "gateway_requests_total" in metrics.text
    for path in ("/readyz", "/healthz"):
        assert httpx.get(served.url + path, timeout=10).status_code == 200
