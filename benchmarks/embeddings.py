"""Dynamic batching: 64 concurrent single-text embedding requests vs one direct encode.

Starts a gateway with only the embedded MiniLM reader, then in alternating rounds
measures (a) one `SentenceTransformer.encode` of 64 texts in this process and (b) 64
concurrent HTTP requests of one text each to `/v1/embeddings`. The ratio of embeddings
per second, HTTP over direct, is what dynamic batching buys back (target: 0.8 or better).
Without batching the 64 requests would cost like 64 single-text encodes.

    .venv/bin/python -m benchmarks.embeddings          # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import date
from pathlib import Path

import aiohttp
import httpx

from tests.servers import start_gateway

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def texts(n: int, round_: int) -> list[str]:
    return [
        f"round {round_}: sentence {i} says the weather on day {i} was {'sunny' if i % 2 else 'rainy'}"
        for i in range(n)
    ]


async def http_round(session: aiohttp.ClientSession, url: str, batch: list[str]) -> float:
    async def one(t: str) -> None:
        async with session.post(url, json={"input": t, "model": "embed"}) as r:
            r.raise_for_status()
            await r.read()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(t) for t in batch))
    return time.perf_counter() - t0


async def run(url: str, n: int, rounds: int) -> dict[str, object]:
    from sentence_transformers import SentenceTransformer

    from engine_adapters.models import minilm_path

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    direct, http, singles = [], [], []
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector) as session:
        await http_round(session, url, texts(n, -1))  # warm-up: connections, first batch
        model.encode(texts(n, -1))
        for r in range(rounds):
            batch = texts(n, r)
            t0 = time.perf_counter()
            model.encode(batch, batch_size=n)
            direct.append(time.perf_counter() - t0)
            http.append(await http_round(session, url, batch))
        t0 = time.perf_counter()
        for t in texts(n, 99):
            model.encode([t])
        singles.append(time.perf_counter() - t0)
    d, h = statistics.median(direct), statistics.median(http)
    return {
        "texts": n,
        "rounds": rounds,
        "direct_encode_s": round(d, 4),
        "http_64_concurrent_s": round(h, 4),
        "direct_per_s": round(n / d, 1),
        "http_per_s": round(n / h, 1),
        "ratio": round(d / h, 2),
        "unbatched_64_singles_s": round(singles[0], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--max-batch-size", type=int, default=None, help="the reader's setting (default 64)")
    args = parser.parse_args()
    readers = [
        {
            "id": "embed-0",
            "consumer_group": "embed",
            "kind": "sentence-transformers",
            "model": "embedded:all-minilm-l6-v2",
            "max_batch_size": args.max_batch_size,
        }
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    gw = start_gateway(RESULTS / "embeddings-gateway.log", env={"GATEWAY_READERS": json.dumps(readers)})
    try:
        result = asyncio.run(run(gw.url + "/v1/embeddings", args.texts, args.rounds))
        result["recent_batch_sizes"] = httpx.get(gw.url + "/status").json()["live_readers"]["embed-0"][
            "recent_batch_sizes"
        ]
    finally:
        gw.stop()
    result["date"] = str(date.today())
    (RESULTS / "embeddings.json").write_text(json.dumps(result, indent=2))
    md = (
        f"Embeddings, {result['date']}, `python -m benchmarks.embeddings` (all-MiniLM-L6-v2, 2 CPU cores, "
        f"median of {args.rounds} alternating rounds)\n\n"
        "| | seconds | embeddings/s |\n|---|---|---|\n"
        f"| one `encode` of {args.texts} texts, in process | {result['direct_encode_s']} | {result['direct_per_s']} |\n"
        f"| {args.texts} concurrent single-text HTTP requests | {result['http_64_concurrent_s']} | {result['http_per_s']} |\n"
        f"| {args.texts} single-text `encode` calls (no batching) | {result['unbatched_64_singles_s']} | "
        f"{round(args.texts / float(result['unbatched_64_singles_s']), 1)} |\n\n"  # type: ignore[arg-type]
        f"Ratio HTTP / direct: **{result['ratio']}** (target 0.8)\n"
    )
    (RESULTS / "embeddings.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
