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


def test_takeoff_environment_variables_set_the_primary_reader(monkeypatch):
    monkeypatch.setenv("TAKEOFF_MODEL_NAME", "/models/x")
    monkeypatch.setenv("TAKEOFF_DEVICE", "cuda")
    monkeypatch.setenv("TAKEOFF_MAX_BATCH_SIZE", "12")
    monkeypatch.setenv("TAKEOFF_MAX_SEQUENCE_LENGTH", "1024")
    monkeypatch.setenv("TAKEOFF_TENSOR_PARALLEL", "2")
    monkeypatch.setenv("TAKEOFF_CUDA_VISIBLE_DEVICES", "0,1")
    r = load_settings(ROOT / "configs" / "default.yaml").readers[0]
    assert (r.model, r.device, r.max_batch_size, r.max_model_len, r.tensor_parallel_size, r.cuda_visible_devices) == (
        "/models/x",
        "cuda",
        12,
        1024,
        2,
        "0,1",
    )


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
    monkeypatch.setenv("GATEWAY_API_KEYS", '["sk-very-secret"]')
    s = load_settings()
    assert "sk-very-secret" not in str(redacted(s))
    assert "sk-very-secret" not in str(non_default(s))
    assert non_default(s)["api_keys"] == ["**********"]


def test_non_default_lists_only_changes(monkeypatch):
    monkeypatch.setenv("GATEWAY_PORT", "3100")
    assert set(non_default(load_settings())) == {"port"}


def test_gateway_config_command_prints_effective_settings(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_API_KEYS": '["sk-hidden"]', "TAKEOFF_MAX_BATCH_SIZE": "7"}
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "--config", str(ROOT / "configs" / "default.yaml")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=ROOT,
    ).stdout
    data = yaml.safe_load(out)
    assert data["readers"][0]["max_batch_size"] == 7
    assert data["api_keys"] == ["**********"]
    assert "sk-hidden" not in out


def test_gateway_config_reports_bad_settings_clearly(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("port: not-a-port\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "--config", str(cfg)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 1
    assert "port" in proc.stderr and "Traceback" not in proc.stderr
