"""The gateway against vLLM's own OpenAI server on the same engine, model and load.

Both servers run the embedded SmolLM2 with identical engine settings (fp32, eager, 2048
tokens, 1 GiB KV cache, both cores), one at a time, in alternating order each round to
cancel machine drift. The same open-loop load (all requests released at once, at most
`c` in flight, like `vllm bench serve --max-concurrency c`) goes to
`/v1/completions` and `/v1/chat/completions`, streaming, with fixed prompt and output
lengths (ignore_eos). On the gateway the Takeoff `/generate_stream` and generate-one
surfaces get the same load. One comparison is also made with vLLM's own benchmark
client (`vllm.benchmarks.serve`).

    .venv/bin/python -m benchmarks.serving --rounds 3      # ~1 hour on 2 CPU cores
    .venv/bin/python -m benchmarks.serving --quick          # one round, fewer requests
    .venv/bin/python -m benchmarks.serving --report-only    # table and plots from results/serving.json
    .venv/bin/python -m benchmarks.serving --surfaces chat --concurrency 16 --rounds 7 --name chat16
                                                            # more rounds of one cell, to results/chat16.*

Writes results/serving.json, results/serving.md and results/serving-*.png (or NAME.* with --name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.servers import ROOT, free_port

RESULTS = ROOT / "benchmarks" / "results"
MODEL_NAME = "smollm2-135m-instruct"
SURFACES = ("completions", "chat", "takeoff", "generate-one")
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def model_dir() -> str:
    from engine_adapters.models import ensure_smollm2
    from gateway.settings import Settings

    return str(ensure_smollm2(Settings().cache_dir))


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One server process under test, with a memory sampler over its process tree."""

    kind: str  # "vllm" or "gateway"
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    peak_rss: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample_memory(self) -> None:
        def run() -> None:
            root = psutil.Process(self.proc.pid)
            while not self._stop.is_set():
                try:
                    procs = [root, *root.children(recursive=True)]
                    front = root.memory_info().rss
                    total = sum(p.memory_info().rss for p in procs if p.is_running())
                except psutil.Error:
                    break
                self.peak_rss["front_end"] = max(self.peak_rss.get("front_end", 0), front)
                self.peak_rss["total"] = max(self.peak_rss.get("total", 0), total)
                time.sleep(0.2)

        threading.Thread(target=run, daemon=True).start()

    def front_cpu(self) -> float:
        """CPU seconds the front-end process (HTTP server and AsyncLLM client) has used."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass


def settle(timeout: float = 60.0) -> None:
    """Wait until the previous server's processes have let go of the CPUs."""
    deadline = time.monotonic() + timeout
    while psutil.cpu_percent(interval=2.0) > 15 and time.monotonic() < deadline:
        pass


