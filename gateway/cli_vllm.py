"""`gateway serve MODEL --any-vllm-serve-flag`: the flags `vllm serve` takes, read by
vLLM's own argument parser (so a flag new in vLLM works without a line here), and where
each given one lands in the gateway.

- an engine flag (a field of vLLM's `AsyncEngineArgs`) sets the primary reader's field of
  the same name (`--max-num-seqs` its `max_batch_size`, `--served-model-name` its
  `served_model_names`), else its `engine_args`;
- the front-end flags the gateway has a meaning for set it (`--host`, `--port`,
  `--api-key`, `--chat-template`, `--tool-call-parser`, `--reasoning-parser`,
  `--lora-modules`, `--allowed-origins`, ...); any other front-end flag is refused with
  its name (the gateway would not do what it asks, e.g. `--ssl-keyfile`);
- a vLLM `--config` YAML (flag names as keys) is read as `vllm serve` reads it; a gateway
  settings YAML stays the gateway's `--config`.

What lands is handed to the settings as GATEWAY_* variables (the primary reader's fields as
the JSON object GATEWAY_PRIMARY_READER), so flags keep winning over the environment and the
YAML file. Only the flags given count: vLLM's defaults are the engine's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

# Engine flags whose reader field has another name.
_RENAMED = {"max_num_seqs": "max_batch_size", "served_model_name": "served_model_names"}
# Front-end flags with no effect here that are safe to accept: what they ask is what the
# gateway does anyway (auto tool choice is on wherever a tool-call parser is set).
_ACCEPTED = {"enable_auto_tool_choice", "headless", "api_server_count", "disable_fastapi_docs"}
# vLLM's own flags that the gateway's parser takes over (the same meaning, our spelling).
_OURS = {"--log-level"}


class FlagError(ValueError):
    """A command line the gateway cannot serve as asked."""


@dataclasses.dataclass
class Translation:
    """Where the vLLM flags of one command line land."""

    args: argparse.Namespace  # the gateway's own flags (set_*, reader_*, model, api_key)
    env: dict[str, str]  # settings as GATEWAY_* variables
    settings_file: str | None  # the gateway's settings YAML, if --config named one


def settings_fields() -> set[str]:
    """The gateway's top-level setting names."""
    from gateway.settings import Settings

    return set(Settings.model_fields)


def config_path(argv: Sequence[str]) -> str | None:
    """The value of `--config`/`-c` in a command line."""
    for i, token in enumerate(argv):
        if token in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def config_kind(path: str | None, vllm_names: Callable[[], set[str]]) -> str:
    """ "gateway" (a settings file, or a Takeoff config.yaml) or "vllm" (a `vllm serve
    --config` file: flag names as keys). A file whose keys are neither is refused, naming
    them."""
    if path is None:
        return "gateway"
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FlagError(f"cannot read --config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise FlagError(f"--config {path}: the top level must be a mapping")
    keys = {str(k) for k in data}
    if not keys or keys <= settings_fields() | {"takeoff"}:
        return "gateway"
    ours, theirs = settings_fields(), vllm_names()
    if {k.replace("-", "_") for k in keys} <= theirs:
        return "vllm"
    unknown = sorted(k for k in keys if k not in ours and k.replace("-", "_") not in theirs)
    raise FlagError(
        f"--config {path}: neither gateway settings nor `vllm serve` flags: {', '.join(unknown)} "
        "(docs/settings.md lists the settings; a vLLM config has only vLLM flags)"
    )


def vllm_parser() -> argparse.ArgumentParser:
    """`vllm serve`'s argument parser (importing it takes about 7 s). Taken from the serve
    command's own module: the parser's home moved between vLLM releases (launchers in
    0.32, common in 0.33), the command's import of it did not."""
    from vllm.entrypoints.cli.serve import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="gateway serve"))


