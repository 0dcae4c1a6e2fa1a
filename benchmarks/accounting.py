"""What the usage ledger, token budgets and tracing cost the front end, at GPU token rates.

The gateway on the scripted engine (tokens on the engine's clock at a set rate per stream,
as a GPU decodes them), with API keys, in four configurations started one after another
and alternating order each round:

- `keys`: keys, the ledger off, no budget (the base);
- `ledger`: the usage ledger on (its default), no budget;
- `budgets`: the ledger and a per-day token budget on the key, counted in a local Redis
  (redis-server on 127.0.0.1: every lease and refund a Redis round trip);
- `budgets-memory`: the same budget counted in the memory backend (one replica): what the
  budget costs apart from the Redis client;
- `tracing`: the ledger and OpenTelemetry traces of every request, exported over OTLP/HTTP
  to a receiver in this process.

Measured: server CPU per streamed token (server process on one core, client on the other),
and the latency of small whole requests one at a time (p50, p99): what each request pays.
Ratios are to `keys` in the same round (the median of the rounds' ratios), as runs of one
configuration move by 10% between rounds on a shared machine.

    .venv/bin/python -m benchmarks.accounting --rounds 5     # about 12 minutes

Writes results/accounting.json and results/accounting.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.frontend import REPLY, RESULTS, pin, quantile, run_streams
from tests.otlp import http_receiver
from tests.servers import free_port, start_gateway

KEY = "sk-bench-accounting-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIGS = ("keys", "ledger", "budgets", "budgets-memory", "tracing")


def keys_file(folder: Path, budget: bool) -> Path:
    key: dict[str, Any] = {"name": "bench", "key": KEY, "tenant": "bench"}
    if budget:
        key["tokens_per_day"] = 10**12  # never reached: every lease and refund still counts
    path = folder / f"keys-{budget}.yaml"
    path.write_text(yaml.safe_dump({"keys": [key]}))
    return path


def start(config: str, rate: float, folder: Path, redis_url: str, otlp: str) -> Any:
    reader = {"id": "primary-0", "kind": "scripted", "model": "scripted", "max_in_flight": 4096,
              "scripted": {"eos_after": 10**6, "tokens_per_second": rate or None, "reply": REPLY}}  # fmt: skip
    env = {
        "GATEWAY_READERS": json.dumps([reader]),
        "GATEWAY_MAX_NEW_TOKENS_LIMIT": "100000",
        "GATEWAY_API_KEYS_FILE": str(keys_file(folder, config.startswith("budgets"))),
        "GATEWAY_USAGE__ENABLED": "false" if config == "keys" else "true",
    }
    if config == "budgets":  # budgets-memory: the default backend, memory
        env |= {"GATEWAY_CONTINUATION__BACKEND": "redis", "GATEWAY_CONTINUATION__REDIS_URL": redis_url}
    if config == "tracing":
        env |= {"GATEWAY_TRACING": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp, "OTEL_SERVICE_NAME": "bench"}
    return start_gateway(RESULTS / f"accounting-{config}.log", "configs/scripted.yaml", env)


def latencies(url: str, n: int) -> dict[str, float]:
    """n whole requests of 4 tokens, one at a time: client-observed latency."""
    seen = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        body = {"model": "primary", "prompt": "x", "max_tokens": 4}
        for _ in range(20):
            c.post("/v1/completions", json=body)
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post("/v1/completions", json=body)
            seen.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return {"request_p50_ms": quantile(seen, 0.5) * 1e3, "request_p99_ms": quantile(seen, 0.99) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=128)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens/s per stream")
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="a comma-separated subset (keys is always run)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (`make system-deps`)"
    port = free_port()
    redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    chosen = set(args.configs.split(",")) | {"keys"}
    assert chosen <= set(CONFIGS), f"--configs: one of {CONFIGS}"
    configs = tuple(c for c in CONFIGS if c in chosen)
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    try:
        with tempfile.TemporaryDirectory() as tmp, http_receiver() as (otlp, received):
            for r in range(args.rounds):
                order = configs if r % 2 == 0 else tuple(reversed(configs))
                for config in order:
                    gw = start(config, args.rate, Path(tmp), f"redis://127.0.0.1:{port}/0", otlp)
                    try:
                        pin(gw.proc.pid)
                        # warm: the same burst of short streams first, so that every
                        # configuration is measured in its steady state (Redis's pool
                        # holds its connections, as in a server that has been running)
                        asyncio.run(run_streams(gw.url, gw.proc.pid, "openai-chat", args.streams, 8, headers=AUTH))
                        result = asyncio.run(
                            run_streams(gw.url, gw.proc.pid, "openai-chat", args.streams, args.tokens, headers=AUTH)
                        )
                        result |= latencies(gw.url, args.requests)
                        runs[config].append(result)
                        print(config, {k: round(v, 2) for k, v in result.items() if "probe" not in k}, flush=True)
                    finally:
                        gw.stop()
            spans = len(received.spans)
    finally:
        redis.terminate()
        redis.wait(10)
    summary = {c: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for c, rs in runs.items()}
    # each round's ratio to the base of the same round: pairs close in time
    ratios = {
        c: [x["cpu_us_per_token"] / b["cpu_us_per_token"] for x, b in zip(rs, runs["keys"], strict=True)]
        for c, rs in runs.items()
    }
    p99_delta = {
        c: [x["request_p99_ms"] - b["request_p99_ms"] for x, b in zip(rs, runs["keys"], strict=True)]
        for c, rs in runs.items()
    }
    out: dict[str, Any] = {
        "date": date.today().isoformat(),
        "rounds": args.rounds,
        "streams": args.streams,
        "rate_per_stream": args.rate,
        "tokens_per_stream": args.tokens,
        "spans_received": spans,
        "summary": summary,
        "ratios": ratios,
        "p99_delta_ms": p99_delta,
        "runs": runs,
    }
    (RESULTS / "accounting.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# Ledger, budgets and tracing: what they cost ({out['date']})",
        "",
        f"`.venv/bin/python -m benchmarks.accounting {' '.join(sys.argv[1:])}` (medians of the rounds, configurations "
        "alternating order; the ratio is the median of each round's ratio to that round's keys run; each run "
        f"after a warm-up burst of {args.streams} short streams). The gateway on the scripted engine, {args.streams} chat streams x {args.rate:.0f} "
        f"tokens/s x {args.tokens} tokens (server on one core, client on the other), then {args.requests} whole "
        "4-token completions one at a time. Budgets count in a local Redis (`budgets`) or in the memory backend "
        f"(`budgets-memory`); traces go to an OTLP/HTTP receiver ({spans} spans received).",
        "",
        "| configuration | server µs/token | vs keys (target budgets <= 1.05, tracing <= 1.10) | rounds "
        "| tokens/s | request p50 ms | request p99 ms | p99 - keys p99 ms (target budgets <= 1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, s in summary.items():
        each = ", ".join(f"{x:.2f}" for x in ratios[c])
        lines.append(
            f"| {c} | {s['cpu_us_per_token']:.1f} | {statistics.median(ratios[c]):.3f} | {each} "
            f"| {s['tokens_per_s']:.0f} | {s['request_p50_ms']:.2f} | {s['request_p99_ms']:.2f} "
            f"| {statistics.median(p99_delta[c]):+.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / "accounting.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
