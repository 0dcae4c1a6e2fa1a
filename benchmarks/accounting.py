"""What the usage ledger, token budgets and tracing cost the front end, at GPU token rates.

The gateway on the scripted engine (tokens on the engine's step clock at a set rate per
stream, as a GPU decodes them), with API keys, in these configurations:

- `keys`: keys, the ledger off, no budget (the base);
- `ledger`: the usage ledger on (its default), no budget;
- `budgets`: the ledger and a per-day token budget on the key, counted in a local Redis
  (redis-server on 127.0.0.1: every lease and refund a Redis round trip);
- `budgets-memory`: the same budget counted in the memory backend (one replica): what the
  budget costs apart from the Redis client;
- `tracing`: the ledger and OpenTelemetry traces of every request, exported over OTLP/HTTP
  to a receiver in this process.

Each configuration runs at the same time as a `keys` gateway of its own, both servers on one
core and the client on the other, the same streams to each; the ratio is taken to the keys
gateway beside it (the median of the rounds' ratios). Runs one after another moved by 10-25%
on this shared machine; two servers side by side see the same machine, and their ratio
moves by about 1%.

Measured: server CPU per streamed token, and the latency of small whole requests one at a
time, one server at a time (p50, p99): what each request pays.

    .venv/bin/python -m benchmarks.accounting --rounds 4     # about 12 minutes

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


async def both(gws: list[Any], streams: int, tokens: int) -> list[dict[str, float]]:
    """`streams` chat streams of `tokens` to each gateway, all at once."""
    return list(
        await asyncio.gather(
            *(run_streams(gw.url, gw.proc.pid, "openai-chat", streams, tokens, headers=AUTH) for gw in gws)
        )
    )


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
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--streams", type=int, default=128)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens/s per stream")
    parser.add_argument("--tokens", type=int, default=1200)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="a comma-separated subset (keys is always run)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (`make system-deps`)"
    port = free_port()
    redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    chosen = set(args.configs.split(",")) - {"keys"}
    assert chosen <= set(CONFIGS), f"--configs: one of {CONFIGS}"
    configs = tuple(c for c in CONFIGS if c in chosen)
    # each configuration beside a keys-alone gateway of its own, both at once
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    bases: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    try:
        with tempfile.TemporaryDirectory() as tmp, http_receiver() as (otlp, received):
            for r in range(args.rounds):
                for config in configs:
                    pair = ("keys", config) if r % 2 == 0 else (config, "keys")
                    gws = [start(c, args.rate, Path(tmp), f"redis://127.0.0.1:{port}/0", otlp) for c in pair]
                    try:
                        for gw in gws:
                            pin(gw.proc.pid)
                        # warm: the same burst of short streams first, so that each is
                        # measured in its steady state (Redis's pool holds its connections,
                        # as in a server that has been running)
                        asyncio.run(both(gws, args.streams, 8))
                        results = asyncio.run(both(gws, args.streams, args.tokens))
                        for gw, result in zip(gws, results, strict=True):
                            result |= latencies(gw.url, args.requests)  # one server at a time
                        measured = dict(zip(pair, results, strict=True))
                        runs[config].append(measured[config])
                        bases[config].append(measured["keys"])
                        ratio = measured[config]["cpu_us_per_token"] / measured["keys"]["cpu_us_per_token"]
                        print(f"round {r + 1}: {config} / keys = {ratio:.3f}", flush=True)
                    finally:
                        for gw in gws:
                            gw.stop()
            spans = len(received.spans)
    finally:
        redis.terminate()
        redis.wait(10)
    every_base = [b for c in configs for b in bases[c]]
    summary = {"keys": {k: statistics.median(x[k] for x in every_base) for k in every_base[0]}}
    summary |= {c: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for c, rs in runs.items()}
    # each round's ratio to the keys gateway that ran beside it
    ratios = {
        c: [x["cpu_us_per_token"] / b["cpu_us_per_token"] for x, b in zip(rs, bases[c], strict=True)]
        for c, rs in runs.items()
    }
    p99_delta = {
        c: [x["request_p99_ms"] - b["request_p99_ms"] for x, b in zip(rs, bases[c], strict=True)]
        for c, rs in runs.items()
    }
    ratios["keys"], p99_delta["keys"] = [1.0], [0.0]
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
        "keys_beside": bases,
    }
    (RESULTS / "accounting.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# Ledger, budgets and tracing: what they cost ({out['date']})",
        "",
        f"`.venv/bin/python -m benchmarks.accounting {' '.join(sys.argv[1:])}`: each configuration runs at the "
        "same time as a gateway with keys alone, both on one core, the client on the other (so that what "
        "the shared machine does meanwhile weighs on both alike); the ratio is the median of the rounds' "
        "ratios, each to the keys gateway beside it; start order alternating; each pair after a warm-up "
        f"burst of {args.streams} short streams each. The gateway on the scripted engine, {args.streams} chat "
        f"streams x {args.rate:.0f} tokens/s x {args.tokens} tokens to each server, then {args.requests} whole "
        "4-token completions one at a time, one server at a time. Budgets count in a local Redis (`budgets`) "
        f"or in the memory backend (`budgets-memory`); traces go to an OTLP/HTTP receiver ({spans} spans "
        "received).",
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
