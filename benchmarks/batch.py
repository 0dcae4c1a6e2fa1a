"""Batches in the capacity live traffic leaves, on the real engine (the embedded model).

One gateway with batches enabled (its vLLM reader then schedules by priority), and in it:

1. `live`: 8 concurrent streaming chat requests (64 tokens each, ignore_eos), alone;
2. `batch alone`: a batch of N chat lines (32 tokens each, ignore_eos), alone:
   its wall time, and the engine's saturated output tokens/s;
3. `live + batch`: the same batch started again and, once its lines run, the same live
   load: the live TTFT and ITL against (1), and live + batch output tokens/s during the
   overlap against the saturated rate of (2);

then, in rounds alternating with the gateway's batch alone (the gateway idle meanwhile),
`vllm run-batch` (vLLM's offline batch command, `vllm.entrypoints.openai.run_batch`) on
the same file with the same engine settings: its own progress bar's time (its work, less
its start-up) against the gateway's wall time from `batches.create` to the last poll.

    .venv/bin/python -m benchmarks.batch --lines 300      # about 8 minutes on 2 cores
    .venv/bin/python -m benchmarks.batch --lines 300 --lines-per-reader 12 --skip-run-batch

Writes results/batch.json and results/batch.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import openai
import psutil

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


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of a server's processes: "gateway" for the server
    process itself, the others by name (vLLM's EngineCore, Worker)."""
    root = psutil.Process(pid)
    cpu: dict[str, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            name = "gateway" if proc.pid == pid else proc.name()
            cpu[name] = cpu.get(name, 0.0) + sum(proc.cpu_times()[:2])
    return cpu


def returned_lines(url: str) -> float:
    """Lines the gateway stopped to give their room to live traffic (its metric)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    name = "gateway_batch_lines_returned_total{"
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name))


def progress_seconds(log: Path) -> float:
    """The elapsed time of run-batch's last progress bar line ("[00:32<00:00, ...]")."""
    bars = re.findall(r"Running batch: 100%.*?\[(\d+):(\d+)<", log.read_text(errors="replace"))
    if not bars:
        return float("nan")
    minutes, seconds = bars[-1]
    return int(minutes) * 60 + int(seconds)


def run_batch_cli(model: str, path: Path, out: Path, log: Path) -> float:
    """vLLM's offline batch command on `path`: its wall time in seconds."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(path), "-o", str(out),
           "--model", model, "--served-model-name", MODEL_NAME, "--dtype", "float32", "--max-model-len", "2048",
           "--enforce-eager", "--seed", "0"]  # fmt: skip
    t0 = time.perf_counter()
    with log.open("wb") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENGINE_ENV}, cwd=ROOT, check=True)
    return time.perf_counter() - t0


def decode_curve(levels: list[int]) -> None:
    """The live load's step cost as the sequences in the engine grow: `n` streaming chats of
    64 tokens started together (one prefill, then decode steps of `n` sequences), for each
    `n`; its ITL p50 is a decode step of `n` sequences seen by a client. Writes
    results/batch-decode-curve.{json,md}."""
    model = model_dir()
    prompt = prompt_text(64)
    server = start("gateway", model, RESULTS / "batch-curve-gateway.log", {"max_in_flight": max(levels)})
    try:
        points = {n: asyncio.run(level(server.url, "chat", n, n, prompt, LIVE_TOKENS)) for n in levels}
    finally:
        server.stop()
    base = points[levels[0]]
    rows = [
        f"| {n} | {p['itl_p50'] * 1e3:.1f} ms | {p['itl_p50'] / base['itl_p50']:.2f}x | {p['output_tok_s']:.0f} |"
        for n, p in points.items()
    ]
    (RESULTS / "batch-decode-curve.json").write_text(json.dumps({"date": date.today().isoformat(), "points": points}))
    text = "\n".join(
        [
            f"# A decode step's cost against the sequences in it ({date.today().isoformat()})",
            "",
            "`.venv/bin/python -m benchmarks.batch --decode-curve`; the embedded SmolLM2 on 2 CPU cores, "
            f"n streaming chats of {LIVE_TOKENS} tokens started together.",
            "",
            f"| sequences | ITL p50 | against {levels[0]} | output tok/s |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    (RESULTS / "batch-decode-curve.md").write_text(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--live-requests", type=int, default=32)
    # vLLM's server and run-batch run 128 sequences at once on CPU (its default max_num_seqs
    # there); the reader's limit is that plus the live headroom, so the batch alone runs as
    # many lines at once as run-batch does
    parser.add_argument("--max-in-flight", type=int, default=128 + HEADROOM)
    # sequences in all (live first) a reader keeps beside live traffic: the trade between
    # live ITL and the overlap's throughput on an engine whose step costs grow with its batch
    parser.add_argument("--lines-per-reader", type=int, default=32)
    parser.add_argument("--skip-run-batch", action="store_true", help="the gateway's figures only")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the batch alone and run-batch")
    parser.add_argument("--decode-curve", action="store_true", help="only the step cost against the batch size")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.decode_curve:
        decode_curve([LIVE_CONCURRENCY, 12, 16, 24, 32, 64, 128])
        return
    model = model_dir()
    live_prompt = prompt_text(64)
    out: dict[str, Any] = {"date": date.today().isoformat(), "lines": args.lines, "batch_tokens": BATCH_TOKENS,
                           "max_in_flight": args.max_in_flight, "live_headroom": HEADROOM,
                           "lines_per_reader": args.lines_per_reader,
                           "live": {"concurrency": LIVE_CONCURRENCY, "tokens": LIVE_TOKENS,
                                    "requests": args.live_requests}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = lines_file(folder, args.lines)
        os.environ.update({"GATEWAY_BATCHES__ENABLED": "true", "GATEWAY_BATCHES__DIRECTORY": str(folder / "files"),
                           "GATEWAY_BATCHES__POLL_SECONDS": "0.1", "GATEWAY_BATCHES__LIVE_HEADROOM": str(HEADROOM),
                           "GATEWAY_BATCHES__LINES_PER_READER": str(args.lines_per_reader),
                           "GATEWAY_METRICS_ON_MAIN_PORT": "true"})  # fmt: skip
        server = start("gateway", model, RESULTS / "batch-gateway.log", {"max_in_flight": args.max_in_flight})
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)
            live_alone = asyncio.run(
                level(server.url, "chat", LIVE_CONCURRENCY, args.live_requests, live_prompt, LIVE_TOKENS)
            )
            print("live alone", {k: round(v, 4) for k, v in live_alone.items()}, flush=True)
            cpu0 = tree_cpu(server.proc.pid)
            bid, t0 = run_gateway_batch(client, path)
            alone = wait_done(client, bid)
            batch_wall = time.perf_counter() - t0
            cpu1 = tree_cpu(server.proc.pid)
            alone_cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
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
            returned = returned_lines(server.url)
            # the batch alone against run-batch, rounds alternating (the gateway idles,
            # its engine loaded, while run-batch runs): run-batch's own progress bar
            # (its work, less its start-up) against the gateway's wall time
            rounds: list[dict[str, float]] = []
            for r in range(0 if args.skip_run_batch else args.rounds):
                settle()
                bid, t0 = run_gateway_batch(client, path)
                wait_done(client, bid)
                gw = time.perf_counter() - t0
                settle()
                log = RESULTS / f"batch-vllm-{r}.log"
                run_batch_cli(model, path, folder / "all.out", log)
                rounds.append({"gateway_s": gw, "run_batch_s": progress_seconds(log)})
                print("round", r, rounds[-1], flush=True)
        finally:
            server.stop()
    ratios = sorted(x["run_batch_s"] / x["gateway_s"] for x in rounds)
    cli_bar = float(median(x["run_batch_s"] for x in rounds)) if rounds else None
    gw_median = float(median(x["gateway_s"] for x in rounds)) if rounds else None
    out.update(
        live_alone=live_alone,
        live_with_batch=live_with,
        ttft_p50_ratio=live_with["ttft_p50"] / live_alone["ttft_p50"],
        itl_p50_ratio=live_with["itl_p50"] / live_alone["itl_p50"],
        batch_alone_s=batch_wall,
        saturated_tok_s=saturated,
        overlap_tok_s=total,
        throughput_ratio=total / saturated,
        run_batch_rounds=rounds,
        vllm_run_batch_s=cli_bar,
        gateway_batch_s=gw_median,
        batch_vs_run_batch=float(median(ratios)) if ratios else None,
        lines_returned=returned,
        batch_alone_cpu_s=alone_cpu,
    )
    name = "batch" if args.lines_per_reader == 32 else f"batch-share{args.lines_per_reader}"
    name += "" if args.lines == 300 else f"-{args.lines}"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# Batches beside live traffic ({out['date']})",
        "",
        f"`.venv/bin/python -m benchmarks.batch --lines {args.lines}`; the embedded SmolLM2 on 2 CPU cores, the "
        f"reader's max_in_flight {args.max_in_flight} with a live headroom of {HEADROOM}, "
        f"{args.lines_per_reader} sequences in all beside live traffic (lines_per_reader). Live: {LIVE_CONCURRENCY} concurrent streaming chat "
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
        f"| the batch alone on the gateway | {batch_wall:.1f} s; CPU "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(alone_cpu.items()) if v >= 0.05)
        + " | |",
        f"| the batch alone on the gateway / `vllm run-batch` (its progress bar: its work less its start-up, "
        f"whole seconds), median of {len(rounds)} alternating rounds | "
        + (
            f"{gw_median:.1f} / {cli_bar:.0f} s (gateway {out['batch_vs_run_batch']:.2f}x as fast; rounds "
            f"{', '.join(f'{x:.2f}' for x in ratios)})"
            if rounds
            else "not run (--skip-run-batch)"
        )
        + " | >= 1x |",
        f"| batch lines given back for live traffic (run again) | {returned:.0f} | |",
        f"| live requests refused | {live_with['errors']} of {args.live_requests} | 0 |",
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
