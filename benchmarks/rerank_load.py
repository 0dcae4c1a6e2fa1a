"""Re-ranking and classification under sustained concurrent load: the gateway's
`/v1/rerank` and `/classify` against infinity-emb's `/rerank` and `/classify`, on the same
model folders and the same cores.

The models have ms-marco-MiniLM-L-6-v2's shape (BERT, 384 hidden, 6 layers, 12 heads) with
random weights and MiniLM's tokenizer (one label: a re-ranker; two: a classifier): no such
model ships as a PyPI package here, and the cost per input, not the scores, is what is
measured. Each request ranks 8 documents (12-word texts) for a short query, or classifies
8 texts; each level keeps `c` clients busy (closed loop) until 20 x c requests (at least
100) are answered. Servers run one at a time in alternating order each round. Reported:
inputs scored per second and latency p50/p99 per level, and the ratio gateway / infinity.

    .venv/bin/python -m benchmarks.rerank_load                       # ~15 min (2 rounds)
    .venv/bin/python -m benchmarks.rerank_load --tasks classify --name classify_load

Writes results/rerank_load.json, .md and .png (or NAME.* with --name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.embeddings_load import Target, closed_loop, start_infinity, text
from benchmarks.serving import settle
from tests.models import make_cross_encoder
from tests.servers import ROOT, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
ARTIFACTS = ROOT / "tests" / "artifacts"
LEVELS = (1, 16, 64)
DOCUMENTS = 8  # documents per re-ranking, texts per classification


def model(task: str) -> Path:
    folder = ARTIFACTS / f"{task}-minilm-l6-shape"
    if not (folder / "config.json").exists():
        labels = ["relevance"] if task == "rerank" else ["negative", "positive"]
        make_cross_encoder(folder, labels=labels, shape=(384, 6, 12, 1536))
    return folder


def start_gw(task: str) -> Target:
    reader = {
        "id": f"{task}-0",
        "consumer_group": task,
        "kind": "sentence-transformers",
        "task": "classify",
        "model": str(model(task)),
    }
    gw = start_gateway(
        RESULTS / f"{task}-gateway.log",
        env={"GATEWAY_READERS": json.dumps([reader]), "GATEWAY_ACCESS_LOG": "false"},
    )
    route = "/v1/rerank" if task == "rerank" else "/classify"
    return Target("gateway", gw.url + route, task, gw.stop, gw.proc.pid)


def body_of(t: Target, task: str, i: int) -> dict[str, Any]:
    texts = [text(i * DOCUMENTS + k) for k in range(DOCUMENTS)]
    if task == "rerank":
        return {"model": t.model, "query": f"which text mentions {i}?", "documents": texts, "return_documents": False}
    if t.kind == "gateway":
        return {"text": texts, "consumer_group": t.model}  # Takeoff's /classify
    return {"model": t.model, "input": texts}  # infinity's /classify


def answers(task: str, kind: str, body: Any) -> int:
    if task == "rerank":
        return len(body["results"])
    return len(body["result"] if kind == "gateway" else body["data"])


async def load(t: Target, task: str, clients: int) -> dict[str, float]:
    def check(answer: Any) -> None:
        assert answers(task, t.kind, answer) == DOCUMENTS, answer

    out = await closed_loop(t.url, clients, max(100, 20 * clients), lambda i: body_of(t, task, i), check)
    return {"inputs_per_s": out.pop("requests_per_s") * DOCUMENTS, **out}


def run_server(kind: str, task: str, levels: tuple[int, ...]) -> dict[str, Any]:
    settle()
    if kind == "gateway":
        t = start_gw(task)
    else:
        t = start_infinity(str(model(task)), task, "/rerank" if task == "rerank" else "/classify")
    try:
        return {str(c): asyncio.run(load(t, task, c)) for c in levels}
    finally:
        t.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS))
    parser.add_argument("--tasks", nargs="+", default=["rerank", "classify"], choices=["rerank", "classify"])
    parser.add_argument("--name", default="rerank_load", help="results file stem: results/NAME.json, .md, .png")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    servers = ["gateway", "infinity"]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {task: {s: [] for s in servers} for task in args.tasks}
    for task in args.tasks:
        for r in range(args.rounds):
            for kind in servers if r % 2 == 0 else list(reversed(servers)):
                runs[task][kind].append(run_server(kind, task, tuple(args.levels)))
                print(task, kind, json.dumps(runs[task][kind][-1]), flush=True)
    keys = [str(c) for c in args.levels]

    def med(task: str, kind: str, key: str, field: str) -> float:
        return statistics.median(run[key][field] for run in runs[task][kind])

    result = {"date": str(date.today()), "args": vars(args), "runs": runs}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Re-ranking and classification under load, {result['date']}, `python -m benchmarks.rerank_load --rounds "
        f"{args.rounds} --tasks {' '.join(args.tasks)} --name {args.name}` (models of ms-marco-MiniLM-L-6's shape, random weights, on 2 CPU cores, client on the same "
        f"cores; {DOCUMENTS} documents per re-ranking, {DOCUMENTS} texts per classification; median of the rounds)",
    ]
    for task in args.tasks:
        what = (
            "`/v1/rerank` against infinity's `/rerank`"
            if task == "rerank"
            else "`/classify` (Takeoff) against infinity's `/classify`"
        )
        lines += [
            "",
            f"## {task}: {what}",
            "",
            "| clients | gateway inputs/s | gateway p50 / p99 ms | infinity inputs/s | infinity p50 / p99 ms "
            "| gateway / infinity |",
            "|---|---|---|---|---|---|",
        ]
        for key in keys:
            cells = [
                f"{med(task, s, key, 'inputs_per_s'):.0f} | {med(task, s, key, 'p50_ms'):.0f} / "
                f"{med(task, s, key, 'p99_ms'):.0f}"
                for s in servers
            ]
            ratio = med(task, "gateway", key, "inputs_per_s") / med(task, "infinity", key, "inputs_per_s")
            lines.append(f"| {key} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    md = "\n".join(lines) + "\n"
    (RESULTS / f"{args.name}.md").write_text(md)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.tasks), figsize=(6 * len(args.tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], args.tasks, strict=True):
        for s in servers:
            ax.plot(keys, [med(task, s, k, "inputs_per_s") for k in keys], marker="o", label=s)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(f"inputs scored per second ({DOCUMENTS} per request)")
        ax.set_title(f"/{task}, MiniLM-L-6-shaped model, 2 CPU cores")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=100)
    print(md)


if __name__ == "__main__":
    main()
