"""Re-ranking under sustained concurrent load: the gateway's `/v1/rerank` against
infinity-emb's `/rerank`, on the same cross-encoder folder and the same cores.

The model has ms-marco-MiniLM-L-6-v2's shape (BERT, 384 hidden, 6 layers, 12 heads) with
random weights and MiniLM's tokenizer: no re-ranker ships as a PyPI package here, and the
cost per pair, not the scores, is what is measured. Each request ranks 8 documents
(12-word texts) for a short query; each level keeps `c` clients busy (closed loop) until
20 x c requests (at least 100) are answered. Servers run one at a time in alternating order
each round. Reported: documents (pairs) scored per second and latency p50/p99 per level,
and the ratio gateway / infinity.

    .venv/bin/python -m benchmarks.rerank_load            # ~8 min (2 rounds)

Writes results/rerank_load.json, .md and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.embeddings_load import Target, start_infinity, text
from benchmarks.serving import settle
from tests.models import make_cross_encoder
from tests.servers import ROOT, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
MODEL = ROOT / "tests" / "artifacts" / "rerank-minilm-l6-shape"
LEVELS = (1, 16, 64)
DOCUMENTS = 8


def model() -> Path:
    if not (MODEL / "config.json").exists():
        make_cross_encoder(MODEL, shape=(384, 6, 12, 1536))
    return MODEL


def start_gw() -> Target:
    reader = {
        "id": "rerank-0",
        "consumer_group": "rerank",
        "kind": "sentence-transformers",
        "task": "classify",
        "model": str(model()),
    }
    gw = start_gateway(
        RESULTS / "rerank-gateway.log",
        env={"GATEWAY_READERS": json.dumps([reader]), "GATEWAY_ACCESS_LOG": "false"},
    )
    return Target("gateway", gw.url + "/v1/rerank", "rerank", gw.stop, gw.proc.pid)


async def load(t: Target, clients: int) -> dict[str, float]:
    total = max(100, 20 * clients)
    sent = 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:

        async def client() -> None:
            nonlocal sent
            while sent < total:
                i = sent
                sent += 1
                body = {
                    "model": t.model,
                    "query": f"which text mentions {i}?",
                    "documents": [text(i * DOCUMENTS + k) for k in range(DOCUMENTS)],
                    "return_documents": False,
                }
                t0 = time.perf_counter()
                async with s.post(t.url, json=body) as r:
                    assert r.status == 200, await r.text()
                    results = (await r.json())["results"]
                    assert len(results) == DOCUMENTS, results
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client() for _ in range(min(clients, 4))))  # warm-up
        latencies.clear()
        sent = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "documents_per_s": total * DOCUMENTS / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
    }


def run_server(kind: str, levels: tuple[int, ...]) -> dict[str, Any]:
    settle()
    t = start_gw() if kind == "gateway" else start_infinity(str(model()), "rerank", "/rerank")
    try:
        return {str(c): asyncio.run(load(t, c)) for c in levels}
    finally:
        t.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS))
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    servers = ["gateway", "infinity"]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in servers}
    for r in range(args.rounds):
        for kind in servers if r % 2 == 0 else list(reversed(servers)):
            runs[kind].append(run_server(kind, tuple(args.levels)))
            print(kind, json.dumps(runs[kind][-1]), flush=True)
    keys = [str(c) for c in args.levels]

    def med(kind: str, key: str, field: str) -> float:
        return statistics.median(run[key][field] for run in runs[kind])

    result = {"date": str(date.today()), "args": vars(args), "runs": runs}
    (RESULTS / "rerank_load.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Re-ranking under load, {result['date']}, `python -m benchmarks.rerank_load --rounds {args.rounds}` "
        f"(a cross-encoder of ms-marco-MiniLM-L-6's shape, random weights, on 2 CPU cores, client on the same cores; "
        f"{DOCUMENTS} documents per request; median of the rounds)",
        "",
        "| clients | gateway documents/s | gateway p50 / p99 ms | infinity documents/s | infinity p50 / p99 ms "
        "| gateway / infinity |",
        "|---|---|---|---|---|---|",
    ]
    for key in keys:
        cells = [
            f"{med(s, key, 'documents_per_s'):.0f} | {med(s, key, 'p50_ms'):.0f} / {med(s, key, 'p99_ms'):.0f}"
            for s in servers
        ]
        ratio = med("gateway", key, "documents_per_s") / med("infinity", key, "documents_per_s")
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    md = "\n".join(lines) + "\n"
    (RESULTS / "rerank_load.md").write_text(md)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in servers:
        ax.plot(keys, [med(s, k, "documents_per_s") for k in keys], marker="o", label=s)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel(f"documents scored per second ({DOCUMENTS} per request)")
    ax.set_title("/rerank, MiniLM-L-6-shaped cross-encoder, 2 CPU cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "rerank_load.png", dpi=100)
    print(md)


if __name__ == "__main__":
    main()
