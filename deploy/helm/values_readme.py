"""Write the chart's README (deploy/helm/llm-gateway/README.md) from values.yaml: each value's
default from the YAML, its description from the comments above it and beside it.

    python deploy/helm/values_readme.py          # write it
    python deploy/helm/values_readme.py --check  # exit 1 if it is out of date (the tests run this)

helm-docs (Go, not on PyPI, npm or Debian) and Bitnami's readme-generator (npm, needs an
`## @param` line per value) would both mean a second comment syntax; values.yaml's own
comments are already the documentation, so fifty lines here read them as they are.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "llm-gateway"
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.\-]*):(?P<rest>.*)$")
# shown whole: the gateway's own settings (docs/settings.md documents each), and maps whose
# keys are names rather than options
NOT_EXPANDED = {
    "config",
    "resources",
    "ingress.annotations",
    "grafanaDashboard.labels",
    "autoscaling.behavior",
    "strategy",
}


def comments(text: str) -> dict[str, str]:
    """Dotted key -> the comment lines just above it (no blank line between) and beside it."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        m = KEY.match(line)
        if m is None:  # a list item or a continued value
            pending = []
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m["key"]])
        beside = re.search(r"\s#\s?(.*)$", m["rest"])
        out[path] = " ".join([*pending, beside[1] if beside else ""]).strip()
        stack.append((indent, m["key"]))
        pending = []
    return out


def rows(values: dict[str, Any], notes: dict[str, str], prefix: str = "") -> list[tuple[str, str, str]]:
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in NOT_EXPANDED:
            if notes.get(path):
                out.append((path, "", notes[path]))
            out.extend(rows(value, notes, path + "."))
        else:
            shown = "see values.yaml" if path == "config" else json.dumps(value, separators=(", ", ": "))
            out.append((path, shown, notes.get(path, "")))
    return out


def readme() -> str:
    text = (CHART / "values.yaml").read_text()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    table = ["| value | default | what |", "|---|---|---|"]
    for path, default, note in rows(yaml.safe_load(text), comments(text)):
        cell = f"`{default}`" if default else ""
        note = note.replace("|", "\\|")
        table.append(f"| `{path}` | {cell} | {note} |")
    return "\n".join(
        [
            f"# {chart['name']} {chart['version']}",
            "",
            chart["description"],
            "",
            "The quick start, the presets and what each option is for are in `deploy/README.md`;",
            "the gateway's own settings (under `config`) in `docs/settings.md`.",
            "",
            "<!-- Written by deploy/helm/values_readme.py from values.yaml: edit the comments there. -->",
            "",
            *table,
            "",
        ]
    )


def main() -> int:
    target = CHART / "README.md"
    wanted = readme()
    if "--check" in sys.argv:
        if not target.exists() or target.read_text() != wanted:
            print(f"{target} is out of date: run python deploy/helm/values_readme.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
