"""tests/needs.py: a test that needs what the machine lacks is skipped with the reason on a
laptop, and fails where nothing may be skipped (CI=true); the conftest hook fails any other
skip there too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CASES = """
import pytest
from tests import needs

def test_needs_a_missing_binary():
    needs.binary("no-such-binary-7f3a", "no-such-package")

def test_skips_on_its_own():
    pytest.skip("a reason of its own")
"""


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_cases.py").write_text(CASES)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "GATEWAY_TESTS_STRICT")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py")],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_laptop_skips_with_the_reason_and_ci_fails(tmp_path):
    laptop = run(tmp_path)
    assert laptop.returncode == 0, laptop.stdout + laptop.stderr
    assert "2 skipped" in laptop.stdout and "no-such-binary-7f3a is not installed" in laptop.stdout
    ci = run(tmp_path, CI="true")
    assert ci.returncode == 1 and "2 failed" in ci.stdout, ci.stdout
    assert "may skip nothing" in ci.stdout and "skipped where nothing may be skipped" in ci.stdout
