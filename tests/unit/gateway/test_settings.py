"""Settings: YAML presets, environment overrides, Takeoff aliases, redaction."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gateway.settings import load_settings, non_default, redacted

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith(("GATEWAY_", "TAKEOFF_")):
            monkeypatch.delenv(key)


def test_default_preset_loads():
    s = load_settings(ROOT / "configs" / "default.yaml")
    reader, embed = s.readers
    assert embed.consumer_group == "embed" and embed.effective_task == "embed"
    assert reader.model == "embedded:smollm2-135m-instruct"
    assert reader.dtype == "float32" and reader.max_model_len == 2048 and reader.enforce_eager
    assert s.port == 3000 and s.effective_management_port == 3001 and s.openai_port == 3003


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_is_valid(preset):
    load_settings(preset)


def test_env_overrides_yaml(monkeypatch, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"port": 4000, "default_max_new_tokens": 50}))
    monkeypatch.setenv("GATEWAY_PORT", "4100")
    s = load_settings(cfg)
    assert s.port == 4100 and s.default_max_new_tokens == 50
    assert s.effective_management_port == 4101


def test_null_in_the_environment_turns_an_optional_port_off_and_empty_is_refused(monkeypatch, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"openai_port": 3005, "probe_port": 3002}))
    monkeypatch.setenv("GATEWAY_OPENAI_PORT", "null")
    monkeypatch.setenv("GATEWAY_PROBE_PORT", "None")
    s = load_settings(cfg)
    assert s.openai_port is None and s.probe_port is None  # as `openai_port: null` in YAML
    # an unset template variable must not turn a port off
    monkeypatch.setenv("GATEWAY_OPENAI_PORT", "")
    with pytest.raises(ValidationError, match="openai_port"):
        load_settings(cfg)


def test_takeoff_environment_variables_set_the_primary_reader(monkeypatch):
    monkeypatch.setenv("TAKEOFF_MODEL_NAME", "/models/x")
    monkeypatch.setenv("TAKEOFF_DEVICE", "cuda")
    monkeypatch.setenv("TAKEOFF_MAX_BATCH_SIZE", "12")
    monkeypatch.setenv("TAKEOFF_MAX_SEQUENCE_LENGTH", "1024")
    monkeypatch.setenv("TAKEOFF_TENSOR_PARALLEL", "2")
    monkeypatch.setenv("TAKEOFF_CUDA_VISIBLE_DEVICES", "0,1")
    r = load_settings(ROOT / "configs" / "default.yaml").readers[0]
    assert (r.model, r.device, r.max_model_len, r.tensor_parallel_size, r.cuda_visible_devices) == (
        "/models/x",
        "cuda",
        1024,
        2,
        "0,1",
    )
    # Takeoff's static batch size does not cap vLLM's continuous batching: it is named instead
    assert r.max_batch_size is None
    from gateway.settings import takeoff_unsupported

    assert any(n.startswith("TAKEOFF_MAX_BATCH_SIZE (vLLM batches continuously") for n in takeoff_unsupported())


def test_takeoff_max_batch_size_is_a_static_batchers_batch_size(monkeypatch, tmp_path):
    from gateway.settings import takeoff_unsupported

    cfg = tmp_path / "c.yaml"
    reader = {"kind": "sentence-transformers", "model": "embedded:all-minilm-l6-v2"}
    cfg.write_text(yaml.safe_dump({"readers": [reader]}))
    monkeypatch.setenv("TAKEOFF_MAX_BATCH_SIZE", "12")
    assert load_settings(cfg).readers[0].max_batch_size == 12
    assert takeoff_unsupported(primary_kind="sentence-transformers") == []
    monkeypatch.setenv("GATEWAY_MAX_BATCH_SIZE", "30")  # ours wins
    assert load_settings(cfg).readers[0].max_batch_size == 30


def test_gateway_shortcut_wins_over_takeoff_name(monkeypatch):
    monkeypatch.setenv("TAKEOFF_MODEL_NAME", "/models/takeoff")
    monkeypatch.setenv("GATEWAY_MODEL", "/models/ours")
    assert load_settings().readers[0].model == "/models/ours"


def test_readers_as_json_environment_variable(monkeypatch):
    monkeypatch.setenv("GATEWAY_READERS", '[{"id": "a", "kind": "scripted"}, {"id": "b", "consumer_group": "g"}]')
    s = load_settings()
    assert [r.id for r in s.readers] == ["a", "b"]


def test_bad_values_are_rejected(monkeypatch, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"readers": [{"id": "a"}, {"id": "a"}]}))
    with pytest.raises(ValidationError, match="unique"):
        load_settings(cfg)
    cfg.write_text(yaml.safe_dump({"no_such_setting": 1}))
    with pytest.raises(ValidationError):
        load_settings(cfg)
    monkeypatch.setenv("TAKEOFF_DEVICE", "tpu")
    with pytest.raises(ValidationError):
        load_settings()


def test_secrets_are_redacted(monkeypatch):
    monkeypatch.setenv("GATEWAY_API_KEYS", '["sk-very-secret-0123456789"]')
    s = load_settings()
    assert "sk-very-secret-0123456789" not in str(redacted(s))
    assert "sk-very-secret-0123456789" not in str(non_default(s))
    assert non_default(s)["api_keys"] == ["**********"]


@pytest.mark.parametrize(
    "url",
    ["redis://:s3cret-pass@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0?password=s3cret-pass&db=1"],
)
def test_a_redis_password_never_reaches_the_log(monkeypatch, url):
    monkeypatch.setenv("GATEWAY_CONTINUATION__REDIS_URL", url)
    s = load_settings()
    assert "s3cret-pass" not in str(redacted(s)) and "s3cret-pass" not in str(non_default(s))
    assert "127.0.0.1:6379" in redacted(s)["continuation"]["redis_url"]


def test_non_default_lists_only_changes(monkeypatch):
    monkeypatch.setenv("GATEWAY_PORT", "3100")
    assert set(non_default(load_settings())) == {"port"}


def test_gateway_config_command_prints_effective_settings(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_API_KEYS": '["sk-hidden-0123456789"]', "TAKEOFF_MAX_BATCH_SIZE": "7"}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "--config", str(ROOT / "configs" / "default.yaml")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=ROOT,
    ).stdout
    data = yaml.safe_load(out)
    assert data["readers"][0]["max_batch_size"] is None  # a vLLM reader: not Takeoff's static batch
    assert data["api_keys"] == ["**********"]
    assert "sk-hidden-0123456789" not in out


def test_gateway_config_reports_bad_settings_clearly(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("port: not-a-port\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 1
    assert "port" in proc.stderr and "Traceback" not in proc.stderr


def test_more_takeoff_variables_are_mapped(monkeypatch):
    monkeypatch.setenv("TAKEOFF_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("TAKEOFF_CONSUMER_GROUP", "generate")
    monkeypatch.setenv("TAKEOFF_DISABLE_CUDA_GRAPH", "true")
    monkeypatch.setenv("TAKEOFF_QUANT_TYPE", "bnb")
    s = load_settings()
    primary = s.readers[0]
    assert s.log_level == "debug" and primary.consumer_group == "generate" and primary.enforce_eager
    assert primary.engine_args["quantization"] == "bitsandbytes"
    monkeypatch.setenv("TAKEOFF_LOG_LEVEL", "loud")
    with pytest.raises(ValueError, match="TAKEOFF_LOG_LEVEL"):
        load_settings()


def test_unsupported_takeoff_variables_are_named():
    from gateway.settings import takeoff_unsupported

    env = {"TAKEOFF_MODEL_NAME": "x", "TAKEOFF_PAGE_CACHE_SIZE": "10%", "TAKEOFF_SOMETHING": "1", "OTHER": "2"}
    named = takeoff_unsupported(env)
    assert [n.split(" ")[0] for n in named] == ["TAKEOFF_PAGE_CACHE_SIZE", "TAKEOFF_SOMETHING"]
    assert "gpu_memory_utilization" in named[0]


def test_a_dotenv_file_sets_generation_defaults(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text(
        "GATEWAY_GENERATE_API_DEFAULTS__TEMPERATURE=0.3\nGATEWAY_MAX_N=4\nTAKEOFF_MODEL_NAME=/models/x\nOTHER=1\n"
    )
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.generate_api_defaults.temperature == 0.3 and s.max_n == 4 and s.readers[0].model == "/models/x"
    monkeypatch.setenv("GATEWAY_MAX_N", "5")  # the real environment wins over the file
    assert load_settings().max_n == 5


def test_offline_by_default_only_without_hub_ids(monkeypatch):
    assert load_settings().effective_offline  # embedded models never need a hub
    monkeypatch.setenv("TAKEOFF_MODEL_NAME", "gpt2")
    s = load_settings()
    assert s.hub_models() == ["gpt2"] and not s.effective_offline
    monkeypatch.setenv("GATEWAY_OFFLINE", "true")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 1 and "offline" in proc.stderr and "'gpt2'" in proc.stderr


def test_cli_flags_win_over_environment_and_yaml(monkeypatch, tmp_path):
    import argparse

    from gateway.cli import add_setting_flags, apply_flags

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"max_n": 3, "default_max_new_tokens": 7, "access_log": True}))
    monkeypatch.setenv("GATEWAY_MAX_N", "4")
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    add_setting_flags(parser)
    env: dict[str, str] = {}
    flags = [
        "--max-n",
        "5",
        "--no-access-log",
        "--max-model-len",
        "4096",
        "--api-key",
        "sk-flag-one-0123456789",
        "--api-key",
        "sk-flag-two-0123456789",
    ]
    args = parser.parse_args(["/models/m", *flags])
    apply_flags(args, env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings(config)
    assert s.max_n == 5 and s.access_log is False and s.default_max_new_tokens == 7
    assert s.readers[0].model == "/models/m" and s.readers[0].max_model_len == 4096
    assert [k.get_secret_value() for k in s.api_keys] == ["sk-flag-one-0123456789", "sk-flag-two-0123456789"]
    monkeypatch.delenv("GATEWAY_MAX_N")
    monkeypatch.setenv("GATEWAY_MAX_N", "4")
    assert load_settings(config).max_n == 4  # without the flag: the environment over the YAML


def test_version_flag_and_endpoint_agree():
    import gateway

    out = subprocess.run([sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == f"gateway {gateway.__version__}"


def test_primary_reader_json_sets_fields_and_merges_engine_args(monkeypatch, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"readers": [{"model": "/m", "engine_args": {"seed": 1, "block_size": 32}}]}))
    monkeypatch.setenv("GATEWAY_PRIMARY_READER", '{"served_model_names": ["a"], "engine_args": {"seed": 7}}')
    r = load_settings(cfg).readers[0]
    assert r.served_model_names == ["a"] and r.engine_args == {"seed": 7, "block_size": 32}
    for bad, said in (("{not json", "not JSON"), ("[1]", "JSON object")):
        monkeypatch.setenv("GATEWAY_PRIMARY_READER", bad)
        with pytest.raises(ValueError, match=said):
            load_settings(cfg)
    monkeypatch.setenv("GATEWAY_PRIMARY_READER", '{"no_such_field": 1}')
    with pytest.raises(ValueError, match="no_such_field"):
        load_settings(cfg)


def test_vllm_api_key_is_an_inference_key_and_short_ones_are_refused(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "sk-vllm-0123456789ab")
    assert [k.get_secret_value() for k in load_settings().api_keys] == ["sk-vllm-0123456789ab"]
    monkeypatch.setenv("GATEWAY_API_KEYS", '["sk-ours-0123456789ab"]')  # ours wins
    assert [k.get_secret_value() for k in load_settings().api_keys] == ["sk-ours-0123456789ab"]
    monkeypatch.delenv("GATEWAY_API_KEYS")
    monkeypatch.setenv("VLLM_API_KEY", "token-abc123")  # vLLM's docs' example: too short to be a key here
    with pytest.raises(ValueError, match="at least 16"):
        load_settings()


TAKEOFF_CONFIG = {
    "takeoff": {
        "server_config": {"port": 3100, "management_port": 3101, "max_batch_size": 30, "batch_duration_millis": 50},
        "readers_config": {
            "reader1": {"model_name": "embedded:smollm2-135m-instruct", "device": "cpu", "max_seq_length": 512,
                        "max_batch_size": 4, "consumer_group": "primary"},
            "reader2": {"model_name": "BAAI/bge-small-en", "consumer_group": "embed", "quant_type": "awq"},
        },
    }
}  # fmt: skip


def test_a_takeoff_config_is_read_as_gateway_settings(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(TAKEOFF_CONFIG))
    s = load_settings(cfg)
    assert (s.port, s.management_port) == (3100, 3101)
    gen, emb = s.readers
    assert (gen.id, gen.kind, gen.model, gen.device, gen.max_model_len) == (
        "reader1", "vllm", "embedded:smollm2-135m-instruct", "cpu", 512
    )  # fmt: skip
    assert gen.max_batch_size is None  # Takeoff's static batch does not cap continuous batching
    assert (emb.kind, emb.max_batch_size, emb.max_batch_wait_ms) == ("sentence-transformers", 30, 50)
    assert emb.engine_args == {"quantization": "awq"}


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"takeoff": {"server_config": {}, "readers": {}}}, "unknown sections"),
        ({"takeoff": {"readers_config": {"r": {"device": "cpu"}}}}, "model_name"),
        ({"takeoff": {"readers_config": {}}}, "no reader"),
        ({"takeoff": ["x"]}, "mapping"),
    ],
)
def test_broken_takeoff_configs_are_refused_by_name(tmp_path, data, said):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=said):
        load_settings(cfg)


def test_gateway_config_from_takeoff_prints_settings_that_load(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(TAKEOFF_CONFIG))
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "--from-takeoff", str(cfg)],
        capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "# - readers_config.reader1.max_batch_size (4): vLLM batches continuously" in proc.stdout
    converted = tmp_path / "gateway.yaml"
    converted.write_text(proc.stdout)
    assert load_settings(converted).model_dump() == load_settings(cfg).model_dump()
    bad = tmp_path / "not-takeoff.yaml"
    bad.write_text("port: 3000\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "--from-takeoff", str(bad)],
        capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 1 and "not a Takeoff config" in proc.stderr
