"""Constrained vs unconstrained decoding throughput, per structured-output backend.

Starts one gateway with a reader per backend (each in a consumer group named after it),
then for each backend sends the same load three times: unconstrained, held to a JSON
schema, held to a regex. Every request generates exactly `--tokens` tokens (the
unconstrained ones with min_new_tokens, the constrained ones because the schema and the
regex need more tokens than that), so output tokens per second compare like with like.
It also measures what a schema costs the first time and when it repeats.

    .venv/bin/python -m benchmarks.structured            # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from tests.servers import start_gateway

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BACKENDS = ["xgrammar", "guidance", "outlines"]
# Both need more than 64 tokens, so every constrained request stops at the token limit.
SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 999}, "minItems": 80, "maxItems": 80}
REGEX = r"[a-z]{2,8}( [a-z]{2,8}){80,}"
PROMPT = "Write a long list of numbers:"


async def load(client: httpx.AsyncClient, body: dict[str, Any], requests: int, concurrency: int) -> dict[str, float]:
    """Send `requests` copies of `body`, `concurrency` at a time; tokens per second."""
    sem = asyncio.Semaphore(concurrency)
    tokens: list[int] = []

    async def one() -> None:
        async with sem:
            r = await client.post("/generate", json=body)
            r.raise_for_status()
            tokens.append(r.json()["metadata"]["generated_tokens"])

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.perf_counter() - t0
    return {"tokens": sum(tokens), "seconds": round(wall, 2), "tokens_per_s": round(sum(tokens) / wall, 1)}


async def schema_cost(client: httpx.AsyncClient, group: str, repeats: int = 5) -> dict[str, float]:
    """Latency of a one-token request with a schema never seen before, and repeated."""

    async def once(schema: dict[str, Any]) -> float:
        body = {
            "text": PROMPT,
            "consumer_group": group,
            "json_schema": schema,
            "max_new_tokens": 1,
            "return_metadata": True,
        }
        t0 = time.perf_counter()
        (await client.post("/generate", json=body)).raise_for_status()
        return time.perf_counter() - t0

    fresh = []
    for _ in range(repeats):
        fresh.append(await once({"type": "object", "properties": {uuid.uuid4().hex[:8]: {"type": "integer"}}}))
    same = {"type": "object", "properties": {"fixed": {"type": "integer"}}}
    await once(same)
    repeated = [await once(same) for _ in range(repeats)]
    plain = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        (
            await client.post("/generate", json={"text": PROMPT, "consumer_group": group, "max_new_tokens": 1})
        ).raise_for_status()
        plain.append(time.perf_counter() - t0)
    return {
        "new_schema_ms": round(statistics.median(fresh) * 1000, 1),
        "repeated_schema_ms": round(statistics.median(repeated) * 1000, 1),
        "unconstrained_ms": round(statistics.median(plain) * 1000, 1),
    }


async def measure(url: str, tokens: int, requests: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for backend in BACKENDS:
            base = {"text": PROMPT, "consumer_group": backend, "max_new_tokens": tokens, "return_metadata": True}
            # warm-up: compile both grammars once
            await load(client, {**base, "json_schema": SCHEMA}, 1, 1)
            await load(client, {**base, "regex_string": REGEX}, 1, 1)
            row = {
                "none": await load(client, {**base, "min_new_tokens": tokens}, requests, concurrency),
                "json_schema": await load(client, {**base, "json_schema": SCHEMA}, requests, concurrency),
                "regex": await load(client, {**base, "regex_string": REGEX}, requests, concurrency),
                "schema_cost": await schema_cost(client, backend),
            }
            for kind in ("json_schema", "regex"):
                row[kind]["ratio_to_none"] = round(row[kind]["tokens_per_s"] / row["none"]["tokens_per_s"], 2)
            results[backend] = row
            print(backend, json.dumps(row), flush=True)
    return results


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"Structured generation, {date.today()}, `python -m benchmarks.structured` "
        f"({args.requests} requests of {args.tokens} tokens, {args.concurrency} at a time, SmolLM2-135M fp32 on 2 CPU cores)",
        "",
        "| backend | none tok/s | JSON schema tok/s (ratio) | regex tok/s (ratio) | new schema | repeated schema | unconstrained |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, r in results.items():
        c = r["schema_cost"]
        lines.append(
            f"| {b} | {r['none']['tokens_per_s']} | {r['json_schema']['tokens_per_s']} ({r['json_schema']['ratio_to_none']}) "
            f"| {r['regex']['tokens_per_s']} ({r['regex']['ratio_to_none']}) | {c['new_schema_ms']} ms "
            f"| {c['repeated_schema_ms']} ms | {c['unconstrained_ms']} ms |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    common = {
        "model": "embedded:smollm2-135m-instruct",
        "dtype": "float32",
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kv_cache_gib": 1,
    }
    readers = [{"id": f"{b}-0", "consumer_group": b, "structured_outputs_backend": b, **common} for b in BACKENDS]
    RESULTS.mkdir(parents=True, exist_ok=True)
    gw = start_gateway(RESULTS / "structured-gateway.log", env={"GATEWAY_READERS": json.dumps(readers)}, wait=False)
    try:
        gw.wait_loaded()
        results = asyncio.run(measure(gw.url, args.tokens, args.requests, args.concurrency))
    finally:
        gw.stop()
    (RESULTS / "structured.json").write_text(
        json.dumps({"date": str(date.today()), "args": vars(args), "results": results}, indent=2)
    )
    md = markdown(results, args)
    (RESULTS / "structured.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
