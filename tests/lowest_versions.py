"""The unit tests on the lowest versions pyproject.toml allows (`make test-lowest`).

    python tests/lowest_versions.py ACCEL VENV -- PYTEST_ARGS...

It resolves the project with `uv pip compile --resolution lowest-direct` (each runtime
dependency at the lowest version its specifier and the engine's own requirements allow; the
test tools stay at their locked versions), then runs pytest in VENV. Reinstalling torch and
vLLM for this would take most of a CI run, so VENV is layered over the current environment:
its site-packages holds only the packages whose version differs from what is installed here,
and a .pth file adds this environment's site-packages after its own (`import site;
site.addsitedir(...)`, so the editable install of the project works there too).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
import venv
from importlib.metadata import distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the Makefile removes from a CPU install (their PyPI builds need CUDA and break torch+cpu)
LEFT_OUT = {"torchvision", "torchaudio", "torchcodec"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def name_of(requirement: str) -> str:
    for i, ch in enumerate(requirement):
        if not (ch.isalnum() or ch in "-_."):
            return requirement[:i].lower().replace("_", "-")
    return requirement.lower().replace("_", "-")


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            found[name.strip().lower().replace("_", "-")] = version.split(";")[0].split()[0].strip()
    return found


def installed() -> dict[str, str]:
    out: dict[str, str] = {}
    for d in distributions():
        out.setdefault(d.metadata["Name"].lower().replace("_", "-"), d.version)
    return out


def resolve(accel: str, folder: Path) -> dict[str, str]:
    """The lowest-direct resolution of the runtime, with the test tools at their locked versions."""
    bin_dir = Path(sys.executable).parent
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins(ROOT / "requirements" / f"{accel}-dev.lock")
    runtime = {name_of(r) for r in project["dependencies"]}
    dev = {name_of(r) for r in project["optional-dependencies"]["dev"]} - runtime
    constraints = folder / "dev-tools.txt"
    constraints.write_text("".join(f"{n}=={locked[n]}\n" for n in sorted(dev) if n in locked))
    sources: list[str] = []
    if accel == "cpu":
        links = subprocess.run(
            [str(bin_dir / "pip"), "config", "get", "global.find-links"], capture_output=True, text=True
        )
        sources = (
            ["--find-links", links.stdout.strip()] if links.returncode == 0 else ["--extra-index-url", TORCH_CPU_INDEX]
        )
    out = folder / "lowest.lock"
    subprocess.run(
        [str(bin_dir / "uv"), "pip", "compile", str(ROOT / "pyproject.toml"), "--extra", accel, "--extra", "dev",
         "--resolution", "lowest-direct", "-c", str(constraints), "--python-version",
         f"{sys.version_info.major}.{sys.version_info.minor}", "--index-strategy", "unsafe-best-match",
         *sources, "--no-header", "--quiet", "-o", str(out)],
        check=True,
    )  # fmt: skip
    return pins(out)


def layer(target: Path, wanted: dict[str, str]) -> Path:
    """VENV with the packages that differ from here; its python."""
    here = installed()
    different = sorted(f"{n}=={v}" for n, v in wanted.items() if here.get(n) != v and n not in LEFT_OUT)
    python = target / "bin" / "python"
    stamp = target / "lowest.installed"
    fresh = python.exists() and stamp.exists() and stamp.read_text() == "\n".join(different)
    if not fresh:  # anew: a package of an earlier resolution must not stay behind
        venv.create(target, with_pip=True, clear=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "zz_layered_over.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    print(f"lowest versions where they differ from {sys.prefix}: {' '.join(different) or 'none'}", flush=True)
    if not fresh and different:
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", *different],
            check=True,
        )
    stamp.write_text("\n".join(different))
    return python


def main(argv: list[str]) -> int:
    accel, target = argv[0], Path(argv[1]).resolve()
    pytest_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.with_name(target.name + "-resolution")
    folder.mkdir(exist_ok=True)
    python = layer(target, resolve(accel, folder))
    # deprecations of old releases are theirs, not failures of ours
    warnings = ["-W", "ignore::DeprecationWarning", "-W", "ignore::PendingDeprecationWarning"]
    return subprocess.run([str(python), "-m", "pytest", *warnings, *pytest_args], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