def _engine_fields() -> set[str]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def _plain(value: Any, default: Any = None) -> Any:
    """A parsed flag value as JSON data (vLLM parses some into dataclasses or enums; of a
    config dataclass, only the fields that differ from its default)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f.name for f in dataclasses.fields(value)]
        if type(default) is type(value):
            fields = [f for f in fields if getattr(value, f) != getattr(default, f)]
        return {f: _plain(getattr(value, f)) for f in fields}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


def _mentioned(parser: argparse.ArgumentParser, argv: Sequence[str], config: dict[str, Any]) -> set[str]:
    """The dests a command line names (a flag given at its default value counts as given:
    `--port 8000` is vLLM's port, not the gateway's)."""
    table = parser._option_string_actions
    out = set()
    names = [t for t in argv if t.startswith("-")] + ["--" + str(k) for k in config]
    for token in names:
        flag = token.split("=", 1)[0]
        if flag.startswith("--"):
            flag = "--" + flag[2:].split(".", 1)[0].replace("_", "-")
        action = table.get(flag) or (table.get("--" + flag[5:]) if flag.startswith("--no-") else None)
        if action is not None:
            out.add(action.dest)
    return out


def translate(argv: Sequence[str], add_own_flags: Callable[[argparse.ArgumentParser, set[str]], None]) -> Translation:
    """Parse a `gateway serve` command line that has vLLM flags (or a vLLM --config) and
    say where each lands. `add_own_flags(parser, taken)` adds the gateway's flags that
    vLLM's parser does not have (`taken`: its option strings)."""
    from gateway.settings import ReaderSettings

    parser = vllm_parser()
    engine_fields = _engine_fields()
    defaults = vars(parser.parse_args([]))
    path = config_path(argv)
    kind = config_kind(path, lambda: set(defaults))
    argv = list(argv)
    settings_file = None
    config: dict[str, Any] = {}
    if path is not None:
        i = next(i for i, t in enumerate(argv) if t in ("--config", "-c") or t.startswith("--config="))
        del argv[i : i + (1 if "=" in argv[i] else 2)]
        if kind == "vllm":
            config = yaml.safe_load(Path(path).read_text())
            argv += ["--config", path]
        else:
            settings_file = path
    parser.conflict_handler = "resolve"  # our --log-level replaces vLLM's (hidden) one
    taken = set(parser._option_string_actions) - _OURS
    add_own_flags(parser, taken)
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed why
        raise FlagError("") from exc
    given = {k for k, v in vars(ns).items() if k in defaults and v != defaults[k]}
    given |= _mentioned(parser, argv, config) & set(defaults)
    reader_fields = set(ReaderSettings.model_fields)
    reader: dict[str, Any] = {}
    engine_args: dict[str, Any] = {}
    env: dict[str, str] = {}
    refused = []
    for dest in sorted(given - {"model_tag", "model", "config"}):
        value = _plain(getattr(ns, dest), defaults[dest])
        field = _RENAMED.get(dest, dest)
        if dest == "structured_outputs_config" and set(value) == {"backend"}:
            reader["structured_outputs_backend"] = value["backend"]  # the reader routes by it
        elif dest in engine_fields:
            if field in reader_fields:
                reader[field] = value
            else:
                engine_args[dest] = value
        elif dest in ("chat_template", "tool_call_parser"):
            reader[dest] = value
        elif dest == "lora_modules":
            reader["lora_adapters"] = {m["name"]: m["path"] for m in value or ()}
        elif dest in ("host", "port"):
            env[f"GATEWAY_{dest.upper()}"] = str(value)
        elif dest == "allowed_origins":
            env["GATEWAY_CORS_ALLOW_ORIGINS"] = json.dumps(value)
        elif dest == "uvicorn_log_level":
            env["GATEWAY_LOG_LEVEL"] = {"critical": "error", "trace": "debug"}.get(value, value)
        elif dest == "disable_uvicorn_access_log":
            env["GATEWAY_ACCESS_LOG"] = "false" if value else "true"
        elif dest == "api_key" or dest in _ACCEPTED:
            continue  # keys are read with the gateway's own flags; the rest it does anyway
        else:
            refused.append("--" + dest.replace("_", "-"))
    if refused:
        raise FlagError(
            f"vLLM's {', '.join(refused)}: front-end flags the gateway has no such setting for "
            "(docs/migration.md says what to use instead)"
        )
    if engine_args:
        reader["engine_args"] = engine_args
    if reader:
        try:
            env["GATEWAY_PRIMARY_READER"] = json.dumps(reader)
        except TypeError as exc:
            raise FlagError(f"a vLLM flag's value cannot be passed to the engine here: {exc}") from exc
    model = ns.model_tag or (ns.model if "model" in given else None)
    ns.model = model
    return Translation(ns, env, settings_file)
