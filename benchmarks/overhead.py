"""The gateway's own overhead: the HTTP layer on the scripted engine, which produces
tokens instantly, so every microsecond measured is the gateway's.

Measures requests/s of one-token completions, streamed events/s, the latency a request
adds and the time each streamed token costs, on each streaming surface.

    .venv/bin/python -m benchmarks.overhead            # about a minute
    .venv/bin/python -m benchmarks.overhead --profile  # also py-spy flame data of the gateway

Writes results/overhead.json and results/overhead.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from tests.servers import ROOT, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
STREAM_TOKENS = 512
# one byte per token, longer than every stream (the default reply ends after about 350)
REPLY = " the quick brown fox jumps over the lazy dog" * 20
READERS = [
    {"id": "primary-0", "kind": "scripted", "model": "scripted", "scripted": {"eos_after": 100000, "reply": REPLY}}
]


async def requests_per_second(url: str, concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                r = await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
                r.raise_for_status()
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - t0)


def stream_body(surface: str) -> tuple[str, dict]:
    if surface == "openai-chat":
        return "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": STREAM_TOKENS,
            "stream": True,
        }
    if surface == "openai-completions":
        return "/v1/completions", {"prompt": "x", "max_tokens": STREAM_TOKENS, "stream": True}
    if surface == "takeoff":
        return "/generate_stream", {"text": "x", "max_new_tokens": STREAM_TOKENS}
    return "/api/generate-one", {
        "request_id": f"o-{time.time_ns()}",
        "prompt": "x",
        "generation_config": {"max_new_tokens": STREAM_TOKENS},
    }


async def events_per_second(url: str, surface: str, concurrency: int, rounds: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def one() -> tuple[int, float]:
            path, body = stream_body(surface)
            n = 0
            t0 = time.perf_counter()
            async with c.stream("POST", path, json=body) as r:
                async for chunk in r.aiter_raw():
                    n += chunk.count(b"\n\n") if surface != "generate-one" else len(chunk)
            return n, time.perf_counter() - t0

        await one()
        t0 = time.perf_counter()
        results = []
        for _ in range(rounds):
            results += await asyncio.gather(*(one() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    # every stream ran to its length: an event (or a byte) per token, framing events aside
    assert all(n >= STREAM_TOKENS for n, _ in results), (surface, sorted(n for n, _ in results)[:3])
    per_token = statistics.median(d / STREAM_TOKENS for _, d in results)
    return {"tokens_per_s": concurrency * rounds * STREAM_TOKENS / wall, "us_per_token_one_stream": per_token * 1e6}


async def added_latency(url: str, n: int = 200) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for _ in range(20):
            await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            (await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})).raise_for_status()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def profile_summary(path: Path, top: int = 12) -> list[str]:
    """Markdown rows of the frames that cost most, from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        name, _, where = leaf.partition(" (")
        own[f"{name} ({where.split(':')[0]})" if where else name] += n
    if not total:
        return []
    rows = [
        "",
        f"Where the gateway process spends its time under this load (py-spy, {total} samples, own time):",
        "",
        "| share | function |",
        "|---|---|",
    ]
    rows += [f"| {n / total:.1%} | `{name}` |" for name, n in own.most_common(top)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    gw = start_gateway(
        RESULTS / "overhead-gateway.log",
        "configs/scripted.yaml",
        {"GATEWAY_READERS": json.dumps(READERS), "GATEWAY_ACCESS_LOG": "false"},
    )
    profiler = None
    try:
        if args.profile:
            profiler = subprocess.Popen(
                [
                    str(Path(ROOT / ".venv" / "bin" / "py-spy")),
                    "record",
                    "-p",
                    str(gw.proc.pid),
                    "-f",
                    "raw",
                    "-o",
                    str(RESULTS / "overhead-profile.txt"),
                    "-r",
                    "200",
                    "--nonblocking",
                ]
            )
        result: dict[str, Any] = {
            "date": str(date.today()),
            "added_latency_ms_p50": asyncio.run(added_latency(gw.url)),
            "requests_per_s_c16": asyncio.run(requests_per_second(gw.url, 16, 5.0)),
            "streams": {
                s: asyncio.run(events_per_second(gw.url, s, 8, 2))
                for s in ("openai-chat", "openai-completions", "takeoff", "generate-one")
            },
        }
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            profiler.wait(60)
        gw.stop()
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Gateway overhead, {result['date']}, `python -m benchmarks.overhead` (scripted engine: tokens cost "
        "nothing; client and server share 2 CPU cores)",
        "",
        f"- one-token `/v1/completions`, sequential: **{result['added_latency_ms_p50']:.2f} ms** per request (p50)",
        f"- one-token `/v1/completions`, 16 concurrent: **{result['requests_per_s_c16']:.0f} requests/s**",
        "",
        "| stream surface | tokens/s (8 streams of 512) | µs per token, one stream |",
        "|---|---|---|",
    ]
    for s, r in result["streams"].items():
        lines.append(f"| {s} | {r['tokens_per_s']:.0f} | {r['us_per_token_one_stream']:.0f} |")
    if args.profile and (RESULTS / "overhead-profile.txt").exists():
        lines += profile_summary(RESULTS / "overhead-profile.txt")
    md = "\n".join(lines) + "\n"
    (RESULTS / "overhead.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
