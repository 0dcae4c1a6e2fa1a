"""The `gateway` command: `serve`, `config` and `provision`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import yaml

import gateway

if TYPE_CHECKING:  # the settings module is imported only when a command needs it
    from gateway.settings import Settings

# Flags for the primary reader's fields (the names vLLM's `serve` uses), as the
# GATEWAY_* shortcuts of settings.PRIMARY_ENV.
READER_FLAGS = {
    "max_model_len": ("GATEWAY_MAX_MODEL_LEN", int),
    "tensor_parallel_size": ("GATEWAY_TENSOR_PARALLEL_SIZE", int),
    "dtype": ("GATEWAY_DTYPE", str),
    "device": ("GATEWAY_DEVICE", str),
    "max_batch_size": ("GATEWAY_MAX_BATCH_SIZE", int),
}


def _settings(args: argparse.Namespace) -> Settings:
    from pydantic import ValidationError

    from gateway.errors import validation_message
    from gateway.settings import load_settings

    try:
        return load_settings(args.config)
    except ValidationError as exc:
        message, _ = validation_message(exc.errors())
        sys.exit(f"gateway: bad settings: {message.removeprefix('invalid request: ')}")
    except (OSError, ValueError) as exc:
        sys.exit(f"gateway: cannot read settings: {exc}")


def _offline(settings: Settings) -> None:
    # Set before transformers or vLLM are imported: they read these once.
    hub = settings.hub_models()
    if settings.offline is True and hub:
        sys.exit(
            f"gateway: the model {hub[0]!r} is a hub id, and offline: true (GATEWAY_OFFLINE) forbids "
            "downloads; set offline: false, or give a local folder or an embedded: model"
        )
    if settings.effective_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _scalar(annotation: Any) -> tuple[Any, tuple[Any, ...] | None] | None:
    """The flag type (and choices) of a setting of one plain value, else None."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return _scalar(rest[0]) if len(rest) == 1 else None
    if origin is Literal:
        return str, tuple(str(a) for a in get_args(annotation))
    if annotation in (str, int, float, bool, Path):
        return annotation, None
    return None


