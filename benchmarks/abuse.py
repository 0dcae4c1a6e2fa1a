"""What abuse costs the bystanders: the targets of "Safe to operate", on the scripted engine.

    .venv/bin/python -m benchmarks.abuse              # about 3 minutes
    .venv/bin/python -m benchmarks.abuse --rounds 3

* probes: /readyz on the probe port, every 20 ms from a process of its own, with nobody
  else connected and then with 64 idle and 8 trickling connections held on it
  (target: p99 under 100 ms while they are held);
* tool streams: the gateway process's CPU per streamed token for an argument of 1k, 6k
  and 24k characters, under tool_choice "required", a named tool and "auto" (the
  scripted engine's Hermes markup read by vLLM's parser), one stream at a time; target:
  at 24k within 1.2x of 1k;
* big body: a stream at 100 tokens/s runs while 10 MB chat bodies arrive; the largest
  gap between its events and the event loop's lag (gateway_event_loop_lag_seconds) with
  and without them (target: no more than 50 ms of lag from the bodies).

Writes results/abuse.json and results/abuse.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import sys
import threading
import time
from datetime import date
from typing import Any

import httpx
import psutil

from benchmarks.frontend import CORES, Prober, lag_quantiles, loop_lag, quantile
from tests.servers import ROOT, free_port, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
LENGTHS = (1_000, 6_000, 24_000)


def _gateway(name: str, readers: list[dict[str, Any]], **env: str) -> Any:
    return start_gateway(
        RESULTS / f"abuse-{name}.log",
        "configs/scripted.yaml",
        {"GATEWAY_READERS": json.dumps(readers), "GATEWAY_REQUEST_TIMEOUT_SECONDS": "900", **env},
    )


# ------------------------------------------------------------------------------ probes


def probes(rounds: int) -> dict[str, Any]:
    port = free_port()
    gw = _gateway(
        "probes", [{"id": "primary-0", "kind": "scripted", "model": "scripted"}], GATEWAY_PROBE_PORT=str(port)
    )
    url = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {"quiet": [], "held": []}
    try:
        for _ in range(rounds):
            for case in ("quiet", "held"):
                stop = threading.Event()
                held: list[socket.socket] = []
                if case == "held":
                    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
                    tricklers = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
                    held += tricklers

                    def trickle(socks: list[socket.socket] = tricklers, stop: threading.Event = stop) -> None:
                        while not stop.is_set():
                            for s in socks:
                                try:
                                    s.send(b"G")
                                except OSError:
                                    pass
                            time.sleep(1.5)

                    threading.Thread(target=trickle, daemon=True).start()
                prober = Prober(url)
                time.sleep(15)
                out[case] += prober.stop()
                stop.set()
                for s in held:
                    s.close()
    finally:
        gw.stop()
    return {
        case: {
            "probes": len(v),
            "p50_ms": quantile(v, 0.5) * 1e3,
            "p99_ms": quantile(v, 0.99) * 1e3,
            "max_ms": max(v) * 1e3,
            "failed": sum(1 for x in v if x >= 10),
        }
        for case, v in out.items()
    }


# ------------------------------------------------------------------------------ tool streams


def _tool_body(mode: str, length: int) -> dict[str, Any]:
    tool = {
        "type": "function",
        "function": {
            "name": "save",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "minLength": length}},
                "required": ["text"],
            },
        },
    }
    choice: Any = {"required": "required", "named": {"type": "function", "function": {"name": "save"}}}.get(
        mode, "auto"
    )
    return {
        "model": mode if mode == "auto" else "primary",
        "messages": [{"role": "user", "content": "go"}],
        "tools": [tool],
        "tool_choice": choice,
        "stream": True,
        "max_tokens": length + 100,
    }


def _stream_cpu(url: str, pid: int, body: dict[str, Any]) -> tuple[float, int]:
    """Server CPU seconds and tokens (one byte each) of one stream."""
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    chars = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    for call in choice["delta"].get("tool_calls") or []:
                        chars += len(call["function"].get("arguments", ""))
    after = proc.cpu_times()
    return (after.user + after.system) - (before.user + before.system), chars


def tool_streams(rounds: int) -> dict[str, Any]:
    from engine_adapters.models import ensure_smollm2
    from gateway.settings import load_settings

    tokenizer = str(ensure_smollm2(load_settings(ROOT / "configs" / "default.yaml").cache_dir))
    readers = [{"id": "primary-0", "kind": "scripted", "model": "scripted", "scripted": {"max_model_len": 1 << 20}}]
    # "auto": Hermes markup the reader's own (vLLM's) parser reads, one token per step
    readers += [
        {
            "id": f"auto-{n}",
            "consumer_group": f"auto-{n}",
            "kind": "scripted",
            "model": "scripted",
            "scripted": {
                "max_model_len": 1 << 20,
                "eos_after": 10**7,
                "markup_tokenizer": tokenizer,
                "tool_call_parser": "hermes",
                "reply": '<tool_call>\n{"name": "save", "arguments": {"text": "' + "y" * n + '"}}\n</tool_call>',
            },
        }
        for n in LENGTHS
    ]
    gw = _gateway("tools", readers, GATEWAY_MAX_NEW_TOKENS_LIMIT="1000000")
    psutil.Process(gw.proc.pid).cpu_affinity(CORES[:1])
    out: dict[str, dict[int, list[float]]] = {m: {n: [] for n in LENGTHS} for m in ("required", "named", "auto")}
    try:
        for mode in out:  # warm up: the first request of a kind pays for one-time work
            _stream_cpu(
                gw.url,
                gw.proc.pid,
                {**_tool_body(mode, 100), "model": "auto-1000"} if mode == "auto" else _tool_body(mode, 100),
            )
        for _ in range(rounds):
            for mode in out:
                for n in LENGTHS:
                    body = _tool_body(mode, n)
                    if mode == "auto":
                        body["model"] = f"auto-{n}"
                    cpu, chars = _stream_cpu(gw.url, gw.proc.pid, body)
                    out[mode][n].append(cpu / max(chars, 1) * 1e6)  # µs per argument character (token)
    finally:
        gw.stop()
    table = {}
    for mode, by_len in out.items():
        med = {n: statistics.median(v) for n, v in by_len.items()}
        table[mode] = {"us_per_token": med, "ratio_24k_to_1k": med[LENGTHS[-1]] / med[LENGTHS[0]]}
    return table


# ------------------------------------------------------------------------------ big bodies


def _gaps(url: str, seconds: float, result: dict[str, Any]) -> None:
    times = []
    body = {"text": "x", "max_new_tokens": int(seconds * 100), "min_new_tokens": int(seconds * 100)}
    with httpx.stream("POST", url + "/generate_stream", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                times.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    result["max_gap_ms"] = max(gaps) * 1e3 if gaps else float("nan")
    result["p99_gap_ms"] = quantile(gaps, 0.99) * 1e3


def big_bodies(rounds: int) -> dict[str, Any]:
    reader = {
        "id": "primary-0",
        "kind": "scripted",
        "model": "scripted",
        "scripted": {"tokens_per_second": 100, "eos_after": 10**6, "reply": "z" * 5000},
    }
    gw = _gateway("bodies", [reader])
    body = json.dumps({"model": "primary", "messages": [{"role": "user", "content": "y" * 10_000_000}]}).encode()
    out: dict[str, list[dict[str, Any]]] = {"quiet": [], "bodies": []}
    try:
        for _ in range(rounds):
            for case in ("quiet", "bodies"):
                lag_before = loop_lag(gw.management_url)
                result: dict[str, Any] = {}
                streamer = threading.Thread(target=_gaps, args=(gw.url, 10.0, result))
                streamer.start()
                statuses = []
                if case == "bodies":
                    time.sleep(1)
                    for _ in range(5):
                        r = httpx.post(
                            gw.url + "/v1/chat/completions",
                            content=body,
                            headers={"content-type": "application/json"},
                            timeout=60,
                        )
                        statuses.append(r.status_code)
                        time.sleep(1)
                streamer.join()
                result.update(lag_quantiles(lag_before, loop_lag(gw.management_url)))
                result["statuses"] = statuses
                out[case].append(result)
    finally:
        gw.stop()
    return {
        case: {
            "max_gap_ms": max(r["max_gap_ms"] for r in rs),
            "p99_gap_ms": statistics.median(r["p99_gap_ms"] for r in rs),
            "loop_lag_p99_ms": max(r["loop_lag_p99_ms"] for r in rs),
            "statuses": sorted({s for r in rs for s in r["statuses"]}),
        }
        for case, rs in out.items()
    }


# ------------------------------------------------------------------------------ report


def report(result: dict[str, Any]) -> str:
    p, t, b = result["probes"], result["tools"], result["bodies"]
    lines = [
        f"# Abuse and its bystanders ({result['date']}, {result['rounds']} rounds)",
        "",
        "`.venv/bin/python -m benchmarks.abuse`; the scripted engine, 2 CPU cores.",
        "",
        "## Probe port with 64 idle and 8 trickling connections held",
        "",
        "| case | probes | p50 ms | p99 ms (target < 100) | max ms | failed |",
        "|---|---|---|---|---|---|",
    ]
    for case, v in p.items():
        lines.append(
            f"| {case} | {v['probes']} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['max_ms']:.1f} | {v['failed']} |"
        )
    lines += [
        "",
        "## Tool-call streams: gateway CPU per argument character (µs)",
        "",
        "| tool choice | 1k | 6k | 24k | 24k / 1k (target <= 1.2) |",
        "|---|---|---|---|---|",
    ]
    for mode, v in t.items():
        us = v["us_per_token"]
        lines.append(f"| {mode} | {us[1000]:.1f} | {us[6000]:.1f} | {us[24000]:.1f} | {v['ratio_24k_to_1k']:.2f} |")
    lines += [
        "",
        "## A stream at 100 tokens/s while 10 MB chat bodies arrive",
        "",
        "| case | largest gap ms | p99 gap ms | event-loop lag p99 ms (bucket bound) | statuses of the bodies |",
        "|---|---|---|---|---|",
    ]
    for case, v in b.items():
        lines.append(
            f"| {case} | {v['max_gap_ms']:.1f} | {v['p99_gap_ms']:.1f} | {v['loop_lag_p99_ms']:.1f} | "
            f"{', '.join(map(str, v['statuses'])) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    psutil.Process(os.getpid()).cpu_affinity(CORES[1:] or CORES)
    result = {
        "date": str(date.today()),
        "rounds": args.rounds,
        "probes": probes(args.rounds),
        "tools": tool_streams(args.rounds),
        "bodies": big_bodies(args.rounds),
    }
    (RESULTS / "abuse.json").write_text(json.dumps(result, indent=1, default=str))
    text = report(result)
    (RESULTS / "abuse.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
