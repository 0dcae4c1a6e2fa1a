"""The engine `gateway serve` builds is the one `vllm serve` builds from the same command line.

Both sides run their real code up to the engine: the gateway's command line, settings,
reader and `start_async_llm`; vLLM's argument parser and
`build_async_engine_client_from_engine_args`, the function `vllm serve` calls. Only
`AsyncLLM.from_vllm_config` is replaced, by a stand-in that keeps the `VllmConfig` it is
given (no engine process starts). The configs are compared field by field: scheduler,
cache, parallelism and model. On this machine vLLM's defaults are the CPU ones; with
vLLM's platform answers faked to an H100 and to a 180 GB GPU, the batching defaults are
the server's (1024 sequences; 8192 and 16384 batched tokens), which the engine context
(the adapters' old `from_engine_args` without a usage context) does not give.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine_adapters.factory import build_engine
from engine_adapters.models import resolve_model
from gateway.cli import add_setting_flags
from gateway.cli_vllm import translate
from gateway.settings import load_settings

GiB = 1 << 30
# Fields that differ on purpose (docs/migration.md, "From vllm serve"): the gateway names a
# folder's model by its short name, and loads the no-repeat-ngram logits processor of
# Takeoff's `no_repeat_ngram_size`.
DOCUMENTED = {"model_config": {"served_model_name", "logits_processors"}}


class Captured:
    """A stand-in engine: keeps the config it is built with."""

    def __init__(self, vllm_config: Any) -> None:
        self.vllm_config = vllm_config

    async def reset_mm_cache(self) -> None:
        return None

    def shutdown(self, timeout: float | None = None) -> None:
        return None


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from vllm.v1.engine.async_llm import AsyncLLM

    monkeypatch.setattr(AsyncLLM, "from_vllm_config", classmethod(lambda cls, vllm_config, **_: Captured(vllm_config)))
    yield


@pytest.fixture(scope="module")
def model() -> str:
    return resolve_model("embedded:smollm2-135m-instruct", Path("~/.cache/llm-gateway").expanduser())


def gateway_config(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The VllmConfig `gateway serve ARGV` starts its primary reader's engine with."""
    from engine_adapters.vllm_host import start_async_llm

    found = translate(argv, add_setting_flags)
    for name, value in found.env.items():
        monkeypatch.setenv(name, value)
    if found.args.model:
        monkeypatch.setenv("GATEWAY_MODEL", found.args.model)
    settings = load_settings(found.settings_file)
    reader = settings.readers[0]
    engine = build_engine({**reader.model_dump(), "effective_task": reader.task}, settings.cache_dir)
    return start_async_llm(engine.engine_args()).vllm_config  # type: ignore[attr-defined]


