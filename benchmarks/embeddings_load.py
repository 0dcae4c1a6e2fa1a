"""Embeddings under sustained concurrent load: the gateway against infinity-emb, the
embeddings server many teams run, and against itself on vLLM's pooling runner, on the same
model folder and the same cores.

Each level keeps `c` clients busy (closed loop: a client sends its next request when its
answer arrives) until 20 x c requests (at least 200) are answered, with 12-word texts, one
per request; one more level sends 32 texts per request at c=4. Servers run one at a time
in alternating order each round. Reported: embeddings/s and latency p50/p99 per level, the
ratios gateway / each peer, and the gateway's batch-size histogram (from its /metrics).

infinity-emb 0.0.78 (`infinity-emb[server,torch]`) lives in a venv of its own under
tests/artifacts/ (made on first use; its pins clash with ours).

    .venv/bin/python -m benchmarks.embeddings_load              # ~15 min (2 rounds)
    .venv/bin/python -m benchmarks.embeddings_load --servers gateway --rounds 1

Writes results/embeddings_load.json, .md and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import aiohttp
import httpx

from benchmarks.serving import settle
from tests.servers import ROOT, client_venv, free_port, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
LEVELS = (1, 16, 32, 64, 128)
BATCH_LEVEL = (4, 32)  # (clients, texts per request)
WORDS = "the quick brown fox jumps over the lazy dog while a calm river runs past old stone walls".split()


def text(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(11)) + f" {i}"


class Target:
    def __init__(self, kind: str, url: str, model: str, stop: Any, pid: int) -> None:
        self.kind, self.url, self.model, self.stop, self.pid = kind, url, model, stop, pid


def start_infinity(model: str, name: str = "minilm", route: str = "/embeddings") -> Target:
    """infinity-emb serving `model` as `name`; the target is its `route`."""
    python = client_venv(ROOT / "tests" / "artifacts" / "infinity-venv", "infinity-emb[server,torch]==0.0.78")
    port = free_port()
    log = open(RESULTS / f"{name}-infinity.log", "wb")
    proc = subprocess.Popen(
        [
            str(python.parent / "infinity_emb"),
            "v2",
            "--model-id",
            model,
            "--served-model-name",
            name,
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError((RESULTS / f"{name}-infinity.log").read_text()[-3000:])
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("infinity did not start")
        time.sleep(0.5)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    return Target("infinity", url + route, name, stop, proc.pid)


def start_gw(kind: str = "gateway") -> Target:
    """The gateway with its default embeddings engine (sentence-transformers), or with
    vLLM's pooling runner (`pooling`: a `pooling` reader on the same model)."""
    reader: dict[str, Any] = {
        "id": "embed-0",
        "consumer_group": "embed",
        "kind": "sentence-transformers",
        "model": "embedded:all-minilm-l6-v2",
    }
    if kind == "pooling":
        reader |= {"kind": "pooling", "dtype": "float32", "enforce_eager": True, "cpu_kv_cache_gib": 1}
    gw = start_gateway(
        RESULTS / f"embeddings-{kind}.log",
        env={"GATEWAY_READERS": json.dumps([reader]), "GATEWAY_ACCESS_LOG": "false"},
    )
    target = Target(kind, gw.url + "/v1/embeddings", "embed", gw.stop, gw.proc.pid)
    target.metrics = gw.management_url + "/metrics"  # type: ignore[attr-defined]
    return target


async def closed_loop(
    url: str, clients: int, total: int, body: Callable[[int], dict[str, Any]], check: Callable[[Any], None]
) -> dict[str, float]:
    """`clients` clients each sending its next request (`body(i)`) when its answer (passed
    to `check`) arrives, until `total` are answered, after a warm-up; requests/s and
    latency p50/p99."""
    sent = 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:

        async def client() -> None:
            nonlocal sent
            while sent < total:
                i = sent
                sent += 1
                t0 = time.perf_counter()
                async with s.post(url, json=body(i)) as r:
                    assert r.status == 200, await r.text()
                    check(await r.json())
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client() for _ in range(min(clients, 8))))  # warm-up
        latencies.clear()
        sent = 0
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests_per_s": total / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
    }


async def load(t: Target, clients: int, per_request: int) -> dict[str, float]:
    def body(i: int) -> dict[str, Any]:
        inputs = [text(i * per_request + k) for k in range(per_request)]
        return {"model": t.model, "input": inputs if per_request > 1 else inputs[0]}

    def check(answer: Any) -> None:
        assert len(answer["data"]) == per_request, answer

    out = await closed_loop(t.url, clients, max(200, 20 * clients), body, check)
    return {"embeddings_per_s": out.pop("requests_per_s") * per_request, **out}


