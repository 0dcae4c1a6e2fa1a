"""What the Responses API's state costs the front end, on the scripted engine (tokens cost
nothing, so every microsecond measured is the gateway's).

1. `previous_response_id` resolution: the latency of a one-token turn that continues a
   stored response, against the same turn sent fresh, for stored histories of several
   lengths, with the memory store and with a local Redis (redis-server).
2. Streaming CPU: the gateway process's CPU time per streamed output token on
   `/v1/responses` against `/v1/chat/completions` (same prompt, same tokens).

    .venv/bin/python -m benchmarks.responses      # about two minutes

Writes results/responses.json and results/responses.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import time
from datetime import date
from typing import Any

import httpx
import psutil

from tests.servers import ROOT, free_port, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
CONTEXT = 1 << 20
READERS = [
    {
        "id": "primary-0",
        "kind": "scripted",
        "model": "scripted",
        "scripted": {"eos_after": 100000, "max_model_len": CONTEXT},
    }
]
HISTORIES = (0, 1_000, 10_000, 100_000)  # stored tokens (one byte = one token on the scripted engine)
SAMPLES = 300
STREAM_TOKENS = 512
STREAMS = 8


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def continuation_cost(url: str, history: int) -> dict[str, float]:
    """p50/p99 of a continued one-token turn minus the same turn sent fresh (ms)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        first = None
        if history:
            r = await c.post("/v1/responses", json={"model": "primary", "input": "x" * history, "max_output_tokens": 1})
            r.raise_for_status()
            first = r.json()["id"]
        turn = {"model": "primary", "input": "y", "max_output_tokens": 1, "store": False}
        cont = {**turn, "previous_response_id": first} if first else turn
        fresh_t: list[float] = []
        cont_t: list[float] = []
        for i in range(SAMPLES + 20):  # interleaved, the first 20 as warm-up
            for body, out in ((turn, fresh_t), (cont, cont_t)):
                t0 = time.perf_counter()
                (await c.post("/v1/responses", json=body)).raise_for_status()
                if i >= 20:
                    out.append((time.perf_counter() - t0) * 1e3)
    return {
        "fresh_p50_ms": statistics.median(fresh_t),
        "fresh_p99_ms": pct(fresh_t, 0.99),
        "continued_p50_ms": statistics.median(cont_t),
        "continued_p99_ms": pct(cont_t, 0.99),
    }


async def stream_cpu(url: str, pid: int, surface: str) -> float:
    """Gateway CPU µs per streamed output token (STREAMS concurrent streams)."""
    if surface == "chat":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "max_tokens": STREAM_TOKENS}
    else:
        path = "/v1/responses"
        body = {"input": "x", "max_output_tokens": STREAM_TOKENS, "store": False}
    body = {**body, "model": "primary", "stream": True}
    proc = psutil.Process(pid)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=STREAMS)) as c:

        async def one() -> None:
            async with c.stream("POST", path, json=body) as r:
                async for _ in r.aiter_raw():
                    pass

        await one()
        cpu0 = sum(proc.cpu_times()[:2])
        for _ in range(3):
            await asyncio.gather(*(one() for _ in range(STREAMS)))
        cpu = sum(proc.cpu_times()[:2]) - cpu0
    return cpu / (3 * STREAMS * STREAM_TOKENS) * 1e6


def redis_server() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make test installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return proc, f"redis://127.0.0.1:{port}/0"


def run_backend(backend: str, env: dict[str, str], streams: bool) -> dict[str, Any]:
    gw = start_gateway(
        RESULTS / f"responses-{backend}.log",
        "configs/scripted.yaml",
        {
            "GATEWAY_READERS": json.dumps(READERS),
            "GATEWAY_ACCESS_LOG": "false",
            "GATEWAY_CONTINUATION__MAX_BYTES": str(1 << 30),
            **env,
        },
    )
    try:
        out: dict[str, Any] = {"continuation": {h: asyncio.run(continuation_cost(gw.url, h)) for h in HISTORIES}}
        if streams:
            out["stream_cpu_us_per_token"] = {
                s: statistics.median([asyncio.run(stream_cpu(gw.url, gw.proc.pid, s)) for _ in range(3)])
                for s in ("chat", "responses")
            }
        return out
    finally:
        gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"date": str(date.today()), "memory": run_backend("memory", {}, streams=True)}
    redis, url = redis_server()
    try:
        env = {"GATEWAY_CONTINUATION__BACKEND": "redis", "GATEWAY_CONTINUATION__REDIS_URL": url}
        result["redis"] = run_backend("redis", env, streams=False)
    finally:
        redis.terminate()
        redis.wait(10)
    (RESULTS / "responses.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Responses API front-end cost, {result['date']}, `python -m benchmarks.responses` (scripted engine: "
        "tokens cost nothing; client and server share 2 CPU cores)",
        "",
        f"`previous_response_id` resolution: a one-token turn continuing a stored response against the same "
        f"turn sent fresh ({SAMPLES} of each, interleaved), by stored history length (tokens):",
        "",
        "| store | history | fresh p50 / p99 ms | continued p50 / p99 ms | added p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for backend in ("memory", "redis"):
        for h, r in result[backend]["continuation"].items():
            lines.append(
                f"| {backend} | {h} | {r['fresh_p50_ms']:.2f} / {r['fresh_p99_ms']:.2f} | "
                f"{r['continued_p50_ms']:.2f} / {r['continued_p99_ms']:.2f} | "
                f"{r['continued_p50_ms'] - r['fresh_p50_ms']:+.2f} / {r['continued_p99_ms'] - r['fresh_p99_ms']:+.2f} |"
            )
    cpu = result["memory"]["stream_cpu_us_per_token"]
    lines += [
        "",
        f"Gateway CPU per streamed output token ({STREAMS} streams of {STREAM_TOKENS}, median of 3 runs): "
        f"chat completions **{cpu['chat']:.0f} µs**, responses **{cpu['responses']:.0f} µs**.",
    ]
    md = "\n".join(lines) + "\n"
    (RESULTS / "responses.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