def vllm_serve_config(argv: list[str]) -> Any:
    """The VllmConfig `vllm serve ARGV` builds, by its own code."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import make_arg_parser
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client_from_engine_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    if args.model_tag is not None:  # as vllm serve's command does
        args.model = args.model_tag

    async def build() -> Any:
        async with build_async_engine_client_from_engine_args(AsyncEngineArgs.from_cli_args(args)) as client:
            return client.vllm_config

    return asyncio.run(build())


def differences(ours: Any, theirs: Any) -> list[str]:
    """Fields of the scheduler, cache, parallel and model configs that differ (but those
    in DOCUMENTED)."""
    out = []
    for part in ("scheduler_config", "cache_config", "parallel_config", "model_config"):
        a, b = getattr(ours, part), getattr(theirs, part)
        for f in dataclasses.fields(a):
            if f.name in DOCUMENTED.get(part, ()):
                continue
            x, y = getattr(a, f.name), getattr(b, f.name)
            if x != y and repr(x) != repr(y):
                out.append(f"{part}.{f.name}: gateway {x!r}, vllm serve {y!r}")
    return out


def command_lines(model: str, tmp: Path) -> dict[str, list[str]]:
    config = tmp / "vllm.yaml"
    config.write_text(
        json.dumps({"model": model, "max-num-seqs": 48, "max_model_len": 1024, "enable-prefix-caching": False})
    )
    return {
        "defaults": [model],
        # the embedded model's 9 attention heads split 3 ways (not 2)
        "tp3-seqs-memory": [model, "-tp", "3", "--max-num-seqs", "512", "--gpu-memory-utilization", "0.8"],
        "batched-tokens-prefix-cache": [model, "--max-num-batched-tokens", "4096", "--enable-prefix-caching"],
        "vllm-config-yaml": ["--config", str(config)],
    }


@pytest.mark.parametrize("case", ["defaults", "tp3-seqs-memory", "batched-tokens-prefix-cache", "vllm-config-yaml"])
def test_the_engine_config_is_vllm_serves(
    case: str, model: str, capture: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    argv = command_lines(model, tmp_path)[case]
    ours, theirs = gateway_config(argv, monkeypatch), vllm_serve_config(argv)
    assert differences(ours, theirs) == []
    # and the flags took: a comparison of two defaults would prove nothing
    if case == "tp3-seqs-memory":
        assert ours.parallel_config.tensor_parallel_size == 3 and ours.scheduler_config.max_num_seqs == 512
        assert ours.cache_config.gpu_memory_utilization == 0.8
    if case == "batched-tokens-prefix-cache":
        assert ours.scheduler_config.max_num_batched_tokens == 4096 and ours.cache_config.enable_prefix_caching
    if case == "vllm-config-yaml":
        assert ours.scheduler_config.max_num_seqs == 48 and ours.model_config.max_model_len == 1024
        assert not ours.cache_config.enable_prefix_caching


class FakeGPU:
    """vLLM's platform, answering for a GPU where the batching defaults ask."""

    def __init__(self, real: Any, name: str, memory: int) -> None:
        self._real, self._name, self._memory = real, name, memory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_device_total_memory(self, device_id: int = 0) -> int:
        return self._memory

    def get_device_name(self, device_id: int = 0) -> str:
        return self._name

    def is_cpu(self) -> bool:
        return False

    def is_tpu(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("gpu", "memory", "seqs", "tokens"),
    [("NVIDIA H100 80GB HBM3", 80 * GiB, 1024, 8192), ("NVIDIA B200", 180 * GiB, 1024, 16384)],
)
def test_gpu_batching_defaults_are_the_servers(
    gpu: str, memory: int, seqs: int, tokens: int, model: str, capture: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm.engine import arg_utils

    real = arg_utils.current_platform
    original = arg_utils.EngineArgs.get_batch_defaults.__func__  # type: ignore[attr-defined]

    def faked(cls: type, world_size: int) -> Any:
        arg_utils.current_platform = FakeGPU(real, gpu, memory)  # type: ignore[assignment]
        try:
            return original(cls, world_size)
        finally:
            arg_utils.current_platform = real

    monkeypatch.setattr(arg_utils.EngineArgs, "get_batch_defaults", classmethod(faked))
    ours, theirs = gateway_config([model], monkeypatch), vllm_serve_config([model])
    assert (ours.scheduler_config.max_num_seqs, ours.scheduler_config.max_num_batched_tokens) == (seqs, tokens)
    assert differences(ours, theirs) == []
    # the engine context (what the adapters used before) would have batched less
    engine_context = arg_utils.EngineArgs.get_batch_defaults(1)
    assert engine_context[1].get(None, 128) < seqs


def test_the_command_line_lands_where_vllm_would_put_it(tmp_path: Path) -> None:
    found = translate(
        ["/models/m", "--served-model-name", "a", "b", "--seed", "3", "--port", "8000", "--api-key", "k" * 16],
        add_setting_flags,
    )
    reader = json.loads(found.env["GATEWAY_PRIMARY_READER"])
    assert reader == {"served_model_names": ["a", "b"], "engine_args": {"seed": 3}}
    # --port 8000 is vLLM's default and still the port asked for (not the gateway's 3000)
    assert found.env["GATEWAY_PORT"] == "8000" and found.args.model == "/models/m"
    assert found.args.api_key == ["k" * 16]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["m", "--ssl-keyfile", "/k.pem"], "--ssl-keyfile"),
        (["m", "--root-path", "/x", "--middleware", "a.b"], "--middleware, --root-path"),
    ],
)
def test_front_end_flags_it_would_not_honour_are_refused_by_name(argv: list[str], named: str) -> None:
    from gateway.cli_vllm import FlagError

    with pytest.raises(FlagError, match=named):
        translate(argv, add_setting_flags)


def test_a_config_file_of_neither_kind_is_refused_naming_its_keys(tmp_path: Path) -> None:
    from gateway.cli_vllm import FlagError

    bad = tmp_path / "c.yaml"
    bad.write_text("port: 3000\nmax_num_seqz: 4\n")
    with pytest.raises(FlagError, match="max_num_seqz"):
        translate(["--config", str(bad)], add_setting_flags)


def test_unknown_flags_exit_2_with_argparses_message(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli_vllm import FlagError

    with pytest.raises(FlagError):
        translate(["m", "--no-such-flag"], add_setting_flags)
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_on_a_cpu_a_kv_cache_that_fits_is_picked_unless_one_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from engine_adapters.vllm_host import prepare_cpu_env

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "")  # recorded, so the variable is restored after
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    chosen = prepare_cpu_env(None, {})
    assert chosen is not None and 1 <= chosen <= max(1, psutil.virtual_memory().available // GiB // 4)
    assert chosen <= psutil.virtual_memory().available / GiB  # what made `gateway serve FOLDER` exit: 0.92 of it
    assert int(os.environ["VLLM_CPU_KVCACHE_SPACE"]) == chosen
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    # vLLM reads the variable over its own argument, so an engine argument that sizes the
    # cache leaves it unset
    for args in ({"kv_cache_memory_bytes": 2 * GiB}, {"gpu_memory_utilization": 0.3}):
        assert prepare_cpu_env(None, args) is None and "VLLM_CPU_KVCACHE_SPACE" not in os.environ
    assert prepare_cpu_env(3, {}) == 3 and os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
