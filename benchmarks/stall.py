"""Do heavy structured-output requests stall other clients' streams? The gateway against
vLLM's own OpenAI server, same model and engine settings, one server at a time.

A 300-token chat stream runs; once it has started, four `response_format` requests
arrive at once, each with a fresh JSON schema of 1500 properties (nothing cached). The
stream's gaps between chunks are recorded: the longest gap is how long every streaming
client of the server froze while the schemas were handled. On the gateway constraint
checks and grammar compiles run off the event loop; on vLLM's server the grammar compile
runs in the engine core too, so some stall is the engine's and the same on both.

    .venv/bin/python -m benchmarks.stall            # about 6 minutes (3 rounds)

Writes results/stall.json and results/stall.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
import uuid
from datetime import date
from typing import Any

import httpx

from benchmarks.serving import MODEL_NAME, RESULTS, model_dir, settle, start

PROPERTIES = 1500
HEAVY = 4


def schema(tag: str) -> dict[str, Any]:
    props = {f"p_{tag}_{i}": {"type": "integer"} for i in range(PROPERTIES)}
    return {"type": "object", "properties": props, "required": [f"p_{tag}_0"]}


async def one_round(url: str, model: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        arrivals: list[float] = []
        started = asyncio.Event()

        async def stream() -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 300,
                "ignore_eos": True,
                "temperature": 0,
                "stream": True,
            }
            async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        arrivals.append(time.perf_counter())
                        if len(arrivals) == 20:
                            started.set()

        async def heavy(i: int) -> int:
            await started.wait()
            tag = uuid.uuid4().hex[:8] + str(i)
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Give me the object."}],
                "max_tokens": 8,
                "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": schema(tag)}},
            }
            return (await c.post("/v1/chat/completions", json=body)).status_code

        results = await asyncio.gather(stream(), *(heavy(i) for i in range(HEAVY)))
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return {
        "chunks": len(arrivals),
        "max_gap_s": max(gaps),
        "median_gap_ms": statistics.median(gaps) * 1000,
        "heavy_statuses": results[1:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = model_dir()
    runs: dict[str, list[dict[str, Any]]] = {"vllm": [], "gateway": []}
    for r in range(args.rounds):
        for kind in ("vllm", "gateway") if r % 2 == 0 else ("gateway", "vllm"):
            settle()
            server = start(kind, model, RESULTS / f"stall-{kind}.log")
            try:
                name = MODEL_NAME if kind == "vllm" else "primary"
                asyncio.run(one_round(server.url, name))  # warm-up: the first compile of anything
                runs[kind].append(asyncio.run(one_round(server.url, name)))
            finally:
                server.stop()
            print(kind, json.dumps(runs[kind][-1]), flush=True)
    result = {"date": str(date.today()), "rounds": args.rounds, "runs": runs}
    (RESULTS / "stall.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Stream stalls under heavy schemas, {result['date']}, `python -m benchmarks.stall` (SmolLM2-135M fp32 "
        f"on 2 CPU cores; a 300-token stream while {HEAVY} requests with fresh {PROPERTIES}-property JSON schemas "
        "arrive at once; one line per round)",
        "",
        "| server | longest gap between chunks (s) | median gap (ms) | heavy requests' statuses |",
        "|---|---|---|---|",
    ]
    for kind in ("vllm", "gateway"):
        for run in runs[kind]:
            lines.append(
                f"| {kind} | {run['max_gap_s']:.2f} | {run['median_gap_ms']:.0f} | {sorted(set(run['heavy_statuses']))} |"
            )
    med = {k: statistics.median(r["max_gap_s"] for r in v) for k, v in runs.items()}
    lines += ["", f"Median longest gap: vLLM {med['vllm']:.2f} s, gateway {med['gateway']:.2f} s."]
    md = "\n".join(lines) + "\n"
    (RESULTS / "stall.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
