"""The front end at GPU token rates: the gateway on the scripted engine, whose tokens arrive
at a set rate per stream (as a GPU decodes them) and cost nothing to make, against the
floor: a bare Starlette app on uvicorn streaming the same events at the same rate
(benchmarks/floor_app.py). Every surface; front-end CPU per streamed token, the tokens/s
delivered, probe latency and event-loop lag while it runs.

    .venv/bin/python -m benchmarks.frontend            # about 5 minutes
    .venv/bin/python -m benchmarks.frontend --rounds 2 --streams 256 --rate 100

Scenarios: `gpu` (S streams at R tokens/s each, the load one GPU puts on the front end),
`ceiling` (64 streams as fast as the process can: the tokens/s one process sustains) and
`burst` (1024 concurrent streams, /readyz probed every 50 ms). On this machine's 2 cores
the server process runs on one and the client (aiohttp, in this process) on the other; the
probes run anywhere.

Writes results/frontend.json, results/frontend.md and results/frontend.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import date
from typing import Any

import aiohttp
import httpx
import psutil

from tests.servers import ROOT, free_port, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
REPLY = " the quick brown fox jumps over the lazy dog" * 100
CORES = sorted(os.sched_getaffinity(0))
SURFACES = ("openai-chat", "openai-completions", "takeoff", "generate-one", "responses", "anthropic")


def request(surface: str, tokens: int, i: int) -> tuple[str, dict[str, Any]]:
    if surface == "openai-chat":
        return "/v1/chat/completions", {
            "model": "primary",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": tokens,
            "stream": True,
        }
    if surface == "openai-completions":
        return "/v1/completions", {"model": "primary", "prompt": "x", "max_tokens": tokens, "stream": True}
    if surface == "takeoff":
        return "/generate_stream", {"text": "x", "max_new_tokens": tokens}
    if surface == "anthropic":
        return "/v1/messages", {
            "model": "primary",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": tokens,
            "stream": True,
        }
    if surface == "responses":
        return "/v1/responses", {"model": "primary", "input": "x", "max_output_tokens": tokens, "stream": True}
    return "/api/generate-one", {
        "request_id": f"fe-{time.time_ns()}-{i}",
        "prompt": "x",
        "generation_config": {"max_new_tokens": tokens},
    }


PROBER = """
import sys, time, urllib.request
url = sys.argv[1]
while True:
    t0 = time.perf_counter()
    try:
        urllib.request.urlopen(url, timeout=10).read()
    except Exception:
        pass
    print(time.perf_counter() - t0, flush=True)
    time.sleep(0.05)