def start(kind: str, model: str, log: Path, reader_extra: dict[str, Any] | None = None) -> Server:
    port = free_port()
    env = {**os.environ, **ENGINE_ENV}
    if kind == "vllm":
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--served-model-name",
            MODEL_NAME,
            "--dtype",
            "float32",
            "--max-model-len",
            "2048",
            "--enforce-eager",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--seed",
            "0",
        ]
        ready = "/health"
    else:
        readers = [
            {
                "id": "primary-0",
                "consumer_group": "primary",
                "model": "embedded:smollm2-135m-instruct",
                "dtype": "float32",
                "max_model_len": 2048,
                "enforce_eager": True,
                "cpu_kv_cache_gib": 1,
                **(reader_extra or {}),
            }
        ]
        env.update(
            {
                "GATEWAY_PORT": str(port),
                "GATEWAY_MANAGEMENT_PORT": str(free_port()),
                "GATEWAY_OPENAI_PORT": str(free_port()),
                "GATEWAY_READERS": json.dumps(readers),
                "GATEWAY_ACCESS_LOG": "false",
            }
        )
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", "configs/default.yaml"]
        ready = "/readyz"
    out = open(log, "wb")  # written by the child until it stops
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    out.close()
    server = Server(kind, proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + ready, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{kind} did not start")
        time.sleep(0.5)
    server.sample_memory()
    return server


# ----------------------------------------------------------------------------- load


@dataclass
class Sample:
    ok: bool
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    e2e: float = 0.0
    tokens: int = 0


def prompt_text(tokens: int) -> str:
    # "hello" tokens: each repetition is one token for SmolLM2's BPE (checked below)
    return "hello" + " hello" * (tokens - 1)


def body_for(surface: str, prompt: str, out_tokens: int, i: int) -> tuple[str, dict[str, Any]]:
    if surface == "completions":
        return "/v1/completions", {
            "model": MODEL_NAME,
            "prompt": prompt,
            "max_tokens": out_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
        }
    if surface == "chat":
        return "/v1/chat/completions", {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": out_tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
        }
    if surface == "takeoff":
        return "/generate_stream", {"text": prompt, "max_new_tokens": out_tokens, "min_new_tokens": out_tokens}
    return "/api/generate-one", {
        "request_id": f"bench-{time.time_ns()}-{i}",
        "prompt": prompt,
        "generation_config": {"max_new_tokens": out_tokens, "min_new_tokens": out_tokens},
    }


async def one(client: httpx.AsyncClient, surface: str, prompt: str, out_tokens: int, i: int) -> Sample:
    path, body = body_for(surface, prompt, out_tokens, i)
    t0 = time.perf_counter()
    last = None
    s = Sample(ok=False)
    try:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return s
            if surface == "generate-one":
                async for chunk in r.aiter_text():
                    if not chunk:
                        continue
                    now = time.perf_counter()
                    if last is None:
                        s.ttft = now - t0
                    else:
                        s.itl.append(now - last)
                    last = now
                s.tokens = out_tokens
            else:
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        continue
                    if surface in ("completions", "chat"):
                        event = json.loads(data)
                        if event.get("usage"):
                            s.tokens = event["usage"]["completion_tokens"]
                        if not event.get("choices"):
                            continue
                        c = event["choices"][0]
                        text = c.get("text") if surface == "completions" else (c.get("delta") or {}).get("content")
                        if not text:
                            continue
                    now = time.perf_counter()
                    if last is None:
                        s.ttft = now - t0
                    else:
                        s.itl.append(now - last)
                    last = now
                if surface == "takeoff":
                    s.tokens = out_tokens
        s.e2e = time.perf_counter() - t0
        s.ok = s.tokens > 0
    except httpx.HTTPError:
        pass
    return s


async def level(url: str, surface: str, concurrency: int, requests: int, prompt: str, out_tokens: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one(client, surface, prompt, out_tokens, -1)  # warm-up

        async def bounded(i: int) -> Sample:
            async with sem:
                return await one(client, surface, prompt, out_tokens, i)

        t0 = time.perf_counter()
        samples = await asyncio.gather(*(bounded(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    good = [s for s in samples if s.ok]
    itl = [x for s in good for x in s.itl]

    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        v = sorted(values)
        return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]

    return {
        "requests": requests,
        "errors": requests - len(good),
        "wall_s": wall,
        "output_tok_s": sum(s.tokens for s in good) / wall,
        "req_s": len(good) / wall,
        **{f"ttft_p{int(q * 100)}": pct([s.ttft for s in good], q) for q in (0.5, 0.9, 0.99)},
        **{f"itl_p{int(q * 100)}": pct(itl, q) for q in (0.5, 0.9, 0.99)},
        **{f"e2e_p{int(q * 100)}": pct([s.e2e for s in good], q) for q in (0.5, 0.9, 0.99)},
    }


def vllm_bench(url: str, model: str, concurrency: int, prompts: int, in_len: int, out_len: int, out: Path) -> dict:
    """vLLM's own benchmark client against `url` (the `vllm bench serve` code)."""
    args = [
        "--backend",
        "vllm",
        "--base-url",
        url,
        "--endpoint",
        "/v1/completions",
        "--model",
        MODEL_NAME,
        "--tokenizer",
        model,
        "--dataset-name",
        "random",
        "--random-input-len",
        str(in_len),
        "--random-output-len",
        str(out_len),
        "--ignore-eos",
        "--num-prompts",
        str(prompts),
        "--max-concurrency",
        str(concurrency),
        "--request-rate",
        "inf",
        "--seed",
        "0",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--save-result",
        "--result-dir",
        str(out.parent),
        "--result-filename",
        out.name,
        "--disable-tqdm",
    ]
    code = (
        "from vllm.benchmarks.serve import add_cli_args, main\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "import sys\np = FlexibleArgumentParser()\nadd_cli_args(p)\nmain(p.parse_args(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **ENGINE_ENV},
        timeout=1800,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    data = json.loads(out.read_text())
    keep = (
        "output_throughput",
        "request_throughput",
        "median_ttft_ms",
        "p99_ttft_ms",
        "median_itl_ms",
        "p99_itl_ms",
        "median_e2el_ms",
        "completed",
    )
    return {k: data.get(k) for k in keep}


# ----------------------------------------------------------------------------- report


def merge_rounds(runs: list[dict]) -> dict:
    """Median over rounds of every number, and each round's throughput (to show the spread)."""
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        "output_tok_s_rounds": [r["output_tok_s"] for r in runs]
    }


def _ms(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} ms"


def _pairs(results: dict, args: argparse.Namespace) -> Iterator[tuple[str, int, dict, dict]]:
    """(endpoint, concurrency, vLLM figures, gateway figures) for each OpenAI endpoint and level."""
    for surface in ("completions", "chat"):
        if surface in results["vllm"] and surface in results["gateway"]:
            for c in args.concurrency:
                yield surface, c, results["vllm"][surface][str(c)], results["gateway"][surface][str(c)]


def _round_ratios(v: dict, g: dict) -> str:
    """Gateway / vLLM throughput for each round (round r of both servers ran back to back)."""
    if "output_tok_s_rounds" not in v:
        return "-"
    return " ".join(f"{b / a:.2f}" for a, b in zip(v["output_tok_s_rounds"], g["output_tok_s_rounds"], strict=True))


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Serving benchmark, {results['date']}, "
        f"`{results.get('command', 'python -m benchmarks.serving' + (' --quick' if args.quick else ''))}` "
        f"(SmolLM2-135M fp32 eager on 2 CPU cores; prompt {args.prompt_tokens} tokens, output "
        f"{args.output_tokens} tokens, ignore_eos; median of {args.rounds} alternating rounds)",
        "",
    ]
    lines += [
        "| endpoint | c | vLLM tok/s | gateway tok/s | ratio | ratio in each round | TTFT p50 vLLM / gw (ratio) | "
        "ITL p50 vLLM / gw (ratio) | e2e p99 vLLM / gw | errors v/g |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for surface, c, v, g in _pairs(results, args):
        lines.append(
            f"| {surface} | {c} | {v['output_tok_s']:.1f} | {g['output_tok_s']:.1f} | "
            f"{g['output_tok_s'] / v['output_tok_s']:.3f} | {_round_ratios(v, g)} | {v['ttft_p50'] * 1000:.0f} / {g['ttft_p50'] * 1000:.0f} ms "
            f"({g['ttft_p50'] / v['ttft_p50']:.3f}) | {v['itl_p50'] * 1000:.1f} / {g['itl_p50'] * 1000:.1f} ms "
            f"({g['itl_p50'] / v['itl_p50']:.3f}) | {v['e2e_p99']:.2f} / {g['e2e_p99']:.2f} s | {v['errors']:.0f}/{g['errors']:.0f} |"
        )
    lines += [
        "",
        "Tails, vLLM / gateway:",
        "",
        "| endpoint | c | TTFT p90 | TTFT p99 | ITL p90 | ITL p99 | e2e p50 | e2e p90 | req/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for surface, c, v, g in _pairs(results, args):
        lines.append(
            f"| {surface} | {c} | {v['ttft_p90']:.2f} / {g['ttft_p90']:.2f} s | {v['ttft_p99']:.2f} / {g['ttft_p99']:.2f} s | "
            f"{v['itl_p90'] * 1000:.0f} / {g['itl_p90'] * 1000:.0f} ms | {v['itl_p99'] * 1000:.0f} / {g['itl_p99'] * 1000:.0f} ms | "
            f"{v['e2e_p50']:.2f} / {g['e2e_p50']:.2f} s | {v['e2e_p90']:.2f} / {g['e2e_p90']:.2f} s | "
            f"{v['req_s']:.2f} / {g['req_s']:.2f} |"
        )
    if all("front_cpu_us_per_token" in v for _, _, v, _ in _pairs(results, args)):
        lines += [
            "",
            "Front-end process CPU per output token (the HTTP server and the AsyncLLM client; the engine "
            "core is a separate process), vLLM / gateway:",
            "",
            "| endpoint | c | vLLM | gateway | ratio |",
            "|---|---|---|---|---|",
        ]
        for surface, c, v, g in _pairs(results, args):
            fv, fg = v["front_cpu_us_per_token"], g["front_cpu_us_per_token"]
            lines.append(f"| {surface} | {c} | {fv:.0f} µs | {fg:.0f} µs | {fg / fv:.2f} |")
    # the gateway's other surfaces, as a ratio to its own completions (when both were measured)
    others = [s for s in ("takeoff", "generate-one") if s in results["gateway"] and "completions" in results["gateway"]]
    if others:
        lines += [
            "",
            "Gateway surfaces against the gateway's own OpenAI completions at the same load:",
            "",
            "| surface | c | tok/s | TTFT p50 | ITL p50 | ratio tok/s to completions |",
            "|---|---|---|---|---|---|",
        ]
    for surface in others:
        for c in args.concurrency:
            g = results["gateway"][surface][str(c)]
            base = results["gateway"]["completions"][str(c)]
            lines.append(
                f"| {surface} | {c} | {g['output_tok_s']:.1f} | {g['ttft_p50'] * 1000:.0f} ms | "
                f"{g['itl_p50'] * 1000:.1f} ms | {g['output_tok_s'] / base['output_tok_s']:.3f} |"
            )
    mem = results["memory_mb"]
    lines += [
        "",
        "| memory (peak RSS) | vLLM server | gateway | gateway - vLLM |",
        "|---|---|---|---|",
        f"| front-end process | {mem['vllm']['front_end']:.0f} MB | {mem['gateway']['front_end']:.0f} MB | "
        f"{mem['gateway']['front_end'] - mem['vllm']['front_end']:+.0f} MB |",
        f"| all processes (engine core and worker included) | {mem['vllm']['total']:.0f} MB | "
        f"{mem['gateway']['total']:.0f} MB | {mem['gateway']['total'] - mem['vllm']['total']:+.0f} MB |",
    ]
    vb = results.get("vllm_bench")
    if vb:
        lines += [
            "",
            f"`vllm bench serve` (vLLM's own client; random dataset, completions, c={args.bench_concurrency}):",
            "",
            "| server | output tok/s | req/s | median TTFT | median ITL | median e2e |",
            "|---|---|---|---|---|---|",
        ]
        for kind in ("vllm", "gateway"):
            r = vb[kind]
            if "error" in r:
                lines.append(f"| {kind} | error | | | | |")
                continue
            lines.append(
                f"| {kind} | {r['output_throughput']:.1f} | {r['request_throughput']:.2f} | "
                f"{_ms(r['median_ttft_ms'], 0)} | {_ms(r['median_itl_ms'], 1)} | {_ms(r.get('median_e2el_ms'), 0)} |"
            )
    return "\n".join(lines) + "\n"


def plots(results: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for surface in [s for s in ("completions", "chat") if s in results["vllm"] and s in results["gateway"]]:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, (metric, label) in zip(
            axes,
            (("ttft_p50", "TTFT p50 (s)"), ("itl_p50", "ITL p50 (s)"), ("e2e_p50", "end-to-end p50 (s)")),
            strict=True,
        ):
            for kind in ("vllm", "gateway"):
                ys = [results[kind][surface][str(c)][metric] for c in args.concurrency]
                ax.plot(args.concurrency, ys, marker="o", label="vLLM server" if kind == "vllm" else "gateway")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_ylabel(label)
            ax.legend()
        fig.suptitle(
            f"/v1/{'completions' if surface == 'completions' else 'chat/completions'}: latency against concurrency"
        )
        fig.tight_layout()
        fig.savefig(RESULTS / f"{args.name}-{surface}.png", dpi=100)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--bench-concurrency", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="one round, 2x c requests per level, no vllm bench")
    parser.add_argument(
        "--surfaces",
        nargs="+",
        choices=SURFACES,
        default=list(SURFACES),
        help="which surfaces to load (takeoff and generate-one exist on the gateway only)",
    )
    parser.add_argument("--no-vllm-bench", action="store_true", help="skip the `vllm bench serve` comparison")
    parser.add_argument("--name", default="serving", help="results file stem: results/NAME.json, NAME.md, NAME-*.png")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plots from NAME.json")
    args = parser.parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        args = argparse.Namespace(
            **{"surfaces": list(SURFACES), "name": args.name, **saved["args"], "report_only": True}
        )
        md = report(saved, args)
        (RESULTS / f"{args.name}.md").write_text(md)
        plots(saved, args)
        print(md)
        return
    if args.quick:
        args.rounds = 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = model_dir()
    prompt = prompt_text(args.prompt_tokens)
    per_level = {c: max(4 * c if not args.quick else 2 * c, 8) for c in args.concurrency}
    runs: dict[str, dict[str, dict[str, list[dict]]]] = {"vllm": {}, "gateway": {}}
    memory: dict[str, dict[str, float]] = {}
    bench: dict[str, dict] = {}
    for r in range(args.rounds):
        order = ["vllm", "gateway"] if r % 2 == 0 else ["gateway", "vllm"]
        for kind in order:
            # identical engine settings: the gateway's no_repeat_ngram logits processor (which
            # vLLM's server does not load) is off; its cost is measured separately
            settle()
            server = start(kind, model, RESULTS / f"serving-{kind}.log", {"no_repeat_ngram": False})
            try:
                surfaces = [s for s in args.surfaces if kind == "gateway" or s in ("completions", "chat")]
                # bursts the results do not count, one at each level: the first runs of new batch
                # shapes are slow on CPU and would otherwise land in whichever level comes first
                for c in args.concurrency if surfaces else []:
                    asyncio.run(level(server.url, surfaces[0], c, c, prompt, args.output_tokens))
                for surface in surfaces:
                    for c in args.concurrency:
                        cpu0 = server.front_cpu()
                        result = asyncio.run(level(server.url, surface, c, per_level[c], prompt, args.output_tokens))
                        # less noisy than throughput on a shared 2-core box: what the front end
                        # costs per token is CPU taken from the engine core's threads
                        tokens = result["output_tok_s"] * result["wall_s"]
                        result["front_cpu_us_per_token"] = (server.front_cpu() - cpu0) / max(tokens, 1) * 1e6
                        runs[kind].setdefault(surface, {}).setdefault(str(c), []).append(result)
                        print(kind, surface, c, json.dumps({k: round(v, 4) for k, v in result.items()}), flush=True)
                if r == 0 and not args.quick and not args.no_vllm_bench:
                    bench[kind] = vllm_bench(
                        server.url,
                        model,
                        args.bench_concurrency,
                        4 * args.bench_concurrency,
                        args.prompt_tokens,
                        args.output_tokens,
                        RESULTS / f"vllm-bench-{kind}.json",
                    )
                    print(kind, "vllm bench", json.dumps(bench[kind]), flush=True)
            finally:
                server.stop()
            mem = {k: v / 2**20 for k, v in server.peak_rss.items()}
            memory[kind] = {k: max(memory.get(kind, {}).get(k, 0), v) for k, v in mem.items()}
    results: dict[str, Any] = {
        "date": str(date.today()),
        "command": " ".join(["python -m benchmarks.serving", *sys.argv[1:]]),
        "args": vars(args),
        "vllm": {s: {c: merge_rounds(v) for c, v in levels.items()} for s, levels in runs["vllm"].items()},
        "gateway": {s: {c: merge_rounds(v) for c, v in levels.items()} for s, levels in runs["gateway"].items()},
        "memory_mb": memory,
        "vllm_bench": bench,
    }
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    md = report(results, args)
    (RESULTS / f"{args.name}.md").write_text(md)
    plots(results, args)
    print(md)


if __name__ == "__main__":
    main()
