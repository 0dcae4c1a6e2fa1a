"""A Takeoff `config.yaml` (`takeoff: {server_config, readers_config}`) as gateway settings.

`gateway serve --config config.yaml` reads one as it is (the images read
`/code/config.yaml`, where Takeoff's read theirs); `gateway config --from-takeoff FILE`
prints the settings it becomes, with a note on every key that changed meaning or has none
here, for an operator to keep and edit. docs/migration.md has the table.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# server_config keys -> top-level settings
_SERVER = {"port": "port", "management_port": "management_port", "openai_port": "openai_port"}
# server_config keys that ask for what the gateway does anyway, or that have no meaning
# with continuous batching (said once in the notes)
_SERVER_NOTES = {
    "max_batch_size": "vLLM batches continuously; embedding readers take it as their batch size",
    "batch_duration_millis": "embedding readers take it as max_batch_wait_ms; vLLM batches continuously",
    "echo": "the prompt is never echoed on /generate (the OpenAI layer's echo is per request)",
    "enable_metrics": "/metrics is always served on the management port (metrics_on_main_port adds the API ports)",
    "heartbeat_check_interval": "engines are checked every few seconds by the registry",
    "launch_management_server": "the management port is always served (on management_host, loopback by default)",
    "launch_vertex_server": "there is no Vertex AI layer",
    "launch_sagemaker_server": "/ping and /invocations are served on the main port",
    "vertex_port": "there is no Vertex AI layer",
    "sagemaker_port": "/ping and /invocations are served on the main port",
}
# readers_config keys -> reader fields
_READER = {
    "model_name": "model",
    "device": "device",
    "consumer_group": "consumer_group",
    "max_seq_length": "max_model_len",
    "tensor_parallel": "tensor_parallel_size",
    "cuda_visible_devices": "cuda_visible_devices",
}
_QUANT = {"bnb": "bitsandbytes", "int8": "bitsandbytes", "awq": "awq", "gptq": "gptq", "fp8": "fp8"}
# model names of the sentence-transformers kind (Takeoff told embedders by architecture;
# a hub id cannot be read offline, so its name decides, and the notes say so)
_EMBEDDER = re.compile(r"(bge|e5-|gte-|minilm|mpnet|embed|sentence-transformers/|jina-embeddings|instructor)", re.I)
_CROSS_ENCODER = re.compile(r"(rerank|cross-encoder|ms-marco)", re.I)


def is_takeoff_config(data: Any) -> bool:
    """Whether parsed YAML is a Takeoff config (its only top-level key is `takeoff`)."""
    return isinstance(data, dict) and set(data) == {"takeoff"}


def _kind(model: str) -> tuple[str, str | None, str]:
    """(kind, task, why) of a Takeoff reader's model."""
    if model.startswith("embedded:"):
        if "minilm" in model:
            return "sentence-transformers", None, "the embedded embedding model"
        return "vllm", None, "the embedded generative model"
    folder = Path(model)
    if folder.is_dir():
        if (folder / "modules.json").is_file():
            return "sentence-transformers", None, "its folder is a sentence-transformers model (modules.json)"
        config = folder / "config.json"
        if config.is_file() and "ForSequenceClassification" in config.read_text():
            return "sentence-transformers", "classify", "its folder is a sequence classifier (config.json)"
        return "vllm", None, "its folder is a generative model"
    if _CROSS_ENCODER.search(model):
        return "sentence-transformers", "classify", "its name reads as a re-ranker; check"
    if _EMBEDDER.search(model):
        return "sentence-transformers", None, "its name reads as an embedding model; check"
    return "vllm", None, "generative (the default)"


def convert(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Gateway settings for a Takeoff config, and notes on what changed or was dropped."""
    body = data.get("takeoff") or {}
    if not isinstance(body, dict):
        raise ValueError("takeoff: must be a mapping with server_config and readers_config")
    unknown = sorted(set(body) - {"server_config", "readers_config"})
    if unknown:
        raise ValueError(f"takeoff: unknown sections {unknown}; a Takeoff config has server_config and readers_config")
    server = body.get("server_config") or {}
    readers = body.get("readers_config") or {}
    if not isinstance(server, dict) or not isinstance(readers, dict):
        raise ValueError("takeoff.server_config and takeoff.readers_config must be mappings")
    notes: list[str] = []
    out: dict[str, Any] = {}
    for key, value in server.items():
        if key in _SERVER:
            out[_SERVER[key]] = value
        elif key == "launch_openai_server":
            if value is False:
                out["openai_port"] = None
        elif key in _SERVER_NOTES:
            notes.append(f"server_config.{key}: {_SERVER_NOTES[key]}")
        else:
            notes.append(f"server_config.{key}: not a Takeoff setting this gateway knows; dropped")
    static_batch = server.get("max_batch_size")
    batch_wait = server.get("batch_duration_millis")
    out["readers"] = []
    for name, fields in readers.items():
        if not isinstance(fields, dict) or "model_name" not in fields:
            raise ValueError(f"takeoff.readers_config.{name}: a reader needs model_name")
        model = str(fields["model_name"])
        kind, task, why = _kind(model)
        reader: dict[str, Any] = {"id": str(name), "kind": kind}
        if task:
            reader["task"] = task
        notes.append(f"readers_config.{name}: kind {kind}, {why}")
        for key, value in fields.items():
            if key in _READER:
                reader[_READER[key]] = value
            elif key == "max_batch_size" and kind == "sentence-transformers":
                reader["max_batch_size"] = value
            elif key == "max_batch_size":
                notes.append(
                    f"readers_config.{name}.max_batch_size ({value}): vLLM batches continuously; "
                    "set max_batch_size to cap sequences in flight"
                )
            elif key == "quant_type":
                reader.setdefault("engine_args", {})["quantization"] = _QUANT.get(str(value).lower(), value)
            elif key == "disable_cuda_graph":
                reader["enforce_eager"] = bool(value)
            else:
                notes.append(f"readers_config.{name}.{key}: not a Takeoff reader field this gateway knows; dropped")
        if kind == "sentence-transformers":
            if static_batch is not None:
                reader.setdefault("max_batch_size", static_batch)
            if batch_wait is not None:
                reader["max_batch_wait_ms"] = batch_wait
        out["readers"].append(reader)
    if not out["readers"]:
        raise ValueError("takeoff.readers_config names no reader")
    return out, notes
