"""Shared test set-up: artifacts, and the one real gateway per test session.

The real engine takes about a minute and 4 GB to start on two CPU cores, so every e2e
and contract test shares one gateway process (started on first use). Tests that need a
process of their own (signals, engine death, a second replica, fault injection) start
one and say why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import GatewayProcess, start_gateway

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for logs and screenshots kept after the run (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def gateway(artifacts: Path) -> Iterator[GatewayProcess]:
    """The shared gateway on the default config (real vLLM, embedded model)."""
    gw = start_gateway(artifacts / "gateway-e2e.log")
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """An httpx client on the shared gateway's main port."""
    with gateway.client() as c:
        yield c


@pytest.fixture(scope="session")
def tokenizer(gateway: GatewayProcess) -> Any:
    """The embedded model's own tokenizer, loaded directly (for counting tokens)."""
    from transformers import AutoTokenizer

    from engine_adapters.models import ensure_smollm2
    from gateway.settings import load_settings

    path = ensure_smollm2(load_settings(ROOT / "configs" / "default.yaml").cache_dir)
    return AutoTokenizer.from_pretrained(path)
