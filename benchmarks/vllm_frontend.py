"""The front end against vLLM's own API server at GPU token rates, on the same engine stand-in.

Both servers run vLLM's real `AsyncLLM` in their own process on the same model folder (the
embedded SmolLM2), with the engine core replaced by `benchmarks/fake_core.py`: one token per
running request every 1/rate seconds, as vLLM's own `EngineCoreOutputs`, so input processing,
detokenization and the request streams are vLLM's code on both sides, and what differs is the
API layer above them. 256 chat streams x 100 tokens/s (x 600 tokens by default), the server
process on one core and this client on the other; rounds alternate which server goes first.

    .venv/bin/python -m benchmarks.vllm_frontend --rounds 3

Writes results/vllm_frontend.json and results/vllm_frontend.md. The target (issue 30):
gateway CPU per streamed token at most 0.8x vLLM's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from benchmarks.frontend import pin, run_streams
from benchmarks.serving import ENGINE_ENV, RESULTS, model_dir, settle
from tests.servers import ROOT, free_port

SERVERS = ("vllm", "gateway")


def start(kind: str, model: str, rate: float, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    site = ROOT / "benchmarks" / "fake_core_site"
    env = {**os.environ, **ENGINE_ENV, "FAKE_ENGINE_CORE_RATE": str(rate), "PYTHONPATH": f"{site}:{ROOT}"}
    engine = ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"]
    if kind == "vllm":
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", "primary", *engine, "--host", "127.0.0.1", "--port", str(port),
               "--disable-uvicorn-access-log"]  # fmt: skip
        ready = "/health"
    else:
        reader = {"id": "primary-0", "consumer_group": "primary", "model": model, "dtype": "float32",
                  "max_model_len": 2048, "enforce_eager": True, "cpu_kv_cache_gib": 1, "max_in_flight": 4096}  # fmt: skip
        env |= {
            "GATEWAY_PORT": str(port),
            "GATEWAY_MANAGEMENT_PORT": str(free_port()),
            "GATEWAY_OPENAI_PORT": str(free_port()),
            "GATEWAY_READERS": json.dumps([reader]),
            "GATEWAY_ACCESS_LOG": "false",
            "GATEWAY_MAX_NEW_TOKENS_LIMIT": "100000",
        }
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", "configs/default.yaml"]
        ready = "/readyz"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + ready, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{kind} did not start")
        time.sleep(0.5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens/s per stream")
    parser.add_argument("--tokens", type=int, default=600)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = model_dir()
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SERVERS}
    for r in range(args.rounds):
        for kind in SERVERS if r % 2 == 0 else tuple(reversed(SERVERS)):
            settle()
            proc, url = start(kind, model, args.rate, RESULTS / f"vllm_frontend-{kind}.log")
            try:
                pin(proc.pid)
                asyncio.run(run_streams(url, proc.pid, "openai-chat", 32, 100))  # warm
                result = asyncio.run(run_streams(url, proc.pid, "openai-chat", args.streams, args.tokens))
                runs[kind].append(result)
                print(kind, {k: round(v, 2) for k, v in result.items()}, flush=True)
            finally:
                stop(proc)
    summary = {s: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for s, rs in runs.items()}
    ratios = [g["cpu_us_per_token"] / v["cpu_us_per_token"] for g, v in zip(runs["gateway"], runs["vllm"], strict=True)]
    out: dict[str, Any] = {
        "date": date.today().isoformat(),
        "rounds": args.rounds,
        "streams": args.streams,
        "rate_per_stream": args.rate,
        "tokens_per_stream": args.tokens,
        "summary": summary,
        "ratio_per_round": ratios,
        "runs": runs,
    }
    (RESULTS / "vllm_frontend.json").write_text(json.dumps(out, indent=2))
    v, g = summary["vllm"], summary["gateway"]
    lines = [
        f"# The front end against vLLM's API server at GPU token rates ({out['date']})",
        "",
        f"`.venv/bin/python -m benchmarks.vllm_frontend --rounds {args.rounds}` (medians of the rounds, "
        "servers alternating order). Both run vLLM's AsyncLLM on SmolLM2-135M's tokenizer with the "
        f"engine core replaced by a clock (benchmarks/fake_core.py): {args.streams} chat streams x "
        f"{args.rate:g} tokens/s x {args.tokens} tokens, server on one core, client on the other.",
        "",
        "| server | CPU µs/token | vs vLLM (target gateway <= 0.8) | tokens/s | events/token |",
        "|---|---|---|---|---|",
    ]
    for name, row in (("vLLM API server", v), ("gateway", g)):
        lines.append(
            f"| {name} | {row['cpu_us_per_token']:.1f} | {row['cpu_us_per_token'] / v['cpu_us_per_token']:.3f} "
            f"| {row['tokens_per_s']:.0f} | {row['events_per_token']:.2f} |"
        )
    lines += ["", "Gateway/vLLM CPU per token by round: " + ", ".join(f"{x:.3f}" for x in ratios), ""]
    (RESULTS / "vllm_frontend.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
