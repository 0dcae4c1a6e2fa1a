"""Unit tests of the HTTP side: the real app, in process, on the scripted engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_apps
from gateway.budgets import window_of
from gateway.settings import ReaderSettings, Settings


def make_settings(scripted: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """Settings with one scripted reader in the "primary" group."""
    readers = overrides.pop(
        "readers", [ReaderSettings(id="primary-0", kind="scripted", model="scripted", scripted=scripted or {})]
    )
    # The in-process client calls itself "testserver"; test readers are scripted.
    overrides.setdefault("trusted_hosts", ["testserver"])
    overrides.setdefault("allowed_reader_kinds", ["vllm", "sentence-transformers", "pooling", "scripted"])
    return Settings(readers=readers, **overrides)


def clear_of_window_edge(window: str = "minute", seconds: float = 10.0) -> None:
    """Wait, if need be, until the current budget `window` (UTC minute, day or month) has at
    least `seconds` left, so a test that spends a window and then expects 429 does not see it
    reset in between (a minute's edge came between two requests in a CI run)."""
    left = window_of(window, time.time())[1] - time.time()
    if left < seconds:
        time.sleep(left + 0.05)


@contextmanager
def running(settings: Settings, wait_ready: bool = True) -> Iterator[TestClient]:
    """A TestClient whose app has loaded its readers (lifespan run). The management
    app of the same runtime is at `client.management` (a TestClient too)."""
    app, management_app, _ = create_apps(settings)
    # a loopback peer, as a client on this machine (local mode trusts no other)
    peer = ("127.0.0.1", 50000)
    with TestClient(app, raise_server_exceptions=False, client=peer) as client:
        client.management = TestClient(  # type: ignore[attr-defined]
            management_app, raise_server_exceptions=False, client=peer
        )
        if wait_ready:
            readers = app.state.runtime.registry.readers
            deadline = time.monotonic() + 60
            while any(r.state == "loading" for r in readers.values()):
                assert time.monotonic() < deadline, "readers still loading after 60 s"
                time.sleep(0.01)
            failed = {k: r.error for k, r in readers.items() if r.state != "ready"}
            assert not failed, failed
        yield client


@pytest.fixture
def client_factory() -> Callable[..., Any]:
    """`client_factory(scripted={...}, **settings)` -> context manager of a ready client."""

    def factory(scripted: dict[str, Any] | None = None, wait_ready: bool = True, **overrides: Any) -> Any:
        return running(make_settings(scripted, **overrides), wait_ready=wait_ready)

    return factory


@pytest.fixture
def client(client_factory: Callable[..., Any]) -> Iterator[TestClient]:
    """A ready client on the default scripted engine."""
    with client_factory() as c:
        yield c
