"""The `gateway` command: `serve`, `config` and `provision`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import yaml


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
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


def _offline(settings) -> None:  # type: ignore[no-untyped-def]
    # Set before transformers or vLLM are imported: they read these once.
    if settings.offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT."""
    if args.host:
        os.environ["GATEWAY_HOST"] = args.host
    if args.port is not None:
        os.environ["GATEWAY_PORT"] = str(args.port)
    settings = _settings(args)
    _offline(settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # one JSON object per line for each request, ready for a log pipeline
    access = logging.getLogger("gateway.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    from gateway.server import serve

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is optional; the default loop works too
        runner = asyncio.Runner()
    with runner:
        return runner.run(serve(settings))


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings, secrets redacted."""
    from gateway.settings import redacted

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
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("serve", cmd_serve, "serve the APIs"),
        ("config", cmd_config, "print the effective settings (secrets redacted)"),
        ("provision", cmd_provision, "prepare the embedded models"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", "-c", help="YAML settings file (e.g. configs/default.yaml)")
        p.set_defaults(func=func)
        if name == "serve":
            p.add_argument("--host", help="bind address (GATEWAY_HOST)")
            p.add_argument("--port", type=int, help="main port (GATEWAY_PORT)")
    args = parser.parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