"""


class Prober:
    """GET `path` (/readyz) every 50 ms from a process of its own; latencies in seconds."""

    def __init__(self, url: str, path: str = "/readyz") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PROBER, url + path], stdout=subprocess.PIPE, text=True)
        psutil.Process(self.proc.pid).cpu_affinity(CORES)

    def stop(self) -> list[float]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return [float(line) for line in out.split()]


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_streams(
    url: str,
    pid: int,
    surface: str,
    streams: int,
    tokens: int,
    probe_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """`streams` concurrent streams of `tokens` each; the server's CPU time per token, the
    tokens/s delivered, and the latency of /readyz probed every 50 ms meanwhile."""
    process = psutil.Process(pid)
    received = 0
    probes: list[float] = []  # the probe port's /readyz (the API port's when there is none)
    api_probes: list[float] = []  # the API port's /readyz
    status_probes: list[float] = []  # the probe port's /status
    timeout = aiohttp.ClientTimeout(total=900)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def one(i: int) -> None:
            nonlocal received
            path, body = request(surface, tokens, i)
            async with session.post(url + path, json=body) as r:
                assert r.status == 200, await r.text()
                async for chunk in r.content.iter_any():
                    received += len(chunk) if surface == "generate-one" else chunk.count(b"\n\n")

        await one(-1)  # warm
        received = 0
        cpu0 = sum(process.cpu_times()[:2])
        t0 = time.perf_counter()
        # probes from processes of their own, as the kubelet's: this process's event loop is
        # busy with the streams' client and would delay them itself
        # the probe port's /readyz and /status, and the API port's /readyz
        probers = [Prober(probe_url or url)] + ([Prober(url), Prober(probe_url, "/status")] if probe_url else [])
        await asyncio.gather(*(one(i) for i in range(streams)))
        wall = time.perf_counter() - t0
        cpu = sum(process.cpu_times()[:2]) - cpu0
        probes += probers[0].stop()
        if probe_url:
            api_probes += probers[1].stop()
            status_probes += probers[2].stop()
    total = streams * tokens
    if surface == "generate-one":  # plain text, one byte per token: every stream ran to its length
        assert received == total, f"{surface}: {received} bytes for {total} tokens"
    return {
        # SSE events (framing events included) per token: below 1 when a stream fell behind
        # the engine's clock and got several tokens in one event
        "events_per_token": float("nan") if surface == "generate-one" else received / total,
        "tokens_per_s": total / wall,
        "cpu_us_per_token": cpu / total * 1e6,
        "cpu_cores": cpu / wall,
        "wall_s": wall,
        "probe_p50_ms": quantile(probes, 0.5) * 1e3,
        "probe_p99_ms": quantile(probes, 0.99) * 1e3,
        "probe_max_ms": max(probes) * 1e3 if probes else float("nan"),
        "api_probe_p99_ms": quantile(api_probes or probes, 0.99) * 1e3,
        "status_p99_ms": quantile(status_probes, 0.99) * 1e3,
    }


def loop_lag(management_url: str) -> dict[str, float]:
    """Bucket counts of gateway_event_loop_lag_seconds (cumulative, by upper bound)."""
    text = httpx.get(management_url + "/metrics").text
    found = {}
    for m in re.finditer(r'^gateway_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        found[m.group(1)] = float(m.group(2))
    return found


def lag_quantiles(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """p50/p99 upper bounds of the loop lag observed between two scrapes (bucket resolution)."""
    bounds = sorted((float(b), after[b] - before.get(b, 0.0)) for b in after if b != "+Inf")
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        out[f"loop_lag_{name}_ms"] = next((b * 1e3 for b, n in bounds if total and n >= q * total), float("inf"))
    return out


class Gateway:
    def __init__(self, rate: float, name: str) -> None:
        self.probe_port = free_port()
        reader = {
            "id": "primary-0",
            "kind": "scripted",
            "model": "scripted",
            "max_in_flight": 4096,
            # one byte per token; long enough for every scenario's streams (the default reply
            # ends after about 350 tokens)
            "scripted": {"eos_after": 10**6, "tokens_per_second": rate or None, "reply": REPLY},
        }
        self.gw = start_gateway(
            RESULTS / f"frontend-{name}.log",
            "configs/scripted.yaml",
            {
                "GATEWAY_READERS": json.dumps([reader]),
                "GATEWAY_MAX_NEW_TOKENS_LIMIT": "100000",
                "GATEWAY_REQUEST_TIMEOUT_SECONDS": "900",
                "GATEWAY_PROBE_PORT": str(self.probe_port),
            },
        )
        self.url, self.pid = self.gw.url, self.gw.proc.pid
        self.probe_url: str | None = f"http://127.0.0.1:{self.probe_port}"

    def stop(self) -> None:
        self.gw.stop()


class Floor:
    def __init__(self, rate: float, name: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "FLOOR_TOKENS_PER_SECOND": str(rate)}
        self.log = open(RESULTS / f"frontend-{name}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "benchmarks.floor_app:app", "--host", "127.0.0.1", "--port", str(port),
             "--no-access-log", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.pid = self.proc.pid
        self.probe_url: str | None = None
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "the floor app did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


STUB = """
import asyncio, json, sys, time
import uvloop
from benchmarks.floor_app import ticks
from benchmarks.frontend import REPLY
from engine_adapters.base import GenerationRequest, SamplingOptions
from engine_adapters.scripted import ScriptedConfig, ScriptedEngine

rate, streams, tokens = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


async def main():
    engine = ScriptedEngine(ScriptedConfig(eos_after=10**6, tokens_per_second=rate or None, reply=REPLY))
    await engine.start()
    out = {"engine": [], "ticks": []}
    for who in ("ticks", "engine") * 3:
        async def one(i):
            if who == "ticks":
                async for _ in ticks(tokens):
                    pass
            else:
                sampling = SamplingOptions(max_new_tokens=tokens, temperature=0.0)
                async for _ in engine.generate(GenerationRequest(request_id=f"s{i}", prompt="x", sampling=sampling)):
                    pass
        c0 = time.process_time()
        await asyncio.gather(*(one(i) for i in range(streams)))
        out[who].append((time.process_time() - c0) / (streams * tokens) * 1e6)
    print(json.dumps(out))

