"""What a test needs from the machine beyond the venv (root, podman, a system service's
binary), said once: on a machine without it the test is skipped with what is missing;
where nothing may be skipped (CI, which sets CI=true, or GATEWAY_TESTS_STRICT=1) it fails.
The pytest hook in tests/conftest.py turns any other skip into a failure there too."""

from __future__ import annotations

import os
import shutil

import pytest

STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("GATEWAY_TESTS_STRICT") == "1"


def need(missing: str | None) -> None:
    """Go on when `missing` is None; else skip with it as the reason (fail when STRICT)."""
    if missing is None:
        return
    if STRICT:
        pytest.fail(f"{missing} (this run may skip nothing: CI or GATEWAY_TESTS_STRICT)")
    pytest.skip(missing)


def binary(name: str, package: str) -> str:
    """The path of `name`, or skip: `make test` installs the Debian `package` where it can."""
    path = shutil.which(name)
    where = f"Debian package {package}; `make test` installs it where apt works"
    need(None if path else f"{name} is not installed ({where})")
    assert path is not None
    return path


def root(why: str) -> None:
    """Skip unless this process is root."""
    need(None if os.geteuid() == 0 else f"needs root: {why}")
