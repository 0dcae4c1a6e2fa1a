"""Batches in the capacity live traffic leaves, on the real engine (the embedded model).

One gateway with batches enabled (its vLLM reader then schedules by priority), and in it:

1. `live`: 8 concurrent streaming chat requests (64 tokens each, ignore_eos), alone;
2. `batch alone`: a batch of N chat lines (32 tokens each, ignore_eos), alone:
   its wall time, and the engine's saturated output tokens/s;
3. `live + batch`: the same batch started again and, once its lines run, the same live
   load: the live TTFT and ITL against (1), and live + batch output tokens/s during the
   overlap against the saturated rate of (2);

then `vllm run-batch` (vLLM's offline batch command, `vllm.entrypoints.openai.run_batch`)
on the same file with the same engine settings: its wall time less its start-up (measured
with a one-line file), against the gateway's batch alone.

    .venv/bin/python -m benchmarks.batch --lines 500      # about 15 minutes on 2 cores

Writes results/batch.json and results/batch.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import openai

from benchmarks.serving import ENGINE_ENV, MODEL_NAME, RESULTS, level, model_dir, prompt_text, settle, start
from tests.servers import ROOT

LIVE_CONCURRENCY, LIVE_TOKENS, BATCH_TOKENS = 8, 64, 32
HEADROOM = 8  # batches.live_headroom: sequences kept free of batch lines for live requests


def lines_file(folder: Path, n: int) -> Path:
    path = folder / f"batch-{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            # chat lines: vLLM 0.32's run-batch takes chat, embeddings and score lines, not completions
            body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": f"Item {i}: " + prompt_text(24)}],
                    "max_tokens": BATCH_TOKENS, "ignore_eos": True, "temperature": 0}  # fmt: skip
            line = {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(json.dumps(line) + "\n")
    return path


def run_gateway_batch(client: openai.OpenAI, path: Path) -> tuple[str, float]:
    """Upload and start a batch; (its id, the time it was created)."""
    f = client.files.create(file=(path.name, path.read_bytes()), purpose="batch")
    t0 = time.perf_counter()
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    return batch.id, t0


def completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts is not None else 0


def wait_done(client: openai.OpenAI, batch_id: str) -> Any:
    while (b := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.5)
    assert b.status == "completed" and b.request_counts is not None and b.request_counts.failed == 0, b
    return b


def output_tokens(client: openai.OpenAI, batch: Any) -> int:
    text = client.files.content(batch.output_file_id).text
    return sum(json.loads(line)["response"]["body"]["usage"]["completion_tokens"] for line in text.splitlines())


def run_batch_cli(model: str, path: Path, out: Path, log: Path) -> float:
    """vLLM's offline batch command on `path`: its wall time in seconds."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(path), "-o", str(out),
           "--model", model, "--served-model-name", MODEL_NAME, "--dtype", "float32", "--max-model-len", "2048",
           "--enforce-eager", "--seed", "0"]  # fmt: skip
    t0 = time.perf_counter()
    with log.open("wb") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENGINE_ENV}, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--live-requests", type=int, default=32)
    # vLLM's server and run-batch run 128 sequences at once on CPU (its default max_num_seqs
    # there); the reader's limit is that plus the live headroom, so the batch alone runs as
    # many lines at once as run-batch does
    parser.add_argument("--max-in-flight", type=int, default=128 + HEADROOM)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = model_dir()
    live_prompt = prompt_text(64)
    out: dict[str, Any] = {"date": date.today().isoformat(), "lines": args.lines, "batch_tokens": BATCH_TOKENS,
                           "max_in_flight": args.max_in_flight, "live_headroom": HEADROOM,
                           "live": {"concurrency": LIVE_CONCURRENCY, "tokens": LIVE_TOKENS,
                                    "requests": args.live_requests}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = lines_file(folder, args.lines)
        os.environ.update({"GATEWAY_BATCHES__ENABLED": "true", "GATEWAY_BATCHES__DIRECTORY": str(folder / "files"),
                           "GATEWAY_BATCHES__POLL_SECONDS": "0.1", "GATEWAY_BATCHES__LIVE_HEADROOM": str(HEADROOM)})  # fmt: skip
        server = start("gateway", model, RESULTS / "batch-gateway.log", {"max_in_flight": args.max_in_flight})
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
            live_alone = asyncio.run(
                level(server.url, "chat", LIVE_CONCURRENCY, args.live_requests, live_prompt, LIVE_TOKENS)
            )
            print("live alone", {k: round(v, 4) for k, v in live_alone.items()}, flush=True)
            bid, t0 = run_gateway_batch(client, path)
            alone = wait_done(client, bid)
            batch_wall = time.perf_counter() - t0
            batch_tokens = output_tokens(client, alone)
            saturated = batch_tokens / batch_wall
            print(f"batch alone: {batch_wall:.1f} s, {saturated:.0f} output tok/s", flush=True)
            bid, t0 = run_gateway_batch(client, path)
            while completed(client, bid) < 16:
                time.sleep(0.2)
            done_before = completed(client, bid)
            t_live = time.perf_counter()
            live_with = asyncio.run(
                level(server.url, "chat", LIVE_CONCURRENCY, args.live_requests, live_prompt, LIVE_TOKENS)
            )
            overlap = time.perf_counter() - t_live
            done_after = completed(client, bid)
            print("live with a batch", {k: round(v, 4) for k, v in live_with.items()}, flush=True)
            wait_done(client, bid)
            overlap_batch_tokens = (done_after - done_before) * BATCH_TOKENS
            live_tokens = live_with["output_tok_s"] * live_with["wall_s"]
            total = (overlap_batch_tokens + live_tokens) / overlap
        finally:
            server.stop()
        settle()
        start_only = run_batch_cli(model, lines_file(folder, 1), folder / "one.out", RESULTS / "batch-vllm-one.log")
        settle()
        cli_wall = run_batch_cli(model, path, folder / "all.out", RESULTS / "batch-vllm.log")
        cli_work = cli_wall - start_only
    out.update(
        live_alone=live_alone,
        live_with_batch=live_with,
        ttft_p50_ratio=live_with["ttft_p50"] / live_alone["ttft_p50"],
        itl_p50_ratio=live_with["itl_p50"] / live_alone["itl_p50"],
        batch_alone_s=batch_wall,
        saturated_tok_s=saturated,
        overlap_tok_s=total,
        throughput_ratio=total / saturated,
        vllm_run_batch_s=cli_wall,
        vllm_run_batch_start_s=start_only,
        vllm_run_batch_work_s=cli_work,
        batch_vs_run_batch=cli_work / batch_wall,
    )
    (RESULTS / "batch.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# Batches beside live traffic ({out['date']})",
        "",
        f"`.venv/bin/python -m benchmarks.batch --lines {args.lines}`; the embedded SmolLM2 on 2 CPU cores, the "
        f"reader's max_in_flight {args.max_in_flight} with a live headroom of {HEADROOM}. Live: {LIVE_CONCURRENCY} concurrent streaming chat "
        f"requests of {LIVE_TOKENS} tokens ({args.live_requests} in all); batch: {args.lines} chat lines "
        f"of {BATCH_TOKENS} tokens.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| live TTFT p50 with / without a batch | {live_with['ttft_p50'] * 1e3:.0f} / {live_alone['ttft_p50'] * 1e3:.0f}"
        f" ms = {out['ttft_p50_ratio']:.2f}x | <= 1.3x |",
        f"| live ITL p50 with / without a batch | {live_with['itl_p50'] * 1e3:.1f} / {live_alone['itl_p50'] * 1e3:.1f}"
        f" ms = {out['itl_p50_ratio']:.2f}x | <= 1.2x |",
        f"| live + batch output tok/s during the overlap / the batch alone (saturated) | {total:.0f} / "
        f"{saturated:.0f} = {out['throughput_ratio']:.2f}x | >= 0.9x |",
        f"| the batch alone on the gateway | {batch_wall:.1f} s | |",
        f"| `vllm run-batch`, less its start-up ({start_only:.0f} s, a one-line file) | {cli_work:.1f} s "
        f"(gateway {out['batch_vs_run_batch']:.2f}x as fast) | >= 1x |",
        f"| live requests refused | {live_with['errors']} of {args.live_requests} | 0 |",
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / "batch.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