def add_setting_flags(parser: argparse.ArgumentParser, taken: set[str] | frozenset[str] = frozenset()) -> None:
    """A flag for every top-level setting of one plain value (`--max-new-tokens-limit`),
    for the primary reader's common fields (`--max-model-len`, ...) and `--api-key`;
    a new setting gets its flag without a line here. Flags in `taken` are left to the
    parser's own (vLLM's, which mean the same)."""
    from gateway.settings import Settings

    group = parser.add_argument_group("settings (override the environment and the YAML file)")
    for name, info in Settings.model_fields.items():
        kind = _scalar(info.annotation)
        flag = "--" + name.replace("_", "-")
        if kind is None or flag in taken:
            continue
        typ, choices = kind
        if typ is bool:
            group.add_argument(flag, dest=f"set_{name}", action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(flag, dest=f"set_{name}", type=str, choices=choices, metavar=name.upper())
    for name, (_, typ) in READER_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if flag not in taken:
            group.add_argument(flag, dest=f"reader_{name}", type=typ, help="the primary reader's")
    if "--api-key" not in taken:
        group.add_argument("--api-key", dest="api_key", action="append", help="an inference key (repeatable)")


def apply_flags(args: argparse.Namespace, env: Any = os.environ) -> None:
    """Turn the given flags into GATEWAY_* variables, so they win over the environment and
    the YAML file (the documented order: flags, environment, .env, YAML, defaults)."""
    for key, value in vars(args).items():
        if value is None:
            continue
        if key.startswith("set_"):
            name = key[4:]
            env[f"GATEWAY_{name.upper()}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        elif key.startswith("reader_"):
            env[READER_FLAGS[key[7:]][0]] = str(value)
    if getattr(args, "model", None):
        env["GATEWAY_MODEL"] = args.model
    if getattr(args, "api_key", None):
        env["GATEWAY_API_KEYS"] = json.dumps(args.api_key)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT."""
    apply_flags(args)
    settings = _settings(args)
    _offline(settings)
    from gateway.observability.logs import configure

    configure(settings.log_format, settings.log_level)
    from gateway.settings import DEFAULT_GROUP, process_env, takeoff_unsupported

    primary = next((r for r in settings.readers if r.consumer_group == DEFAULT_GROUP), None)
    ignored = takeoff_unsupported(process_env(), primary.kind if primary is not None else "vllm")
    if ignored:
        logging.getLogger("gateway").warning("Takeoff variables with no effect here: %s", "; ".join(ignored))
    from gateway.server import serve

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is optional; the default loop works too
        runner = asyncio.Runner()
    with runner:
        code = runner.run(serve(settings))
    if code == 0:
        # A clean stop: the engines are shut down and every line is written. Skip the
        # interpreter's teardown, where native extensions (triton, xgrammar) print
        # screens of reference-leak notices that make every rolling update look like a
        # crash. Any other exit goes through the normal teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return code


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings (of `gateway serve` with the same flags), secrets
    redacted; with --from-takeoff, the settings a Takeoff config.yaml becomes (to keep and
    edit), its notes as comments."""
    from gateway.settings import redacted

    apply_flags(args)
    if args.from_takeoff:
        from gateway import takeoff_config
        from gateway.settings import ReaderSettings

        try:
            data = yaml.safe_load(Path(args.from_takeoff).read_text())
            if not takeoff_config.is_takeoff_config(data):
                raise ValueError("not a Takeoff config (its top level is one key, takeoff)")
            settings, notes = takeoff_config.convert(data)
            for reader in settings["readers"]:
                ReaderSettings(**reader)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            sys.exit(f"gateway config: {args.from_takeoff}: {exc}")
        print(f"# converted from the Takeoff config {args.from_takeoff} (docs/migration.md)")
        print("".join(f"# - {note}\n" for note in notes), end="")
        print(yaml.safe_dump(settings, sort_keys=False), end="")
        return 0
    print(yaml.safe_dump(redacted(_settings(args)), sort_keys=False), end="")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    """Convert the embedded models the settings use, so the first start is fast."""
    settings = _settings(args)
    _offline(settings)
    from engine_adapters.models import is_embedded, resolve_model

    for reader in settings.readers:
        if is_embedded(reader.model):
            print(f"{reader.model}: {resolve_model(reader.model, settings.cache_dir)}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `gateway` console script."""
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gateway {gateway.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("serve", cmd_serve, "serve the APIs"),
        ("config", cmd_config, "print the effective settings (secrets redacted)"),
        ("provision", cmd_provision, "prepare the embedded models"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", "-c", help="YAML settings file (e.g. configs/default.yaml)")
        p.set_defaults(func=func)
        if name in ("serve", "config"):  # `config` prints what `serve` with these flags would run
            p.add_argument("model", nargs="?", help="the primary reader's model: embedded:NAME, a folder or a hub id")
            p.epilog = "Any flag of `vllm serve` is taken too, and a vLLM --config YAML (docs/migration.md)."
            add_setting_flags(p)
        if name == "config":
            p.add_argument("--from-takeoff", metavar="FILE", help="print the settings a Takeoff config.yaml becomes")
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)
    if args.command in ("serve", "config"):
        args = _with_vllm_flags(args, extra, argv[argv.index(args.command) + 1 :])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    sys.exit(args.func(args))


def _with_vllm_flags(args: argparse.Namespace, extra: list[str], serve_argv: list[str]) -> argparse.Namespace:
    """The `serve` command line read again by vLLM's parser when it has flags the gateway
    does not know or a vLLM --config file (gateway.cli_vllm); as it was otherwise."""
    from gateway import cli_vllm

    try:
        vllm_config = cli_vllm.config_kind(args.config, lambda: set(vars(cli_vllm.vllm_parser().parse_args([]))))
        if not extra and vllm_config == "gateway":
            return args
        found = cli_vllm.translate(serve_argv, add_setting_flags)
    except cli_vllm.FlagError as exc:
        sys.exit(f"gateway {args.command}: {exc}" if str(exc) else 2)
    os.environ.update(found.env)
    found.args.config, found.args.func, found.args.from_takeoff = found.settings_file, args.func, None
    return found.args


if __name__ == "__main__":
    main()
