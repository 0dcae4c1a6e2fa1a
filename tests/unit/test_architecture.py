"""The house rules that a reader of the code relies on: imports run downwards only, no
module grows past 600 lines, and the README's layout names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "engine_adapters")
MAX_LINES = 600

# Lowest first. A module may import modules of its own layer or of a lower one, never of
# a higher one. A module belongs to the layer of the longest prefix that names it; a name
# starting with "=" names that module only (a package's __init__, not its modules).
LAYERS: list[tuple[str, ...]] = [
    ("engine_adapters.base",),
    (
        "engine_adapters.models",
        "engine_adapters.logits_processors",
        "engine_adapters.batching",
        "engine_adapters.vllm_host",
        "engine_adapters.vllm_parsing",
        "engine_adapters.vllm_constraints",
    ),
    (
        "engine_adapters.scripted",
        "engine_adapters.vllm_engine",
        "engine_adapters.vllm_pooling",
        "engine_adapters.sentence_transformers_engine",
    ),
    ("engine_adapters.factory", "=engine_adapters"),
    ("gateway.takeoff_config",),
    ("gateway.settings", "gateway.store_settings", "gateway.errors", "=gateway"),
    (
        "gateway.apis",
        "gateway.protocols",
        "gateway.metering",
        "gateway.budgets",
        "gateway.usage",
        "gateway.batches.store",
        "gateway.batches.files",
        "=gateway.batches",
    ),
    (
        "gateway.auth",
        "gateway.continuation",
        "gateway.registry",
        "gateway.observability.metrics",
        "gateway.observability.logs",
        "gateway.observability.probes",
        "gateway.observability.tracing",
        "=gateway.observability",
    ),
    ("gateway.machinery", "gateway.middleware", "gateway.observability.access"),
    ("gateway.batches.runner",),
    ("gateway.serving", "gateway.runtime"),
    ("gateway.routes",),
    ("gateway.app",),
    ("gateway.server", "gateway.cli", "gateway.cli_vllm", "gateway.__main__"),
]


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def layer_of(module: str) -> int:
    best, found = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            exact = name.startswith("=")
            prefix = name.lstrip("=")
            if (module == prefix or (not exact and module.startswith(prefix + "."))) and len(prefix) > best:
                best, found = len(prefix), i
    assert found >= 0, f"{module} is in no layer of tests/unit/test_architecture.py: place it"
    return found


def imported(path: Path, module: str) -> set[str]:
    """The project modules `path` imports (at any depth of the file, lazily too)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    known = modules()
    return {m for m in out if m in known}


def test_imports_run_downwards_only():
    upward = []
    for module, path in modules().items():
        mine = layer_of(module)
        for target in imported(path, module):
            if layer_of(target) > mine:
                upward.append(f"{module} (layer {mine}) imports {target} (layer {layer_of(target)})")
    assert not upward, "\n".join(upward)


def test_no_module_is_over_600_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def _empty(path: Path) -> bool:
    """A package's __init__ with nothing but a docstring (the folder names it)."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def layout_paths(readme: str) -> set[str]:
    """The module paths the README's layout tree names (indentation of two spaces per
    level; a word ending in "/" opens a folder; words ending in ".py" are its modules)."""
    section = readme[readme.index("## Layout and development") :]
    block = section[section.index("```") + 3 :]
    block = block[: block.index("```")]
    folders: list[str] = []
    named = set()
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        folders = folders[:depth]
        first = line.split()[0]
        if first.endswith("/"):
            folders.append(first)
        here = "".join(folders[:depth] if first.endswith("/") else folders)
        for word in re.findall(r"[\w/]+\.py\b", line):
            named.add(here + word if not first.endswith("/") or word != first else word)
    return named


def test_the_readme_layout_names_every_module():
    named = layout_paths((ROOT / "README.md").read_text())
    missing = [
        str(p.relative_to(ROOT))
        for p in modules().values()
        if str(p.relative_to(ROOT)) not in named and not (p.name == "__init__.py" and _empty(p))
    ]
    assert not missing, f"the README's layout does not name: {missing}"


def test_every_setting_is_documented():
    """docs/settings.md names every setting, every reader field and every store field."""
    from gateway.settings import ContinuationSettings, ReaderSettings, Settings

    doc = (ROOT / "docs" / "settings.md").read_text()
    missing = [n for n in Settings.model_fields if f"`{n}`" not in doc]
    missing += [f"readers[].{n}" for n in ReaderSettings.model_fields if f"`{n}`" not in doc]
    missing += [f"continuation.{n}" for n in ContinuationSettings.model_fields if f"`continuation.{n}`" not in doc]
    assert not missing, missing