uvloop.run(main())
"""


def engine_cost(rate: float, streams: int, tokens: int) -> dict[str, float]:
    """CPU per token of the scripted engine alone (no HTTP), and of the floor's bare token
    clock at the same load, in a process on the server's core: what the gateway's process
    spends making tokens beyond what the floor spends timing them. The gateway's front end
    is its process's CPU less this."""
    env = {**os.environ, "FLOOR_TOKENS_PER_SECOND": str(rate)}
    proc = subprocess.run(
        [sys.executable, "-c", STUB, str(rate), str(streams), str(tokens)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, CORES[:1])) if len(CORES) > 1 else None,
    )  # fmt: skip
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    engine, ticks = statistics.median(out["engine"]), statistics.median(out["ticks"])
    return {"engine_us_per_token": engine, "clock_us_per_token": ticks, "stub_us_per_token": max(0.0, engine - ticks)}


def pin(server_pid: int) -> None:
    """The server process on the first core, this client on the others: each side's CPU
    time is then its own work, not time lost to the other on a shared core (here the
    figures moved by up to a third from run to run without it). The gateway's probe
    process and the probers run anywhere, as the kubelet's probes would."""
    if len(CORES) < 2:
        return
    psutil.Process(server_pid).cpu_affinity(CORES[:1])
    os.sched_setaffinity(0, set(CORES[1:]))