def batch_histogram(metrics_url: str) -> dict[str, float]:
    text_ = httpx.get(metrics_url, timeout=10).text
    out = {}
    for m in re.finditer(r'gateway_embedding_batch_size_bucket\{[^}]*le="([^"]+)"[^}]*\} ([0-9.e+]+)', text_):
        out[m.group(1)] = float(m.group(2))
    return out


def run_server(kind: str, model: str, levels: tuple[int, ...]) -> dict[str, Any]:
    settle()
    t = start_infinity(model) if kind == "infinity" else start_gw(kind)
    try:
        res: dict[str, Any] = {str(c): asyncio.run(load(t, c, 1)) for c in levels}
        c, n = BATCH_LEVEL
        res[f"{c}x{n}"] = asyncio.run(load(t, c, n))
        if kind != "infinity":
            res["batch_histogram"] = batch_histogram(t.metrics)  # type: ignore[attr-defined]
        return res
    finally:
        t.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--servers",
        nargs="+",
        default=["gateway", "infinity", "pooling"],
        help="gateway (sentence-transformers), infinity (infinity-emb), pooling (the gateway on vLLM's pooling runner)",
    )
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS))
    parser.add_argument("--name", default="embeddings_load")
    args = parser.parse_args()
    from engine_adapters.models import minilm_path

    model = str(minilm_path())
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in args.servers}
    for r in range(args.rounds):
        order = args.servers if r % 2 == 0 else list(reversed(args.servers))
        for kind in order:
            runs[kind].append(run_server(kind, model, tuple(args.levels)))
            print(kind, json.dumps(runs[kind][-1]), flush=True)
    keys = [str(c) for c in args.levels] + [f"{BATCH_LEVEL[0]}x{BATCH_LEVEL[1]}"]

    def med(kind: str, key: str, field: str) -> float:
        return statistics.median(run[key][field] for run in runs[kind])

    result = {"date": str(date.today()), "args": vars(args), "runs": runs}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    peers = [p for p in args.servers if p != "gateway"] if "gateway" in args.servers else []
    head = "| level (clients or clients x texts) | " + " | ".join(f"{s} emb/s | {s} p50 / p99 ms" for s in args.servers)
    lines = [
        f"Embeddings under load, {result['date']}, `python -m benchmarks.embeddings_load --rounds {args.rounds}` "
        "(all-MiniLM-L6-v2 on 2 CPU cores, client on the same cores; median of the rounds). `gateway`: the default "
        "`embed` reader (sentence-transformers); `infinity`: infinity-emb 0.0.78 on the same model folder; "
        "`pooling`: the gateway on vLLM's pooling runner (a `pooling` reader, same model).",
        "",
        head + "".join(f" | gateway / {p} emb/s | gateway / {p} p99" for p in peers) + " |",
        "|---" * (1 + 2 * len(args.servers) + 2 * len(peers)) + "|",
    ]
    for key in keys:
        cells = [
            f"{med(s, key, 'embeddings_per_s'):.0f} | {med(s, key, 'p50_ms'):.0f} / {med(s, key, 'p99_ms'):.0f}"
            for s in args.servers
        ]
        row = f"| {key} | " + " | ".join(cells)
        for p in peers:
            ratio = med("gateway", key, "embeddings_per_s") / med(p, key, "embeddings_per_s")
            row += f" | {ratio:.2f} | {med('gateway', key, 'p99_ms') / med(p, key, 'p99_ms'):.2f}"
        lines.append(row + " |")
    if "gateway" in runs:
        hist = runs["gateway"][-1]["batch_histogram"]
        lines += ["", "Gateway batch sizes (cumulative count of batches with at most `le` inputs, last round):", ""]
        lines += ["| le | batches |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in hist.items()]
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{args.name}.md").write_text(md)
    plot(args.name, args.servers, keys, med)
    print(md)


def plot(name: str, servers: list[str], keys: list[str], med: Any) -> None:
    """Embeddings/s and p99 latency per level, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for s in servers:
        left.plot(keys, [med(s, k, "embeddings_per_s") for k in keys], marker="o", label=s)
        right.plot(keys, [med(s, k, "p99_ms") for k in keys], marker="o", label=s)
    left.set_xlabel("concurrent clients (or clients x texts)")
    left.set_ylabel("embeddings/s")
    right.set_xlabel("concurrent clients (or clients x texts)")
    right.set_ylabel("p99 latency ms")
    right.set_yscale("log")
    left.legend()
    fig.suptitle("all-MiniLM-L6-v2, single-text requests, 2 CPU cores")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)


if __name__ == "__main__":
    main()