def scenario(name: str, rate: float, streams: int, tokens: int, surfaces: tuple[str, ...], rounds: int) -> dict:
    """Each surface on the gateway and on the floor, alternating which goes first."""
    stub = engine_cost(rate, streams, tokens)
    print(f"{name}: the scripted engine alone {stub}", flush=True)
    out: dict[str, Any] = {
        "rate_per_stream": rate,
        "streams": streams,
        "tokens_per_stream": tokens,
        "engine_stub": stub,
        "surfaces": {},
    }
    for surface in surfaces:
        runs: dict[str, list[dict[str, float]]] = {"gateway": [], "floor": []}
        for r in range(rounds):
            order = ("gateway", "floor") if r % 2 == 0 else ("floor", "gateway")
            for who in order:
                server: Gateway | Floor = (Gateway if who == "gateway" else Floor)(rate, f"{name}-{who}")
                pin(server.pid)
                try:
                    before = loop_lag(server.gw.management_url) if isinstance(server, Gateway) else {}
                    result = asyncio.run(
                        run_streams(server.url, server.pid, surface, streams, tokens, server.probe_url)
                    )
                    if isinstance(server, Gateway):
                        result |= lag_quantiles(before, loop_lag(server.gw.management_url))
                    runs[who].append(result)
                finally:
                    server.stop()
        summary: dict[str, Any] = {}
        for who, results in runs.items():
            summary[who] = {k: statistics.median(r[k] for r in results) for k in results[0]}
        summary["cpu_ratio"] = summary["gateway"]["cpu_us_per_token"] / summary["floor"]["cpu_us_per_token"]
        front = summary["gateway"]["cpu_us_per_token"] - stub["stub_us_per_token"]
        summary["front_end_us_per_token"] = front
        summary["front_end_ratio"] = front / summary["floor"]["cpu_us_per_token"]
        out["surfaces"][surface] = summary
        g, f = summary["gateway"], summary["floor"]
        print(
            f"{name} {surface}: gateway {g['tokens_per_s']:.0f} tok/s {g['cpu_us_per_token']:.1f} µs/token, "
            f"floor {f['tokens_per_s']:.0f} tok/s {f['cpu_us_per_token']:.1f} µs/token, "
            f"ratio {summary['cpu_ratio']:.2f}, front end {front:.1f} µs/token ({summary['front_end_ratio']:.2f}x), "
            f"events/token {g['events_per_token']:.2f}, probe p99 {g['probe_p99_ms']:.0f} ms",
            flush=True,
        )
    return out


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = result["scenarios"]["gpu"]["surfaces"]
    names = list(gpu)
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(names))
    ax.bar(
        [x - 0.27 for x in xs], [gpu[n]["gateway"]["cpu_us_per_token"] for n in names], 0.27, label="gateway process"
    )
    ax.bar([x for x in xs], [gpu[n]["front_end_us_per_token"] for n in names], 0.27, label="gateway front end")
    ax.bar([x + 0.27 for x in xs], [gpu[n]["floor"]["cpu_us_per_token"] for n in names], 0.27, label="bare Starlette")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("server CPU µs per streamed token")
    s = result["scenarios"]["gpu"]
    ax.set_title(f"{s['streams']} streams x {s['rate_per_stream']:.0f} tokens/s (scripted engine)")
    ax.legend(loc="lower right", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(RESULTS / "frontend.png", dpi=100)


def report(result: dict) -> str:
    gpu, ceiling, burst = (result["scenarios"][k] for k in ("gpu", "ceiling", "burst"))
    stub = gpu["engine_stub"]
    lines = [
        f"# Front end at GPU token rates ({result['date']})",
        "",
        f"`.venv/bin/python -m benchmarks.frontend --rounds {result['rounds']}` (medians of the rounds). The gateway "
        "on the scripted engine (tokens come on the engine's clock at a set rate per stream, as a GPU decodes them) "
        "against the floor, a bare Starlette app on uvicorn streaming the same events on the same clock. Server CPU "
        "(user + system of the process) per streamed token; the server process on one core, the client on the "
        "other. A stream that falls behind the clock gets the tokens due in one event (vLLM merges a slow "
        "consumer's deltas the same way), on both servers.",
        "",
        "**Front end** = the gateway process's CPU less what the scripted engine itself spends making the tokens "
        "beyond the floor's bare clock, measured alone at the same load in a process on the same core "
        f"({stub['engine_us_per_token']:.1f} against {stub['clock_us_per_token']:.1f} µs/token: "
        f"{stub['stub_us_per_token']:.1f} µs/token). The target is on the front end.",
        "",
        f"## {gpu['streams']} streams x {gpu['rate_per_stream']:.0f} tokens/s, {gpu['tokens_per_stream']} tokens each",
        "",
        "| surface | front end µs/token | floor µs/token | ratio (target <= 1.5) | gateway process µs/token "
        "| process / floor | gateway tokens/s | floor tokens/s | events/token gateway, floor | /readyz p99 ms "
        "| loop lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in gpu["surfaces"].items():
        g, f = s["gateway"], s["floor"]
        lines.append(
            f"| {name} | {s['front_end_us_per_token']:.1f} | {f['cpu_us_per_token']:.1f} "
            f"| {s['front_end_ratio']:.2f} {'met' if s['front_end_ratio'] <= 1.5 else 'missed'} "
            f"| {g['cpu_us_per_token']:.1f} | {s['cpu_ratio']:.2f} | {g['tokens_per_s']:.0f} | {f['tokens_per_s']:.0f} "
            f"| {g['events_per_token']:.2f}, {f['events_per_token']:.2f} "
            f"| {g['probe_p99_ms']:.0f} | {g.get('loop_lag_p99_ms', float('nan')):.0f} |"
        )
    lines += [
        "",
        f"## Ceiling: {ceiling['streams']} streams as fast as the process goes, {ceiling['tokens_per_stream']} tokens "
        "each",
        "",
        f"The scripted engine alone: {ceiling['engine_stub']['stub_us_per_token']:.1f} µs/token beyond the floor's.",
        "",
        "| surface | gateway tokens/s | floor tokens/s | front end µs/token | floor µs/token | ratio "
        "| gateway process µs/token |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in ceiling["surfaces"].items():
        g, f = s["gateway"], s["floor"]
        lines.append(
            f"| {name} | {g['tokens_per_s']:.0f} | {f['tokens_per_s']:.0f} | {s['front_end_us_per_token']:.1f} "
            f"| {f['cpu_us_per_token']:.1f} | {s['front_end_ratio']:.2f} | {g['cpu_us_per_token']:.1f} |"
        )
    behind = result["scenarios"].get("behind")
    if behind:
        asked = behind["streams"] * behind["rate_per_stream"]
        lines += [
            "",
            f"## Behind: {behind['streams']} streams x {behind['rate_per_stream']:.0f} tokens/s "
            f"({asked:.0f} tokens/s asked, more than one process streams one token per event)",
            "",
            "Tokens are coalesced into fewer events only for a stream that has fallen behind the engine; one that "
            "keeps up gets every token in an event of its own (the rows above).",
            "",
            "| surface | gateway tokens/s | floor tokens/s | events/token gateway | floor | front end µs/token "
            "| floor µs/token |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in behind["surfaces"].items():
            g, f = s["gateway"], s["floor"]
            lines.append(
                f"| {name} | {g['tokens_per_s']:.0f} | {f['tokens_per_s']:.0f} | {g['events_per_token']:.2f} "
                f"| {f['events_per_token']:.2f} | {s['front_end_us_per_token']:.1f} | {f['cpu_us_per_token']:.1f} |"
            )
    lines += [
        "",
        f"## Burst: {burst['streams']} concurrent streams x {burst['rate_per_stream']:.0f} tokens/s, "
        f"{burst['tokens_per_stream']} tokens each, /readyz every 50 ms",
        "",
        "Probes and status reads on the probe port (`probe_port`, answered by a child process from a snapshot the "
        "event loop writes every 100 ms; the Helm chart's probes use it) and, for comparison, `/readyz` on the API "
        "port, which waits behind the event loop.",
        "",
        "| surface | probe port /readyz p50 ms | p99 ms (target < 100) | max ms | probe port /status p99 ms "
        "| API port /readyz p99 ms | loop lag p99 ms | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in burst["surfaces"].items():
        g = s["gateway"]
        lines.append(
            f"| {name} | {g['probe_p50_ms']:.0f} | {g['probe_p99_ms']:.0f} "
            f"{'met' if g['probe_p99_ms'] < 100 else 'missed'} | {g['probe_max_ms']:.0f} "
            f"| {g.get('status_p99_ms', float('nan')):.0f} "
            f"{'met' if g.get('status_p99_ms', 1e9) < 100 else 'missed'} | {g['api_probe_p99_ms']:.0f} | {g.get('loop_lag_p99_ms', float('nan')):.0f} | {g['tokens_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--rate", type=float, default=100.0, help="tokens/s per stream in the gpu scenario")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--surfaces", nargs="+", default=list(SURFACES))
    parser.add_argument(
        "--only-burst", action="store_true", help="re-measure the burst into the existing results (frontend.json)"
    )
    parser.add_argument(
        "--only-gpu", metavar="NAME", help="the gpu scenario alone, of --surfaces, into results/NAME.json and .md"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    surfaces = tuple(args.surfaces)
    if args.only_gpu:
        gpu = scenario("gpu", args.rate, args.streams, args.tokens, surfaces, args.rounds)
        (RESULTS / f"{args.only_gpu}.json").write_text(json.dumps({"date": str(date.today()), "gpu": gpu}, indent=2))
        rows = [
            f"# Front end at GPU token rates: {', '.join(surfaces)} ({date.today()})",
            "",
            f"`.venv/bin/python -m benchmarks.frontend --only-gpu {args.only_gpu} --surfaces {' '.join(surfaces)} "
            f"--rounds {args.rounds}`: {args.streams} streams x {args.rate:.0f} tokens/s x {args.tokens} tokens, "
            "medians of the rounds (see frontend.md for the method).",
            "",
            "| surface | front end µs/token | floor µs/token | gateway process µs/token | tokens/s |",
            "|---|---|---|---|---|",
        ]
        for name, s in gpu["surfaces"].items():
            g, f = s["gateway"], s["floor"]
            rows.append(
                f"| {name} | {s['front_end_us_per_token']:.1f} | {f['cpu_us_per_token']:.1f} "
                f"| {g['cpu_us_per_token']:.1f} | {g['tokens_per_s']:.0f} |"
            )
        text = "\n".join(rows) + "\n"
        (RESULTS / f"{args.only_gpu}.md").write_text(text)
        print(text)
        return
    if args.only_burst:
        result = json.loads((RESULTS / "frontend.json").read_text())
        result["scenarios"]["burst"] = scenario("burst", 20.0, 1024, 60, ("openai-chat", "takeoff"), args.rounds)
        result["burst_date"] = str(date.today())
        (RESULTS / "frontend.json").write_text(json.dumps(result, indent=2))
        md = report(result)
        (RESULTS / "frontend.md").write_text(md)
        print(md)
        return
    result = {
        "date": str(date.today()),
        "rounds": args.rounds,
        "scenarios": {
            "gpu": scenario("gpu", args.rate, args.streams, args.tokens, surfaces, args.rounds),
            "ceiling": scenario("ceiling", 0.0, 64, 512, surfaces, args.rounds),
            "behind": scenario("behind", 2000.0, 64, 1000, ("openai-chat", "takeoff"), args.rounds),
            "burst": scenario("burst", 20.0, 1024, 60, ("openai-chat", "takeoff"), args.rounds),
        },
    }
    (RESULTS / "frontend.json").write_text(json.dumps(result, indent=2))
    md = report(result)
    (RESULTS / "frontend.md").write_text(md)
    plot(result)
    print(md)


if __name__ == "__main__":
    main()
